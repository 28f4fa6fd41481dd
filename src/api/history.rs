//! `GET /v1/lots/{id}/history`: the lot's past from `lot_features_15m`.

use actix_web::{web, HttpResponse};
use chrono::{DateTime, Utc};
use serde_json::json;

use super::{ApiError, ApiState};
use crate::domain::Timestamp;
use crate::ingest::parse_timestamp_text;

/// Most points one request may return.
pub const MAX_POINTS: i64 = 10_000;

#[derive(serde::Deserialize)]
pub(super) struct HistoryQuery {
    from: Option<String>,
    to: Option<String>,
    bucket: Option<String>,
}

/// A parsed time range: `[from, to)`; by default the last 24 hours.
pub(super) fn range(
    from: Option<&str>,
    to: Option<&str>,
    default_secs: i64,
) -> Result<(DateTime<Utc>, DateTime<Utc>), ApiError> {
    let parse = |k: &str, v: Option<&str>| -> Result<Option<DateTime<Utc>>, ApiError> {
        v.map(|s| {
            parse_timestamp_text(s)
                .map(Timestamp::to_datetime)
                .map_err(|e| ApiError::bad(Some(k.into()), e.message))
        })
        .transpose()
    };
    let to = parse("to", to)?.unwrap_or_else(Utc::now);
    let from = parse("from", from)?.unwrap_or(to - chrono::Duration::seconds(default_secs));
    if from >= to {
        return Err(ApiError::bad(
            Some("from".into()),
            format!("from ({from}) must be before to ({to})"),
        ));
    }
    Ok((from, to))
}

/// `GET /v1/lots/{id}/history?from=&to=&bucket=15m|1h|1d`. Times are RFC 3339 (or epoch
/// milliseconds); `1d` buckets are UTC days.
pub(super) async fn history(
    path: web::Path<String>,
    q: web::Query<HistoryQuery>,
    st: web::Data<ApiState>,
) -> Result<HttpResponse, ApiError> {
    let lot = super::lots::handle(&st, &path)?.view().await?;
    let (from, to) = range(q.from.as_deref(), q.to.as_deref(), 86_400)?;
    let bucket = q.bucket.as_deref().unwrap_or("15m");
    let secs: i64 = match bucket {
        "15m" => 900,
        "1h" => 3_600,
        "1d" => 86_400,
        other => {
            return Err(ApiError::bad(
                Some("bucket".into()),
                format!("unknown bucket {other:?} (expected 15m, 1h or 1d)"),
            ))
        }
    };
    let points = (to - from).num_seconds() / secs;
    if points > MAX_POINTS {
        return Err(ApiError::bad(
            Some("bucket".into()),
            format!("{points} {bucket} buckets between from and to; at most {MAX_POINTS} per request: use a larger bucket or a shorter range"),
        ));
    }
    let Some(pool) = st.db.clone() else {
        return Err(ApiError::Unavailable(
            "history is served from PostgreSQL (lot_features_15m); no database is configured (PARKADE_DATABASE_URL)".into(),
        ));
    };
    type Point = (
        DateTime<Utc>,
        i32,
        i32,
        i32,
        i32,
        f64,
        i64,
        i64,
        i64,
        i32,
        i64,
    );
    let rows: Vec<Point> = sqlx::query_as(
        "SELECT date_bin(make_interval(secs => $4), bucket_start, TIMESTAMPTZ '2000-01-03 00:00:00+00') AS t, \
           (array_agg(occupancy_start ORDER BY bucket_start))[1], \
           (array_agg(occupancy_end ORDER BY bucket_start DESC))[1], \
           min(occupancy_min), max(occupancy_max), avg(occupancy_mean), \
           sum(arrivals)::int8, sum(departures)::int8, sum(counts)::int8, \
           (array_agg(capacity ORDER BY bucket_start DESC))[1], count(*) \
         FROM lot_features_15m WHERE lot_id = $1 AND bucket_start >= $2 AND bucket_start < $3 \
         GROUP BY 1 ORDER BY 1",
    )
    .bind(lot.lot_id.as_str())
    .bind(from)
    .bind(to)
    .bind(secs as f64)
    .fetch_all(&pool)
    .await
    .map_err(|e| ApiError::Internal(e.into()))?;
    let points: Vec<_> = rows
        .into_iter()
        .map(
            |(t, start, end, min, max, mean, arr, dep, counts, cap, n)| {
                json!({"start": t, "occupancy_start": start, "occupancy_end": end,
                   "occupancy_min": min, "occupancy_max": max, "occupancy_mean": mean,
                   "arrivals": arr, "departures": dep, "counts": counts, "capacity": cap,
                   "buckets_15m": n})
            },
        )
        .collect();
    Ok(HttpResponse::Ok().json(json!({
        "lot_id": lot.lot_id, "bucket": bucket, "from": from, "to": to, "points": points,
    })))
}
