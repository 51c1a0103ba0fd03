-- OpenPGP keys of vaultboxes, beside the X.509 certificates of the platform's `certificates`
-- table (which keeps its meaning: X.509 only). Only public keys are ever stored: a
-- transferable public key per row, ASCII-armoured, as imported or generated. A vaultbox with
-- keys of both kinds encrypts with the kind its `key_preference` names, and with the other
-- kind only when the preferred one has no usable key.

CREATE TABLE IF NOT EXISTS openpgp_keys (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    vaultbox_id     uuid NOT NULL REFERENCES vaultboxes (id) ON DELETE CASCADE,
    fingerprint     text NOT NULL,            -- primary key, upper-case hex
    armored_key     text NOT NULL,            -- the public key, ASCII-armoured
    user_ids        text[] NOT NULL DEFAULT '{}',
    key_algorithm   text,                     -- primary key, e.g. ed25519, rsa3072
    expires_at      timestamptz,
    is_active       boolean NOT NULL DEFAULT true,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);

CREATE UNIQUE INDEX IF NOT EXISTS openpgp_keys_fingerprint_key
    ON openpgp_keys (vaultbox_id, fingerprint);

ALTER TABLE vaultboxes ADD COLUMN IF NOT EXISTS key_preference text NOT NULL DEFAULT 'openpgp';
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conname = 'vaultboxes_key_preference_check') THEN
        ALTER TABLE vaultboxes ADD CONSTRAINT vaultboxes_key_preference_check
            CHECK (key_preference IN ('openpgp', 'smime'));
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgname = 'openpgp_keys_touch_updated_at'
                   AND tgrelid = 'openpgp_keys'::regclass) THEN
        CREATE TRIGGER openpgp_keys_touch_updated_at BEFORE UPDATE ON openpgp_keys
            FOR EACH ROW EXECUTE FUNCTION encimap_touch_updated_at();
    END IF;
    -- The intake keeps RCPT lookups while nothing changes (sql/encimap/008_recipient_notify.sql).
    IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgname = 'openpgp_keys_recipients_notify'
                   AND tgrelid = 'openpgp_keys'::regclass) THEN
        CREATE TRIGGER openpgp_keys_recipients_notify
            AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE
            ON openpgp_keys FOR EACH STATEMENT
            EXECUTE FUNCTION encimap_recipients_notify();
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgname = 'vaultboxes_key_preference_notify'
                   AND tgrelid = 'vaultboxes'::regclass) THEN
        CREATE TRIGGER vaultboxes_key_preference_notify
            AFTER UPDATE OF key_preference ON vaultboxes FOR EACH STATEMENT
            EXECUTE FUNCTION encimap_recipients_notify();
    END IF;
END
$$;

ALTER TABLE openpgp_keys OWNER TO encimap_owner;

-- Intake (RCPT, and the Web Key Directory it serves) and IMAP (APPEND encrypts) read them.
GRANT SELECT ON openpgp_keys TO encimap_intake, encimap_imap;
