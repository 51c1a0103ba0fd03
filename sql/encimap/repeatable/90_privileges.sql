-- Who may do what in the encrypted-mail database: the whole picture, re-applied with every
-- migration run. The roles are NOLOGIN; an installation grants them to its login users (or
-- connects as a login and sets `[database] set_role`). Nothing here touches the platform's own
-- logins: the platform keeps the rights it had on its tables.

DO $$
DECLARE
    r text;
BEGIN
    FOREACH r IN ARRAY ARRAY['encimap_auth', 'encimap_intake', 'encimap_imap'] LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r) THEN
            EXECUTE format('CREATE ROLE %I NOLOGIN', r);
        END IF;
    END LOOP;
END
$$;

-- Start from nothing on every table of this database, then grant what each service needs.
REVOKE ALL ON vaultboxes, vaultbox_smtp_credentials, imap_app_credentials, certificates,
              public_certificates, mailboxes, encrypted_emails, email_processing_logs,
              send_counters, vaultbox_usage, openpgp_keys, mailbox_subscriptions,
              mailbox_vanished
    FROM encimap_auth, encimap_intake, encimap_imap;
GRANT USAGE ON SCHEMA public TO encimap_auth, encimap_intake, encimap_imap;

-- Auth: credentials and the vaultbox state a login decision needs; never message contents nor
-- certificates. The hourly sending counters are the submission's, which runs as this role.
GRANT SELECT (id, user_id, alias, domain, status, limits, smtp_enabled, updated_at)
    ON vaultboxes TO encimap_auth;
GRANT SELECT ON vaultbox_smtp_credentials, imap_app_credentials TO encimap_auth;
GRANT SELECT, INSERT, UPDATE ON send_counters TO encimap_auth;

-- Intake: find the vaultbox, its public certificates (completing what the platform did not
-- derive) and OpenPGP keys (also for the Web Key Directory), add messages and their logs.
GRANT SELECT ON vaultboxes, public_certificates, vaultbox_usage, openpgp_keys TO encimap_intake;
GRANT UPDATE (fingerprint_sha256, subject, key_algorithm, not_before, not_after)
    ON public_certificates TO encimap_intake;
GRANT SELECT (id, vaultbox_id, name, uidvalidity, uid_next) ON mailboxes TO encimap_intake;
GRANT UPDATE (uid_next) ON mailboxes TO encimap_intake;
GRANT SELECT (id, vaultbox_id, mailbox_id, uid, message_id, body_sha256, size_bytes,
              internal_date)
    ON encrypted_emails TO encimap_intake;
GRANT INSERT ON encrypted_emails, email_processing_logs TO encimap_intake;
GRANT EXECUTE ON FUNCTION encimap_deliver(uuid, bytea, timestamptz, text, text, text, text,
    text, text, text[], text, text, text, jsonb, timestamptz, jsonb, double precision, text,
    text, integer, integer) TO encimap_intake;

-- IMAP: a vaultbox's mailboxes and messages; APPEND encrypts, so public keys too.
GRANT SELECT ON vaultboxes, public_certificates, vaultbox_usage, openpgp_keys TO encimap_imap;
GRANT SELECT, INSERT, UPDATE, DELETE ON mailboxes, encrypted_emails TO encimap_imap;
GRANT INSERT ON email_processing_logs TO encimap_imap;
GRANT SELECT, INSERT, DELETE ON mailbox_subscriptions TO encimap_imap;
-- VANISHED (QRESYNC); written only by the expunge trigger (repeatable/36_modseq.sql).
GRANT SELECT ON mailbox_vanished TO encimap_imap;
GRANT USAGE ON SEQUENCE mailbox_uidvalidity_seq TO encimap_imap;

GRANT EXECUTE ON FUNCTION encimap_insert_message(uuid, bigint, text, bytea, text[],
    timestamptz, text, text, text, text, text, text, text[], text, text, text, jsonb,
    timestamptz, jsonb) TO encimap_intake, encimap_imap;
GRANT EXECUTE ON FUNCTION encimap_lock_mailboxes(uuid, bigint[]) TO encimap_imap;
GRANT EXECUTE ON FUNCTION encimap_publish_change(uuid, bigint, text, text, bigint[])
    TO encimap_imap;
GRANT EXECUTE ON FUNCTION encimap_store_flags(uuid, bigint, bigint[], bigint[], text, text[],
    text, bigint) TO encimap_imap;
GRANT EXECUTE ON FUNCTION encimap_expunge(uuid, bigint, bigint[], bigint[], text) TO encimap_imap;
GRANT EXECUTE ON FUNCTION encimap_claim_recent(bigint, bigint) TO encimap_imap;
GRANT EXECUTE ON FUNCTION encimap_select_mailbox(uuid, text, boolean) TO encimap_imap;

-- Whether the schema is current (`encimap db migrate` with nothing to do only reads these).
GRANT SELECT ON schema_migrations, schema_repeatables TO encimap_auth, encimap_intake, encimap_imap;
