-- Auth cache invalidation: every change that can end a login (password, revocation, vaultbox
-- status or SMTP switch) is announced on channel `encimap_auth`, so each auth engine drops its
-- cached verifications at once. Payloads: 'user:<username>' or 'vaultbox:<uuid>'.

CREATE OR REPLACE FUNCTION encimap_auth_notify_credential() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        PERFORM pg_notify('encimap_auth', 'user:' || OLD.username);
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') AND (TG_OP = 'INSERT' OR NEW.username <> OLD.username) THEN
        PERFORM pg_notify('encimap_auth', 'user:' || NEW.username);
    END IF;
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION encimap_auth_notify_vaultbox() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('encimap_auth', 'vaultbox:' || OLD.id);
    RETURN NULL;
END
$$;

-- Credential changes that matter for a login; other bookkeeping stays silent.
CREATE OR REPLACE TRIGGER vaultbox_smtp_credentials_auth_notify
    AFTER UPDATE OF username, password_hash, enabled, vaultbox_id
    ON vaultbox_smtp_credentials FOR EACH ROW
    EXECUTE FUNCTION encimap_auth_notify_credential();
CREATE OR REPLACE TRIGGER imap_app_credentials_auth_notify
    AFTER UPDATE OF username, password_hash, revoked_at, vaultbox_id
    ON imap_app_credentials FOR EACH ROW
    EXECUTE FUNCTION encimap_auth_notify_credential();
CREATE OR REPLACE TRIGGER vaultbox_smtp_credentials_auth_notify_rows
    AFTER INSERT OR DELETE ON vaultbox_smtp_credentials FOR EACH ROW
    EXECUTE FUNCTION encimap_auth_notify_credential();
CREATE OR REPLACE TRIGGER imap_app_credentials_auth_notify_rows
    AFTER INSERT OR DELETE ON imap_app_credentials FOR EACH ROW
    EXECUTE FUNCTION encimap_auth_notify_credential();
CREATE OR REPLACE TRIGGER vaultboxes_auth_notify
    AFTER UPDATE OF status, smtp_enabled, limits, alias, domain OR DELETE
    ON vaultboxes FOR EACH ROW
    EXECUTE FUNCTION encimap_auth_notify_vaultbox();
