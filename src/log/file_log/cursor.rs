//! The cursor: a sequential reader over the durable part of the segments.

use std::os::unix::fs::FileExt;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::{io_err, Inner, Segment, READ_CHUNK};
use crate::domain::{LotId, RecordedEvent};
use crate::log::format::{self, Frame, HEADER_LEN};
use crate::log::{LogCursor, LogError};

/// Sequential reader over the durable part of the segments.
pub(super) struct FileCursor {
    inner: Arc<Inner>,
    next: u64,
    seg: Option<Arc<Segment>>,
    /// File position of the record with offset `next` in `seg` (or of an earlier one).
    pos: u64,
    buf: Vec<u8>,
    lots: rustc_hash::FxHashMap<Box<str>, LotId>,
}

impl FileCursor {
    pub(super) fn new(inner: Arc<Inner>, from: u64) -> FileCursor {
        FileCursor {
            inner,
            next: from,
            seg: None,
            pos: 0,
            buf: Vec::new(),
            lots: rustc_hash::FxHashMap::default(),
        }
    }

    fn locate(&mut self) {
        let segments = self.inner.segments.read().expect("segments lock");
        let i = segments
            .partition_point(|s| s.base <= self.next)
            .saturating_sub(1);
        if let Some(seg) = segments.get(i) {
            self.pos = seg.seek_pos(self.next);
            self.seg = Some(seg.clone());
        }
    }

    fn next_segment(&self, current: &Segment) -> Option<Arc<Segment>> {
        let segments = self.inner.segments.read().expect("segments lock");
        segments.iter().find(|s| s.base > current.base).cloned()
    }
}

impl LogCursor for FileCursor {
    fn next_batch(&mut self, max: usize) -> Result<Vec<RecordedEvent>, LogError> {
        let durable = self.inner.durable.borrow().end;
        let mut out = Vec::new();
        if self.seg.is_none() {
            self.locate();
        }
        while out.len() < max && self.next < durable {
            let Some(seg) = self.seg.clone() else { break };
            let seg_len = seg.len.load(Ordering::Acquire);
            if self.pos >= seg_len {
                if seg.end.load(Ordering::Acquire) <= self.next {
                    match self.next_segment(&seg) {
                        Some(n) => {
                            self.pos = HEADER_LEN as u64;
                            self.seg = Some(n);
                            continue;
                        }
                        None => break,
                    }
                }
                break;
            }
            let want = (seg_len - self.pos).min(READ_CHUNK as u64) as usize;
            self.buf.resize(want, 0);
            seg.file
                .read_exact_at(&mut self.buf, self.pos)
                .map_err(io_err(&seg.path))?;
            let mut at = 0usize;
            while out.len() < max {
                match format::next_frame(&self.buf[at..]) {
                    Frame::Record(payload, n) => {
                        let offset = format::payload_offset(payload);
                        if offset >= durable {
                            break;
                        }
                        if offset >= self.next {
                            let lots = &mut self.lots;
                            let event = format::decode_payload(payload, &mut |s| {
                                if let Some(id) = lots.get(s) {
                                    return id.clone();
                                }
                                let id = LotId::from_normalised(s);
                                lots.insert(s.into(), id.clone());
                                id
                            })
                            .map_err(|reason| LogError::Corrupt {
                                path: seg.path.clone(),
                                pos: self.pos + at as u64,
                                reason: reason.into(),
                            })?;
                            out.push(event);
                            self.next = offset + 1;
                        }
                        at += n;
                    }
                    Frame::Incomplete => break,
                    Frame::Corrupt(reason) => {
                        return Err(LogError::Corrupt {
                            path: seg.path.clone(),
                            pos: self.pos + at as u64,
                            reason: reason.into(),
                        })
                    }
                }
            }
            if at == 0 {
                break;
            }
            self.pos += at as u64;
        }
        Ok(out)
    }

    fn position(&self) -> u64 {
        self.next
    }
}
