//! Power cuts, not just kill -9: a disk (behind the log's `Storage` trait) that loses
//! every write not yet synced when the power goes, or keeps part of it torn at a random
//! byte. After each cut the log is reopened from what the disk kept: every acknowledged
//! event must be there, at its offset, and nothing may be there twice. Many cut points,
//! each from its own seed.
//!
//! SIGKILL leaves the page cache intact, so a kill test passes even without `fsync`;
//! this one does not: skip the `sync_data` in the writer and acknowledged events vanish.

use std::collections::{HashMap, HashSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use parkade::domain::{LotEvent, LotId, NewEvent, Timestamp};
use parkade::log::{EventLog, FileLog, LogOptions, OsStorage, Storage, WritableFile};

use crate::common;

/// One change to a file that the disk has not made durable yet.
enum Op {
    Write(u64, Vec<u8>),
    SetLen(u64),
}

#[derive(Default)]
struct FileState {
    /// The file as the disk holds it durably.
    durable: Vec<u8>,
    /// Changes since the last sync, in order (the real file already has them).
    pending: Vec<Op>,
    /// The file's directory entry is durable (it existed before, or its directory was
    /// synced after it was created).
    entry_durable: bool,
}

struct Disk {
    cut: bool,
    files: HashMap<PathBuf, FileState>,
    rng: u64,
}

impl Disk {
    fn next(&mut self) -> u64 {
        // xorshift64*: a fixed sequence per seed, so a failing cut can be replayed.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// The simulated disk; writes also go to the real files, so readers see them as they
/// would see the page cache.
#[derive(Clone)]
struct PowerCutDisk(Arc<Mutex<Disk>>);

fn apply(content: &mut Vec<u8>, op: &Op) {
    match op {
        Op::Write(pos, bytes) => {
            let end = *pos as usize + bytes.len();
            if content.len() < end {
                content.resize(end, 0);
            }
            content[*pos as usize..end].copy_from_slice(bytes);
        }
        Op::SetLen(len) => content.resize(*len as usize, 0),
    }
}

impl PowerCutDisk {
    fn new(seed: u64) -> Self {
        PowerCutDisk(Arc::new(Mutex::new(Disk {
            cut: false,
            files: HashMap::new(),
            rng: seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1,
        })))
    }

    /// The power goes: every file becomes what the disk kept, which is its durable
    /// content plus, at random, some of its pending changes in order, the last of them
    /// torn at a random byte. A file whose directory entry was never synced may vanish.
    fn cut(&self) {
        let mut disk = self.0.lock().unwrap();
        disk.cut = true;
        let paths: Vec<PathBuf> = disk.files.keys().cloned().collect();
        for path in paths {
            let r = [disk.next(), disk.next(), disk.next()];
            let f = disk.files.get_mut(&path).unwrap();
            if !f.entry_durable && r[0].is_multiple_of(2) {
                std::fs::remove_file(&path).unwrap();
                continue;
            }
            let mut content = f.durable.clone();
            let kept = (r[1] % (f.pending.len() as u64 + 1)) as usize;
            for op in &f.pending[..kept] {
                apply(&mut content, op);
            }
            if let Some(Op::Write(pos, bytes)) = f.pending.get(kept) {
                let torn = (r[2] % (bytes.len() as u64 + 1)) as usize;
                apply(&mut content, &Op::Write(*pos, bytes[..torn].to_vec()));
            }
            std::fs::write(&path, &content).unwrap();
        }
    }
}

struct SimFile {
    path: PathBuf,
    real: Box<dyn WritableFile>,
    disk: PowerCutDisk,
}

fn power_off() -> io::Error {
    io::Error::other("the power is off")
}

impl Storage for PowerCutDisk {
    fn open_writable(&self, path: &Path) -> io::Result<Box<dyn WritableFile>> {
        let mut disk = self.0.lock().unwrap();
        if disk.cut {
            return Err(power_off());
        }
        let existed = path.exists();
        let real = OsStorage.open_writable(path)?;
        disk.files
            .entry(path.to_path_buf())
            .or_insert_with(|| FileState {
                durable: if existed {
                    std::fs::read(path).unwrap()
                } else {
                    Vec::new()
                },
                pending: Vec::new(),
                entry_durable: existed,
            });
        Ok(Box::new(SimFile {
            path: path.to_path_buf(),
            real,
            disk: self.clone(),
        }))
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut disk = self.0.lock().unwrap();
        if disk.cut {
            return Err(power_off());
        }
        for (path, f) in disk.files.iter_mut() {
            if path.parent() == Some(dir) {
                f.entry_durable = true;
            }
        }
        Ok(())
    }
}

impl WritableFile for SimFile {
    fn write_all_at(&mut self, buf: &[u8], pos: u64) -> io::Result<()> {
        let mut disk = self.disk.0.lock().unwrap();
        if disk.cut {
            return Err(power_off());
        }
        self.real.write_all_at(buf, pos)?;
        let f = disk.files.get_mut(&self.path).unwrap();
        f.pending.push(Op::Write(pos, buf.to_vec()));
        Ok(())
    }

    fn sync_data(&mut self) -> io::Result<()> {
        let mut disk = self.disk.0.lock().unwrap();
        if disk.cut {
            return Err(power_off());
        }
        // No real fsync: what counts as durable is what this disk says.
        let f = disk.files.get_mut(&self.path).unwrap();
        let pending = std::mem::take(&mut f.pending);
        for op in &pending {
            apply(&mut f.durable, op);
        }
        Ok(())
    }

    fn set_len(&mut self, len: u64) -> io::Result<()> {
        let mut disk = self.disk.0.lock().unwrap();
        if disk.cut {
            return Err(power_off());
        }
        self.real.set_len(len)?;
        disk.files
            .get_mut(&self.path)
            .unwrap()
            .pending
            .push(Op::SetLen(len));
        Ok(())
    }
}

fn event(writer: u64, i: u64) -> NewEvent {
    NewEvent {
        lot_id: LotId::parse(&format!("lot-{writer}")).unwrap(),
        lot_seq: i + 1,
        event_id: uuid::Uuid::now_v7(),
        client_event_id: true,
        occurred_at: Timestamp::from_micros(1_764_234_000_000_000 + i as i64),
        event: if i == 0 {
            LotEvent::LotRegistered {
                name: format!("Lot {writer} with a name that varies the record length {i}"),
                capacity: parkade::domain::Capacity::new(100).unwrap(),
            }
        } else {
            LotEvent::VehicleArrived
        },
        occupancy: 0,
        capacity: 100,
    }
}

/// Small segments, so cuts also land while a segment is being created.
fn opts(storage: Arc<dyn Storage>) -> LogOptions {
    LogOptions {
        segment_bytes: 4096,
        storage,
        ..LogOptions::default()
    }
}

/// One run: writers append (one or several events per append) and wait for
/// durability; the power is cut at a point chosen by `seed`; the log is reopened from
/// what the disk kept. Returns how many events had been acknowledged.
async fn one_cut(seed: u64) -> usize {
    let dir = common::data_dir();
    let disk = PowerCutDisk::new(seed);
    // Some runs start from a log that is already there (written on a healthy disk).
    let before = if seed.is_multiple_of(3) {
        let log = FileLog::open(dir.path(), opts(Arc::new(OsStorage))).unwrap();
        for i in 0..20 {
            log.append_any(&[event(9, i)]).unwrap();
        }
        log.wait_durable(20).await.unwrap();
        log.close();
        20
    } else {
        0
    };
    let log = Arc::new(FileLog::open(dir.path(), opts(Arc::new(disk.clone()))).unwrap());
    let acked: Arc<Mutex<Vec<(u64, uuid::Uuid)>>> = Arc::default();
    let mut tasks = Vec::new();
    for w in 0..4u64 {
        let (log, acked) = (log.clone(), acked.clone());
        tasks.push(tokio::spawn(async move {
            let mut i = 0;
            loop {
                let n = 1 + (i + w) % 3;
                let events: Vec<NewEvent> = (0..n).map(|k| event(w, i + k)).collect();
                i += n;
                let Ok(first) = log.append_any(&events) else {
                    return;
                };
                if log.wait_durable(first + n).await.is_err() {
                    return;
                }
                let mut a = acked.lock().unwrap();
                for (k, e) in events.iter().enumerate() {
                    a.push((first + k as u64, e.event_id));
                }
            }
        }));
    }
    // Cut after a number of acknowledged events that the seed picks (0 to ~600).
    let target = (seed.wrapping_mul(7919) % 600) as usize;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while acked.lock().unwrap().len() < target {
        assert!(
            std::time::Instant::now() < deadline,
            "seed {seed}: the writers stalled before the cut"
        );
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    disk.cut();
    for t in tasks {
        t.await.unwrap();
    }
    log.close();
    drop(log);
    let acked = acked.lock().unwrap().clone();

    // The machine comes back: open from what the disk kept, on the real filesystem.
    let log = FileLog::open(dir.path(), opts(Arc::new(OsStorage)))
        .unwrap_or_else(|e| panic!("seed {seed}: the log does not open after the cut: {e}"));
    let mut found: Vec<(u64, uuid::Uuid)> = Vec::new();
    let mut cursor = log.cursor(0);
    loop {
        let batch = cursor.next_batch(1000).unwrap();
        if batch.is_empty() {
            break;
        }
        found.extend(batch.iter().map(|e| (e.offset, e.event.event_id)));
    }
    let at: HashMap<u64, uuid::Uuid> = found.iter().copied().collect();
    for (offset, id) in &acked {
        assert_eq!(
            at.get(offset),
            Some(id),
            "seed {seed}: acknowledged event at offset {offset} was lost ({} acknowledged, {} recovered)",
            acked.len(),
            found.len()
        );
    }
    let ids: HashSet<uuid::Uuid> = found.iter().map(|(_, id)| *id).collect();
    assert_eq!(
        ids.len(),
        found.len(),
        "seed {seed}: an event is there twice"
    );
    assert!(found.len() >= before + acked.len());
    // And the log goes on after the recovery.
    let next = log.append_any(&[event(7, 1)]).unwrap();
    assert_eq!(next, found.len() as u64);
    log.wait_durable(next + 1).await.unwrap();
    acked.len()
}

/// How many cut points the test command runs; `PARKADE_POWER_CUTS` sets more (the
/// long form in docs/testing.md).
fn cuts() -> u64 {
    std::env::var("PARKADE_POWER_CUTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_event_survives_a_power_cut_at_any_point() {
    let mut acked = 0;
    let n = cuts();
    for seed in 1..=n {
        acked += one_cut(seed).await;
    }
    // The cuts landed after real work, not only on empty logs.
    assert!(
        acked as u64 > n * 100,
        "only {acked} events acknowledged in {n} runs"
    );
}
