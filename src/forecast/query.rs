//! Reads of `lot_forecasts`, owned here beside the predictor that writes it.

use chrono::{DateTime, Utc};
use sqlx::PgPool;

/// One forecast point of a run.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Point {
    pub issued_at: DateTime<Utc>,
    pub target_time: DateTime<Utc>,
    pub horizon_min: i32,
    pub predicted_occupancy: f64,
    pub low: f64,
    pub high: f64,
    pub capacity: i32,
    pub model_version: String,
    /// `model`, or `partial_profile` for a lot with too few days for the model.
    pub method: String,
}

/// The newest forecast run of a lot, oldest target first (empty when it has none).
pub async fn latest(pool: &PgPool, lot: &str) -> Result<Vec<Point>, sqlx::Error> {
    sqlx::query_as(
        "SELECT issued_at, target_time, horizon_min, predicted_occupancy, low, high, capacity, model_version, method \
         FROM lot_forecasts WHERE lot_id = $1 \
           AND issued_at = (SELECT max(issued_at) FROM lot_forecasts WHERE lot_id = $1) \
         ORDER BY target_time",
    )
    .bind(lot)
    .fetch_all(pool)
    .await
}
