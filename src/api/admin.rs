//! Health, readiness and the admin endpoints.

use super::wire::{self, Health, LiveView, NotReadyReason, ProjectionView, Ready};
use actix_web::{web, HttpResponse};

use super::{ApiError, ApiState};
use crate::projections::{occupancy, rebuild, ProjectionName, RebuildError, Stores};

/// What `/healthz` and `/readyz` tell a client when the log refuses writes: a stable
/// code and message; the cause (paths, OS errors) is in the server's log only.
const LOG_FAILED: &str = "the event log refused a write; no event is accepted until the service restarts (the cause is in the server's log)";

/// `GET /healthz`: the process can serve; 503 once the log has stopped accepting writes
/// (a supervisor should restart the process so recovery runs).
#[utoipa::path(
    get, path = "/healthz", tag = "operations",
    responses(
        (status = 200, description = "The process can serve", body = wire::Health),
        (status = 503, description = "The log refuses writes: restart the process", body = wire::Health),
    )
)]
pub(super) async fn healthz(st: web::Data<ApiState>) -> HttpResponse {
    match st.log.health() {
        Ok(()) => HttpResponse::Ok().json(Health {
            status: "ok".into(),
            reason: None,
            message: None,
        }),
        Err(e) => {
            tracing::error!(error = %e, "health check: the log refuses writes");
            HttpResponse::ServiceUnavailable().json(Health {
                status: "failed".into(),
                reason: Some("log_failed".into()),
                message: Some(LOG_FAILED.into()),
            })
        }
    }
}

/// `GET /metrics`: Prometheus text format 0.0.4 (see [`crate::metrics`] for the list).
#[utoipa::path(
    get, path = "/metrics", tag = "operations",
    responses(
        (status = 200, description = "Prometheus text format 0.0.4", body = String, content_type = "text/plain"),
        (status = 503, description = "No metrics recorder in this process", body = wire::ErrorBody),
    )
)]
pub(super) async fn metrics(st: web::Data<ApiState>) -> HttpResponse {
    let Some(handle) = &st.metrics else {
        return HttpResponse::ServiceUnavailable().json(wire::ErrorBody::new(
            "metrics_unavailable",
            "another metrics recorder was installed in this process",
        ));
    };
    let page = crate::metrics::render(
        handle,
        crate::metrics::Views {
            board: &st.board,
            log_end: st.log.durable_end(),
            copy: st.log.copy_state(),
            subscribers: st.live.subscribers(),
            connections: st.connections.open_now(),
            body_bytes: st.bodies.in_use(),
        },
    );
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(page)
}

/// `GET /readyz`: the log accepts writes, this node's copy of a shared log is not far
/// behind it, and no projection is failing. Each reason is a
/// stable code and message; the errors themselves are in the server's log and in
/// `GET /v1/admin/projections`. With tokens configured, the reasons (and the log's end)
/// are shown to admin tokens only; everyone else gets the status alone.
#[utoipa::path(
    get, path = "/readyz", tag = "operations",
    responses(
        (status = 200, description = "Ready", body = wire::Ready),
        (status = 503, description = "Not ready (the log failed, this node's copy of the stream is behind, or a projection is failing)", body = wire::Ready),
    )
)]
pub(super) async fn readyz(req: actix_web::HttpRequest, st: web::Data<ApiState>) -> HttpResponse {
    let mut reasons = Vec::new();
    if let Err(e) = st.log.health() {
        tracing::error!(error = %e, "readiness check: the log refuses writes");
        reasons.push(NotReadyReason {
            reason: "log_failed".into(),
            message: LOG_FAILED.into(),
            projection: None,
            checkpoint: None,
            failures: None,
        });
    }
    if let Some(copy) = st.log.copy_state().filter(|c| c.lag() > c.max_lag) {
        reasons.push(NotReadyReason {
            reason: "log_copy_behind".into(),
            message: format!(
                "this node's copy of the stream is {} events behind it (more than [log] max_copy_lag = {}): its reads are out of date",
                copy.lag(),
                copy.max_lag
            ),
            projection: None,
            checkpoint: Some(copy.copy_end),
            failures: None,
        });
    }
    for status in st.board.all() {
        if status.state == crate::projections::ProjectionState::Failing {
            reasons.push(NotReadyReason {
                reason: "projection_failing".into(),
                message: format!(
                    "projection {} is failing and retrying from offset {} ({} failures so far)",
                    status.name, status.checkpoint, status.failures
                ),
                projection: Some(status.name.as_str().into()),
                checkpoint: Some(status.checkpoint),
                failures: Some(status.failures),
            });
        }
    }
    let details = super::auth::sees_details(&req);
    let ready = reasons.is_empty();
    let body = Ready {
        status: if ready { "ready" } else { "not_ready" }.into(),
        log_end: (ready && details).then(|| st.log.durable_end()),
        reasons: (!ready && details).then_some(reasons),
    };
    if ready {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

/// `GET /v1/admin/projections`: each projection's state, checkpoint and lag.
#[utoipa::path(
    get, path = "/v1/admin/projections", tag = "admin",
    responses((status = 200, description = "Each projection's state, checkpoint and lag", body = wire::Projections))
)]
pub(super) async fn projections(st: web::Data<ApiState>) -> HttpResponse {
    let log_end = st.log.durable_end();
    let projections = st
        .board
        .all()
        .into_iter()
        .map(|s| {
            // The predictor and the features exporter follow tables, not log offsets.
            let follows_log = s.name.follows_log();
            ProjectionView {
                name: s.name.as_str().into(),
                state: s.state.as_str().into(),
                checkpoint: s.checkpoint,
                lag: follows_log.then(|| log_end.saturating_sub(s.checkpoint)),
                failures: s.failures,
                too_late: s.too_late,
                last_error: s.last_error,
                updated_at: s.updated_at,
            }
        })
        .collect();
    let position = st.live.position();
    HttpResponse::Ok().json(wire::Projections {
        log_end,
        projections,
        live: LiveView {
            position,
            lag: log_end.saturating_sub(position),
            subscribers: st.live.subscribers(),
        },
    })
}

#[derive(serde::Deserialize)]
pub(super) struct ReplayQuery {
    projection: Option<String>,
}

/// `POST /v1/admin/replay?projection=occupancy`: rebuild a read model from offset zero
/// while the service keeps running; answers when the rebuild has been swapped in.
#[utoipa::path(
    post, path = "/v1/admin/replay", tag = "admin",
    params(("projection" = Option<String>, Query, description = "occupancy (default), features or archive")),
    responses(
        (status = 200, description = "Rebuilt and swapped in", body = wire::Replayed),
        (status = 400, description = "Unknown projection", body = wire::ErrorBody),
        (status = 409, description = "A rebuild of it is already running", body = wire::ErrorBody),
        (status = 503, description = "Its store is not configured", body = wire::ErrorBody),
    )
)]
pub(super) async fn replay(
    q: web::Query<ReplayQuery>,
    st: web::Data<ApiState>,
) -> Result<HttpResponse, ApiError> {
    let name = match q.projection.as_deref() {
        None => occupancy::NAME,
        Some(p) => ProjectionName::rebuildable(p)
            .map_err(|e| ApiError::bad(Some("projection".into()), e))?,
    };
    let Ok(_guard) = st.replay.try_lock() else {
        return Err(ApiError::ReplayRunning(
            "a replay is already running on this server; wait for it to finish".into(),
        ));
    };
    tracing::info!(projection = %name, "replay requested over HTTP");
    let stores = Stores {
        db: st.db.as_ref(),
        archive: st.archive.as_ref(),
        features_lateness_secs: st.features_lateness_secs,
    };
    let stats = rebuild(name, st.log.clone(), stores, |_, _| {})
        .await
        .map_err(|e| match e {
            RebuildError::NotConfigured(why) => ApiError::Unavailable(why),
            e @ RebuildError::Running(_) => ApiError::ReplayRunning(e.to_string()),
            RebuildError::Failed(e) => ApiError::Internal(e),
        })?;
    tracing::info!(projection = %name, "replay finished");
    Ok(HttpResponse::Ok().json(wire::Replayed {
        projection: name.as_str().into(),
        stats: serde_json::to_value(stats).map_err(|e| ApiError::Internal(e.into()))?,
    }))
}

/// Most ids one `known-events` request may ask about (also bounded by
/// `[limits] max_body_bytes`: about 100,000 ids fit in the default 4 MiB).
pub const KNOWN_EVENTS_MAX: usize = 1_000_000;

/// `POST /v1/admin/known-events` with `{"events": [{"lot_id", "event_id"}, ...]}`:
/// which of these client events the whole log holds, however old (the idempotency
/// window only covers recent ones). An event is known by its lot and its id together:
/// the same id on another lot is another event, so a token of one lot cannot make an
/// import skip another lot's rows. One read of the log per request; `parkade import
/// --url` asks once per re-imported file chunk.
#[utoipa::path(
    post, path = "/v1/admin/known-events", tag = "admin",
    request_body(content = wire::KnownEventsIn, content_type = "application/json"),
    responses(
        (status = 200, description = "Which of the events the log holds", body = wire::Known),
        (status = 400, description = "Malformed body, a bad lot id or not a UUID", body = wire::ErrorBody),
        (status = 408, description = "The body did not arrive in time", body = wire::ErrorBody),
        (status = 413, description = "Body or list too large", body = wire::ErrorBody),
        (status = 415, description = "Not JSON", body = wire::ErrorBody),
    )
)]
pub(super) async fn known_events(
    req: actix_web::HttpRequest,
    payload: web::Payload,
    st: web::Data<ApiState>,
) -> Result<HttpResponse, ApiError> {
    super::body_kind(&req, false)?;
    let body = super::read_body(&req, payload, st.limits.max_body_bytes).await?;
    let parsed: wire::KnownEventsIn = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad(
            None,
            format!("expected {{\"events\": [{{\"lot_id\": \"<lot>\", \"event_id\": \"<uuid>\"}}, ...]}}: {e}"),
        )
    })?;
    if parsed.events.len() > KNOWN_EVENTS_MAX {
        return Err(ApiError::PayloadTooLarge(format!(
            "{} events in one request; the limit is {KNOWN_EVENTS_MAX}",
            parsed.events.len()
        )));
    }
    let mut wanted: rustc_hash::FxHashMap<(crate::domain::LotId, u128), usize> =
        rustc_hash::FxHashMap::default();
    for (i, k) in parsed.events.iter().enumerate() {
        let lot = crate::domain::LotId::parse(&k.lot_id).map_err(|e| {
            ApiError::bad(
                Some(format!("events[{i}].lot_id")),
                format!("{:?}: {e}", k.lot_id),
            )
        })?;
        let id = uuid::Uuid::parse_str(&k.event_id).map_err(|e| {
            ApiError::bad(
                Some(format!("events[{i}].event_id")),
                format!("{:?} is not a UUID: {e}", k.event_id),
            )
        })?;
        wanted.insert((lot, id.as_u128()), i);
    }
    let asked = parsed.events;
    let log = st.log.clone();
    let (found, end) = web::block(move || -> Result<_, crate::log::LogError> {
        let end = log.durable_end();
        let mut found = Vec::new();
        crate::log::scan(&*log, 0, end, crate::log::SCAN_BATCH, |batch| {
            for e in batch.iter().filter(|e| e.event.client_event_id) {
                let key = (e.event.lot_id.clone(), e.event.event_id.as_u128());
                if let Some(i) = wanted.remove(&key) {
                    found.push(i);
                }
            }
            if wanted.is_empty() {
                std::ops::ControlFlow::Break(())
            } else {
                std::ops::ControlFlow::Continue(())
            }
        })?;
        Ok((found, end))
    })
    .await
    .map_err(|e| ApiError::Internal(e.into()))?
    .map_err(|e| ApiError::Internal(e.into()))?;
    let mut found = found;
    found.sort_unstable();
    let known = found.into_iter().map(|i| asked[i].clone()).collect();
    Ok(HttpResponse::Ok().json(wire::Known {
        known,
        log_end: end,
    }))
}
