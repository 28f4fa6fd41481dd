//! `GET /v1/ws`: live occupancy over a websocket.
//!
//! - `?lots=a,b` limits the stream to those lots (default: all);
//! - without `from_offset`, the first message is `{"type":"snapshot", "offset", "next_offset",
//!   "lots": [...], "history"}` (`offset`: the last log offset it reflects, null for an
//!   empty log; `history` and `forecast`: whether those are served),
//!   then one `{"type":"change", ...}` per event;
//! - with `?from_offset=N`, the messages are every change after offset N, read from the
//!   log as far back as N is, then live, then `{"type":"live", "next_offset"}` once caught up
//!   (no gap, no duplicate);
//! - the server pings every 10 s and closes a client silent for 30 s;
//! - a client that falls more than `[live] buffer_messages` changes behind, or does not
//!   take a message for 5 s, is closed with code 4008 and the last offset it was sent,
//!   to resume from. Ingestion never waits for a websocket;
//! - when the service stops, subscribers get a close with code 1001.
//!
//! The connection's response body is its [`Outbox`](crate::live::Outbox): the live
//! fan-out puts each change's frame, encoded once, in every subscriber's outbox, and this
//! module's session task only joins the subscriber, answers pings and watches the
//! client.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_codec::Decoder;
use actix_http::ws::{Codec, Frame};
use actix_web::body::{BodyStream, MessageBody};
use actix_web::{web, HttpRequest, HttpResponse};
use bytes::BytesMut;
use futures_util::StreamExt;

use super::{wire, ApiError, ApiState};
use crate::domain::{LotId, RecordedEvent};
use crate::live::{change_of, frame, wanted, Message, Outbox, SEND_LIMIT, SLOW_CONSUMER};

const PING_EVERY: Duration = Duration::from_secs(10);
const SILENT_LIMIT: Duration = Duration::from_secs(30);
/// Normal closure.
const NORMAL: u16 = 1000;
/// The client broke the protocol.
const PROTOCOL_ERROR: u16 = 1002;
/// The reason given with [`PROTOCOL_ERROR`].
const BROKE_PROTOCOL: &str =
    "the client broke the websocket protocol (a frame that is malformed, unmasked or over 64 KiB)";
/// The server failed (the log could not be read).
const INTERNAL_ERROR: u16 = 1011;
/// A catch-up reads the log in batches of this many events; the last one, at most this
/// long, is read under the fan-out's lock.
const CATCH_UP_BATCH: usize = 4_096;

#[derive(serde::Deserialize)]
pub(super) struct WsQuery {
    lots: Option<String>,
    from_offset: Option<u64>,
}

/// Refuse a handshake from a web page of another origin (see [`Origins`]): without
/// this, any site's page could read the live feed through its visitors' browsers.
///
/// [`Origins`]: super::auth::Origins
fn check_origin(req: &HttpRequest) -> Result<(), ApiError> {
    let Some(origins) = req.app_data::<web::Data<super::auth::Origins>>() else {
        return Ok(());
    };
    let header = |name| req.headers().get(name).map(|v| v.to_str().unwrap_or(""));
    let origin = header(actix_web::http::header::ORIGIN);
    if origins.allows(origin, header(actix_web::http::header::HOST)) {
        return Ok(());
    }
    Err(ApiError::Forbidden(format!(
        "a page of origin {:?} may not open the live feed: only this server's own pages and those of [auth] cors_origins may",
        origin.unwrap_or_default()
    )))
}

#[utoipa::path(
    get, path = "/v1/ws", tag = "live",
    description = "A websocket of occupancy changes: a snapshot then changes, or every change after `from_offset` (see docs/api.md).",
    params(
        ("lots" = Option<String>, Query, description = "Comma-separated lot ids; default all"),
        ("from_offset" = Option<u64>, Query, description = "Resume after this log offset"),
    ),
    responses(
        (status = 101, description = "Switching to the websocket protocol"),
        (status = 400, description = "Not a websocket handshake, a bad lot id or offset", body = wire::ErrorBody),
        (status = 403, description = "A page of an origin that may not read (not this server's, not in `[auth] cors_origins`)", body = wire::ErrorBody),
        (status = 503, description = "Too many subscribers, or too many catch-ups at once", body = wire::ErrorBody),
    )
)]
pub(super) async fn ws(
    req: HttpRequest,
    payload: web::Payload,
    q: web::Query<WsQuery>,
    st: web::Data<ApiState>,
) -> Result<HttpResponse, ApiError> {
    check_origin(&req)?;
    let keep = lots_kept(q.lots.as_deref())?;
    check_reach(
        q.from_offset,
        st.log.durable_end(),
        st.live_config.max_replay_events,
    )?;
    // Held for as long as the connection lives.
    let slot = st.ws_slots.clone().try_acquire_owned().map_err(|_| {
        ApiError::limited(
            actix_web::http::StatusCode::SERVICE_UNAVAILABLE,
            "too_many_subscribers",
            format!(
                "{} websocket subscribers are connected, the most this server takes ([live] max_subscribers); try again later",
                st.live_config.max_subscribers
            ),
        )
    })?;
    // A catch-up holds its place until it has joined the live stream.
    let catching_up = match q.from_offset {
        None => None,
        Some(_) => Some(st.catch_up_slots.clone().try_acquire_owned().map_err(|_| {
            ApiError::Limited {
                status: actix_web::http::StatusCode::SERVICE_UNAVAILABLE,
                code: "too_many_catch_ups",
                message: format!(
                    "{} websocket catch-ups are reading the log, the most this server runs at once ([live] max_catch_ups); try again in a moment, or connect without from_offset for a snapshot",
                    st.live_config.max_catch_ups
                ),
                retry_after_secs: Some(1),
            }
        })?),
    };
    let mut handshake =
        actix_http::ws::handshake(req.head()).map_err(|e| ApiError::bad(None, e.to_string()))?;
    let (out, body) = crate::live::outbox(st.live_config.outbox_bytes, &st.outboxes);
    let response = handshake
        .message_body(BodyStream::new(body).boxed())
        .map_err(|e| ApiError::bad(None, e.to_string()))?;
    let st = st.into_inner();
    let from = q.from_offset;
    actix_web::rt::spawn(async move {
        let _slot = slot;
        let joined = match from {
            None => {
                subscribe_with_snapshot(&st, keep, &out);
                true
            }
            Some(n) => {
                let joined = catch_up(&st, &out, n + 1, keep).await;
                drop(catching_up);
                joined
            }
        };
        if joined {
            watch_client(&out, payload).await;
        }
    });
    Ok(response.into())
}

/// The lots `?lots=` names (all when absent or empty).
fn lots_kept(list: Option<&str>) -> Result<Option<HashSet<LotId>>, ApiError> {
    Ok(match list.map(str::trim) {
        None | Some("") => None,
        Some(list) => Some(
            list.split(',')
                .map(|raw| {
                    LotId::parse(raw)
                        .map_err(|e| ApiError::bad(Some("lots".into()), format!("{raw:?}: {e}")))
                })
                .collect::<Result<_, _>>()?,
        ),
    })
}

/// `?from_offset=n` names an offset the log holds, within `[live] max_replay_events`
/// of its end `end`.
fn check_reach(from: Option<u64>, end: u64, reach: u64) -> Result<(), ApiError> {
    if let Some(n) = from.filter(|n| *n >= end) {
        return Err(ApiError::bad(
            Some("from_offset".into()),
            format!(
                "from_offset {n} is not an offset of the log (it holds offsets 0 to {})",
                end.saturating_sub(1)
            ),
        ));
    }
    if let Some(n) = from.filter(|n| end - n - 1 > reach) {
        return Err(ApiError::bad(
            Some("from_offset".into()),
            format!(
                "from_offset {n} is {} events back; at most {reach} may be replayed ([live] max_replay_events): connect without from_offset for a snapshot",
                end - n - 1
            ),
        ));
    }
    Ok(())
}

/// Subscribe `out` to the live stream of `keep`'s lots, opening with a snapshot of
/// them and of what this server offers beside (history, forecasts, the lots' zone).
fn subscribe_with_snapshot(st: &ApiState, keep: Option<HashSet<LotId>>, out: &Outbox) {
    let history = st.db.is_some() || st.features.is_some();
    let forecast = st.forecasts.is_some();
    let timezone = st.forecast_tz.name();
    let utc_offsets = offsets_now(st.forecast_tz);
    let stale_after_secs = st.stale_after_secs;
    st.live.subscribe(keep, out.clone(), |snap| {
        Message::Snapshot {
            offset: snap.next_offset.checked_sub(1),
            next_offset: snap.next_offset,
            lots: with_staleness(&snap.lots, stale_after_secs).into(),
            history,
            forecast,
            timezone: timezone.into(),
            utc_offsets: (&utc_offsets[..]).into(),
            stale_after_secs,
        }
        .frame()
    });
}

/// Answer pings, notice a close or a silent client, until the outbox ends.
async fn watch_client(out: &Outbox, mut payload: web::Payload) {
    let mut codec = Codec::new();
    let mut buf = BytesMut::new();
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + PING_EVERY, PING_EVERY);
    let mut heard = Instant::now();
    loop {
        tokio::select! {
            _ = out.ended() => return,
            chunk = payload.next() => {
                let Some(Ok(chunk)) = chunk else {
                    return out.end(None);
                };
                heard = Instant::now();
                buf.extend_from_slice(&chunk);
                loop {
                    match codec.decode(&mut buf) {
                        Ok(Some(Frame::Ping(p))) => {
                            out.put(frame::pong(&p), 0);
                        }
                        Ok(Some(Frame::Close(reason))) => {
                            let code = reason.map_or(NORMAL, |r| u16::from(r.code));
                            return out.end(Some(frame::close(code, "")));
                        }
                        Ok(Some(_)) => {}
                        Ok(None) => break,
                        Err(e) => {
                            // The codec's own words stay in the log; the client gets ours.
                            tracing::debug!(error = %e, "websocket client broke the protocol");
                            return out.end(Some(frame::close(PROTOCOL_ERROR, BROKE_PROTOCOL)));
                        }
                    }
                }
            }
            _ = ping.tick() => {
                if heard.elapsed() > SILENT_LIMIT {
                    let why = format!("nothing heard from the client for {} s", SILENT_LIMIT.as_secs());
                    return out.end(Some(frame::close(NORMAL, &why)));
                }
                out.put(frame::ping(b""), 0);
            }
        }
    }
}

/// Put every change from offset `from` on, then join the fan-out. False if the
/// subscriber was closed on the way.
async fn catch_up(
    st: &Arc<ApiState>,
    out: &Outbox,
    mut from: u64,
    keep: Option<HashSet<LotId>>,
) -> bool {
    let mut last = None;
    // Far back: read the log at the pace the client takes it, outside the lock.
    while st.live.position().saturating_sub(from) > CATCH_UP_BATCH as u64 {
        let log = st.log.clone();
        let batch = web::block(move || log.cursor(from).next_batch(CATCH_UP_BATCH)).await;
        let batch = match batch {
            Ok(Ok(b)) if !b.is_empty() => b,
            _ => {
                out.end(Some(frame::close(INTERNAL_ERROR, "cannot read the log")));
                return false;
            }
        };
        from = batch[batch.len() - 1].offset + 1;
        last = put_changes(out, &batch, &keep, u64::MAX).or(last);
        if !out.drained_to(st.live.limit() / 2, SEND_LIMIT).await {
            let resume = last.map_or(String::new(), |o| format!("; resume with from_offset={o}"));
            let why = format!(
                "slow consumer: nothing taken for {} s{resume}",
                SEND_LIMIT.as_secs()
            );
            out.end(Some(frame::close(SLOW_CONSUMER, &why)));
            return false;
        }
    }
    // Close to live: the short tail and the join, under the fan-out's lock.
    let (st2, out2) = (st.clone(), out.clone());
    let joined = web::block(move || {
        let log = st2.log.clone();
        st2.live.join(keep.clone(), out2.clone(), from, |next| {
            let mut cursor = log.cursor(from);
            let mut at = from;
            while at < next {
                let batch = cursor
                    .next_batch(CATCH_UP_BATCH)
                    .map_err(|e| e.to_string())?;
                if batch.is_empty() {
                    return Err(format!(
                        "the log ends at {at}, before the live position {next}"
                    ));
                }
                at = batch[batch.len() - 1].offset + 1;
                last = put_changes(&out2, &batch, &keep, next).or(last);
            }
            let live = Message::Live {
                next_offset: next.max(from),
            };
            out2.put(live.frame(), 0);
            Ok(last)
        })
    })
    .await;
    match joined {
        Ok(Ok(())) => true,
        failed => {
            if let Ok(Err(e)) = failed {
                tracing::error!(error = %e, "websocket catch-up failed");
            }
            out.end(Some(frame::close(INTERNAL_ERROR, "cannot read the log")));
            false
        }
    }
}

/// Put the changes of `batch` below offset `below` that the subscriber wants; the
/// offset of the last one put.
fn put_changes(
    out: &Outbox,
    batch: &[RecordedEvent],
    keep: &Option<HashSet<LotId>>,
    below: u64,
) -> Option<u64> {
    let changes: Vec<_> = batch
        .iter()
        .filter(|e| e.offset < below && wanted(keep, &e.event.lot_id))
        .map(change_of)
        .collect();
    let (frames, n) = crate::live::concat(changes.iter());
    if n == 0 || !out.put(frames, n) {
        return None;
    }
    changes.last().map(|c| c.offset)
}

/// The snapshot's lots, each marked `stale` as of now (see `[lots] stale_after_secs`).
fn with_staleness(lots: &[serde_json::Value], stale_after_secs: u64) -> Vec<serde_json::Value> {
    let now = crate::domain::Timestamp::now();
    lots.iter()
        .map(|lot| {
            let last = serde_json::from_value(lot["updated_at"].clone()).ok();
            let mut lot = lot.clone();
            lot["stale"] = crate::domain::is_stale(last, now, stale_after_secs).into();
            lot
        })
        .collect()
}

/// The lots' zone's offsets for a snapshot (the last five weeks, the next two days),
/// worked out once an hour, not once per subscriber.
fn offsets_now(tz: chrono_tz::Tz) -> std::sync::Arc<[crate::live::UtcOffset]> {
    type Cached = Option<(i64, chrono_tz::Tz, std::sync::Arc<[crate::live::UtcOffset]>)>;
    static CACHE: std::sync::Mutex<Cached> = std::sync::Mutex::new(None);
    let now = chrono::Utc::now();
    let hour = now.timestamp() / 3600;
    let mut cache = CACHE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((h, z, offsets)) = cache.as_ref() {
        if *h == hour && *z == tz {
            return offsets.clone();
        }
    }
    let offsets: std::sync::Arc<[crate::live::UtcOffset]> = crate::live::utc_offsets(
        tz,
        now - chrono::Duration::days(35),
        now + chrono::Duration::days(2),
    )
    .into();
    *cache = Some((hour, tz, offsets.clone()));
    offsets
}
