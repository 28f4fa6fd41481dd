//! HTTP errors: each variant maps to a status code and a specific message for the
//! client; the full cause chain goes to the log, and a 500 never shows internals.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};

use crate::actors::LotError;
use crate::domain::LotView;
use crate::domain::Rejection;
use crate::log::LogError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{message}")]
    BadRequest {
        field: Option<String>,
        message: String,
    },
    #[error("lot {lot_id:?} is not registered")]
    NotFound { lot_id: String },
    #[error("{rejection}")]
    Conflict {
        rejection: Rejection,
        lot: Option<Box<LotView>>,
    },
    #[error("lot {lot_id:?} has not enough history for a forecast: readings on {days} earlier days, forecasts need {needed}")]
    NotEnoughHistory {
        lot_id: String,
        days: usize,
        needed: usize,
    },
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("{0}")]
    Unavailable(String),
    /// The body did not arrive in time.
    #[error("{0}")]
    RequestTimeout(String),
    /// The service holds as many lots as it may.
    #[error("the service holds {0} lots, the most it may ([limits] max_lots)")]
    LotLimit(usize),
    /// The caller's token may not do this (a lot outside its list).
    #[error("{0}")]
    Forbidden(String),
    /// A rebuild of the same projection is already running.
    #[error("{0}")]
    ReplayRunning(String),
    /// A configured limit was crossed: its own status (413, 429, 503), a code naming
    /// the limit and, for a rate, when to try again.
    #[error("{message}")]
    Limited {
        status: StatusCode,
        code: &'static str,
        message: String,
        retry_after_secs: Option<u64>,
    },
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

impl ApiError {
    pub fn bad(field: impl Into<Option<String>>, message: impl Into<String>) -> Self {
        ApiError::BadRequest {
            field: field.into(),
            message: message.into(),
        }
    }

    /// The reply to a lot's rejection: 404 for an unknown lot, 400 naming the field
    /// when one request field is at fault, else 409 with the lot's state when it has one.
    pub fn rejected(r: Rejection, lot: LotView) -> Self {
        match r {
            Rejection::NotRegistered => ApiError::NotFound {
                lot_id: lot.lot_id.to_string(),
            },
            r if r.field().is_some() => ApiError::BadRequest {
                field: r.field().map(str::to_owned),
                message: r.to_string(),
            },
            rejection => ApiError::Conflict {
                rejection,
                lot: lot.registered.then(|| Box::new(lot)),
            },
        }
    }

    /// A crossed limit with no retry time.
    pub fn limited(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError::Limited {
            status,
            code,
            message: message.into(),
            retry_after_secs: None,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            ApiError::BadRequest { .. } => "invalid_request",
            ApiError::NotFound { .. } => "lot_not_found",
            ApiError::Conflict { rejection, .. } => rejection.code(),
            ApiError::NotEnoughHistory { .. } => "not_enough_history",
            ApiError::PayloadTooLarge(_) => "payload_too_large",
            ApiError::UnsupportedMediaType(_) => "unsupported_media_type",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::ReplayRunning(_) => "replay_running",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::RequestTimeout(_) => "request_timeout",
            ApiError::LotLimit(_) => "lot_limit",
            ApiError::Limited { code, .. } => code,
            ApiError::Internal(_) => "internal",
        }
    }
}

/// What a client is told when the log could not make its events durable: nothing
/// about files or OS errors (those go to the server's log). A write that failed may
/// still have reached the disk, so only a retry with the same `event_id` is sure to
/// record the event once.
pub(crate) const NOT_DURABLE: &str =
    "the event log cannot accept writes now and nothing was acknowledged; a retry with the same event_id is safe (an event sent without one may be recorded twice, if the failed write reached the log)";

/// What a client is told when the log did not answer an append in time: the events
/// may be in it.
pub(crate) const OUTCOME_UNKNOWN: &str =
    "the event log did not answer in time, so whether the event was recorded is unknown; retry with the same event_id, which is then recorded once (a retry without one may record it twice)";

/// The reply's words for a request the lot could not carry out.
pub(crate) fn not_acknowledged(e: &LotError) -> String {
    match e {
        LotError::Busy(lot) => format!("lot {lot} is being written by other nodes at this moment; nothing was recorded, so the request is safe to retry"),
        LotError::Log(LogError::Unknown(_)) => OUTCOME_UNKNOWN.into(),
        _ => NOT_DURABLE.into(),
    }
}

impl From<LotError> for ApiError {
    fn from(e: LotError) -> Self {
        if let LotError::TooManyLots(limit) = e {
            return ApiError::LotLimit(limit);
        }
        if let LotError::Busy(lot) = &e {
            tracing::warn!(lot_id = %lot, "lot request gave up after repeated conflicts with other writers");
        } else {
            tracing::error!(error = %e, "lot request failed");
        }
        ApiError::Unavailable(not_acknowledged(&e))
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::NotFound { .. } => StatusCode::NOT_FOUND,
            ApiError::Conflict { .. }
            | ApiError::NotEnoughHistory { .. }
            | ApiError::ReplayRunning(_) => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::LotLimit(_) => StatusCode::CONFLICT,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Limited { status, .. } => *status,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        if let ApiError::Internal(e) = self {
            tracing::error!(error = ?e, "internal error");
        }
        let mut body = super::wire::ErrorBody::new(self.code(), self.to_string());
        match self {
            ApiError::BadRequest { field: Some(f), .. } => body.field = Some(f.clone()),
            ApiError::NotFound { lot_id } => body.lot_id = Some(lot_id.clone()),
            ApiError::Conflict { lot: Some(lot), .. } => body.lot = Some(lot.as_ref().into()),
            ApiError::NotEnoughHistory {
                lot_id,
                days,
                needed,
            } => {
                body.lot_id = Some(lot_id.clone());
                body.days_of_history = Some(*days);
                body.days_needed = Some(*needed);
            }
            _ => {}
        }
        let mut reply = HttpResponse::build(self.status_code());
        if let ApiError::Limited {
            retry_after_secs: Some(secs),
            ..
        } = self
        {
            body.retry_after_secs = Some(*secs);
            reply.insert_header((actix_web::http::header::RETRY_AFTER, secs.to_string()));
        }
        reply.json(body)
    }
}
