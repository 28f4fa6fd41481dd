//! Lot endpoints: register, list, read, change capacity, absolute count.

use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::{Map, Value};
use uuid::Uuid;

use super::wire::{self, AckStatus};
use super::{body_kind, read_body, Ack, ApiError, ApiState};
use crate::actors::LotHandle;
use crate::domain::{check_event_time, Capacity, LotId, LotName, Rejection, Timestamp};
use crate::domain::{LotView, Outcome};
use crate::ingest::{parse_event_id, parse_timestamp_millis, parse_timestamp_text};

/// Small bodies of the lot endpoints, checked field by field.
const SMALL_BODY: usize = 16 * 1024;

struct Fields(Map<String, Value>);

/// A JSON object whose keys each appear once: a key given twice is refused (as
/// `POST /v1/events` refuses it), not read as its last value.
struct UniqueKeys(Map<String, Value>);

impl<'de> serde::Deserialize<'de> for UniqueKeys {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = UniqueKeys;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut a: A,
            ) -> Result<UniqueKeys, A::Error> {
                let mut map = Map::new();
                while let Some(k) = a.next_key::<String>()? {
                    let v: Value = a.next_value()?;
                    if map.contains_key(&k) {
                        return Err(serde::de::Error::custom(format_args!(
                            "duplicate field {k:?}"
                        )));
                    }
                    map.insert(k, v);
                }
                Ok(UniqueKeys(map))
            }
        }
        d.deserialize_map(Visit)
    }
}

impl Fields {
    async fn read(
        req: &HttpRequest,
        payload: web::Payload,
        allowed: &[&str],
    ) -> Result<Fields, ApiError> {
        body_kind(req, false)?;
        let body = read_body(req, payload, SMALL_BODY).await?;
        let UniqueKeys(map) = serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad(None, format!("malformed JSON: {e}")))?;
        if let Some(k) = map.keys().find(|k| !allowed.contains(&k.as_str())) {
            return Err(ApiError::bad(
                Some(k.clone()),
                format!("unknown field {k:?} (expected {})", allowed.join(", ")),
            ));
        }
        Ok(Fields(map))
    }

    fn str(&self, k: &str) -> Result<Option<&str>, ApiError> {
        match self.0.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(other) => Err(ApiError::bad(
                Some(k.into()),
                format!("{k} must be a string (got {other})"),
            )),
        }
    }

    fn req_str(&self, k: &str) -> Result<&str, ApiError> {
        self.str(k)?
            .ok_or_else(|| ApiError::bad(Some(k.into()), format!("missing field {k:?}")))
    }

    fn req_int(&self, k: &str) -> Result<i64, ApiError> {
        match self.0.get(k) {
            None | Some(Value::Null) => Err(ApiError::bad(
                Some(k.into()),
                format!("missing field {k:?}"),
            )),
            Some(Value::Number(n)) if n.is_i64() => Ok(n.as_i64().expect("checked")),
            Some(other) => Err(ApiError::bad(
                Some(k.into()),
                format!("{k} must be an integer (got {other})"),
            )),
        }
    }

    fn event_id(&self) -> Result<Option<Uuid>, ApiError> {
        self.str("event_id")?
            .map(parse_event_id)
            .transpose()
            .map_err(field_err)
    }

    /// The event time, kept to the one rule of every event
    /// ([`check_event_time`](crate::domain::check_event_time)).
    fn timestamp(&self, st: &ApiState) -> Result<Timestamp, ApiError> {
        let now = Timestamp::now();
        let at = match self.0.get("timestamp") {
            None | Some(Value::Null) => now,
            Some(Value::String(s)) => parse_timestamp_text(s).map_err(field_err)?,
            Some(Value::Number(n)) if n.is_i64() => parse_timestamp_millis(n.as_i64().expect("checked")).map_err(field_err)?,
            Some(other) => return Err(ApiError::bad(
                Some("timestamp".into()),
                format!("timestamp must be an RFC 3339 string or integer epoch milliseconds (got {other})"),
            )),
        };
        check_event_time(at, now, st.limits.max_future_secs.saturating_mul(1_000_000))
            .map_err(|e| ApiError::bad(Some("timestamp".into()), e.to_string()))?;
        Ok(at)
    }
}

fn field_err(e: crate::ingest::FieldError) -> ApiError {
    ApiError::BadRequest {
        field: e.field,
        message: e.message,
    }
}

fn lot_id(raw: &str) -> Result<LotId, ApiError> {
    LotId::parse(raw).map_err(|e| ApiError::bad(Some("lot_id".into()), e.to_string()))
}

fn capacity(fields: &Fields) -> Result<Capacity, ApiError> {
    Capacity::new(fields.req_int("capacity")?)
        .map_err(|e| ApiError::bad(Some("capacity".into()), e.to_string()))
}

pub(super) fn handle(st: &ApiState, raw: &str) -> Result<LotHandle, ApiError> {
    let id = lot_id(raw)?;
    st.lots.get(&id).ok_or(ApiError::NotFound {
        lot_id: id.to_string(),
    })
}

/// Render the outcome of a single command.
fn reply(outcome: Outcome, view: LotView, created: bool) -> Result<HttpResponse, ApiError> {
    super::count_outcome(&outcome);
    match outcome {
        Outcome::Accepted { offset } if created => Ok(HttpResponse::Created().json(wire::Ack {
            status: AckStatus::Accepted,
            offset,
            lot: (&view).into(),
        })),
        Outcome::Accepted { offset } => Ok(Ack::ok(AckStatus::Accepted, offset, &view)),
        Outcome::Duplicate { offset } => Ok(Ack::ok(AckStatus::Duplicate, offset, &view)),
        Outcome::Rejected(rejection) => Err(ApiError::rejected(rejection, view)),
    }
}

/// `POST /v1/lots {lot_id, name, capacity, event_id?}`. Registering the same lot again
/// with the same name and capacity is answered 200 and appends nothing.
#[utoipa::path(
    post, path = "/v1/lots", tag = "lots",
    request_body(content = wire::RegisterIn, content_type = "application/json"),
    responses(
        (status = 201, description = "Registered", body = wire::Ack),
        (status = 200, description = "The same registration again (duplicate or unchanged)", body = wire::Ack),
        (status = 400, description = "A bad field", body = wire::ErrorBody),
        (status = 408, description = "The body did not arrive in time", body = wire::ErrorBody),
        (status = 409, description = "Registered otherwise, or the lot limit is reached", body = wire::ErrorBody),
        (status = 413, description = "Body too large", body = wire::ErrorBody),
        (status = 415, description = "Not JSON", body = wire::ErrorBody),
    )
)]
pub(super) async fn register(
    req: HttpRequest,
    payload: web::Payload,
    st: web::Data<ApiState>,
) -> Result<HttpResponse, ApiError> {
    let f = Fields::read(
        &req,
        payload,
        &["lot_id", "name", "capacity", "event_id", "timestamp"],
    )
    .await?;
    let id = lot_id(f.req_str("lot_id")?)?;
    let name = LotName::parse(f.req_str("name")?)
        .map_err(|e| ApiError::bad(Some("name".into()), e.to_string()))?;
    let cap = capacity(&f)?;
    let (outcome, view) = st
        .lots
        .register(id, name.clone(), cap, f.event_id()?, f.timestamp(&st)?)
        .await?;
    if let Outcome::Rejected(Rejection::AlreadyRegistered {
        name: n,
        capacity: c,
    }) = &outcome
    {
        if n == name.as_str() && *c == cap.get() {
            let offset = view.offset.unwrap_or_default();
            return Ok(Ack::ok(AckStatus::Unchanged, offset, &view));
        }
    }
    reply(outcome, view, true)
}

/// `GET /v1/lots`.
#[utoipa::path(
    get, path = "/v1/lots", tag = "lots",
    responses((status = 200, description = "Every lot", body = wire::LotList))
)]
pub(super) async fn list(st: web::Data<ApiState>) -> Result<HttpResponse, ApiError> {
    let lots = st.lots.views();
    let (now, after) = (Timestamp::now(), st.stale_after_secs);
    Ok(HttpResponse::Ok().json(wire::LotList {
        lots: lots
            .iter()
            .map(|v| wire::Lot::read(v, now, after))
            .collect(),
    }))
}

/// `GET /v1/lots/{id}`.
#[utoipa::path(
    get, path = "/v1/lots/{id}", tag = "lots",
    params(("id" = String, Path, description = "Lot id", example = "north")),
    responses(
        (status = 200, description = "The lot", body = wire::Lot),
        (status = 400, description = "Not a lot id", body = wire::ErrorBody),
        (status = 404, description = "Unknown lot", body = wire::ErrorBody),
    )
)]
pub(super) async fn get(
    path: web::Path<String>,
    st: web::Data<ApiState>,
) -> Result<HttpResponse, ApiError> {
    let id = lot_id(&path)?;
    let view = st.lots.view(&id).ok_or(ApiError::NotFound {
        lot_id: id.to_string(),
    })?;
    let lot = wire::Lot::read(&view, Timestamp::now(), st.stale_after_secs);
    Ok(HttpResponse::Ok().json(lot))
}

/// `PATCH /v1/lots/{id} {capacity, event_id?}`.
#[utoipa::path(
    patch, path = "/v1/lots/{id}", tag = "lots",
    params(("id" = String, Path, description = "Lot id", example = "north")),
    request_body(content = wire::CapacityIn, content_type = "application/json"),
    responses(
        (status = 200, description = "Changed (or a duplicate)", body = wire::Ack),
        (status = 400, description = "A bad field", body = wire::ErrorBody),
        (status = 404, description = "Unknown lot", body = wire::ErrorBody),
        (status = 408, description = "The body did not arrive in time", body = wire::ErrorBody),
        (status = 409, description = "Below the occupancy", body = wire::ErrorBody),
        (status = 413, description = "Body too large", body = wire::ErrorBody),
        (status = 415, description = "Not JSON", body = wire::ErrorBody),
    )
)]
pub(super) async fn change_capacity(
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
    st: web::Data<ApiState>,
) -> Result<HttpResponse, ApiError> {
    let f = Fields::read(&req, payload, &["capacity", "event_id", "timestamp"]).await?;
    let h = handle(&st, &path)?;
    let (outcome, view) = h
        .change_capacity(capacity(&f)?, f.timestamp(&st)?, f.event_id()?)
        .await?;
    reply(outcome, view, false)
}

/// `POST /v1/lots/{id}/count {count, timestamp?, event_id?}`: an absolute recount.
#[utoipa::path(
    post, path = "/v1/lots/{id}/count", tag = "ingest",
    params(("id" = String, Path, description = "Lot id", example = "north")),
    request_body(content = wire::CountIn, content_type = "application/json"),
    responses(
        (status = 200, description = "Counted (or a duplicate)", body = wire::Ack),
        (status = 400, description = "A bad field", body = wire::ErrorBody),
        (status = 404, description = "Unknown lot", body = wire::ErrorBody),
        (status = 408, description = "The body did not arrive in time", body = wire::ErrorBody),
        (status = 409, description = "Above the capacity", body = wire::ErrorBody),
        (status = 413, description = "Body too large, or more than the token may post at once", body = wire::ErrorBody),
        (status = 415, description = "Not JSON", body = wire::ErrorBody),
    )
)]
pub(super) async fn count(
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
    st: web::Data<ApiState>,
) -> Result<HttpResponse, ApiError> {
    let f = Fields::read(&req, payload, &["count", "event_id", "timestamp"]).await?;
    let h = handle(&st, &path)?;
    if let Some(c) = super::auth::caller(&req) {
        if !c.may_move(h.id()) {
            return Err(ApiError::Forbidden(format!(
                "token {:?} may not post counts for lot {:?}",
                &*c.name,
                h.id().as_str()
            )));
        }
    }
    st.spend_ingest(&req, 1)?;
    let count = f.req_int("count")?;
    let count = u32::try_from(count).map_err(|_| {
        ApiError::bad(
            Some("count".into()),
            format!("count must be 0 or more (got {count})"),
        )
    })?;
    let (outcome, view) = h.count(count, f.timestamp(&st)?, f.event_id()?).await?;
    reply(outcome, view, false)
}
