//! The 15-minute features: `lot_features_15m` in PostgreSQL, folded from the log by
//! event time (see [`fold`] for the rules, including late events), and one Parquet file
//! per day in the lake (see [`lake`]).

pub mod fold;
pub mod lake;
pub mod memory;
mod pg;
pub mod query;

pub use fold::{bucket_of, FeatureFold, FeatureRow, BUCKET_MICROS};
pub use pg::{rebuild, write_batch, Features, NAME};
