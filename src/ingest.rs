//! Standardisation at the edge: the ingest JSON of gates, controllers and the
//! simulator, turned into typed lot requests, with a specific error for every problem.
//!
//! Accepted per event: `lot_id` (string, trimmed and normalised, see
//! [`LotId::parse`](crate::domain::LotId::parse)), `event_type` (`ARRIVAL`,
//! `DEPARTURE`, or `COUNT` with an integer `count` ≥ 0 for an absolute count; any
//! case), `timestamp` (optional; RFC 3339 with an offset, or integer
//! epoch milliseconds; missing means the time of receipt; stored in UTC), `event_id`
//! (optional UUID for idempotent retries). Unknown fields are refused, so a typo such
//! as `timestmap` is reported rather than silently replaced by the receipt time.

use std::borrow::Cow;

use chrono::DateTime;
use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;
use uuid::Uuid;

use crate::domain::Request;
use crate::domain::{
    check_event_time, Command, LotId, Timestamp, MAX_WRITTEN_MICROS, MIN_WRITTEN_MICROS,
};

const FIELDS: &str = "event_id, lot_id, event_type, timestamp, count";
/// Latest epoch-milliseconds timestamp accepted (9999-12-31T23:59:59.999Z).
const MAX_MILLIS: i64 = 253_402_300_799_999;

/// A problem with one event, naming the field when there is one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub field: Option<String>,
    pub message: String,
}

impl FieldError {
    fn new(field: &str, message: impl Into<String>) -> Self {
        FieldError {
            field: Some(field.to_owned()),
            message: message.into(),
        }
    }
}

/// A problem with the request as a whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyError {
    Malformed(String),
    Empty,
    TooMany { count: usize, limit: usize },
}

/// The shape the client used: one event gets one status, many get a list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    One,
    Many,
}

/// One standardised event.
#[derive(Debug, Clone)]
pub struct Standardised {
    pub lot_id: LotId,
    pub request: Request,
}

/// Rules that depend on configuration and the clock.
#[derive(Debug, Clone, Copy)]
pub struct EdgeRules {
    pub now: Timestamp,
    pub max_future_micros: i64,
    pub max_events: usize,
}

/// Parse a `POST /v1/events` body.
pub fn parse_body(
    body: &[u8],
    ndjson: bool,
    rules: &EdgeRules,
) -> Result<(Shape, Vec<Result<Standardised, FieldError>>), BodyError> {
    if ndjson {
        let text = std::str::from_utf8(body)
            .map_err(|e| BodyError::Malformed(format!("body is not UTF-8: {e}")))?;
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        check_count(lines.len(), rules)?;
        let events = lines.into_iter().map(|l| parse_event(l, rules)).collect();
        return Ok((Shape::Many, events));
    }
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    match first {
        None => Err(BodyError::Empty),
        Some(b'[') => {
            let raws: Vec<&RawValue> = serde_json::from_slice(body)
                .map_err(|e| BodyError::Malformed(format!("malformed JSON: {e}")))?;
            check_count(raws.len(), rules)?;
            Ok((
                Shape::Many,
                raws.into_iter()
                    .map(|r| parse_event(r.get(), rules))
                    .collect(),
            ))
        }
        Some(_) => {
            let raw: &RawValue = serde_json::from_slice(body)
                .map_err(|e| BodyError::Malformed(format!("malformed JSON: {e}")))?;
            Ok((Shape::One, vec![parse_event(raw.get(), rules)]))
        }
    }
}

fn check_count(count: usize, rules: &EdgeRules) -> Result<(), BodyError> {
    if count == 0 {
        Err(BodyError::Empty)
    } else if count > rules.max_events {
        Err(BodyError::TooMany {
            count,
            limit: rules.max_events,
        })
    } else {
        Ok(())
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WireEvent<'a> {
    #[serde(default, borrow)]
    event_id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    lot_id: Cow<'a, str>,
    #[serde(borrow)]
    event_type: Cow<'a, str>,
    #[serde(default, borrow)]
    timestamp: Option<WireTime<'a>>,
    #[serde(default)]
    count: Option<i64>,
}

enum WireTime<'a> {
    Text(Cow<'a, str>),
    Millis(i64),
}

impl<'de: 'a, 'a> Deserialize<'de> for WireTime<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = WireTime<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an RFC 3339 string or integer epoch milliseconds")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(WireTime::Text(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(WireTime::Text(Cow::Owned(v.to_owned())))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Ok(WireTime::Millis(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                i64::try_from(v)
                    .map(WireTime::Millis)
                    .map_err(|_| E::custom("timestamp is out of range"))
            }
        }
        d.deserialize_any(V)
    }
}

/// Parse and standardise one event given as JSON text.
pub fn parse_event(json: &str, rules: &EdgeRules) -> Result<Standardised, FieldError> {
    match serde_json::from_str::<WireEvent>(json) {
        Ok(w) => {
            let time = match &w.timestamp {
                None => TimeInput::Missing,
                Some(WireTime::Text(t)) => TimeInput::Text(t),
                Some(WireTime::Millis(ms)) => TimeInput::Millis(*ms),
            };
            standardise(
                &w.lot_id,
                &w.event_type,
                w.count,
                time,
                w.event_id.as_deref(),
                rules,
            )
        }
        // The fast path failed: look again, field by field, to say exactly what is wrong.
        Err(e) => Err(explain(json, e)),
    }
}

/// A timestamp as it came in.
#[derive(Debug, Clone, Copy)]
pub enum TimeInput<'a> {
    /// Not given: the time of receipt.
    Missing,
    /// RFC 3339 text (or, from CSV, digits meaning epoch milliseconds).
    Text(&'a str),
    Millis(i64),
}

/// Standardise one event given as separate fields (JSON or a CSV row).
pub fn standardise(
    lot_id: &str,
    event_type: &str,
    count: Option<i64>,
    timestamp: TimeInput,
    event_id: Option<&str>,
    rules: &EdgeRules,
) -> Result<Standardised, FieldError> {
    let lot_id = LotId::parse(lot_id).map_err(|e| FieldError::new("lot_id", e.to_string()))?;
    let kind = event_type.trim();
    let command = if kind.eq_ignore_ascii_case("ARRIVAL") {
        Command::Arrive
    } else if kind.eq_ignore_ascii_case("DEPARTURE") {
        Command::Depart
    } else if kind.eq_ignore_ascii_case("COUNT") {
        let count = count
            .ok_or_else(|| FieldError::new("count", "a COUNT event needs an integer count"))?;
        let count = u32::try_from(count).map_err(|_| {
            FieldError::new(
                "count",
                format!("count must be between 0 and {} (got {count})", u32::MAX),
            )
        })?;
        Command::Count { count }
    } else {
        return Err(FieldError::new(
            "event_type",
            format!("event_type must be ARRIVAL, DEPARTURE or COUNT (got {event_type:?})"),
        ));
    };
    if count.is_some() && !matches!(command, Command::Count { .. }) {
        return Err(FieldError::new(
            "count",
            "count is only allowed with event_type COUNT",
        ));
    }
    let occurred_at = match timestamp {
        TimeInput::Missing => rules.now,
        TimeInput::Text(s) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => {
            match s.parse::<i64>() {
                Ok(ms) => parse_timestamp_millis(ms)?,
                Err(_) => {
                    return Err(FieldError::new(
                        "timestamp",
                        format!("timestamp {s} is out of range"),
                    ))
                }
            }
        }
        TimeInput::Text(s) => parse_timestamp_text(s)?,
        TimeInput::Millis(ms) => parse_timestamp_millis(ms)?,
    };
    check_event_time(occurred_at, rules.now, rules.max_future_micros)
        .map_err(|e| FieldError::new("timestamp", e.to_string()))?;
    let event_id = event_id
        .filter(|s| !s.trim().is_empty())
        .map(parse_event_id)
        .transpose()?;
    Ok(Standardised {
        lot_id,
        request: Request {
            command,
            event_id,
            occurred_at,
        },
    })
}

/// An RFC 3339 timestamp with an explicit offset, normalised to UTC.
/// RFC 3339 with an offset, within years 0000 to 9999 once in UTC (an offset can
/// carry `0000-01-01T00:00:00+01:00` into year -1, which no reply could write).
pub fn parse_timestamp_text(s: &str) -> Result<Timestamp, FieldError> {
    let t = DateTime::parse_from_rfc3339(s.trim())
        .map(|dt| Timestamp::from_datetime(dt.to_utc()))
        .map_err(|e| {
            FieldError::new(
                "timestamp",
                format!("timestamp {s:?} is not RFC 3339 with a UTC offset, e.g. 2026-11-27T09:00:00Z ({e})"),
            )
        })?;
    if !(MIN_WRITTEN_MICROS..=MAX_WRITTEN_MICROS).contains(&t.micros()) {
        return Err(FieldError::new(
            "timestamp",
            format!("timestamp {s:?} is outside years 0000 to 9999 in UTC"),
        ));
    }
    Ok(t)
}

/// Epoch milliseconds, 1970 to 9999.
pub fn parse_timestamp_millis(ms: i64) -> Result<Timestamp, FieldError> {
    if !(0..=MAX_MILLIS).contains(&ms) {
        return Err(FieldError::new(
            "timestamp",
            format!("timestamp {ms} is outside epoch milliseconds 0..={MAX_MILLIS}"),
        ));
    }
    Ok(Timestamp::from_micros(ms * 1000))
}

pub fn parse_event_id(s: &str) -> Result<Uuid, FieldError> {
    Uuid::parse_str(s.trim())
        .map_err(|e| FieldError::new("event_id", format!("event_id {s:?} is not a UUID ({e})")))
}

/// Turn a failed fast-path parse into a precise message.
fn explain(json: &str, fallback: serde_json::Error) -> FieldError {
    let value: serde_json::Value = match serde_json::from_str(json) {
        Ok(v) => v,
        Err(e) => {
            return FieldError {
                field: None,
                message: format!("malformed JSON: {e}"),
            }
        }
    };
    let Some(obj) = value.as_object() else {
        return FieldError {
            field: None,
            message: "an event must be a JSON object".into(),
        };
    };
    for key in obj.keys() {
        if !matches!(
            key.as_str(),
            "event_id" | "lot_id" | "event_type" | "timestamp" | "count"
        ) {
            return FieldError {
                field: Some(key.clone()),
                message: format!("unknown field {key:?} (expected {FIELDS})"),
            };
        }
    }
    for (field, required) in [("lot_id", true), ("event_type", true), ("event_id", false)] {
        match obj.get(field) {
            None if required => return FieldError::new(field, format!("missing field {field:?}")),
            None | Some(serde_json::Value::String(_)) => {}
            Some(serde_json::Value::Null) if !required => {}
            Some(other) => {
                return FieldError::new(field, format!("{field} must be a string (got {other})"))
            }
        }
    }
    match obj.get("count") {
        None | Some(serde_json::Value::Null) => {}
        Some(serde_json::Value::Number(n)) if n.is_i64() => {}
        Some(other) => {
            return FieldError::new("count", format!("count must be an integer (got {other})"))
        }
    }
    match obj.get("timestamp") {
        None | Some(serde_json::Value::Null | serde_json::Value::String(_)) => {}
        Some(serde_json::Value::Number(n)) if n.is_i64() || n.is_u64() => {}
        Some(other) => {
            return FieldError::new(
                "timestamp",
                format!(
                "timestamp must be an RFC 3339 string or integer epoch milliseconds (got {other})"
            ),
            )
        }
    }
    FieldError {
        field: None,
        message: format!("invalid event: {fallback}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> EdgeRules {
        EdgeRules {
            now: parse_timestamp_text("2026-11-27T12:00:00Z").unwrap(),
            max_future_micros: 86_400_000_000,
            max_events: 3,
        }
    }

    fn one(json: &str) -> Result<Standardised, FieldError> {
        parse_event(json, &rules())
    }

    #[test]
    fn standardises_ids_types_and_times() {
        let e = one(r#"{"lot_id":"  North-1 ","event_type":"arrival","timestamp":"2026-11-27T10:00:00+01:00"}"#).unwrap();
        assert_eq!(e.lot_id.as_str(), "north-1");
        assert_eq!(e.request.command, Command::Arrive);
        assert_eq!(
            e.request.occurred_at,
            parse_timestamp_text("2026-11-27T09:00:00Z").unwrap()
        );
        let e =
            one(r#"{"lot_id":"a","event_type":"DEPARTURE","timestamp":1764234000000}"#).unwrap();
        assert_eq!(e.request.command, Command::Depart);
        assert_eq!(e.request.occurred_at.micros(), 1_764_234_000_000_000);
        let e = one(r#"{"lot_id":"a","event_type":"Arrival"}"#).unwrap();
        assert_eq!(e.request.occurred_at, rules().now);
        let e = one(r#"{"lot_id":"a","event_type":"count","count":12}"#).unwrap();
        assert_eq!(e.request.command, Command::Count { count: 12 });
        assert_eq!(e.request.event_id, None);
    }

    #[test]
    fn every_problem_names_its_field() {
        let field = |json: &str| one(json).unwrap_err().field;
        assert_eq!(
            field(r#"{"event_type":"ARRIVAL"}"#).as_deref(),
            Some("lot_id")
        );
        assert_eq!(
            field(r#"{"lot_id":5,"event_type":"ARRIVAL"}"#).as_deref(),
            Some("lot_id")
        );
        assert_eq!(
            field(r#"{"lot_id":"a/b","event_type":"ARRIVAL"}"#).as_deref(),
            Some("lot_id")
        );
        assert_eq!(
            field(r#"{"lot_id":"a","event_type":"PARKED"}"#).as_deref(),
            Some("event_type")
        );
        assert_eq!(
            field(r#"{"lot_id":"a","event_type":"COUNT"}"#).as_deref(),
            Some("count")
        );
        assert_eq!(
            field(r#"{"lot_id":"a","event_type":"COUNT","count":-1}"#).as_deref(),
            Some("count")
        );
        assert_eq!(
            field(r#"{"lot_id":"a","event_type":"ARRIVAL","count":3}"#).as_deref(),
            Some("count")
        );
        assert_eq!(
            field(r#"{"lot_id":"a","event_type":"ARRIVAL","timestamp":"yesterday"}"#).as_deref(),
            Some("timestamp")
        );
        assert_eq!(
            field(r#"{"lot_id":"a","event_type":"ARRIVAL","timestamp":"2026-11-27T09:00:00"}"#)
                .as_deref(),
            Some("timestamp")
        );
        assert_eq!(
            field(r#"{"lot_id":"a","event_type":"ARRIVAL","timestamp":1.5}"#).as_deref(),
            Some("timestamp")
        );
        assert_eq!(
            field(r#"{"lot_id":"a","event_type":"ARRIVAL","timestamp":"2027-11-27T09:00:00Z"}"#)
                .as_deref(),
            Some("timestamp")
        );
        assert_eq!(
            field(r#"{"lot_id":"a","event_type":"ARRIVAL","event_id":"nope"}"#).as_deref(),
            Some("event_id")
        );
        assert_eq!(
            field(r#"{"lot_id":"a","event_type":"ARRIVAL","timestmap":"x"}"#).as_deref(),
            Some("timestmap")
        );
        assert_eq!(one("[1]").unwrap_err().field, None);
        // A COUNT event with another problem is told that problem, not that count is
        // unknown.
        let e =
            one(r#"{"lot_id":"a","event_type":"COUNT","count":3,"timestamp":1.5}"#).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("timestamp"), "{e:?}");
        let e = one(r#"{"lot_id":"a","event_type":"COUNT","count":3,"event_id":7}"#).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("event_id"), "{e:?}");
        // Before the floor of 2000-01-01.
        assert_eq!(
            field(r#"{"lot_id":"a","event_type":"ARRIVAL","timestamp":"1999-12-31T23:59:59Z"}"#)
                .as_deref(),
            Some("timestamp")
        );
        assert_eq!(
            field(r#"{"lot_id":"a","event_type":"ARRIVAL","timestamp":0}"#).as_deref(),
            Some("timestamp")
        );
    }

    #[test]
    fn bodies_come_as_one_many_or_ndjson() {
        let (shape, events) = parse_body(
            br#" {"lot_id":"a","event_type":"ARRIVAL"}"#,
            false,
            &rules(),
        )
        .unwrap();
        assert_eq!((shape, events.len()), (Shape::One, 1));
        let (shape, events) = parse_body(
            br#"[{"lot_id":"a","event_type":"ARRIVAL"},{"lot_id":"a"}]"#,
            false,
            &rules(),
        )
        .unwrap();
        assert_eq!(shape, Shape::Many);
        assert!(events[0].is_ok() && events[1].is_err());
        let nd = b"{\"lot_id\":\"a\",\"event_type\":\"ARRIVAL\"}\n\n{oops\n";
        let (shape, events) = parse_body(nd, true, &rules()).unwrap();
        assert_eq!((shape, events.len()), (Shape::Many, 2));
        assert!(events[1].is_err());
        assert!(matches!(
            parse_body(b"[", false, &rules()),
            Err(BodyError::Malformed(_))
        ));
        assert_eq!(
            parse_body(b"  ", false, &rules()).unwrap_err(),
            BodyError::Empty
        );
        assert_eq!(
            parse_body(b"[]", false, &rules()).unwrap_err(),
            BodyError::Empty
        );
        let four = br#"[{"lot_id":"a","event_type":"ARRIVAL"},{},{},{}]"#;
        assert_eq!(
            parse_body(four, false, &rules()).unwrap_err(),
            BodyError::TooMany { count: 4, limit: 3 }
        );
    }
}
