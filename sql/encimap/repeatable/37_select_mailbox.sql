-- \Recent (RFC 3501 2.3.2): a message is \Recent to the first session that learns of it, and
-- to no other. mailboxes.first_recent_uid is the first UID no session has had as \Recent yet.
--
-- The claim of a session: make the messages up to p_up_to_uid \Recent to it if no session has
-- had them as \Recent yet; returns the first UID it got (those from it on are its \Recent).
-- The row is locked only when there is something to claim (a claim waits for the writers of
-- the mailbox, which hold its row until they commit), and FOR NO KEY UPDATE does not wait for
-- inserts that only reference the mailbox; the condition is checked again on the row as it is
-- once locked (a session that claimed in between leaves this one nothing). PL/pgSQL, which
-- keeps its plan for the session (a SQL function with an UPDATE is planned at every call).
CREATE OR REPLACE FUNCTION encimap_claim_recent(p_mailbox_id bigint, p_up_to_uid bigint)
RETURNS bigint
LANGUAGE plpgsql SECURITY INVOKER
AS $$
DECLARE
    first_claimed bigint;
BEGIN
    WITH claimed AS (
        UPDATE mailboxes m SET first_recent_uid = p_up_to_uid + 1
          FROM (SELECT o.id, o.first_recent_uid FROM mailboxes o
                 WHERE o.id = p_mailbox_id AND o.first_recent_uid <= p_up_to_uid
                   FOR NO KEY UPDATE) old
         WHERE m.id = old.id
        RETURNING old.first_recent_uid)
    SELECT c.first_recent_uid INTO first_claimed FROM claimed c;
    RETURN coalesce(first_claimed, p_up_to_uid + 1);
END
$$;
REVOKE EXECUTE ON FUNCTION encimap_claim_recent(bigint, bigint) FROM PUBLIC;

-- SELECT and EXAMINE in one round trip (RFC 3501 6.3.1, 6.3.2; encimap.store.flagsync): the
-- mailbox of the vaultbox by its (canonical) name, the UIDs of its messages as
-- array_send(bigint[]) (unpacked without a Python object per message), its keywords,
-- HIGHESTMODSEQ (RFC 7162) and first message without \Seen, all from one snapshot; then, for
-- a session that takes part in \Recent, its claim up to the highest UID read, tried only when
-- that UID is one no session has had as \Recent. No row: no such mailbox.
-- Columns are always qualified: the OUT parameters share their names.
CREATE OR REPLACE FUNCTION encimap_select_mailbox(
    p_vaultbox_id uuid, p_name text,
    p_claim_recent boolean,         -- false: EXAMINE, or a session without \Recent (IMAP4rev2)
    OUT id bigint, OUT vaultbox_id uuid, OUT name text, OUT special_use text,
    OUT uidvalidity bigint, OUT uid_next bigint,
    OUT uids bytea,                 -- array_send(bigint[]), ascending
    OUT keywords text[], OUT highest_modseq bigint, OUT first_unseen_uid bigint,
    OUT recent_from bigint          -- the messages \Recent to this session: UIDs from it on
) RETURNS SETOF record
LANGUAGE plpgsql SECURITY INVOKER
AS $$
DECLARE
    listed bigint[];
    unclaimed bigint;               -- first_recent_uid as read
BEGIN
    SELECT m.id, m.vaultbox_id, m.name, m.special_use, m.uidvalidity, m.uid_next,
           m.first_recent_uid, m.keywords, m.highest_modseq,
           ARRAY(SELECT e.uid FROM encrypted_emails e WHERE e.mailbox_id = m.id ORDER BY e.uid),
           (SELECT e.uid FROM encrypted_emails e
             WHERE e.mailbox_id = m.id AND NOT e.flags @> ARRAY['\Seen']
             ORDER BY e.uid LIMIT 1)
      INTO id, vaultbox_id, name, special_use, uidvalidity, uid_next, unclaimed, keywords,
           highest_modseq, listed, first_unseen_uid
      FROM mailboxes m
     WHERE m.vaultbox_id = p_vaultbox_id AND m.name = p_name;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    uids := array_send(listed);
    recent_from := unclaimed;
    IF p_claim_recent AND listed[cardinality(listed)] >= unclaimed THEN
        recent_from := encimap_claim_recent(id, listed[cardinality(listed)]);
    END IF;
    RETURN NEXT;
END
$$;
REVOKE EXECUTE ON FUNCTION encimap_select_mailbox(uuid, text, boolean) FROM PUBLIC;
