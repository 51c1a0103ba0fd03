-- Storing a message in one round trip. `encimap_insert_message` is the one insert path (intake
-- delivery and IMAP APPEND): next UID of the mailbox (its row lock orders concurrent inserts,
-- so UIDs become visible in commit order), the row, and the NOTIFY that IMAP sessions wait for
-- (payload '<vaultbox>:<mailbox>:<uid>', see encimap.store.events); with no such mailbox it
-- returns a row of NULLs. `encimap_deliver` is the intake's delivery: lock the vaultbox's INBOX
-- (deliveries to one vaultbox are serialised, so the duplicate check sees every message
-- committed before), skip a duplicate (same Message-ID and body hash within the window, e.g. an
-- MTA retrying after a lost reply), insert, log one email_processing_logs row.
-- Both are SECURITY INVOKER: they run with the caller's grants (repeatable/90_privileges.sql).
-- Called as one statement, a call is its own transaction. They return composites filled in
-- place (no RETURN QUERY), which plpgsql evaluates as simple expressions: cheaper per delivery.
-- The platform's NOT NULL columns message_id, sender and recipient get '' when there is none
-- (mail without Message-ID, the null reverse path).

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
    p_search_headers jsonb,
    OUT email_id uuid,              -- all four NULL: no such mailbox (the caller raises NotFound)
    OUT mailbox_id bigint,
    OUT uid bigint,
    OUT uidvalidity bigint
)
LANGUAGE plpgsql SECURITY INVOKER
AS $$
BEGIN
    IF p_mailbox_id IS NULL THEN
        UPDATE mailboxes m SET uid_next = m.uid_next + 1
         WHERE m.vaultbox_id = p_vaultbox_id AND m.name = p_mailbox_name
        RETURNING m.id, m.uid_next - 1, m.uidvalidity INTO mailbox_id, uid, uidvalidity;
    ELSE
        UPDATE mailboxes m SET uid_next = m.uid_next + 1
         WHERE m.vaultbox_id = p_vaultbox_id AND m.id = p_mailbox_id
        RETURNING m.id, m.uid_next - 1, m.uidvalidity INTO mailbox_id, uid, uidvalidity;
    END IF;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    INSERT INTO encrypted_emails AS e
           (vaultbox_id, mailbox_id, uid, message_id, sender, recipient, subject_encrypted,
            body, body_sha256, encryption_method, certificate_fingerprints,
            size_bytes, flags, internal_date, envelope, bodystructure, bodystructure_basic,
            mime_parts, sent_date, search_headers)
    VALUES (p_vaultbox_id, encimap_insert_message.mailbox_id, encimap_insert_message.uid,
            coalesce(p_message_id, ''), coalesce(p_sender, ''), coalesce(p_recipient, ''),
            p_subject_encrypted, p_body, p_body_sha256,
            p_encryption_method, coalesce(p_certificate_fingerprints, '{}'),
            octet_length(p_body), coalesce(p_flags, '{}'), coalesce(p_internal_date, now()),
            p_envelope, p_bodystructure, p_bodystructure_basic, p_mime_parts, p_sent_date,
            p_search_headers)
    RETURNING e.id INTO email_id;
    PERFORM pg_notify('encimap_mailbox', p_vaultbox_id || ':' || mailbox_id || ':' || uid);
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
    stored record;
BEGIN
    -- Serialise deliveries to this vaultbox: the duplicate check below then sees every
    -- message committed before this one.
    SELECT m.id INTO inbox FROM mailboxes m
     WHERE m.vaultbox_id = p_vaultbox_id AND m.name = 'INBOX'
       FOR UPDATE;
    IF NOT FOUND THEN
        RETURN;  -- no INBOX: no row (the caller raises NotFound)
    END IF;
    SELECT e.id, e.mailbox_id, e.uid INTO email_id, mailbox_id, uid FROM encrypted_emails e
     WHERE e.vaultbox_id = p_vaultbox_id AND e.message_id = coalesce(p_message_id, '')
       AND e.body_sha256 = p_body_sha256
       AND e.internal_date > now() - make_interval(secs => p_duplicate_window_seconds);
    duplicate := FOUND;
    IF NOT duplicate THEN
        stored := encimap_insert_message(
            p_vaultbox_id, inbox, NULL, p_body, '{}', p_internal_date, p_message_id, p_sender,
            p_recipient, p_subject_encrypted, p_body_sha256, p_encryption_method,
            p_certificate_fingerprints, p_envelope, p_bodystructure, p_bodystructure_basic,
            p_mime_parts, p_sent_date, p_search_headers);
        email_id := stored.email_id;
        mailbox_id := stored.mailbox_id;
        uid := stored.uid;
    END IF;
    INSERT INTO email_processing_logs
           (vaultbox_id, email_id, queue_id, recipient, outcome, reply_code, algorithm,
            certificate_fingerprints, size_original, size_stored, duration_ms)
    VALUES (p_vaultbox_id, encimap_deliver.email_id, p_queue_id, p_recipient,
            CASE WHEN duplicate THEN 'duplicate' ELSE p_outcome END, '250',
            p_encryption_method, coalesce(p_certificate_fingerprints, '{}'), p_size_original,
            octet_length(p_body), p_duration_ms);
    RETURN NEXT;
END
$$;

-- Functions are executable by PUBLIC by default; repeatable/90_privileges.sql grants them.
REVOKE EXECUTE ON FUNCTION encimap_insert_message(uuid, bigint, text, bytea, text[],
    timestamptz, text, text, text, text, text, text, text[], text, text, text, jsonb,
    timestamptz, jsonb) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION encimap_deliver(uuid, bytea, timestamptz, text, text, text, text,
    text, text, text[], text, text, text, jsonb, timestamptz, jsonb, double precision, text,
    text, integer, integer) FROM PUBLIC;
