-- When the holder of a lake projection's lease (the archive, the features lake on a
-- shared bucket) last renewed it, by this server's clock: a new holder waits until the
-- last holder's writes have ended (see src/projections/lease.rs). No row: never held,
-- or released.
CREATE TABLE IF NOT EXISTS projection_leases (
    name TEXT PRIMARY KEY,
    renewed_at TIMESTAMPTZ NOT NULL
);
