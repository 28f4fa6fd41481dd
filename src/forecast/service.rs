//! The forecasts inside the service: training from the features, the saved model
//! artifact, and the predictor that forecasts every lot on a schedule, into
//! `lot_forecasts` (PostgreSQL) or memory (the embedded defaults).
//!
//! Readings for the model come from the features: every 15-minute bucket in which the
//! lot had an event is one reading, its occupancy at the bucket's end over its capacity,
//! at the bucket's end.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use sqlx::PgPool;

use super::backtest::local_of;
use super::history::{History, Obs, ProfileParams};
use super::model::{self, Model};
use super::query::Point;
use crate::log::EventLog;
use crate::projections::features::memory::MemoryFeatures;
use crate::projections::{ProjectionState, StatusBoard};

/// Name of the predictor on the status board.
pub const NAME: crate::projections::ProjectionName = crate::projections::ProjectionName::Predictor;
/// Weeks of features read for training and forecasting.
/// Weeks of readings a model is trained on, and a forecast looks back at.
pub const WEEKS_READ: i64 = 12;

#[derive(Debug, thiserror::Error)]
pub enum ForecastError {
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("model file {path}: {source}")]
    File {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("model file {path} is not a parkade model: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("not enough history to train: {0}")]
    NotEnoughHistory(String),
    #[error("reading the features lake: {0}")]
    Lake(String),
}

/// Where the predictor reads the features and keeps its runs: PostgreSQL
/// (`lot_features_15m`, `lot_forecasts`), or on the embedded defaults the features in
/// memory and each lot's newest run in memory. Memory is rebuilt like the features: the
/// predictor's first run after a start waits for them to fold the log, then forecasts.
#[derive(Clone)]
pub enum ForecastStore {
    Postgres(PgPool),
    Memory {
        features: MemoryFeatures,
        runs: Runs,
        log: Arc<dyn EventLog>,
    },
}

/// Each lot's newest forecast run, in memory.
#[derive(Clone, Default)]
pub struct Runs(Arc<RwLock<HashMap<String, Arc<[Point]>>>>);

/// One lot's forecast points of a run.
pub type LotRun = (String, Vec<Point>);

impl ForecastStore {
    /// The database, when the store is PostgreSQL.
    pub fn pool(&self) -> Option<&PgPool> {
        match self {
            ForecastStore::Postgres(pool) => Some(pool),
            ForecastStore::Memory { .. } => None,
        }
    }

    /// Wait until the features hold every event logged so far (memory; PostgreSQL's are
    /// read as far as its projection is).
    pub async fn caught_up(&self) {
        if let ForecastStore::Memory { features, log, .. } = self {
            features.folded_to(log.durable_end()).await;
        }
    }

    /// Readings from the features of the last `WEEKS_READ` weeks before `until`, of one
    /// lot or of every lot (`None`).
    pub async fn observations(
        &self,
        tz: Tz,
        until: DateTime<Utc>,
        lot: Option<&str>,
    ) -> Result<History, ForecastError> {
        let rows = match self {
            ForecastStore::Postgres(pool) => {
                crate::projections::features::query::readings(pool, until, WEEKS_READ as i32, lot)
                    .await?
            }
            ForecastStore::Memory { features, .. } => {
                features.readings(until, WEEKS_READ as u32, lot)
            }
        };
        Ok(history_of(rows, tz))
    }

    /// The lots to forecast, with their capacities, by id.
    async fn capacities(&self) -> Result<Vec<(String, i32)>, ForecastError> {
        Ok(match self {
            ForecastStore::Postgres(pool) => crate::projections::occupancy::capacities(pool)
                .await?
                .into_iter()
                .map(|l| (l.lot_id, l.capacity))
                .collect(),
            ForecastStore::Memory { features, .. } => features
                .capacities()
                .into_iter()
                .map(|(id, capacity)| (id.as_str().to_owned(), capacity))
                .collect(),
        })
    }

    /// Keep a run, and let runs issued before `keep_from` go.
    async fn write(&self, run: Vec<LotRun>, keep_from: DateTime<Utc>) -> Result<(), ForecastError> {
        match self {
            ForecastStore::Postgres(pool) => {
                insert(pool, run).await?;
                sqlx::query("DELETE FROM lot_forecasts WHERE issued_at < $1")
                    .bind(keep_from)
                    .execute(pool)
                    .await?;
            }
            ForecastStore::Memory { runs, .. } => {
                let mut all = runs.0.write().unwrap_or_else(|e| e.into_inner());
                for (lot, points) in run {
                    all.insert(lot, points.into());
                }
                all.retain(|_, points| points.first().is_some_and(|p| p.issued_at >= keep_from));
            }
        }
        Ok(())
    }

    /// The newest forecast run of a lot, oldest target first (empty when it has none).
    pub async fn latest(&self, lot: &str) -> Result<Arc<[Point]>, ForecastError> {
        match self {
            ForecastStore::Postgres(pool) => Ok(super::query::latest(pool, lot).await?.into()),
            ForecastStore::Memory { runs, .. } => {
                let all = runs.0.read().unwrap_or_else(|e| e.into_inner());
                Ok(all.get(lot).cloned().unwrap_or_else(|| Arc::new([])))
            }
        }
    }

    /// When the newest reading (of one lot, or of any) ends: where training and the
    /// history of a lot are counted back from. `None` without any reading.
    pub async fn newest_reading(
        &self,
        lot: Option<&str>,
    ) -> Result<Option<DateTime<Utc>>, ForecastError> {
        Ok(match self {
            ForecastStore::Postgres(pool) => {
                crate::projections::features::query::newest_reading(pool, lot).await?
            }
            ForecastStore::Memory { features, .. } => features.newest_reading(lot),
        })
    }

    /// Why a lot has no forecast: its days of readings (of the [`WEEKS_READ`] weeks up
    /// to its newest reading, before that reading's day), and when that reading ends.
    pub async fn days_of_history(
        &self,
        lot: &str,
        tz: Tz,
    ) -> Result<(usize, Option<DateTime<Utc>>), ForecastError> {
        let Some(newest) = self.newest_reading(Some(lot)).await? else {
            return Ok((0, None));
        };
        let h = self.observations(tz, newest, Some(lot)).await?;
        Ok((
            h.days_before(lot, local_of(tz, newest.timestamp())),
            Some(newest),
        ))
    }
}

/// The training history in the features lake (`store`): the same readings as
/// [`observations`] reads from PostgreSQL, from the day files.
pub async fn observations_in_lake(
    store: &crate::projections::archive::Store,
    tz: Tz,
    until: DateTime<Utc>,
) -> Result<History, ForecastError> {
    let rows = crate::projections::features::lake::readings(store, until, WEEKS_READ as u32)
        .await
        .map_err(ForecastError::Lake)?;
    Ok(history_of(rows, tz))
}

/// Readings (a bucket's occupancy at its end) as a history of rates, hours in `tz`.
fn history_of(rows: Vec<crate::projections::features::query::Reading>, tz: Tz) -> History {
    History::new(rows.into_iter().map(|r| {
        let utc = r.at.timestamp();
        let local = local_of(tz, utc);
        (
            r.lot_id,
            Obs {
                utc,
                local,
                rate: f64::from(r.occupancy_end) / f64::from(r.capacity),
            },
        )
    }))
}

/// Where `parkade train` reads its readings.
pub enum TrainingSource<'a> {
    /// A Birmingham-layout CSV, read whole.
    Csv(&'a Path),
    /// The features lake in the archive's store.
    Lake(&'a crate::projections::archive::Store),
    /// `lot_features_15m` in PostgreSQL.
    Features(PgPool),
}

/// The readings to train on and where they came from.
pub struct TrainingData {
    pub history: History,
    /// What they were read from, for the model's record and the user.
    pub source: String,
    /// The end of the [`WEEKS_READ`] weeks read (`None`: a CSV, read whole).
    pub window_end: Option<DateTime<Utc>>,
    /// A CSV's readings read, and the rows left out with why (`None` for the other
    /// sources).
    pub csv_rows: Option<(usize, String)>,
}

/// The readings of `from` in `tz`, the [`WEEKS_READ`] weeks up to `until` or, without
/// it, up to the newest reading there (not the clock: history that ended long ago
/// trains too).
pub async fn training_data(
    from: TrainingSource<'_>,
    tz: Tz,
    until: Option<DateTime<Utc>>,
) -> anyhow::Result<TrainingData> {
    let none_yet = |source: &str| {
        anyhow::anyhow!("no readings in {source} to train on: import history (`parkade import`) or send events first, and let the features fold them")
    };
    match from {
        TrainingSource::Csv(path) => {
            let (rows, dropped) = super::backtest::read_readings(path, tz)?;
            let read = rows.len();
            Ok(TrainingData {
                history: History::new(rows.into_iter().map(|r| (r.lot, r.obs))),
                source: path.display().to_string(),
                window_end: None,
                csv_rows: Some((read, dropped.to_string())),
            })
        }
        TrainingSource::Lake(store) => {
            let end = match until {
                Some(t) => t,
                None => crate::projections::features::lake::newest_day_end(store)
                    .await
                    .map_err(anyhow::Error::msg)?
                    .ok_or_else(|| none_yet(&store.describe()))?,
            };
            Ok(TrainingData {
                history: observations_in_lake(store, tz, end).await?,
                source: format!("features lake {}", store.describe()),
                window_end: Some(end),
                csv_rows: None,
            })
        }
        TrainingSource::Features(pool) => {
            let store = ForecastStore::Postgres(pool);
            let end = match until {
                Some(t) => t,
                None => store
                    .newest_reading(None)
                    .await?
                    .ok_or_else(|| none_yet("lot_features_15m"))?,
            };
            Ok(TrainingData {
                history: store.observations(tz, end, None).await?,
                source: "features".to_owned(),
                window_end: Some(end),
                csv_rows: None,
            })
        }
    }
}

/// Fit a model on `h` (every reading up to `until`).
pub fn train(h: &History, until: i64, tz: Tz, source: String) -> Result<Model, ForecastError> {
    let profile = ProfileParams::default();
    let fits = model::fit(h, until, &model::FITTED_HORIZONS, &profile, &|u| {
        local_of(tz, u)
    });
    if fits.is_empty() {
        return Err(ForecastError::NotEnoughHistory(format!(
            "no lot has readings on {} days before its latest ones",
            model::MIN_HISTORY_DAYS
        )));
    }
    Ok(super::new_model(source, profile, fits))
}

/// Where models are kept in a data directory.
pub fn models_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("models")
}

/// Save `m` as `models/{version}.json` and make it current (`models/CURRENT` names it;
/// written to a temporary file and renamed, so a crash leaves the old or the new one).
/// With a database, also record it in `forecast_models`.
pub async fn save(
    m: &Model,
    data_dir: &Path,
    pool: Option<&PgPool>,
) -> Result<PathBuf, ForecastError> {
    let dir = models_dir(data_dir);
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ForecastError::File { path, source }
    };
    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    let file = dir.join(format!("{}.json", m.version));
    let text = serde_json::to_string_pretty(m).expect("a model serialises");
    std::fs::write(&file, &text).map_err(io(&file))?;
    let tmp = dir.join("CURRENT.tmp");
    std::fs::write(&tmp, format!("{}\n", m.version)).map_err(io(&tmp))?;
    std::fs::rename(&tmp, dir.join("CURRENT")).map_err(io(&dir))?;
    if let Some(pool) = pool {
        let trained_at: DateTime<Utc> = m.trained_at.parse().unwrap_or_else(|_| Utc::now());
        sqlx::query("INSERT INTO forecast_models (version, trained_at, source, model) VALUES ($1, $2, $3, $4::jsonb) ON CONFLICT (version) DO NOTHING")
            .bind(&m.version)
            .bind(trained_at)
            .bind(&m.source)
            .bind(&text)
            .execute(pool)
            .await?;
    }
    Ok(file)
}

/// The current model of a data directory, if one was saved.
pub fn load_current(data_dir: &Path) -> Result<Option<Model>, ForecastError> {
    let dir = models_dir(data_dir);
    let current = dir.join("CURRENT");
    let version = match std::fs::read_to_string(&current) {
        Ok(v) => v.trim().to_owned(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(ForecastError::File {
                path: current,
                source,
            })
        }
    };
    let path = dir.join(format!("{version}.json"));
    let text = std::fs::read_to_string(&path).map_err(|source| ForecastError::File {
        path: path.clone(),
        source,
    })?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|source| ForecastError::Parse { path, source })
}

/// What one predictor run did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct RunSummary {
    pub lots_forecast: usize,
    pub rows: usize,
    /// Lots skipped, with the reason.
    pub skipped: Vec<(String, String)>,
    pub model_version: Option<String>,
}

/// Forecast every lot of `lots` (id, capacity) from `issued_at` to `horizon_hours`
/// ahead, every 15 minutes, with what `h` knew at `issued_at`.
pub fn forecast_lots(
    model: &Model,
    h: &History,
    lots: Vec<(String, i32)>,
    tz: Tz,
    issued_at: DateTime<Utc>,
    horizon_hours: u32,
) -> (Vec<LotRun>, RunSummary) {
    let origin_utc = issued_at.timestamp();
    let origin = (origin_utc, local_of(tz, origin_utc));
    let first = (origin_utc / 900 + 1) * 900;
    let steps = i64::from(horizon_hours) * 4;
    let mut summary = RunSummary {
        model_version: Some(model.version.clone()),
        ..RunSummary::default()
    };
    let mut run = Vec::new();
    for (lot, capacity) in lots {
        let cap = f64::from(capacity);
        let mut points = Vec::new();
        for k in 0..steps {
            let t = first + k * 900;
            match model.forecast_or_partial(h, &lot, (t, local_of(tz, t)), origin) {
                Ok((f, method)) => points.push(Point {
                    issued_at,
                    target_time: DateTime::from_timestamp(t, 0).unwrap_or_default(),
                    horizon_min: i32::try_from((t - origin_utc) / 60).unwrap_or(i32::MAX),
                    predicted_occupancy: (f.rate * cap).min(cap),
                    low: (f.low * cap).min(cap),
                    high: (f.high * cap).min(cap),
                    capacity,
                    model_version: model.version.clone(),
                    method: method.as_str().to_owned(),
                }),
                Err(e) => {
                    summary.skipped.push((lot.clone(), e.to_string()));
                    break;
                }
            }
        }
        if !points.is_empty() {
            summary.lots_forecast += 1;
            summary.rows += points.len();
            run.push((lot, points));
        }
    }
    (run, summary)
}

/// Write a run's rows to `lot_forecasts`.
async fn insert(pool: &PgPool, run: Vec<LotRun>) -> Result<(), sqlx::Error> {
    let Some(first) = run.first().and_then(|(_, p)| p.first()) else {
        return Ok(());
    };
    let (issued_at, version) = (first.issued_at, first.model_version.clone());
    let (mut ids, mut targets, mut horizons, mut occ, mut low, mut high, mut caps) =
        (vec![], vec![], vec![], vec![], vec![], vec![], vec![]);
    let mut methods = vec![];
    for (lot, points) in run {
        for p in points {
            methods.push(p.method);
            ids.push(lot.clone());
            targets.push(p.target_time);
            horizons.push(p.horizon_min);
            occ.push(p.predicted_occupancy);
            low.push(p.low);
            high.push(p.high);
            caps.push(p.capacity);
        }
    }
    sqlx::query(
        "INSERT INTO lot_forecasts (lot_id, issued_at, target_time, horizon_min, predicted_occupancy, low, high, capacity, model_version, method) \
         SELECT u.lot_id, $2, u.target_time, u.horizon_min, u.predicted, u.low, u.high, u.capacity, $3, u.method \
         FROM UNNEST($1::text[], $4::timestamptz[], $5::int4[], $6::float8[], $7::float8[], $8::float8[], $9::int4[], $10::text[]) \
           AS u(lot_id, target_time, horizon_min, predicted, low, high, capacity, method) \
         ON CONFLICT (lot_id, issued_at, target_time) DO NOTHING",
    )
    .bind(ids)
    .bind(issued_at)
    .bind(version)
    .bind(targets)
    .bind(horizons)
    .bind(occ)
    .bind(low)
    .bind(high)
    .bind(caps)
    .bind(methods)
    .execute(pool)
    .await?;
    Ok(())
}

/// Runs the predictor until shut down: every `interval` (or when woken), forecast
/// every lot. Without a saved model it trains one from the features first (and saves
/// it) once there is enough history.
#[derive(Clone)]
pub struct Predictor {
    pub store: ForecastStore,
    pub data_dir: PathBuf,
    pub tz: Tz,
    pub interval: Duration,
    pub horizon_hours: u32,
    pub keep_hours: u32,
    pub board: StatusBoard,
    /// Runs the predictor before its interval is over.
    pub wake: Arc<tokio::sync::Notify>,
}

impl Predictor {
    /// The predictor of `config`'s `[forecast]` settings, on `store`.
    pub fn new(
        store: ForecastStore,
        config: &crate::Config,
        tz: Tz,
        board: &StatusBoard,
        wake: Arc<tokio::sync::Notify>,
    ) -> Predictor {
        let f = &config.forecast;
        Predictor {
            store,
            data_dir: config.data_dir.clone(),
            tz,
            interval: Duration::from_secs(f.interval_secs),
            horizon_hours: f.horizon_hours,
            keep_hours: f.keep_hours,
            board: board.clone(),
            wake,
        }
    }

    pub async fn run(self, shutdown: CancellationToken) {
        let mut model: Option<Model> = None;
        loop {
            // A run may wait for the features to fold the log: stopping does not wait.
            let run = tokio::select! {
                r = self.once(&mut model) => r,
                _ = shutdown.cancelled() => break,
            };
            match run {
                Ok(s) => {
                    tracing::info!(lots = s.lots_forecast, rows = s.rows, skipped = s.skipped.len(), model = ?s.model_version, "forecasts written");
                    self.board
                        .set(NAME, |st| st.state = ProjectionState::Running);
                }
                Err(ForecastError::NotEnoughHistory(why)) => {
                    tracing::info!(reason = %why, "no forecasts yet");
                    self.board.set(NAME, |st| {
                        st.state = ProjectionState::Running;
                        st.last_error = Some(format!("no model yet: not enough history ({why})"));
                    });
                }
                Err(e) => {
                    tracing::error!(error = %e, "predictor run failed; next run at the next interval");
                    self.board.report_failure_text(NAME, e.to_string());
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(self.interval) => {}
                _ = self.wake.notified() => {}
                _ = shutdown.cancelled() => break,
            }
        }
        self.board.set(NAME, |s| s.state = ProjectionState::Stopped);
    }

    async fn once(&self, model: &mut Option<Model>) -> Result<RunSummary, ForecastError> {
        if model.is_none() {
            *model = load_current(&self.data_dir)?;
        }
        self.store.caught_up().await;
        let now = Utc::now();
        let h = self.store.observations(self.tz, now, None).await?;
        if model.is_none() {
            // Trained on the weeks up to the newest reading, not the clock: imported
            // history that ended long ago trains a model too.
            let until = match self.store.newest_reading(None).await? {
                Some(t) if t < now => t,
                _ => now,
            };
            let m = if until == now {
                train(&h, now.timestamp(), self.tz, "features".into())?
            } else {
                let past = self.store.observations(self.tz, until, None).await?;
                train(&past, until.timestamp(), self.tz, "features".into())?
            };
            let path = save(&m, &self.data_dir, self.store.pool()).await?;
            tracing::info!(version = %m.version, path = %path.display(), "trained a model from the features");
            *model = Some(m);
        }
        let m = model.as_ref().expect("loaded or trained above");
        let lots = self.store.capacities().await?;
        let (run, summary) = forecast_lots(m, &h, lots, self.tz, now, self.horizon_hours);
        let keep_from = now - chrono::Duration::hours(i64::from(self.keep_hours));
        self.store.write(run, keep_from).await?;
        Ok(summary)
    }
}
