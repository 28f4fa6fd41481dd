//! Recovery at open: scan every segment, decide what its damage means, and repair
//! only what is safe to repair (a torn tail of the newest segment, a header that never
//! reached the disk). The decision is [`decide`], a pure function of what the scan
//! found; the tests call it directly.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use uuid::Uuid;

use super::mark;
use super::writer::{create_segment, Active};
use super::{io_err, LogOptions, LotEnds, OpenMode, Segment, INDEX_EVERY, READ_CHUNK};
use crate::domain::SCHEMA_VERSION;
use crate::log::format::{self, Frame, Header, HEADER_LEN};
use crate::log::storage::Storage;
use crate::log::LogError;
/// What recovery found and did at open.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovery {
    pub segments: usize,
    pub events: u64,
    /// Bytes cut from the tail of the last segment (a torn or corrupt write).
    pub truncated_bytes: u64,
    /// Why the tail was cut, when it was.
    pub truncation_reason: Option<String>,
    /// A segment without a complete header that was rewritten.
    pub rewrote_header: bool,
    /// Events that had been written and synced (so acknowledged) but are not in the
    /// log any more: its end lies before the end its written mark records. Said at
    /// WARN; the log opens at what is there.
    pub lost_events: u64,
}

/// True when every byte of `path` from `pos` to the end is zero: the unused,
/// preallocated end of a segment rather than a damaged record.
fn zeros_from(path: &Path, pos: u64) -> Result<bool, LogError> {
    let file = File::open(path).map_err(io_err(path))?;
    let len = file.metadata().map_err(io_err(path))?.len();
    let mut buf = vec![0u8; READ_CHUNK];
    let mut at = pos;
    while at < len {
        let n = (len - at).min(READ_CHUNK as u64) as usize;
        file.read_exact_at(&mut buf[..n], at)
            .map_err(io_err(path))?;
        if buf[..n].iter().any(|b| *b != 0) {
            return Ok(false);
        }
        at += n as u64;
    }
    Ok(true)
}

/// Damage found while scanning a segment: where the records stop making sense.
#[derive(Debug, Clone)]
pub(in crate::log) struct Problem {
    pub(in crate::log) pos: u64,
    pub(in crate::log) reason: String,
    /// A whole, checksummed record found after the damage: (byte position, offset).
    /// When there is one the damage is not a torn tail: valid data follows it.
    pub(in crate::log) followed_by: Option<(u64, u64)>,
}

impl Problem {
    /// The reason, with the valid record that follows the damage when there is one.
    pub(in crate::log) fn describe(&self) -> String {
        match self.followed_by {
            Some((at, offset)) => format!(
                "{}; a valid record (offset {offset}) follows at byte {at}",
                self.reason
            ),
            None => self.reason.clone(),
        }
    }

    /// The error that refuses to open (or repair-less read) this segment.
    pub(in crate::log) fn refuse(&self, path: &Path) -> LogError {
        LogError::Corrupt {
            path: path.to_path_buf(),
            pos: self.pos,
            reason: self.describe(),
        }
    }
}

/// The result of scanning one segment file.
pub(in crate::log) struct Scanned {
    pub(in crate::log) header: Option<Header>,
    pub(in crate::log) file_len: u64,
    pub(in crate::log) valid_len: u64,
    pub(in crate::log) end: u64,
    pub(in crate::log) index: Vec<(u64, u64)>,
    pub(in crate::log) problem: Option<Problem>,
}

/// The first whole, checksummed record at or after byte `from` of `path` whose offset
/// is `expected` or later: evidence that damage at `from` is followed by valid data.
/// Looks at every byte position (a length in range and a matching CRC32C are needed,
/// so random bytes and zeros are passed over quickly).
fn find_record_after(
    path: &Path,
    from: u64,
    expected: u64,
) -> Result<Option<(u64, u64)>, LogError> {
    let file = File::open(path).map_err(io_err(path))?;
    let len = file.metadata().map_err(io_err(path))?.len();
    let overlap = (format::FRAME_LEN + format::MAX_PAYLOAD) as u64;
    let mut buf = vec![0u8; READ_CHUNK + overlap as usize];
    let mut at = from;
    while at < len {
        let n = (len - at).min(buf.len() as u64) as usize;
        file.read_exact_at(&mut buf[..n], at)
            .map_err(io_err(path))?;
        // Positions whose frame may run past this chunk are looked at in the next one,
        // unless this chunk reaches the end of the file.
        let last_chunk = at + n as u64 == len;
        let scan = if last_chunk { n } else { n - overlap as usize };
        for i in 0..scan {
            if let Frame::Record(payload, _) = format::next_frame(&buf[i..n]) {
                let offset = format::payload_offset(payload);
                if offset >= expected {
                    return Ok(Some((at + i as u64, offset)));
                }
            }
        }
        if last_chunk {
            break;
        }
        at += scan as u64;
    }
    Ok(None)
}

/// Scan segment `base` at `path`: its header, its whole records in order, and where
/// and why they stop when something other than preallocated zeros follows them.
/// `lots`, when given, learns the offset of each lot's last whole record.
pub(in crate::log) fn scan_segment(
    path: &Path,
    base: u64,
    lots: Option<&mut LotEnds>,
) -> Result<Scanned, LogError> {
    let file = File::open(path).map_err(io_err(path))?;
    let file_len = file.metadata().map_err(io_err(path))?.len();
    let mut head = vec![0u8; HEADER_LEN.min(file_len as usize)];
    file.read_exact_at(&mut head, 0).map_err(io_err(path))?;
    let header = match format::decode_header(&head) {
        Ok(h) => h,
        Err(format::HeaderError::Version(found)) if found > format::FORMAT_VERSION => {
            return Err(LogError::NewerFormat {
                path: path.to_path_buf(),
                what: "segment format",
                found,
                reads: format::FORMAT_VERSION,
            })
        }
        Err(e) => {
            return Ok(Scanned {
                header: None,
                file_len,
                valid_len: 0,
                end: base,
                index: Vec::new(),
                problem: Some(Problem {
                    pos: 0,
                    reason: e.to_string(),
                    followed_by: None,
                }),
            })
        }
    };
    let walk = walk_records(&file, path, base, file_len, lots)?;
    let problem = match walk.stop {
        // The unused, preallocated end of the segment.
        Some((at, _)) if zeros_from(path, at)? => None,
        Some((at, reason)) => Some(Problem {
            pos: at,
            reason,
            followed_by: find_record_after(path, at + 1, walk.next)?,
        }),
        None => None,
    };
    Ok(Scanned {
        header: Some(header),
        file_len,
        valid_len: walk.pos,
        end: walk.next,
        index: walk.index,
        problem,
    })
}

/// How far the whole records of a segment reach.
struct Walk {
    /// Byte position after the last whole record.
    pos: u64,
    /// Offset the next record would hold.
    next: u64,
    index: Vec<(u64, u64)>,
    /// Where and why the records stop before the end of the file.
    stop: Option<(u64, String)>,
}

impl Walk {
    fn stopped(self, at: u64, reason: String) -> Walk {
        Walk {
            pos: at,
            stop: Some((at, reason)),
            ..self
        }
    }
}

/// Read the records after the header of segment `base` in order, up to the end of
/// the file or the first thing that is not the next whole record.
fn walk_records(
    file: &File,
    path: &Path,
    base: u64,
    file_len: u64,
    mut lots: Option<&mut LotEnds>,
) -> Result<Walk, LogError> {
    let mut walk = Walk {
        pos: HEADER_LEN as u64,
        next: base,
        index: vec![(base, HEADER_LEN as u64)],
        stop: None,
    };
    let mut buf = Vec::with_capacity(READ_CHUNK);
    while walk.pos < file_len {
        let want = (file_len - walk.pos).min(READ_CHUNK as u64) as usize;
        buf.resize(want, 0);
        file.read_exact_at(&mut buf, walk.pos)
            .map_err(io_err(path))?;
        let mut at = 0usize;
        loop {
            let here = walk.pos + at as u64;
            match format::next_frame(&buf[at..]) {
                Frame::Record(payload, n) => {
                    let schema = format::payload_schema(payload);
                    if schema > SCHEMA_VERSION {
                        return Err(LogError::NewerFormat {
                            path: path.to_path_buf(),
                            what: "event schema",
                            found: schema.into(),
                            reads: SCHEMA_VERSION.into(),
                        });
                    }
                    let offset = format::payload_offset(payload);
                    let next = walk.next;
                    if offset != next {
                        let reason = format!("record holds offset {offset}, expected {next}");
                        return Ok(walk.stopped(here, reason));
                    }
                    if next.is_multiple_of(INDEX_EVERY) && next != base {
                        walk.index.push((next, here));
                    }
                    if let Some(lots) = lots.as_deref_mut() {
                        super::note_lot_end(lots, format::payload_lot(payload), offset);
                    }
                    walk.next += 1;
                    at += n;
                }
                // A frame longer than what is left of the file: torn write.
                Frame::Incomplete if at == 0 => {
                    return Ok(walk.stopped(here, "incomplete record at end of file".into()));
                }
                Frame::Incomplete => break,
                Frame::Corrupt(reason) => {
                    return Ok(walk.stopped(here, reason.to_string()));
                }
            }
        }
        walk.pos += at as u64;
    }
    Ok(walk)
}

/// The directory's writer lock (`LOCK`), held while the returned file is open.
pub(in crate::log) fn take_lock(dir: &Path) -> Result<File, LogError> {
    let lock_path = dir.join("LOCK");
    let f = File::create(&lock_path).map_err(io_err(&lock_path))?;
    match f.try_lock() {
        Ok(()) => Ok(f),
        Err(std::fs::TryLockError::WouldBlock) => Err(LogError::Locked(dir.to_path_buf())),
        Err(std::fs::TryLockError::Error(e)) => Err(io_err(&lock_path)(e)),
    }
}

/// Segment files of a directory, sorted by base offset.
pub(in crate::log) fn list_segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, LogError> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(stem) = name.strip_suffix(".seg") else {
            continue;
        };
        if stem.len() == 20 {
            if let Ok(base) = stem.parse::<u64>() {
                out.push((base, entry.path()));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// What the scan of one segment means for opening the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(in crate::log) enum Verdict {
    /// Whole records up to byte `len`, then nothing or preallocated zeros: open as is.
    Keep { len: u64 },
    /// The newest segment ends in a torn write with nothing valid after it: its
    /// records end at byte `len`; a writer cuts the rest, a reader stops there.
    CutTail { len: u64, reason: String },
    /// The newest segment's header never reached the disk, so it holds no records:
    /// a writer writes the header again, a reader stops before the segment.
    RewriteHeader { reason: String },
}

/// The repair decision for segment `base` at `path`, given its scan, where the log
/// before it ends (`expected`), whether it is the newest segment (`last`) and the log
/// id of the segments before it.
///
/// Recovery never cuts acknowledged records by itself: damage in an older segment, or
/// damage followed by a valid record, is refused with the file and byte position
/// (`parkade repair-log` is the operator's explicit cut).
pub(in crate::log) fn decide(
    path: &Path,
    base: u64,
    expected: u64,
    scanned: &Scanned,
    last: bool,
    log_id: Option<Uuid>,
) -> Result<Verdict, LogError> {
    let corrupt = |pos: u64, reason: String| LogError::Corrupt {
        path: path.to_path_buf(),
        pos,
        reason,
    };
    if base != expected {
        return Err(corrupt(
            0,
            format!("segment starts at offset {base}, but the log before it ends at {expected}"),
        ));
    }
    let Some(header) = &scanned.header else {
        let problem = scanned
            .problem
            .as_ref()
            .expect("a missing header is reported");
        // A header that never made it to disk can only belong to the newest segment,
        // created just before a crash, and then holds no records.
        if !last || scanned.file_len > HEADER_LEN as u64 {
            return Err(problem.refuse(path));
        }
        return Ok(Verdict::RewriteHeader {
            reason: problem.reason.clone(),
        });
    };
    if header.base_offset != base {
        return Err(corrupt(
            16,
            format!(
                "header says base offset {}, file name says {base}",
                header.base_offset
            ),
        ));
    }
    if log_id.is_some_and(|id| id != header.log_id) {
        return Err(corrupt(
            24,
            "segment belongs to another log (log id differs)".into(),
        ));
    }
    match &scanned.problem {
        None => Ok(Verdict::Keep {
            len: scanned.valid_len,
        }),
        // Only the newest segment can end in a torn write, and only when nothing valid
        // follows the damage.
        Some(problem) if !last || problem.followed_by.is_some() => Err(problem.refuse(path)),
        Some(problem) => Ok(Verdict::CutTail {
            len: problem.pos,
            reason: problem.reason.clone(),
        }),
    }
}

/// The log as recovery leaves it.
pub(super) struct Recovered {
    pub(super) segments: Vec<Arc<Segment>>,
    /// The newest segment, open for the writer (none for a reader).
    pub(super) active: Option<Active>,
    pub(super) log_id: Uuid,
    /// One past the last offset in the log.
    pub(super) end: u64,
    pub(super) recovery: Recovery,
    /// The offset of each lot's last event (empty when read-only).
    pub(super) lots: LotEnds,
}

/// Scan the segments of `dir`, decide on each, and (for the writer) repair the newest
/// one and open it for appending, or create the first segment of a new log.
pub(super) fn recover(dir: &Path, opts: &LogOptions) -> Result<Recovered, LogError> {
    let read_only = opts.mode == OpenMode::ReadOnly;
    let files = if dir.exists() {
        list_segments(dir)?
    } else {
        Vec::new()
    };
    let written = mark::read(dir);
    let mut recovery = Recovery::default();
    let mut segments = Vec::new();
    let mut active = None;
    let mut log_id: Option<Uuid> = None;
    let mut next = 0u64;
    let mut lots = LotEnds::default();
    let count = files.len();
    for (i, (base, path)) in files.into_iter().enumerate() {
        let last = i + 1 == count;
        let scanned = scan_segment(&path, base, (!read_only).then_some(&mut lots))?;
        let verdict = decide(&path, base, next, &scanned, last, log_id)?;
        if let Some(header) = &scanned.header {
            log_id = Some(header.log_id);
        }
        next = scanned.end;
        if !read_only && last {
            let id = *log_id.get_or_insert_with(|| opts.log_id.unwrap_or_else(Uuid::now_v7));
            let storage = opts.storage.as_ref();
            let reopened = reopen_newest(path, base, verdict, scanned, storage, id, &mut recovery)?;
            segments.push(reopened.seg.clone());
            active = Some(reopened);
            continue;
        }
        let len = match verdict {
            Verdict::Keep { len } | Verdict::CutTail { len, .. } => len,
            Verdict::RewriteHeader { .. } => break,
        };
        let seg = Segment::open(path, base, len, scanned.end, scanned.index)?;
        segments.push(Arc::new(seg));
    }
    let log_id = match log_id {
        Some(id) => id,
        None if read_only => Uuid::nil(),
        None => opts.log_id.unwrap_or_else(Uuid::now_v7),
    };
    if let Some(wanted) = opts.log_id.filter(|w| *w != log_id && !read_only) {
        return Err(LogError::OtherLog {
            dir: dir.to_path_buf(),
            found: log_id,
            wanted,
        });
    }
    if active.is_none() && !read_only {
        let first = create_segment(dir, opts.storage.as_ref(), 0, log_id)?;
        segments.push(first.seg.clone());
        active = Some(first);
    }
    recovery.segments = segments.len();
    recovery.events = next;
    recovery.lost_events = lost_tail(written, dir, next, &segments);
    Ok(Recovered {
        segments,
        active,
        log_id,
        end: next,
        recovery,
        lots,
    })
}

/// How many events the written mark (read before the scan: a server writing beside a
/// reader only moves it on after its records are durable) says were synced past `end`,
/// the end recovery found; said at WARN, naming where the records stop and where they were written to.
fn lost_tail(written: Option<mark::Mark>, dir: &Path, end: u64, segments: &[Arc<Segment>]) -> u64 {
    let Some(mark) = written else {
        return 0;
    };
    if mark.end <= end {
        return 0;
    }
    let lost = mark.end - end;
    match segments.iter().find(|s| s.base == mark.segment) {
        Some(seg) => tracing::warn!(
            path = %seg.path.display(), ends_at = seg.len.load(Ordering::Acquire), written_to = mark.len,
            log_end = end, written_end = mark.end, lost,
            "recovery ended the newest segment before its written length: {lost} acknowledged events are gone from the log's end (zeroed or cut after they were synced); the log opens at offset {end}"
        ),
        None => tracing::warn!(
            dir = %dir.display(), segment = mark.segment, log_end = end, written_end = mark.end, lost,
            "the segment the log was last written to is missing: {lost} acknowledged events are gone from the log's end; the log opens at offset {end}"
        ),
    }
    lost
}

/// Carry out `verdict` on the newest segment and open it for the writer.
fn reopen_newest(
    path: PathBuf,
    base: u64,
    verdict: Verdict,
    scanned: Scanned,
    storage: &dyn Storage,
    log_id: Uuid,
    recovery: &mut Recovery,
) -> Result<Active, LogError> {
    let mut file = storage.open_writable(&path).map_err(io_err(&path))?;
    let mut index = scanned.index;
    // After a repair the file ends at the last good record; otherwise it keeps the
    // zeros written ahead of the records.
    let (len, allocated) = match verdict {
        Verdict::Keep { len } => (len, scanned.file_len),
        Verdict::CutTail { len, reason } => {
            tracing::warn!(
                path = %path.display(), at = len, bytes = scanned.file_len - len, %reason,
                "cutting the log's torn tail (an unfinished last write: nothing valid follows it) back to the last whole record"
            );
            recovery.truncated_bytes = scanned.file_len - len;
            recovery.truncation_reason = Some(reason);
            file.set_len(len).map_err(io_err(&path))?;
            (len, len)
        }
        Verdict::RewriteHeader { reason } => {
            tracing::warn!(path = %path.display(), %reason, "rewriting the incomplete header of the newest segment");
            recovery.rewrote_header = true;
            file.set_len(0).map_err(io_err(&path))?;
            let header = format::encode_header(&Header {
                base_offset: base,
                log_id,
            });
            file.write_all_at(&header, 0).map_err(io_err(&path))?;
            index = vec![(base, HEADER_LEN as u64)];
            (HEADER_LEN as u64, HEADER_LEN as u64)
        }
    };
    file.sync_data().map_err(io_err(&path))?;
    let seg = Arc::new(Segment::open(path, base, len, scanned.end, index)?);
    Ok(Active {
        file,
        seg,
        len,
        allocated,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PATH: &str = "/log/00000000000000000100.seg";

    fn header(base: u64, log_id: Uuid) -> Option<Header> {
        Some(Header {
            base_offset: base,
            log_id,
        })
    }

    /// A scan of segment 100 holding offsets 100..110 in bytes up to 1,000 of a
    /// 2,000-byte file, with `problem` at byte 1,000 when given.
    fn scanned(log_id: Uuid, problem: Option<Problem>) -> Scanned {
        Scanned {
            header: header(100, log_id),
            file_len: 2_000,
            valid_len: 1_000,
            end: 110,
            index: vec![(100, HEADER_LEN as u64)],
            problem,
        }
    }

    fn torn(followed_by: Option<(u64, u64)>) -> Option<Problem> {
        Some(Problem {
            pos: 1_000,
            reason: "checksum mismatch".into(),
            followed_by,
        })
    }

    fn decide_at(scanned: &Scanned, last: bool, log_id: Option<Uuid>) -> Result<Verdict, LogError> {
        decide(Path::new(PATH), 100, 100, scanned, last, log_id)
    }

    /// The byte position a refusal names.
    fn refused_at(result: Result<Verdict, LogError>) -> u64 {
        match result {
            Err(LogError::Corrupt { pos, .. }) => pos,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn a_clean_segment_is_kept_up_to_its_last_record() {
        let id = Uuid::now_v7();
        for last in [false, true] {
            let verdict = decide_at(&scanned(id, None), last, Some(id)).unwrap();
            assert_eq!(verdict, Verdict::Keep { len: 1_000 });
        }
    }

    #[test]
    fn a_torn_tail_of_the_newest_segment_is_cut_at_the_damage() {
        let id = Uuid::now_v7();
        let verdict = decide_at(&scanned(id, torn(None)), true, None).unwrap();
        assert_eq!(
            verdict,
            Verdict::CutTail {
                len: 1_000,
                reason: "checksum mismatch".into()
            }
        );
    }

    #[test]
    fn damage_in_an_older_segment_is_refused_not_cut() {
        let id = Uuid::now_v7();
        assert_eq!(
            refused_at(decide_at(&scanned(id, torn(None)), false, Some(id))),
            1_000
        );
    }

    #[test]
    fn damage_followed_by_a_valid_record_is_refused_even_in_the_newest_segment() {
        let id = Uuid::now_v7();
        let result = decide_at(&scanned(id, torn(Some((1_500, 110)))), true, Some(id));
        match result {
            Err(LogError::Corrupt { pos, reason, .. }) => {
                assert_eq!(pos, 1_000);
                assert!(
                    reason.contains("offset 110") && reason.contains("byte 1500"),
                    "{reason}"
                );
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn a_missing_header_is_rewritten_only_in_an_empty_newest_segment() {
        let missing = |file_len| Scanned {
            header: None,
            file_len,
            valid_len: 0,
            end: 100,
            index: Vec::new(),
            problem: Some(Problem {
                pos: 0,
                reason: "short header".into(),
                followed_by: None,
            }),
        };
        let short = HEADER_LEN as u64 - 3;
        assert_eq!(
            decide_at(&missing(short), true, None).unwrap(),
            Verdict::RewriteHeader {
                reason: "short header".into()
            }
        );
        assert_eq!(refused_at(decide_at(&missing(short), false, None)), 0);
        // More bytes than a header: records may follow, so nothing is rewritten.
        assert_eq!(refused_at(decide_at(&missing(4_096), true, None)), 0);
    }

    #[test]
    fn segments_that_do_not_follow_on_are_refused() {
        let id = Uuid::now_v7();
        let clean = scanned(id, None);
        let gap = decide(Path::new(PATH), 100, 90, &clean, true, Some(id));
        assert_eq!(refused_at(gap), 0);
        let other_log = decide_at(&clean, true, Some(Uuid::now_v7()));
        assert_eq!(refused_at(other_log), 24);
        let renamed = Scanned {
            header: header(200, id),
            ..scanned(id, None)
        };
        assert_eq!(refused_at(decide_at(&renamed, true, Some(id))), 16);
    }
}
