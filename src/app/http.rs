//! The HTTP side of the start: the listener, the server and its workers, the
//! housekeeping tasks beside it (rates, stalled connections, memory after large bodies),
//! stop signals, the open-files limit and the access tokens.

use std::net::TcpListener;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

use actix_web::{web, App, HttpServer};
use anyhow::Context;

use super::Shutdown;
use crate::api::{self, ApiState};
use crate::config::Config;
use crate::systemd::Notifier;

/// Bind and start the HTTP server with its middleware; its port.
pub(super) fn serve_http(
    config: &Config,
    state: ApiState,
    auth: api::auth::Auth,
    listener: TcpListener,
) -> anyhow::Result<(actix_web::dev::Server, u16)> {
    let counting = state.connections.clone();
    let max_connections = counting.max_total();
    let state = web::Data::new(state);
    let cors_origins = config.auth.cors_origins.clone();
    let hosts = api::auth::Hosts::new(&config.auth.allowed_hosts, config.bind);
    if hosts.0.is_none() {
        tracing::warn!(
            "the Host header is not checked: set [auth] allowed_hosts to the names clients use"
        );
    }
    let hosts = web::Data::new(hosts);
    let origins = web::Data::new(api::auth::Origins::new(&config.auth.cors_origins));
    let closed = !auth.is_open();
    let auth_data = web::Data::new(auth);
    let port = listener.local_addr()?.port();
    // One line per request only when asked for (RUST_LOG=parkade::http=info): at
    // tens of thousands of requests a second the wrapper alone costs throughput.
    let log_requests = tracing::enabled!(target: "parkade::http", tracing::Level::INFO);
    let server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .app_data(auth_data.clone())
            .app_data(hosts.clone())
            .app_data(origins.clone())
            // Without tokens there is nothing to check: no middleware in the way.
            .wrap(actix_web::middleware::Condition::new(
                closed,
                actix_web::middleware::from_fn(api::auth::authorize),
            ))
            // An unknown Host is refused before anything else...
            .wrap(actix_web::middleware::from_fn(api::auth::check_host))
            // ...but a connection over a cap is refused before that.
            .wrap(actix_web::middleware::from_fn(api::limits::refuse_over_cap))
            .wrap(actix_web::middleware::Condition::new(
                !cors_origins.is_empty(),
                api::auth::cors(&cors_origins),
            ))
            .wrap(actix_web::middleware::from_fn(api::observe))
            // The path, never the query string: it may hold an access token.
            .wrap(actix_web::middleware::Condition::new(
                log_requests,
                actix_web::middleware::Logger::new("%{method}xi %U %s %Dms")
                    .custom_request_replace("method", |req| req.method().to_string())
                    .log_target("parkade::http"),
            ))
            .configure(api::routes)
    })
    .on_connect(move |conn, data| counting.on_connect(conn, data))
    .workers(config.http_workers)
    // A backstop under our own count: connections past the caps are still taken,
    // to be told why, up to twice the cap (beyond that they wait in the backlog).
    .max_connections((2 * max_connections).div_ceil(config.http_workers))
    .backlog(2048)
    // Replies and websocket frames are small and wanted now: without this, Nagle's
    // algorithm holds a frame until the client acknowledges the previous one, which
    // a client's delayed acknowledgement can put off for tens of milliseconds.
    .tcp_nodelay(true)
    .client_disconnect_timeout(api::limits::LINGER)
    // Stop signals are ours (`stop_on_signals`): websockets are closed first, else the
    // graceful stop would wait out its timeout for them.
    .disable_signals()
    .listen(listener)?
    .run();
    Ok((server, port))
}

/// On SIGINT or SIGTERM close the websockets and stop gracefully; on a second one, at once.
pub(super) fn stop_on_signals(
    handle: actix_web::dev::ServerHandle,
    live: crate::live::Live,
    notifier: Option<Notifier>,
) {
    actix_web::rt::spawn(async move {
        stop_signal().await;
        if let Some(n) = &notifier {
            n.stopping();
        }
        tracing::info!(
            "stop signal: closing websockets and finishing requests (again to stop at once)"
        );
        live.close_all();
        actix_web::rt::spawn(handle.stop(true));
        stop_signal().await;
        tracing::warn!("second stop signal: stopping without waiting for open requests");
        handle.stop(false).await;
    });
}

/// Forget idle tokens' rate state once a minute, so the limiter's memory follows the
/// tokens in use.
pub(super) async fn tidy_rates(rate: api::limits::IngestRate, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(60)) => rate.tidy(),
            _ = stop.cancelled() => return,
        }
    }
}

/// Make room for the connections `[limits] max_connections` asks for (0: the default
/// number, or fewer when the hard open-files limit is lower) beside the log's and the
/// archive's files: raise the soft open-files limit up to the hard one if needed, and
/// refuse to start when a number set explicitly does not fit, rather than fail to
/// accept at an unknown point. Returns how many connections the server takes.
pub(super) fn fit_open_files(max_connections: usize) -> anyhow::Result<usize> {
    use rustix::process::{getrlimit, setrlimit, Resource};
    // The log's segments, the archive, PostgreSQL, the runtime's own.
    const RESERVE: u64 = 256;
    let asked = match max_connections {
        0 => crate::config::DEFAULT_MAX_CONNECTIONS,
        n => n,
    };
    let mut lim = getrlimit(Resource::Nofile);
    let soft = lim.current.unwrap_or(u64::MAX);
    let hard = lim.maximum.unwrap_or(u64::MAX);
    let mut taken = asked;
    let want = asked as u64 + RESERVE;
    if hard < want {
        if max_connections > 0 {
            anyhow::bail!(
                "[limits] max_connections = {max_connections} needs {want} open files, but the hard limit is {hard}: lower max_connections or raise LimitNOFILE"
            );
        }
        taken = usize::try_from(hard.saturating_sub(RESERVE))
            .unwrap_or(usize::MAX)
            .max(16);
        tracing::warn!(
            hard_limit = hard,
            connections = taken,
            "the open-files hard limit holds fewer than the default {asked} connections; taking {taken} (raise LimitNOFILE, or set [limits] max_connections)"
        );
    }
    let want = taken as u64 + RESERVE;
    if soft < want {
        lim.current = Some(want.min(hard));
        setrlimit(Resource::Nofile, lim).context("raising the open-files limit")?;
        tracing::info!(
            from = soft,
            to = want,
            "raised the open-files limit to fit [limits] max_connections"
        );
    }
    Ok(taken)
}

/// Have the allocator give large buffers (request bodies up to `[limits]
/// max_body_bytes`) back to the OS when they are freed. glibc raises its mmap threshold
/// each time such a buffer is freed, after which the next ones come from the heap and
/// stay resident after their requests: a burst of large bodies would keep its memory.
/// A fixed threshold keeps every buffer above 256 KiB in its own mapping.
pub(super) fn return_large_buffers() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only sets allocator parameters; called before the server
        // starts its threads' work, with documented parameters and values.
        let ok = unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, 256 << 10) };
        if ok != 1 {
            tracing::warn!("could not fix the allocator's mmap threshold; large request bodies may stay resident after they are freed");
        }
    }
}

/// Give the memory of request bodies back to the OS once a burst of them is over: every
/// 200 ms, when bodies held more than 16 MiB at some point since the last trim and hold
/// little now, ask the allocator to return its free pages (glibc's `malloc_trim`: the
/// connections' read buffers of such a burst are many small blocks, below the mmap
/// threshold that returns large ones at once).
pub(super) async fn trim_after_bodies(bodies: api::limits::BodyBudget, stop: CancellationToken) {
    const BURST: usize = 16 << 20;
    let mut peak = 0;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            _ = stop.cancelled() => return,
        }
        let now = bodies.in_use();
        peak = peak.max(now);
        if peak > BURST && now < BURST / 4 {
            peak = 0;
            #[cfg(all(target_os = "linux", target_env = "gnu"))]
            // SAFETY: malloc_trim only gives free pages of the allocator back to the OS.
            unsafe {
                libc::malloc_trim(0);
            }
        }
    }
}

/// SIGINT (Ctrl-C) or SIGTERM.
pub(super) async fn stop_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) {
        (Ok(mut int), Ok(mut term)) => {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
        }
        _ => {
            tracing::warn!("cannot listen for SIGTERM; stopping on Ctrl-C only");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// The tokens of `[auth] tokens_file`, else of `PARKADE_TOKENS`, else none; refuses to
/// serve with no tokens on an address other than loopback unless `[auth] allow_open`.
pub(super) fn load_auth(config: &Config) -> anyhow::Result<api::auth::Auth> {
    use api::auth::{Auth, TokenSource};
    let source = match (&config.auth.tokens_file, std::env::var("PARKADE_TOKENS")) {
        (Some(path), _) => TokenSource::File(path.clone()),
        (None, Ok(text)) if !text.trim().is_empty() => TokenSource::Inline(text),
        _ => TokenSource::None,
    };
    let auth = Auth::load(source, config.auth.reads_open).context("loading the tokens")?;
    for o in &config.auth.cors_origins {
        api::auth::check_origin(o).map_err(|e| anyhow::anyhow!("[auth] cors_origins: {e}"))?;
    }
    if auth.is_open() && !config.bind.ip().is_loopback() && !config.auth.allow_open {
        anyhow::bail!(
            "refusing to serve on {} with no tokens: anyone who reaches it could post events, \
             change lots and start rebuilds. Create tokens (`parkade token new --name NAME \
             --role admin`, then [auth] tokens_file), or set [auth] allow_open = true to \
             serve open on purpose",
            config.bind
        );
    }
    if auth.is_open() {
        tracing::warn!("no tokens configured: every route is open (loopback only)");
    } else {
        tracing::info!(
            tokens = auth.count(),
            reads_open = auth.reads_open,
            "access control on"
        );
    }
    Ok(auth)
}

/// Bind the HTTP address, with a hint of what to do when it cannot be had.
pub(super) fn bind(address: std::net::SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(address).map_err(|e| {
        let hint = match e.kind() {
            std::io::ErrorKind::AddrInUse => ": another program listens there; choose another address with --bind (or PARKADE_BIND), e.g. --bind 127.0.0.1:8081",
            std::io::ErrorKind::PermissionDenied => ": ports below 1024 need privileges; choose another with --bind (or PARKADE_BIND)",
            std::io::ErrorKind::AddrNotAvailable => ": no interface of this machine has that address; choose another with --bind (or PARKADE_BIND)",
            _ => "",
        };
        anyhow::anyhow!("cannot listen on {address}: {e}{hint}")
    })
}

/// The tasks that keep the server's limits tidy until the stop: the ingest rates'
/// forgotten tokens, the tokens file, stalled connections, memory after large bodies.
pub(super) fn spawn_housekeeping(state: &ApiState, auth: &api::auth::Auth, shutdown: &Shutdown) {
    let token = &shutdown.token;
    if let Some(rate) = state.ingest_rate.clone() {
        shutdown.spawn(tidy_rates(rate, token.clone()));
    }
    shutdown.spawn(auth.clone().watch(token.clone()));
    shutdown.spawn(state.connections.clone().close_stalled_until(token.clone()));
    shutdown.spawn(trim_after_bodies(state.bodies.clone(), token.clone()));
}
