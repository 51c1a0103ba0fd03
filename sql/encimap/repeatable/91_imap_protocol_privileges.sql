-- IMAP subscriptions (sql/encimap/900_imap_protocol.sql): the IMAP service keeps them.
-- After 90_privileges.sql, which creates the roles.
GRANT SELECT, INSERT, DELETE ON mailbox_subscriptions TO encimap_imap;
