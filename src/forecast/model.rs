//! The forecasting model: a weekly profile per lot, corrected by how far the lot is
//! from it now, with one least-squares fit per horizon.
//!
//! For a target time `t` forecast at issue time `o` (horizon `t - o`):
//!
//! - `P(t)`: the lot's usual rate at `t`'s weekday and time of day (the profile, from
//!   whole days before `o`'s day; see [`History::profile`]);
//! - `d`: the deviation of the latest reading `s <= o` from the profile at `s`;
//!   entered as `d_today` when `s` is on `t`'s local day, else as `d_before` (the
//!   deviation the lot had at the end of an earlier day);
//!
//! and the forecast is `b0 P(t) + b1 d_today + b2 d_before + b3`, with `b` fitted per
//! horizon by ridge least squares on the history's own readings (each forecast made
//! with only what was known at its issue time). This is the Helsinki park-and-ride
//! idea (weekly profile + today's deviation) with the weights learned per horizon
//! instead of fixed. Intervals are the 10th and 90th percentiles of the fit's residuals.

use super::history::{History, Obs, ProfileParams};

/// Horizons (minutes) fitted by training; a forecast uses the nearest fitted horizon at
/// or above its own.
pub const FITTED_HORIZONS: [u32; 14] = [
    15, 30, 45, 60, 90, 120, 180, 240, 360, 480, 720, 960, 1200, 1440,
];
/// A lot needs readings on this many earlier days before it is forecast.
pub const MIN_HISTORY_DAYS: usize = 7;
const FEATURES: usize = 4;

/// The model inputs for one (lot, target, origin).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Inputs {
    pub x: [f64; FEATURES],
    /// The profile value `P(t)`.
    pub profile: f64,
    /// The latest reading known at the origin.
    pub last: Obs,
}

/// Why a lot cannot be forecast at an issue time.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoForecast {
    #[error("not enough history: readings on {days} earlier days, forecasts need {needed}")]
    NotEnoughHistory { days: usize, needed: usize },
    #[error("no reading of this lot at or before the issue time")]
    NoReading,
}

/// Inputs of a forecast for `target` issued at `origin` (both as UTC and local seconds).
pub fn inputs(
    h: &History,
    lot: &str,
    target: (i64, i64),
    origin: (i64, i64),
    p: &ProfileParams,
) -> Result<Inputs, NoForecast> {
    let days = h.days_before(lot, origin.1);
    if days < MIN_HISTORY_DAYS {
        return Err(NoForecast::NotEnoughHistory {
            days,
            needed: MIN_HISTORY_DAYS,
        });
    }
    let last = h.last_at(lot, origin.0).ok_or(NoForecast::NoReading)?;
    let (profile, d) = profile_and_deviation(h, lot, &last, target, origin, p).ok_or(
        NoForecast::NotEnoughHistory {
            days,
            needed: MIN_HISTORY_DAYS,
        },
    )?;
    let same_day = last.local.div_euclid(86_400) == target.1.div_euclid(86_400);
    let (today, before) = if same_day { (d, 0.0) } else { (0.0, d) };
    Ok(Inputs {
        x: [profile, today, before, 1.0],
        profile,
        last,
    })
}

/// The forecast for a lot with some whole days of history but fewer than the model
/// needs ([`MIN_HISTORY_DAYS`]): its own partial profile at the target, corrected by its
/// deviation from that profile at the latest reading, with fixed weights of 1 (fitted
/// weights need a week of days). `None` without an earlier day of the target's kind or
/// a reading at or before the issue time.
pub fn partial_profile(
    h: &History,
    lot: &str,
    target: (i64, i64),
    origin: (i64, i64),
    p: &ProfileParams,
) -> Option<f64> {
    let last = h.last_at(lot, origin.0)?;
    let (profile, deviation) = profile_and_deviation(h, lot, &last, target, origin, p)?;
    Some((profile + deviation).max(0.0))
}

/// The lot's profile at the target, and how far its `last` reading was from its profile
/// at that reading's time; `None` without an earlier day to build the profiles from.
fn profile_and_deviation(
    h: &History,
    lot: &str,
    last: &Obs,
    target: (i64, i64),
    origin: (i64, i64),
    p: &ProfileParams,
) -> Option<(f64, f64)> {
    let profile = h.profile(lot, target.1, origin.1, p)?;
    let at_last = h.profile(lot, last.local, origin.1, p)?;
    Some((profile, last.rate - at_last))
}

/// One horizon's fit.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct HorizonFit {
    pub minutes: u32,
    pub coef: [f64; FEATURES],
    /// Residual percentiles (actual - forecast) of the last week of the training
    /// samples, forecast by weights fitted before that week (of every training sample,
    /// in sample, when that week has too few).
    pub residual_p10: f64,
    pub residual_p90: f64,
    /// Mean absolute error of the occupancy rate on the training samples.
    pub train_mae: f64,
    pub samples: usize,
}

impl HorizonFit {
    /// A forecast of `rate` with this horizon's interval (the fit's residual p10 and
    /// p90) around it.
    fn around(&self, rate: f64) -> Forecast {
        Forecast {
            rate,
            low: (rate + self.residual_p10).max(0.0),
            high: (rate + self.residual_p90).max(0.0),
        }
    }
}

/// A trained model: what `parkade train` saves and the predictor loads.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Model {
    /// Artifact layout version.
    pub format: u32,
    /// Unique, sortable: the training time (UTC) and a content hash.
    pub version: String,
    pub trained_at: String,
    /// What it was trained on (a file or "features").
    pub source: String,
    pub profile: ProfileParams,
    pub horizons: Vec<HorizonFit>,
}

/// A forecast occupancy rate with its interval.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Forecast {
    pub rate: f64,
    pub low: f64,
    pub high: f64,
}

impl Model {
    /// The fit used for a horizon of `minutes`.
    pub fn fit_for(&self, minutes: u32) -> Option<&HorizonFit> {
        self.horizons
            .iter()
            .find(|f| f.minutes >= minutes)
            .or(self.horizons.last())
    }

    /// Forecast `lot` at `target` with what was known at `origin` (UTC, local seconds).
    pub fn forecast(
        &self,
        h: &History,
        lot: &str,
        target: (i64, i64),
        origin: (i64, i64),
    ) -> Result<Forecast, NoForecast> {
        let fit = self.fit_at(target, origin)?;
        let i = inputs(h, lot, target, origin, &self.profile)?;
        Ok(fit.around(dot(&fit.coef, &i.x).max(0.0)))
    }

    /// The fit of the horizon from `origin` to `target`.
    fn fit_at(&self, target: (i64, i64), origin: (i64, i64)) -> Result<&HorizonFit, NoForecast> {
        let minutes = u32::try_from((target.0 - origin.0).max(0) / 60).unwrap_or(u32::MAX);
        self.fit_for(minutes).ok_or(NoForecast::NoReading)
    }
}

/// What made a forecast.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// The fitted model.
    Model,
    /// The lot's partial profile: it has too few days for the model.
    PartialProfile,
}

impl Method {
    /// `model` or `partial_profile`, as stored and sent.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Model => "model",
            Method::PartialProfile => "partial_profile",
        }
    }
}

impl Model {
    /// [`Model::forecast`], or for a lot with too few days for it, the lot's
    /// [`partial_profile`] with the model's interval for the horizon around it (on the
    /// Birmingham week, with 1 to 6 days per lot, it held 76-84% of the actual rates:
    /// `parkade backtest --short-history-days N`).
    pub fn forecast_or_partial(
        &self,
        h: &History,
        lot: &str,
        target: (i64, i64),
        origin: (i64, i64),
    ) -> Result<(Forecast, Method), NoForecast> {
        let short = match self.forecast(h, lot, target, origin) {
            Ok(f) => return Ok((f, Method::Model)),
            Err(e @ NoForecast::NotEnoughHistory { .. }) => e,
            Err(e) => return Err(e),
        };
        let rate = partial_profile(h, lot, target, origin, &self.profile).ok_or(short)?;
        let fit = self.fit_at(target, origin)?;
        Ok((fit.around(rate), Method::PartialProfile))
    }
}

fn dot(a: &[f64; FEATURES], b: &[f64; FEATURES]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Fit every horizon on `h`'s own readings with targets up to `until_utc` (inclusive),
/// each sample built with only what was known at its issue time.
pub fn fit(
    h: &History,
    until_utc: i64,
    horizons: &[u32],
    p: &ProfileParams,
    local_of: &dyn Fn(i64) -> i64,
) -> Vec<HorizonFit> {
    horizons
        .iter()
        .filter_map(|&minutes| {
            let (mut xs, mut ys, mut ts) = (Vec::new(), Vec::new(), Vec::new());
            for lot in h.lots() {
                for o in h.observations(lot).iter().filter(|o| o.utc <= until_utc) {
                    let origin_utc = o.utc - i64::from(minutes) * 60;
                    let origin = (origin_utc, local_of(origin_utc));
                    if let Ok(i) = inputs(h, lot, (o.utc, o.local), origin, p) {
                        xs.push(i.x);
                        ys.push(o.rate);
                        ts.push(o.utc);
                    }
                }
            }
            if xs.len() < 2 * FEATURES {
                return None;
            }
            let coef = least_squares(&xs, &ys, 1e-4);
            let in_sample: Vec<f64> = xs
                .iter()
                .zip(&ys)
                .map(|(x, y)| y - dot(&coef, x).max(0.0))
                .collect();
            let train_mae = in_sample.iter().map(|r| r.abs()).sum::<f64>() / in_sample.len() as f64;
            let mut residuals = out_of_sample(&xs, &ys, &ts, until_utc - CALIBRATION_DAYS * 86_400)
                .unwrap_or(in_sample);
            residuals.sort_by(f64::total_cmp);
            let pct = |q: f64| residuals[((residuals.len() - 1) as f64 * q).round() as usize];
            Some(HorizonFit {
                minutes,
                coef,
                residual_p10: pct(0.1),
                residual_p90: pct(0.9),
                train_mae,
                samples: xs.len(),
            })
        })
        .collect()
}

/// Days at the end of the training history whose forecasts calibrate the interval.
const CALIBRATION_DAYS: i64 = 7;

/// The residuals of the samples after `cut` (UTC seconds) when forecast with weights
/// fitted on the samples up to it: out of sample, as real forecasts are, so the p10-p90
/// interval covers about 80% of what comes next (in-sample residuals of the whole
/// history made the day-ahead interval cover 87% of the Birmingham test week). `None`
/// when either side has too few samples (then the in-sample residuals serve).
fn out_of_sample(xs: &[[f64; FEATURES]], ys: &[f64], ts: &[i64], cut: i64) -> Option<Vec<f64>> {
    let (mut before_x, mut before_y, mut after) = (Vec::new(), Vec::new(), Vec::new());
    for ((x, y), t) in xs.iter().zip(ys).zip(ts) {
        if *t <= cut {
            before_x.push(*x);
            before_y.push(*y);
        } else {
            after.push((x, y));
        }
    }
    if before_x.len() < 2 * FEATURES || after.len() < 50 {
        return None;
    }
    let coef = least_squares(&before_x, &before_y, 1e-4);
    Some(
        after
            .iter()
            .map(|(x, y)| *y - dot(&coef, x).max(0.0))
            .collect(),
    )
}

/// Ridge least squares: minimise |X b - y|^2 + lambda n |b|^2 (normal equations,
/// Gaussian elimination with partial pivoting; the systems are 4 x 4).
pub fn least_squares(xs: &[[f64; FEATURES]], ys: &[f64], lambda: f64) -> [f64; FEATURES] {
    let mut m = [[0.0f64; FEATURES + 1]; FEATURES];
    for (x, y) in xs.iter().zip(ys) {
        for i in 0..FEATURES {
            m[i][FEATURES] += x[i] * y;
            for j in 0..FEATURES {
                m[i][j] += x[i] * x[j];
            }
        }
    }
    for (i, row) in m.iter_mut().enumerate() {
        row[i] += lambda * xs.len() as f64;
    }
    for col in 0..FEATURES {
        let pivot = (col..FEATURES)
            .max_by(|&a, &b| m[a][col].abs().total_cmp(&m[b][col].abs()))
            .expect("non-empty");
        m.swap(col, pivot);
        if m[col][col].abs() < 1e-12 {
            continue;
        }
        for r in 0..FEATURES {
            if r != col {
                let f = m[r][col] / m[col][col];
                let pivot_row = m[col];
                for (c, v) in m[r].iter_mut().enumerate().skip(col) {
                    *v -= f * pivot_row[c];
                }
            }
        }
    }
    let mut b = [0.0; FEATURES];
    for i in 0..FEATURES {
        if m[i][i].abs() >= 1e-12 {
            b[i] = m[i][FEATURES] / m[i][i];
        }
    }
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn least_squares_recovers_a_known_linear_relation() {
        let xs: Vec<[f64; 4]> = (0..50)
            .map(|i| {
                let a = f64::from(i) / 10.0;
                [a, (a * 1.7).sin(), (a * 0.3).cos(), 1.0]
            })
            .collect();
        let ys: Vec<f64> = xs
            .iter()
            .map(|x| 0.5 * x[0] - 2.0 * x[1] + 0.25 * x[2] + 0.1)
            .collect();
        let b = least_squares(&xs, &ys, 0.0);
        for (got, want) in b.iter().zip([0.5, -2.0, 0.25, 0.1]) {
            assert!((got - want).abs() < 1e-9, "{b:?}");
        }
    }
}
