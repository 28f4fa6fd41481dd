//! `parkade serve`: the service itself, on the configuration and these flags.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use super::Common;
use crate::app::{Application, Hooks};

#[derive(Args)]
pub(super) struct ServeArgs {
    #[command(flatten)]
    pub(super) common: Common,
    /// Address and port to listen on. Default 127.0.0.1:8080.
    #[arg(long, env = "PARKADE_BIND", hide_env_values = true)]
    pub(super) bind: Option<SocketAddr>,
    /// HTTP worker threads. Default: number of CPUs.
    #[arg(long, env = "PARKADE_HTTP_WORKERS", hide_env_values = true)]
    pub(super) http_workers: Option<usize>,
    /// Largest request body in bytes. Default 4 MiB.
    #[arg(long, env = "PARKADE_MAX_BODY_BYTES", hide_env_values = true)]
    pub(super) max_body_bytes: Option<usize>,
    /// Most events per POST /v1/events request. Default 10,000.
    #[arg(long, env = "PARKADE_MAX_BATCH_EVENTS", hide_env_values = true)]
    pub(super) max_batch_events: Option<usize>,
    /// Client event ids remembered per lot for idempotent retries. Default 50,000.
    #[arg(long, env = "PARKADE_DEDUPE_WINDOW", hide_env_values = true)]
    pub(super) dedupe_window: Option<usize>,
    /// Threads the lot actors run on. Default 1.
    #[arg(long, env = "PARKADE_LOT_THREADS", hide_env_values = true)]
    pub(super) lot_threads: Option<usize>,
    /// Tokens file (see `parkade token new`); without tokens every route is open.
    #[arg(long, env = "PARKADE_TOKENS_FILE", hide_env_values = true)]
    pub(super) tokens_file: Option<PathBuf>,
}

pub(super) fn serve(a: ServeArgs) -> anyhow::Result<ExitCode> {
    let mut c = a.common.config()?;
    if let Some(b) = a.bind {
        c.bind = b;
    }
    if let Some(n) = a.http_workers {
        c.http_workers = n;
    }
    if let Some(n) = a.max_body_bytes {
        c.limits.max_body_bytes = n;
    }
    if let Some(n) = a.max_batch_events {
        c.limits.max_batch_events = n;
    }
    if let Some(n) = a.dedupe_window {
        c.lots.dedupe_window = n;
    }
    if let Some(n) = a.lot_threads {
        c.lots.threads = n;
    }
    if let Some(f) = a.tokens_file {
        c.auth.tokens_file = Some(f);
    }
    crate::telemetry::init(c.log_format);
    actix_web::rt::System::new().block_on(async move {
        let app = Application::build(c, Hooks::default()).await?;
        app.run_until_stopped().await
    })?;
    Ok(ExitCode::SUCCESS)
}
