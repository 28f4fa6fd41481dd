//! `parkade log copy`: an embedded log into a JetStream stream, or a stream into an
//! embedded log, keeping every event's offset, id, record time and the log id (so the
//! read models' checkpoints go on naming the same log). Resumable: a copy that stopped
//! goes on from where the target ends, after checking the target's last event is the
//! source's event at that offset. The source must not be written meanwhile: the
//! embedded log is opened as its one writer (a running server refuses the copy), and
//! each copied message lands only at its own stream sequence (a server appending to the
//! stream at the same time stops the copy).

use std::path::Path;

use super::jetstream::{JetStreamOptions, Stream};
use super::{EventLog, FileLog, LogError, LogOptions};
use crate::domain::RecordedEvent;

/// Events read and written at once.
const COPY_BATCH: usize = 8_192;
/// Messages published before their acknowledgements are awaited.
const PUBLISH_WINDOW: usize = 1_024;

/// What a copy did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Copied {
    /// Events the target held already (a resumed copy).
    pub resumed_at: u64,
    /// Events copied now.
    pub copied: u64,
    /// Events in the target now (all of the source's).
    pub end: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error(transparent)]
    Log(#[from] LogError),
    #[error("no event log in {0}")]
    NoSource(String),
    #[error(
        "the target holds {target} events, the source only {held}: it is not a copy of this source"
    )]
    TargetAhead { target: u64, held: u64 },
    #[error("the target's event at offset {offset} is {target}, the source's {theirs}: the target is a copy of something else")]
    Diverged {
        offset: u64,
        target: uuid::Uuid,
        theirs: uuid::Uuid,
    },
}

impl From<super::jetstream::JetStreamError> for CopyError {
    fn from(e: super::jetstream::JetStreamError) -> Self {
        CopyError::Log(e.into())
    }
}

impl Copied {
    /// A copy that found `target_end` events in the target and left `source_end`.
    fn from_to(target_end: u64, source_end: u64) -> Copied {
        Copied {
            resumed_at: target_end,
            copied: source_end - target_end,
            end: source_end,
        }
    }
}

/// The source ended at `at`, before the `end` it said it had.
fn ended_early(at: u64, end: u64) -> CopyError {
    LogError::ShortRead { read: at, end }.into()
}

/// Check a resumed copy: the target's last event is the source's at that offset.
fn check_resume(
    target_end: u64,
    source_end: u64,
    target_last: Option<&RecordedEvent>,
    source_last: Option<&RecordedEvent>,
) -> Result<(), CopyError> {
    if target_end > source_end {
        return Err(CopyError::TargetAhead {
            target: target_end,
            held: source_end,
        });
    }
    if let (Some(t), Some(s)) = (target_last, source_last) {
        if t.event.event_id != s.event.event_id || t.offset != s.offset {
            return Err(CopyError::Diverged {
                offset: t.offset,
                target: t.event.event_id,
                theirs: s.event.event_id,
            });
        }
    }
    Ok(())
}

/// The event at `offset` of an embedded log.
fn event_at(log: &FileLog, offset: u64) -> Result<Option<RecordedEvent>, LogError> {
    Ok(log.cursor(offset).next_batch(1)?.pop())
}

/// Copy the embedded log in `dir` into the stream (created with the log's id when
/// missing). `progress(done, total)` is called after each batch.
pub async fn embedded_to_jetstream(
    dir: &Path,
    options: &JetStreamOptions,
    mut progress: impl FnMut(u64, u64),
) -> Result<Copied, CopyError> {
    if !dir.exists() || super::file_log::recovery::list_segments(dir)?.is_empty() {
        return Err(CopyError::NoSource(dir.display().to_string()));
    }
    // As its one writer: a running server on it refuses the copy (`Locked`).
    let log = FileLog::open(dir, LogOptions::default())?;
    let stream = Stream::connect(options, Some(log.log_id())).await?;
    let source_end = log.durable_end();
    let target_end = stream.end().await?;
    let target_last = match target_end {
        0 => None,
        n => stream.read(n - 1, 1).await?.pop(),
    };
    let source_last = match target_end {
        0 => None,
        n => event_at(&log, n - 1)?,
    };
    check_resume(
        target_end,
        source_end,
        target_last.as_ref(),
        source_last.as_ref(),
    )?;
    let mut at = target_end;
    let mut cursor = log.cursor(at);
    progress(at, source_end);
    while at < source_end {
        let batch = cursor.next_batch(COPY_BATCH)?;
        if batch.is_empty() {
            return Err(ended_early(at, source_end));
        }
        stream.append_copies(&batch, PUBLISH_WINDOW).await?;
        at += batch.len() as u64;
        progress(at, source_end);
    }
    log.close();
    Ok(Copied::from_to(target_end, source_end))
}

/// Copy the stream (which must exist) into an embedded log in `dir` (created with the
/// stream's log id when missing; an existing log there must be a copy of it).
pub async fn jetstream_to_embedded(
    options: &JetStreamOptions,
    dir: &Path,
    mut progress: impl FnMut(u64, u64),
) -> Result<Copied, CopyError> {
    let stream = Stream::connect_existing(options).await?;
    let log = FileLog::open(
        dir,
        LogOptions {
            log_id: Some(stream.log_id()),
            ..LogOptions::default()
        },
    )?;
    let source_end = stream.end().await?;
    let target_end = log.durable_end();
    let (target_last, source_last) = match target_end {
        0 => (None, None),
        n => (event_at(&log, n - 1)?, stream.read(n - 1, 1).await?.pop()),
    };
    check_resume(
        target_end,
        source_end,
        target_last.as_ref(),
        source_last.as_ref(),
    )?;
    let mut at = target_end;
    progress(at, source_end);
    while at < source_end {
        let batch = stream.read(at, COPY_BATCH).await?;
        if batch.is_empty() {
            return Err(ended_early(at, source_end));
        }
        log.append_copy(&batch)?;
        at += batch.len() as u64;
        log.wait_durable(at).await?;
        progress(at, source_end);
    }
    log.close();
    Ok(Copied::from_to(target_end, source_end))
}
