//! The written mark: how far the log had been written and synced, so that recovery can
//! tell a tail of acknowledged records that went missing (zeroed, cut, a segment
//! removed) from the zeros written ahead of the records, which look the same.
//!
//! The writer thread rewrites the mark after each sync, with one positional write and
//! no sync of its own: what it records was durable before it was written, so the mark
//! can lag the log (after a crash, by the last few commits) but never run ahead of it.
//! A mark that lags hides nothing that was there; one that is ahead of what recovery
//! found names acknowledged events that are gone.

use std::path::{Path, PathBuf};

use super::io_err;
use crate::log::storage::{Storage, WritableFile};
use crate::log::LogError;

/// The mark's file, beside the segments.
pub(in crate::log) const FILE: &str = "written.mark";

const MAGIC: &[u8; 4] = b"PKWM";
const LEN: usize = 4 + 8 * 3 + 4;

/// How far the log had been written and synced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Mark {
    /// One past the last synced offset.
    pub(super) end: u64,
    /// The base offset of the segment those records ended in.
    pub(super) segment: u64,
    /// That segment's length in bytes up to the end of its records.
    pub(super) len: u64,
}

impl Mark {
    fn encode(&self) -> [u8; LEN] {
        let mut b = [0u8; LEN];
        b[..4].copy_from_slice(MAGIC);
        b[4..12].copy_from_slice(&self.end.to_le_bytes());
        b[12..20].copy_from_slice(&self.segment.to_le_bytes());
        b[20..28].copy_from_slice(&self.len.to_le_bytes());
        let crc = crc32c::crc32c(&b[..28]);
        b[28..].copy_from_slice(&crc.to_le_bytes());
        b
    }

    fn decode(b: &[u8]) -> Option<Mark> {
        if b.len() < LEN || &b[..4] != MAGIC {
            return None;
        }
        let crc = u32::from_le_bytes(b[28..32].try_into().ok()?);
        if crc32c::crc32c(&b[..28]) != crc {
            return None;
        }
        let word = |at: usize| u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"));
        Some(Mark {
            end: word(4),
            segment: word(12),
            len: word(20),
        })
    }
}

/// The mark in `dir`, when there is a whole one. A missing or unreadable mark (a log
/// older than marks, a write torn by a crash) says nothing, and is not an error.
pub(super) fn read(dir: &Path) -> Option<Mark> {
    let path = dir.join(FILE);
    match std::fs::read(&path) {
        Ok(bytes) => {
            let mark = Mark::decode(&bytes);
            if mark.is_none() {
                tracing::debug!(path = %path.display(), "the log's written mark is not whole; ignoring it");
            }
            mark
        }
        Err(_) => None,
    }
}

/// The writer's handle on the mark.
pub(super) struct Marker {
    path: PathBuf,
    file: Option<Box<dyn WritableFile>>,
}

impl Marker {
    pub(super) fn open(dir: &Path, storage: &dyn Storage) -> Marker {
        let path = dir.join(FILE);
        let file = match storage.open_writable(&path) {
            Ok(f) => Some(f),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot write the log's written mark; a lost tail of acknowledged events would not be reported at the next start");
                None
            }
        };
        Marker { path, file }
    }

    /// Record `mark`; called only after the records it names are synced. A failure is
    /// said once and then the mark is left alone: it is evidence, not durability.
    pub(super) fn record(&mut self, mark: Mark) {
        let Some(file) = &mut self.file else { return };
        if let Err(e) = file.write_all_at(&mark.encode(), 0) {
            let e: LogError = io_err(&self.path)(e);
            tracing::warn!(error = %e, "cannot write the log's written mark; a lost tail of acknowledged events would not be reported at the next start");
            self.file = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mark_reads_back_and_a_damaged_one_says_nothing() {
        let m = Mark {
            end: 1_234,
            segment: 1_000,
            len: 56_789,
        };
        let b = m.encode();
        assert_eq!(Mark::decode(&b), Some(m));
        for i in 0..LEN {
            let mut bad = b;
            bad[i] ^= 1;
            assert_eq!(Mark::decode(&bad), None, "byte {i} flipped");
        }
        assert_eq!(Mark::decode(&b[..LEN - 1]), None);
    }
}
