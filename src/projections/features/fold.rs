//! The 15-minute feature fold: pure, in memory, deterministic in log order.
//!
//! Events are placed in buckets by event time (`occurred_at`), per lot. Within a
//! bucket they are ordered by (event time, log offset). A lot's level in event time
//! starts at 0 when it is registered, goes up by one per arrival and down by one per
//! departure (never below 0), and is set by a count. Each bucket gets: the level at its
//! start and end, the lowest and highest level it held, its time-weighted mean, the
//! arrivals, departures and counts in it, and the capacity at its end. Buckets with no
//! event between two that have one get a row too (the level carried), but at most
//! [`MAX_CARRY_BUCKETS`] (7 days) after a bucket with an event: past that a gap has no
//! rows until the lot's next event. So however far apart two events are, one event
//! makes a bounded number of rows and the fold's work never grows with a time gap.
//!
//! Lateness rule: an event whose bucket is earlier than the lot's newest bucket, but no
//! more than `lateness` behind the lot's watermark, is folded into its bucket, and that
//! bucket and every later one of the lot are recomputed. An event further behind is
//! counted as `too_late` and not folded (it stays in the log and the archive). The
//! watermark is the lot's newest event time, except that an event moves it no later
//! than its own log time (`recorded_at`): an event stamped ahead of the clock is folded
//! into its (future) bucket, but cannot make the lot's real events too late. The rule
//! depends only on what the log holds, in its order, so a replay gives the same rows.

use std::collections::{BTreeMap, HashMap};

use crate::domain::{LotEvent, LotId, RecordedEvent};

/// Bucket width: 15 minutes, in microseconds.
pub const BUCKET_MICROS: i64 = 15 * 60 * 1_000_000;

/// Empty buckets given a carried row after a bucket with an event: 7 days.
pub const MAX_CARRY_BUCKETS: i64 = 7 * 24 * 4;

/// The start of the bucket holding `micros`.
pub fn bucket_of(micros: i64) -> i64 {
    micros.div_euclid(BUCKET_MICROS) * BUCKET_MICROS
}

/// One row of `lot_features_15m`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct FeatureRow {
    pub lot_id: LotId,
    /// Microseconds since the epoch, UTC.
    pub bucket_start: i64,
    pub occupancy_start: i32,
    pub occupancy_end: i32,
    pub occupancy_min: i32,
    pub occupancy_max: i32,
    pub occupancy_mean: f64,
    pub arrivals: i32,
    pub departures: i32,
    pub counts: i32,
    pub capacity: i32,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Arrive,
    Depart,
    Count(u32),
    Register(u32),
    Capacity(u32),
}

#[derive(Debug, Clone, Copy)]
struct Ev {
    at: i64,
    offset: u64,
    kind: Kind,
}

/// The lot's state at an instant.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
struct Level {
    occupancy: i64,
    capacity: u32,
}

impl Level {
    fn apply(&mut self, k: Kind) {
        match k {
            Kind::Arrive => self.occupancy += 1,
            Kind::Depart => self.occupancy = (self.occupancy - 1).max(0),
            Kind::Count(n) => self.occupancy = i64::from(n),
            Kind::Register(c) => {
                self.occupancy = 0;
                self.capacity = c;
            }
            Kind::Capacity(c) => self.capacity = c,
        }
    }
}

/// A bucket's events and its fold, kept up to date as events come in order.
#[derive(Debug, Clone, Default)]
struct Bucket {
    events: Vec<Ev>,
    start: Level,
    end: Level,
    min: i64,
    max: i64,
    /// Integral of the level over time from the bucket start to `last_at` (µs).
    area: f64,
    last_at: i64,
    arrivals: i32,
    departures: i32,
    counts: i32,
}

impl Bucket {
    fn open(start_at: i64, start: Level) -> Bucket {
        Bucket {
            events: Vec::new(),
            start,
            end: start,
            min: start.occupancy,
            max: start.occupancy,
            area: 0.0,
            last_at: start_at,
            arrivals: 0,
            departures: 0,
            counts: 0,
        }
    }

    /// Fold one more event that comes after every event already here.
    fn push(&mut self, e: Ev) {
        self.area += self.end.occupancy as f64 * (e.at - self.last_at) as f64;
        self.last_at = e.at;
        self.end.apply(e.kind);
        self.min = self.min.min(self.end.occupancy);
        self.max = self.max.max(self.end.occupancy);
        match e.kind {
            Kind::Arrive => self.arrivals += 1,
            Kind::Depart => self.departures += 1,
            Kind::Count(_) => self.counts += 1,
            Kind::Register(_) | Kind::Capacity(_) => {}
        }
        self.events.push(e);
    }

    /// Refold from a (new) start level.
    fn refold(&mut self, start_at: i64, start: Level) {
        let events = std::mem::take(&mut self.events);
        *self = Bucket::open(start_at, start);
        for e in events {
            self.push(e);
        }
    }

    fn row(&self, lot: &LotId, start_at: i64) -> FeatureRow {
        let end_at = start_at + BUCKET_MICROS;
        let area = self.area + self.end.occupancy as f64 * (end_at - self.last_at) as f64;
        let clamp = |v: i64| i32::try_from(v).unwrap_or(i32::MAX);
        FeatureRow {
            lot_id: lot.clone(),
            bucket_start: start_at,
            occupancy_start: clamp(self.start.occupancy),
            occupancy_end: clamp(self.end.occupancy),
            occupancy_min: clamp(self.min),
            occupancy_max: clamp(self.max),
            occupancy_mean: area / BUCKET_MICROS as f64,
            arrivals: self.arrivals,
            departures: self.departures,
            counts: self.counts,
            capacity: i32::try_from(self.end.capacity).unwrap_or(i32::MAX),
        }
    }
}

#[derive(Debug, Default)]
struct LotWindow {
    /// Buckets with events at or after `floor`.
    buckets: BTreeMap<i64, Bucket>,
    /// First bucket still held; earlier events are too late.
    floor: i64,
    /// The level at `floor`.
    base: Level,
    /// The last bucket with an event that left the window (for the carry limit).
    base_at: Option<i64>,
    /// The watermark (see the module docs).
    newest_at: i64,
    /// The bucket the last rows were written up to (inclusive).
    written_to: Option<i64>,
    dirty_from: Option<i64>,
}

impl LotWindow {
    /// The level at the start of bucket `b`: the end of the nearest earlier held bucket.
    fn level_before(&self, b: i64) -> Level {
        self.buckets
            .range(..b)
            .next_back()
            .map_or(self.base, |(_, k)| k.end)
    }

    /// The first bucket whose row must be (re)written: the first changed one, or the
    /// first after the last written one when the lot has moved on past a gap.
    fn dirty_start(&self) -> Option<i64> {
        let from = self.dirty_from?;
        let from = match self.written_to {
            Some(done) if done + BUCKET_MICROS < from => done + BUCKET_MICROS,
            _ => from,
        };
        Some(from.max(self.floor))
    }

    /// Rows of the buckets `from..=to`: the held ones, and empty ones carried at most
    /// [`MAX_CARRY_BUCKETS`] after a held one.
    fn emit(&self, lot: &LotId, from: i64, to: i64, out: &mut Vec<FeatureRow>) {
        let mut level = self.level_before(from);
        let mut last_held = self
            .buckets
            .range(..from)
            .next_back()
            .map(|(b, _)| *b)
            .or(self.base_at);
        let mut b = from;
        while b <= to {
            if let Some(k) = self.buckets.get(&b) {
                out.push(k.row(lot, b));
                level = k.end;
                last_held = Some(b);
                b += BUCKET_MICROS;
                continue;
            }
            let carried = last_held.is_some_and(|h| b - h <= MAX_CARRY_BUCKETS * BUCKET_MICROS);
            if carried {
                out.push(Bucket::open(b, level).row(lot, b));
                b += BUCKET_MICROS;
                continue;
            }
            // Past the carry limit: nothing until the next bucket with an event.
            match self.buckets.range(b..=to).next() {
                Some((next, _)) => b = *next,
                None => break,
            }
        }
    }
}

/// The fold of many lots, with the rows changed since the last [`FeatureFold::take_rows`].
#[derive(Debug)]
pub struct FeatureFold {
    lots: HashMap<LotId, LotWindow>,
    lateness_micros: i64,
    /// Rows of buckets that left the window before they were taken.
    pending: Vec<FeatureRow>,
    /// Events not folded: more than the lateness behind their lot's newest event.
    pub too_late: u64,
    /// Next log offset after the last event added.
    pub next_offset: u64,
}

impl FeatureFold {
    pub fn new(lateness_secs: u64) -> FeatureFold {
        FeatureFold {
            lots: HashMap::new(),
            lateness_micros: i64::try_from(lateness_secs)
                .unwrap_or(i64::MAX / 1_000_000)
                .saturating_mul(1_000_000),
            pending: Vec::new(),
            too_late: 0,
            next_offset: 0,
        }
    }

    pub fn add(&mut self, e: &RecordedEvent) {
        self.next_offset = e.offset + 1;
        let kind = match &e.event.event {
            LotEvent::VehicleArrived => Kind::Arrive,
            LotEvent::VehicleDeparted => Kind::Depart,
            LotEvent::OccupancyCounted { count } => Kind::Count(*count),
            LotEvent::LotRegistered { capacity, .. } => Kind::Register(capacity.get()),
            LotEvent::LotCapacityChanged { capacity } => Kind::Capacity(capacity.get()),
        };
        let ev = Ev {
            at: e.event.occurred_at.micros(),
            offset: e.offset,
            kind,
        };
        let b = bucket_of(ev.at);
        // How far this event may move the watermark: not past its own log time.
        let mark = ev.at.min(e.recorded_at.micros());
        let lot = &e.event.lot_id;
        let w = self.lots.entry(lot.clone()).or_insert_with(|| LotWindow {
            floor: b.min(bucket_of(mark)),
            newest_at: mark,
            ..LotWindow::default()
        });
        if b < w.floor {
            self.too_late += 1;
            return;
        }
        let newest = w.buckets.range(b + 1..).next().is_none();
        let start = w.level_before(b);
        let bucket = w.buckets.entry(b).or_insert_with(|| Bucket::open(b, start));
        let in_order = bucket
            .events
            .last()
            .is_none_or(|last| (last.at, last.offset) <= (ev.at, ev.offset));
        if in_order && newest {
            // The common case: the newest event of the lot.
            bucket.push(ev);
        } else {
            let pos = bucket
                .events
                .partition_point(|x| (x.at, x.offset) <= (ev.at, ev.offset));
            bucket.events.insert(pos, ev);
            // Refold this bucket and carry its end through every later one.
            let mut level = start;
            for (at, k) in w.buckets.range_mut(b..) {
                k.refold(*at, level);
                level = k.end;
            }
        }
        w.dirty_from = Some(w.dirty_from.map_or(b, |d| d.min(b)));
        w.newest_at = w.newest_at.max(mark);
        // Buckets no event may reach any more leave the window (their rows first).
        let floor = bucket_of(w.newest_at.saturating_sub(self.lateness_micros));
        if floor > w.floor {
            if let Some(from) = w.dirty_start().filter(|f| *f < floor) {
                let to = floor - BUCKET_MICROS;
                w.emit(lot, from, to, &mut self.pending);
                w.written_to = Some(w.written_to.map_or(to, |d| d.max(to)));
                w.dirty_from = Some(floor);
            }
            let keep = w.buckets.split_off(&floor);
            let gone = std::mem::replace(&mut w.buckets, keep);
            if let Some((at, last)) = gone.into_iter().next_back() {
                w.base = last.end;
                w.base_at = Some(at);
            }
            w.floor = floor;
        }
    }

    /// The rows of every bucket changed since the last call, each lot from its first
    /// changed bucket to its newest (empty buckets between carry the level).
    pub fn take_rows(&mut self) -> Vec<FeatureRow> {
        let mut out = std::mem::take(&mut self.pending);
        for (lot, w) in self.lots.iter_mut() {
            let Some(from) = w.dirty_start() else {
                continue;
            };
            w.dirty_from = None;
            let Some(newest) = w.buckets.keys().next_back().copied() else {
                continue;
            };
            w.emit(lot, from, newest, &mut out);
            w.written_to = Some(w.written_to.map_or(newest, |d| d.max(newest)));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Capacity, NewEvent, Timestamp};

    /// 2016-10-04 at `hh:mm` UTC, in microseconds.
    fn at(hh: i64, mm: i64) -> i64 {
        1_475_539_200_000_000 + (hh * 60 + mm) * 60_000_000
    }

    fn ev(offset: u64, hh: i64, mm: i64, event: LotEvent) -> RecordedEvent {
        RecordedEvent {
            offset,
            recorded_at: Timestamp::from_micros(at(hh, mm)),
            schema_version: 1,
            event: NewEvent {
                lot_id: LotId::parse("north").unwrap(),
                lot_seq: offset + 1,
                event_id: uuid::Uuid::from_u128(u128::from(offset)),
                client_event_id: false,
                occurred_at: Timestamp::from_micros(at(hh, mm)),
                event,
                // After-states are not read by the fold (levels come from the events).
                occupancy: 0,
                capacity: 10,
            },
        }
    }

    fn sequence() -> Vec<RecordedEvent> {
        use LotEvent::*;
        vec![
            ev(
                0,
                8,
                0,
                LotRegistered {
                    name: "North".into(),
                    capacity: Capacity::new(10).unwrap(),
                },
            ),
            ev(1, 8, 3, VehicleArrived),
            ev(2, 8, 6, VehicleArrived),
            ev(3, 8, 12, VehicleDeparted),
            ev(4, 8, 40, VehicleArrived),
            // Late: event time 08:10, logged after 08:40.
            ev(5, 8, 10, VehicleArrived),
            ev(6, 8, 50, OccupancyCounted { count: 5 }),
        ]
    }

    /// (bucket minute of day, start, end, min, max, mean, arrivals, departures, counts)
    type Expect = (i64, i32, i32, i32, i32, f64, i32, i32, i32);

    fn check(rows: &[FeatureRow], want: &[Expect]) {
        assert_eq!(rows.len(), want.len(), "{rows:#?}");
        let mut rows = rows.to_vec();
        rows.sort_by_key(|r| r.bucket_start);
        for (r, w) in rows.iter().zip(want) {
            let got = (
                (r.bucket_start - at(0, 0)) / 60_000_000,
                r.occupancy_start,
                r.occupancy_end,
                r.occupancy_min,
                r.occupancy_max,
                r.occupancy_mean,
                r.arrivals,
                r.departures,
                r.counts,
            );
            assert_eq!(
                (got.0, got.1, got.2, got.3, got.4),
                (w.0, w.1, w.2, w.3, w.4),
                "{r:?}"
            );
            assert!(
                (got.5 - w.5).abs() < 1e-9,
                "mean {} != {} in {r:?}",
                got.5,
                w.5
            );
            assert_eq!((got.6, got.7, got.8), (w.6, w.7, w.8), "{r:?}");
            assert_eq!(r.capacity, 10);
        }
    }

    #[test]
    fn buckets_equal_a_hand_computed_fold_and_a_late_event_updates_its_bucket() {
        let events = sequence();
        let mut f = FeatureFold::new(86_400);
        for e in &events[..5] {
            f.add(e);
        }
        // 08:00: 0 until 08:03, 1 until 08:06, 2 until 08:12, 1 until 08:15 -> 18/15.
        // 08:15: no event, 1 carried. 08:30: 1 until 08:40, then 2 -> 20/15.
        check(
            &f.take_rows(),
            &[
                (480, 0, 1, 0, 2, 18.0 / 15.0, 2, 1, 0),
                (495, 1, 1, 1, 1, 1.0, 0, 0, 0),
                (510, 1, 2, 1, 2, 20.0 / 15.0, 1, 0, 0),
            ],
        );
        f.add(&events[5]);
        // The arrival at 08:10 lifts 08:00 from then on and every later bucket.
        // 08:00: 0,1,2 until 08:10, 3 until 08:12, 2 until 08:15 -> 23/15.
        check(
            &f.take_rows(),
            &[
                (480, 0, 2, 0, 3, 23.0 / 15.0, 3, 1, 0),
                (495, 2, 2, 2, 2, 2.0, 0, 0, 0),
                (510, 2, 3, 2, 3, 35.0 / 15.0, 1, 0, 0),
            ],
        );
        f.add(&events[6]);
        // Only the new bucket: 3 until 08:50, then the count of 5 -> 65/15.
        check(&f.take_rows(), &[(525, 3, 5, 3, 5, 65.0 / 15.0, 0, 0, 1)]);
        assert_eq!(f.too_late, 0);
    }

    #[test]
    fn the_rows_do_not_depend_on_where_batches_end() {
        let events = sequence();
        let mut one = FeatureFold::new(86_400);
        let mut last_of_one = BTreeMap::new();
        for e in &events {
            one.add(e);
            for r in one.take_rows() {
                last_of_one.insert(r.bucket_start, r);
            }
        }
        let mut all = FeatureFold::new(86_400);
        for e in &events {
            all.add(e);
        }
        let at_end: BTreeMap<i64, FeatureRow> = all
            .take_rows()
            .into_iter()
            .map(|r| (r.bucket_start, r))
            .collect();
        assert_eq!(last_of_one, at_end);
    }

    #[test]
    fn an_event_beyond_the_lateness_is_counted_not_folded() {
        let events = sequence();
        // Ten minutes: at 08:40 the window starts at the 08:30 bucket.
        let mut f = FeatureFold::new(600);
        for e in &events[..5] {
            f.add(e);
        }
        let before = f.take_rows();
        f.add(&events[5]);
        assert_eq!(f.too_late, 1);
        assert!(f.take_rows().is_empty());
        // The rows written before the window moved are complete.
        assert_eq!(before.len(), 3, "{before:#?}");
    }

    fn ev_at(offset: u64, at_micros: i64, recorded: i64, event: LotEvent) -> RecordedEvent {
        let mut e = ev(offset, 0, 0, event);
        e.event.occurred_at = Timestamp::from_micros(at_micros);
        e.recorded_at = Timestamp::from_micros(recorded);
        e
    }

    #[test]
    fn a_long_gap_makes_a_bounded_number_of_rows() {
        use LotEvent::*;
        let day = 96 * BUCKET_MICROS;
        let start = at(8, 0);
        let reg = LotRegistered {
            name: "North".into(),
            capacity: Capacity::new(10).unwrap(),
        };
        for lateness in [600, 6 * 3600, 86_400 * 400] {
            let mut f = FeatureFold::new(lateness);
            f.add(&ev_at(0, start, start, reg.clone()));
            f.add(&ev_at(1, start + 60_000_000, start, VehicleArrived));
            // Ten years later (an old log, or an import): one arrival.
            let later = start + 3650 * day;
            f.add(&ev_at(2, later, later, VehicleArrived));
            let rows = f.take_rows();
            // The first bucket, 7 days carried, and the bucket ten years on.
            assert_eq!(
                rows.len() as i64,
                1 + MAX_CARRY_BUCKETS + 1,
                "lateness {lateness}"
            );
            let last = rows.iter().max_by_key(|r| r.bucket_start).unwrap();
            assert_eq!(last.bucket_start, bucket_of(later));
            assert_eq!((last.occupancy_start, last.occupancy_end), (1, 2));
            let carried = rows
                .iter()
                .filter(|r| r.arrivals == 0 && r.counts == 0)
                .count() as i64;
            assert_eq!(carried, MAX_CARRY_BUCKETS);
            assert!(rows
                .iter()
                .all(|r| r.bucket_start <= start + 8 * day || r.bucket_start == bucket_of(later)));
        }
    }

    #[test]
    fn an_event_stamped_ahead_of_the_log_clock_does_not_make_real_events_late() {
        use LotEvent::*;
        let start = at(8, 0);
        let mut f = FeatureFold::new(3600);
        f.add(&ev_at(
            0,
            start,
            start,
            LotRegistered {
                name: "North".into(),
                capacity: Capacity::new(10).unwrap(),
            },
        ));
        // Recorded at 08:01 but stamped a day ahead (a gate with a wrong clock, or a
        // log written before the time rule).
        f.add(&ev_at(
            1,
            start + 86_400_000_000,
            start + 60_000_000,
            OccupancyCounted { count: 3 },
        ));
        // The real events of the next hours are folded, not counted as too late.
        for i in 0..20 {
            let t = start + (i + 2) * 5 * 60_000_000;
            f.add(&ev_at(2 + i as u64, t, t, VehicleArrived));
        }
        assert_eq!(f.too_late, 0);
        let rows = f.take_rows();
        assert!(rows
            .iter()
            .any(|r| r.arrivals > 0 && r.bucket_start < start + 7_200_000_000));
    }
}
