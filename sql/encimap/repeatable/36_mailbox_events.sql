-- The NOTIFY of a flag change or expunge on channel `encimap_mailbox` (payload
-- '<vaultbox>:<mailbox>:<kind>:<origin>:<uids>', see encimap.store.events): the UIDs as a
-- range list such as '1-5,9', or '*' (resync) when that would not fit in a payload
-- (PostgreSQL's limit is 8000 bytes). Called from the statement that makes the change, so
-- a write is one round trip; sent on commit, like every NOTIFY. Returns how many UIDs it
-- published (0: none, and no NOTIFY).

CREATE OR REPLACE FUNCTION encimap_publish_change(
    p_vaultbox_id uuid, p_mailbox_id bigint, p_kind text, p_origin text, p_uids bigint[]
) RETURNS integer
LANGUAGE plpgsql SECURITY INVOKER
AS $$
DECLARE
    ranges text;
BEGIN
    IF coalesce(cardinality(p_uids), 0) = 0 THEN
        RETURN 0;
    END IF;
    SELECT string_agg(CASE WHEN r.lo = r.hi THEN r.lo::text ELSE r.lo || '-' || r.hi END, ','
                      ORDER BY r.lo)
      INTO ranges
      FROM (SELECT min(s.u) AS lo, max(s.u) AS hi
              FROM (SELECT d.u, d.u - row_number() OVER (ORDER BY d.u) AS run
                      FROM (SELECT DISTINCT u FROM unnest(p_uids) AS u) d) s
             GROUP BY s.run) r;
    IF length(ranges) > 7000 THEN
        ranges := '*';
    END IF;
    PERFORM pg_notify('encimap_mailbox',
                      p_vaultbox_id || ':' || p_mailbox_id || ':' || p_kind || ':' || p_origin
                      || ':' || ranges);
    RETURN cardinality(p_uids);
END
$$;
REVOKE EXECUTE ON FUNCTION encimap_publish_change(uuid, bigint, text, text, bigint[]) FROM PUBLIC;

-- STORE and EXPUNGE in one round trip each: lock the mailbox (encimap_lock_mailboxes, the lock
-- order of 35_message_counters.sql), change its messages, publish what changed. Each statement
-- of a function takes its own snapshot, so the change sees every write committed before the
-- lock was granted, as a separate statement after the lock would; and the lock is held only
-- while PostgreSQL runs the function, never across a round trip to the client.
-- The messages named by UID ranges (p_lows, p_highs) are read as in encimap.store.uidsets and
-- changed by ctid (see _CHOSEN in encimap.store.messages): one index range per range in any
-- plan. So encimap_store_flags keeps one generic plan for the session (plan_cache_mode):
-- left to choose, PostgreSQL planned its UPDATE again at every call (the custom plan looked
-- cheaper for the arrays given), which took a quarter of a small STORE's time.

CREATE OR REPLACE FUNCTION encimap_store_flags(
    p_vaultbox_id uuid, p_mailbox_id bigint, p_lows bigint[], p_highs bigint[],
    p_mode text,                    -- 'add', 'remove' or 'replace'
    p_flags text[],                 -- sorted, distinct
    p_origin text,
    p_unchanged_since bigint,       -- STORE (UNCHANGEDSINCE n), RFC 7162 3.1.3; NULL: none
    OUT uid bigint, OUT flags text[], OUT modseq bigint,
    OUT modified boolean            -- false: changed, with its new flags and mod-sequence;
                                    -- true: left alone, changed after p_unchanged_since
) RETURNS SETOF record
LANGUAGE plpgsql SECURITY INVOKER SET plan_cache_mode = force_generic_plan
AS $$
#variable_conflict use_column
DECLARE
    changed bigint[] := '{}';
    skipped bigint[] := '{}';
BEGIN
    IF NOT p_mailbox_id = ANY (encimap_lock_mailboxes(p_vaultbox_id, ARRAY[p_mailbox_id])) THEN
        RETURN;
    END IF;
    IF p_unchanged_since IS NOT NULL THEN
        -- Rows stored before mod-sequences existed read as 1 (006_modseq.sql).
        SELECT coalesce(array_agg(e.uid ORDER BY e.uid), '{}') INTO skipped
          FROM unnest(p_lows, p_highs) AS r(lo, hi)
         CROSS JOIN LATERAL (
               SELECT m.uid FROM encrypted_emails m
                WHERE m.mailbox_id = p_mailbox_id AND m.uid BETWEEN r.lo AND r.hi
                  AND coalesce(m.modseq, 1) > p_unchanged_since
               OFFSET 0) AS e;
    END IF;
    -- Rows that already have the wanted flags are not written (nor reported).
    modified := false;
    FOR uid, flags, modseq IN
        UPDATE encrypted_emails t
           SET flags = CASE p_mode
                   WHEN 'add' THEN ARRAY(SELECT DISTINCT f FROM unnest(t.flags || p_flags) f
                                          ORDER BY f)
                   WHEN 'remove' THEN ARRAY(SELECT f FROM unnest(t.flags) f
                                             WHERE f <> ALL (p_flags) ORDER BY f)
                   ELSE p_flags END
         WHERE t.ctid = ANY (ARRAY(
                   SELECT e.ctid FROM unnest(p_lows, p_highs) AS r(lo, hi)
                    CROSS JOIN LATERAL (
                          SELECT ctid FROM encrypted_emails
                           WHERE mailbox_id = p_mailbox_id
                             AND encrypted_emails.uid BETWEEN r.lo AND r.hi
                          OFFSET 0) AS e))
           AND t.mailbox_id = p_mailbox_id
           AND NOT t.uid = ANY (skipped)
           AND CASE p_mode
                   WHEN 'add' THEN NOT t.flags @> p_flags
                   WHEN 'remove' THEN t.flags && p_flags
                   ELSE NOT (t.flags @> p_flags AND t.flags <@ p_flags) END
        RETURNING t.uid, t.flags, t.modseq
    LOOP
        changed := changed || uid;
        RETURN NEXT;
    END LOOP;
    PERFORM encimap_publish_change(p_vaultbox_id, p_mailbox_id, 'flags', p_origin, changed);
    modified := true;
    flags := NULL;
    modseq := NULL;
    FOREACH uid IN ARRAY skipped LOOP
        RETURN NEXT;
    END LOOP;
END
$$;
REVOKE EXECUTE ON FUNCTION encimap_store_flags(uuid, bigint, bigint[], bigint[], text, text[],
    text, bigint) FROM PUBLIC;

CREATE OR REPLACE FUNCTION encimap_expunge(
    p_vaultbox_id uuid, p_mailbox_id bigint,
    p_lows bigint[], p_highs bigint[],  -- NULL: every message flagged \Deleted
    p_origin text
) RETURNS SETOF bigint              -- the UIDs expunged
LANGUAGE plpgsql SECURITY INVOKER
AS $$
DECLARE
    gone bigint[];
BEGIN
    IF NOT p_mailbox_id = ANY (encimap_lock_mailboxes(p_vaultbox_id, ARRAY[p_mailbox_id])) THEN
        RETURN;
    END IF;
    IF p_lows IS NULL THEN
        -- The partial index encrypted_emails_deleted_idx holds exactly these rows.
        WITH d AS (DELETE FROM encrypted_emails t
                    WHERE t.mailbox_id = p_mailbox_id AND t.flags @> ARRAY['\Deleted']
                   RETURNING t.uid)
        SELECT coalesce(array_agg(d.uid), '{}') INTO gone FROM d;
    ELSE
        WITH d AS (DELETE FROM encrypted_emails t
                    WHERE t.ctid = ANY (ARRAY(
                              SELECT e.ctid FROM unnest(p_lows, p_highs) AS r(lo, hi)
                               CROSS JOIN LATERAL (
                                     SELECT ctid FROM encrypted_emails
                                      WHERE mailbox_id = p_mailbox_id AND uid BETWEEN r.lo AND r.hi
                                     OFFSET 0) AS e))
                      AND t.mailbox_id = p_mailbox_id AND t.flags @> ARRAY['\Deleted']
                   RETURNING t.uid)
        SELECT coalesce(array_agg(d.uid), '{}') INTO gone FROM d;
    END IF;
    PERFORM encimap_publish_change(p_vaultbox_id, p_mailbox_id, 'expunge', p_origin, gone);
    RETURN QUERY SELECT unnest(gone);
END
$$;
REVOKE EXECUTE ON FUNCTION encimap_expunge(uuid, bigint, bigint[], bigint[], text) FROM PUBLIC;
