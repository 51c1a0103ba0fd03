-- Counters kept at write time, so STATUS, SELECT and the quota check at RCPT read one row
-- instead of counting a mailbox or a vaultbox (repeatable/35_message_counters.sql keeps them;
-- `encimap db recount` repairs them).
--
-- Per mailbox: its messages, their stored bytes and those without \Seen. Per vaultbox (a table
-- of encimap's own: the platform's vaultboxes row is left alone): every row of
-- encrypted_emails naming it, placed in a mailbox or not, and their bytes; this is what the
-- quota (`limits` max_messages / max_bytes) is checked against.
ALTER TABLE mailboxes
    ADD COLUMN IF NOT EXISTS messages bigint NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS bytes bigint NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS unseen bigint NOT NULL DEFAULT 0,
    -- Keywords (flags other than \System ones) ever set in the mailbox, sorted: what SELECT
    -- lists in FLAGS. Only grows, as Dovecot's keyword list does (RFC 3501 7.2.6 allows
    -- listing a keyword no message has).
    ADD COLUMN IF NOT EXISTS keywords text[] NOT NULL DEFAULT '{}';

CREATE TABLE IF NOT EXISTS vaultbox_usage (
    vaultbox_id  uuid PRIMARY KEY REFERENCES vaultboxes (id) ON DELETE CASCADE,
    messages     bigint NOT NULL DEFAULT 0,
    bytes        bigint NOT NULL DEFAULT 0
);

-- What is stored already. On an adopted database this reads encrypted_emails once, through
-- the (mailbox_id, uid) INCLUDE (flags, size_bytes) index for the mailbox counters.
UPDATE mailboxes m
   SET messages = c.messages, bytes = c.bytes, unseen = c.unseen
  FROM (SELECT e.mailbox_id, count(*) AS messages, coalesce(sum(e.size_bytes), 0) AS bytes,
               count(*) FILTER (WHERE NOT e.flags @> ARRAY['\Seen']) AS unseen
          FROM encrypted_emails e WHERE e.mailbox_id IS NOT NULL
         GROUP BY e.mailbox_id) c
 WHERE m.id = c.mailbox_id;
UPDATE mailboxes m SET keywords = k.keywords
  FROM (SELECT e.mailbox_id, array_agg(DISTINCT f ORDER BY f) AS keywords
          FROM encrypted_emails e, unnest(e.flags) f
         WHERE e.mailbox_id IS NOT NULL AND left(f, 1) <> '\'
         GROUP BY e.mailbox_id) k
 WHERE m.id = k.mailbox_id;

INSERT INTO vaultbox_usage (vaultbox_id, messages, bytes)
SELECT e.vaultbox_id, count(*), coalesce(sum(e.size_bytes), 0)
  FROM encrypted_emails e GROUP BY e.vaultbox_id
ON CONFLICT (vaultbox_id) DO UPDATE SET messages = EXCLUDED.messages, bytes = EXCLUDED.bytes;

-- EXPUNGE finds the messages flagged \Deleted of one mailbox without reading the others.
CREATE INDEX IF NOT EXISTS encrypted_emails_deleted_idx
    ON encrypted_emails (mailbox_id, uid) WHERE flags @> ARRAY['\Deleted'];
