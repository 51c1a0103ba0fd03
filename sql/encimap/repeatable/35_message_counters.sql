-- The counters of sql/encimap/003_counters.sql, kept by every statement that writes
-- encrypted_emails: encimap's inserts, copies, flag changes and expunges, the placement of
-- legacy rows, and whatever the platform itself inserts, updates or deletes. Statement-level
-- triggers with transition tables: one counter update per mailbox and per vaultbox a statement
-- touched, whatever the number of rows (a STORE on 1,000 messages updates one mailbox row).
--
-- Lock order (no deadlock among encimap's writers): mailbox rows first, in id order; then
-- message rows; then vaultbox_usage rows, in vaultbox order. encimap's writers lock the
-- mailboxes they change before touching a message (encimap_deliver and encimap_place_messages
-- the INBOX, encimap_insert_message its mailbox, STORE/EXPUNGE/COPY/MOVE in
-- encimap.store.messages through encimap_lock_mailboxes), so the counter updates below find the
-- mailbox already theirs. A counter changes only together with the rows it counts, in the same
-- transaction: a reader sees both or neither.

CREATE OR REPLACE FUNCTION encimap_count_messages() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp
AS $$
DECLARE
    -- Per (mailbox, vaultbox): what the statement's new rows add and its old rows take away
    -- (an UPDATE has both). Static queries, planned once per session: each runs only for the
    -- events whose transition table it names.
    mailbox_ids bigint[] := '{}';
    vaultbox_ids uuid[] := '{}';
    n_messages bigint[] := '{}';
    n_bytes bigint[] := '{}';
    n_unseen bigint[] := '{}';
    a_mailbox bigint[];
    a_vaultbox uuid[];
    a_messages bigint[];
    a_bytes bigint[];
    a_unseen bigint[];
    d record;
    named integer;
BEGIN
    IF TG_OP <> 'DELETE' THEN
        SELECT array_agg(g.mailbox_id), array_agg(g.vaultbox_id), array_agg(g.messages),
               array_agg(g.bytes), array_agg(g.unseen)
          INTO a_mailbox, a_vaultbox, a_messages, a_bytes, a_unseen
          FROM (SELECT n.mailbox_id, n.vaultbox_id, count(*) AS messages,
                       sum(coalesce(n.size_bytes, 0)) AS bytes,
                       count(*) FILTER (WHERE n.mailbox_id IS NOT NULL
                                          AND NOT n.flags @> ARRAY['\Seen']) AS unseen
                  FROM new_rows n GROUP BY n.mailbox_id, n.vaultbox_id) g;
        mailbox_ids := a_mailbox;
        vaultbox_ids := a_vaultbox;
        n_messages := a_messages;
        n_bytes := a_bytes;
        n_unseen := a_unseen;
    END IF;
    IF TG_OP <> 'INSERT' THEN
        SELECT array_agg(g.mailbox_id), array_agg(g.vaultbox_id), array_agg(-g.messages),
               array_agg(-g.bytes), array_agg(-g.unseen)
          INTO a_mailbox, a_vaultbox, a_messages, a_bytes, a_unseen
          FROM (SELECT o.mailbox_id, o.vaultbox_id, count(*) AS messages,
                       sum(coalesce(o.size_bytes, 0)) AS bytes,
                       count(*) FILTER (WHERE o.mailbox_id IS NOT NULL
                                          AND NOT o.flags @> ARRAY['\Seen']) AS unseen
                  FROM old_rows o GROUP BY o.mailbox_id, o.vaultbox_id) g;
        mailbox_ids := mailbox_ids || a_mailbox;
        vaultbox_ids := vaultbox_ids || a_vaultbox;
        n_messages := n_messages || a_messages;
        n_bytes := n_bytes || a_bytes;
        n_unseen := n_unseen || a_unseen;
    END IF;
    FOR d IN
        SELECT c.mailbox_id, sum(c.messages) AS messages, sum(c.bytes) AS bytes,
               sum(c.unseen) AS unseen
          FROM unnest(mailbox_ids, n_messages, n_bytes, n_unseen)
               AS c(mailbox_id, messages, bytes, unseen)
         WHERE c.mailbox_id IS NOT NULL
         GROUP BY c.mailbox_id
        HAVING sum(c.messages) <> 0 OR sum(c.bytes) <> 0 OR sum(c.unseen) <> 0
         ORDER BY c.mailbox_id
    LOOP
        UPDATE mailboxes m
           SET messages = m.messages + d.messages, bytes = m.bytes + d.bytes,
               unseen = m.unseen + d.unseen
         WHERE m.id = d.mailbox_id;
    END LOOP;
    IF TG_OP <> 'DELETE' THEN
        -- Keywords new to a mailbox join its list (what SELECT shows in FLAGS).
        FOR d IN
            SELECT n.mailbox_id, array_agg(DISTINCT f) AS keywords
              FROM new_rows n, unnest(n.flags) f
             WHERE n.mailbox_id IS NOT NULL AND left(f, 1) <> '\'
             GROUP BY n.mailbox_id
             ORDER BY n.mailbox_id
        LOOP
            UPDATE mailboxes m
               SET keywords = ARRAY(SELECT DISTINCT k FROM unnest(m.keywords || d.keywords) k
                                     ORDER BY k)
             WHERE m.id = d.mailbox_id AND NOT m.keywords @> d.keywords
            RETURNING cardinality(m.keywords) INTO named;
            -- The list never shrinks (a keyword no message has any more stays named), so a
            -- client adding and removing new keywords would grow it, and every FLAGS
            -- response, without end: a mailbox names at most 1,000. The statement fails as
            -- one beyond a limit (the IMAP session answers NO [LIMIT]).
            IF named > 1000 THEN
                RAISE EXCEPTION 'mailbox % would name more than 1000 keywords', d.mailbox_id
                      USING ERRCODE = 'program_limit_exceeded';
            END IF;
        END LOOP;
    END IF;
    FOR d IN
        SELECT c.vaultbox_id, sum(c.messages) AS messages, sum(c.bytes) AS bytes
          FROM unnest(vaultbox_ids, n_messages, n_bytes) AS c(vaultbox_id, messages, bytes)
         GROUP BY c.vaultbox_id
        HAVING sum(c.messages) <> 0 OR sum(c.bytes) <> 0
         ORDER BY c.vaultbox_id
    LOOP
        INSERT INTO vaultbox_usage AS u (vaultbox_id, messages, bytes)
        SELECT v.id, d.messages, d.bytes FROM vaultboxes v WHERE v.id = d.vaultbox_id
        ON CONFLICT (vaultbox_id) DO UPDATE
           SET messages = u.messages + EXCLUDED.messages, bytes = u.bytes + EXCLUDED.bytes;
    END LOOP;
    RETURN NULL;
END
$$;
REVOKE EXECUTE ON FUNCTION encimap_count_messages() FROM PUBLIC;

CREATE OR REPLACE TRIGGER encrypted_emails_count_inserted
    AFTER INSERT ON encrypted_emails REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION encimap_count_messages();
CREATE OR REPLACE TRIGGER encrypted_emails_count_updated
    AFTER UPDATE ON encrypted_emails REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION encimap_count_messages();
CREATE OR REPLACE TRIGGER encrypted_emails_count_deleted
    AFTER DELETE ON encrypted_emails REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION encimap_count_messages();

-- Lock mailboxes before changing their messages (the lock order above); the caller's
-- transaction keeps the locks. Returns the ids locked (those of this vaultbox that exist).
-- PL/pgSQL, not SQL: a SQL function that cannot be inlined (this one locks) is parsed and
-- planned again at every call, and every STORE, EXPUNGE, COPY and MOVE calls it; PL/pgSQL
-- keeps the plan for the session.
CREATE OR REPLACE FUNCTION encimap_lock_mailboxes(p_vaultbox_id uuid, p_ids bigint[])
RETURNS bigint[]
LANGUAGE plpgsql SECURITY INVOKER
AS $$
BEGIN
    RETURN ARRAY(SELECT m.id FROM mailboxes m
                  WHERE m.id = ANY (p_ids) AND m.vaultbox_id = p_vaultbox_id
                  ORDER BY m.id FOR NO KEY UPDATE);
END
$$;
REVOKE EXECUTE ON FUNCTION encimap_lock_mailboxes(uuid, bigint[]) FROM PUBLIC;

-- Recount one vaultbox from its rows (`encimap db recount`): locks its mailboxes and its usage
-- row in the order above, so no writer changes them meanwhile, and says whether anything was
-- off.
CREATE OR REPLACE FUNCTION encimap_recount(p_vaultbox_id uuid) RETURNS boolean
LANGUAGE plpgsql SECURITY INVOKER
AS $$
DECLARE
    fixed integer;
    usage_fixed integer;
BEGIN
    PERFORM 1 FROM mailboxes m WHERE m.vaultbox_id = p_vaultbox_id
      ORDER BY m.id FOR NO KEY UPDATE;
    INSERT INTO vaultbox_usage (vaultbox_id) VALUES (p_vaultbox_id) ON CONFLICT DO NOTHING;
    PERFORM 1 FROM vaultbox_usage u WHERE u.vaultbox_id = p_vaultbox_id FOR UPDATE;
    WITH c AS (
        SELECT m.id,
               (SELECT count(*) FROM encrypted_emails e WHERE e.mailbox_id = m.id) AS messages,
               (SELECT coalesce(sum(e.size_bytes), 0) FROM encrypted_emails e
                 WHERE e.mailbox_id = m.id) AS bytes,
               (SELECT count(*) FROM encrypted_emails e
                 WHERE e.mailbox_id = m.id AND NOT e.flags @> ARRAY['\Seen']) AS unseen
          FROM mailboxes m WHERE m.vaultbox_id = p_vaultbox_id
    )
    UPDATE mailboxes m SET messages = c.messages, bytes = c.bytes, unseen = c.unseen
      FROM c
     WHERE m.id = c.id
       AND (m.messages, m.bytes, m.unseen) IS DISTINCT FROM (c.messages, c.bytes, c.unseen);
    GET DIAGNOSTICS fixed = ROW_COUNT;
    UPDATE vaultbox_usage u SET messages = c.messages, bytes = c.bytes
      FROM (SELECT count(*) AS messages, coalesce(sum(e.size_bytes), 0) AS bytes
              FROM encrypted_emails e WHERE e.vaultbox_id = p_vaultbox_id) c
     WHERE u.vaultbox_id = p_vaultbox_id
       AND (u.messages, u.bytes) IS DISTINCT FROM (c.messages, c.bytes);
    GET DIAGNOSTICS usage_fixed = ROW_COUNT;
    RETURN fixed + usage_fixed > 0;
END
$$;
REVOKE EXECUTE ON FUNCTION encimap_recount(uuid) FROM PUBLIC;
