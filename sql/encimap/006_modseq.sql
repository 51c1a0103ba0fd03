-- CONDSTORE and QRESYNC (RFC 7162): a mod-sequence per message and per mailbox, and the UIDs
-- expunged with the mod-sequence of their expunge (for VANISHED). repeatable/36_modseq.sql
-- keeps them on every insert, flag change and expunge.
--
-- A message's modseq is nullable without a default, so adding it does not rewrite
-- encrypted_emails: rows stored before have NULL, read as 1 (the mod-sequence every mailbox
-- starts at; its first change makes 2).
ALTER TABLE encrypted_emails ADD COLUMN IF NOT EXISTS modseq bigint;
ALTER TABLE mailboxes ADD COLUMN IF NOT EXISTS highest_modseq bigint NOT NULL DEFAULT 1;

-- CHANGEDSINCE reads the messages changed after a mod-sequence, not the mailbox. Rows still at
-- NULL (1) are never changed since any mod-sequence a client can hold, so they stay out.
CREATE INDEX IF NOT EXISTS encrypted_emails_modseq_idx
    ON encrypted_emails (mailbox_id, modseq) WHERE modseq IS NOT NULL;

-- Expunged UIDs of a mailbox, one row per expunging transaction, as ranges. Old rows are
-- merged into one (its modseq the newest of them) when a mailbox has many: a client that
-- resynchronises from before the merge may be told of a few more vanished UIDs than it knew,
-- which RFC 7162 3.2.5 allows; never fewer.
CREATE TABLE IF NOT EXISTS mailbox_vanished (
    mailbox_id  bigint NOT NULL REFERENCES mailboxes (id) ON DELETE CASCADE,
    modseq      bigint NOT NULL,
    uids        int8multirange NOT NULL,
    PRIMARY KEY (mailbox_id, modseq)
);
