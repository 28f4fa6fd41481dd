//! The lot over time: its past (the features), its forecast (the predictor's newest run)
//! and both in one series; from PostgreSQL or, on the embedded defaults, from memory.

use actix_web::{web, HttpResponse};
use chrono::{DateTime, Utc};

use super::wire::{self, ForecastPoint, RecentPoint, SpanKind, SpanPoint};
use super::{ApiError, ApiState};
use crate::domain::Timestamp;
use crate::ingest::parse_timestamp_text;
use crate::projections::features::query::{self, Width};

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
/// milliseconds); `1h` and `1d` buckets are hours and days of the lots' local time
/// (`[forecast] timezone`), so a day bucket runs from local midnight to midnight (23 or
/// 25 hours on the days clocks change).
#[utoipa::path(
    get, path = "/v1/lots/{id}/history", tag = "history",
    params(
        ("id" = String, Path, description = "Lot id", example = "north"),
        ("from" = Option<String>, Query, description = "Start (RFC 3339); default 24 hours before `to`"),
        ("to" = Option<String>, Query, description = "End (RFC 3339); default now"),
        ("bucket" = Option<String>, Query, description = "15m (default), 1h or 1d"),
    ),
    responses(
        (status = 200, description = "The buckets", body = wire::History),
        (status = 400, description = "A bad parameter, or too many points", body = wire::ErrorBody),
        (status = 404, description = "Unknown lot", body = wire::ErrorBody),
        (status = 503, description = "No features served", body = wire::ErrorBody),
    )
)]
pub(super) async fn history(
    path: web::Path<String>,
    q: web::Query<HistoryQuery>,
    st: web::Data<ApiState>,
) -> Result<HttpResponse, ApiError> {
    let lot = super::lots::handle(&st, &path)?.view();
    let (from, to) = range(q.from.as_deref(), q.to.as_deref(), 86_400)?;
    let bucket = q.bucket.as_deref().unwrap_or("15m");
    let width = Width::parse(bucket).ok_or_else(|| {
        ApiError::bad(
            Some("bucket".into()),
            format!("unknown bucket {bucket:?} (expected 15m, 1h or 1d)"),
        )
    })?;
    let secs = width.seconds();
    let points = (to - from).num_seconds() / secs;
    let max = st.limits.max_history_points;
    if points > max {
        return Err(ApiError::bad(
            Some("bucket".into()),
            format!("{points} {bucket} buckets between from and to; at most {max} per request ([limits] max_history_points): use a larger bucket or a shorter range"),
        ));
    }
    let points = match (&st.db, &st.features) {
        (Some(pool), _) => {
            let zone = st.forecast_tz.name();
            query::buckets(pool, lot.lot_id.as_str(), from, to, width, zone)
                .await
                .map_err(|e| ApiError::Internal(e.into()))?
        }
        (None, Some(memory)) => memory.buckets(&lot.lot_id, from, to, width, st.forecast_tz),
        (None, None) => return Err(no_features()),
    };
    Ok(HttpResponse::Ok().json(wire::History {
        lot_id: lot.lot_id.to_string(),
        bucket: bucket.to_owned(),
        timezone: st.forecast_tz.name().to_owned(),
        from,
        to,
        points: points.into_iter().map(wire::HistoryPoint::from).collect(),
    }))
}

fn no_features() -> ApiError {
    ApiError::Unavailable(
        "history needs the features: from PostgreSQL (PARKADE_DATABASE_URL) or kept in memory"
            .into(),
    )
}

/// Where the forecasts are, or 503 saying why there are none.
fn forecasts<'a>(
    st: &'a ApiState,
    what: &str,
) -> Result<&'a crate::forecast::service::ForecastStore, ApiError> {
    st.forecasts.as_ref().ok_or_else(|| {
        ApiError::Unavailable(format!(
            "{what} is not served: the predictor is off ([forecast] enabled = false)"
        ))
    })
}

/// The newest forecast run of a lot, oldest target first.
async fn latest_forecast(
    store: &crate::forecast::service::ForecastStore,
    lot: &str,
) -> Result<std::sync::Arc<[crate::forecast::query::Point]>, ApiError> {
    store
        .latest(lot)
        .await
        .map_err(|e| ApiError::Internal(e.into()))
}

/// Why there is no forecast: not enough history, or the predictor has not run yet.
async fn no_forecast(
    st: &ApiState,
    store: &crate::forecast::service::ForecastStore,
    lot: &str,
) -> ApiError {
    let needed = crate::forecast::model::MIN_HISTORY_DAYS;
    let look_back = chrono::Duration::weeks(crate::forecast::service::WEEKS_READ);
    match store.days_of_history(lot, st.forecast_tz).await {
        Ok((days, _)) if days < needed => ApiError::NotEnoughHistory {
            lot_id: lot.to_owned(),
            days,
            needed,
        },
        Ok((days, Some(newest))) if newest < chrono::Utc::now() - look_back => {
            ApiError::Unavailable(format!(
                "no forecast for lot {lot:?}: its {days} days of readings end at {}, more than the {} weeks before now that a forecast looks back at; it is forecast again once it sends events (`parkade train` trains on its readings, `parkade backtest` evaluates forecasts of them)",
                newest.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                crate::forecast::service::WEEKS_READ
            ))
        }
        Ok(_) => ApiError::Unavailable(format!(
            "no forecast for lot {lot:?} yet: the predictor writes them every {} s (see GET /v1/admin/projections, \"predictor\")",
            st.forecast_interval_secs
        )),
        Err(e) => ApiError::Internal(e.into()),
    }
}

/// `GET /v1/lots/{id}/forecast`: the newest forecast run, every 15 minutes ahead, with
/// an interval; 409 `not_enough_history` for a lot the model cannot forecast yet.
#[utoipa::path(
    get, path = "/v1/lots/{id}/forecast", tag = "history",
    params(("id" = String, Path, description = "Lot id", example = "north")),
    responses(
        (status = 200, description = "The newest forecast run", body = wire::Forecast),
        (status = 400, description = "Not a lot id", body = wire::ErrorBody),
        (status = 404, description = "Unknown lot", body = wire::ErrorBody),
        (status = 409, description = "Not enough history for a forecast yet", body = wire::ErrorBody),
        (status = 503, description = "The predictor is off", body = wire::ErrorBody),
    )
)]
pub(super) async fn forecast(
    path: web::Path<String>,
    st: web::Data<ApiState>,
) -> Result<HttpResponse, ApiError> {
    let lot = super::lots::handle(&st, &path)?.view();
    let store = forecasts(&st, "the forecast")?;
    let rows = latest_forecast(store, lot.lot_id.as_str()).await?;
    let Some(first) = rows.first() else {
        return Err(no_forecast(&st, store, lot.lot_id.as_str()).await);
    };
    let points = rows
        .iter()
        .map(|p| ForecastPoint {
            time: p.target_time,
            horizon_min: p.horizon_min,
            occupancy: p.predicted_occupancy,
            low: p.low,
            high: p.high,
            rate: p.predicted_occupancy / f64::from(p.capacity.max(1)),
            capacity: p.capacity,
        })
        .collect();
    Ok(HttpResponse::Ok().json(wire::Forecast {
        lot_id: lot.lot_id.to_string(),
        issued_at: first.issued_at,
        model_version: first.model_version.clone(),
        method: wire::ForecastMethod::parse(&first.method),
        points,
    }))
}

/// `GET /v1/lots/{id}/timespan?from=&to=`: one series of 15-minute points, history
/// (`"kind": "history"`, the mean occupancy of each bucket) up to the newest features,
/// then the newest forecast run (`"kind": "forecast"`, with its interval) after it.
/// By default from 24 hours ago to 24 hours ahead.
#[utoipa::path(
    get, path = "/v1/lots/{id}/timespan", tag = "history",
    params(
        ("id" = String, Path, description = "Lot id", example = "north"),
        ("from" = Option<String>, Query, description = "Start (RFC 3339); default 24 hours ago"),
        ("to" = Option<String>, Query, description = "End (RFC 3339); default 24 hours ahead"),
    ),
    responses(
        (status = 200, description = "History, then forecast", body = wire::Timespan),
        (status = 400, description = "A bad parameter, or too many points", body = wire::ErrorBody),
        (status = 404, description = "Unknown lot", body = wire::ErrorBody),
        (status = 503, description = "The predictor is off", body = wire::ErrorBody),
    )
)]
pub(super) async fn timespan(
    path: web::Path<String>,
    q: web::Query<HistoryQuery>,
    st: web::Data<ApiState>,
) -> Result<HttpResponse, ApiError> {
    let lot = super::lots::handle(&st, &path)?.view();
    let default_to = (Utc::now() + chrono::Duration::hours(24)).to_rfc3339();
    let to_text = q.to.clone().unwrap_or(default_to);
    let (from, to) = range(q.from.as_deref(), Some(&to_text), 48 * 3600)?;
    let max = st.limits.max_history_points;
    if (to - from).num_seconds() / 900 > max {
        return Err(ApiError::bad(
            Some("from".into()),
            format!("at most {max} points of 15 minutes per request ([limits] max_history_points)"),
        ));
    }
    let store = forecasts(&st, "the timespan view")?;
    let past = match (&st.db, &st.features) {
        (Some(pool), _) => query::means(pool, lot.lot_id.as_str(), from, to)
            .await
            .map_err(|e| ApiError::Internal(e.into()))?,
        (None, Some(memory)) => memory.means(&lot.lot_id, from, to),
        (None, None) => return Err(no_features()),
    };
    let last_past = past.last().map(|p| p.bucket_start);
    let mut series: Vec<SpanPoint> = past
        .into_iter()
        .map(|m| SpanPoint {
            time: m.bucket_start,
            kind: SpanKind::History,
            occupancy: m.occupancy_mean,
            capacity: m.capacity,
            low: None,
            high: None,
            horizon_min: None,
        })
        .collect();
    let fc = latest_forecast(store, lot.lot_id.as_str()).await?;
    let issued = fc.first().map(|p| {
        (
            p.issued_at,
            p.model_version.clone(),
            wire::ForecastMethod::parse(&p.method),
        )
    });
    series.extend(
        fc.iter()
            .filter(|p| {
                p.target_time >= from
                    && p.target_time < to
                    && last_past.is_none_or(|last| p.target_time > last)
            })
            .map(|p| SpanPoint {
                time: p.target_time,
                kind: SpanKind::Forecast,
                occupancy: p.predicted_occupancy,
                capacity: p.capacity,
                low: Some(p.low),
                high: Some(p.high),
                horizon_min: Some(p.horizon_min),
            }),
    );
    Ok(HttpResponse::Ok().json(wire::Timespan {
        lot_id: lot.lot_id.to_string(),
        from,
        to,
        forecast_issued_at: issued.as_ref().map(|i| i.0),
        forecast_method: issued.as_ref().map(|i| i.2),
        model_version: issued.map(|i| i.1),
        series,
    }))
}

/// `GET /v1/lots/{id}/recent`: the lot's occupancy every 5 minutes of event time, from
/// the live fan-out (no database needed; what the service has seen since it started,
/// at most 24 hours of samples).
#[utoipa::path(
    get, path = "/v1/lots/{id}/recent", tag = "history",
    params(("id" = String, Path, description = "Lot id", example = "north")),
    responses(
        (status = 200, description = "5-minute samples seen since the service started", body = wire::Recent),
        (status = 400, description = "Not a lot id", body = wire::ErrorBody),
        (status = 404, description = "Unknown lot", body = wire::ErrorBody),
    )
)]
pub(super) async fn recent(
    path: web::Path<String>,
    st: web::Data<ApiState>,
) -> Result<HttpResponse, ApiError> {
    let lot = super::lots::handle(&st, &path)?.view();
    let points = st
        .live
        .recent(&lot.lot_id)
        .into_iter()
        .map(|(t, occ)| RecentPoint {
            time: Timestamp::from_micros(t),
            occupancy: occ,
        })
        .collect();
    Ok(HttpResponse::Ok().json(wire::Recent {
        lot_id: lot.lot_id.to_string(),
        capacity: lot.capacity,
        points,
    }))
}
