-- IMAP protocol state RFC 3501 asks for that the mailbox rows could not hold.

-- Subscriptions are names, not mailboxes (RFC 3501 6.3.6, 6.3.9): DELETE keeps a mailbox's
-- subscription, UNSUBSCRIBE works on a name whose mailbox is gone, and LSUB/LIST (SUBSCRIBED)
-- show such names (\NonExistent). So they move from mailboxes.subscribed to their own table.
-- The default mailboxes start subscribed (repeatable/30_default_mailboxes.sql).
CREATE TABLE mailbox_subscriptions (
    vaultbox_id  uuid NOT NULL REFERENCES vaultboxes (id) ON DELETE CASCADE,
    name         text NOT NULL CHECK (name <> ''),
    PRIMARY KEY (vaultbox_id, name)
);
INSERT INTO mailbox_subscriptions (vaultbox_id, name)
     SELECT vaultbox_id, name FROM mailboxes WHERE subscribed
ON CONFLICT DO NOTHING;
ALTER TABLE mailboxes DROP COLUMN subscribed;

-- \Recent (RFC 3501 2.3.2): a message is recent in exactly one session, the first to select
-- the mailbox after it arrived. Messages with uid >= first_recent_uid have not been claimed
-- by any session yet; a read-write SELECT (or a selected session learning of new mail) moves
-- it past what it has seen, in one UPDATE, so two sessions never both get a message as recent.
ALTER TABLE mailboxes ADD COLUMN first_recent_uid bigint NOT NULL DEFAULT 1;
