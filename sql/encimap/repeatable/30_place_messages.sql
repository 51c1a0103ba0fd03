-- Placing messages that have no mailbox yet: the rows the platform's old service stored
-- (backfilled in batches by encimap.store.adoption) and any row inserted later the platform's
-- way, naming only the platform's columns (placed by the trigger below at once). Each goes to
-- its vaultbox's INBOX with the next UIDs, in `processed_at` order; size and internal date come
-- from the stored text. The INBOX row lock orders this with deliveries and APPEND, and the row
-- locks with a concurrent placement of the same rows (a row placed meanwhile is skipped).

CREATE OR REPLACE FUNCTION encimap_place_messages(p_ids uuid[]) RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp
AS $$
DECLARE
    box uuid;
    inbox record;
    ids uuid[];
    placed integer := 0;
BEGIN
    FOR box IN
        SELECT DISTINCT e.vaultbox_id FROM encrypted_emails e
         WHERE e.id = ANY (p_ids) AND e.mailbox_id IS NULL
         ORDER BY e.vaultbox_id
    LOOP
        -- The mailboxes are created only when the INBOX is missing: creating them otherwise
        -- would wait on every mailbox row another transaction is changing (the unique check),
        -- out of the lock order of repeatable/35_message_counters.sql.
        SELECT m.id, m.uid_next INTO inbox FROM mailboxes m
         WHERE m.vaultbox_id = box AND m.name = 'INBOX' FOR UPDATE;
        IF NOT FOUND THEN
            PERFORM encimap_create_default_mailboxes(box);
            SELECT m.id, m.uid_next INTO inbox FROM mailboxes m
             WHERE m.vaultbox_id = box AND m.name = 'INBOX' FOR UPDATE;
        END IF;
        ids := ARRAY(SELECT e.id FROM encrypted_emails e
                      WHERE e.id = ANY (p_ids) AND e.vaultbox_id = box AND e.mailbox_id IS NULL
                      ORDER BY e.processed_at, e.id FOR UPDATE);
        CONTINUE WHEN cardinality(ids) = 0;
        UPDATE encrypted_emails e
           SET mailbox_id = inbox.id,
               uid = inbox.uid_next + o.rank - 1,
               size_bytes = coalesce(octet_length(encimap_stored_bytes(e.body, e.body_encrypted)), 0),
               internal_date = coalesce(e.internal_date, e.processed_at::timestamptz, now())
          FROM unnest(ids) WITH ORDINALITY AS o(id, rank)
         WHERE e.id = o.id;
        UPDATE mailboxes SET uid_next = inbox.uid_next + cardinality(ids) WHERE id = inbox.id;
        PERFORM pg_notify('encimap_mailbox', box || ':' || inbox.id || ':'
                                             || (inbox.uid_next + cardinality(ids) - 1));
        placed := placed + cardinality(ids);
    END LOOP;
    RETURN placed;
END
$$;
REVOKE EXECUTE ON FUNCTION encimap_place_messages(uuid[]) FROM PUBLIC;

CREATE OR REPLACE FUNCTION encimap_place_inserted() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp
AS $$
BEGIN
    PERFORM encimap_place_messages(ARRAY[NEW.id]);
    RETURN NULL;
END
$$;

-- Only rows inserted without a mailbox fire it; encimap's own inserts name one.
CREATE OR REPLACE TRIGGER encrypted_emails_place_inserted
    AFTER INSERT ON encrypted_emails FOR EACH ROW
    WHEN (NEW.mailbox_id IS NULL)
    EXECUTE FUNCTION encimap_place_inserted();
