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

ALTER FUNCTION encimap_auth_notify_credential() OWNER TO encimap_owner;
ALTER FUNCTION encimap_auth_notify_vaultbox() OWNER TO encimap_owner;

DO $$
DECLARE
    t text;
BEGIN
    -- Credential changes that matter for a login; last_used_at bookkeeping stays silent.
    IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgname = 'vaultbox_smtp_credentials_auth_notify'
                   AND tgrelid = 'vaultbox_smtp_credentials'::regclass) THEN
        CREATE TRIGGER vaultbox_smtp_credentials_auth_notify
            AFTER UPDATE OF username, password_hash, enabled, vaultbox_id
            ON vaultbox_smtp_credentials FOR EACH ROW
            EXECUTE FUNCTION encimap_auth_notify_credential();
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgname = 'imap_app_credentials_auth_notify'
                   AND tgrelid = 'imap_app_credentials'::regclass) THEN
        CREATE TRIGGER imap_app_credentials_auth_notify
            AFTER UPDATE OF username, password_hash, revoked_at, vaultbox_id
            ON imap_app_credentials FOR EACH ROW
            EXECUTE FUNCTION encimap_auth_notify_credential();
    END IF;
    FOREACH t IN ARRAY ARRAY['vaultbox_smtp_credentials', 'imap_app_credentials'] LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgname = t || '_auth_notify_rows'
                       AND tgrelid = t::regclass) THEN
            EXECUTE format('CREATE TRIGGER %I AFTER INSERT OR DELETE ON %I FOR EACH ROW
                            EXECUTE FUNCTION encimap_auth_notify_credential()',
                           t || '_auth_notify_rows', t);
        END IF;
    END LOOP;
    IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgname = 'vaultboxes_auth_notify'
                   AND tgrelid = 'vaultboxes'::regclass) THEN
        CREATE TRIGGER vaultboxes_auth_notify
            AFTER UPDATE OF status, smtp_enabled, limits, alias, domain OR DELETE
            ON vaultboxes FOR EACH ROW
            EXECUTE FUNCTION encimap_auth_notify_vaultbox();
    END IF;
END
$$;
