//! The API's wire format: the JSON bodies the server sends (and the ones it accepts),
//! as types. Handlers build replies from these types, and the OpenAPI document
//! (`GET /openapi.json`, [`super::openapi`]) is generated from the same types, so the
//! two cannot drift apart.
//!
//! Request bodies are read by the edge parsers (`ingest`, `lots::Fields`), which name
//! each bad field in their 400 replies; the request types here describe what those
//! parsers accept, and are what clients (`parkade import --url`) send. Clients read the
//! replies with the same types.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::domain::{LotView, Timestamp};

/// A lot as the service sees it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Lot {
    /// Normalised id (lower case, spaces joined with `-`).
    pub lot_id: String,
    pub name: String,
    pub capacity: u32,
    pub occupancy: u32,
    pub free: u32,
    /// Log offset of the last event of this lot that this view reflects (`null` before
    /// the lot's first event).
    pub offset: Option<u64>,
    /// Event time of that event (RFC 3339, UTC).
    #[schema(value_type = Option<String>, format = DateTime)]
    pub updated_at: Option<Timestamp>,
    /// In lot reads: no event for `[lots] stale_after_secs` (default 30 minutes) since
    /// `updated_at`, so the count may no longer be true (a quiet or broken counter).
    /// Absent in the replies to commands.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stale: Option<bool>,
}

impl Lot {
    /// The lot as a read shows it: with its staleness at `now`.
    pub fn read(v: &LotView, now: Timestamp, stale_after_secs: u64) -> Lot {
        Lot {
            stale: Some(crate::domain::is_stale(v.updated_at, now, stale_after_secs)),
            ..Lot::from(v)
        }
    }
}

impl From<&LotView> for Lot {
    fn from(v: &LotView) -> Lot {
        Lot {
            lot_id: v.lot_id.to_string(),
            name: v.name.clone(),
            capacity: v.capacity,
            occupancy: v.occupancy,
            free: v.free,
            offset: v.offset,
            updated_at: v.updated_at,
            stale: None,
        }
    }
}

/// What became of one command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AckStatus {
    Accepted,
    /// The same `event_id` was accepted before: nothing new was appended.
    Duplicate,
    /// A registration equal to the lot's own: nothing was appended.
    Unchanged,
}

/// The reply to one accepted, duplicate or unchanged command, once durable.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Ack {
    pub status: AckStatus,
    /// Log offset of the event (of the earlier one for a duplicate).
    pub offset: u64,
    pub lot: Lot,
}

/// One event's outcome in a batch reply.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum BatchItem {
    Accepted {
        offset: u64,
    },
    Duplicate {
        offset: u64,
    },
    Rejected {
        /// `invalid_event`, `lot_not_found`, `forbidden`, or the lot's rejection
        /// (`lot_full`, `lot_empty`, `count_above_capacity`, `invalid_timestamp`, ...).
        code: String,
        message: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        field: Option<String>,
    },
    /// The log could not make the event durable, or did not say in time whether it
    /// did: not acknowledged; a retry with the same `event_id` is safe.
    Error {
        code: String,
        message: String,
    },
}

/// The reply to an array or NDJSON request: every event's outcome, in order.
#[derive(Debug, Default, Serialize, Deserialize, ToSchema)]
pub struct BatchReply {
    pub accepted: usize,
    pub duplicates: usize,
    pub rejected: usize,
    pub errors: usize,
    pub results: Vec<BatchItem>,
}

/// `GET /v1/lots`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct LotList {
    pub lots: Vec<Lot>,
}

/// Every error reply: a stable code, a message for people, and what else applies.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// Stable code (`invalid_request`, `lot_not_found`, `lot_full`, `payload_too_large`,
    /// `span_too_large`, `rate_limited`, `too_many_connections`, `unauthorized`, ...).
    pub error: String,
    pub message: String,
    /// The request field at fault.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lot_id: Option<String>,
    /// The lot's state, for a rejection by the lot.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lot: Option<Lot>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub days_of_history: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub days_needed: Option<usize>,
    /// With 429 `rate_limited`: seconds to wait (also in `Retry-After`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after_secs: Option<u64>,
}

impl ErrorBody {
    pub fn new(error: impl Into<String>, message: impl Into<String>) -> ErrorBody {
        ErrorBody {
            error: error.into(),
            message: message.into(),
            field: None,
            lot_id: None,
            lot: None,
            days_of_history: None,
            days_needed: None,
            retry_after_secs: None,
        }
    }
}

/// One bucket of `GET /v1/lots/{id}/history`: the 15-minute feature rows in it, folded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct HistoryPoint {
    #[schema(value_type = String, format = DateTime)]
    pub start: chrono::DateTime<chrono::Utc>,
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

impl From<crate::projections::features::query::Bucket> for HistoryPoint {
    fn from(b: crate::projections::features::query::Bucket) -> HistoryPoint {
        HistoryPoint {
            start: b.start,
            occupancy_start: b.occupancy_start,
            occupancy_end: b.occupancy_end,
            occupancy_min: b.occupancy_min,
            occupancy_max: b.occupancy_max,
            occupancy_mean: b.occupancy_mean,
            arrivals: b.arrivals,
            departures: b.departures,
            counts: b.counts,
            capacity: b.capacity,
            buckets_15m: b.buckets_15m,
        }
    }
}

/// `GET /v1/lots/{id}/history`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct History {
    pub lot_id: String,
    /// `15m`, `1h` or `1d`.
    pub bucket: String,
    /// Zone of the hours and days of `1h` and `1d` buckets.
    pub timezone: String,
    #[schema(value_type = String, format = DateTime)]
    pub from: chrono::DateTime<chrono::Utc>,
    #[schema(value_type = String, format = DateTime)]
    pub to: chrono::DateTime<chrono::Utc>,
    pub points: Vec<HistoryPoint>,
}

/// One point of a forecast.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ForecastPoint {
    #[schema(value_type = String, format = DateTime)]
    pub time: chrono::DateTime<chrono::Utc>,
    pub horizon_min: i32,
    pub occupancy: f64,
    /// The interval (p10 to p90 of the model's residuals).
    pub low: f64,
    pub high: f64,
    /// Occupancy over capacity.
    pub rate: f64,
    pub capacity: i32,
}

/// `GET /v1/lots/{id}/forecast`: the newest run.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Forecast {
    pub lot_id: String,
    #[schema(value_type = String, format = DateTime)]
    pub issued_at: chrono::DateTime<chrono::Utc>,
    pub model_version: String,
    /// What made the forecast.
    pub method: ForecastMethod,
    pub points: Vec<ForecastPoint>,
}

/// What made a forecast: the fitted model, or for a lot with fewer days of history than
/// the model needs (7), the lot's own partial profile (its usual rate at that time on
/// the days it has, corrected by its latest deviation), with the model's interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ForecastMethod {
    Model,
    PartialProfile,
}

impl ForecastMethod {
    /// The method a stored forecast names (`model` or `partial_profile`).
    pub fn parse(stored: &str) -> ForecastMethod {
        match stored {
            "partial_profile" => ForecastMethod::PartialProfile,
            _ => ForecastMethod::Model,
        }
    }
}

/// Whether a timespan point is history or forecast.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SpanKind {
    History,
    Forecast,
}

/// One point of `GET /v1/lots/{id}/timespan`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SpanPoint {
    #[schema(value_type = String, format = DateTime)]
    pub time: chrono::DateTime<chrono::Utc>,
    pub kind: SpanKind,
    /// The bucket's mean (history) or the forecast.
    pub occupancy: f64,
    pub capacity: i32,
    /// Forecast points only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub low: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub high: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub horizon_min: Option<i32>,
}

/// `GET /v1/lots/{id}/timespan`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Timespan {
    pub lot_id: String,
    #[schema(value_type = String, format = DateTime)]
    pub from: chrono::DateTime<chrono::Utc>,
    #[schema(value_type = String, format = DateTime)]
    pub to: chrono::DateTime<chrono::Utc>,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub forecast_issued_at: Option<chrono::DateTime<chrono::Utc>>,
    pub model_version: Option<String>,
    /// What made the forecast points, when there are any.
    pub forecast_method: Option<ForecastMethod>,
    pub series: Vec<SpanPoint>,
}

/// One 5-minute sample of `GET /v1/lots/{id}/recent`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RecentPoint {
    #[schema(value_type = String, format = DateTime)]
    pub time: Timestamp,
    pub occupancy: u32,
}

/// `GET /v1/lots/{id}/recent`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Recent {
    pub lot_id: String,
    pub capacity: u32,
    pub points: Vec<RecentPoint>,
}

/// `GET /healthz`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Health {
    /// `ok` or `failed`.
    pub status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Why the service is not ready.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct NotReadyReason {
    /// `log_failed` or `projection_failing`.
    pub reason: String,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub projection: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failures: Option<u64>,
}

/// `GET /readyz`. With tokens configured, the log's end and the reasons are shown to
/// admin tokens only.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Ready {
    /// `ready` or `not_ready`.
    pub status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_end: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reasons: Option<Vec<NotReadyReason>>,
}

/// One projection on `GET /v1/admin/projections`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ProjectionView {
    pub name: String,
    /// `starting`, `running`, `failing` or `stopped`.
    pub state: String,
    pub checkpoint: u64,
    /// Log events not folded yet (`null` for those that follow tables, not the log).
    pub lag: Option<u64>,
    pub failures: u64,
    pub too_late: u64,
    pub last_error: Option<String>,
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: Timestamp,
}

/// The live fan-out on `GET /v1/admin/projections`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct LiveView {
    pub position: u64,
    pub lag: u64,
    pub subscribers: usize,
}

/// `GET /v1/admin/projections`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Projections {
    pub log_end: u64,
    pub projections: Vec<ProjectionView>,
    pub live: LiveView,
}

/// `POST /v1/admin/replay`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Replayed {
    pub projection: String,
    /// The rebuild's figures (events, rows or files, seconds; by projection).
    #[schema(value_type = Object)]
    pub stats: serde_json::Value,
}

/// `POST /v1/admin/known-events`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Known {
    /// The asked events the log holds (each with its lot, as asked).
    pub known: Vec<EventKey>,
    pub log_end: u64,
}

/// An event as idempotency knows it: by its lot and its id together (an event id is
/// unique within its lot only; the same id on another lot is another event).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EventKey {
    pub lot_id: String,
    pub event_id: String,
}

/// What every command may carry beside its own fields.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct Stamp {
    /// A UUID for idempotent retries; default: the server makes one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
    /// Event time: RFC 3339 text or epoch milliseconds; default: the server's clock. At
    /// most `[limits] max_future_secs` ahead, not before 2000-01-01.
    #[schema(value_type = Option<String>)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<serde_json::Value>,
}

/// An event as `POST /v1/events` accepts it: one object, an array of them, or NDJSON.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct EventIn {
    #[schema(pattern = "^[A-Za-z0-9._-]{1,64}$", example = "north")]
    pub lot_id: String,
    /// `ARRIVAL`, `DEPARTURE` or `COUNT` (any case; `ENTRY`/`EXIT`, `IN`/`OUT` too).
    #[schema(example = "ARRIVAL")]
    pub event_type: String,
    #[serde(flatten)]
    pub stamp: Stamp,
    /// With `COUNT`: the lot's occupancy.
    #[schema(minimum = 0, maximum = 1_000_000)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub count: Option<u32>,
}

/// The body of `POST /v1/events` as JSON: one event or an array of them.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(untagged)]
#[allow(dead_code)] // for the document: the ingest parser reads the body
pub enum EventsIn {
    One(EventIn),
    Many(Vec<EventIn>),
}

/// The reply of `POST /v1/events`: one event's own status, or a batch's outcomes.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum EventsReply {
    One(Ack),
    Batch(BatchReply),
}

/// A 503: an error, or a batch reply whose events the log could not write.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum Unavailable {
    Error(ErrorBody),
    Batch(BatchReply),
}

/// `POST /v1/lots`.
#[derive(Debug, Default, Serialize, Deserialize, ToSchema)]
pub struct RegisterIn {
    #[schema(pattern = "^[A-Za-z0-9._-]{1,64}$", example = "north")]
    pub lot_id: String,
    /// 1 to 200 bytes of text, no control characters.
    #[schema(min_length = 1, max_length = 200, example = "North lot")]
    pub name: String,
    #[schema(minimum = 1, maximum = 1_000_000, example = 120)]
    pub capacity: u32,
    #[serde(flatten)]
    pub stamp: Stamp,
}

/// `PATCH /v1/lots/{id}`.
#[derive(Debug, Default, Serialize, Deserialize, ToSchema)]
pub struct CapacityIn {
    #[schema(minimum = 1, maximum = 1_000_000, example = 150)]
    pub capacity: u32,
    #[serde(flatten)]
    pub stamp: Stamp,
}

/// `POST /v1/lots/{id}/count`.
#[derive(Debug, Default, Serialize, Deserialize, ToSchema)]
pub struct CountIn {
    #[schema(minimum = 0, maximum = 1_000_000, example = 12)]
    pub count: u32,
    #[serde(flatten)]
    pub stamp: Stamp,
}

/// `POST /v1/admin/known-events`.
#[derive(Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KnownEventsIn {
    /// The events to look for, each by its lot and its id.
    pub events: Vec<EventKey>,
}
