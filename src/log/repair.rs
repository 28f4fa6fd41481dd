//! `parkade repair-log`: the operator's explicit cut of a damaged log.
//!
//! Opening the log cuts only a torn tail (the newest segment's unfinished last write,
//! with nothing valid after it). Damage anywhere else, or damage followed by valid
//! records, stops the service with the file and byte position, because cutting there
//! would delete records that may have been acknowledged. This module plans the cut
//! that makes the log readable again and, when asked, carries it out: it reports every
//! file and byte range it removes and how many whole records are in them, and first
//! copies every file it changes into `repair-<time>/` beside the segments.

use std::fmt;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::file_log::recovery::{list_segments, scan_segment, take_lock};
use super::file_log::WRITTEN_MARK;
use super::format::{self, Frame, HEADER_LEN};
use super::LogError;

/// What a repair removes (or would remove).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepairPlan {
    /// The first damaged segment and the byte it is cut at (0: the whole file goes).
    pub cut_file: PathBuf,
    pub cut_at: u64,
    /// Why the log cannot be read past that byte.
    pub reason: String,
    /// Offsets the log keeps: `0..kept_events`.
    pub kept_events: u64,
    /// Later segment files removed whole.
    pub removed_files: Vec<PathBuf>,
    /// Bytes removed, counting the cut file's tail and the removed files.
    pub removed_bytes: u64,
    /// Whole, checksummed records found in the removed bytes: data that is lost unless
    /// it is recovered from the copy by hand.
    pub removed_records: u64,
}

/// The result of `repair-log`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RepairOutcome {
    /// Nothing to cut: the log opens as it is (a torn tail is cut at open).
    Healthy { events: u64 },
    /// The cut that would be made; nothing was changed.
    Planned(RepairPlan),
    /// The cut was made; the originals are in `backup`.
    Repaired { plan: RepairPlan, backup: PathBuf },
}

impl fmt::Display for RepairPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "damage in {} at byte {}: {}",
            self.cut_file.display(),
            self.cut_at,
            self.reason
        )?;
        if self.cut_at == 0 {
            writeln!(f, "  remove {} (whole file)", self.cut_file.display())?;
        } else {
            writeln!(
                f,
                "  cut {} from byte {} to its end",
                self.cut_file.display(),
                self.cut_at
            )?;
        }
        for p in &self.removed_files {
            writeln!(f, "  remove {} (whole file)", p.display())?;
        }
        write!(
            f,
            "  keeps offsets 0..{} ({} events); removes {} bytes holding {} whole records",
            self.kept_events, self.kept_events, self.removed_bytes, self.removed_records
        )
    }
}

impl fmt::Display for RepairOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RepairOutcome::Healthy { events } => write!(
                f,
                "the log is readable ({events} events); nothing to repair"
            ),
            RepairOutcome::Planned(plan) => write!(
                f,
                "{plan}\nnothing was changed; run again with --apply to make this cut (the files are copied first)"
            ),
            RepairOutcome::Repaired { plan, backup } => write!(
                f,
                "{plan}\ndone; the original files are in {}",
                backup.display()
            ),
        }
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> LogError + '_ {
    move |source| LogError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Whole, checksummed records in `path` from byte `from` on (a record is counted where
/// it is found; the scan then jumps past it).
fn count_records(path: &Path, from: u64) -> Result<u64, LogError> {
    let file = File::open(path).map_err(io_err(path))?;
    let len = file.metadata().map_err(io_err(path))?.len();
    if from >= len {
        return Ok(0);
    }
    let mut bytes = vec![0u8; usize::try_from(len - from).unwrap_or(usize::MAX)];
    file.read_exact_at(&mut bytes, from).map_err(io_err(path))?;
    let mut n = 0;
    let mut i = 0;
    while i < bytes.len() {
        match format::next_frame(&bytes[i..]) {
            Frame::Record(_, len) => {
                n += 1;
                i += len;
            }
            _ => i += 1,
        }
    }
    Ok(n)
}

fn file_len(path: &Path) -> Result<u64, LogError> {
    Ok(std::fs::metadata(path).map_err(io_err(path))?.len())
}

/// What [`plan`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding {
    /// The log opens as it is, with this many events (a torn tail is cut at open).
    Readable { events: u64 },
    /// The first damage that opening refuses, and the cut that removes it.
    Damaged(RepairPlan),
}

/// Find the first damage that opening the log refuses, and the cut that removes it.
pub fn plan(dir: &Path) -> Result<Finding, LogError> {
    let files = list_segments(dir)?;
    let count = files.len();
    let mut next = 0u64;
    let mut log_id = None;
    for (i, (base, path)) in files.iter().enumerate() {
        let last = i + 1 == count;
        let cut = |pos: u64, reason: String, kept: u64| -> Result<RepairPlan, LogError> {
            let later: Vec<PathBuf> = files[i + 1..].iter().map(|(_, p)| p.clone()).collect();
            let mut removed_bytes = file_len(path)? - pos;
            let mut removed_records = count_records(path, pos.max(HEADER_LEN as u64))?;
            for p in &later {
                removed_bytes += file_len(p)?;
                removed_records += count_records(p, HEADER_LEN as u64)?;
            }
            Ok(RepairPlan {
                cut_file: path.clone(),
                cut_at: pos,
                reason,
                kept_events: kept,
                removed_files: later,
                removed_bytes,
                removed_records,
            })
        };
        if *base != next {
            return cut(
                0,
                format!("segment starts at offset {base}, but the log before it ends at {next}"),
                next,
            )
            .map(Finding::Damaged);
        }
        let scanned = scan_segment(path, *base, None)?;
        let Some(header) = scanned.header else {
            if last && scanned.file_len <= HEADER_LEN as u64 {
                // An unfinished new segment: opening the log rewrites its header.
                break;
            }
            let reason = scanned
                .problem
                .map_or_else(|| "bad header".to_owned(), |p| p.reason);
            return cut(0, reason, next).map(Finding::Damaged);
        };
        if header.base_offset != *base {
            return cut(
                0,
                "header and file name disagree on the base offset".into(),
                next,
            )
            .map(Finding::Damaged);
        }
        match log_id {
            Some(id) if id != header.log_id => {
                return cut(
                    0,
                    "segment belongs to another log (log id differs)".into(),
                    next,
                )
                .map(Finding::Damaged)
            }
            _ => log_id = Some(header.log_id),
        }
        if let Some(p) = scanned.problem {
            if !last || p.followed_by.is_some() {
                return cut(p.pos, p.describe(), scanned.end).map(Finding::Damaged);
            }
        }
        next = scanned.end;
    }
    Ok(Finding::Readable { events: next })
}

/// Plan the cut and, with `apply`, make it: copy the cut file and move the later ones
/// into `repair-<time>/`, cut, and sync. Refuses while a server holds the log.
pub fn repair(dir: &Path, apply: bool) -> Result<RepairOutcome, LogError> {
    if !dir.is_dir() {
        return Err(LogError::Io {
            path: dir.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no event log here"),
        });
    }
    let _lock = take_lock(dir)?;
    let plan = match plan(dir)? {
        Finding::Readable { events } => return Ok(RepairOutcome::Healthy { events }),
        Finding::Damaged(plan) => plan,
    };
    if !apply {
        return Ok(RepairOutcome::Planned(plan));
    }
    let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%S%.3fZ");
    let backup = dir.join(format!("repair-{stamp}"));
    std::fs::create_dir(&backup).map_err(io_err(&backup))?;
    let name = |p: &Path| backup.join(p.file_name().expect("segment files have names"));
    for p in &plan.removed_files {
        std::fs::rename(p, name(p)).map_err(io_err(p))?;
    }
    // The written mark goes with the cut records: it names how far the log had been
    // written, and the next start would report the removed events as lost.
    let mark = dir.join(WRITTEN_MARK);
    if mark.exists() {
        std::fs::rename(&mark, name(&mark)).map_err(io_err(&mark))?;
    }
    if plan.cut_at == 0 {
        std::fs::rename(&plan.cut_file, name(&plan.cut_file)).map_err(io_err(&plan.cut_file))?;
    } else {
        std::fs::copy(&plan.cut_file, name(&plan.cut_file)).map_err(io_err(&plan.cut_file))?;
        File::open(name(&plan.cut_file))
            .and_then(|f| f.sync_all())
            .map_err(io_err(&backup))?;
    }
    File::open(&backup)
        .and_then(|f| f.sync_all())
        .map_err(io_err(&backup))?;
    if plan.cut_at > 0 {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&plan.cut_file)
            .map_err(io_err(&plan.cut_file))?;
        f.set_len(plan.cut_at).map_err(io_err(&plan.cut_file))?;
        f.sync_all().map_err(io_err(&plan.cut_file))?;
    }
    File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(io_err(dir))?;
    Ok(RepairOutcome::Repaired { plan, backup })
}
