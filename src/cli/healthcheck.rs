//! `parkade healthcheck`: exit 0 while the server answers `GET /healthz` with 200.

use std::net::SocketAddr;
use std::process::ExitCode;

use clap::Args;

#[derive(Args)]
pub(super) struct HealthcheckArgs {
    /// The server's address. Default: PARKADE_BIND's port on 127.0.0.1.
    #[arg(long)]
    pub(super) address: Option<SocketAddr>,
    /// Address the server listens on (what `serve` takes), to find its port.
    #[arg(
        long,
        env = "PARKADE_BIND",
        hide_env_values = true,
        default_value = "127.0.0.1:8080"
    )]
    pub(super) bind: SocketAddr,
}

/// Exit 0 when the server answers `GET /healthz` with 200, saying what it found.
pub(super) fn healthcheck(a: HealthcheckArgs) -> ExitCode {
    use crate::api::probe::{healthz, local_address, Health};
    let address = a.address.unwrap_or_else(|| local_address(a.bind));
    match healthz(address, std::time::Duration::from_secs(3)) {
        Health::Healthy => {
            println!("healthy: {address}");
            ExitCode::SUCCESS
        }
        Health::Unhealthy(status) => {
            println!("unhealthy: {address} answered {status}");
            ExitCode::FAILURE
        }
        Health::Unreachable(e) => {
            println!("unhealthy: {address}: {e}");
            ExitCode::FAILURE
        }
    }
}
