-- 15-minute features per lot, by event time, folded from the event log
-- (src/projections/features). Checkpoint: projection_checkpoints row 'features'.
CREATE TABLE IF NOT EXISTS lot_features_15m (
    lot_id           TEXT NOT NULL,
    bucket_start     TIMESTAMPTZ NOT NULL,
    occupancy_start  INTEGER NOT NULL,
    occupancy_end    INTEGER NOT NULL,
    occupancy_min    INTEGER NOT NULL,
    occupancy_max    INTEGER NOT NULL,
    occupancy_mean   DOUBLE PRECISION NOT NULL,
    arrivals         INTEGER NOT NULL,
    departures       INTEGER NOT NULL,
    counts           INTEGER NOT NULL,
    capacity         INTEGER NOT NULL,
    PRIMARY KEY (lot_id, bucket_start)
);

-- Trained forecasting models (`parkade train`); the artifact is also a file in the data
-- directory.
CREATE TABLE IF NOT EXISTS forecast_models (
    version     TEXT PRIMARY KEY,
    trained_at  TIMESTAMPTZ NOT NULL,
    source      TEXT NOT NULL,
    model       JSONB NOT NULL
);

-- Forecasts written by the in-service predictor.
CREATE TABLE IF NOT EXISTS lot_forecasts (
    lot_id              TEXT NOT NULL,
    issued_at           TIMESTAMPTZ NOT NULL,
    target_time         TIMESTAMPTZ NOT NULL,
    horizon_min         INTEGER NOT NULL,
    predicted_occupancy DOUBLE PRECISION NOT NULL,
    low                 DOUBLE PRECISION NOT NULL,
    high                DOUBLE PRECISION NOT NULL,
    capacity            INTEGER NOT NULL,
    model_version       TEXT NOT NULL,
    PRIMARY KEY (lot_id, issued_at, target_time)
);
CREATE INDEX IF NOT EXISTS lot_forecasts_latest ON lot_forecasts (lot_id, issued_at DESC);

-- UTC days of lot_features_15m changed since their Parquet file in the lake
-- (features/date=YYYY-MM-DD/) was last written; marked in the same transaction as the
-- rows, cleared by the exporter once the file is written for that version.
CREATE TABLE IF NOT EXISTS lot_features_dirty_days (
    day     DATE PRIMARY KEY,
    version BIGINT NOT NULL
);
