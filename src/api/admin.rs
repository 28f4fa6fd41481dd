//! Health, readiness and the admin endpoints.

use actix_web::{web, HttpResponse};
use serde_json::json;

use super::{ApiError, ApiState};
use crate::projections::{archive, occupancy};

/// `GET /healthz`: the process can serve; 503 once the log has stopped accepting writes
/// (a supervisor should restart the process so recovery runs).
pub(super) async fn healthz(st: web::Data<ApiState>) -> HttpResponse {
    match st.log.health() {
        Ok(()) => HttpResponse::Ok().json(json!({"status": "ok"})),
        Err(e) => HttpResponse::ServiceUnavailable()
            .json(json!({"status": "failed", "reason": e.to_string()})),
    }
}

/// `GET /readyz`: the log accepts writes and no projection is failing.
pub(super) async fn readyz(st: web::Data<ApiState>) -> HttpResponse {
    let mut reasons = Vec::new();
    if let Err(e) = st.log.health() {
        reasons.push(e.to_string());
    }
    for status in st.board.all() {
        if status.state == crate::projections::ProjectionState::Failing {
            reasons.push(format!(
                "projection {} is failing: {}",
                status.name,
                status.last_error.unwrap_or_default()
            ));
        }
    }
    if reasons.is_empty() {
        HttpResponse::Ok().json(json!({"status": "ready", "log_end": st.log.durable_end()}))
    } else {
        HttpResponse::ServiceUnavailable().json(json!({"status": "not_ready", "reasons": reasons}))
    }
}

/// `GET /v1/admin/projections`: each projection's state, checkpoint and lag.
pub(super) async fn projections(st: web::Data<ApiState>) -> HttpResponse {
    let log_end = st.log.durable_end();
    let list: Vec<_> = st
        .board
        .all()
        .into_iter()
        .map(|s| {
            let lag = log_end.saturating_sub(s.checkpoint);
            json!({"name": s.name, "state": s.state, "checkpoint": s.checkpoint, "lag": lag,
                   "failures": s.failures, "last_error": s.last_error, "updated_at": s.updated_at})
        })
        .collect();
    HttpResponse::Ok().json(json!({"log_end": log_end, "projections": list}))
}

#[derive(serde::Deserialize)]
pub(super) struct ReplayQuery {
    projection: Option<String>,
}

/// `POST /v1/admin/replay?projection=occupancy`: rebuild a read model from offset zero
/// while the service keeps running; answers when the rebuild has been swapped in.
pub(super) async fn replay(
    q: web::Query<ReplayQuery>,
    st: web::Data<ApiState>,
) -> Result<HttpResponse, ApiError> {
    let name = q.projection.as_deref().unwrap_or(occupancy::NAME);
    if name != occupancy::NAME && name != archive::NAME {
        return Err(ApiError::bad(
            Some("projection".into()),
            format!("unknown projection {name:?} (known: occupancy, archive)"),
        ));
    }
    let Ok(_guard) = st.replay.try_lock() else {
        return Ok(HttpResponse::Conflict()
            .json(json!({"error": "replay_running", "message": "a replay is already running"})));
    };
    tracing::info!(projection = name, "replay requested over HTTP");
    let stats = if name == archive::NAME {
        let Some(a) = st.archive.clone() else {
            return Err(ApiError::Unavailable(
                "the archive is disabled ([archive] enabled = false)".into(),
            ));
        };
        let stats = a
            .rebuild(st.log.clone(), |_, _| {})
            .await
            .map_err(|e| ApiError::Internal(e.into()))?;
        serde_json::to_value(stats).map_err(|e| ApiError::Internal(e.into()))?
    } else {
        let Some(pool) = st.db.clone() else {
            return Err(ApiError::Unavailable(
                "no database is configured (PARKADE_DATABASE_URL), so there is no occupancy read model to rebuild".into(),
            ));
        };
        let stats = occupancy::rebuild(&pool, st.log.clone(), |_, _| {})
            .await
            .map_err(|e| ApiError::Internal(e.into()))?;
        serde_json::to_value(stats).map_err(|e| ApiError::Internal(e.into()))?
    };
    tracing::info!(projection = name, "replay finished");
    Ok(HttpResponse::Ok().json(json!({"projection": name, "stats": stats})))
}
