//! The HTTP API (actix-web).
//!
//! | route | handler |
//! |---|---|
//! | `POST /v1/events` | `events`: one JSON event, a JSON array, or NDJSON |
//! | `POST /v1/lots`, `GET /v1/lots`, `GET /v1/lots/{id}`, `PATCH /v1/lots/{id}`, `POST /v1/lots/{id}/count` | `lots` |
//! | `GET /v1/lots/{id}/history`, `/forecast`, `/timespan` | `history` (the features and the predictor's runs: PostgreSQL or memory) |
//! | `GET /v1/lots/{id}/recent` | `history` (5-minute samples from the live fan-out, no database) |
//! | `GET /`, `/assets/*` | `dashboard`: the web dashboard |
//! | `POST /v1/admin/replay`, `GET /v1/admin/projections`, `POST /v1/admin/known-events` | `admin` |
//! | `GET /v1/ws` | `ws`: live occupancy (snapshot + changes, resume from an offset) |
//! | `GET /healthz`, `GET /readyz` | `admin` |
//! | `GET /metrics` | `admin`: Prometheus text (`crate::metrics`) |
//! | `GET /openapi.json` | `openapi`: the OpenAPI document, generated from the handlers and the [`wire`] types |
//!
//! Every reply that shows lot state carries the log offset it reflects, and is sent only
//! once that offset is durable. With tokens configured, [`auth`] checks every request
//! against the role its route needs before a handler sees it. [`probe`] is the other
//! side of `GET /healthz`: the probe `parkade healthcheck` runs.

mod admin;
pub mod auth;
mod dashboard;
mod error;
mod events;
mod history;
pub mod limits;
mod lots;
pub mod openapi;
pub mod probe;
pub mod wire;
mod ws;

use std::sync::Arc;

use actix_web::http::header::CONTENT_TYPE;
use actix_web::{web, HttpRequest};
use futures_util::StreamExt;
use sqlx::PgPool;

use crate::actors::Lots;
use crate::config::Limits;
use crate::log::EventLog;
use crate::projections::StatusBoard;

pub use error::ApiError;

/// What the handlers share.
#[derive(Clone)]
pub struct ApiState {
    pub lots: Lots,
    pub log: Arc<dyn EventLog>,
    pub limits: Limits,
    pub board: StatusBoard,
    /// `None` when no database is configured.
    pub db: Option<PgPool>,
    /// `None` when the archive is disabled.
    pub archive: Option<crate::projections::archive::Archive>,
    /// Zone of the lots' local time, and the predictor's interval (for explanations).
    pub forecast_tz: chrono_tz::Tz,
    pub forecast_interval_secs: u64,
    /// The live fan-out for websocket subscribers.
    pub live: crate::live::Live,
    /// Lateness rule of the features projection (for its rebuild).
    pub features_lateness_secs: u64,
    /// Held while a rebuild runs, so two never overlap.
    pub replay: Arc<tokio::sync::Mutex<()>>,
    /// Websocket limits (outbox bytes, subscribers, replay reach).
    pub live_config: crate::config::LiveConfig,
    /// The bytes all websocket outboxes may hold (`[live] outbox_budget_bytes`).
    pub outboxes: Arc<crate::live::Budget>,
    /// One permit per websocket subscriber (`[live] max_subscribers`).
    pub ws_slots: Arc<tokio::sync::Semaphore>,
    /// One permit per websocket catch-up reading the log (`[live] max_catch_ups`).
    pub catch_up_slots: Arc<tokio::sync::Semaphore>,
    /// The per-token ingest rate; `None` when off.
    pub ingest_rate: Option<limits::IngestRate>,
    /// Open connections (for `/metrics`).
    pub connections: limits::Connections,
    /// Request body bytes held at once (`[limits] body_budget_bytes`).
    pub bodies: limits::BodyBudget,
    /// The metrics recorder's page; `None` when another recorder was installed first.
    pub metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    /// `[lots] stale_after_secs`: a lot this long without an event is stale.
    pub stale_after_secs: u64,
    /// The features in memory, serving history when there is no database.
    pub features: Option<crate::projections::features::memory::MemoryFeatures>,
    /// Where the forecasts are read; `None` when the predictor is off.
    pub(crate) forecasts: Option<crate::forecast::service::ForecastStore>,
}

impl ApiState {
    /// Spend `events` of the caller's ingest allowance (429 when it is used up).
    fn spend_ingest(&self, req: &HttpRequest, events: usize) -> Result<(), ApiError> {
        match &self.ingest_rate {
            Some(rate) => rate.spend(auth::caller(req).as_ref(), events),
            None => Ok(()),
        }
    }
}

/// Mount every route.
pub fn routes(cfg: &mut web::ServiceConfig) {
    // Path and query strings that do not parse get our JSON 400 too.
    cfg.app_data(
        web::PathConfig::default()
            .error_handler(|e, _| ApiError::bad(None, format!("bad path: {e}")).into()),
    )
    .app_data(
        web::QueryConfig::default()
            .error_handler(|e, _| ApiError::bad(None, format!("bad query string: {e}")).into()),
    )
    .route("/", web::get().to(dashboard::index))
    .route("/assets/{file}", web::get().to(dashboard::asset))
    .route("/healthz", web::get().to(admin::healthz))
    .route("/readyz", web::get().to(admin::readyz))
    .route("/metrics", web::get().to(admin::metrics))
    .route("/openapi.json", web::get().to(openapi::openapi_json))
    .service(
        web::scope("/v1")
            .route("/events", web::post().to(events::post_events))
            .route("/lots", web::post().to(lots::register))
            .route("/lots", web::get().to(lots::list))
            .route("/lots/{id}", web::get().to(lots::get))
            .route("/lots/{id}", web::patch().to(lots::change_capacity))
            .route("/lots/{id}/count", web::post().to(lots::count))
            .route("/lots/{id}/history", web::get().to(history::history))
            .route("/lots/{id}/forecast", web::get().to(history::forecast))
            .route("/lots/{id}/timespan", web::get().to(history::timespan))
            .route("/lots/{id}/recent", web::get().to(history::recent))
            .route("/ws", web::get().to(ws::ws))
            .route("/admin/replay", web::post().to(admin::replay))
            .route("/admin/projections", web::get().to(admin::projections))
            .route("/admin/known-events", web::post().to(admin::known_events)),
    )
    .default_service(web::to(|| async {
        ApiError::bad(
            None,
            "no such route; the API lives under /v1 (see docs/api.md)",
        )
        .into_not_found()
    }));
}

impl ApiError {
    fn into_not_found(self) -> actix_web::HttpResponse {
        actix_web::HttpResponse::NotFound()
            .json(wire::ErrorBody::new("not_found", self.to_string()))
    }
}

/// Count one command's outcome in `parkade_events_total`.
fn count_outcome(o: &crate::domain::Outcome) {
    use crate::domain::Outcome;
    match o {
        Outcome::Accepted { .. } => crate::metrics::events("accepted", "", 1),
        Outcome::Duplicate { .. } => crate::metrics::events("duplicate", "", 1),
        Outcome::Rejected(r) => crate::metrics::events("rejected", r.code(), 1),
    }
}

/// Middleware: count each request and time it to its response head. Every label comes
/// from a closed set, so no request can add series: the method (the standard ones, else
/// `other`), the pattern of the route the router matches (never the path itself, which
/// would make a series per lot; `unmatched` for none) and the status class (`2xx`...).
pub async fn observe(
    req: actix_web::dev::ServiceRequest,
    next: actix_web::middleware::Next<impl actix_web::body::MessageBody + 'static>,
) -> Result<actix_web::dev::ServiceResponse<impl actix_web::body::MessageBody>, actix_web::Error> {
    let started = std::time::Instant::now();
    let route = auth::route_pattern(&req).unwrap_or_else(|| "unmatched".into());
    let method = method_label(req.method());
    let res = next.call(req).await;
    let status = match &res {
        Ok(r) => r.status(),
        Err(e) => e.as_response_error().status_code(),
    };
    metrics::counter!("parkade_http_requests_total", "method" => method, "route" => route.clone(), "status" => status_class(status))
        .increment(1);
    metrics::histogram!("parkade_http_request_duration_seconds", "route" => route)
        .record(started.elapsed());
    res
}

/// A method as a metrics label: one of the standard methods, else `other`.
fn method_label(m: &actix_web::http::Method) -> &'static str {
    const STANDARD: [&str; 9] = [
        "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE",
    ];
    STANDARD
        .into_iter()
        .find(|s| *s == m.as_str())
        .unwrap_or("other")
}

/// A status as a metrics label: its class (`1xx` to `5xx`).
fn status_class(s: actix_web::http::StatusCode) -> &'static str {
    match s.as_u16() / 100 {
        1 => "1xx",
        2 => "2xx",
        3 => "3xx",
        4 => "4xx",
        _ => "5xx",
    }
}

/// The reply to one accepted or duplicate command.
struct Ack;

impl Ack {
    fn ok(
        status: wire::AckStatus,
        offset: u64,
        lot: &crate::domain::LotView,
    ) -> actix_web::HttpResponse {
        actix_web::HttpResponse::Ok().json(wire::Ack {
            status,
            offset,
            lot: lot.into(),
        })
    }
}

/// The body type a request declared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyKind {
    Json,
    Ndjson,
}

/// The declared `Content-Type` as sent, and its essence (type/subtype, lower case).
fn content_type(headers: &actix_web::http::header::HeaderMap) -> (&str, String) {
    let raw = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let essence = raw
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    (raw, essence)
}

fn body_kind(req: &HttpRequest, allow_ndjson: bool) -> Result<BodyKind, ApiError> {
    let (raw, essence) = content_type(req.headers());
    match essence.as_str() {
        "application/json" => Ok(BodyKind::Json),
        "application/x-ndjson" | "application/ndjson" if allow_ndjson => Ok(BodyKind::Ndjson),
        _ => {
            let allowed = if allow_ndjson {
                "application/json or application/x-ndjson"
            } else {
                "application/json"
            };
            let got = if raw.is_empty() {
                "none".to_owned()
            } else {
                format!("{raw:?}")
            };
            Err(ApiError::UnsupportedMediaType(format!(
                "Content-Type must be {allowed} (got {got})"
            )))
        }
    }
}

/// A request body as read, holding its bytes of the [`limits::BodyBudget`] until it is
/// dropped (with the request's handling).
pub(crate) struct Body {
    bytes: web::BytesMut,
    _held: limits::Held,
    _server: Option<limits::Held>,
}

impl std::ops::Deref for Body {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.bytes
    }
}

/// Read a whole body, refusing more than `limit` bytes, a body that has not arrived
/// within `[limits] body_timeout_secs`, and one that does not fit in what is left of
/// the body budget (503 with `Retry-After`).
async fn read_body(
    req: &HttpRequest,
    payload: web::Payload,
    limit: usize,
) -> Result<Body, ApiError> {
    let st = req.app_data::<web::Data<ApiState>>();
    let secs = st.map_or(30, |st| st.limits.body_timeout_secs);
    let budget = st.map(|st| st.bodies.clone());
    let within = std::time::Duration::from_secs(secs);
    match tokio::time::timeout(within, read_body_until(req, payload, limit, budget)).await {
        Ok(body) => body,
        Err(_) => Err(ApiError::RequestTimeout(format!(
            "the request body did not arrive within {secs} s ([limits] body_timeout_secs)"
        ))),
    }
}

/// What a body is given before its first bytes: room to grow from, never the length
/// it declares (memory follows the bytes that arrive).
const FIRST_ROOM: usize = 8192;

/// What the HTTP server itself holds for a body in flight, at most: its read buffer
/// (it reads up to 128 KiB ahead) and the payload's (up to 32 KiB).
const SERVER_BUFFERS: usize = 160 << 10;

/// The budget held for the HTTP server's buffers of a body being read. Dropped before
/// the body was read to its end (refused, timed out, failed), it passes what it holds
/// to the connection, which keeps it until it closes: the server goes on reading and
/// dropping the rest for a while first (see [`limits::Slot::hold_until_closed`]).
struct ServerBuffers<'a> {
    held: Option<limits::Held>,
    connection: Option<&'a limits::Slot>,
}

impl ServerBuffers<'_> {
    /// The body was read to its end: nothing lingers.
    fn finished(mut self) -> Option<limits::Held> {
        self.held.take()
    }
}

impl Drop for ServerBuffers<'_> {
    fn drop(&mut self) {
        if let (Some(held), Some(slot)) = (self.held.take(), self.connection) {
            slot.hold_until_closed(held);
        }
    }
}

async fn read_body_until(
    req: &HttpRequest,
    mut payload: web::Payload,
    limit: usize,
    budget: Option<limits::BodyBudget>,
) -> Result<Body, ApiError> {
    let too_large = || {
        ApiError::PayloadTooLarge(format!(
            "request body is larger than the limit of {limit} bytes"
        ))
    };
    let declared = req
        .headers()
        .get(actix_web::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large());
    }
    let mut held = limits::BodyBudget::declared(declared);
    let mut server = ServerBuffers {
        held: None,
        connection: req.conn_data::<limits::Slot>(),
    };
    let mut bytes = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk
            .map_err(|e| ApiError::bad(None, format!("could not read the request body: {e}")))?;
        if bytes.len() + chunk.len() > limit {
            return Err(too_large());
        }
        // The budget counts the room the buffer grows to, which is what it costs.
        let before = bytes.capacity();
        if bytes.is_empty() {
            // Once bytes arrive, the HTTP server buffers the body on its own too:
            // counted with the first chunk (a body that sent nothing holds nothing).
            if let Some(b) = &budget {
                let mut buffers = limits::BodyBudget::declared(declared);
                b.take(
                    &mut buffers,
                    declared.unwrap_or(SERVER_BUFFERS).min(SERVER_BUFFERS),
                )?;
                server.held = Some(buffers);
            }
            bytes.reserve(FIRST_ROOM.min(limit).max(chunk.len()));
        }
        bytes.extend_from_slice(&chunk);
        if let Some(b) = &budget {
            b.take(&mut held, bytes.capacity() - before)?;
        }
    }
    Ok(Body {
        bytes,
        _held: held,
        _server: server.finished(),
    })
}
