//! The integration tests, in one binary: each module is one area of the service, run
//! against the real components (PostgreSQL, Garage for S3, a headless browser, the
//! built `parkade` binary); `common` holds what they share: a fresh database per test,
//! the application on port 0, the typed client, `eventually`, a fault proxy.
//!
//! `tests/metrics.rs` stays a binary of its own: it asserts counts in the process's
//! one metrics recorder, which other tests in the same process would add to.

mod common;

mod api;
mod architecture;
mod archive;
mod archive_s3;
mod auth;
mod cli;
mod cluster;
mod conformance;
mod contract;
mod crash;
mod dashboard;
mod demo;
mod deploy;
mod faults;
mod features;
mod forecast;
mod fuzz;
mod hardening;
mod import;
mod jetstream;
mod limits;
mod log;
mod power_cut;
mod projections;
mod readme;
mod ws;
