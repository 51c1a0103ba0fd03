-- IMAP protocol state RFC 3501 asks for that the mailbox rows could not hold.
--
-- Subscriptions are names, not mailboxes (RFC 3501 6.3.6, 6.3.9): DELETE keeps a mailbox's
-- subscription, UNSUBSCRIBE works on a name whose mailbox is gone, and LSUB/LIST (SUBSCRIBED)
-- show such names (\NonExistent). So they move from mailboxes.subscribed to their own table.
CREATE TABLE IF NOT EXISTS mailbox_subscriptions (
    vaultbox_id  uuid NOT NULL REFERENCES vaultboxes (id) ON DELETE CASCADE,
    name         text NOT NULL CHECK (name <> ''),
    PRIMARY KEY (vaultbox_id, name)
);

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM information_schema.columns
                WHERE table_schema = current_schema() AND table_name = 'mailboxes'
                  AND column_name = 'subscribed') THEN
        INSERT INTO mailbox_subscriptions (vaultbox_id, name)
             SELECT vaultbox_id, name FROM mailboxes WHERE subscribed
        ON CONFLICT DO NOTHING;
        ALTER TABLE mailboxes DROP COLUMN subscribed;
    END IF;
END
$$;


-- \Recent (RFC 3501 2.3.2): a message is recent in exactly one session, the first to select
-- the mailbox after it arrived. Messages with uid >= first_recent_uid have not been claimed
-- by any session yet; a read-write SELECT (or a selected session learning of new mail) moves
-- it past what it has seen, in one UPDATE, so two sessions never both get a message as recent.
ALTER TABLE mailboxes ADD COLUMN IF NOT EXISTS first_recent_uid bigint NOT NULL DEFAULT 1;

-- The default mailboxes (INBOX and the special-use ones the vaultbox trigger creates) start
-- subscribed, whoever created the vaultbox; mailboxes a client CREATEs do not (RFC 3501 6.3.3).
CREATE OR REPLACE FUNCTION encimap_subscribe_default_mailbox() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp
AS $$
BEGIN
    INSERT INTO mailbox_subscriptions (vaultbox_id, name)
    VALUES (NEW.vaultbox_id, NEW.name) ON CONFLICT DO NOTHING;
    RETURN NULL;
END
$$;
REVOKE EXECUTE ON FUNCTION encimap_subscribe_default_mailbox() FROM PUBLIC;

CREATE OR REPLACE TRIGGER mailboxes_default_subscription
    AFTER INSERT ON mailboxes FOR EACH ROW
    WHEN (NEW.name = 'INBOX' OR NEW.special_use IS NOT NULL)
    EXECUTE FUNCTION encimap_subscribe_default_mailbox();
