//! `POST /v1/events`.

use std::collections::HashMap;

use super::wire::{self, AckStatus, BatchItem as Item, BatchReply};
use super::{body_kind, read_body, Ack, ApiError, ApiState, BodyKind};
use crate::actors::LotHandle;
use crate::domain::{LotId, Timestamp};
use crate::domain::{Outcome, Request};
use crate::ingest::{self, BodyError, EdgeRules, FieldError, Shape};
use actix_web::{web, HttpRequest, HttpResponse};

/// What one event came to, before it is rendered.
enum Done {
    Invalid(FieldError),
    Unknown(LotId),
    Decided(Outcome),
    /// Not carried out: what the client is told.
    Failed(String),
    /// The caller's token may not move this lot.
    Forbidden(LotId),
}

fn forbidden(caller: &super::auth::Caller, lot: &LotId) -> String {
    format!(
        "token {:?} may not post events for lot {:?}",
        &*caller.name,
        lot.as_str()
    )
}

#[utoipa::path(
    post, path = "/v1/events", tag = "ingest",
    description = "One event (answered with its own status), an array of events or NDJSON (`application/x-ndjson`, one event a line; answered with every event's outcome, in order).",
    request_body(content = wire::EventsIn, content_type = "application/json"),
    responses(
        (status = 200, description = "Accepted or duplicate (one event); every event's outcome (a batch)", body = wire::EventsReply),
        (status = 400, description = "Malformed body or a bad field (one event)", body = wire::ErrorBody),
        (status = 404, description = "Unknown lot (one event)", body = wire::ErrorBody),
        (status = 409, description = "The lot refused the event (one event)", body = wire::ErrorBody),
        (status = 408, description = "The body did not arrive in time", body = wire::ErrorBody),
        (status = 413, description = "Body, batch, time span or rate burst too large", body = wire::ErrorBody),
        (status = 415, description = "Not JSON or NDJSON", body = wire::ErrorBody),
        (status = 503, description = "The log cannot write: nothing acknowledged (a batch lists each event)", body = wire::Unavailable),
    )
)]
pub(super) async fn post_events(
    req: HttpRequest,
    payload: web::Payload,
    st: web::Data<ApiState>,
) -> Result<HttpResponse, ApiError> {
    let kind = body_kind(&req, true)?;
    let body = read_body(&req, payload, st.limits.max_body_bytes).await?;
    // The caller's allowance is charged before anything is parsed, so a throttled token
    // costs no parsing: by the most events the body can hold (an event is one JSON
    // object, so at most one per `{`), which for a well-formed body is its count.
    st.spend_ingest(&req, most_events(&body, st.limits.max_batch_events))?;
    let rules = EdgeRules {
        now: Timestamp::now(),
        max_future_micros: st.limits.max_future_secs.saturating_mul(1_000_000),
        max_events: st.limits.max_batch_events,
    };
    let (shape, mut parsed) =
        ingest::parse_body(&body, kind == BodyKind::Ndjson, &rules).map_err(|e| match e {
            BodyError::Malformed(m) => ApiError::bad(None, m),
            BodyError::Empty => ApiError::bad(None, "the request holds no events"),
            BodyError::TooMany { count, limit } => ApiError::PayloadTooLarge(format!(
                "{count} events in one request; the limit is {limit}"
            )),
        })?;
    check_span(&parsed, st.limits.max_request_span_secs)?;
    let caller = super::auth::caller(&req);
    let forbids = |lot: &LotId| caller.as_ref().is_some_and(|c| !c.may_move(lot));
    if shape == Shape::One {
        let event = parsed.pop().expect("one event");
        if let (Ok(s), Some(c)) = (&event, &caller) {
            if !c.may_move(&s.lot_id) {
                crate::metrics::events("rejected", "forbidden", 1);
                return Err(ApiError::Forbidden(forbidden(c, &s.lot_id)));
            }
        }
        return one(&st, event).await;
    }
    let done = run_batch(&st, parsed, forbids).await;
    Ok(batch(done.into_iter(), caller.as_ref()))
}

/// The most events `body` can hold: one per `{`, at least one, at most a batch (a body
/// with more is refused by the parser as too many).
fn most_events(body: &[u8], max_batch: usize) -> usize {
    body.iter()
        .filter(|b| **b == b'{')
        .count()
        .clamp(1, max_batch.max(1))
}

/// Run a batch's events: each lot's events go to its actor in one command, the lots in
/// parallel; every event gets its result, in the request's order.
async fn run_batch(
    st: &ApiState,
    parsed: Vec<Result<ingest::Standardised, FieldError>>,
    forbids: impl Fn(&LotId) -> bool,
) -> Vec<Done> {
    let n = parsed.len();
    let mut done: Vec<Option<Done>> = (0..n).map(|_| None).collect();
    let mut groups: HashMap<LotId, (LotHandle, Vec<usize>, Vec<Request>)> = HashMap::new();
    for (i, p) in parsed.into_iter().enumerate() {
        match p {
            Err(e) => done[i] = Some(Done::Invalid(e)),
            Ok(s) if forbids(&s.lot_id) => done[i] = Some(Done::Forbidden(s.lot_id)),
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
                    done[i] = Some(Done::Decided(o));
                }
            }
            Err(e) => {
                if matches!(e, crate::actors::LotError::Busy(_)) {
                    tracing::warn!(error = %e, "append gave up after repeated conflicts");
                } else {
                    tracing::error!(error = %e, "append failed");
                }
                let message = super::error::not_acknowledged(&e);
                for i in idx {
                    done[i] = Some(Done::Failed(message.clone()));
                }
            }
        }
    }
    done.into_iter()
        .map(|d| d.expect("every event has a result"))
        .collect()
}

/// The events of one request may span at most `max_secs` of event time, so that one
/// request cannot scatter events over years of archive partitions.
fn check_span(
    parsed: &[Result<ingest::Standardised, FieldError>],
    max_secs: i64,
) -> Result<(), ApiError> {
    let mut times = parsed
        .iter()
        .flatten()
        .map(|s| s.request.occurred_at.micros());
    let Some(first) = times.next() else {
        return Ok(());
    };
    let (lo, hi) = times.fold((first, first), |(lo, hi), t| (lo.min(t), hi.max(t)));
    let span = (hi - lo) / 1_000_000;
    if span > max_secs {
        return Err(ApiError::limited(
            actix_web::http::StatusCode::PAYLOAD_TOO_LARGE,
            "span_too_large",
            format!("the events of this request span {span} s of event time; at most {max_secs} s may go in one request ([limits] max_request_span_secs): send them in several"),
        ));
    }
    Ok(())
}

/// A one-event request answers with that event's own status.
async fn one(
    st: &ApiState,
    parsed: Result<ingest::Standardised, FieldError>,
) -> Result<HttpResponse, ApiError> {
    let s = parsed.map_err(|e| {
        crate::metrics::events("rejected", "invalid_event", 1);
        ApiError::BadRequest {
            field: e.field,
            message: e.message,
        }
    })?;
    let handle = st.lots.get(&s.lot_id).ok_or_else(|| {
        crate::metrics::events("rejected", "lot_not_found", 1);
        ApiError::NotFound {
            lot_id: s.lot_id.to_string(),
        }
    })?;
    let (outcome, lot) = handle.execute_one(s.request).await?;
    super::count_outcome(&outcome);
    match outcome {
        Outcome::Accepted { offset } => Ok(Ack::ok(AckStatus::Accepted, offset, &lot)),
        Outcome::Duplicate { offset } => Ok(Ack::ok(AckStatus::Duplicate, offset, &lot)),
        Outcome::Rejected(rejection) => Err(ApiError::rejected(rejection, lot)),
    }
}

fn batch(done: impl Iterator<Item = Done>, caller: Option<&super::auth::Caller>) -> HttpResponse {
    let mut reply = BatchReply::default();
    let mut rejected: HashMap<String, u64> = HashMap::new();
    for d in done {
        let item = match d {
            Done::Invalid(e) => Item::Rejected {
                code: "invalid_event".into(),
                message: e.message,
                field: e.field,
            },
            Done::Unknown(lot) => Item::Rejected {
                code: "lot_not_found".into(),
                message: format!("lot {:?} is not registered", lot.as_str()),
                field: Some("lot_id".into()),
            },
            Done::Decided(Outcome::Accepted { offset }) => Item::Accepted { offset },
            Done::Decided(Outcome::Duplicate { offset }) => Item::Duplicate { offset },
            Done::Decided(Outcome::Rejected(r)) => Item::Rejected {
                code: r.code().into(),
                message: r.to_string(),
                field: r.field().map(str::to_owned),
            },
            Done::Forbidden(lot) => Item::Rejected {
                code: "forbidden".into(),
                message: caller.map_or_else(String::new, |c| forbidden(c, &lot)),
                field: Some("lot_id".into()),
            },
            Done::Failed(message) => Item::Error {
                code: "unavailable".into(),
                message,
            },
        };
        match &item {
            Item::Accepted { .. } => reply.accepted += 1,
            Item::Duplicate { .. } => reply.duplicates += 1,
            Item::Rejected { code, .. } => {
                reply.rejected += 1;
                *rejected.entry(code.clone()).or_insert(0) += 1;
            }
            Item::Error { .. } => reply.errors += 1,
        }
        reply.results.push(item);
    }
    crate::metrics::events("accepted", "", reply.accepted as u64);
    crate::metrics::events("duplicate", "", reply.duplicates as u64);
    crate::metrics::events("error", "unavailable", reply.errors as u64);
    for (code, n) in rejected {
        crate::metrics::events("rejected", &code, n);
    }
    if reply.errors > 0 {
        HttpResponse::ServiceUnavailable().json(reply)
    } else {
        HttpResponse::Ok().json(reply)
    }
}
