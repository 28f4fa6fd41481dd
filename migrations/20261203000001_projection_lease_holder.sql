-- The holder of a PostgreSQL projection's lease (occupancy, features), renewed with
-- renewed_at; another process takes the lease over when the holder has not renewed it
-- for a while (a process that died or stalled; see src/projections/lease.rs). The
-- lakes' rows keep holder NULL (their lease is a session lock).
ALTER TABLE projection_leases ADD COLUMN IF NOT EXISTS holder UUID;
