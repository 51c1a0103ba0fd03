-- OpenPGP keys of vaultboxes, beside the X.509 certificates of the platform's `certificates`
-- table (which keeps its meaning: X.509 only). Only public keys are ever stored: a
-- transferable public key per row, ASCII-armoured, as imported or generated. A vaultbox with
-- keys of both kinds encrypts with the kind its `key_preference` names, and with the other
-- kind only when the preferred one has no usable key. Triggers and rights: repeatable/.

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

-- A new column with a constant default and its own CHECK: no rewrite, and nothing the
-- platform writes can violate it.
ALTER TABLE vaultboxes ADD COLUMN IF NOT EXISTS key_preference text NOT NULL DEFAULT 'openpgp'
    CONSTRAINT vaultboxes_key_preference_check CHECK (key_preference IN ('openpgp', 'smime'));
