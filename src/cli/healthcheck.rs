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

/// GET /healthz over a plain TCP connection with a deadline; 200 is healthy.
pub(super) fn healthcheck(a: HealthcheckArgs) -> ExitCode {
    use std::io::{Read, Write};
    let address = a.address.unwrap_or_else(|| {
        let ip = if a.bind.ip().is_unspecified() {
            std::net::IpAddr::from([127, 0, 0, 1])
        } else {
            a.bind.ip()
        };
        SocketAddr::new(ip, a.bind.port())
    });
    let deadline = std::time::Duration::from_secs(3);
    let answer = (|| -> std::io::Result<String> {
        let mut s = std::net::TcpStream::connect_timeout(&address, deadline)?;
        s.set_read_timeout(Some(deadline))?;
        s.set_write_timeout(Some(deadline))?;
        write!(
            s,
            "GET /healthz HTTP/1.0\r\nHost: {address}\r\nConnection: close\r\n\r\n"
        )?;
        // The status line is enough: read until the headers end (or the server closes).
        let mut reply = Vec::new();
        let mut chunk = [0u8; 1024];
        while !reply.windows(4).any(|w| w == b"\r\n\r\n") && reply.len() < 64 << 10 {
            let n = s.read(&mut chunk)?;
            if n == 0 {
                break;
            }
            reply.extend_from_slice(&chunk[..n]);
        }
        Ok(String::from_utf8_lossy(&reply).into_owned())
    })();
    match answer {
        Ok(reply) if reply.starts_with("HTTP/1.1 200") || reply.starts_with("HTTP/1.0 200") => {
            println!("healthy: {address}");
            ExitCode::SUCCESS
        }
        Ok(reply) => {
            println!(
                "unhealthy: {address} answered {}",
                reply.lines().next().unwrap_or("nothing")
            );
            ExitCode::FAILURE
        }
        Err(e) => {
            println!("unhealthy: {address}: {e}");
            ExitCode::FAILURE
        }
    }
}
