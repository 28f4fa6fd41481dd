//! Forecasts of each lot's occupancy.
//!
//! - [`history`]: the readings a forecast may use and the weekly profile built from
//!   them, every query bounded by the issue time;
//! - [`model`]: the model (weekly profile + the lot's deviation from it, weights fitted
//!   per horizon), its training and the saved artifact;
//! - [`backtest`]: `parkade backtest`, rolling-origin evaluation against two baselines;
//! - [`service`]: training from the features, the model artifact, and the predictor
//!   forecasting every lot on a schedule, into `lot_forecasts` or memory.

pub mod backtest;
pub mod history;
pub mod model;
pub mod query;
pub mod service;

pub use history::ProfileParams;
pub use model::{HorizonFit, Model};

/// Artifact layout version of [`Model`].
pub const MODEL_FORMAT: u32 = 1;

/// A model with a fresh version: the training time and a hash of its weights.
pub fn new_model(source: String, profile: ProfileParams, horizons: Vec<HorizonFit>) -> Model {
    let now = chrono::Utc::now();
    let mut digest = crc32c::crc32c(source.as_bytes());
    for h in &horizons {
        for c in h.coef {
            digest = crc32c::crc32c_append(digest, &c.to_le_bytes());
        }
    }
    Model {
        format: MODEL_FORMAT,
        version: format!("{}-{digest:08x}", now.format("%Y%m%dT%H%M%SZ")),
        trained_at: now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        source,
        profile,
        horizons,
    }
}
