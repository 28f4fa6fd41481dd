//! The 15-minute features in memory: the history endpoint's store on the embedded
//! defaults (no PostgreSQL). The same [`FeatureFold`] as the `lot_features_15m` table
//! folds the log into the same rows, so both stores answer alike; being memory, it is
//! folded from offset zero at every start, like the lots.
//!
//! Bounded: a lot keeps its rows of the last `keep_days` days before its newest one
//! (default 400, a year and a bit; about 100 bytes a row, so a lot reporting all day
//! takes about 4 MB).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};
use tokio_util::sync::CancellationToken;

use chrono::{DateTime, TimeZone, Timelike, Utc};
use tokio::sync::watch;

use super::fold::{FeatureFold, FeatureRow};
use super::query::{Bucket, Mean, Reading, Width};
use crate::domain::LotId;
use crate::log::{EventLog, Subscription};
use crate::projections::{ProjectionError, ProjectionName, ProjectionState, StatusBoard};

/// The features of every lot, shared by the follower that folds them and the readers.
#[derive(Clone)]
pub struct MemoryFeatures {
    state: Arc<RwLock<State>>,
    keep_micros: i64,
    /// The position, for readers waiting until the rows reach an offset.
    folded: watch::Sender<u64>,
}

#[derive(Default)]
struct State {
    /// Per lot, its rows by bucket start (microseconds, UTC).
    lots: HashMap<LotId, BTreeMap<i64, FeatureRow>>,
    /// The next log offset to fold: every event below it is in the rows.
    position: u64,
}

impl MemoryFeatures {
    pub fn new(keep_days: u32) -> MemoryFeatures {
        MemoryFeatures {
            state: Arc::default(),
            keep_micros: i64::from(keep_days) * 86_400 * 1_000_000,
            folded: watch::Sender::new(0),
        }
    }

    /// Every event below this offset is in the rows.
    pub fn position(&self) -> u64 {
        self.read().position
    }

    /// Take `rows` (new or changed) as of log offset `position`, and let each lot's
    /// rows older than `keep_days` before its newest go.
    pub fn put(&self, rows: Vec<FeatureRow>, position: u64) {
        let mut st = self.state.write().unwrap_or_else(|e| e.into_inner());
        for row in rows {
            let lot = st.lots.entry(row.lot_id.clone()).or_default();
            lot.insert(row.bucket_start, row);
            let newest = *lot.keys().next_back().expect("a row was just put");
            if newest - lot.keys().next().expect("not empty") > self.keep_micros {
                *lot = lot.split_off(&(newest - self.keep_micros));
            }
        }
        st.position = position;
        drop(st);
        self.folded.send_replace(position);
    }

    /// Wait until every event below offset `end` is in the rows.
    pub async fn folded_to(&self, end: u64) {
        let mut rx = self.folded.subscribe();
        // The sender lives in `self`, so the channel stays open while this waits.
        let _ = rx.wait_for(|p| *p >= end).await;
    }

    /// Training readings of the `weeks` weeks up to `until` (of one lot, or of all):
    /// what [`query::readings`](super::query::readings) reads from PostgreSQL.
    pub fn readings(&self, until: DateTime<Utc>, weeks: u32, lot: Option<&str>) -> Vec<Reading> {
        let until = until.timestamp_micros();
        let from = until - i64::from(weeks) * 7 * 86_400 * 1_000_000;
        let st = self.read();
        st.lots
            .iter()
            .filter(|(id, _)| lot.is_none_or(|l| id.as_str() == l))
            .flat_map(|(_, rows)| rows.range(from..until).map(|(_, r)| r))
            .filter_map(|r| Reading::of_row(r, from, until))
            .collect()
    }

    /// When the newest reading (of one lot, or of any) ends: what
    /// [`query::newest_reading`](super::query::newest_reading) reads from PostgreSQL.
    pub fn newest_reading(&self, lot: Option<&str>) -> Option<DateTime<Utc>> {
        let st = self.read();
        st.lots
            .iter()
            .filter(|(id, _)| lot.is_none_or(|l| id.as_str() == l))
            .filter_map(|(_, rows)| {
                rows.values()
                    .rev()
                    .find_map(|r| Reading::of_row(r, i64::MIN, i64::MAX))
            })
            .map(|r| r.at)
            .max()
    }

    /// Every lot with rows, and its capacity as of its newest row, by id.
    pub fn capacities(&self) -> Vec<(LotId, i32)> {
        let st = self.read();
        let mut out: Vec<(LotId, i32)> = st
            .lots
            .iter()
            .filter_map(|(id, rows)| Some((id.clone(), rows.values().next_back()?.capacity)))
            .collect();
        out.sort_by(|a, b| a.0.as_str().cmp(b.0.as_str()));
        out
    }

    /// Lot `lot`'s 15-minute means in `[from, to)`, oldest first: what
    /// [`query::means`](super::query::means) reads from PostgreSQL.
    pub fn means(&self, lot: &LotId, from: DateTime<Utc>, to: DateTime<Utc>) -> Vec<Mean> {
        let st = self.read();
        let Some(rows) = st.lots.get(lot) else {
            return Vec::new();
        };
        rows.range(from.timestamp_micros()..to.timestamp_micros())
            .filter_map(|(_, r)| {
                Some(Mean {
                    bucket_start: DateTime::from_timestamp_micros(r.bucket_start)?,
                    occupancy_mean: r.occupancy_mean,
                    capacity: r.capacity,
                })
            })
            .collect()
    }

    /// Lot `lot`'s buckets of `width` in `[from, to)`, hours and days in `zone`: what
    /// [`query::buckets`](super::query::buckets) answers from PostgreSQL.
    pub fn buckets(
        &self,
        lot: &LotId,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        width: Width,
        zone: chrono_tz::Tz,
    ) -> Vec<Bucket> {
        let st = self.read();
        let Some(rows) = st.lots.get(lot) else {
            return Vec::new();
        };
        let mut out: Vec<Bucket> = Vec::new();
        for row in rows
            .range(from.timestamp_micros()..to.timestamp_micros())
            .map(|(_, r)| r)
        {
            let start = bucket_start(row.bucket_start, width, zone);
            match out.last_mut() {
                Some(b) if b.start == start => add(b, row),
                _ => out.push(first(start, row)),
            }
        }
        for b in &mut out {
            b.occupancy_mean /= b.buckets_15m as f64;
        }
        out
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Fold the log from offset zero into the rows, then every new event, until the stop
    /// signal; the board's features line says how far it is.
    pub async fn follow(
        self,
        log: Arc<dyn EventLog>,
        board: StatusBoard,
        batch_events: usize,
        lateness_secs: u64,
        shutdown: CancellationToken,
    ) -> Result<(), ProjectionError> {
        let name = ProjectionName::Features;
        // The fold's window of open buckets lives in this run only: start from zero.
        *self.state.write().unwrap_or_else(|e| e.into_inner()) = State::default();
        self.folded.send_replace(0);
        let mut fold = FeatureFold::new(lateness_secs);
        let mut sub = Subscription::new(log, 0);
        board.set(name, |s| s.state = ProjectionState::Running);
        loop {
            let batch = tokio::select! {
                b = sub.next_batch(batch_events) => b?,
                _ = shutdown.cancelled() => break,
            };
            for e in &batch {
                fold.add(e);
            }
            let to = batch[batch.len() - 1].offset + 1;
            self.put(fold.take_rows(), to);
            let too_late = fold.too_late;
            board.set(name, |s| {
                s.checkpoint = to;
                s.too_late = too_late;
            });
        }
        board.set(name, |s| s.state = ProjectionState::Stopped);
        Ok(())
    }
}

/// The start of the bucket of `width` that the 15-minute row starting at `micros` is
/// in: the row itself, or its hour or day of the lots' local time (`zone`).
fn bucket_start(micros: i64, width: Width, zone: chrono_tz::Tz) -> DateTime<Utc> {
    let at = DateTime::from_timestamp_micros(micros).expect("a row's start is a valid time");
    let local = at.with_timezone(&zone);
    match width {
        Width::Quarter => at,
        // Local minutes and seconds off: the instant the local hour began.
        Width::Hour => {
            at - chrono::Duration::seconds(i64::from(local.minute() * 60 + local.second()))
        }
        Width::Day => {
            let midnight = local.date_naive().and_hms_opt(0, 0, 0).expect("midnight");
            // A zone whose clocks skip midnight starts that day at the first valid time.
            zone.from_local_datetime(&midnight)
                .earliest()
                .map_or(at, |d| d.to_utc())
        }
    }
}

fn first(start: DateTime<Utc>, r: &FeatureRow) -> Bucket {
    Bucket {
        start,
        occupancy_start: r.occupancy_start,
        occupancy_end: r.occupancy_end,
        occupancy_min: r.occupancy_min,
        occupancy_max: r.occupancy_max,
        occupancy_mean: r.occupancy_mean,
        arrivals: r.arrivals.into(),
        departures: r.departures.into(),
        counts: r.counts.into(),
        capacity: r.capacity,
        buckets_15m: 1,
    }
}

/// Fold the next row (later than every row in `b`) into `b`; the mean is a sum until
/// the end.
fn add(b: &mut Bucket, r: &FeatureRow) {
    b.occupancy_end = r.occupancy_end;
    b.occupancy_min = b.occupancy_min.min(r.occupancy_min);
    b.occupancy_max = b.occupancy_max.max(r.occupancy_max);
    b.occupancy_mean += r.occupancy_mean;
    b.arrivals += i64::from(r.arrivals);
    b.departures += i64::from(r.departures);
    b.counts += i64::from(r.counts);
    b.capacity = r.capacity;
    b.buckets_15m += 1;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(lot: &str, at: &str, occ: i32) -> FeatureRow {
        FeatureRow {
            lot_id: LotId::parse(lot).unwrap(),
            bucket_start: at.parse::<DateTime<Utc>>().unwrap().timestamp_micros(),
            occupancy_start: occ - 1,
            occupancy_end: occ,
            occupancy_min: occ - 1,
            occupancy_max: occ,
            occupancy_mean: f64::from(occ) - 0.5,
            arrivals: 1,
            departures: 0,
            counts: 0,
            capacity: 10,
        }
    }

    #[test]
    fn hours_and_days_are_the_zones_and_a_bucket_folds_its_rows_in_order() {
        let m = MemoryFeatures::new(400);
        let lot = LotId::parse("north").unwrap();
        m.put(
            vec![
                // 23:45 and 00:00 in Vancouver (UTC-8): two local days, one UTC day.
                row("north", "2026-11-20T07:45:00Z", 1),
                row("north", "2026-11-20T08:00:00Z", 2),
                row("north", "2026-11-20T08:15:00Z", 3),
            ],
            3,
        );
        let zone = chrono_tz::America::Vancouver;
        let (from, to) = (
            "2026-11-20T00:00:00Z".parse().unwrap(),
            "2026-11-21T00:00:00Z".parse().unwrap(),
        );
        let days = m.buckets(&lot, from, to, Width::Day, zone);
        let starts: Vec<String> = days.iter().map(|b| b.start.to_rfc3339()).collect();
        assert_eq!(
            starts,
            ["2026-11-19T08:00:00+00:00", "2026-11-20T08:00:00+00:00"]
        );
        let second = &days[1];
        assert_eq!(
            (
                second.occupancy_start,
                second.occupancy_end,
                second.buckets_15m
            ),
            (1, 3, 2)
        );
        assert_eq!(second.occupancy_mean, 2.0);
        assert_eq!(second.arrivals, 2);
        // A zone half an hour off UTC: 13:15 to 13:45 there, one hour from 07:30 UTC.
        let india = chrono_tz::Asia::Kolkata;
        let hours = m.buckets(&lot, from, to, Width::Hour, india);
        let starts: Vec<String> = hours.iter().map(|b| b.start.to_rfc3339()).collect();
        assert_eq!(starts, ["2026-11-20T07:30:00+00:00"]);
        assert_eq!(hours[0].buckets_15m, 3);
        assert_eq!(m.position(), 3);
    }

    #[test]
    fn a_lot_keeps_only_its_last_days() {
        let m = MemoryFeatures::new(1);
        let lot = LotId::parse("north").unwrap();
        m.put(vec![row("north", "2026-11-18T08:00:00Z", 1)], 1);
        m.put(vec![row("north", "2026-11-20T08:00:00Z", 2)], 2);
        let all = m.buckets(
            &lot,
            "2026-11-01T00:00:00Z".parse().unwrap(),
            "2026-12-01T00:00:00Z".parse().unwrap(),
            Width::Quarter,
            chrono_tz::UTC,
        );
        assert_eq!(all.len(), 1, "{all:?}");
        assert_eq!(all[0].occupancy_end, 2);
    }
}
