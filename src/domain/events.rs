//! Events are facts, in the past tense, each with a schema version.

use chrono::{DateTime, TimeZone, Utc};
use uuid::Uuid;

use super::{Capacity, LotId};

/// Schema version of every event type written by this build. Readers accept every
/// version up to this one.
pub const SCHEMA_VERSION: u8 = 1;

/// A UTC instant with microsecond precision (what the log and PostgreSQL store).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(i64);

impl Timestamp {
    pub fn from_micros(micros: i64) -> Self {
        Timestamp(micros)
    }

    pub fn micros(self) -> i64 {
        self.0
    }

    pub fn from_datetime(dt: DateTime<Utc>) -> Self {
        Timestamp(dt.timestamp_micros())
    }

    pub fn to_datetime(self) -> DateTime<Utc> {
        Utc.timestamp_micros(self.0)
            .single()
            .unwrap_or(DateTime::<Utc>::MIN_UTC)
    }

    /// The current wall-clock time. Only the edges (api, log) call this.
    pub fn now() -> Self {
        Timestamp::from_datetime(Utc::now())
    }
}

/// The first instant of year 0000 (UTC): [`Timestamp`]s are written with four-digit
/// years, from this one...
pub const MIN_WRITTEN_MICROS: i64 = -62_167_219_200_000_000;
/// ...to the last microsecond of year 9999 (UTC).
pub const MAX_WRITTEN_MICROS: i64 = 253_402_300_799_999_999;

impl serde::Serialize for Timestamp {
    /// RFC 3339 in UTC. Times the edges take are within years 0000 to 9999; one
    /// computed past them (a bucket before year 0000) is written as the bound, so a
    /// reply never holds a year RFC 3339 readers refuse.
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        Timestamp(self.0.clamp(MIN_WRITTEN_MICROS, MAX_WRITTEN_MICROS))
            .to_datetime()
            .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
            .serialize(s)
    }
}

impl<'de> serde::Deserialize<'de> for Timestamp {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        let t = chrono::DateTime::parse_from_rfc3339(&text)
            .map(|t| Timestamp::from_datetime(t.to_utc()))
            .map_err(|e| {
                serde::de::Error::custom(format!("{text:?} is not an RFC 3339 time: {e}"))
            })?;
        if !(MIN_WRITTEN_MICROS..=MAX_WRITTEN_MICROS).contains(&t.0) {
            return Err(serde::de::Error::custom(format!(
                "{text:?} is outside years 0000 to 9999 in UTC"
            )));
        }
        Ok(t)
    }
}

/// The earliest event time parkade accepts: 2000-01-01T00:00:00Z. Older timestamps
/// are typing or clock errors (an unset RTC reports 1970), not parking history.
pub const EARLIEST_EVENT_MICROS: i64 = 946_684_800_000_000;

/// Why an event time was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TimeError {
    #[error("timestamp {at} is more than {max_future_secs} s ahead of the server clock ({now})")]
    TooFarAhead {
        at: String,
        now: String,
        max_future_secs: i64,
    },
    #[error("timestamp {at} is before 2000-01-01T00:00:00Z, the earliest event time accepted")]
    TooEarly { at: String },
}

/// A lot is stale when its last event (by event time) is more than `after_secs` before
/// `now`: a counter that has gone quiet, whose count may no longer be true. A lot with
/// no event is not stale (it has nothing to be stale about).
pub fn is_stale(last_event: Option<Timestamp>, now: Timestamp, after_secs: u64) -> bool {
    let after = i64::try_from(after_secs.saturating_mul(1_000_000)).unwrap_or(i64::MAX);
    last_event.is_some_and(|t| now.micros().saturating_sub(t.micros()) > after)
}

/// How far ahead of the server clock an event may be by default (`[limits]
/// max_future_secs`): a gate whose clock runs a little fast is still heard.
pub const DEFAULT_MAX_FUTURE_SECS: i64 = 900;

/// The event time the events of one request may span by default (`[limits]
/// max_request_span_secs`, 31 days): what a client sends in one batch unless a server
/// answers 413.
pub const DEFAULT_MAX_REQUEST_SPAN_SECS: i64 = 31 * 86_400;

/// The one rule for the time of every event that enters the log, whatever path it
/// comes by (HTTP, import, simulator): not before [`EARLIEST_EVENT_MICROS`] and at most
/// `max_future_micros` ahead of `now` (the server clock).
pub fn check_event_time(
    at: Timestamp,
    now: Timestamp,
    max_future_micros: i64,
) -> Result<(), TimeError> {
    let show = |t: Timestamp| {
        t.to_datetime()
            .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
    };
    if at.micros() < EARLIEST_EVENT_MICROS {
        return Err(TimeError::TooEarly { at: show(at) });
    }
    if at.micros() > now.micros().saturating_add(max_future_micros) {
        return Err(TimeError::TooFarAhead {
            at: show(at),
            now: show(now),
            max_future_secs: max_future_micros / 1_000_000,
        });
    }
    Ok(())
}

/// The kind of an event, as stored in the log (one byte) and shown to readers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub enum EventType {
    LotRegistered = 1,
    LotCapacityChanged = 2,
    VehicleArrived = 3,
    VehicleDeparted = 4,
    OccupancyCounted = 5,
}

impl EventType {
    pub fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            1 => EventType::LotRegistered,
            2 => EventType::LotCapacityChanged,
            3 => EventType::VehicleArrived,
            4 => EventType::VehicleDeparted,
            5 => EventType::OccupancyCounted,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            EventType::LotRegistered => "LotRegistered",
            EventType::LotCapacityChanged => "LotCapacityChanged",
            EventType::VehicleArrived => "VehicleArrived",
            EventType::VehicleDeparted => "VehicleDeparted",
            EventType::OccupancyCounted => "OccupancyCounted",
        }
    }
}

/// What happened to a lot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LotEvent {
    LotRegistered {
        name: String,
        capacity: Capacity,
    },
    LotCapacityChanged {
        capacity: Capacity,
    },
    VehicleArrived,
    VehicleDeparted,
    /// An absolute count from a counting system or a manual recount.
    OccupancyCounted {
        count: u32,
    },
}

impl LotEvent {
    pub fn event_type(&self) -> EventType {
        match self {
            LotEvent::LotRegistered { .. } => EventType::LotRegistered,
            LotEvent::LotCapacityChanged { .. } => EventType::LotCapacityChanged,
            LotEvent::VehicleArrived => EventType::VehicleArrived,
            LotEvent::VehicleDeparted => EventType::VehicleDeparted,
            LotEvent::OccupancyCounted { .. } => EventType::OccupancyCounted,
        }
    }
}

/// An event decided by a lot, before the log has given it an offset.
///
/// `occupancy` and `capacity` are the lot's state *after* the event, as the lot actor
/// computed it; they let readers (websockets, archive) show a change without folding
/// the log from zero. `verify` checks them against an independent fold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEvent {
    pub lot_id: LotId,
    /// Per-lot version, 1 for the registration.
    pub lot_seq: u64,
    pub event_id: Uuid,
    /// True when the client supplied `event_id` (so retries must be recognised).
    pub client_event_id: bool,
    pub occurred_at: Timestamp,
    pub event: LotEvent,
    pub occupancy: u32,
    pub capacity: u32,
}

/// An event as stored in the log: the decided event plus what the log assigned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedEvent {
    /// Global position in the log, from 0.
    pub offset: u64,
    pub recorded_at: Timestamp,
    pub schema_version: u8,
    pub event: NewEvent,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_times_are_bounded_on_both_sides() {
        let now = Timestamp::from_micros(1_764_234_000_000_000);
        let hour = 3_600_000_000;
        assert_eq!(check_event_time(now, now, hour), Ok(()));
        let ahead = Timestamp::from_micros(now.micros() + hour);
        assert_eq!(check_event_time(ahead, now, hour), Ok(()));
        let past_bound = Timestamp::from_micros(now.micros() + hour + 1);
        assert!(matches!(
            check_event_time(past_bound, now, hour),
            Err(TimeError::TooFarAhead { .. })
        ));
        let floor = Timestamp::from_micros(EARLIEST_EVENT_MICROS);
        assert_eq!(check_event_time(floor, now, hour), Ok(()));
        assert!(matches!(
            check_event_time(Timestamp::from_micros(EARLIEST_EVENT_MICROS - 1), now, hour),
            Err(TimeError::TooEarly { .. })
        ));
        // Extremes do not overflow.
        assert!(check_event_time(Timestamp::from_micros(i64::MAX), now, i64::MAX).is_ok());
        assert!(check_event_time(Timestamp::from_micros(i64::MIN), now, hour).is_err());
        assert_eq!(
            floor.to_datetime().to_rfc3339(),
            "2000-01-01T00:00:00+00:00"
        );
    }
}
