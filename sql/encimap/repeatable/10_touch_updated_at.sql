-- updated_at follows every change of a row, whoever makes it.

CREATE OR REPLACE FUNCTION encimap_touch_updated_at() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at := now();
    RETURN NEW;
END
$$;

DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['vaultboxes', 'vaultbox_smtp_credentials', 'imap_app_credentials',
                             'certificates', 'mailboxes', 'encrypted_emails',
                             'openpgp_keys'] LOOP
        EXECUTE format('CREATE OR REPLACE TRIGGER %I BEFORE UPDATE ON %I FOR EACH ROW
                        EXECUTE FUNCTION encimap_touch_updated_at()',
                       t || '_touch_updated_at', t);
    END LOOP;
END
$$;
