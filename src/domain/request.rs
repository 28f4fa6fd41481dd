//! What a request to a lot is, what became of it, and the lot as readers see it: the
//! values that pass between the edge (ingest, import), the lot actors and the live
//! fan-out, kept here so that none of those needs another's module to name them.

use uuid::Uuid;

use super::{Command, LotId, Rejection, Timestamp};

/// One command for a lot, with the metadata the edge standardised.
#[derive(Debug, Clone)]
pub struct Request {
    pub command: Command,
    /// The client's id for idempotent retries; `None` gets a server UUIDv7.
    pub event_id: Option<Uuid>,
    pub occurred_at: Timestamp,
}

/// What became of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Accepted {
        offset: u64,
    },
    /// Seen before: acknowledged again with the original's offset, nothing appended.
    Duplicate {
        offset: u64,
    },
    Rejected(Rejection),
}

/// A lot as readers see it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LotView {
    pub lot_id: LotId,
    pub name: String,
    pub capacity: u32,
    pub occupancy: u32,
    pub free: u32,
    /// Log offset of the last event of this lot that this view reflects.
    pub offset: Option<u64>,
    /// Event time of that event.
    pub updated_at: Option<Timestamp>,
    #[serde(skip)]
    pub registered: bool,
}
