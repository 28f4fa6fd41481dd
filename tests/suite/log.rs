//! The embedded event log: recovery of torn and corrupt tails, empty segments, group
//! commit, fail-stop on a failed sync, reads and subscriptions across segments.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use parkade::domain::{LotEvent, LotId, NewEvent, Timestamp};
use parkade::log::{format, EventLog, FileLog, LogError, LogOptions, OpenMode, Subscription};

use crate::common;

fn event(i: u64) -> NewEvent {
    NewEvent {
        lot_id: LotId::parse(&format!("lot-{}", i % 3)).unwrap(),
        lot_seq: i + 1,
        event_id: uuid::Uuid::now_v7(),
        client_event_id: i.is_multiple_of(2),
        occurred_at: Timestamp::from_micros(1_764_234_000_000_000 + i as i64),
        event: LotEvent::VehicleArrived,
        occupancy: i as u32 + 1,
        capacity: 1000,
    }
}

async fn write_events(dir: &Path, n: u64, opts: LogOptions) -> FileLog {
    let log = FileLog::open(dir, opts).unwrap();
    for i in 0..n {
        // One write per event, so small segments roll between them.
        log.append_any(&[event(i)]).unwrap();
        log.wait_durable(i + 1).await.unwrap();
    }
    log
}

fn read_all(log: &dyn EventLog) -> Vec<u64> {
    let mut c = log.cursor(0);
    let mut out = Vec::new();
    loop {
        let b = c.next_batch(7).unwrap();
        if b.is_empty() {
            return out;
        }
        out.extend(b.iter().map(|e| e.offset));
    }
}

/// Options with segments of `bytes` (small ones roll often).
fn segments_of(bytes: u64) -> LogOptions {
    LogOptions {
        segment_bytes: bytes,
        ..LogOptions::default()
    }
}

fn segments(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    v.sort();
    v
}

/// File positions where each record of a segment ends.
fn record_ends(path: &Path) -> Vec<u64> {
    let bytes = std::fs::read(path).unwrap();
    let mut at = format::HEADER_LEN;
    let mut ends = Vec::new();
    while let format::Frame::Record(_, n) = format::next_frame(&bytes[at..]) {
        at += n;
        ends.push(at as u64);
    }
    ends
}

#[tokio::test]
async fn a_torn_tail_is_truncated_to_the_last_good_record() {
    let dir = common::data_dir();
    write_events(dir.path(), 10, LogOptions::default())
        .await
        .close();
    let seg = segments(dir.path()).pop().unwrap();
    let ends = record_ends(&seg);
    assert_eq!(ends.len(), 10);
    // The file ends in the middle of the last record, as after a crash mid-write.
    let torn = std::fs::OpenOptions::new().write(true).open(&seg).unwrap();
    torn.set_len(ends[8] + 20).unwrap();

    let log = FileLog::open(dir.path(), LogOptions::default()).unwrap();
    let rec = log.recovery().clone();
    assert_eq!(rec.events, 9);
    assert!(rec.truncated_bytes > 0, "{rec:?}");
    assert_eq!(read_all(&log), (0..9).collect::<Vec<_>>());
    // The log goes on from the last good record.
    assert_eq!(log.append_any(&[event(9)]).unwrap(), 9);
    log.wait_durable(10).await.unwrap();
    log.close();
    let log = FileLog::open(dir.path(), LogOptions::default()).unwrap();
    assert_eq!(log.recovery().truncated_bytes, 0);
    assert_eq!(read_all(&log).len(), 10);
}

#[tokio::test]
async fn the_zeroed_space_ahead_of_the_records_is_a_clean_end() {
    let dir = common::data_dir();
    write_events(dir.path(), 10, LogOptions::default())
        .await
        .close();
    let seg = segments(dir.path()).pop().unwrap();
    let len = std::fs::metadata(&seg).unwrap().len();
    assert!(
        len > record_ends(&seg)[9],
        "the segment is preallocated with zeros"
    );
    let log = FileLog::open(dir.path(), LogOptions::default()).unwrap();
    assert_eq!(log.recovery().truncated_bytes, 0);
    assert_eq!(log.recovery().events, 10);
    assert_eq!(log.recovery().lost_events, 0);
}

#[tokio::test]
async fn a_zeroed_tail_of_acknowledged_records_is_reported_lost() {
    let dir = common::data_dir();
    write_events(dir.path(), 10, LogOptions::default())
        .await
        .close();
    let seg = segments(dir.path()).pop().unwrap();
    let ends = record_ends(&seg);
    // The last three records, synced and acknowledged, zeroed: they read as the zeros
    // written ahead of the records.
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes[ends[6] as usize..ends[9] as usize].fill(0);
    std::fs::write(&seg, &bytes).unwrap();

    for _ in 0..2 {
        // Said at every start until the log is written again.
        let log = FileLog::open(dir.path(), LogOptions::default()).unwrap();
        let rec = log.recovery().clone();
        assert_eq!((rec.events, rec.truncated_bytes), (7, 0), "{rec:?}");
        assert_eq!(rec.lost_events, 3, "{rec:?}");
        log.close();
    }
}

#[tokio::test]
async fn a_removed_newest_segment_is_reported_lost() {
    let dir = common::data_dir();
    let small = segments_of(1024);
    write_events(dir.path(), 40, small.clone()).await.close();
    let newest = segments(dir.path()).pop().unwrap();
    let in_it = record_ends(&newest).len() as u64;
    std::fs::remove_file(&newest).unwrap();

    let log = FileLog::open(dir.path(), small).unwrap();
    let rec = log.recovery().clone();
    assert_eq!(
        (rec.events, rec.lost_events),
        (40 - in_it, in_it),
        "{rec:?}"
    );
}

#[tokio::test]
async fn a_torn_write_that_was_never_acknowledged_is_not_reported_lost() {
    let dir = common::data_dir();
    write_events(dir.path(), 9, LogOptions::default())
        .await
        .close();
    // The mark as a crash during the tenth write leaves it: naming the nine synced.
    let mark = dir.path().join("written.mark");
    let nine = std::fs::read(&mark).unwrap();
    let log = FileLog::open(dir.path(), LogOptions::default()).unwrap();
    log.append_any(&[event(9)]).unwrap();
    log.wait_durable(10).await.unwrap();
    log.close();
    std::fs::write(&mark, nine).unwrap();
    let seg = segments(dir.path()).pop().unwrap();
    let ends = record_ends(&seg);
    let torn = std::fs::OpenOptions::new().write(true).open(&seg).unwrap();
    torn.set_len(ends[8] + 20).unwrap();

    let log = FileLog::open(dir.path(), LogOptions::default()).unwrap();
    let rec = log.recovery().clone();
    assert_eq!(rec.events, 9);
    assert!(rec.truncated_bytes > 0, "{rec:?}");
    assert_eq!(rec.lost_events, 0, "{rec:?}");
}

#[tokio::test]
async fn a_flipped_byte_in_the_last_record_is_detected_and_cut() {
    let dir = common::data_dir();
    write_events(dir.path(), 10, LogOptions::default())
        .await
        .close();
    let seg = segments(dir.path()).pop().unwrap();
    let mut bytes = std::fs::read(&seg).unwrap();
    let last = record_ends(&seg)[9] as usize - 3;
    bytes[last] ^= 0x10;
    std::fs::write(&seg, &bytes).unwrap();

    let log = FileLog::open(dir.path(), LogOptions::default()).unwrap();
    assert_eq!(log.recovery().events, 9);
    assert!(log
        .recovery()
        .truncation_reason
        .as_deref()
        .unwrap()
        .contains("checksum"));
    assert_eq!(read_all(&log), (0..9).collect::<Vec<_>>());
}

#[tokio::test]
async fn an_empty_newest_segment_gets_its_header_back() {
    let dir = common::data_dir();
    let small = segments_of(1024);
    write_events(dir.path(), 40, small.clone()).await.close();
    let before = segments(dir.path());
    assert!(before.len() > 2, "small segments roll: {before:?}");
    // A crash right after creating the next segment, before its header was written.
    std::fs::File::create(dir.path().join(format!("{:020}.seg", 40))).unwrap();

    let log = FileLog::open(dir.path(), small).unwrap();
    assert!(log.recovery().rewrote_header);
    assert_eq!(log.recovery().events, 40);
    assert_eq!(log.append_any(&[event(40)]).unwrap(), 40);
    log.wait_durable(41).await.unwrap();
    assert_eq!(read_all(&log), (0..41).collect::<Vec<_>>());
}

#[tokio::test]
async fn damage_inside_a_sealed_segment_stops_the_open() {
    let dir = common::data_dir();
    let small = segments_of(1024);
    write_events(dir.path(), 40, small.clone()).await.close();
    let first = segments(dir.path()).remove(0);
    let mut bytes = std::fs::read(&first).unwrap();
    bytes[100] ^= 0xff;
    std::fs::write(&first, &bytes).unwrap();
    match FileLog::open(dir.path(), small) {
        Err(LogError::Corrupt { path, .. }) => assert_eq!(path, first),
        other => panic!("expected a corruption error, got {:?}", other.map(|_| ())),
    }
}

#[tokio::test]
async fn reads_and_subscriptions_cross_segments_and_follow_live_appends() {
    let dir = common::data_dir();
    let small = segments_of(2048);
    let file_log = Arc::new(write_events(dir.path(), 100, small).await);
    let log: Arc<dyn EventLog> = file_log.clone();
    assert_eq!(read_all(log.as_ref()), (0..100).collect::<Vec<_>>());
    let mut c = log.cursor(57);
    assert_eq!(
        c.next_batch(3)
            .unwrap()
            .iter()
            .map(|e| e.offset)
            .collect::<Vec<_>>(),
        vec![57, 58, 59]
    );

    let mut sub = Subscription::new(log.clone(), 95);
    let mut seen = Vec::new();
    while seen.len() < 5 {
        seen.extend(sub.next_batch(100).await.unwrap().iter().map(|e| e.offset));
    }
    let writer = file_log.clone();
    let live = tokio::spawn(async move {
        for i in 100..130 {
            writer.append_any(&[event(i)]).unwrap();
            tokio::task::yield_now().await;
        }
    });
    while seen.len() < 35 {
        seen.extend(sub.next_batch(100).await.unwrap().iter().map(|e| e.offset));
    }
    live.await.unwrap();
    assert_eq!(seen, (95..130).collect::<Vec<_>>());
}

#[tokio::test]
async fn one_sync_covers_many_waiting_writers() {
    let disk = common::FaultyDisk::default();
    let syncs = disk.syncs.clone();
    let dir = common::data_dir();
    let log = Arc::new(
        FileLog::open(
            dir.path(),
            LogOptions {
                storage: Arc::new(disk),
                ..LogOptions::default()
            },
        )
        .unwrap(),
    );
    let before = syncs.load(Ordering::SeqCst);
    let writers = 32;
    let per_writer = 50;
    let mut tasks = Vec::new();
    for w in 0..writers {
        let log = log.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..per_writer {
                let off = log.append_any(&[event(w * 1000 + i)]).unwrap();
                log.wait_durable(off + 1).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let appends = (writers * per_writer) as usize;
    let used = (syncs.load(Ordering::SeqCst) - before) as usize;
    assert_eq!(log.durable_end(), appends as u64);
    assert!(
        used < appends / 2,
        "{used} syncs for {appends} acknowledged appends"
    );
}

#[tokio::test]
async fn a_failed_sync_acknowledges_nothing_and_stops_appends() {
    let disk = common::FaultyDisk::default();
    let fail = disk.failing_syncs.clone();
    let dir = common::data_dir();
    let opts = LogOptions {
        storage: Arc::new(disk),
        ..LogOptions::default()
    };
    let log = write_events(dir.path(), 3, opts).await;
    fail.store(true, Ordering::SeqCst);
    let off = log.append_any(&[event(3)]).unwrap();
    let err = log.wait_durable(off + 1).await.unwrap_err();
    assert!(err.to_string().contains("the sync failed"), "{err}");
    assert_eq!(log.durable_end(), 3);
    assert!(log.health().is_err());
    assert!(matches!(
        log.append_any(&[event(4)]),
        Err(LogError::Failed(_))
    ));
    assert_eq!(read_all(&log).len(), 3);
}

#[tokio::test]
async fn one_writer_per_directory_and_readers_beside_it() {
    let dir = common::data_dir();
    let log = write_events(dir.path(), 5, LogOptions::default()).await;
    assert!(matches!(
        FileLog::open(dir.path(), LogOptions::default()),
        Err(LogError::Locked(_))
    ));
    let reader = FileLog::open(
        dir.path(),
        LogOptions {
            mode: OpenMode::ReadOnly,
            ..LogOptions::default()
        },
    )
    .unwrap();
    assert_eq!(reader.log_id(), log.log_id());
    assert_eq!(read_all(&reader).len(), 5);
    assert!(matches!(
        reader.append_any(&[event(5)]),
        Err(LogError::ReadOnly)
    ));
}

/// Flip one byte inside record `i` of the newest segment of a 10-event log.
async fn log_with_damaged_record(i: usize) -> (tempfile::TempDir, std::path::PathBuf, Vec<u64>) {
    let dir = common::data_dir();
    write_events(dir.path(), 10, LogOptions::default())
        .await
        .close();
    let seg = segments(dir.path()).pop().unwrap();
    let ends = record_ends(&seg);
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes[ends[i] as usize - 5] ^= 0x01;
    std::fs::write(&seg, &bytes).unwrap();
    (dir, seg, ends)
}

#[tokio::test]
async fn a_flipped_bit_in_a_middle_record_of_the_newest_segment_refuses_the_start() {
    let (dir, seg, ends) = log_with_damaged_record(4).await;
    let before = std::fs::read(&seg).unwrap();
    for mode in [OpenMode::ReadWrite, OpenMode::ReadOnly] {
        let opened = FileLog::open(
            dir.path(),
            LogOptions {
                mode,
                ..LogOptions::default()
            },
        );
        match opened {
            Err(e @ LogError::Corrupt { .. }) => {
                let LogError::Corrupt { path, pos, reason } = &e else {
                    unreachable!()
                };
                assert_eq!(path, &seg);
                assert_eq!(
                    *pos, ends[3],
                    "the damaged record starts where record 3 ends"
                );
                assert!(reason.contains("offset 5"), "{reason}");
                assert!(e.to_string().contains("parkade repair-log"), "{e}");
            }
            other => panic!("{mode:?}: expected a refusal, got {:?}", other.map(|_| ())),
        }
    }
    // Nothing was cut: the five valid records after the damage are still on disk.
    assert_eq!(std::fs::read(&seg).unwrap(), before);
}

#[tokio::test]
async fn repair_log_shows_the_cut_then_makes_it_only_when_asked_and_keeps_a_copy() {
    use parkade::log::repair::{repair, RepairOutcome};
    let (dir, seg, ends) = log_with_damaged_record(6).await;
    let original = std::fs::read(&seg).unwrap();
    let RepairOutcome::Planned(plan) = repair(dir.path(), false).unwrap() else {
        panic!("expected a plan")
    };
    assert_eq!(plan.cut_file, seg);
    assert_eq!(plan.cut_at, ends[5]);
    assert_eq!(plan.kept_events, 6);
    // Records 7, 8 and 9 are whole; the damaged one is not counted.
    assert_eq!(plan.removed_records, 3, "{plan}");
    assert_eq!(
        std::fs::read(&seg).unwrap(),
        original,
        "a plan changes nothing"
    );
    assert!(FileLog::open(dir.path(), LogOptions::default()).is_err());

    let RepairOutcome::Repaired { plan: done, backup } = repair(dir.path(), true).unwrap() else {
        panic!("expected a repair")
    };
    assert_eq!(done, plan);
    assert_eq!(
        std::fs::read(backup.join(seg.file_name().unwrap())).unwrap(),
        original,
        "the copy is the file as it was"
    );
    let log = FileLog::open(dir.path(), LogOptions::default()).unwrap();
    assert_eq!(read_all(&log), (0..6).collect::<Vec<_>>());
    assert_eq!(log.append_any(&[event(6)]).unwrap(), 6);
    log.wait_durable(7).await.unwrap();
    log.close();
    assert!(matches!(
        repair(dir.path(), false).unwrap(),
        RepairOutcome::Healthy { events: 7 }
    ));
}

#[tokio::test]
async fn repair_of_a_sealed_segment_removes_every_later_one() {
    use parkade::log::repair::{repair, RepairOutcome};
    let dir = common::data_dir();
    let small = segments_of(1024);
    write_events(dir.path(), 40, small.clone()).await.close();
    let all = segments(dir.path());
    let second = all[1].clone();
    let ends = record_ends(&second);
    let mut bytes = std::fs::read(&second).unwrap();
    bytes[ends[1] as usize - 2] ^= 0x80;
    std::fs::write(&second, &bytes).unwrap();
    let RepairOutcome::Repaired { plan, backup } = repair(dir.path(), true).unwrap() else {
        panic!("expected a repair")
    };
    assert_eq!(plan.removed_files, all[2..].to_vec());
    let base: u64 = second
        .file_stem()
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(plan.kept_events, base + 1);
    for f in &all[2..] {
        assert!(!f.exists());
        assert!(backup.join(f.file_name().unwrap()).exists());
    }
    let log = FileLog::open(dir.path(), small).unwrap();
    assert_eq!(read_all(&log), (0..base + 1).collect::<Vec<_>>());
}

#[tokio::test]
async fn the_log_refuses_an_event_its_reader_would_refuse() {
    let dir = common::data_dir();
    let log = FileLog::open(dir.path(), LogOptions::default()).unwrap();
    let mut big = event(0);
    big.event = LotEvent::LotRegistered {
        name: "x".repeat(format::MAX_PAYLOAD),
        capacity: parkade::domain::Capacity::new(5).unwrap(),
    };
    assert!(matches!(
        log.append_any(&[event(0), big]),
        Err(LogError::TooLarge { .. })
    ));
    assert_eq!(
        log.append_any(&[event(0)]).unwrap(),
        0,
        "nothing was appended"
    );
    log.wait_durable(1).await.unwrap();
    assert!(log.health().is_ok());
}

/// A log holding a segment (or a record) of a newer format is not damaged: opening it
/// says a newer parkade wrote it and to upgrade, and `repair-log` refuses to cut it.
#[tokio::test]
async fn a_newer_format_is_its_own_error_and_repair_log_cuts_nothing() {
    use parkade::log::repair::repair;
    // The segment's header says format 2 (its checksum made right, as a newer
    // parkade would write it).
    let newer_segment = |bytes: &mut Vec<u8>| {
        bytes[8..12].copy_from_slice(&(format::FORMAT_VERSION + 1).to_le_bytes());
        let crc = crc32c::crc32c(&bytes[0..40]);
        bytes[40..44].copy_from_slice(&crc.to_le_bytes());
        ("segment format", format::FORMAT_VERSION + 1)
    };
    // The fifth record says event schema 2 (its checksum made right).
    let newer_record = |bytes: &mut Vec<u8>| {
        let mut at = format::HEADER_LEN;
        for _ in 0..4 {
            let format::Frame::Record(_, n) = format::next_frame(&bytes[at..]) else {
                panic!("a record")
            };
            at += n;
        }
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        let payload = at + format::FRAME_LEN;
        let schema = u32::from(bytes[payload + 49]) + 1;
        bytes[payload + 49] = schema as u8;
        let crc = crc32c::crc32c(&bytes[payload..payload + len]);
        bytes[at + 4..at + 8].copy_from_slice(&crc.to_le_bytes());
        ("event schema", schema)
    };
    for make_newer in [
        &newer_segment as &dyn Fn(&mut Vec<u8>) -> (&'static str, u32),
        &newer_record,
    ] {
        let dir = common::data_dir();
        write_events(dir.path(), 10, LogOptions::default())
            .await
            .close();
        let seg = segments(dir.path()).pop().unwrap();
        let mut bytes = std::fs::read(&seg).unwrap();
        let (what, found) = make_newer(&mut bytes);
        std::fs::write(&seg, &bytes).unwrap();

        match FileLog::open(dir.path(), LogOptions::default()) {
            Err(e @ LogError::NewerFormat { .. }) => {
                let text = e.to_string();
                let named = format!("{what} {found}");
                for want in [named.as_str(), "newer parkade", "upgrade", "will not cut"] {
                    assert!(text.contains(want), "{want:?} not in: {text}");
                }
            }
            other => panic!(
                "{what}: expected a newer-format error, got {:?}",
                other.map(|_| ())
            ),
        }
        match repair(dir.path(), true) {
            Err(LogError::NewerFormat { .. }) => {}
            other => panic!("{what}: repair-log must refuse, got {other:?}"),
        }
        assert_eq!(
            std::fs::read(&seg).unwrap(),
            bytes,
            "{what}: nothing was cut"
        );
    }
}
