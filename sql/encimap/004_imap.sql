-- IMAP access: what FETCH and SEARCH serve without parsing mail again (computed once when a
-- message is stored, by encimap.mimeinfo), and the rights the IMAP role needs for it.

ALTER TABLE encrypted_emails ADD COLUMN IF NOT EXISTS bodystructure_basic text;
-- [[section, header_start, body_start, end], ...]: BODY[1], BODY[TEXT] are byte slices.
ALTER TABLE encrypted_emails ADD COLUMN IF NOT EXISTS mime_parts jsonb;
-- The Date header (SEARCH SENTBEFORE/SENTON/SENTSINCE) and the clear header fields SEARCH can
-- match (from, to, cc, bcc, subject: lower-case names, unfolded values).
ALTER TABLE encrypted_emails ADD COLUMN IF NOT EXISTS sent_date timestamptz;
ALTER TABLE encrypted_emails ADD COLUMN IF NOT EXISTS search_headers jsonb;

-- Listing folders and their children by name prefix.
CREATE INDEX IF NOT EXISTS mailboxes_vaultbox_idx ON mailboxes (vaultbox_id, name text_pattern_ops);

-- STATUS (UNSEEN) and SELECT read flags of one mailbox; this keeps that an index-only scan.
CREATE INDEX IF NOT EXISTS encrypted_emails_mailbox_flags_idx
    ON encrypted_emails (mailbox_id, uid) INCLUDE (flags, size_bytes);
