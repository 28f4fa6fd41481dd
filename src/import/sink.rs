//! Where imported rows go: the lot actors of a data directory, or a running server.

use std::collections::HashMap;

use rustc_hash::FxHashSet;
use serde_json::Value;
use uuid::Uuid;

use crate::actors::Lots;
use crate::api::wire;
use crate::domain::{Command, LotId, Rejection};
use crate::domain::{Outcome, Request};
use crate::log::{EventLog, LogError};

/// What became of one request, as the import counts it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RowOutcome {
    Accepted,
    Duplicate,
    Rejected { code: String, detail: String },
}

impl From<Outcome> for RowOutcome {
    fn from(o: Outcome) -> Self {
        match o {
            Outcome::Accepted { .. } => RowOutcome::Accepted,
            Outcome::Duplicate { .. } => RowOutcome::Duplicate,
            Outcome::Rejected(r) => RowOutcome::Rejected {
                code: r.code().to_owned(),
                detail: r.to_string(),
            },
        }
    }
}

/// A destination for imported requests.
#[allow(async_fn_in_trait)]
pub trait Sink {
    /// The capacity of a registered lot; `None` when the lot is unknown.
    async fn capacity(&mut self, lot: &LotId) -> Result<Option<u32>, String>;
    /// True when lot `lot`'s event with this id is in the log already (an id is known
    /// only together with its lot: the same id on another lot is another event).
    fn already_in_log(&self, lot: &LotId, id: &Uuid) -> bool;
    /// True when the log may hold rows of this file: a first pass over the file then
    /// looks its ids up (see [`Sink::look_up`]).
    fn sees_log(&self) -> bool;
    /// Learn which of these events (lot and id) the whole log holds, so that
    /// [`Sink::already_in_log`] answers for them (not only for the server's
    /// idempotency window).
    async fn look_up(&mut self, events: Vec<(LotId, Uuid)>) -> Result<(), String>;
    /// Run one ordered batch per lot (lots concurrently); one result per batch, in order,
    /// each holding one outcome per request.
    async fn execute_all(
        &mut self,
        batches: Vec<(LotId, Vec<Request>)>,
    ) -> Vec<Result<Vec<RowOutcome>, String>>;
}

/// The lot actors of a data directory opened by this process.
pub struct LocalSink {
    lots: Lots,
    in_log: FxHashSet<(LotId, u128)>,
}

impl LocalSink {
    /// Remember every client-supplied event id of the log, so that a re-import is
    /// recognised however far back the first import was.
    pub fn new(lots: Lots, log: &dyn EventLog) -> Result<LocalSink, LogError> {
        let mut in_log = FxHashSet::default();
        crate::log::scan(log, 0, log.durable_end(), crate::log::SCAN_BATCH, |batch| {
            in_log.extend(
                batch
                    .iter()
                    .filter(|e| e.event.client_event_id)
                    .map(|e| (e.event.lot_id.clone(), e.event.event_id.as_u128())),
            );
            std::ops::ControlFlow::Continue(())
        })?;
        Ok(LocalSink { lots, in_log })
    }
}

async fn run_lot(
    lots: &Lots,
    lot: LotId,
    requests: Vec<Request>,
) -> Result<Vec<RowOutcome>, String> {
    let mut out = Vec::with_capacity(requests.len());
    let mut rest = requests.into_iter().peekable();
    // A new lot is registered through the registry, which starts its actor.
    while let Some(r) = rest.peek() {
        let Command::Register { name, capacity } = &r.command else {
            break;
        };
        if lots.get(&lot).is_some() {
            break;
        }
        let (name, capacity, event_id, at) = (name.clone(), *capacity, r.event_id, r.occurred_at);
        rest.next();
        let (o, _) = lots
            .register(lot.clone(), name, capacity, event_id, at)
            .await
            .map_err(|e| e.to_string())?;
        out.push(o.into());
    }
    let remaining: Vec<Request> = rest.collect();
    if remaining.is_empty() {
        return Ok(out);
    }
    match lots.get(&lot) {
        None => out.extend(
            remaining
                .iter()
                .map(|_| Outcome::Rejected(Rejection::NotRegistered).into()),
        ),
        Some(h) => out.extend(
            h.execute(remaining)
                .await
                .map_err(|e| e.to_string())?
                .outcomes
                .into_iter()
                .map(RowOutcome::from),
        ),
    }
    Ok(out)
}

impl Sink for LocalSink {
    async fn capacity(&mut self, lot: &LotId) -> Result<Option<u32>, String> {
        match self.lots.get(lot) {
            None => Ok(None),
            Some(h) => Ok(Some(h.view().capacity)),
        }
    }

    fn already_in_log(&self, lot: &LotId, id: &Uuid) -> bool {
        self.in_log.contains(&(lot.clone(), id.as_u128()))
    }

    fn sees_log(&self) -> bool {
        // Nothing imported before: no earlier rows to look for.
        !self.in_log.is_empty()
    }

    async fn look_up(&mut self, _events: Vec<(LotId, Uuid)>) -> Result<(), String> {
        // Every client id of the log was read when the sink was made.
        Ok(())
    }

    async fn execute_all(
        &mut self,
        batches: Vec<(LotId, Vec<Request>)>,
    ) -> Vec<Result<Vec<RowOutcome>, String>> {
        let lots = &self.lots;
        futures_util::future::join_all(
            batches
                .into_iter()
                .map(|(lot, reqs)| run_lot(lots, lot, reqs)),
        )
        .await
    }
}

/// A running parkade server, through its HTTP API.
pub struct HttpSink {
    client: awc::Client,
    base: String,
    /// Events (lot and id) the server said its log holds (`POST /v1/admin/known-events`).
    known: FxHashSet<(LotId, u128)>,
}

/// Events per NDJSON request (below the server's default limit of 10,000).
const HTTP_BATCH: usize = 5_000;

impl HttpSink {
    /// A sink sending to the server at `base`, with `token` (an admin token: the import
    /// registers lots and asks which events the log holds) when the server wants one.
    pub fn new(base: &str, token: Option<&str>) -> HttpSink {
        let mut client = awc::Client::builder().timeout(std::time::Duration::from_secs(120));
        if let Some(t) = token {
            client = client.bearer_auth(t);
        }
        HttpSink {
            client: client.finish(),
            base: base.trim_end_matches('/').to_owned(),
            known: FxHashSet::default(),
        }
    }

    async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<(&str, String)>,
    ) -> Result<(u16, bytes::Bytes), String> {
        let url = format!("{}{}", self.base, path);
        let req = match method {
            "GET" => self.client.get(&url),
            "PATCH" => self.client.patch(&url),
            _ => self.client.post(&url),
        };
        let sent = match body {
            Some((ct, body)) => {
                req.insert_header(("content-type", ct))
                    .send_body(body)
                    .await
            }
            None => req.send().await,
        };
        let mut resp = sent.map_err(|e| format!("{method} {url}: {e}"))?;
        let bytes = resp
            .body()
            .limit(64 << 20)
            .await
            .map_err(|e| format!("{method} {url}: {e}"))?;
        Ok((resp.status().as_u16(), bytes))
    }

    /// `POST` or `PATCH` a JSON body.
    async fn send_json(
        &self,
        method: &str,
        path: &str,
        body: &impl serde::Serialize,
    ) -> Result<(u16, bytes::Bytes), String> {
        let text = serde_json::to_string(body).map_err(|e| e.to_string())?;
        self.call(method, path, Some(("application/json", text)))
            .await
    }

    async fn run_lot(&self, lot: LotId, requests: Vec<Request>) -> Result<Vec<RowOutcome>, String> {
        let mut out = Vec::with_capacity(requests.len());
        let mut events: Vec<String> = Vec::new();
        // Event time of the first event in `events`: a request spans at most the
        // default `max_request_span_secs` (a server with a smaller limit answers 413,
        // and the batch is sent in halves).
        let mut batch_from = i64::MAX;
        let span = crate::domain::DEFAULT_MAX_REQUEST_SPAN_SECS * 1_000_000;
        for r in requests {
            let stamp = wire::Stamp {
                event_id: r.event_id.map(|i| i.to_string()),
                timestamp: Some(Value::String(
                    r.occurred_at
                        .to_datetime()
                        .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
                )),
            };
            let (event_type, count) = match &r.command {
                Command::Arrive => ("ARRIVAL", None),
                Command::Depart => ("DEPARTURE", None),
                Command::Count { count } => ("COUNT", Some(*count)),
                Command::Register { name, capacity } => {
                    out.extend(self.send_events(std::mem::take(&mut events)).await?);
                    let body = wire::RegisterIn {
                        lot_id: lot.to_string(),
                        name: name.as_str().to_owned(),
                        capacity: capacity.get(),
                        stamp,
                    };
                    out.push(single(self.send_json("POST", "/v1/lots", &body).await?)?);
                    continue;
                }
                Command::ChangeCapacity { capacity } => {
                    out.extend(self.send_events(std::mem::take(&mut events)).await?);
                    let body = wire::CapacityIn {
                        capacity: capacity.get(),
                        stamp,
                    };
                    let path = format!("/v1/lots/{}", lot.as_str());
                    out.push(single(self.send_json("PATCH", &path, &body).await?)?);
                    continue;
                }
            };
            let event = wire::EventIn {
                lot_id: lot.to_string(),
                event_type: event_type.to_owned(),
                stamp,
                count,
            };
            let t = r.occurred_at.micros();
            if !events.is_empty() && (t - batch_from).abs() > span {
                out.extend(self.send_events(std::mem::take(&mut events)).await?);
            }
            if events.is_empty() {
                batch_from = t;
            }
            events.push(serde_json::to_string(&event).map_err(|e| e.to_string())?);
            if events.len() >= HTTP_BATCH {
                out.extend(self.send_events(std::mem::take(&mut events)).await?);
            }
        }
        out.extend(self.send_events(events).await?);
        Ok(out)
    }

    async fn send_events(&self, events: Vec<String>) -> Result<Vec<RowOutcome>, String> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let n = events.len();
        let (status, reply) = self
            .call(
                "POST",
                "/v1/events",
                Some(("application/x-ndjson", events.join("\n"))),
            )
            .await?;
        if status == 429 {
            // A rate-limited (ingest) token: wait as told, then send the same batch.
            let secs = read::<wire::ErrorBody>(status, &reply)
                .ok()
                .and_then(|e| e.retry_after_secs)
                .unwrap_or(1)
                .clamp(1, 60);
            tokio::time::sleep(std::time::Duration::from_secs(secs)).await;
            return Box::pin(self.send_events(events)).await;
        }
        if status == 413 && n > 1 {
            // The server's limits are smaller than our batch: send it in halves.
            let mut first = events;
            let second = first.split_off(n / 2);
            let mut out = Box::pin(self.send_events(first)).await?;
            out.extend(Box::pin(self.send_events(second)).await?);
            return Ok(out);
        }
        if status != 200 {
            return Err(unexpected(status, &reply));
        }
        let reply: wire::BatchReply = read(status, &reply)?;
        if reply.results.len() != n {
            return Err(format!(
                "sent {n} events, the server answered for {}",
                reply.results.len()
            ));
        }
        Ok(reply
            .results
            .into_iter()
            .map(|r| match r {
                wire::BatchItem::Accepted { .. } => RowOutcome::Accepted,
                wire::BatchItem::Duplicate { .. } => RowOutcome::Duplicate,
                wire::BatchItem::Rejected { code, message, .. }
                | wire::BatchItem::Error { code, message } => RowOutcome::Rejected {
                    code,
                    detail: message,
                },
            })
            .collect())
    }
}

/// A reply's body as `T`, or why it is not one.
fn read<T: serde::de::DeserializeOwned>(status: u16, body: &[u8]) -> Result<T, String> {
    serde_json::from_slice(body).map_err(|e| {
        format!(
            "the server's {status} reply is not what parkade sends ({e}): {}",
            String::from_utf8_lossy(body)
        )
    })
}

fn unexpected(status: u16, body: &[u8]) -> String {
    format!(
        "the server answered {status}: {}",
        String::from_utf8_lossy(body)
    )
}

/// The outcome of a one-command request (`POST /v1/lots`, `PATCH /v1/lots/{id}`).
fn single((status, reply): (u16, bytes::Bytes)) -> Result<RowOutcome, String> {
    match status {
        200 | 201 => match read::<wire::Ack>(status, &reply)?.status {
            wire::AckStatus::Accepted => Ok(RowOutcome::Accepted),
            wire::AckStatus::Duplicate | wire::AckStatus::Unchanged => Ok(RowOutcome::Duplicate),
        },
        400 | 404 | 409 => {
            let e: wire::ErrorBody = read(status, &reply)?;
            Ok(RowOutcome::Rejected {
                code: e.error,
                detail: e.message,
            })
        }
        _ => Err(unexpected(status, &reply)),
    }
}

impl Sink for HttpSink {
    async fn capacity(&mut self, lot: &LotId) -> Result<Option<u32>, String> {
        let path = format!("/v1/lots/{}", lot.as_str());
        let (status, body) = self.call("GET", &path, None).await?;
        match status {
            200 => Ok(Some(read::<wire::Lot>(status, &body)?.capacity)),
            404 => Ok(None),
            _ => Err(format!("GET {path}: {}", unexpected(status, &body))),
        }
    }

    fn already_in_log(&self, lot: &LotId, id: &Uuid) -> bool {
        self.known.contains(&(lot.clone(), id.as_u128()))
    }

    fn sees_log(&self) -> bool {
        // The server can be asked about its whole log.
        true
    }

    async fn look_up(&mut self, ids: Vec<(LotId, Uuid)>) -> Result<(), String> {
        // 25,000 events (lot and id) are about 2.5 MB, under the server's default body
        // limit (4 MiB); a server with a smaller limit answers 413 and is asked in
        // smaller pieces.
        let mut size = 25_000;
        let mut rest = &ids[..];
        while !rest.is_empty() {
            let chunk = &rest[..size.min(rest.len())];
            let body = wire::KnownEventsIn {
                events: chunk
                    .iter()
                    .map(|(lot, id)| wire::EventKey {
                        lot_id: lot.to_string(),
                        event_id: id.to_string(),
                    })
                    .collect(),
            };
            let (status, reply) = self
                .send_json("POST", "/v1/admin/known-events", &body)
                .await?;
            if status == 413 && size > 1 {
                size /= 2;
                continue;
            }
            rest = &rest[chunk.len()..];
            if status != 200 {
                return Err(format!(
                    "POST /v1/admin/known-events: {}",
                    unexpected(status, &reply)
                ));
            }
            let known: wire::Known = read(status, &reply)?;
            for k in known.known {
                let bad =
                    || format!("POST /v1/admin/known-events: {k:?} is not an event asked for");
                let id = Uuid::parse_str(&k.event_id).map_err(|_| bad())?;
                let lot = LotId::parse(&k.lot_id).map_err(|_| bad())?;
                self.known.insert((lot, id.as_u128()));
            }
        }
        Ok(())
    }

    async fn execute_all(
        &mut self,
        batches: Vec<(LotId, Vec<Request>)>,
    ) -> Vec<Result<Vec<RowOutcome>, String>> {
        let this = &*self;
        let mut results: HashMap<usize, Result<Vec<RowOutcome>, String>> = HashMap::new();
        // A few lots at a time keeps the server busy without flooding it.
        let indexed: Vec<(usize, (LotId, Vec<Request>))> =
            batches.into_iter().enumerate().collect();
        for chunk in indexed.chunks(8) {
            let done = futures_util::future::join_all(
                chunk
                    .iter()
                    .cloned()
                    .map(|(i, (lot, reqs))| async move { (i, this.run_lot(lot, reqs).await) }),
            )
            .await;
            results.extend(done);
        }
        let mut keys: Vec<usize> = results.keys().copied().collect();
        keys.sort_unstable();
        keys.into_iter()
            .map(|k| results.remove(&k).expect("present"))
            .collect()
    }
}
