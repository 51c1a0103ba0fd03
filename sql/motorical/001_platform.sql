-- Platform tables (motorical_db). The platform owns them; encimap ships them so that a fresh
-- install and the tests work. Every statement is idempotent: in production they may exist.

DO $$
DECLARE
    r text;
BEGIN
    FOREACH r IN ARRAY ARRAY['encimap_owner', 'encimap_auth', 'encimap_intake', 'encimap_imap'] LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r) THEN
            EXECUTE format('CREATE ROLE %I NOLOGIN', r);
        END IF;
    END LOOP;
END
$$;

CREATE OR REPLACE FUNCTION motorical_touch_updated_at() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at := now();
    RETURN NEW;
END
$$;

CREATE TABLE IF NOT EXISTS users (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    email       text NOT NULL,
    name        text,
    status      text NOT NULL DEFAULT 'active'
                CHECK (status IN ('active', 'suspended', 'deleted')),
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX IF NOT EXISTS users_email_key ON users (lower(email));

CREATE TABLE IF NOT EXISTS domains (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id     uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    domain      text NOT NULL,
    verified    boolean NOT NULL DEFAULT false,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX IF NOT EXISTS domains_domain_key ON domains (lower(domain));
CREATE INDEX IF NOT EXISTS domains_user_id_idx ON domains (user_id);

CREATE TABLE IF NOT EXISTS subscriptions (
    id                  uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id             uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    plan                text NOT NULL,
    status              text NOT NULL DEFAULT 'active'
                        CHECK (status IN ('active', 'trialing', 'past_due', 'cancelled')),
    current_period_end  timestamptz,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS subscriptions_user_id_idx ON subscriptions (user_id);

CREATE TABLE IF NOT EXISTS motor_blocks (
    id                   uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id              uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    username             text NOT NULL UNIQUE,
    password_hash        text NOT NULL,
    domain               text NOT NULL,
    smtp_enabled         boolean NOT NULL DEFAULT true,
    rate_limit_per_hour  integer NOT NULL DEFAULT 100 CHECK (rate_limit_per_hour >= 0),
    status               text NOT NULL DEFAULT 'active'
                         CHECK (status IN ('active', 'suspended', 'deleted')),
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS motor_blocks_user_id_idx ON motor_blocks (user_id);

DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['users', 'domains', 'subscriptions', 'motor_blocks'] LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_trigger
                       WHERE tgname = t || '_touch_updated_at'
                         AND tgrelid = t::regclass) THEN
            EXECUTE format('CREATE TRIGGER %I BEFORE UPDATE ON %I FOR EACH ROW
                            EXECUTE FUNCTION motorical_touch_updated_at()',
                           t || '_touch_updated_at', t);
        END IF;
    END LOOP;
END
$$;

-- encimap reads only what a login decision needs, and nothing about users or billing.
GRANT USAGE ON SCHEMA public TO encimap_auth;
GRANT SELECT (id, user_id, username, password_hash, domain, smtp_enabled,
              rate_limit_per_hour, status, updated_at)
    ON motor_blocks TO encimap_auth;
