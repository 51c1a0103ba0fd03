-- What encimap adds to the platform's encrypted-mail database. Only additions: every platform
-- column keeps its name, type meaning, default and constraint, so the platform's statements
-- (../shared/seed/platform-queries.sql) run unchanged, and an INSERT naming only platform columns
-- still yields a row encimap serves (the triggers in repeatable/ fill in the rest).
-- Every statement here is instant on a large table: new columns are nullable or have constant
-- defaults and no CHECK (no table rewrite, no scan); indexes on encrypted_emails cover rows encimap places, which
-- the batched backfill (encimap.store.adoption) does later in short transactions.

-- Platform columns widened where encimap must store more than 255 characters (an SMTP path or
-- a Message-ID can be longer). varchar(255) -> text is binary compatible: no rewrite, and what
-- the platform writes and reads means the same.
ALTER TABLE encrypted_emails ALTER COLUMN message_id TYPE text;
ALTER TABLE encrypted_emails ALTER COLUMN sender TYPE text;
ALTER TABLE encrypted_emails ALTER COLUMN recipient TYPE text;

-- Vaultboxes: one live vaultbox per address, compared case-insensitively. A vaultbox without an
-- alias has no address and receives nothing (`encimap check` lists such vaultboxes).
CREATE UNIQUE INDEX IF NOT EXISTS vaultboxes_address_key
    ON vaultboxes (lower(alias), lower(domain)) WHERE status IS DISTINCT FROM 'deleted';
CREATE INDEX IF NOT EXISTS vaultboxes_user_id_idx ON vaultboxes (user_id);

-- SMTP credentials are disabled rather than deleted, so a username is never reused by another
-- vaultbox.
ALTER TABLE vaultbox_smtp_credentials ADD COLUMN IF NOT EXISTS enabled boolean NOT NULL DEFAULT true;
CREATE INDEX IF NOT EXISTS vaultbox_smtp_credentials_vaultbox_idx
    ON vaultbox_smtp_credentials (vaultbox_id);

-- Certificates: what encimap derives from pem_content (filled by encimap.store.certificates
-- when the platform inserts only the PEM), and a switch to retire one without deleting it.
ALTER TABLE certificates ADD COLUMN IF NOT EXISTS fingerprint_sha256 text;
ALTER TABLE certificates ADD COLUMN IF NOT EXISTS subject text;
ALTER TABLE certificates ADD COLUMN IF NOT EXISTS key_algorithm text;
ALTER TABLE certificates ADD COLUMN IF NOT EXISTS not_before timestamptz;
ALTER TABLE certificates ADD COLUMN IF NOT EXISTS not_after timestamptz;
ALTER TABLE certificates ADD COLUMN IF NOT EXISTS is_active boolean NOT NULL DEFAULT true;
ALTER TABLE certificates ADD COLUMN IF NOT EXISTS updated_at timestamptz NOT NULL DEFAULT now();
CREATE INDEX IF NOT EXISTS certificates_vaultbox_idx
    ON certificates (vaultbox_id, certificate_type) WHERE is_active;

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
    uidvalidity  bigint NOT NULL DEFAULT nextval('mailbox_uidvalidity_seq')
                 CHECK (uidvalidity BETWEEN 1 AND 4294967295),
    uid_next     bigint NOT NULL DEFAULT 1 CHECK (uid_next BETWEEN 1 AND 4294967295),
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX IF NOT EXISTS mailboxes_name_key ON mailboxes (vaultbox_id, name);
-- Listing folders and their children by name prefix.
CREATE INDEX IF NOT EXISTS mailboxes_vaultbox_idx ON mailboxes (vaultbox_id, name text_pattern_ops);

-- Stored messages. `body` holds the exact bytes IMAP serves for every message encimap stores;
-- rows the platform's old service stored keep their text in `body_encrypted` (body is NULL
-- there, and readers take convert_to(body_encrypted, 'UTF8')), so legacy mail is neither
-- copied nor rewritten. Rows without a mailbox are not yet placed (see the backfill).
ALTER TABLE encrypted_emails
    ADD COLUMN IF NOT EXISTS mailbox_id bigint REFERENCES mailboxes (id) ON DELETE CASCADE,
    ADD COLUMN IF NOT EXISTS uid bigint,
    ADD COLUMN IF NOT EXISTS body bytea,
    ADD COLUMN IF NOT EXISTS body_sha256 text,
    ADD COLUMN IF NOT EXISTS certificate_fingerprints text[] NOT NULL DEFAULT '{}',
    ADD COLUMN IF NOT EXISTS size_bytes integer,
    ADD COLUMN IF NOT EXISTS flags text[] NOT NULL DEFAULT '{}',
    ADD COLUMN IF NOT EXISTS internal_date timestamptz,
    ADD COLUMN IF NOT EXISTS envelope text,
    ADD COLUMN IF NOT EXISTS bodystructure text,
    -- What FETCH and SEARCH serve without parsing mail again (encimap.mimeinfo, at store time):
    -- [[section, header_start, body_start, end], ...] makes BODY[1], BODY[TEXT] byte slices;
    -- the Date header for SENTBEFORE/SENTON/SENTSINCE; the clear header fields SEARCH matches.
    ADD COLUMN IF NOT EXISTS bodystructure_basic text,
    ADD COLUMN IF NOT EXISTS mime_parts jsonb,
    ADD COLUMN IF NOT EXISTS sent_date timestamptz,
    ADD COLUMN IF NOT EXISTS search_headers jsonb,
    ADD COLUMN IF NOT EXISTS updated_at timestamptz NOT NULL DEFAULT now();
-- Stored bodies are ciphertext: PostgreSQL's compression attempt never succeeds. Out of line,
-- uncompressed; this also lets substring() read only the chunks it needs.
ALTER TABLE encrypted_emails ALTER COLUMN body SET STORAGE EXTERNAL;

-- One unique index keeps UIDs unique per mailbox and serves the index-only reads of flags and
-- sizes (SELECT, STATUS, FETCH RFC822.SIZE). The duplicate check, the quota count and the
-- cascade from vaultboxes use the (vaultbox_id, ...) index.
CREATE UNIQUE INDEX IF NOT EXISTS encrypted_emails_mailbox_uid_flags_key
    ON encrypted_emails (mailbox_id, uid) INCLUDE (flags, size_bytes);
CREATE INDEX IF NOT EXISTS encrypted_emails_duplicate_idx
    ON encrypted_emails (vaultbox_id, message_id, body_sha256);
-- The data moves find unplaced and undescribed rows without scanning the others.
CREATE INDEX IF NOT EXISTS encrypted_emails_unplaced_idx
    ON encrypted_emails (vaultbox_id, processed_at, id) WHERE mailbox_id IS NULL;
CREATE INDEX IF NOT EXISTS encrypted_emails_undescribed_idx
    ON encrypted_emails (id) WHERE envelope IS NULL;

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

-- Submission (port 2587): the hourly sending counter, shared by every submission process and
-- host. One row per sending principal (a MotorBlock or a vaultbox) holding the count of
-- recipients accepted in the current fixed hourly window; a new window overwrites the row.
CREATE TABLE IF NOT EXISTS send_counters (
    principal_key  text PRIMARY KEY,          -- 'motorblock:<id>' or 'vaultbox:<id>'
    window_start   timestamptz NOT NULL,      -- date_trunc('hour', now(), 'UTC') of the window
    count          integer NOT NULL DEFAULT 0 CHECK (count >= 0),
    updated_at     timestamptz NOT NULL DEFAULT now()
);
