-- The mailboxes every vaultbox has, created with the vaultbox whoever inserts it (encimap's
-- CLI or the platform), so mail to a new vaultbox is delivered at once, and subscribed
-- (mailboxes a client CREATEs are not, RFC 3501 6.3.3). The trigger function runs with its
-- owner's rights: the platform's login needs no rights on encimap's tables.

CREATE OR REPLACE FUNCTION encimap_create_default_mailboxes(p_vaultbox_id uuid) RETURNS void
LANGUAGE sql SECURITY DEFINER SET search_path = public, pg_temp
AS $$
    WITH made AS (
        INSERT INTO mailboxes (vaultbox_id, name, special_use)
        SELECT p_vaultbox_id, d.name, d.special_use
          FROM (VALUES ('INBOX', NULL), ('Sent', '\Sent'), ('Drafts', '\Drafts'),
                       ('Trash', '\Trash'), ('Junk', '\Junk')) AS d(name, special_use)
        ON CONFLICT (vaultbox_id, name) DO NOTHING
        RETURNING name
    )
    INSERT INTO mailbox_subscriptions (vaultbox_id, name)
    SELECT p_vaultbox_id, name FROM made
    ON CONFLICT DO NOTHING;
$$;
REVOKE EXECUTE ON FUNCTION encimap_create_default_mailboxes(uuid) FROM PUBLIC;

CREATE OR REPLACE FUNCTION encimap_vaultbox_created() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp
AS $$
BEGIN
    PERFORM encimap_create_default_mailboxes(NEW.id);
    RETURN NULL;
END
$$;

CREATE OR REPLACE TRIGGER vaultboxes_default_mailboxes
    AFTER INSERT ON vaultboxes FOR EACH ROW
    EXECUTE FUNCTION encimap_vaultbox_created();
