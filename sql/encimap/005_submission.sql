-- Submission (port 2587): the hourly sending counter, shared by every submission process and
-- host. One row per sending principal (a MotorBlock or a vaultbox) holding the count of
-- recipients accepted in the current fixed hourly window; a new window overwrites the row.

CREATE TABLE IF NOT EXISTS send_counters (
    principal_key  text PRIMARY KEY,          -- 'motorblock:<id>' or 'vaultbox:<id>'
    window_start   timestamptz NOT NULL,      -- date_trunc('hour', now(), 'UTC') of the window
    count          integer NOT NULL DEFAULT 0 CHECK (count >= 0),
    updated_at     timestamptz NOT NULL DEFAULT now()
);

ALTER TABLE send_counters OWNER TO encimap_owner;

-- The submission runs with the auth role's pool (DESIGN: encimap_auth reads credentials plus
-- the small tables it needs for shared counters).
GRANT SELECT, INSERT, UPDATE ON send_counters TO encimap_auth;
