-- Mod-sequences (RFC 7162, sql/encimap/006_modseq.sql): every change of a message's flags,
-- every message placed in a mailbox and every expunge takes the mailbox's next mod-sequence.
-- All changes of one transaction to one mailbox share one mod-sequence (as Dovecot's do): the
-- first takes it by raising mailboxes.highest_modseq, which row-locks the mailbox until commit,
-- so mod-sequences of a mailbox become visible in increasing order and a client that read
-- HIGHESTMODSEQ n has seen every change numbered n or less. encimap's writers lock the mailbox
-- before its messages (repeatable/35_message_counters.sql), so this adds no lock.

-- The transaction's mod-sequence for a mailbox; NULL when the mailbox is gone. Taken on first
-- use and remembered in one transaction-local setting as '<mailbox>:<modseq>' (one setting,
-- not one per mailbox: PostgreSQL keeps every custom setting name a backend ever used). A
-- transaction that goes back to a mailbox after another takes a further one: still in order.
CREATE OR REPLACE FUNCTION encimap_modseq(p_mailbox_id bigint) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp
AS $$
DECLARE
    known text := current_setting('encimap.modseq', true);
    taken bigint;
BEGIN
    -- set in this transaction for this mailbox (a local setting reads '' after it ends)
    IF known LIKE p_mailbox_id || ':%' THEN
        RETURN split_part(known, ':', 2)::bigint;
    END IF;
    UPDATE mailboxes m SET highest_modseq = m.highest_modseq + 1
     WHERE m.id = p_mailbox_id
    RETURNING m.highest_modseq INTO taken;
    IF taken IS NOT NULL THEN
        PERFORM set_config('encimap.modseq', p_mailbox_id || ':' || taken, true);
    END IF;
    RETURN taken;
END
$$;
REVOKE EXECUTE ON FUNCTION encimap_modseq(bigint) FROM PUBLIC;

CREATE OR REPLACE FUNCTION encimap_stamp_modseq() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp
AS $$
BEGIN
    NEW.modseq := encimap_modseq(NEW.mailbox_id);
    RETURN NEW;
END
$$;

CREATE OR REPLACE TRIGGER encrypted_emails_modseq_inserted
    BEFORE INSERT ON encrypted_emails FOR EACH ROW
    WHEN (NEW.mailbox_id IS NOT NULL)
    EXECUTE FUNCTION encimap_stamp_modseq();
-- A flag change, or a row placed in (or moved to) a mailbox; other updates keep the modseq.
CREATE OR REPLACE TRIGGER encrypted_emails_modseq_updated
    BEFORE UPDATE OF flags, mailbox_id, uid ON encrypted_emails FOR EACH ROW
    WHEN (NEW.mailbox_id IS NOT NULL
          AND (OLD.flags, OLD.mailbox_id, OLD.uid) IS DISTINCT FROM
              (NEW.flags, NEW.mailbox_id, NEW.uid))
    EXECUTE FUNCTION encimap_stamp_modseq();

-- Expunged UIDs, per mailbox, with the mod-sequence of the expunge (VANISHED); one statement
-- adds one row per mailbox whatever the number of messages. A mailbox keeps at most
-- `kept` + 1 rows: past twice that, the older ones are merged into one.
CREATE OR REPLACE FUNCTION encimap_record_vanished() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp
AS $$
DECLARE
    kept constant integer := 64;
    d record;
    stamp bigint;
    oldest_kept bigint;
BEGIN
    FOR d IN
        SELECT o.mailbox_id, range_agg(int8range(o.uid, o.uid, '[]')) AS uids
          FROM old_rows o
         WHERE o.mailbox_id IS NOT NULL AND o.uid IS NOT NULL
         GROUP BY o.mailbox_id
         ORDER BY o.mailbox_id
    LOOP
        stamp := encimap_modseq(d.mailbox_id);
        -- NULL: the mailbox itself is being deleted (its rows go with it)
        CONTINUE WHEN stamp IS NULL
            OR NOT EXISTS (SELECT 1 FROM mailboxes m WHERE m.id = d.mailbox_id);
        INSERT INTO mailbox_vanished AS v (mailbox_id, modseq, uids)
        VALUES (d.mailbox_id, stamp, d.uids)
        ON CONFLICT (mailbox_id, modseq) DO UPDATE SET uids = v.uids + EXCLUDED.uids;
        SELECT v.modseq INTO oldest_kept FROM mailbox_vanished v
         WHERE v.mailbox_id = d.mailbox_id
         ORDER BY v.modseq DESC OFFSET 2 * kept LIMIT 1;
        CONTINUE WHEN oldest_kept IS NULL;
        SELECT v.modseq INTO oldest_kept FROM mailbox_vanished v
         WHERE v.mailbox_id = d.mailbox_id
         ORDER BY v.modseq DESC OFFSET kept LIMIT 1;
        UPDATE mailbox_vanished v
           SET uids = (SELECT range_agg(o.uids) FROM mailbox_vanished o
                        WHERE o.mailbox_id = d.mailbox_id AND o.modseq <= oldest_kept)
         WHERE v.mailbox_id = d.mailbox_id AND v.modseq = oldest_kept;
        DELETE FROM mailbox_vanished v
         WHERE v.mailbox_id = d.mailbox_id AND v.modseq < oldest_kept;
    END LOOP;
    RETURN NULL;
END
$$;
REVOKE EXECUTE ON FUNCTION encimap_record_vanished() FROM PUBLIC;

CREATE OR REPLACE TRIGGER encrypted_emails_record_vanished
    AFTER DELETE ON encrypted_emails REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION encimap_record_vanished();
