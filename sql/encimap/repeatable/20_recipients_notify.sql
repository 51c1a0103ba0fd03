-- Recipient cache invalidation: every change that can alter what RCPT answers (a vaultbox's
-- address, status, limits or key preference, a certificate or OpenPGP key added, changed or
-- removed) is announced on channel
-- `encimap_recipients` with an empty payload, and each intake process then drops all the
-- recipient lookups it keeps (encimap.delivery.recipients.RecipientCache) and completes the
-- certificates the platform stored with only their PEM (encimap.store.certificates). Such
-- changes are rare next to deliveries, so the triggers are per statement and the cache simply
-- starts over.

CREATE OR REPLACE FUNCTION encimap_recipients_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('encimap_recipients', '');
    RETURN NULL;
END
$$;

CREATE OR REPLACE TRIGGER vaultboxes_recipients_notify
    AFTER INSERT OR UPDATE OF alias, domain, status, limits, key_preference OR DELETE OR TRUNCATE
    ON vaultboxes FOR EACH STATEMENT
    EXECUTE FUNCTION encimap_recipients_notify();
CREATE OR REPLACE TRIGGER certificates_recipients_notify
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE
    ON certificates FOR EACH STATEMENT
    EXECUTE FUNCTION encimap_recipients_notify();
CREATE OR REPLACE TRIGGER openpgp_keys_recipients_notify
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE
    ON openpgp_keys FOR EACH STATEMENT
    EXECUTE FUNCTION encimap_recipients_notify();
