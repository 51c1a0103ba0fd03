-- Storing a message in one round trip. `encimap_insert_message` is the one insert path (intake
-- delivery and IMAP APPEND): next UID of the mailbox (its row lock orders concurrent inserts,
-- so UIDs become visible in commit order), the row, and the NOTIFY that IMAP sessions wait for
-- (payload '<vaultbox>:<mailbox>:<uid>', see encimap.store.events). `encimap_deliver` is the
-- intake's delivery: lock the vaultbox's INBOX, skip a duplicate (same Message-ID and body hash
-- within the window, e.g. an MTA retrying after a lost reply), insert, log.
-- Both are SECURITY INVOKER: they run with the caller's grants, so the roles' rights stay what
-- 001_schema.sql gives them. Called as one statement, a call is its own transaction.

-- Stored bodies are S/MIME ciphertext: PostgreSQL's compression attempt on every (TOASTed) row
-- never succeeds and cost ~0.08 ms of server CPU per 16 KB message. Out of line, uncompressed;
-- this also lets substring() read only the chunks it needs. Applies to rows stored from now on.
ALTER TABLE encrypted_emails ALTER COLUMN body_encrypted SET STORAGE EXTERNAL;

CREATE OR REPLACE FUNCTION encimap_insert_message(
    p_vaultbox_id uuid,
    p_mailbox_id bigint,            -- the mailbox by id, or NULL and ...
    p_mailbox_name text,            -- ... by name
    p_body bytea,
    p_flags text[],
    p_internal_date timestamptz,    -- NULL: now()
    p_message_id text,
    p_sender text,
    p_recipient text,
    p_subject_encrypted text,
    p_body_sha256 text,
    p_encryption_method text,
    p_certificate_fingerprints text[],
    p_envelope text,
    p_bodystructure text,
    p_bodystructure_basic text,
    p_mime_parts jsonb,
    p_sent_date timestamptz,
    p_search_headers jsonb
) RETURNS TABLE (email_id uuid, mailbox_id bigint, uid bigint, uidvalidity bigint)
LANGUAGE plpgsql SECURITY INVOKER
AS $$
DECLARE
    target record;
    new_id uuid;
BEGIN
    IF p_mailbox_id IS NULL THEN
        UPDATE mailboxes m SET uid_next = m.uid_next + 1
         WHERE m.vaultbox_id = p_vaultbox_id AND m.name = p_mailbox_name
        RETURNING m.id, m.uid_next - 1 AS uid, m.uidvalidity INTO target;
    ELSE
        UPDATE mailboxes m SET uid_next = m.uid_next + 1
         WHERE m.vaultbox_id = p_vaultbox_id AND m.id = p_mailbox_id
        RETURNING m.id, m.uid_next - 1 AS uid, m.uidvalidity INTO target;
    END IF;
    IF NOT FOUND THEN
        RETURN;  -- no such mailbox: no row (the caller raises NotFound)
    END IF;
    INSERT INTO encrypted_emails
           (vaultbox_id, mailbox_id, uid, message_id, sender, recipient, subject_encrypted,
            body_encrypted, body_sha256, encryption_method, certificate_fingerprints,
            size_bytes, flags, internal_date, envelope, bodystructure, bodystructure_basic,
            mime_parts, sent_date, search_headers)
    VALUES (p_vaultbox_id, target.id, target.uid, p_message_id, p_sender, p_recipient,
            p_subject_encrypted, p_body, p_body_sha256, p_encryption_method,
            coalesce(p_certificate_fingerprints, '{}'), octet_length(p_body),
            coalesce(p_flags, '{}'), coalesce(p_internal_date, now()), p_envelope,
            p_bodystructure, p_bodystructure_basic, p_mime_parts, p_sent_date, p_search_headers)
    RETURNING id INTO new_id;
    PERFORM pg_notify('encimap_mailbox', p_vaultbox_id || ':' || target.id || ':' || target.uid);
    RETURN QUERY SELECT new_id, target.id, target.uid, target.uidvalidity;
END
$$;

CREATE OR REPLACE FUNCTION encimap_deliver(
    p_vaultbox_id uuid,
    p_body bytea,
    p_internal_date timestamptz,
    p_message_id text,
    p_sender text,
    p_recipient text,
    p_subject_encrypted text,
    p_body_sha256 text,
    p_encryption_method text,
    p_certificate_fingerprints text[],
    p_envelope text,
    p_bodystructure text,
    p_bodystructure_basic text,
    p_mime_parts jsonb,
    p_sent_date timestamptz,
    p_search_headers jsonb,
    p_duplicate_window_seconds double precision,
    p_queue_id text,
    p_outcome text,                 -- 'stored' or 'passthrough' (a duplicate logs 'duplicate')
    p_size_original integer,
    p_duration_ms integer
) RETURNS TABLE (email_id uuid, mailbox_id bigint, uid bigint, duplicate boolean)
LANGUAGE plpgsql SECURITY INVOKER
AS $$
DECLARE
    inbox bigint;
    found_row record;
    is_duplicate boolean := false;
BEGIN
    -- Serialise deliveries to this vaultbox: the duplicate check below then sees every
    -- message committed before this one.
    SELECT m.id INTO inbox FROM mailboxes m
     WHERE m.vaultbox_id = p_vaultbox_id AND m.name = 'INBOX'
       FOR UPDATE;
    IF NOT FOUND THEN
        RETURN;  -- no INBOX: no row (the caller raises NotFound)
    END IF;
    SELECT e.id AS email_id, e.mailbox_id, e.uid INTO found_row FROM encrypted_emails e
     WHERE e.vaultbox_id = p_vaultbox_id AND e.message_id = p_message_id
       AND e.body_sha256 = p_body_sha256
       AND e.received_at > now() - make_interval(secs => p_duplicate_window_seconds)
     LIMIT 1;
    IF FOUND THEN
        is_duplicate := true;
    ELSE
        SELECT s.email_id, s.mailbox_id, s.uid INTO found_row
          FROM encimap_insert_message(
                   p_vaultbox_id, inbox, NULL, p_body, '{}', p_internal_date, p_message_id,
                   p_sender, p_recipient, p_subject_encrypted, p_body_sha256,
                   p_encryption_method, p_certificate_fingerprints, p_envelope,
                   p_bodystructure, p_bodystructure_basic, p_mime_parts, p_sent_date,
                   p_search_headers) s;
    END IF;
    INSERT INTO email_processing_logs
           (vaultbox_id, email_id, queue_id, recipient, outcome, reply_code, algorithm,
            certificate_fingerprints, size_original, size_stored, duration_ms)
    VALUES (p_vaultbox_id, found_row.email_id, p_queue_id, p_recipient,
            CASE WHEN is_duplicate THEN 'duplicate' ELSE p_outcome END, '250',
            p_encryption_method, coalesce(p_certificate_fingerprints, '{}'), p_size_original,
            octet_length(p_body), p_duration_ms);
    RETURN QUERY SELECT found_row.email_id, found_row.mailbox_id, found_row.uid, is_duplicate;
END
$$;

ALTER FUNCTION encimap_insert_message(uuid, bigint, text, bytea, text[], timestamptz, text, text,
    text, text, text, text, text[], text, text, text, jsonb, timestamptz, jsonb)
    OWNER TO encimap_owner;
ALTER FUNCTION encimap_deliver(uuid, bytea, timestamptz, text, text, text, text, text, text,
    text[], text, text, text, jsonb, timestamptz, jsonb, double precision, text, text, integer,
    integer)
    OWNER TO encimap_owner;

-- Functions are executable by PUBLIC by default; only the roles that store messages may.
REVOKE EXECUTE ON FUNCTION encimap_insert_message(uuid, bigint, text, bytea, text[],
    timestamptz, text, text, text, text, text, text, text[], text, text, text, jsonb,
    timestamptz, jsonb) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION encimap_deliver(uuid, bytea, timestamptz, text, text, text, text,
    text, text, text[], text, text, text, jsonb, timestamptz, jsonb, double precision, text,
    text, integer, integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION encimap_insert_message(uuid, bigint, text, bytea, text[],
    timestamptz, text, text, text, text, text, text, text[], text, text, text, jsonb,
    timestamptz, jsonb) TO encimap_intake, encimap_imap;
GRANT EXECUTE ON FUNCTION encimap_deliver(uuid, bytea, timestamptz, text, text, text, text,
    text, text, text[], text, text, text, jsonb, timestamptz, jsonb, double precision, text,
    text, integer, integer) TO encimap_intake;
