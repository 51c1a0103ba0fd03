-- The stored bytes of a message, in one place: `body` for mail encimap stored, the platform's
-- TEXT column for mail its old service stored (sql/encimap/002_encimap_tables.sql). A plain SQL
-- expression function: the planner inlines it. Anyone may call it (it reads only its arguments);
-- the platform can use it too: SELECT encimap_stored_bytes(body, body_encrypted) ...

CREATE OR REPLACE FUNCTION encimap_stored_bytes(p_body bytea, p_body_encrypted text)
RETURNS bytea
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT coalesce(p_body, convert_to(p_body_encrypted, 'UTF8')) $$;
