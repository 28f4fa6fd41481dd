//! The health probe a container runtime runs (`parkade healthcheck`): `GET /healthz`
//! over a plain TCP connection with a deadline, no HTTP client library, so that it
//! answers quickly even when the server does not.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::Duration;

/// What the probe found.
#[derive(Debug)]
pub enum Health {
    /// `/healthz` answered 200.
    Healthy,
    /// The server answered with this status line.
    Unhealthy(String),
    /// No answer: not listening, or not within the deadline.
    Unreachable(std::io::Error),
}

/// The address to probe for a server that listens on `bind`: the same port, on
/// loopback when `bind` is every interface.
pub fn local_address(bind: SocketAddr) -> SocketAddr {
    let ip = if bind.ip().is_unspecified() {
        std::net::IpAddr::from([127, 0, 0, 1])
    } else {
        bind.ip()
    };
    SocketAddr::new(ip, bind.port())
}

/// `GET /healthz` of the server at `address`, each step within `deadline`.
pub fn healthz(address: SocketAddr, deadline: Duration) -> Health {
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
            Health::Healthy
        }
        Ok(reply) => Health::Unhealthy(reply.lines().next().unwrap_or("nothing").to_owned()),
        Err(e) => Health::Unreachable(e),
    }
}
