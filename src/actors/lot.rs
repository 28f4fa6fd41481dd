//! The lot actor and its typed handle.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use actix::prelude::*;
use rustc_hash::FxHashMap;
use uuid::Uuid;

use crate::backoff::Backoff;
use crate::domain::{
    apply, check_event_time, decide, Command, LotId, LotState, LotView, NewEvent, Outcome,
    RecordedEvent, Rejection, Request, Timestamp,
};
use crate::log::{Appended, EventLog, Expect, LogError};

/// The reply to a batch of requests, once durable.
#[derive(Debug, Clone)]
pub struct Executed {
    pub outcomes: Vec<Outcome>,
    /// The lot after the batch.
    pub view: LotView,
}

#[derive(Debug, thiserror::Error)]
pub enum LotError {
    #[error(transparent)]
    Log(LogError),
    /// Other writers (other parkade processes on a shared log) kept appending to the lot
    /// while this request was decided again and again: nothing was appended for it.
    #[error("lot {0} is being written by other nodes at this moment; nothing was appended")]
    Busy(String),
    /// The lot's actor is gone (the service is stopping) or its mailbox is full.
    #[error("the lot actor is not taking requests: {0}")]
    NotRunning(String),
    #[error("the service holds {0} lots, the most it may ([limits] max_lots)")]
    TooManyLots(usize),
}

impl From<LogError> for LotError {
    fn from(e: LogError) -> Self {
        match e {
            LogError::Conflict { lot, .. } => LotError::Busy(lot),
            other => LotError::Log(other),
        }
    }
}

impl From<MailboxError> for LotError {
    fn from(e: MailboxError) -> Self {
        LotError::NotRunning(e.to_string())
    }
}

/// Recently seen client event ids of one lot and the offsets they got.
#[derive(Debug, Default)]
pub(crate) struct Dedupe {
    window: usize,
    seen: FxHashMap<u128, u64>,
    order: VecDeque<u128>,
}

impl Dedupe {
    pub(crate) fn new(window: usize) -> Self {
        Dedupe {
            window,
            ..Default::default()
        }
    }

    fn get(&self, id: &Uuid) -> Option<u64> {
        self.seen.get(&id.as_u128()).copied()
    }

    pub(crate) fn insert(&mut self, id: Uuid, offset: u64) {
        if self.window == 0 {
            return;
        }
        if self.seen.insert(id.as_u128(), offset).is_none() {
            self.order.push_back(id.as_u128());
            while self.order.len() > self.window {
                if let Some(old) = self.order.pop_front() {
                    self.seen.remove(&old);
                }
            }
        }
    }
}

/// The most views a lot keeps waiting for the log to make them durable; past it the
/// oldest waiting ones are dropped (a reader then sees a newer durable view sooner or
/// an older one a little longer, never one a crash could take back).
const MAX_PUBLISHED: usize = 1_024;

/// The lot as readers see it, without asking its actor: the views the actor has
/// committed, oldest first, from the newest one that is durable on. Reads never queue
/// behind the lot's writes, and never show an event the log could still lose.
#[derive(Debug, Default)]
pub(crate) struct Published(Mutex<VecDeque<LotView>>);

/// Whether a view reflects only events below `durable_end`.
fn durable(view: &LotView, durable_end: u64) -> bool {
    view.offset.is_none_or(|o| o < durable_end)
}

impl Published {
    /// Add the newest committed view; `durable_end` is the log's (`u64::MAX` when every
    /// committed view is durable).
    fn push(&self, view: LotView, durable_end: u64) {
        let mut views = self.0.lock().expect("published views lock");
        if views.back().is_some_and(|last| *last == view) {
            return;
        }
        views.push_back(view);
        Self::forget_older(&mut views, durable_end);
        if views.len() > MAX_PUBLISHED {
            views.remove(1);
        }
    }

    /// The newest view that is durable.
    fn read(&self, durable_end: u64) -> LotView {
        let mut views = self.0.lock().expect("published views lock");
        Self::forget_older(&mut views, durable_end);
        views
            .front()
            .cloned()
            .expect("a lot always has a durable view")
    }

    /// Drop the views older than the newest durable one (the first stays durable: it
    /// was when it became first).
    fn forget_older(views: &mut VecDeque<LotView>, durable_end: u64) {
        if let Some(newest) = views.iter().rposition(|v| durable(v, durable_end)) {
            views.drain(..newest);
        }
    }
}

/// Everything a lot actor holds; also what recovery folds the log into.
#[derive(Debug)]
pub(crate) struct LotCore {
    pub(crate) lot_id: LotId,
    pub(crate) state: LotState,
    pub(crate) seq: u64,
    pub(crate) last_offset: Option<u64>,
    pub(crate) updated_at: Option<Timestamp>,
    pub(crate) dedupe: Dedupe,
    /// `last_offset + 1` (0: none), for the lot's [`LotHandle`] to read without asking
    /// the actor: what the log's follower need not send it again.
    folded: Arc<AtomicU64>,
    /// What readers see (see [`Published`]).
    published: Arc<Published>,
}

impl LotCore {
    pub(crate) fn new(lot_id: LotId, window: usize) -> Self {
        LotCore {
            lot_id,
            state: LotState::default(),
            seq: 0,
            last_offset: None,
            updated_at: None,
            dedupe: Dedupe::new(window),
            folded: Arc::new(AtomicU64::new(0)),
            published: Arc::default(),
        }
    }

    /// Remember that the lot's events up to `offset` are folded.
    fn folded_to(&mut self, offset: u64) {
        self.last_offset = Some(offset);
        self.folded.store(offset + 1, Ordering::Release);
    }

    pub(crate) fn view(&self) -> LotView {
        self.view_of(&self.state, self.updated_at)
    }

    /// The lot as it would be with `state` (as it was before a batch, say).
    fn view_of(&self, state: &LotState, updated_at: Option<Timestamp>) -> LotView {
        let capacity = state.capacity();
        LotView {
            lot_id: self.lot_id.clone(),
            name: state.name().to_owned(),
            capacity,
            occupancy: state.occupancy,
            free: capacity.saturating_sub(state.occupancy),
            offset: self.last_offset,
            updated_at,
            registered: state.is_registered(),
        }
    }

    /// Fold one recorded event (recovery).
    pub(crate) fn replay(&mut self, e: &crate::domain::RecordedEvent) {
        apply(&mut self.state, &e.event.event);
        self.seq = e.event.lot_seq;
        self.folded_to(e.offset);
        self.updated_at = Some(e.event.occurred_at);
        if e.event.client_event_id {
            self.dedupe.insert(e.event.event_id, e.offset);
        }
    }

    /// Decide and apply a batch: its new events, and what becomes of each request.
    /// The state moves on with the new events; [`Self::commit`] then records where they
    /// went, or [`Self::restore`] takes the state back.
    ///
    /// `now` and `max_future_micros` are the event time rule's server clock and bound:
    /// a request breaking it is rejected here even when an edge forgot to check.
    fn decide_batch(
        &mut self,
        requests: &[Fixed],
        now: Timestamp,
        max_future_micros: i64,
    ) -> Decided {
        let saved = Saved {
            state: self.state.clone(),
            seq: self.seq,
            updated_at: self.updated_at,
        };
        let mut batch = Batch::default();
        let slots = requests
            .iter()
            .map(|r| self.admit(r, now, max_future_micros, &mut batch))
            .collect();
        Decided {
            events: batch.events,
            slots,
            saved,
        }
    }

    /// Take the state back to before a batch whose events were not appended.
    fn restore(&mut self, saved: Saved) {
        (self.state, self.seq, self.updated_at) = (saved.state, saved.seq, saved.updated_at);
    }

    /// The batch's events are in the log at `offsets`: remember them, and answer each
    /// request. Returns the outcomes and the offset up to which the log must be
    /// durable.
    fn commit(
        &mut self,
        events: &[NewEvent],
        slots: Vec<Slot>,
        offsets: &[u64],
    ) -> (Vec<Outcome>, u64) {
        debug_assert_eq!(events.len(), offsets.len());
        for (e, offset) in events.iter().zip(offsets) {
            if e.client_event_id {
                self.dedupe.insert(e.event_id, *offset);
            }
        }
        let mut wait_end = 0u64;
        if let Some(last) = offsets.last() {
            self.folded_to(*last);
            wait_end = last + 1;
        }
        let outcomes = slots
            .into_iter()
            .map(|s| match s {
                Slot::Done(o) => o,
                Slot::Earlier(offset) => {
                    wait_end = wait_end.max(offset + 1);
                    Outcome::Duplicate { offset }
                }
                Slot::New(i) => Outcome::Accepted {
                    offset: offsets[i as usize],
                },
                Slot::SameBatch(i) => Outcome::Duplicate {
                    offset: offsets[i as usize],
                },
            })
            .collect();
        (outcomes, wait_end)
    }

    /// Decide a batch and append it to a log that orders appends at once; restore the
    /// state if the append fails. Returns the outcomes and the offset up to which the log
    /// must be durable. (The actor also takes logs that acknowledge later; unit tests
    /// of the decisions use this.)
    #[cfg(test)]
    fn execute(
        &mut self,
        log: &dyn EventLog,
        requests: Vec<Request>,
        now: Timestamp,
        max_future_micros: i64,
    ) -> Result<(Vec<Outcome>, u64), LogError> {
        let requests = Fixed::all(requests);
        let d = self.decide_batch(&requests, now, max_future_micros);
        if d.events.is_empty() {
            return Ok(self.commit(&[], d.slots, &[]));
        }
        match log.append(Expect::Last(self.last_offset), &d.events) {
            Ok(Appended::Ordered(first)) => {
                Ok(self.commit(&d.events, d.slots, &consecutive(first, d.events.len())))
            }
            Ok(Appended::Acknowledging(_)) => unreachable!("unit tests use ordering logs"),
            Err(e) => {
                self.restore(d.saved);
                Err(e)
            }
        }
    }

    /// Fold events of this lot that another writer appended (what a lost conflict
    /// missed, or what the log's follower brought), skipping those already folded.
    /// Requests among `pending` whose event is among them are answered as accepted at
    /// its offset: an append that stored its events but whose acknowledgement was lost.
    pub(crate) fn catch_up(&mut self, events: &[RecordedEvent], pending: &mut [Fixed]) {
        for e in events {
            if self.last_offset.is_some_and(|last| e.offset <= last) {
                continue;
            }
            self.replay(e);
            if let Some(r) = pending.iter_mut().find(|r| r.id == e.event.event_id) {
                r.known = Some(Outcome::Accepted { offset: e.offset });
            }
        }
    }

    /// Decide one request of a batch: a duplicate, a rejection, or a new event added to
    /// `batch` and applied to the state.
    fn admit(
        &mut self,
        r: &Fixed,
        now: Timestamp,
        max_future_micros: i64,
        batch: &mut Batch,
    ) -> Slot {
        if let Some(known) = &r.known {
            return Slot::Done(known.clone());
        }
        if r.client {
            if let Some(offset) = self.dedupe.get(&r.id) {
                return Slot::Earlier(offset);
            }
            if let Some(i) = batch.ids.get(&r.id.as_u128()) {
                return Slot::SameBatch(*i);
            }
        }
        let occurred_at = r.request.occurred_at;
        if let Err(e) = check_event_time(occurred_at, now, max_future_micros) {
            return Slot::Done(Outcome::Rejected(Rejection::InvalidTime(e)));
        }
        let event = match decide(&self.state, &r.request.command) {
            Ok(event) => event,
            Err(rejection) => return Slot::Done(Outcome::Rejected(rejection)),
        };
        apply(&mut self.state, &event);
        self.seq += 1;
        self.updated_at = Some(occurred_at);
        let i = batch.events.len() as u64;
        if r.client {
            batch.ids.insert(r.id.as_u128(), i);
        }
        batch.events.push(NewEvent {
            lot_id: self.lot_id.clone(),
            lot_seq: self.seq,
            event_id: r.id,
            client_event_id: r.client,
            occurred_at,
            event,
            occupancy: self.state.occupancy,
            capacity: self.state.capacity(),
        });
        Slot::New(i)
    }
}

/// A request with its event id fixed: the client's, or one given here once, so that a
/// batch decided again after a conflict recognises its own events in the log.
#[derive(Debug, Clone)]
pub(crate) struct Fixed {
    request: Request,
    id: Uuid,
    client: bool,
    /// Already answered: its event was found in the log after a conflict.
    known: Option<Outcome>,
}

impl Fixed {
    fn all(requests: Vec<Request>) -> Vec<Fixed> {
        requests
            .into_iter()
            .map(|request| Fixed {
                id: request.event_id.unwrap_or_else(Uuid::now_v7),
                client: request.event_id.is_some(),
                request,
                known: None,
            })
            .collect()
    }
}

/// The lot's state before a batch.
#[derive(Debug)]
struct Saved {
    state: LotState,
    seq: u64,
    updated_at: Option<Timestamp>,
}

/// A decided batch, before its append.
struct Decided {
    events: Vec<NewEvent>,
    slots: Vec<Slot>,
    saved: Saved,
}

/// The new events of a batch being executed, and where each client id is among them.
#[derive(Default)]
struct Batch {
    events: Vec<NewEvent>,
    ids: FxHashMap<u128, u64>,
}

/// What becomes of one request of a batch.
enum Slot {
    Done(Outcome),
    /// A duplicate of an event already in the log at this offset.
    Earlier(u64),
    /// A new event, the `i`th of the batch.
    New(u64),
    /// A duplicate of the batch's `i`th new event.
    SameBatch(u64),
}

impl Slot {
    /// A refusal that the lot's state decided (full, empty, ...), which a newer state
    /// might not make (unlike an event time out of bounds).
    fn refused_on_state(&self) -> bool {
        matches!(self, Slot::Done(Outcome::Rejected(r)) if !matches!(r, Rejection::InvalidTime(_)))
    }
}

/// The actor wrapping a [`LotCore`].
pub(crate) struct LotActor {
    core: LotCore,
    log: Arc<dyn EventLog>,
    mailbox: usize,
    max_future_micros: i64,
    /// While an append waits for the log's acknowledgement: the requests that came
    /// since (they go out together as the next append: group commit at the lot), and
    /// events other writers appended (folded once the append is over).
    inflight: Option<Inflight>,
}

/// What a lot actor holds while an append is unacknowledged.
struct Inflight {
    queue: Vec<Waiting>,
    observed: Vec<RecordedEvent>,
}

/// Requests waiting for the next append, and where their answer goes.
struct Waiting {
    requests: Vec<Fixed>,
    reply: tokio::sync::oneshot::Sender<ExecResult>,
}

impl LotActor {
    fn new(core: LotCore, log: Arc<dyn EventLog>, mailbox: usize, max_future_micros: i64) -> Self {
        LotActor {
            core,
            log,
            mailbox,
            max_future_micros,
            inflight: None,
        }
    }

    /// Show readers the lot as it now is: called after every change of the lot that
    /// is in the log (a commit, or events of other writers folded), never while an
    /// append's decisions wait for the log.
    fn publish(&self) {
        let durable_end = if self.log.durable_when_acknowledged() {
            u64::MAX
        } else {
            self.log.durable_end()
        };
        self.core.published.push(self.core.view(), durable_end);
    }
}

impl Actor for LotActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(self.mailbox);
    }
}

/// Times a batch is decided again after losing a conflict before the request fails
/// ([`LotError::Busy`]).
const CONFLICT_ATTEMPTS: u32 = 16;

/// The wait before deciding again after a lost conflict: jittered, from up to a
/// quarter of a millisecond doubling to at most 20 ms, so two writers that keep
/// colliding drift apart.
const CONFLICT_BACKOFF: Backoff = Backoff::new(
    std::time::Duration::from_micros(250),
    std::time::Duration::from_millis(20),
)
.jittered();

/// The messages a lot actor understands.
pub(crate) enum LotMsg {
    Execute(Vec<Request>),
    /// Events of this lot from the log that another process may have appended.
    Observe(Vec<RecordedEvent>),
}

/// What an execution answers: outcomes, the offset to be durable, the lot after it.
type ExecResult = Result<(Vec<Outcome>, u64, LotView), LogError>;

#[derive(MessageResponse)]
pub(crate) enum LotReply {
    Executed(ExecResult),
    Observed,
}

impl Message for LotMsg {
    type Result = LotReply;
}

/// The answer to a message: at once, or once the lot's append in flight (or the next
/// one, which carries the requests that queued meanwhile) is acknowledged.
pub(crate) enum LotResponse {
    Now(LotReply),
    /// Answered when the lot's append in flight (or the next one) is acknowledged.
    Pending(tokio::sync::oneshot::Receiver<ExecResult>),
}

impl actix::dev::MessageResponse<LotActor, LotMsg> for LotResponse {
    fn handle(self, ctx: &mut Context<LotActor>, tx: Option<actix::dev::OneshotSender<LotReply>>) {
        match self {
            LotResponse::Now(reply) => {
                actix::dev::MessageResponse::<LotActor, LotMsg>::handle(reply, ctx, tx)
            }
            LotResponse::Pending(rx) => {
                ctx.spawn(actix::fut::wrap_future(async move {
                    let result = rx
                        .await
                        .unwrap_or_else(|_| Err(LogError::Backend("the lot actor stopped".into())));
                    if let Some(tx) = tx {
                        let _gone = tx.send(LotReply::Executed(result));
                    }
                }));
            }
        }
    }
}

/// One step of an execution: done, or waiting on the log.
enum Step {
    Done(ExecResult),
    Wait(ResponseActFuture<LotActor, ExecResult>),
}

impl Step {
    fn boxed(self) -> ResponseActFuture<LotActor, ExecResult> {
        match self {
            Step::Done(r) => Box::pin(actix::fut::ready(r)),
            Step::Wait(f) => f,
        }
    }
}

/// Offsets `first`, `first + 1`, … of `n` events appended together.
fn consecutive(first: u64, n: usize) -> Vec<u64> {
    (first..first + n as u64).collect()
}

impl LotActor {
    /// Decide `requests` and append their events; on a conflict read what the lot
    /// missed and decide again (up to [`CONFLICT_ATTEMPTS`] times).
    ///
    /// `fresh`: the lot's state was just read from the log. An append's expected
    /// position proves the state it was decided on current; a refusal appends nothing,
    /// so on a shared log this node's view is first brought up to date ([`Self::refresh`])
    /// and the refusal decided again on that.
    fn run(&mut self, requests: Vec<Fixed>, attempt: u32, fresh: bool) -> Step {
        let d = self
            .core
            .decide_batch(&requests, Timestamp::now(), self.max_future_micros);
        if d.events.is_empty() {
            if !fresh && self.log.shared() && d.slots.iter().any(Slot::refused_on_state) {
                return self.refresh(requests, attempt);
            }
            let (outcomes, end) = self.core.commit(&[], d.slots, &[]);
            return Step::Done(Ok((outcomes, end, self.core.view())));
        }
        match self
            .log
            .append(Expect::Last(self.core.last_offset), &d.events)
        {
            Ok(Appended::Ordered(first)) => {
                let offsets = consecutive(first, d.events.len());
                let (outcomes, end) = self.core.commit(&d.events, d.slots, &offsets);
                self.publish();
                Step::Done(Ok((outcomes, end, self.core.view())))
            }
            Ok(Appended::Acknowledging(ack)) => {
                let waiting = ack.into_actor(self).then(move |acked, act, _| {
                    match acked {
                        Ok(offsets) => {
                            let (outcomes, end) = act.core.commit(&d.events, d.slots, &offsets);
                            act.publish();
                            Step::Done(Ok((outcomes, end, act.core.view())))
                        }
                        Err(e) => {
                            act.core.restore(d.saved);
                            act.conflicted(e, requests, attempt)
                        }
                    }
                    .boxed()
                });
                Step::Wait(Box::pin(waiting))
            }
            Err(e) => {
                self.core.restore(d.saved);
                self.conflicted(e, requests, attempt)
            }
        }
    }

    /// After a failed append (the state restored): on a conflict, catch up with the
    /// lot's events in the log and decide again; any other error is the answer.
    fn conflicted(&mut self, e: LogError, mut requests: Vec<Fixed>, attempt: u32) -> Step {
        if !matches!(e, LogError::Conflict { .. }) || attempt + 1 >= CONFLICT_ATTEMPTS {
            return Step::Done(Err(e));
        }
        metrics::counter!("parkade_lot_conflicts_total").increment(1);
        tracing::debug!(lot_id = %self.core.lot_id, attempt, "append conflict; catching up");
        let read = self.log.read_lot(&self.core.lot_id, self.core.last_offset);
        let wait = CONFLICT_BACKOFF.wait_for(attempt);
        let read = async move {
            actix::clock::sleep(wait).await;
            read.await
        };
        let waiting = read.into_actor(self).then(move |missed, act, _| {
            match missed {
                Ok(events) => {
                    act.core.catch_up(&events, &mut requests);
                    act.publish();
                    act.run(requests, attempt + 1, true)
                }
                Err(e) => Step::Done(Err(e)),
            }
            .boxed()
        });
        Step::Wait(Box::pin(waiting))
    }

    /// Some of `requests` were refused on this node's view of the lot, and nothing
    /// was to be appended: read what other writers appended to the lot since (the log
    /// asked where the lot ends, as of now), and decide again on that. A refusal then
    /// stands on state read after the request came, as an acceptance stands on its
    /// append's check; the log unreachable, the request fails as an append would.
    fn refresh(&mut self, mut requests: Vec<Fixed>, attempt: u32) -> Step {
        let read = self.log.read_lot(&self.core.lot_id, self.core.last_offset);
        let waiting = read.into_actor(self).then(move |missed, act, _| {
            match missed {
                Ok(events) => {
                    if !events.is_empty() {
                        metrics::counter!("parkade_lot_refusals_reconsidered_total").increment(1);
                        act.core.catch_up(&events, &mut requests);
                        act.publish();
                    }
                    act.run(requests, attempt, true)
                }
                Err(e) => Step::Done(Err(e)),
            }
            .boxed()
        });
        Step::Wait(Box::pin(waiting))
    }
}

impl LotActor {
    /// Run `waiting` (the requests of messages that queued behind an append) as one
    /// append, and answer each.
    fn start(&mut self, waiting: Vec<Waiting>, ctx: &mut Context<Self>) {
        let counts: Vec<usize> = waiting.iter().map(|w| w.requests.len()).collect();
        let mut requests = Vec::with_capacity(counts.iter().sum());
        let mut replies = Vec::with_capacity(waiting.len());
        for w in waiting {
            requests.extend(w.requests);
            replies.push(w.reply);
        }
        let step = self.run(requests, 0, false);
        self.finish(step, counts, replies, ctx);
    }

    /// Answer `replies` (of `counts` requests each) with `step`: at once, or once its
    /// append is acknowledged; then run the requests that queued meanwhile.
    fn finish(
        &mut self,
        step: Step,
        counts: Vec<usize>,
        replies: Vec<tokio::sync::oneshot::Sender<ExecResult>>,
        ctx: &mut Context<Self>,
    ) {
        match step {
            Step::Done(result) => answer(result, &counts, replies),
            Step::Wait(f) => {
                self.inflight = Some(Inflight {
                    queue: Vec::new(),
                    observed: Vec::new(),
                });
                ctx.spawn(f.map(move |result, act: &mut Self, ctx| {
                    answer(result, &counts, replies);
                    if let Some(done) = act.inflight.take() {
                        act.core.catch_up(&done.observed, &mut []);
                        act.publish();
                        if !done.queue.is_empty() {
                            act.start(done.queue, ctx);
                        }
                    }
                }));
            }
        }
    }
}

/// Hand each message's part of an execution's result to its sender.
fn answer(
    result: ExecResult,
    counts: &[usize],
    replies: Vec<tokio::sync::oneshot::Sender<ExecResult>>,
) {
    match result {
        Ok((outcomes, end, view)) => {
            let mut outcomes = outcomes.into_iter();
            for (n, reply) in counts.iter().zip(replies) {
                let part: Vec<Outcome> = outcomes.by_ref().take(*n).collect();
                let _gone = reply.send(Ok((part, end, view.clone())));
            }
        }
        Err(e) => {
            for reply in replies {
                let _gone = reply.send(Err(e.shared()));
            }
        }
    }
}

impl Handler<LotMsg> for LotActor {
    type Result = LotResponse;

    fn handle(&mut self, msg: LotMsg, ctx: &mut Self::Context) -> LotResponse {
        match msg {
            LotMsg::Execute(requests) => {
                let _span =
                    tracing::trace_span!("lot_execute", lot_id = %self.core.lot_id).entered();
                let requests = Fixed::all(requests);
                if let Some(inflight) = &mut self.inflight {
                    let (tx, rx) = tokio::sync::oneshot::channel();
                    inflight.queue.push(Waiting {
                        requests,
                        reply: tx,
                    });
                    return LotResponse::Pending(rx);
                }
                let count = requests.len();
                match self.run(requests, 0, false) {
                    // The embedded log: answered at once, nothing more to arrange.
                    Step::Done(result) => LotResponse::Now(LotReply::Executed(result)),
                    waiting => {
                        let (tx, rx) = tokio::sync::oneshot::channel();
                        self.finish(waiting, vec![count], vec![tx], ctx);
                        LotResponse::Pending(rx)
                    }
                }
            }
            LotMsg::Observe(events) => {
                match &mut self.inflight {
                    Some(inflight) => inflight.observed.extend(events),
                    None => {
                        self.core.catch_up(&events, &mut []);
                        self.publish();
                    }
                }
                LotResponse::Now(LotReply::Observed)
            }
        }
    }
}

/// A typed handle to one lot. Cheap to clone.
#[derive(Clone)]
pub struct LotHandle {
    id: LotId,
    addr: Addr<LotActor>,
    log: Arc<dyn EventLog>,
    /// The actor's count of folded offsets (see [`LotCore`]).
    folded: Arc<AtomicU64>,
    /// What the actor shows readers.
    published: Arc<Published>,
}

impl LotHandle {
    /// Start the lot's actor on `arbiter` with `core` (its state folded so far).
    pub(crate) fn start(
        core: LotCore,
        arbiter: &ArbiterHandle,
        log: Arc<dyn EventLog>,
        mailbox: usize,
        max_future_micros: i64,
    ) -> Self {
        let (id, folded, actor_log) = (core.lot_id.clone(), core.folded.clone(), log.clone());
        // What recovery folded is durable: the log's follower reads only durable events.
        let published = core.published.clone();
        published.push(core.view(), u64::MAX);
        let addr = LotActor::start_in_arbiter(arbiter, move |_| {
            LotActor::new(core, actor_log, mailbox, max_future_micros)
        });
        LotHandle {
            id,
            addr,
            log,
            folded,
            published,
        }
    }

    pub fn id(&self) -> &LotId {
        &self.id
    }

    /// Run a batch of requests in order; resolves once every accepted (and every
    /// duplicate's original) event is durable, and so is every event the returned view
    /// reflects: a reply that only rejects still waits for the lot's earlier events
    /// (appended by other requests, maybe not yet synced), so no reply ever shows an
    /// offset or an occupancy that a crash could take back.
    pub async fn execute(&self, requests: Vec<Request>) -> Result<Executed, LotError> {
        match self.addr.send(LotMsg::Execute(requests)).await? {
            LotReply::Executed(Ok((outcomes, end, view))) => {
                let end = end.max(view.offset.map_or(0, |o| o + 1));
                if end > 0 && !self.log.durable_when_acknowledged() {
                    self.log.wait_durable(end).await?;
                }
                Ok(Executed { outcomes, view })
            }
            LotReply::Executed(Err(e)) => Err(e.into()),
            LotReply::Observed => {
                unreachable!("execute is answered with Executed")
            }
        }
    }

    /// Fold events of this lot another process appended (see [`Lots::follow`](super::Lots::follow)).
    /// Events the actor has already folded (its own appends, which come back through
    /// the log's follower) are not sent: when none is left the actor is not asked.
    pub(crate) async fn observe(&self, mut events: Vec<RecordedEvent>) -> Result<(), LotError> {
        let folded = self.folded.load(Ordering::Acquire);
        events.retain(|e| e.offset >= folded);
        if !events.is_empty() {
            self.addr.send(LotMsg::Observe(events)).await?;
        }
        Ok(())
    }

    /// Run one request.
    pub async fn execute_one(&self, request: Request) -> Result<(Outcome, LotView), LotError> {
        let mut done = self.execute(vec![request]).await?;
        let outcome = done.outcomes.pop().expect("one outcome per request");
        Ok((outcome, done.view))
    }

    /// A vehicle arrived now (or at `occurred_at`).
    pub async fn arrive(
        &self,
        occurred_at: Timestamp,
        event_id: Option<Uuid>,
    ) -> Result<(Outcome, LotView), LotError> {
        self.execute_one(Request {
            command: Command::Arrive,
            event_id,
            occurred_at,
        })
        .await
    }

    /// A vehicle departed.
    pub async fn depart(
        &self,
        occurred_at: Timestamp,
        event_id: Option<Uuid>,
    ) -> Result<(Outcome, LotView), LotError> {
        self.execute_one(Request {
            command: Command::Depart,
            event_id,
            occurred_at,
        })
        .await
    }

    /// An absolute recount of the lot's occupancy.
    pub async fn count(
        &self,
        count: u32,
        occurred_at: Timestamp,
        event_id: Option<Uuid>,
    ) -> Result<(Outcome, LotView), LotError> {
        self.execute_one(Request {
            command: Command::Count { count },
            event_id,
            occurred_at,
        })
        .await
    }

    /// A new capacity.
    pub async fn change_capacity(
        &self,
        capacity: crate::domain::Capacity,
        occurred_at: Timestamp,
        event_id: Option<Uuid>,
    ) -> Result<(Outcome, LotView), LotError> {
        self.execute_one(Request {
            command: Command::ChangeCapacity { capacity },
            event_id,
            occurred_at,
        })
        .await
    }

    /// The lot as of its newest durable event, without asking the actor: a read never
    /// waits for the lot's writes, and never shows an event a crash could take back.
    /// A reply the lot's actor gave (an acknowledged event) is durable by then, so a
    /// read after it reflects it (unless more than 1,024 of the lot's
    /// commits waited for one sync of the log: then it may show an earlier durable view
    /// until the newest is durable).
    pub fn view(&self) -> LotView {
        let durable_end = if self.log.durable_when_acknowledged() {
            u64::MAX
        } else {
            self.log.durable_end()
        };
        self.published.read(durable_end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Capacity, Command, LotName, Rejection};
    use crate::log::MemoryLog;

    const MAX_FUTURE: i64 = 900_000_000;

    fn core() -> LotCore {
        LotCore::new(LotId::parse("north").unwrap(), 100)
    }

    fn request(command: Command, id: Option<u128>) -> Request {
        Request {
            command,
            event_id: id.map(Uuid::from_u128),
            occurred_at: Timestamp::now(),
        }
    }

    fn register(capacity: i64) -> Request {
        request(
            Command::Register {
                name: LotName::parse("North").unwrap(),
                capacity: Capacity::new(capacity).unwrap(),
            },
            None,
        )
    }

    fn run(core: &mut LotCore, log: &MemoryLog, requests: Vec<Request>) -> (Vec<Outcome>, u64) {
        core.execute(log, requests, Timestamp::now(), MAX_FUTURE)
            .expect("the memory log takes it")
    }

    #[test]
    fn a_batch_is_decided_in_order_and_only_accepted_events_are_appended() {
        let log = MemoryLog::new();
        let mut c = core();
        let arrive = || request(Command::Arrive, None);
        let (outcomes, end) = run(
            &mut c,
            &log,
            vec![register(2), arrive(), arrive(), arrive()],
        );
        assert_eq!(
            outcomes,
            vec![
                Outcome::Accepted { offset: 0 },
                Outcome::Accepted { offset: 1 },
                Outcome::Accepted { offset: 2 },
                Outcome::Rejected(Rejection::LotFull {
                    capacity: 2,
                    occupancy: 2
                }),
            ]
        );
        assert_eq!(end, 3, "the reply waits for the last appended event");
        assert_eq!(log.events().len(), 3);
        let v = c.view();
        assert_eq!((v.occupancy, v.free, v.offset), (2, 0, Some(2)));
        // Every appended event carries the lot's state after it.
        let seqs: Vec<_> = log
            .events()
            .iter()
            .map(|e| (e.event.lot_seq, e.event.occupancy))
            .collect();
        assert_eq!(seqs, vec![(1, 0), (2, 1), (3, 2)]);
    }

    #[test]
    fn a_client_event_id_is_taken_once_in_a_batch_and_across_batches() {
        let log = MemoryLog::new();
        let mut c = core();
        run(&mut c, &log, vec![register(10)]);
        let (outcomes, _) = run(
            &mut c,
            &log,
            vec![
                request(Command::Arrive, Some(7)),
                request(Command::Arrive, Some(7)),
            ],
        );
        assert_eq!(
            outcomes,
            vec![
                Outcome::Accepted { offset: 1 },
                Outcome::Duplicate { offset: 1 }
            ]
        );
        // A later retry appends nothing, and still waits for the first one's durability.
        let (outcomes, end) = run(&mut c, &log, vec![request(Command::Arrive, Some(7))]);
        assert_eq!(outcomes, vec![Outcome::Duplicate { offset: 1 }]);
        assert_eq!(end, 2);
        assert_eq!((log.events().len(), c.view().occupancy), (2, 1));
    }

    #[test]
    fn an_event_time_out_of_bounds_is_refused_here_too() {
        let log = MemoryLog::new();
        let mut c = core();
        run(&mut c, &log, vec![register(10)]);
        let mut late = request(Command::Arrive, None);
        late.occurred_at = Timestamp::from_micros(Timestamp::now().micros() + 2 * MAX_FUTURE);
        let (outcomes, _) = run(&mut c, &log, vec![late]);
        assert!(
            matches!(outcomes[0], Outcome::Rejected(Rejection::InvalidTime(_))),
            "{outcomes:?}"
        );
        assert_eq!(log.events().len(), 1);
    }

    #[test]
    fn a_failed_append_leaves_the_lot_as_it_was() {
        let log = MemoryLog::new();
        let mut c = core();
        run(
            &mut c,
            &log,
            vec![register(10), request(Command::Arrive, None)],
        );
        let before = c.view();
        log.fail("disk full");
        let r = c.execute(
            log.as_ref(),
            vec![
                request(Command::Arrive, Some(9)),
                request(Command::Arrive, None),
            ],
            Timestamp::now(),
            MAX_FUTURE,
        );
        assert!(matches!(r, Err(LogError::Failed(_))), "{r:?}");
        assert_eq!(c.view(), before);
        assert_eq!(c.seq, 2);
        assert!(
            c.dedupe.get(&Uuid::from_u128(9)).is_none(),
            "the id is not remembered"
        );
    }

    #[test]
    fn replaying_the_log_rebuilds_the_same_lot() {
        let log = MemoryLog::new();
        let mut c = core();
        let mut reqs = vec![register(5)];
        reqs.extend((0..4).map(|i| request(Command::Arrive, Some(i))));
        reqs.push(request(Command::Depart, None));
        reqs.push(request(Command::Count { count: 2 }, None));
        run(&mut c, &log, reqs);
        let mut rebuilt = core();
        for e in log.events() {
            rebuilt.replay(&e);
        }
        assert_eq!(rebuilt.view(), c.view());
        assert_eq!(rebuilt.seq, c.seq);
        assert_eq!(rebuilt.dedupe.get(&Uuid::from_u128(3)), Some(4));
    }
}
