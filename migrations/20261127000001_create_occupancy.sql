-- The occupancy read model: one row per registered lot, folded from the event log.
CREATE TABLE IF NOT EXISTS current_lot_occupancy (
    lot_id      TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    capacity    INTEGER NOT NULL CHECK (capacity > 0),
    occupancy   INTEGER NOT NULL CHECK (occupancy >= 0),
    updated_at  TIMESTAMPTZ NOT NULL,
    last_offset BIGINT NOT NULL
);

-- Where each projection is in the log, written in the same transaction as its rows.
CREATE TABLE IF NOT EXISTS projection_checkpoints (
    projection  TEXT PRIMARY KEY,
    log_id      UUID NOT NULL,
    next_offset BIGINT NOT NULL CHECK (next_offset >= 0),
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
