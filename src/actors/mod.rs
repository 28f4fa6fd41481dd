//! Lot actors: one actix actor per lot, the only writer of its lot.
//!
//! A lot actor holds its [`LotState`](crate::domain::LotState), decides each command
//! with [`decide`](crate::domain::decide), appends the resulting events to the log and
//! applies them. It does not wait for the log's sync: the next message is decided while
//! the previous batch is being made durable, and callers wait for durability through
//! their [`LotHandle`]. If the append itself fails, the actor restores the state it had
//! before the message, so its state never runs ahead of the log.
//!
//! Callers never see an actor address: [`Lots`] hands out typed [`LotHandle`]s.
//!
//! # Idempotency window
//!
//! A client-supplied `event_id` is remembered per lot for the last
//! `dedupe_window` (default 50,000) client-identified events of that lot, in memory,
//! rebuilt from the log at start. A retry whose original is inside that window is
//! acknowledged again with the original's offset and appends nothing, also across a
//! restart. Events without a client `event_id` get a server UUIDv7 and are not
//! remembered (nobody can retry them by id).

mod lot;
mod registry;

pub use lot::{LotError, LotHandle};
pub use registry::{LotOptions, Lots};
