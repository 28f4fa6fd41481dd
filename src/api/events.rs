//! `POST /v1/events`.

use std::collections::HashMap;

use actix_web::{web, HttpRequest, HttpResponse};
use serde::Serialize;

use super::ingest::{self, BodyError, EdgeRules, FieldError, Shape};
use super::{body_kind, read_body, ApiError, ApiState, BodyKind};
use crate::actors::{LotHandle, LotView, Outcome, Request};
use crate::domain::{LotId, Rejection, Timestamp};

/// One event's result in a batch reply.
#[derive(Debug, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
enum Item {
    Accepted {
        offset: u64,
    },
    Duplicate {
        offset: u64,
    },
    Rejected {
        code: &'static str,
        message: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        field: Option<String>,
    },
    /// The log could not make the event durable: not acknowledged, safe to retry.
    Error {
        code: &'static str,
        message: String,
    },
}

#[derive(Serialize, Default)]
struct BatchReply {
    accepted: usize,
    duplicates: usize,
    rejected: usize,
    errors: usize,
    results: Vec<Item>,
}

/// What one event came to, before it is rendered.
enum Done {
    Invalid(FieldError),
    Unknown(LotId),
    Decided(Outcome, Option<Box<LotView>>),
    Failed(String),
}

pub(super) async fn post_events(
    req: HttpRequest,
    payload: web::Payload,
    st: web::Data<ApiState>,
) -> Result<HttpResponse, ApiError> {
    let kind = body_kind(&req, true)?;
    let body = read_body(&req, payload, st.limits.max_body_bytes).await?;
    let rules = EdgeRules {
        now: Timestamp::now(),
        max_future_micros: st.limits.max_future_secs.saturating_mul(1_000_000),
        max_events: st.limits.max_batch_events,
    };
    let (shape, parsed) =
        ingest::parse_body(&body, kind == BodyKind::Ndjson, &rules).map_err(|e| match e {
            BodyError::Malformed(m) => ApiError::bad(None, m),
            BodyError::Empty => ApiError::bad(None, "the request holds no events"),
            BodyError::TooMany { count, limit } => ApiError::PayloadTooLarge(format!(
                "{count} events in one request; the limit is {limit}"
            )),
        })?;
    let n = parsed.len();
    let mut done: Vec<Option<Done>> = (0..n).map(|_| None).collect();
    let mut groups: HashMap<LotId, (LotHandle, Vec<usize>, Vec<Request>)> = HashMap::new();
    for (i, p) in parsed.into_iter().enumerate() {
        match p {
            Err(e) => done[i] = Some(Done::Invalid(e)),
            Ok(s) => match groups.get_mut(&s.lot_id) {
                Some((_, idx, reqs)) => {
                    idx.push(i);
                    reqs.push(s.request);
                }
                None => match st.lots.get(&s.lot_id) {
                    Some(h) => {
                        groups.insert(s.lot_id, (h, vec![i], vec![s.request]));
                    }
                    None => done[i] = Some(Done::Unknown(s.lot_id)),
                },
            },
        }
    }
    let want_view = shape == Shape::One;
    let results = futures_util::future::join_all(
        groups
            .into_values()
            .map(|(h, idx, reqs)| async move { (idx, h.execute(reqs).await) }),
    )
    .await;
    for (idx, result) in results {
        match result {
            Ok(ex) => {
                for (i, o) in idx.into_iter().zip(ex.outcomes) {
                    let view = want_view.then(|| Box::new(ex.view.clone()));
                    done[i] = Some(Done::Decided(o, view));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "append failed");
                for i in idx {
                    done[i] = Some(Done::Failed(e.to_string()));
                }
            }
        }
    }
    let done = done
        .into_iter()
        .map(|d| d.expect("every event has a result"));
    match shape {
        Shape::One => single(done.into_iter().next().expect("one event")),
        Shape::Many => Ok(batch(done)),
    }
}

fn single(d: Done) -> Result<HttpResponse, ApiError> {
    match d {
        Done::Invalid(e) => Err(ApiError::BadRequest {
            field: e.field,
            message: e.message,
        }),
        Done::Unknown(lot) => Err(ApiError::NotFound {
            lot_id: lot.to_string(),
        }),
        Done::Decided(Outcome::Accepted { offset }, lot) => Ok(HttpResponse::Ok()
            .json(serde_json::json!({"status": "accepted", "offset": offset, "lot": lot}))),
        Done::Decided(Outcome::Duplicate { offset }, lot) => Ok(HttpResponse::Ok()
            .json(serde_json::json!({"status": "duplicate", "offset": offset, "lot": lot}))),
        Done::Decided(Outcome::Rejected(Rejection::NotRegistered), lot) => {
            Err(ApiError::NotFound {
                lot_id: lot.map(|l| l.lot_id.to_string()).unwrap_or_default(),
            })
        }
        Done::Decided(Outcome::Rejected(rejection), lot) => {
            Err(ApiError::Conflict { rejection, lot })
        }
        Done::Failed(m) => Err(ApiError::Unavailable(format!(
            "the event log cannot accept writes now, nothing was acknowledged: {m}"
        ))),
    }
}

fn batch(done: impl Iterator<Item = Done>) -> HttpResponse {
    let mut reply = BatchReply::default();
    for d in done {
        let item = match d {
            Done::Invalid(e) => Item::Rejected {
                code: "invalid_event",
                message: e.message,
                field: e.field,
            },
            Done::Unknown(lot) => Item::Rejected {
                code: "lot_not_found",
                message: format!("lot {:?} is not registered", lot.as_str()),
                field: Some("lot_id".into()),
            },
            Done::Decided(Outcome::Accepted { offset }, _) => Item::Accepted { offset },
            Done::Decided(Outcome::Duplicate { offset }, _) => Item::Duplicate { offset },
            Done::Decided(Outcome::Rejected(r), _) => Item::Rejected {
                code: r.code(),
                message: r.to_string(),
                field: None,
            },
            Done::Failed(m) => Item::Error {
                code: "unavailable",
                message: format!("not acknowledged, safe to retry: {m}"),
            },
        };
        match item {
            Item::Accepted { .. } => reply.accepted += 1,
            Item::Duplicate { .. } => reply.duplicates += 1,
            Item::Rejected { .. } => reply.rejected += 1,
            Item::Error { .. } => reply.errors += 1,
        }
        reply.results.push(item);
    }
    if reply.errors > 0 {
        HttpResponse::ServiceUnavailable().json(reply)
    } else {
        HttpResponse::Ok().json(reply)
    }
}
