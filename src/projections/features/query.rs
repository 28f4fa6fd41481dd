//! Reads of `lot_features_15m`, owned here beside the projection that writes it: named
//! rows (`sqlx::FromRow`) for the history endpoints and for training.

use chrono::{DateTime, Utc};
use sqlx::PgPool;

/// The width of a history bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Width {
    /// 15 minutes (the table's own rows).
    Quarter,
    /// Hours of the lots' local time.
    Hour,
    /// Days of the lots' local time.
    Day,
}

impl Width {
    /// `15m`, `1h` or `1d`.
    pub fn parse(s: &str) -> Option<Width> {
        match s {
            "15m" => Some(Width::Quarter),
            "1h" => Some(Width::Hour),
            "1d" => Some(Width::Day),
            _ => None,
        }
    }

    pub fn seconds(self) -> i64 {
        match self {
            Width::Quarter => 900,
            Width::Hour => 3_600,
            Width::Day => 86_400,
        }
    }

    /// The SQL of a row's bucket start (`$4` is the zone).
    fn start_of(self) -> &'static str {
        match self {
            Width::Quarter => {
                "date_bin(interval '15 minutes', bucket_start, TIMESTAMPTZ '2000-01-03 00:00:00+00')"
            }
            Width::Hour => "date_trunc('hour', bucket_start, $4)",
            Width::Day => "date_trunc('day', bucket_start, $4)",
        }
    }
}

/// One history bucket: the 15-minute rows in it, folded (sent as
/// `api::wire::HistoryPoint`).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Bucket {
    pub start: DateTime<Utc>,
    pub occupancy_start: i32,
    pub occupancy_end: i32,
    pub occupancy_min: i32,
    pub occupancy_max: i32,
    pub occupancy_mean: f64,
    pub arrivals: i64,
    pub departures: i64,
    pub counts: i64,
    pub capacity: i32,
    /// 15-minute buckets folded into this one.
    pub buckets_15m: i64,
}

/// A lot's buckets of `width` in `[from, to)`, hours and days in `zone`.
pub async fn buckets(
    pool: &PgPool,
    lot: &str,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    width: Width,
    zone: &str,
) -> Result<Vec<Bucket>, sqlx::Error> {
    let sql = format!(
        "SELECT {} AS start, \
           (array_agg(occupancy_start ORDER BY bucket_start))[1] AS occupancy_start, \
           (array_agg(occupancy_end ORDER BY bucket_start DESC))[1] AS occupancy_end, \
           min(occupancy_min) AS occupancy_min, max(occupancy_max) AS occupancy_max, \
           avg(occupancy_mean) AS occupancy_mean, \
           sum(arrivals)::int8 AS arrivals, sum(departures)::int8 AS departures, \
           sum(counts)::int8 AS counts, \
           (array_agg(capacity ORDER BY bucket_start DESC))[1] AS capacity, \
           count(*) AS buckets_15m \
         FROM lot_features_15m WHERE lot_id = $1 AND bucket_start >= $2 AND bucket_start < $3 \
         GROUP BY 1 ORDER BY 1",
        width.start_of()
    );
    sqlx::query_as(&sql)
        .bind(lot)
        .bind(from)
        .bind(to)
        .bind(zone)
        .fetch_all(pool)
        .await
}

/// One 15-minute row's mean.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Mean {
    pub bucket_start: DateTime<Utc>,
    pub occupancy_mean: f64,
    pub capacity: i32,
}

/// A lot's 15-minute means in `[from, to)`, oldest first.
pub async fn means(
    pool: &PgPool,
    lot: &str,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<Vec<Mean>, sqlx::Error> {
    sqlx::query_as(
        "SELECT bucket_start, occupancy_mean, capacity FROM lot_features_15m \
         WHERE lot_id = $1 AND bucket_start >= $2 AND bucket_start < $3 ORDER BY bucket_start",
    )
    .bind(lot)
    .bind(from)
    .bind(to)
    .fetch_all(pool)
    .await
}

/// A reading for training: a lot's occupancy at the end of a 15-minute row with events.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Reading {
    pub lot_id: String,
    /// The end of the row's 15 minutes.
    pub at: DateTime<Utc>,
    pub occupancy_end: i32,
    pub capacity: i32,
}

impl Reading {
    /// A 15-minute row as a reading of the window `[from, until]` (microseconds, UTC):
    /// rows with an event and a capacity, read at their end, as [`readings`] selects
    /// them in SQL.
    pub fn of_row(r: &super::fold::FeatureRow, from: i64, until: i64) -> Option<Reading> {
        const QUARTER: i64 = 15 * 60 * 1_000_000;
        let counts = r.arrivals + r.departures + r.counts > 0 && r.capacity > 0;
        let inside = r.bucket_start >= from && r.bucket_start + QUARTER <= until;
        (counts && inside).then_some(())?;
        Some(Reading {
            at: DateTime::from_timestamp_micros(r.bucket_start + QUARTER)?,
            lot_id: r.lot_id.as_str().to_owned(),
            occupancy_end: r.occupancy_end,
            capacity: r.capacity,
        })
    }
}

/// When the newest reading (of one lot, or of any) ends; `None` without any.
pub async fn newest_reading(
    pool: &PgPool,
    lot: Option<&str>,
) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
    let only_lot = if lot.is_some() { "AND lot_id = $1" } else { "" };
    let sql = format!(
        "SELECT max(bucket_start) + interval '15 minutes' FROM lot_features_15m \
         WHERE arrivals + departures + counts > 0 AND capacity > 0 {only_lot}"
    );
    let mut query = sqlx::query_scalar(&sql);
    if let Some(lot) = lot {
        query = query.bind(lot);
    }
    query.fetch_one(pool).await
}

/// Readings of the `weeks` weeks up to `until` (of one lot, or of all).
pub async fn readings(
    pool: &PgPool,
    until: DateTime<Utc>,
    weeks: i32,
    lot: Option<&str>,
) -> Result<Vec<Reading>, sqlx::Error> {
    // One lot: a condition of its own, so the lookup uses the (lot_id, bucket_start) key.
    let only_lot = if lot.is_some() { "AND lot_id = $3" } else { "" };
    let sql = format!(
        "SELECT lot_id, bucket_start + interval '15 minutes' AS at, occupancy_end, capacity \
         FROM lot_features_15m \
         WHERE arrivals + departures + counts > 0 AND capacity > 0 \
           AND bucket_start + interval '15 minutes' <= $1 AND bucket_start >= $1 - make_interval(weeks => $2) \
           {only_lot}"
    );
    let mut query = sqlx::query_as(&sql).bind(until).bind(weeks);
    if let Some(lot) = lot {
        query = query.bind(lot);
    }
    query.fetch_all(pool).await
}
