-- The only way encimap's services see certificates: public, active ones. Rows of type
-- 'private' (key pairs the platform's old service generated on the server) stay invisible to
-- every encimap role; `encimap cert purge-private` deletes them. Simple enough to be
-- updatable: the intake completes the derived columns of certificates the platform stored with
-- only their PEM through this view (encimap.store.certificates.complete_certificates).

CREATE OR REPLACE VIEW public_certificates AS
    SELECT id, vaultbox_id, pem_content, fingerprint_sha256, subject, key_algorithm,
           not_before, not_after, created_at
      FROM certificates
     WHERE certificate_type = 'public' AND is_active;
