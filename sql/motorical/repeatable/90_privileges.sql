-- What encimap may read in the platform's database: only what a MotorBlock login decision
-- needs, nothing about users or billing, and no writes. A MotorBlock without a domain may send
-- from its user's verified domains, hence the read on `domains`.

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'encimap_auth') THEN
        CREATE ROLE encimap_auth NOLOGIN;
    END IF;
END
$$;

REVOKE ALL ON users, motor_blocks, domains, subscriptions FROM encimap_auth;
GRANT USAGE ON SCHEMA public TO encimap_auth;
GRANT SELECT (id, user_id, username, password_hash, domain, smtp_enabled, rate_limit_per_hour,
              updated_at)
    ON motor_blocks TO encimap_auth;
GRANT SELECT (user_id, domain, verification_status) ON domains TO encimap_auth;

-- Whether the schema is current (`encimap db migrate` with nothing to do only reads these).
GRANT SELECT ON schema_migrations, schema_repeatables TO encimap_auth;
