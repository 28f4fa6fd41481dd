//! The archive projection: every event of the log as Parquet, in a Hive-style
//! partitioned lake that DuckDB, Spark, Athena and pyarrow read as it is.
//!
//! # Layout
//!
//! ```text
//! {root}/_current                                   name of the live generation, e.g. gen-20261127T120000123Z
//! {root}/current -> gen-…                           (local folder only) symlink to it
//! {root}/{gen}/events/date=YYYY-MM-DD/{first:020}-{last:020}.parquet
//! {root}/{gen}/_progress/{first:020}-{last:020}      written after all files of that offset range
//! ```
//!
//! A flush covers a contiguous offset range `[first, last]` of the log and writes one
//! file per event date (UTC) in it, then the `_progress` marker. A file's name is its
//! range, so a retry of the same range replaces the same objects. On start the
//! projection resumes after the highest range with a marker and deletes files of
//! ranges without one (a flush a crash cut short), so every event is in the lake
//! exactly once. `parkade replay --projection archive` writes a whole new generation
//! and moves `_current` to it only when it is complete.
//!
//! Files roll after `roll_events` events or `roll_secs` seconds, whichever comes first,
//! and a flush covers at most `max_dates` dates (so at most that many files), however
//! the events of its range are spread in time.
//!
//! # Schema (for Athena/Glue: partition column `date string`)
//!
//! | column | Parquet / Arrow type | Athena type | notes |
//! |---|---|---|---|
//! | `offset` | INT64 | bigint | global log offset |
//! | `event_id` | UTF8 | string | UUID |
//! | `lot_id` | UTF8 | string | normalised lot id |
//! | `lot_seq` | INT64 | bigint | per-lot version |
//! | `event_type` | UTF8 | string | `LotRegistered`, `LotCapacityChanged`, `VehicleArrived`, `VehicleDeparted`, `OccupancyCounted` |
//! | `schema_version` | INT32 | int | event schema version |
//! | `occurred_at` | TIMESTAMP(MICROS, UTC) | timestamp | event time |
//! | `recorded_at` | TIMESTAMP(MICROS, UTC) | timestamp | log time |
//! | `occupancy` | INT32 | int | lot occupancy after the event |
//! | `capacity` | INT32 | int | lot capacity after the event |
//! | `count` | INT32, nullable | int | the count of `OccupancyCounted` |
//! | `name` | UTF8, nullable | string | the name of `LotRegistered` |
//!
//! Rows are sorted by `(lot_id, occurred_at, offset)` within a file; snappy
//! compression; statistics per row group and page.

pub mod parquet;
mod s3;
mod store;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

use super::lease::{write_under, LakeLease, LeaseError, LEASE_EVERY};
use super::supervisor;
use super::{ProjectionName, ProjectionState, RebuildStats, StatusBoard};
use crate::domain::RecordedEvent;
use crate::log::{EventLog, LogError, Subscription};

pub use s3::{S3Config, S3Store, MULTIPART_THRESHOLD};
pub use store::{LocalStore, Store, StoreError};

/// The projection's name on the status board and in `parkade replay`.
pub const NAME: ProjectionName = ProjectionName::Archive;
const CURRENT: &str = "_current";

/// Settings of the archive.
#[derive(Debug, Clone)]
pub struct ArchiveOptions {
    /// A file is written after this many events...
    pub roll_events: usize,
    /// ...or once the oldest unwritten event has waited this long.
    pub roll_secs: u64,
    /// Rows per Parquet row group.
    pub row_group_rows: usize,
    /// Most dates (files) one flush covers.
    pub max_dates: usize,
}

impl Default for ArchiveOptions {
    fn default() -> Self {
        ArchiveOptions {
            roll_events: 1_000_000,
            roll_secs: 300,
            row_group_rows: 131_072,
            max_dates: 366,
        }
    }
}

/// Cuts a stream of events into flushes of at most `max_events` events and `max_dates`
/// event dates, each a contiguous offset range.
struct Chunker {
    buf: Vec<RecordedEvent>,
    dates: std::collections::HashSet<i64>,
    max_events: usize,
    max_dates: usize,
}

impl Chunker {
    fn new(opts: &ArchiveOptions) -> Chunker {
        Chunker {
            buf: Vec::new(),
            dates: Default::default(),
            max_events: opts.roll_events.max(1),
            max_dates: opts.max_dates.max(1),
        }
    }

    /// Take `events` in; the flushes they completed, in order.
    fn push_all(&mut self, events: Vec<RecordedEvent>) -> Vec<Vec<RecordedEvent>> {
        let mut full = Vec::new();
        for e in events {
            let date = e.event.occurred_at.micros().div_euclid(86_400_000_000);
            if !self.dates.contains(&date) && self.dates.len() >= self.max_dates {
                full.push(self.take());
            }
            self.dates.insert(date);
            self.buf.push(e);
            if self.buf.len() >= self.max_events {
                full.push(self.take());
            }
        }
        full
    }

    /// Room left before the next flush is full, in events.
    fn room(&self) -> usize {
        self.max_events - self.buf.len()
    }

    fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// What is buffered, as one (not full) flush.
    fn take(&mut self) -> Vec<RecordedEvent> {
        self.dates.clear();
        std::mem::take(&mut self.buf)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot encode Parquet: {0}")]
    Parquet(#[from] ::parquet::errors::ParquetError),
    #[error(transparent)]
    Log(#[from] LogError),
    #[error("the archive is inconsistent: {0}")]
    Inconsistent(String),
    #[error(transparent)]
    Lease(#[from] LeaseError),
}

/// A range encoded as Parquet: one `(date, file)` per event date.
struct Encoded {
    range: String,
    files: Vec<(String, Vec<u8>)>,
}

/// The archive in a store.
#[derive(Clone)]
pub struct Archive {
    store: Store,
    opts: ArchiveOptions,
    /// On a bucket several processes share: the lease every write is made under.
    lease: Option<Arc<tokio::sync::Mutex<LakeLease>>>,
}

fn range_name(first: u64, last: u64) -> String {
    format!("{first:020}-{last:020}")
}

fn parse_range(name: &str) -> Option<(u64, u64)> {
    let stem = name.rsplit('/').next()?.trim_end_matches(".parquet");
    let (a, b) = stem.split_once('-')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

fn new_generation() -> String {
    format!("gen-{}", chrono::Utc::now().format("%Y%m%dT%H%M%S%3fZ"))
}

/// Settings of the Parquet archive (`[archive]` of the configuration).
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ArchiveConfig {
    /// Run the archive projection. Default true.
    pub enabled: bool,
    /// Local folder of the lake. Default `{data_dir}/archive`.
    pub dir: Option<std::path::PathBuf>,
    /// Events per file before it is written. Default 1,000,000.
    pub roll_events: usize,
    /// Longest wait before buffered events are written, in seconds. Default 300.
    pub roll_secs: u64,
    /// Rows per Parquet row group. Default 131,072.
    pub row_group_rows: usize,
    /// Most event dates (so files) one flush covers; events spread over more dates are
    /// written in several flushes. Default 366.
    pub max_dates_per_flush: usize,
    /// Write the lake to S3 (or an S3-compatible store) instead of the local folder.
    pub s3: Option<S3Config>,
}

impl Default for ArchiveConfig {
    fn default() -> Self {
        let o = ArchiveOptions::default();
        ArchiveConfig {
            enabled: true,
            dir: None,
            roll_events: o.roll_events,
            roll_secs: o.roll_secs,
            row_group_rows: o.row_group_rows,
            max_dates_per_flush: o.max_dates,
            s3: None,
        }
    }
}

impl Archive {
    /// The archive `[archive]` describes: S3 when `[archive.s3]` is set (its client
    /// built here, at start-up), else the local folder (`{data_dir}/archive` unless
    /// `dir` says otherwise).
    pub async fn from_config(a: &ArchiveConfig, data_dir: &std::path::Path) -> Archive {
        let store = match &a.s3 {
            Some(s3) => Store::S3(S3Store::connect(s3).await),
            None => Store::local(a.dir.clone().unwrap_or_else(|| data_dir.join("archive"))),
        };
        Archive::new(
            store,
            ArchiveOptions {
                roll_events: a.roll_events,
                roll_secs: a.roll_secs,
                row_group_rows: a.row_group_rows,
                max_dates: a.max_dates_per_flush,
            },
        )
    }

    pub fn new(store: Store, opts: ArchiveOptions) -> Archive {
        Archive {
            store,
            opts,
            lease: None,
        }
    }

    /// The same archive, written only under `lease` (a bucket several processes share).
    pub fn leased(self, lease: LakeLease) -> Archive {
        Archive {
            lease: Some(Arc::new(tokio::sync::Mutex::new(lease))),
            ..self
        }
    }

    /// Put an object (under the lease, when there is one).
    async fn put(&self, key: &str, body: Vec<u8>) -> Result<(), ArchiveError> {
        let mut lease = self.lock_lease().await;
        let put = async { Ok(self.store.put(key, body).await?) };
        write_under(lease.as_deref_mut(), put).await
    }

    /// Delete an object (under the lease, when there is one).
    async fn delete(&self, key: &str) -> Result<(), ArchiveError> {
        let mut lease = self.lock_lease().await;
        let delete = async { Ok(self.store.delete(key).await?) };
        write_under(lease.as_deref_mut(), delete).await
    }

    async fn lock_lease(&self) -> Option<tokio::sync::MutexGuard<'_, LakeLease>> {
        match &self.lease {
            Some(lease) => Some(lease.lock().await),
            None => None,
        }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The live generation, created on first use.
    pub async fn current_generation(&self) -> Result<String, ArchiveError> {
        if let Some(bytes) = self.store.get(CURRENT).await? {
            let gen = String::from_utf8_lossy(&bytes).trim().to_owned();
            if !gen.starts_with("gen-") || gen.contains('/') {
                return Err(ArchiveError::Inconsistent(format!(
                    "{CURRENT} names {gen:?}, not a generation"
                )));
            }
            return Ok(gen);
        }
        let gen = new_generation();
        self.point_current(&gen).await?;
        Ok(gen)
    }

    async fn point_current(&self, gen: &str) -> Result<(), ArchiveError> {
        self.put(CURRENT, format!("{gen}\n").into_bytes()).await?;
        self.store.link_current(gen)?;
        Ok(())
    }

    /// One past the last offset the current generation holds (`None`: no generation
    /// yet), changing nothing (unlike [`Self::resume`], it removes no unfinished
    /// flush's files, so a process that does not hold the lake may ask).
    pub async fn archived_end(&self) -> Result<Option<u64>, ArchiveError> {
        let Some(bytes) = self.store.get(CURRENT).await? else {
            return Ok(None);
        };
        let gen = String::from_utf8_lossy(&bytes).trim().to_owned();
        let marks = self.store.list(&format!("{gen}/_progress/")).await?;
        Ok(Some(
            marks
                .iter()
                .filter_map(|k| parse_range(k))
                .map(|(_, last)| last + 1)
                .max()
                .unwrap_or(0),
        ))
    }

    /// The next offset to archive in `gen`; removes files of unfinished flushes.
    pub async fn resume(&self, gen: &str) -> Result<u64, ArchiveError> {
        let marks = self.store.list(&format!("{gen}/_progress/")).await?;
        let next = marks
            .iter()
            .filter_map(|k| parse_range(k))
            .map(|(_, last)| last + 1)
            .max()
            .unwrap_or(0);
        for key in self.store.list(&format!("{gen}/events/")).await? {
            match parse_range(&key) {
                Some((first, _)) if first >= next => {
                    tracing::warn!(key = %key, "removing a file of an unfinished flush; it will be written again");
                    self.delete(&key).await?;
                }
                Some(_) => {}
                None => {
                    tracing::warn!(key = %key, "ignoring an object that is not an archive file")
                }
            }
        }
        Ok(next)
    }

    /// Write `events` (a contiguous offset range) as one file per date, then its marker.
    /// Returns the number of files written.
    pub async fn flush(
        &self,
        gen: &str,
        events: Arc<Vec<RecordedEvent>>,
    ) -> Result<usize, ArchiveError> {
        let encoded = self.encode(events).await?;
        self.write(gen, encoded).await
    }

    /// Encode a contiguous offset range as one Parquet file per date, on a blocking
    /// thread. `None` for an empty range.
    async fn encode(
        &self,
        events: Arc<Vec<RecordedEvent>>,
    ) -> Result<Option<Encoded>, ArchiveError> {
        let row_group = self.opts.row_group_rows;
        tokio::task::spawn_blocking(move || -> Result<Option<Encoded>, ArchiveError> {
            let (Some(first), Some(last)) = (events.first(), events.last()) else {
                return Ok(None);
            };
            let range = range_name(first.offset, last.offset);
            // Group by UTC day number; format a date once per group, not per event.
            let mut by_day: BTreeMap<i64, Vec<&RecordedEvent>> = BTreeMap::new();
            for e in events.iter() {
                let day = e.event.occurred_at.micros().div_euclid(86_400_000_000);
                by_day.entry(day).or_default().push(e);
            }
            let mut files = Vec::with_capacity(by_day.len());
            for (_, mut rows) in by_day {
                let date = rows[0]
                    .event
                    .occurred_at
                    .to_datetime()
                    .format("%Y-%m-%d")
                    .to_string();
                files.push((date, parquet::encode(&mut rows, row_group)?));
            }
            Ok(Some(Encoded { range, files }))
        })
        .await
        .expect("the encoder does not panic")
    }

    /// Store an encoded range's files, then its progress marker.
    async fn write(&self, gen: &str, encoded: Option<Encoded>) -> Result<usize, ArchiveError> {
        let Some(Encoded { range, files }) = encoded else {
            return Ok(0);
        };
        let mut keys = Vec::with_capacity(files.len());
        for (date, bytes) in files {
            let key = format!("{gen}/events/date={date}/{range}.parquet");
            self.put(&key, bytes).await?;
            keys.push(key);
        }
        let n = keys.len();
        let mut manifest = keys.join("\n");
        manifest.push('\n');
        self.put(&format!("{gen}/_progress/{range}"), manifest.into_bytes())
            .await?;
        Ok(n)
    }

    /// Archive everything the log holds beyond what the live generation has; returns
    /// the next offset. Used by commands that write the log without a server (import).
    pub async fn catch_up(&self, log: Arc<dyn EventLog>) -> Result<u64, ArchiveError> {
        let gen = self.current_generation().await?;
        let next = self.resume(&gen).await?;
        let end = log.durable_end();
        let mut chunker = Chunker::new(&self.opts);
        let mut cursor = log.cursor(next);
        while cursor.position() < end {
            let b = cursor.next_batch(chunker.room().min(65_536))?;
            if b.is_empty() {
                break;
            }
            for full in chunker.push_all(b.into_iter().filter(|e| e.offset < end).collect()) {
                self.flush(&gen, Arc::new(full)).await?;
            }
        }
        if !chunker.is_empty() {
            self.flush(&gen, Arc::new(chunker.take())).await?;
        }
        Ok(cursor.position().min(end))
    }

    /// Write the whole durable log into a new generation and make it the live one.
    pub async fn rebuild(
        &self,
        log: Arc<dyn EventLog>,
        progress: impl Fn(u64, u64) + Send + 'static,
    ) -> Result<RebuildStats, ArchiveError> {
        let started = Instant::now();
        let gen = new_generation();
        let end = log.durable_end();
        let mut chunker = Chunker::new(&self.opts);
        // Read on a blocking thread while the previous chunk is encoded and written.
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<Vec<RecordedEvent>, LogError>>(1);
        let reader = tokio::task::spawn_blocking(move || {
            let mut cursor = log.cursor(0);
            while cursor.position() < end {
                let b = match cursor.next_batch(chunker.room().min(65_536)) {
                    Ok(b) if b.is_empty() => break,
                    Ok(b) => b,
                    Err(e) => {
                        let _ = tx.blocking_send(Err(e));
                        return;
                    }
                };
                for full in chunker.push_all(b.into_iter().filter(|e| e.offset < end).collect()) {
                    if tx.blocking_send(Ok(full)).is_err() {
                        return;
                    }
                }
            }
            if !chunker.is_empty() {
                let _ = tx.blocking_send(Ok(chunker.take()));
            }
        });
        // Encode two ranges at a time (one per core) but store them, and their
        // progress markers, strictly in offset order.
        let mut files = 0;
        let mut done = 0u64;
        let mut in_flight = std::collections::VecDeque::new();
        while let Some(batch) = rx.recv().await {
            let batch = batch?;
            done += batch.len() as u64;
            let me = self.clone();
            in_flight.push_back(tokio::spawn(
                async move { me.encode(Arc::new(batch)).await },
            ));
            if in_flight.len() >= 2 {
                let encoded = in_flight
                    .pop_front()
                    .expect("two in flight")
                    .await
                    .expect("the encoder does not panic")?;
                files += self.write(&gen, encoded).await?;
                progress(done, end);
            }
        }
        while let Some(task) = in_flight.pop_front() {
            files += self
                .write(&gen, task.await.expect("the encoder does not panic")?)
                .await?;
        }
        progress(done, end);
        reader.await.expect("the reader does not panic");
        if done != end {
            return Err(ArchiveError::Inconsistent(format!(
                "read {done} events of {end}"
            )));
        }
        self.point_current(&gen).await?;
        Ok(RebuildStats {
            events: end,
            written: files as u64,
            unit: "files".into(),
            too_late: 0,
            seconds: started.elapsed().as_secs_f64(),
            generation: Some(gen),
        })
    }
}

/// Keeps the archive caught up with the log until shut down.
#[derive(Clone)]
pub struct ArchiveRunner {
    pub archive: Archive,
    pub log: Arc<dyn EventLog>,
    pub board: StatusBoard,
    pub max_backoff: Duration,
}

impl ArchiveRunner {
    pub async fn run(self, shutdown: CancellationToken) {
        let mut backoff = supervisor::backoff(self.max_backoff);
        while !shutdown.is_cancelled() {
            if let Some(lease) = &self.archive.lease {
                if !lease.lock().await.take(&self.board, &shutdown).await {
                    break;
                }
            }
            match self.follow(&shutdown).await {
                Ok(()) => break,
                Err(ArchiveError::Lease(e @ LeaseError::Lost(_))) => {
                    tracing::warn!(projection = %NAME, error = %e, "standing by again");
                }
                Err(e) => {
                    let board = &self.board;
                    let why = e.to_string();
                    if supervisor::wait_after_failure(&mut backoff, board, NAME, why, &shutdown)
                        .await
                    {
                        break;
                    }
                }
            }
        }
        if let Some(lease) = &self.archive.lease {
            lease.lock().await.release().await;
        }
        self.board.set(NAME, |s| s.state = ProjectionState::Stopped);
    }

    /// Follow the log in the generation that is current now.
    async fn refollow(&self, shutdown: &CancellationToken) -> Result<(), ArchiveError> {
        tracing::info!(
            projection = %NAME,
            "the archive generation changed; resuming in the new one"
        );
        Box::pin(self.follow(shutdown)).await
    }

    /// Follow the log; returns Ok on shutdown, Err to be retried.
    async fn follow(&self, shutdown: &CancellationToken) -> Result<(), ArchiveError> {
        if shutdown.is_cancelled() {
            return Ok(());
        }
        let gen = self.archive.current_generation().await?;
        let next = self.archive.resume(&gen).await?;
        let end = self.log.durable_end();
        if next > end {
            return Err(ArchiveError::Inconsistent(format!(
                "generation {gen} holds events up to offset {} but the log ends at {end}; rebuild with `parkade replay --projection archive`",
                next - 1
            )));
        }
        tracing::info!(projection = %NAME, generation = %gen, from = next, store = %self.archive.store.describe(), "archive following the log");
        self.board.set(NAME, |s| {
            s.state = ProjectionState::Running;
            s.checkpoint = next;
        });
        let mut sub = Subscription::new(self.log.clone(), next);
        let max_wait = Duration::from_secs(self.archive.opts.roll_secs.max(1));
        let mut chunker = Chunker::new(&self.archive.opts);
        let mut oldest: Option<Instant> = None;
        // The holder of a lease renews it while it waits, so it finds out when it lost it.
        let mut renew = tokio::time::interval(LEASE_EVERY);
        loop {
            let deadline = oldest.map(|t| t + max_wait);
            let due = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d.into()).await,
                    None => std::future::pending().await,
                }
            };
            let mut stop = false;
            let mut full = Vec::new();
            tokio::select! {
                batch = sub.next_batch(chunker.room().clamp(1, 65_536)) => {
                    full = chunker.push_all(batch?);
                    oldest.get_or_insert_with(Instant::now);
                }
                _ = due => {}
                _ = renew.tick(), if self.archive.lease.is_some() => {
                    if let Some(lease) = &self.archive.lease {
                        lease.lock().await.renew().await?;
                    }
                }
                _ = shutdown.cancelled() => stop = true,
            }
            let timed_out = deadline.is_some_and(|d| Instant::now() >= d);
            if !chunker.is_empty() && (timed_out || stop) {
                full.push(chunker.take());
            }
            if !full.is_empty() {
                // A rebuild may have switched generations: follow the new one, which
                // reads these events again from the log (unless stopping: the stop was
                // seen here and will not be signalled again). Checked before writing,
                // and again after, before the board shows a checkpoint: a checkpoint of
                // the old generation must never look like the new one's.
                let moved = || async {
                    Ok::<_, ArchiveError>(!stop && self.archive.current_generation().await? != gen)
                };
                if moved().await? {
                    return self.refollow(shutdown).await;
                }
                let mut to = None;
                for batch in full {
                    to = batch.last().map(|e| e.offset + 1);
                    self.archive.flush(&gen, Arc::new(batch)).await?;
                }
                if moved().await? {
                    return self.refollow(shutdown).await;
                }
                if let Some(to) = to {
                    self.board.set(NAME, |s| {
                        s.state = ProjectionState::Running;
                        s.checkpoint = to;
                    });
                }
                if chunker.is_empty() {
                    oldest = None;
                }
            }
            if stop {
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{LotEvent, LotId, NewEvent, Timestamp};

    const DAY: i64 = 86_400_000_000;

    fn on_day(offset: u64, day: i64) -> RecordedEvent {
        RecordedEvent {
            offset,
            recorded_at: Timestamp::from_micros(20_000 * DAY),
            schema_version: 1,
            event: NewEvent {
                lot_id: LotId::parse("north").unwrap(),
                lot_seq: offset + 1,
                event_id: uuid::Uuid::from_u128(u128::from(offset)),
                client_event_id: false,
                occurred_at: Timestamp::from_micros((11_000 + day) * DAY + 3_600_000_000),
                event: LotEvent::VehicleArrived,
                occupancy: 1,
                capacity: 10,
            },
        }
    }

    #[test]
    fn a_flush_covers_at_most_max_dates_and_roll_events_in_offset_order() {
        let opts = ArchiveOptions {
            roll_events: 5,
            max_dates: 3,
            ..ArchiveOptions::default()
        };
        // Dates jump about as a hostile request would spread them: 0, 9, 0, 4, 7, ...
        let days = [0, 9, 0, 4, 7, 7, 1, 2, 2, 2, 2, 2, 2, 8, 3];
        let events: Vec<RecordedEvent> = days
            .iter()
            .enumerate()
            .map(|(i, d)| on_day(i as u64, *d))
            .collect();
        let mut chunker = Chunker::new(&opts);
        let mut flushes = chunker.push_all(events[..7].to_vec());
        flushes.extend(chunker.push_all(events[7..].to_vec()));
        if !chunker.is_empty() {
            flushes.push(chunker.take());
        }
        let offsets: Vec<u64> = flushes.iter().flatten().map(|e| e.offset).collect();
        assert_eq!(offsets, (0..days.len() as u64).collect::<Vec<_>>());
        for f in &flushes {
            let dates: std::collections::HashSet<i64> = f
                .iter()
                .map(|e| e.event.occurred_at.micros().div_euclid(DAY))
                .collect();
            assert!(dates.len() <= 3, "{} dates in one flush", dates.len());
            assert!(f.len() <= 5 && !f.is_empty());
        }
        // Dates 0,9,0,4 end before the fourth date (7); 7,7,1,2,2 roll at 5 events;
        // 2,2,2,2,8 too; 3 is what is left.
        assert_eq!(
            flushes.iter().map(Vec::len).collect::<Vec<_>>(),
            vec![4, 5, 5, 1]
        );
    }
}
