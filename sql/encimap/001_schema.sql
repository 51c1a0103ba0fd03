-- encimap's own database (motorical_encrypted_imap): vaultboxes, their credentials and
-- certificates, IMAP mailboxes and the encrypted messages. Idempotent, like every migration.

DO $$
DECLARE
    r text;
BEGIN
    FOREACH r IN ARRAY ARRAY['encimap_owner', 'encimap_auth', 'encimap_intake', 'encimap_imap'] LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r) THEN
            EXECUTE format('CREATE ROLE %I NOLOGIN', r);
        END IF;
    END LOOP;
END
$$;

CREATE OR REPLACE FUNCTION encimap_touch_updated_at() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at := now();
    RETURN NEW;
END
$$;

CREATE TABLE IF NOT EXISTS vaultboxes (
    id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id       uuid NOT NULL,            -- users.id in motorical_db (another database)
    domain        text NOT NULL CHECK (domain <> '' AND domain !~ '[@[:space:]]'),
    alias         text NOT NULL CHECK (alias <> '' AND alias !~ '[@[:space:]]'),
    name          text,
    status        text NOT NULL DEFAULT 'active'
                  CHECK (status IN ('active', 'suspended', 'disabled', 'deleted')),
    limits        jsonb NOT NULL DEFAULT '{}'::jsonb CHECK (jsonb_typeof(limits) = 'object'),
    smtp_enabled  boolean NOT NULL DEFAULT true,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);
-- The address alias@domain is compared case-insensitively and names one live vaultbox.
CREATE UNIQUE INDEX IF NOT EXISTS vaultboxes_address_key
    ON vaultboxes (lower(alias), lower(domain)) WHERE status <> 'deleted';
CREATE INDEX IF NOT EXISTS vaultboxes_user_id_idx ON vaultboxes (user_id);

CREATE TABLE IF NOT EXISTS vaultbox_smtp_credentials (
    id             uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    vaultbox_id    uuid NOT NULL REFERENCES vaultboxes (id) ON DELETE CASCADE,
    username       text NOT NULL,
    password_hash  text NOT NULL,
    enabled        boolean NOT NULL DEFAULT true,
    last_used_at   timestamptz,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX IF NOT EXISTS vaultbox_smtp_credentials_username_key
    ON vaultbox_smtp_credentials (username);
CREATE INDEX IF NOT EXISTS vaultbox_smtp_credentials_vaultbox_idx
    ON vaultbox_smtp_credentials (vaultbox_id);

CREATE TABLE IF NOT EXISTS imap_app_credentials (
    id             uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    vaultbox_id    uuid NOT NULL REFERENCES vaultboxes (id) ON DELETE CASCADE,
    username       text NOT NULL,
    password_hash  text NOT NULL,
    app_name       text,
    revoked_at     timestamptz,
    last_used_at   timestamptz,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now()
);
-- Revoked credentials stay for audit; a username names at most one live credential.
CREATE UNIQUE INDEX IF NOT EXISTS imap_app_credentials_username_key
    ON imap_app_credentials (username) WHERE revoked_at IS NULL;
CREATE INDEX IF NOT EXISTS imap_app_credentials_vaultbox_idx
    ON imap_app_credentials (vaultbox_id);

CREATE TABLE IF NOT EXISTS certificates (
    id                  uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    vaultbox_id         uuid NOT NULL REFERENCES vaultboxes (id) ON DELETE CASCADE,
    certificate_type    text NOT NULL CHECK (certificate_type IN ('public', 'private')),
    pem_content         text NOT NULL,
    fingerprint_sha256  text,
    subject             text,
    key_algorithm       text,
    not_before          timestamptz,
    not_after           timestamptz,
    is_active           boolean NOT NULL DEFAULT true,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS certificates_vaultbox_idx
    ON certificates (vaultbox_id, certificate_type) WHERE is_active;
CREATE UNIQUE INDEX IF NOT EXISTS certificates_fingerprint_key
    ON certificates (vaultbox_id, certificate_type, fingerprint_sha256);

-- Only public certificates are visible to the services that encrypt.
CREATE OR REPLACE VIEW public_certificates AS
    SELECT id, vaultbox_id, pem_content, fingerprint_sha256, key_algorithm,
           not_before, not_after, created_at
      FROM certificates
     WHERE certificate_type = 'public' AND is_active;

-- UIDVALIDITY values: unique across all mailboxes ever made, so a mailbox deleted and created
-- again under the same name never reuses one (RFC 3501 2.3.1.1). Starts at the install time.
DO $$
BEGIN
    IF to_regclass('mailbox_uidvalidity_seq') IS NULL THEN
        EXECUTE format('CREATE SEQUENCE mailbox_uidvalidity_seq START %s MAXVALUE 4294967295',
                       extract(epoch FROM now())::bigint);
    END IF;
END
$$;

CREATE TABLE IF NOT EXISTS mailboxes (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    vaultbox_id  uuid NOT NULL REFERENCES vaultboxes (id) ON DELETE CASCADE,
    name         text NOT NULL CHECK (name <> ''),
    special_use  text CHECK (special_use IN ('\Sent', '\Drafts', '\Trash', '\Junk', '\Archive')),
    subscribed   boolean NOT NULL DEFAULT true,
    -- RFC 3501 2.3.1.1: UIDs strictly increase and are never reused within one UIDVALIDITY.
    uidvalidity  bigint NOT NULL DEFAULT nextval('mailbox_uidvalidity_seq') CHECK (uidvalidity BETWEEN 1 AND 4294967295),
    uid_next     bigint NOT NULL DEFAULT 1 CHECK (uid_next BETWEEN 1 AND 4294967295),
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX IF NOT EXISTS mailboxes_name_key ON mailboxes (vaultbox_id, name);

CREATE TABLE IF NOT EXISTS encrypted_emails (
    id                        uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    vaultbox_id               uuid NOT NULL REFERENCES vaultboxes (id) ON DELETE CASCADE,
    mailbox_id                bigint NOT NULL REFERENCES mailboxes (id) ON DELETE CASCADE,
    uid                       bigint NOT NULL CHECK (uid BETWEEN 1 AND 4294967295),
    message_id                text,
    sender                    text,
    recipient                 text,
    subject_encrypted         text,
    body_encrypted            bytea NOT NULL,
    body_sha256               text,
    encryption_method         text,
    certificate_fingerprints  text[] NOT NULL DEFAULT '{}',
    size_bytes                integer NOT NULL CHECK (size_bytes >= 0),
    flags                     text[] NOT NULL DEFAULT '{}',
    internal_date             timestamptz NOT NULL DEFAULT now(),
    envelope                  text,
    bodystructure             text,
    received_at               timestamptz NOT NULL DEFAULT now(),
    updated_at                timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX IF NOT EXISTS encrypted_emails_mailbox_uid_key
    ON encrypted_emails (mailbox_id, uid);
CREATE INDEX IF NOT EXISTS encrypted_emails_vaultbox_idx ON encrypted_emails (vaultbox_id);
CREATE INDEX IF NOT EXISTS encrypted_emails_duplicate_idx
    ON encrypted_emails (vaultbox_id, message_id, body_sha256);

CREATE TABLE IF NOT EXISTS email_processing_logs (
    id                        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    vaultbox_id               uuid REFERENCES vaultboxes (id) ON DELETE SET NULL,
    email_id                  uuid,
    queue_id                  text,
    recipient                 text,
    outcome                   text NOT NULL
                              CHECK (outcome IN ('stored', 'duplicate', 'passthrough',
                                                 'rejected', 'tempfail')),
    reply_code                text,
    algorithm                 text,
    certificate_fingerprints  text[] NOT NULL DEFAULT '{}',
    size_original             integer,
    size_stored               integer,
    duration_ms               integer,
    error                     text,
    created_at                timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS email_processing_logs_vaultbox_idx
    ON email_processing_logs (vaultbox_id, created_at);

DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['vaultboxes', 'vaultbox_smtp_credentials', 'imap_app_credentials',
                             'certificates', 'mailboxes', 'encrypted_emails'] LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_trigger
                       WHERE tgname = t || '_touch_updated_at'
                         AND tgrelid = t::regclass) THEN
            EXECUTE format('CREATE TRIGGER %I BEFORE UPDATE ON %I FOR EACH ROW
                            EXECUTE FUNCTION encimap_touch_updated_at()',
                           t || '_touch_updated_at', t);
        END IF;
    END LOOP;
END
$$;

ALTER TABLE vaultboxes OWNER TO encimap_owner;
ALTER TABLE vaultbox_smtp_credentials OWNER TO encimap_owner;
ALTER TABLE imap_app_credentials OWNER TO encimap_owner;
ALTER TABLE certificates OWNER TO encimap_owner;
ALTER VIEW public_certificates OWNER TO encimap_owner;
ALTER TABLE mailboxes OWNER TO encimap_owner;
ALTER SEQUENCE mailbox_uidvalidity_seq OWNER TO encimap_owner;
ALTER TABLE encrypted_emails OWNER TO encimap_owner;
ALTER TABLE email_processing_logs OWNER TO encimap_owner;
ALTER FUNCTION encimap_touch_updated_at() OWNER TO encimap_owner;

GRANT USAGE ON SCHEMA public TO encimap_auth, encimap_intake, encimap_imap;

-- Auth: credentials and the vaultbox state a login decision needs; never message contents.
GRANT SELECT (id, user_id, alias, domain, status, limits, smtp_enabled, updated_at)
    ON vaultboxes TO encimap_auth;
GRANT SELECT ON vaultbox_smtp_credentials, imap_app_credentials TO encimap_auth;

-- Intake: find the vaultbox and its public certificates, add messages and their logs.
GRANT SELECT ON vaultboxes, public_certificates TO encimap_intake;
GRANT SELECT (id, vaultbox_id, name, uidvalidity, uid_next) ON mailboxes TO encimap_intake;
GRANT UPDATE (uid_next) ON mailboxes TO encimap_intake;
GRANT SELECT (id, vaultbox_id, mailbox_id, uid, message_id, body_sha256, size_bytes,
              received_at)
    ON encrypted_emails TO encimap_intake;
GRANT INSERT ON encrypted_emails, email_processing_logs TO encimap_intake;

-- IMAP: a vaultbox's mailboxes and messages; APPEND encrypts, so public certificates too.
GRANT SELECT ON vaultboxes, public_certificates TO encimap_imap;
GRANT SELECT, INSERT, UPDATE, DELETE ON mailboxes, encrypted_emails TO encimap_imap;
GRANT INSERT ON email_processing_logs TO encimap_imap;
GRANT USAGE ON SEQUENCE mailbox_uidvalidity_seq TO encimap_imap;
