//! `GET /v1/ws`: live occupancy over a websocket.
//!
//! - `?lots=a,b` limits the stream to those lots (default: all);
//! - without `from_offset`, the first message is `{"type":"snapshot", "offset", "next_offset",
//!   "lots": [...], "history"}` (`offset`: the last log offset it reflects, null for an
//!   empty log; `history`: whether history and forecasts are served, i.e. PostgreSQL),
//!   then one `{"type":"change", ...}` per event;
//! - with `?from_offset=N`, the messages are every change after offset N, read from the
//!   log as far back as N is, then live, then `{"type":"live", "next_offset"}` once caught up
//!   (no gap, no duplicate);
//! - the server pings every 10 s and closes a client silent for 30 s;
//! - a client that falls more than `[live] buffer_messages` changes behind, or does not
//!   take a message for 5 s, is closed with code 4008 and the last offset it was sent,
//!   to resume from. Ingestion never waits for a websocket.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::{web, HttpRequest, HttpResponse};
use actix_ws::{CloseCode, CloseReason, Message};
use futures_util::StreamExt;
use serde_json::json;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};

use super::{ApiError, ApiState};
use crate::domain::LotId;
use crate::live::{change_of, Change};

/// Close code for a subscriber that cannot keep up.
pub const SLOW_CONSUMER: u16 = 4008;
const PING_EVERY: Duration = Duration::from_secs(10);
const SILENT_LIMIT: Duration = Duration::from_secs(30);
const SEND_LIMIT: Duration = Duration::from_secs(5);

#[derive(serde::Deserialize)]
pub(super) struct WsQuery {
    lots: Option<String>,
    from_offset: Option<u64>,
}

/// Why a session ended early.
enum End {
    /// The client went away or closed.
    Gone,
    Slow(String),
}

struct Out {
    session: actix_ws::Session,
    /// The last change offset sent.
    last: Option<u64>,
}

impl Out {
    async fn send(&mut self, text: impl Into<bytestring::ByteString>) -> Result<(), End> {
        match tokio::time::timeout(SEND_LIMIT, self.session.text(text)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(End::Gone),
            Err(_) => Err(End::Slow(format!(
                "slow consumer: a message waited over {} s",
                SEND_LIMIT.as_secs()
            ))),
        }
    }

    async fn burst(&mut self, changes: &[Arc<Change>]) -> Result<(), End> {
        let session = &mut self.session;
        let last = &mut self.last;
        let send_all = async {
            for c in changes {
                let text =
                    bytestring::ByteString::try_from(c.json.clone()).map_err(|_| End::Gone)?;
                session.text(text).await.map_err(|_| End::Gone)?;
                *last = Some(c.offset);
            }
            Ok(())
        };
        match tokio::time::timeout(SEND_LIMIT, send_all).await {
            Ok(r) => r,
            Err(_) => Err(End::Slow(format!(
                "slow consumer: a message waited over {} s",
                SEND_LIMIT.as_secs()
            ))),
        }
    }

    async fn change(&mut self, c: &Change) -> Result<(), End> {
        // The JSON was produced by serde_json, so it is UTF-8.
        let text = bytestring::ByteString::try_from(c.json.clone()).map_err(|_| End::Gone)?;
        self.send(text).await?;
        self.last = Some(c.offset);
        Ok(())
    }
}

pub(super) async fn ws(
    req: HttpRequest,
    body: web::Payload,
    q: web::Query<WsQuery>,
    st: web::Data<ApiState>,
) -> Result<HttpResponse, ApiError> {
    let filter: Option<HashSet<LotId>> = match q.lots.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(list) => Some(
            list.split(',')
                .map(|raw| {
                    LotId::parse(raw)
                        .map_err(|e| ApiError::bad(Some("lots".into()), format!("{raw:?}: {e}")))
                })
                .collect::<Result<_, _>>()?,
        ),
    };
    let end = st.log.durable_end();
    if let Some(n) = q.from_offset.filter(|n| *n >= end) {
        return Err(ApiError::bad(
            Some("from_offset".into()),
            format!(
                "from_offset {n} is not an offset of the log (it holds offsets 0 to {})",
                end.saturating_sub(1)
            ),
        ));
    }
    let (response, session, stream) =
        actix_ws::handle(&req, body).map_err(|e| ApiError::bad(None, e.to_string()))?;
    let st = st.into_inner();
    let from = q.from_offset;
    actix_web::rt::spawn(async move {
        let mut out = Out {
            session,
            last: None,
        };
        let result = run(&st, &mut out, stream, filter, from).await;
        let reason = match result {
            End::Gone => None,
            End::Slow(why) => {
                let resume = out
                    .last
                    .map_or(String::new(), |o| format!("; resume with from_offset={o}"));
                let mut description = format!("{why}{resume}");
                description.truncate(120);
                Some(CloseReason {
                    code: CloseCode::Other(SLOW_CONSUMER),
                    description: Some(description),
                })
            }
        };
        // A client that stopped reading may never take the close frame either.
        let _ = tokio::time::timeout(Duration::from_secs(1), out.session.close(reason)).await;
    });
    Ok(response)
}

async fn run(
    st: &Arc<ApiState>,
    out: &mut Out,
    mut stream: actix_ws::MessageStream,
    filter: Option<HashSet<LotId>>,
    from_offset: Option<u64>,
) -> End {
    let keep = |id: &LotId| filter.as_ref().is_none_or(|f| f.contains(id));
    let mut rx = match from_offset {
        None => {
            let (snap, rx) = st.live.subscribe(keep);
            let msg = json!({"type": "snapshot", "offset": snap.next_offset.checked_sub(1),
                             "next_offset": snap.next_offset, "lots": snap.lots,
                             "history": st.db.is_some()});
            if let Err(e) = out.send(msg.to_string()).await {
                return e;
            }
            rx
        }
        Some(n) => match catch_up(st, out, n + 1, &keep).await {
            Ok(rx) => rx,
            Err(e) => return e,
        },
    };
    let mut ping = tokio::time::interval(PING_EVERY);
    let mut heard = Instant::now();
    loop {
        tokio::select! {
            msg = rx.recv() => match msg {
                Ok(c) => {
                    // Take what else is waiting and send it as one burst, under one
                    // time limit.
                    let mut burst = vec![c];
                    while burst.len() < 512 {
                        match rx.try_recv() {
                            Ok(c) => burst.push(c),
                            Err(TryRecvError::Empty) => break,
                            Err(TryRecvError::Lagged(n)) => {
                                return End::Slow(format!("slow consumer: {n} changes behind"));
                            }
                            Err(TryRecvError::Closed) => return End::Gone,
                        }
                    }
                    burst.retain(|c| keep(&c.lot_id));
                    if let Err(e) = out.burst(&burst).await {
                        return e;
                    }
                }
                Err(RecvError::Lagged(n)) => {
                    return End::Slow(format!("slow consumer: {n} changes behind"));
                }
                Err(RecvError::Closed) => return End::Gone,
            },
            m = stream.next() => match m {
                Some(Ok(Message::Ping(b))) => {
                    heard = Instant::now();
                    if out.session.pong(&b).await.is_err() {
                        return End::Gone;
                    }
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return End::Gone,
                Some(Ok(_)) => heard = Instant::now(),
            },
            _ = ping.tick() => {
                if heard.elapsed() > SILENT_LIMIT {
                    return End::Gone;
                }
                if out.session.ping(b"").await.is_err() {
                    return End::Gone;
                }
            }
        }
    }
}

/// Send every change from offset `from` up to the live position, then subscribe.
async fn catch_up(
    st: &Arc<ApiState>,
    out: &mut Out,
    mut from: u64,
    keep: &impl Fn(&LotId) -> bool,
) -> Result<tokio::sync::broadcast::Receiver<Arc<Change>>, End> {
    // Far back: read the log until close to the live position, without holding a receiver.
    let mut target = st.live.position();
    let mut rx = None;
    loop {
        while from < target {
            let log = st.log.clone();
            let upto = target;
            let batch = web::block(move || {
                let mut cursor = log.cursor(from);
                cursor.next_batch(4_096).map(|b| {
                    b.into_iter()
                        .filter(|e| e.offset < upto)
                        .collect::<Vec<_>>()
                })
            })
            .await;
            let batch = match batch {
                Ok(Ok(b)) if !b.is_empty() => b,
                _ => return Err(End::Gone),
            };
            from = batch[batch.len() - 1].offset + 1;
            for e in batch.iter().filter(|e| keep(&e.event.lot_id)) {
                out.change(&change_of(e)).await?;
            }
        }
        if let Some(rx) = rx {
            let msg = json!({"type": "live", "next_offset": from});
            out.send(msg.to_string()).await?;
            return Ok(rx);
        }
        // Close to live: take a receiver, then read the few events before its start.
        let (snap, r) = st.live.subscribe(|_| false);
        target = snap.next_offset;
        rx = Some(r);
    }
}
