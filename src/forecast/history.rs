//! The observations a forecast may use, per lot, and the weekly profile built from them.
//!
//! An observation is a lot's occupancy rate (occupancy / capacity) at an instant. Each
//! one carries its UTC time (for "known by the issue time") and its local wall-clock
//! time (for the time of day and the weekday of the profile). Every query takes the
//! issue time (`origin`) and reads nothing after it: the profile uses whole local days
//! before the origin's day, the latest observation is the last one at or before it.

use std::collections::{BTreeMap, HashMap};

use chrono::NaiveDateTime;

/// Profile grid step, in minutes of the local day.
const STEP_MIN: i64 = 5;
const GRID: usize = (24 * 60 / STEP_MIN) as usize + 1;
/// Days further back than this are not read by the profile (their weight is tiny).
const MAX_AGE_DAYS: i64 = 12 * 7;

/// One reading of one lot.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Obs {
    /// Seconds since the epoch, UTC.
    pub utc: i64,
    /// Local wall-clock time as seconds since 1970-01-01T00:00 (no zone).
    pub local: i64,
    /// Occupancy / capacity (may exceed 1 where a source reports more than capacity).
    pub rate: f64,
}

impl Obs {
    pub fn new(utc: i64, local: NaiveDateTime, rate: f64) -> Obs {
        Obs {
            utc,
            local: local.and_utc().timestamp(),
            rate,
        }
    }
    fn day(&self) -> i64 {
        self.local.div_euclid(86_400)
    }
    fn minute_of_day(&self) -> f64 {
        self.local.rem_euclid(86_400) as f64 / 60.0
    }
}

/// 1970-01-01 was a Thursday; 0 = Monday.
fn weekday(day: i64) -> u8 {
    ((day + 3).rem_euclid(7)) as u8
}

/// One local day of a lot, linearly interpolated on a 5-minute grid (held flat before
/// the first and after the last reading of the day).
#[derive(Debug, Clone)]
struct DayCurve {
    weekday: u8,
    grid: Box<[f32; GRID]>,
}

impl DayCurve {
    fn build(day: i64, points: &[Obs]) -> DayCurve {
        let mut grid = Box::new([0f32; GRID]);
        let mut j = 0;
        for (i, g) in grid.iter_mut().enumerate() {
            let m = (i as i64 * STEP_MIN) as f64;
            while j + 1 < points.len() && points[j + 1].minute_of_day() <= m {
                j += 1;
            }
            let a = points[j];
            *g = if m <= a.minute_of_day() || j + 1 == points.len() {
                a.rate as f32
            } else {
                let b = points[j + 1];
                let f = (m - a.minute_of_day()) / (b.minute_of_day() - a.minute_of_day());
                (a.rate + (b.rate - a.rate) * f) as f32
            };
        }
        DayCurve {
            weekday: weekday(day),
            grid,
        }
    }

    fn at(&self, minute: f64) -> f64 {
        let x = (minute / STEP_MIN as f64).clamp(0.0, (GRID - 1) as f64);
        let i = (x as usize).min(GRID - 2);
        let f = x - i as f64;
        f64::from(self.grid[i]) * (1.0 - f) + f64::from(self.grid[i + 1]) * f
    }
}

/// How the weekly profile weighs the past.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ProfileParams {
    /// A day `w` weeks old weighs `exp(-w / recency_weeks)`.
    pub recency_weeks: f64,
    /// Share of the same-kind-of-day profile (weekday or weekend) blended into the
    /// same-weekday profile.
    pub day_kind_share: f64,
}

impl Default for ProfileParams {
    fn default() -> Self {
        ProfileParams {
            recency_weeks: 3.0,
            day_kind_share: 0.3,
        }
    }
}

#[derive(Debug, Default, Clone)]
struct LotSeries {
    obs: Vec<Obs>,
    days: BTreeMap<i64, DayCurve>,
}

/// The observations of many lots, sorted, with a curve per local day.
#[derive(Debug, Default, Clone)]
pub struct History {
    lots: HashMap<String, LotSeries>,
}

impl History {
    /// Build from unsorted observations. Readings at the same UTC instant of a lot keep
    /// the first.
    pub fn new(rows: impl IntoIterator<Item = (String, Obs)>) -> History {
        let mut lots: HashMap<String, LotSeries> = HashMap::new();
        for (lot, o) in rows {
            lots.entry(lot).or_default().obs.push(o);
        }
        for s in lots.values_mut() {
            s.obs.sort_by_key(|o| o.utc);
            s.obs.dedup_by_key(|o| o.utc);
            let mut by_day: BTreeMap<i64, Vec<Obs>> = BTreeMap::new();
            for o in &s.obs {
                by_day.entry(o.day()).or_default().push(*o);
            }
            for (day, mut pts) in by_day {
                pts.sort_by_key(|o| o.local);
                s.days.insert(day, DayCurve::build(day, &pts));
            }
        }
        History { lots }
    }

    pub fn lots(&self) -> impl Iterator<Item = &str> {
        self.lots.keys().map(String::as_str)
    }

    /// Every observation of a lot, oldest first.
    pub fn observations(&self, lot: &str) -> &[Obs] {
        self.lots.get(lot).map_or(&[], |s| &s.obs)
    }

    /// The last observation at or before `origin_utc`.
    pub fn last_at(&self, lot: &str, origin_utc: i64) -> Option<Obs> {
        let obs = self.observations(lot);
        let i = obs.partition_point(|o| o.utc <= origin_utc);
        i.checked_sub(1).map(|i| obs[i])
    }

    /// The observation closest to `utc` within `tolerance` seconds, known by `origin_utc`.
    pub fn near(&self, lot: &str, utc: i64, tolerance: i64, origin_utc: i64) -> Option<Obs> {
        let obs = self.observations(lot);
        let from = obs.partition_point(|o| o.utc < utc - tolerance);
        obs[from..]
            .iter()
            .take_while(|o| o.utc <= utc + tolerance)
            .filter(|o| o.utc <= origin_utc)
            .min_by_key(|o| (o.utc - utc).abs())
            .copied()
    }

    /// Local days with readings before the local day of `origin_local`.
    pub fn days_before(&self, lot: &str, origin_local: i64) -> usize {
        let cutoff = origin_local.div_euclid(86_400);
        self.lots
            .get(lot)
            .map_or(0, |s| s.days.range(..cutoff).count())
    }

    /// The usual rate of `lot` at local time `target_local`, from whole local days before
    /// the day of `origin_local`: recency-weighted mean of the same weekday, blended with
    /// the same kind of day (weekday/weekend). `None` without any such day.
    pub fn profile(
        &self,
        lot: &str,
        target_local: i64,
        origin_local: i64,
        p: &ProfileParams,
    ) -> Option<f64> {
        let s = self.lots.get(lot)?;
        let cutoff = origin_local.div_euclid(86_400);
        let day = target_local.div_euclid(86_400);
        let minute = target_local.rem_euclid(86_400) as f64 / 60.0;
        let wd = weekday(day);
        let weekend = wd >= 5;
        let (mut same, mut same_w, mut kind, mut kind_w) = (0.0, 0.0, 0.0, 0.0);
        for (d, c) in s.days.range(cutoff - MAX_AGE_DAYS..cutoff) {
            let w = (-((day - d) as f64) / 7.0 / p.recency_weeks).exp();
            let v = c.at(minute);
            if c.weekday == wd {
                same += w * v;
                same_w += w;
            }
            if (c.weekday >= 5) == weekend {
                kind += w * v;
                kind_w += w;
            }
        }
        match (same_w > 0.0, kind_w > 0.0) {
            (true, true) => {
                Some((1.0 - p.day_kind_share) * same / same_w + p.day_kind_share * kind / kind_w)
            }
            (true, false) => Some(same / same_w),
            (false, true) => Some(kind / kind_w),
            (false, false) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> NaiveDateTime {
        NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M").unwrap()
    }

    fn obs(s: &str, rate: f64) -> (String, Obs) {
        let t = at(s);
        ("a".into(), Obs::new(t.and_utc().timestamp(), t, rate))
    }

    #[test]
    fn the_profile_reads_only_days_before_the_origin_day() {
        let h = History::new([
            obs("2016-10-03 08:00", 0.2),
            obs("2016-10-03 10:00", 0.6),
            obs("2016-10-10 09:00", 0.9),
        ]);
        let p = ProfileParams {
            recency_weeks: 3.0,
            day_kind_share: 0.0,
        };
        let target = at("2016-10-17 09:00").and_utc().timestamp();
        // Origin on 10-10: only 10-03 is a whole earlier day; 09:00 is halfway.
        let origin = at("2016-10-10 12:00").and_utc().timestamp();
        let v = h.profile("a", target, origin, &p).unwrap();
        assert!((v - 0.4).abs() < 1e-6, "{v}");
        // Origin on 10-11: 10-10 counts too, weighted by recency.
        let origin = at("2016-10-11 00:00").and_utc().timestamp();
        let v = h.profile("a", target, origin, &p).unwrap();
        let (w1, w2) = ((-2.0f64 / 3.0).exp(), (-1.0f64 / 3.0).exp());
        assert!((v - (0.4 * w1 + 0.9 * w2) / (w1 + w2)).abs() < 1e-6, "{v}");
        // Before any whole day there is no profile.
        let origin = at("2016-10-03 12:00").and_utc().timestamp();
        assert_eq!(h.profile("a", target, origin, &p), None);
    }

    #[test]
    fn last_at_and_near_never_look_past_the_origin() {
        let h = History::new([obs("2016-10-03 08:00", 0.2), obs("2016-10-03 08:30", 0.4)]);
        let t = |s| at(s).and_utc().timestamp();
        assert_eq!(h.last_at("a", t("2016-10-03 08:29")).unwrap().rate, 0.2);
        assert_eq!(h.last_at("a", t("2016-10-03 08:30")).unwrap().rate, 0.4);
        assert!(h.last_at("a", t("2016-10-03 07:59")).is_none());
        let near = h.near("a", t("2016-10-03 08:25"), 1800, t("2016-10-03 08:10"));
        assert_eq!(near.unwrap().rate, 0.2);
    }
}
