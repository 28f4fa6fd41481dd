//! `parkade import`: historical CSV files appended to the log through the lot actors,
//! so the same rules apply as to live events.
//!
//! Two layouts, recognised by their header:
//!
//! - event rows, the old pipeline's historical files: `lot_id,event_type,timestamp[,event_id]`
//!   (`event_type` ARRIVAL/DEPARTURE/COUNT, then a `count` column is needed; timestamps
//!   RFC 3339 or epoch milliseconds);
//! - occupancy counts in the Birmingham layout: `SystemCodeNumber,Capacity,Occupancy,LastUpdated`
//!   with local times (`--timezone`, default Europe/London). A lot seen for the first
//!   time is registered with the row's capacity (its name is the code as written); a
//!   new capacity appends `LotCapacityChanged`; every row appends `OccupancyCounted`.
//!
//! Every row ends up in exactly one bucket of the [`Summary`]: accepted, already
//! imported (its event id is in the log), or rejected with a reason. Nothing is
//! clamped. Re-importing a file appends nothing: each row's event id is its
//! `event_id` column or a UUIDv5 derived from the row (for event rows: lot, type,
//! timestamp and the how-many-th identical row it is; for counts: lot and local time,
//! so a repeated reading is a `duplicate`).
//!
//! Rows go to a [`Sink`]: the lot actors of a data directory ([`LocalSink`], when no
//! server runs) or a running server over HTTP ([`HttpSink`], `--url`). Either way the
//! whole log is consulted, not only the server's idempotency window (see
//! [`actors`](crate::actors)): offline from the log itself, through HTTP with
//! `POST /v1/admin/known-events`. A row an earlier import refused for the lot's state
//! is refused again (`previously_rejected`), see `Run::find_prior`.

pub mod offline;
mod sink;

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::{Path, PathBuf};

use chrono::TimeZone;
use chrono_tz::Tz;
use rustc_hash::{FxHashMap, FxHashSet};
use uuid::Uuid;

use crate::domain::Request;
use crate::domain::{check_event_time, Capacity, Command, LotId, LotName, Timestamp};
use crate::ingest::{self, EdgeRules, TimeInput};

pub use sink::{HttpSink, LocalSink, RowOutcome, Sink};

/// Namespace of the UUIDv5 event ids derived from imported rows.
const NAMESPACE: Uuid = Uuid::from_u128(0x6d2c_9a4e_51b7_4f0a_9c3e_8e1f_0a7b_2d55);
/// Rows folded into one round of appends (and one wait for durability).
const CHUNK_ROWS: usize = 50_000;

/// The layout of a CSV file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// `lot_id,event_type,timestamp[,event_id][,count]`
    Events,
    /// `SystemCodeNumber,Capacity,Occupancy,LastUpdated`
    Birmingham,
}

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Layout { path: PathBuf, message: String },
    #[error("CSV error in {path}: {source}")]
    Csv {
        path: PathBuf,
        #[source]
        source: csv::Error,
    },
    #[error("cannot write the rejects file {path}: {source}")]
    Rejects {
        path: PathBuf,
        #[source]
        source: csv::Error,
    },
    #[error("the import stopped: {0}")]
    Sink(String),
}

/// Settings of one import run.
#[derive(Debug, Clone)]
pub struct Options {
    /// `None`: recognise the layout from the header.
    pub format: Option<Format>,
    /// Zone of local times in count files.
    pub timezone: Tz,
    /// Write every rejected row here (CSV: file, line, reason, detail, row).
    pub rejects: Option<PathBuf>,
    /// How far ahead of the clock a row's time may be, in seconds (the event time rule,
    /// [`check_event_time`]).
    pub max_future_secs: i64,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            format: None,
            timezone: chrono_tz::Europe::London,
            rejects: None,
            max_future_secs: crate::domain::DEFAULT_MAX_FUTURE_SECS,
        }
    }
}

/// What became of a file's rows.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Summary {
    pub file: String,
    pub format: Option<Format>,
    /// Data rows read (the header excluded).
    pub rows: u64,
    pub accepted: u64,
    /// Rows whose event is in the log already (an earlier import of the same rows).
    pub already_imported: u64,
    /// Rejected rows by reason.
    pub rejected: BTreeMap<String, u64>,
    /// Rows accepted with a remark (e.g. an ambiguous local time), by remark.
    pub notes: BTreeMap<String, u64>,
    pub lots_registered: u64,
    pub capacity_changes: u64,
    pub seconds: f64,
}

impl Summary {
    pub fn rejected_total(&self) -> u64 {
        self.rejected.values().sum()
    }
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let rate = if self.seconds > 0.0 {
            self.rows as f64 / self.seconds
        } else {
            0.0
        };
        write!(
            f,
            "{}: {} rows in {:.2} s ({:.0} rows/s): {} accepted, {} already imported, {} rejected",
            self.file,
            self.rows,
            self.seconds,
            rate,
            self.accepted,
            self.already_imported,
            self.rejected_total()
        )?;
        if !self.rejected.is_empty() {
            let parts: Vec<String> = self
                .rejected
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect();
            write!(f, " ({})", parts.join(", "))?;
        }
        if self.lots_registered + self.capacity_changes > 0 {
            write!(
                f,
                "; {} lots registered, {} capacity changes",
                self.lots_registered, self.capacity_changes
            )?;
        }
        for (k, v) in &self.notes {
            write!(f, "; note: {v} rows with {k}")?;
        }
        Ok(())
    }
}

/// Where a request came from.
#[derive(Debug, Clone, Copy)]
enum Origin {
    /// The row on this line of the file.
    Row(u64),
    /// A registration the import added for a new lot of a count file.
    Register,
    /// A capacity change the import added for a count file.
    CapacityChange,
}

/// What a row comes to before it is sent.
enum Row {
    Send(LotId, Request),
    /// Its event is in the log already.
    AlreadyImported,
}

/// Why a row is refused before it reaches a lot.
struct Reject {
    reason: &'static str,
    detail: String,
}

impl Reject {
    fn new(reason: &'static str, detail: impl Into<String>) -> Reject {
        Reject {
            reason,
            detail: detail.into(),
        }
    }
}

struct Item {
    origin: Origin,
    lot: LotId,
    request: Request,
}

/// A count row's fields and derived event id.
struct Count<'r> {
    lot: LotId,
    capacity: Capacity,
    occupancy: i64,
    at: Timestamp,
    when_raw: &'r str,
    /// The local time occurs twice (clocks went back); the earlier instant was taken.
    ambiguous: bool,
    id: Uuid,
}

/// Read a count row in the Birmingham layout.
fn parse_count<'r>(
    record: &'r csv::StringRecord,
    cols: &Columns,
    tz: Tz,
    rules: &EdgeRules,
) -> Result<Count<'r>, Reject> {
    let bham = crate::datasets::birmingham::Columns {
        code: cols.a,
        capacity: cols.b,
        occupancy: cols.c.expect("birmingham has occupancy"),
        updated: cols.d.expect("birmingham has a time"),
    };
    let row = crate::datasets::birmingham::row(record, &bham)
        .map_err(|m| Reject::new("unparsable", m))?;
    let lot = LotId::parse(row.code)
        .map_err(|e| Reject::new("unparsable", format!("SystemCodeNumber: {e}")))?;
    let (capacity, occupancy, when_raw, naive) =
        (row.capacity, row.occupancy, row.updated_raw, row.updated);
    let (at, ambiguous) = match tz.from_local_datetime(&naive) {
        chrono::LocalResult::Single(t) => (Timestamp::from_datetime(t.to_utc()), false),
        chrono::LocalResult::Ambiguous(early, _) => {
            (Timestamp::from_datetime(early.to_utc()), true)
        }
        chrono::LocalResult::None => {
            return Err(Reject::new(
                "nonexistent_local_time",
                format!("{when_raw} does not exist in {tz} (clocks went forward)"),
            ))
        }
    };
    check_event_time(at, rules.now, rules.max_future_micros)
        .map_err(|e| Reject::new("invalid_timestamp", format!("LastUpdated: {e}")))?;
    let id = derived_id(&[
        b"birmingham",
        lot.as_str().as_bytes(),
        &at.micros().to_le_bytes(),
    ]);
    Ok(Count {
        lot,
        capacity,
        occupancy,
        at,
        when_raw,
        ambiguous,
        id,
    })
}

/// Reads, standardises and sends rows; counts what became of them.
struct Run<'a, S: Sink> {
    sink: &'a mut S,
    summary: Summary,
    rejects: Option<csv::Writer<std::fs::File>>,
    rejects_path: Option<PathBuf>,
    pending: Vec<Item>,
    /// Raw rows of pending items, for the rejects file.
    raw: HashMap<u64, String>,
    /// Events (lot and id) seen in this run (a repeat is a duplicate row).
    seen: FxHashSet<(LotId, u128)>,
    /// Capacity of each lot as this run knows it (for count files).
    capacity: HashMap<LotId, Option<u32>>,
    lot_cache: FxHashMap<String, LotId>,
    /// Per lot, the last line of this file an earlier import appended.
    prior: HashMap<LotId, u64>,
    /// True during [`Run::find_prior`]: rows are only given their ids.
    prepass: bool,
}

impl<'s, S: Sink> Run<'s, S> {
    fn new(
        sink: &'s mut S,
        path: &Path,
        format: Format,
        opts: &Options,
    ) -> Result<Self, ImportError> {
        Ok(Run {
            sink,
            summary: Summary {
                file: path.display().to_string(),
                format: Some(format),
                ..Summary::default()
            },
            rejects: opts.rejects.as_deref().map(open_rejects).transpose()?,
            rejects_path: opts.rejects.clone(),
            pending: Vec::with_capacity(CHUNK_ROWS),
            raw: HashMap::new(),
            seen: FxHashSet::default(),
            capacity: HashMap::new(),
            lot_cache: FxHashMap::default(),
            prior: HashMap::new(),
            prepass: false,
        })
    }
}

/// The layout of a file (given, or found from its header) and where its columns are.
fn layout(
    path: &Path,
    headers: &csv::StringRecord,
    opts: &Options,
) -> Result<(Format, Columns), ImportError> {
    let format = match opts.format {
        Some(f) => f,
        None => detect(headers).ok_or_else(|| ImportError::Layout {
            path: path.to_path_buf(),
            message: format!(
                "unrecognised header {:?}: expected lot_id,event_type,timestamp[,event_id][,count] or SystemCodeNumber,Capacity,Occupancy,LastUpdated",
                headers.iter().collect::<Vec<_>>()
            ),
        })?,
    };
    let columns = Columns::find(headers, format).map_err(|message| ImportError::Layout {
        path: path.to_path_buf(),
        message,
    })?;
    Ok((format, columns))
}

/// The rejects file, appended to (with a header when it is new or empty).
fn open_rejects(path: &Path) -> Result<csv::Writer<std::fs::File>, ImportError> {
    let exists = std::fs::metadata(path).is_ok_and(|m| m.len() > 0);
    let f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|source| ImportError::Read {
            path: path.to_path_buf(),
            source,
        })?;
    let mut w = csv::Writer::from_writer(f);
    if !exists {
        w.write_record(["file", "line", "reason", "detail", "row"])
            .map_err(|source| ImportError::Rejects {
                path: path.to_path_buf(),
                source,
            })?;
    }
    Ok(w)
}

/// Import one file into `sink`. `progress(bytes_read)` is called as the file is read.
pub async fn import_file<S: Sink>(
    sink: &mut S,
    path: &Path,
    opts: &Options,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<Summary, ImportError> {
    let started = std::time::Instant::now();
    let mut reader = open_csv(path)?;
    let headers = reader
        .headers()
        .map_err(|source| ImportError::Csv {
            path: path.to_path_buf(),
            source,
        })?
        .clone();
    let (format, columns) = layout(path, &headers, opts)?;
    let mut run = Run::new(sink, path, format, opts)?;
    let mut occurrences: FxHashMap<(LotId, u8, i64), u32> = FxHashMap::default();
    let mut record = csv::StringRecord::new();
    let rules = EdgeRules {
        now: Timestamp::now(),
        max_future_micros: opts.max_future_secs.saturating_mul(1_000_000),
        max_events: usize::MAX,
    };
    if run.sink.sees_log() {
        run.find_prior(path, format, &columns, &rules, opts.timezone)
            .await?;
    }
    loop {
        let more = reader
            .read_record(&mut record)
            .map_err(|source| ImportError::Csv {
                path: path.to_path_buf(),
                source,
            })?;
        if !more {
            break;
        }
        run.summary.rows += 1;
        let line = record.position().map_or(run.summary.rows + 1, |p| p.line());
        // A quote never closed on its line makes the reader run the next lines into
        // this row: refused, naming the lines, never taken for some other fault.
        let breaks: usize = record
            .iter()
            .map(|f| f.trim_end_matches(['\r', '\n']).matches('\n').count())
            .sum();
        if breaks > 0 || record.iter().any(|f| f.contains('\n')) {
            let last = line + breaks as u64;
            let detail = format!(
                "a quote opened on line {line} is not closed on that line, so lines {line} to {last} were read as one row; fix the quote and import again (a rerun skips what is in)"
            );
            eprintln!("parkade import: {} line {line}: {detail}", path.display());
            run.reject(line, "unbalanced_quote", &detail, &Run::<S>::raw(&record))?;
            continue;
        }
        let row = match format {
            Format::Events => run.event_row(&record, &columns, &rules, &mut occurrences, line),
            Format::Birmingham => {
                run.count_row(&record, &columns, opts.timezone, &rules, line)
                    .await?
            }
        };
        match row {
            Ok(Row::Send(lot, request)) => run.push(line, lot, request, &record),
            Ok(Row::AlreadyImported) => run.summary.already_imported += 1,
            Err(r) => run.reject(line, r.reason, &r.detail, &Run::<S>::raw(&record))?,
        }
        if run.pending.len() >= CHUNK_ROWS {
            run.flush().await?;
            progress(reader.get_ref().read);
        }
    }
    run.flush().await?;
    progress(reader.get_ref().read);
    if let Some(w) = &mut run.rejects {
        w.flush().map_err(|e| ImportError::Rejects {
            path: run.rejects_path.clone().unwrap_or_default(),
            source: e.into(),
        })?;
    }
    run.summary.seconds = started.elapsed().as_secs_f64();
    Ok(run.summary)
}

type CsvReader = csv::Reader<CountingReader<std::io::BufReader<std::fs::File>>>;

fn open_csv(path: &Path) -> Result<CsvReader, ImportError> {
    let file = std::fs::File::open(path).map_err(|source| ImportError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let counted = CountingReader {
        inner: std::io::BufReader::with_capacity(1 << 20, file),
        read: 0,
    };
    Ok(csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(true)
        .from_reader(counted))
}

struct CountingReader<R> {
    inner: R,
    read: u64,
}

impl<R: Read> Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        Ok(n)
    }
}

fn detect(headers: &csv::StringRecord) -> Option<Format> {
    let names: Vec<String> = headers
        .iter()
        .map(|h| h.trim().to_ascii_lowercase())
        .collect();
    let has = |n: &str| names.iter().any(|h| h == n);
    if has("systemcodenumber") && has("occupancy") && has("lastupdated") && has("capacity") {
        Some(Format::Birmingham)
    } else if has("lot_id") && has("event_type") {
        Some(Format::Events)
    } else {
        None
    }
}

/// Column positions, found by header name.
struct Columns {
    a: usize,
    b: usize,
    c: Option<usize>,
    d: Option<usize>,
    e: Option<usize>,
}

impl Columns {
    fn find(headers: &csv::StringRecord, format: Format) -> Result<Columns, String> {
        let pos = |name: &str| {
            headers
                .iter()
                .position(|h| h.trim().eq_ignore_ascii_case(name))
        };
        let need = |name: &str| pos(name).ok_or_else(|| format!("missing column {name:?}"));
        Ok(match format {
            Format::Events => Columns {
                a: need("lot_id")?,
                b: need("event_type")?,
                c: pos("timestamp"),
                d: pos("event_id"),
                e: pos("count"),
            },
            Format::Birmingham => Columns {
                a: need("SystemCodeNumber")?,
                b: need("Capacity")?,
                c: Some(need("Occupancy")?),
                d: Some(need("LastUpdated")?),
                e: None,
            },
        })
    }
}

fn derived_id(parts: &[&[u8]]) -> Uuid {
    let mut key = Vec::with_capacity(96);
    for p in parts {
        key.extend_from_slice(&(p.len() as u32).to_le_bytes());
        key.extend_from_slice(p);
    }
    Uuid::new_v5(&NAMESPACE, &key)
}

impl<S: Sink> Run<'_, S> {
    fn reject(
        &mut self,
        line: u64,
        reason: &str,
        detail: &str,
        raw: &str,
    ) -> Result<(), ImportError> {
        *self.summary.rejected.entry(reason.to_owned()).or_default() += 1;
        if let Some(w) = &mut self.rejects {
            w.write_record([
                self.summary.file.as_str(),
                &line.to_string(),
                reason,
                detail,
                raw,
            ])
            .map_err(|source| ImportError::Rejects {
                path: self.rejects_path.clone().unwrap_or_default(),
                source,
            })?;
        }
        Ok(())
    }

    fn raw(record: &csv::StringRecord) -> String {
        record.iter().collect::<Vec<_>>().join(",")
    }

    fn push(&mut self, line: u64, lot: LotId, request: Request, record: &csv::StringRecord) {
        if self.rejects.is_some() {
            self.raw.insert(line, Self::raw(record));
        }
        self.pending.push(Item {
            origin: Origin::Row(line),
            lot,
            request,
        });
    }

    fn lot(&mut self, raw: &str) -> Result<LotId, String> {
        if let Some(id) = self.lot_cache.get(raw) {
            return Ok(id.clone());
        }
        let id = LotId::parse(raw).map_err(|e| e.to_string())?;
        self.lot_cache.insert(raw.to_owned(), id.clone());
        Ok(id)
    }

    /// Check lot `lot`'s derived or given event id against this run and the log (an id
    /// is known only together with its lot).
    fn fresh(&mut self, lot: &LotId, id: Uuid, repeat: &str) -> Result<Option<()>, Reject> {
        if !self.seen.insert((lot.clone(), id.as_u128())) {
            return Err(Reject::new("duplicate", repeat));
        }
        if self.prepass {
            return Ok(Some(()));
        }
        if self.sink.already_in_log(lot, &id) {
            return Ok(None);
        }
        Ok(Some(()))
    }

    /// An event row: `lot_id,event_type,timestamp[,event_id][,count]`.
    fn event_row(
        &mut self,
        record: &csv::StringRecord,
        cols: &Columns,
        rules: &EdgeRules,
        occurrences: &mut FxHashMap<(LotId, u8, i64), u32>,
        line: u64,
    ) -> Result<Row, Reject> {
        let field = |i: Option<usize>| i.and_then(|i| record.get(i)).map(str::trim);
        let time = match field(cols.c) {
            None | Some("") => {
                return Err(Reject::new(
                    "unparsable",
                    "timestamp: a historical row needs a timestamp",
                ))
            }
            Some(t) => TimeInput::Text(t),
        };
        let count = match field(cols.e) {
            None | Some("") => None,
            Some(c) => Some(c.parse::<i64>().map_err(|_| {
                Reject::new("unparsable", format!("count {c:?} is not an integer"))
            })?),
        };
        let lot = self
            .lot(field(Some(cols.a)).unwrap_or(""))
            .map_err(|e| Reject::new("unparsable", format!("lot_id: {e}")))?;
        let kind = field(Some(cols.b)).unwrap_or("");
        let mut s = ingest::standardise(lot.as_str(), kind, count, time, field(cols.d), rules)
            .map_err(|e| {
                let reason = if count.is_some_and(|c| c < 0) {
                    "negative"
                } else {
                    "unparsable"
                };
                match &e.field {
                    Some(f) => Reject::new(reason, format!("{f}: {}", e.message)),
                    None => Reject::new(reason, e.message),
                }
            })?;
        let id = match s.request.event_id {
            Some(id) => id,
            None => {
                // Identical rows are distinct vehicles: number them within the file.
                let (tag, extra) = match s.request.command {
                    Command::Arrive => (1u8, 0u32),
                    Command::Depart => (2, 0),
                    Command::Count { count } => (3, count),
                    _ => (0, 0),
                };
                let n = occurrences
                    .entry((lot.clone(), tag, s.request.occurred_at.micros()))
                    .or_default();
                *n += 1;
                let id = derived_id(&[
                    b"events",
                    lot.as_str().as_bytes(),
                    &[tag],
                    &s.request.occurred_at.micros().to_le_bytes(),
                    &extra.to_le_bytes(),
                    &n.to_le_bytes(),
                ]);
                s.request.event_id = Some(id);
                id
            }
        };
        match self.fresh(&lot, id, "the same event_id appears earlier in this file")? {
            None => Ok(Row::AlreadyImported),
            Some(()) => {
                self.refused_before(&lot, line)?;
                Ok(Row::Send(lot, s.request))
            }
        }
    }

    /// A row that is not in the log although a later row of its lot is: an earlier
    /// import refused it (say, a departure from an empty lot), so it is refused again
    /// rather than judged against today's state.
    fn refused_before(&self, lot: &LotId, line: u64) -> Result<(), Reject> {
        if !self.prepass && self.prior.get(lot).is_some_and(|last| line < *last) {
            return Err(Reject::new(
                "previously_rejected",
                "an earlier import of this file refused this row (later rows of the lot are in the log)",
            ));
        }
        Ok(())
    }

    /// The first pass of a file the log may already hold rows of: find, per lot, the
    /// last row an earlier import appended (see [`Run::refused_before`]). Ids are looked
    /// up a chunk at a time (one read of the server's log per chunk through `--url`). A
    /// file none of whose first `SAMPLE_ROWS` rows is in the log is taken as new and the
    /// pass stops there, so a first import does not read the file twice; a file whose
    /// first rows were all refused before is therefore judged afresh.
    async fn find_prior(
        &mut self,
        path: &Path,
        format: Format,
        columns: &Columns,
        rules: &EdgeRules,
        tz: Tz,
    ) -> Result<(), ImportError> {
        const SAMPLE_ROWS: usize = 10_000;
        const LOOKUP_ROWS: usize = 500_000;
        let mut pre = open_csv(path)?;
        let mut record = csv::StringRecord::new();
        let mut occurrences = FxHashMap::default();
        let mut chunk: Vec<(u64, LotId, Uuid)> = Vec::new();
        let mut sampled = false;
        self.prepass = true;
        loop {
            let more = pre
                .read_record(&mut record)
                .map_err(|source| ImportError::Csv {
                    path: path.to_path_buf(),
                    source,
                })?;
            if more {
                let line = record.position().map_or(0, |p| p.line());
                let derived = match format {
                    Format::Events => self
                        .event_row(&record, columns, rules, &mut occurrences, line)
                        .ok()
                        .and_then(|row| match row {
                            Row::Send(lot, r) => r.event_id.map(|id| (lot, id)),
                            Row::AlreadyImported => None,
                        }),
                    Format::Birmingham => parse_count(&record, columns, tz, rules)
                        .ok()
                        .filter(|c| self.fresh(&c.lot, c.id, "").is_ok())
                        .map(|c| (c.lot, c.id)),
                };
                if let Some((lot, id)) = derived {
                    chunk.push((line, lot, id));
                }
            }
            let full = chunk.len() >= if sampled { LOOKUP_ROWS } else { SAMPLE_ROWS };
            if full || !more {
                self.sink
                    .look_up(chunk.iter().map(|c| (c.1.clone(), c.2)).collect())
                    .await
                    .map_err(ImportError::Sink)?;
                for (line, lot, id) in chunk.drain(..) {
                    if self.sink.already_in_log(&lot, &id) {
                        let last = self.prior.entry(lot).or_default();
                        *last = (*last).max(line);
                    }
                }
                if !sampled && self.prior.is_empty() {
                    break;
                }
                sampled = true;
            }
            if !more {
                break;
            }
        }
        self.prepass = false;
        self.seen.clear();
        Ok(())
    }

    /// A count row in the Birmingham layout; registers the lot or changes its capacity
    /// first when needed.
    async fn count_row(
        &mut self,
        record: &csv::StringRecord,
        cols: &Columns,
        tz: Tz,
        rules: &EdgeRules,
        line: u64,
    ) -> Result<Result<Row, Reject>, ImportError> {
        let c = match parse_count(record, cols, tz, rules) {
            Ok(c) => c,
            Err(r) => return Ok(Err(r)),
        };
        let code = record.get(cols.a).map(str::trim).unwrap_or("");
        match self.fresh(
            &c.lot,
            c.id,
            &format!("{code} at {} was already read from this file", c.when_raw),
        ) {
            Err(r) => return Ok(Err(r)),
            Ok(None) => return Ok(Ok(Row::AlreadyImported)),
            Ok(Some(())) => {}
        }
        if let Err(r) = self.refused_before(&c.lot, line) {
            return Ok(Err(r));
        }
        if c.ambiguous {
            *self
                .summary
                .notes
                .entry(
                    "an ambiguous local time (clocks went back; the earlier instant was used)"
                        .into(),
                )
                .or_default() += 1;
        }
        let Count {
            lot,
            capacity,
            occupancy,
            at: occurred_at,
            id,
            ..
        } = c;
        if occupancy < 0 {
            return Ok(Err(Reject::new(
                "negative",
                format!("Occupancy {occupancy} is below zero"),
            )));
        }
        if let Err(r) = self.set_up_lot(&lot, code, capacity, occurred_at).await? {
            return Ok(Err(r));
        }
        let request = Request {
            command: Command::Count {
                count: u32::try_from(occupancy).unwrap_or(u32::MAX),
            },
            event_id: Some(id),
            occurred_at,
        };
        Ok(Ok(Row::Send(lot, request)))
    }

    /// Before a count of `lot`: register it (named by its `code`) when the sink does
    /// not know it, or change its capacity when the row gives another one.
    async fn set_up_lot(
        &mut self,
        lot: &LotId,
        code: &str,
        capacity: Capacity,
        occurred_at: Timestamp,
    ) -> Result<Result<(), Reject>, ImportError> {
        let known = match self.capacity.get(lot) {
            Some(c) => *c,
            None => {
                let c = self.sink.capacity(lot).await.map_err(ImportError::Sink)?;
                self.capacity.insert(lot.clone(), c);
                c
            }
        };
        let (origin, command, event_id) = match known {
            None => {
                let name = match LotName::parse(code) {
                    Ok(n) => n,
                    Err(e) => {
                        let detail = format!("SystemCodeNumber as the lot's name: {e}");
                        return Ok(Err(Reject::new("invalid_name", detail)));
                    }
                };
                let id = derived_id(&[b"birmingham-register", lot.as_str().as_bytes()]);
                (Origin::Register, Command::Register { name, capacity }, id)
            }
            Some(c) if c != capacity.get() => {
                let id = derived_id(&[
                    b"birmingham-capacity",
                    lot.as_str().as_bytes(),
                    &capacity.get().to_le_bytes(),
                    &occurred_at.micros().to_le_bytes(),
                ]);
                (
                    Origin::CapacityChange,
                    Command::ChangeCapacity { capacity },
                    id,
                )
            }
            Some(_) => return Ok(Ok(())),
        };
        self.pending.push(Item {
            origin,
            lot: lot.clone(),
            request: Request {
                command,
                event_id: Some(event_id),
                occurred_at,
            },
        });
        self.capacity.insert(lot.clone(), Some(capacity.get()));
        Ok(Ok(()))
    }

    /// Send the pending items, one batch per lot in file order, and count the outcomes.
    async fn flush(&mut self) -> Result<(), ImportError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let items = std::mem::take(&mut self.pending);
        let mut order: Vec<LotId> = Vec::new();
        let mut groups: HashMap<LotId, (Vec<Origin>, Vec<Request>)> = HashMap::new();
        for item in items {
            let g = groups.entry(item.lot.clone()).or_insert_with(|| {
                order.push(item.lot.clone());
                (Vec::new(), Vec::new())
            });
            g.0.push(item.origin);
            g.1.push(item.request);
        }
        let batches: Vec<(LotId, Vec<Origin>, Vec<Request>)> = order
            .into_iter()
            .map(|lot| {
                let (o, r) = groups.remove(&lot).expect("grouped");
                (lot, o, r)
            })
            .collect();
        let results = self
            .sink
            .execute_all(
                batches
                    .iter()
                    .map(|(l, _, r)| (l.clone(), r.clone()))
                    .collect(),
            )
            .await;
        for ((lot, origins, _), result) in batches.into_iter().zip(results) {
            let outcomes = result.map_err(ImportError::Sink)?;
            for (origin, outcome) in origins.into_iter().zip(outcomes) {
                self.count(&lot, origin, outcome)?;
            }
        }
        self.raw.clear();
        Ok(())
    }

    fn count(
        &mut self,
        lot: &LotId,
        origin: Origin,
        outcome: RowOutcome,
    ) -> Result<(), ImportError> {
        match (origin, outcome) {
            (Origin::Register, RowOutcome::Accepted) => self.summary.lots_registered += 1,
            (Origin::CapacityChange, RowOutcome::Accepted) => self.summary.capacity_changes += 1,
            (Origin::Register | Origin::CapacityChange, RowOutcome::Duplicate) => {}
            (Origin::Register | Origin::CapacityChange, RowOutcome::Rejected { code, detail }) => {
                if code != "lot_already_registered" {
                    let note = format!("a lot change refused ({code}: {detail})");
                    *self.summary.notes.entry(note).or_default() += 1;
                }
            }
            (Origin::Row(_), RowOutcome::Accepted) => self.summary.accepted += 1,
            (Origin::Row(_), RowOutcome::Duplicate) => self.summary.already_imported += 1,
            (Origin::Row(line), RowOutcome::Rejected { code, detail }) => {
                let reason = match code.as_str() {
                    "lot_not_found" => "unknown_lot",
                    "count_above_capacity" => "above_capacity",
                    "invalid_event" | "invalid_request" => "unparsable",
                    other => other,
                }
                .to_owned();
                let raw = self.raw.remove(&line).unwrap_or_default();
                self.reject(line, &reason, &format!("lot {lot}: {detail}"), &raw)?;
            }
        }
        Ok(())
    }
}
