//! The pure lot domain: identifiers parsed at the edge, events, and the `decide`/`apply`
//! pair that every other module wraps.
//!
//! Nothing here does I/O or reads a clock: callers pass times in, so the rules can be
//! tested as given/when/then without a runtime.

mod events;
mod ids;
mod lot;
mod request;

pub use events::{
    check_event_time, is_stale, EventType, LotEvent, NewEvent, RecordedEvent, TimeError, Timestamp,
    DEFAULT_MAX_FUTURE_SECS, DEFAULT_MAX_REQUEST_SPAN_SECS, EARLIEST_EVENT_MICROS,
    MAX_WRITTEN_MICROS, MIN_WRITTEN_MICROS, SCHEMA_VERSION,
};
pub use ids::{Capacity, IdError, LotId, LotName, MAX_CAPACITY, MAX_LOT_ID_LEN, MAX_NAME_LEN};
pub use lot::{apply, decide, Command, LotState, Rejection};
pub use request::{LotView, Outcome, Request};
