//! `parkade backtest`: rolling-origin evaluation on Birmingham-layout CSVs.
//!
//! For every row of the actuals (lot, time `t`) and every horizon `h`, the model and two
//! baselines forecast the occupancy rate at `t` from the rows of both files whose time
//! is at or before `t - h`:
//!
//! - persistence: the last known rate;
//! - seasonal-weekly: the rate one week before `t` (within 20 minutes), else persistence.
//!
//! The model's weights are fitted on rows up to the earliest actual minus the longest
//! horizon, so no fitted weight has seen a row after any issue time either.
//!
//! Data quirks, as handled here: rows with a negative count are dropped (as history and
//! as actuals); a repeated (lot, time) keeps its first row; counts above capacity are
//! kept as reported (rates above 1) in history and actuals alike; a local time that does
//! not exist (clocks went forward) is dropped; an ambiguous one takes the earlier
//! instant; missing days are simply absent (the seasonal baseline falls back to
//! persistence, the profile averages the days it has).

use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};

use chrono::{NaiveDateTime, TimeZone};
use chrono_tz::Tz;

use super::history::{History, Obs, ProfileParams};
use super::model::{self, Method, Model, NoForecast};

/// One usable row of a Birmingham-layout file.
#[derive(Debug, Clone)]
pub struct Reading {
    pub lot: String,
    /// `LastUpdated` exactly as written.
    pub raw_time: String,
    pub obs: Obs,
}

/// What reading a file dropped, by reason.
#[derive(Debug, Default, Clone)]
pub struct Dropped(pub BTreeMap<&'static str, u64>);

impl std::fmt::Display for Dropped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.is_empty() {
            return write!(f, "none");
        }
        let parts: Vec<String> = self.0.iter().map(|(k, v)| format!("{v} {k}")).collect();
        write!(f, "{}", parts.join(", "))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BacktestError {
    #[error("cannot read {0}: {1}")]
    Read(PathBuf, #[source] csv::Error),
    #[error("{0}: expected the columns SystemCodeNumber,Capacity,Occupancy,LastUpdated (got {1})")]
    Layout(PathBuf, String),
    #[error("{path} line {line}: {message}")]
    Row {
        path: PathBuf,
        line: u64,
        message: String,
    },
    #[error("cannot write {0}: {1}")]
    Write(PathBuf, #[source] std::io::Error),
    #[error("{0} holds no usable rows")]
    Empty(PathBuf),
    #[error("the history is too short to fit the model: {0}")]
    Fit(String),
}

/// Convert a local wall-clock time to UTC seconds (`None` when it does not exist).
pub fn utc_of(tz: Tz, local: &NaiveDateTime) -> Option<(i64, bool)> {
    match tz.from_local_datetime(local) {
        chrono::LocalResult::Single(t) => Some((t.timestamp(), false)),
        chrono::LocalResult::Ambiguous(early, _) => Some((early.timestamp(), true)),
        chrono::LocalResult::None => None,
    }
}

/// Local wall-clock seconds of a UTC instant.
pub fn local_of(tz: Tz, utc: i64) -> i64 {
    let t = chrono::DateTime::from_timestamp(utc, 0).unwrap_or_default();
    tz.from_utc_datetime(&t.naive_utc())
        .naive_local()
        .and_utc()
        .timestamp()
}

/// Read a Birmingham-layout CSV. A row that cannot be parsed is an error naming its
/// line; quirks of real data are dropped and counted (see the module docs).
pub fn read_readings(path: &Path, tz: Tz) -> Result<(Vec<Reading>, Dropped), BacktestError> {
    let mut r = csv::Reader::from_path(path).map_err(|e| BacktestError::Read(path.into(), e))?;
    let headers = r
        .headers()
        .map_err(|e| BacktestError::Read(path.into(), e))?
        .clone();
    let Some(cols) = crate::datasets::birmingham::Columns::find(&headers) else {
        return Err(BacktestError::Layout(
            path.into(),
            headers.iter().collect::<Vec<_>>().join(","),
        ));
    };
    let mut out = Vec::new();
    let mut dropped = Dropped::default();
    let mut seen = HashSet::new();
    let mut record = csv::StringRecord::new();
    while r
        .read_record(&mut record)
        .map_err(|e| BacktestError::Read(path.into(), e))?
    {
        let line = record.position().map_or(0, |p| p.line());
        let bad = |message: String| BacktestError::Row {
            path: path.into(),
            line,
            message,
        };
        let row = crate::datasets::birmingham::row(&record, &cols).map_err(bad)?;
        let (lot, raw_time, local) = (row.code.to_owned(), row.updated_raw.to_owned(), row.updated);
        let (capacity, occupancy) = (f64::from(row.capacity.get()), row.occupancy);
        if occupancy < 0 {
            *dropped.0.entry("negative counts").or_default() += 1;
            continue;
        }
        if !seen.insert((lot.clone(), raw_time.clone())) {
            *dropped.0.entry("repeated readings").or_default() += 1;
            continue;
        }
        let Some((utc, _)) = utc_of(tz, &local) else {
            *dropped.0.entry("nonexistent local times").or_default() += 1;
            continue;
        };
        out.push(Reading {
            lot,
            raw_time,
            obs: Obs::new(utc, local, occupancy as f64 / capacity),
        });
    }
    if out.is_empty() {
        return Err(BacktestError::Empty(path.into()));
    }
    Ok((out, dropped))
}

/// Settings of a backtest.
#[derive(Debug, Clone)]
pub struct Settings {
    pub horizons: Vec<u32>,
    pub timezone: Tz,
    pub profile: ProfileParams,
    /// Forecast as if every lot were new: only the readings of this many days before
    /// the first actual's day (and the actuals) are known at forecast time; the model is
    /// still fitted on the whole history (an established campus, a new lot).
    pub short_history_days: Option<u32>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            horizons: vec![30, 60, 120, 1440],
            timezone: chrono_tz::Europe::London,
            profile: ProfileParams::default(),
            short_history_days: None,
        }
    }
}

/// Errors of one method at one horizon.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Scores {
    pub horizon_min: u32,
    pub rows: usize,
    pub model_mae: f64,
    pub persistence_mae: f64,
    pub seasonal_mae: f64,
    /// The starting point the model improves on: profile + the latest deviation, added
    /// with fixed weights of 1 (the Helsinki park-and-ride approach).
    pub profile_deviation_mae: f64,
    /// Rows where the model could not forecast (too little history): the lot's partial
    /// profile was written instead, or persistence where there was not even that.
    pub model_fallbacks: usize,
    pub profile_fallbacks: usize,
    /// MAE of what was written on those rows, and of persistence on the same rows.
    pub fallback_mae: f64,
    pub fallback_persistence_mae: f64,
    /// Model forecasts (with an interval) whose interval held the actual rate.
    pub covered: usize,
    /// Partial-profile forecasts whose interval held the actual rate.
    pub fallback_covered: usize,
}

impl Scores {
    /// The share of the model's intervals (p10 to p90) that held the actual rate, in
    /// percent: about 80 when the interval says what it means.
    pub fn coverage_pct(&self) -> Option<f64> {
        let intervals = self.rows - self.model_fallbacks;
        (intervals > 0).then(|| 100.0 * self.covered as f64 / intervals as f64)
    }

    /// The share of the partial-profile intervals that held the actual rate, in percent.
    pub fn fallback_coverage_pct(&self) -> Option<f64> {
        (self.profile_fallbacks > 0)
            .then(|| 100.0 * self.fallback_covered as f64 / self.profile_fallbacks as f64)
    }

    /// How much lower the model's MAE is than the better baseline's, in percent.
    pub fn improvement_pct(&self) -> f64 {
        let best = self.persistence_mae.min(self.seasonal_mae);
        if best > 0.0 {
            100.0 * (best - self.model_mae) / best
        } else {
            0.0
        }
    }
}

/// The outcome of a backtest.
#[derive(Debug, Clone)]
pub struct Report {
    pub scores: Vec<Scores>,
    /// Actual rows skipped because nothing was known at any issue time.
    pub unforecastable: usize,
    pub history_dropped: Dropped,
    pub actuals_dropped: Dropped,
    pub model: Model,
}

/// The accuracy the issue asks for: improvement over the better baseline, by horizon.
pub fn target_pct(horizon_min: u32) -> Option<f64> {
    match horizon_min {
        30 => Some(45.0),
        60 => Some(40.0),
        120 => Some(25.0),
        1440 => Some(5.0),
        _ => None,
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "| horizon | rows | model MAE | persistence MAE | seasonal-weekly MAE | model vs better baseline | target | profile + deviation, fixed weights | p10-p90 interval coverage |"
        )?;
        writeln!(f, "|---|---|---|---|---|---|---|---|---|")?;
        for s in &self.scores {
            let target =
                target_pct(s.horizon_min).map_or("-".to_owned(), |t| format!("≥ {t:.0}% lower"));
            writeln!(
                f,
                "| {} min | {} | {:.4} | {:.4} | {:.4} | {:.1}% lower | {} | {:.4} | {} |",
                s.horizon_min,
                s.rows,
                s.model_mae,
                s.persistence_mae,
                s.seasonal_mae,
                s.improvement_pct(),
                target,
                s.profile_deviation_mae,
                s.coverage_pct()
                    .map_or("-".to_owned(), |c| format!("{c:.1}%"))
            )?;
        }
        if self.scores.iter().any(|s| s.model_fallbacks > 0) {
            writeln!(
                f,
                "\nWhere a lot had too little history for the model (fewer than {} earlier days):",
                model::MIN_HISTORY_DAYS
            )?;
            writeln!(f, "| horizon | rows | by the lot's partial profile | by persistence | MAE of what was written | persistence MAE on those rows | partial-profile interval coverage |")?;
            writeln!(f, "|---|---|---|---|---|---|---|")?;
            for s in self.scores.iter().filter(|s| s.model_fallbacks > 0) {
                writeln!(
                    f,
                    "| {} min | {} | {} | {} | {:.4} | {:.4} | {} |",
                    s.horizon_min,
                    s.model_fallbacks,
                    s.profile_fallbacks,
                    s.model_fallbacks - s.profile_fallbacks,
                    s.fallback_mae,
                    s.fallback_persistence_mae,
                    s.fallback_coverage_pct()
                        .map_or("-".to_owned(), |c| format!("{c:.1}%"))
                )?;
            }
        }
        write!(
            f,
            "model {} (fitted on {} horizons); history rows dropped: {}; actual rows dropped: {}; actual rows with nothing known before them: {}",
            self.model.version,
            self.model.horizons.len(),
            self.history_dropped,
            self.actuals_dropped,
            self.unforecastable
        )?;

        Ok(())
    }
}

/// Fit the model on everything known `longest horizon` before the first actual.
fn fit_before(
    all: &History,
    actuals: &[Reading],
    source: &Path,
    s: &Settings,
) -> Result<Model, BacktestError> {
    let tz = s.timezone;
    let longest = i64::from(s.horizons.iter().copied().max().unwrap_or(0));
    let first_actual = actuals.iter().map(|r| r.obs.utc).min().unwrap_or(0);
    let fit_until = first_actual - longest * 60;
    let mut horizons: Vec<u32> = model::FITTED_HORIZONS.to_vec();
    horizons.extend(&s.horizons);
    horizons.sort_unstable();
    horizons.dedup();
    let fits = model::fit(all, fit_until, &horizons, &s.profile, &|u| local_of(tz, u));
    if fits.is_empty() {
        return Err(BacktestError::Fit(format!(
            "no reading up to {} has {} earlier days of history",
            chrono::DateTime::from_timestamp(fit_until, 0).unwrap_or_default(),
            model::MIN_HISTORY_DAYS
        )));
    }
    Ok(super::new_model(
        source.display().to_string(),
        s.profile,
        fits,
    ))
}

/// Run the backtest and write `lot_id,target_time,horizon_min,predicted_rate,low,high` (the interval empty where persistence stood in) to `out`.
pub fn run(
    history_path: &Path,
    actuals_path: &Path,
    out: &Path,
    s: &Settings,
) -> Result<Report, BacktestError> {
    let (history_rows, history_dropped) = read_readings(history_path, s.timezone)?;
    let (actuals, actuals_dropped) = read_readings(actuals_path, s.timezone)?;
    let history = |since: i64| {
        History::new(
            history_rows
                .iter()
                .filter(move |r| r.obs.utc >= since)
                .chain(&actuals)
                .map(|r| (r.lot.clone(), r.obs)),
        )
    };
    let tz = s.timezone;
    let model = fit_before(&history(i64::MIN), &actuals, history_path, s)?;
    // What is known at forecast time: everything, or the last days of a new lot.
    let all = match s.short_history_days {
        None => history(i64::MIN),
        Some(days) => {
            let first = actuals.iter().map(|r| r.obs.local).min().unwrap_or(0);
            let first_day_local = first.div_euclid(86_400) * 86_400;
            // Local midnight as UTC seconds, near enough for a cut of whole days.
            let offset = actuals.first().map_or(0, |r| r.obs.local - r.obs.utc);
            history(first_day_local - offset - i64::from(days) * 86_400)
        }
    };
    let file = std::fs::File::create(out).map_err(|e| BacktestError::Write(out.into(), e))?;
    let mut w = std::io::BufWriter::new(file);
    let werr = |e| BacktestError::Write(out.into(), e);
    writeln!(w, "lot_id,target_time,horizon_min,predicted_rate,low,high").map_err(werr)?;
    let mut scores: Vec<Scores> = s
        .horizons
        .iter()
        .map(|&h| Scores {
            horizon_min: h,
            ..Scores::default()
        })
        .collect();
    let mut unforecastable = 0;
    for r in &actuals {
        let target = (r.obs.utc, r.obs.local);
        for sc in scores.iter_mut() {
            let origin_utc = r.obs.utc - i64::from(sc.horizon_min) * 60;
            let Some(last) = all.last_at(&r.lot, origin_utc) else {
                unforecastable += 1;
                continue;
            };
            let seasonal = all
                .near(&r.lot, r.obs.utc - 7 * 86_400, 20 * 60, origin_utc)
                .unwrap_or(last);
            let origin = (origin_utc, local_of(tz, origin_utc));
            let fixed = model::inputs(&all, &r.lot, target, origin, &model.profile)
                .map_or(last.rate, |i| (i.x[0] + i.x[1] + i.x[2]).max(0.0));
            let (lot, time, h) = (&r.lot, &r.raw_time, sc.horizon_min);
            let predicted = match model.forecast_or_partial(&all, &r.lot, target, origin) {
                Ok((f, method)) => {
                    let (low, high) = (f.low, f.high);
                    let covered = usize::from((low..=high).contains(&r.obs.rate));
                    writeln!(w, "{lot},{time},{h},{:.6},{low:.6},{high:.6}", f.rate)
                        .map_err(werr)?;
                    if method == Method::PartialProfile {
                        sc.model_fallbacks += 1;
                        sc.profile_fallbacks += 1;
                        sc.fallback_covered += covered;
                        sc.fallback_mae += (f.rate - r.obs.rate).abs();
                        sc.fallback_persistence_mae += (last.rate - r.obs.rate).abs();
                    } else {
                        sc.covered += covered;
                    }
                    f.rate
                }
                Err(NoForecast::NotEnoughHistory { .. } | NoForecast::NoReading) => {
                    // Not even a partial profile: persistence, without an interval.
                    sc.model_fallbacks += 1;
                    writeln!(w, "{lot},{time},{h},{:.6},,", last.rate).map_err(werr)?;
                    sc.fallback_mae += (last.rate - r.obs.rate).abs();
                    sc.fallback_persistence_mae += (last.rate - r.obs.rate).abs();
                    last.rate
                }
            };
            sc.rows += 1;
            sc.model_mae += (predicted - r.obs.rate).abs();
            sc.persistence_mae += (last.rate - r.obs.rate).abs();
            sc.seasonal_mae += (seasonal.rate - r.obs.rate).abs();
            sc.profile_deviation_mae += (fixed - r.obs.rate).abs();
        }
    }
    w.flush().map_err(werr)?;
    for sc in &mut scores {
        let n = sc.rows.max(1) as f64;
        sc.model_mae /= n;
        sc.persistence_mae /= n;
        sc.seasonal_mae /= n;
        sc.profile_deviation_mae /= n;
        let fallbacks = sc.model_fallbacks.max(1) as f64;
        sc.fallback_mae /= fallbacks;
        sc.fallback_persistence_mae /= fallbacks;
    }
    Ok(Report {
        scores,
        unforecastable,
        history_dropped,
        actuals_dropped,
        model,
    })
}

/// Split a Birmingham-layout file into history and actuals: the actuals are the rows of
/// the last full local week (Monday to Sunday) the file reaches into, the history is
/// every other row. Rows are copied unchanged. Returns the week's first day.
pub fn split_last_week(
    input: &Path,
    history: &Path,
    actuals: &Path,
) -> Result<(chrono::NaiveDate, usize, usize), BacktestError> {
    use chrono::Datelike;
    let mut r = csv::Reader::from_path(input).map_err(|e| BacktestError::Read(input.into(), e))?;
    let headers = r
        .headers()
        .map_err(|e| BacktestError::Read(input.into(), e))?
        .clone();
    let Some(d) = headers.iter().position(|h| h.trim() == "LastUpdated") else {
        return Err(BacktestError::Layout(
            input.into(),
            headers.iter().collect::<Vec<_>>().join(","),
        ));
    };
    let mut rows = Vec::new();
    for rec in r.records() {
        let rec = rec.map_err(|e| BacktestError::Read(input.into(), e))?;
        let line = rec.position().map_or(0, |p| p.line());
        let raw = rec.get(d).unwrap_or("").trim();
        let day = crate::datasets::birmingham::local_time(raw)
            .map_err(|e| BacktestError::Row {
                path: input.into(),
                line,
                message: format!("LastUpdated {raw:?}: {e}"),
            })?
            .date();
        rows.push((day, rec));
    }
    let last = rows
        .iter()
        .map(|(d, _)| *d)
        .max()
        .ok_or_else(|| BacktestError::Empty(input.into()))?;
    // The Sunday that ends the last full week at or before the last day.
    let sunday =
        last - chrono::Days::new(u64::from((last.weekday().num_days_from_monday() + 1) % 7));
    let monday = sunday - chrono::Days::new(6);
    let open = |p: &Path| -> Result<csv::Writer<std::fs::File>, BacktestError> {
        let mut w = csv::Writer::from_path(p).map_err(|e| BacktestError::Read(p.into(), e))?;
        w.write_record(&headers)
            .map_err(|e| BacktestError::Read(p.into(), e))?;
        Ok(w)
    };
    let (mut wh, mut wa) = (open(history)?, open(actuals)?);
    let (mut nh, mut na) = (0, 0);
    for (day, rec) in rows {
        let (w, n, p) = if day >= monday && day <= sunday {
            (&mut wa, &mut na, actuals)
        } else {
            (&mut wh, &mut nh, history)
        };
        w.write_record(&rec)
            .map_err(|e| BacktestError::Read(p.into(), e))?;
        *n += 1;
    }
    wh.flush()
        .map_err(|e| BacktestError::Write(history.into(), e))?;
    wa.flush()
        .map_err(|e| BacktestError::Write(actuals.into(), e))?;
    Ok((monday, nh, na))
}
