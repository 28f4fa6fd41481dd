//! `lot_features_15m`: writing the fold's rows with the checkpoint, the runner that keeps
//! it caught up, and the rebuild from offset zero.
//!
//! The fold keeps a window of recent buckets in memory. On start the runner folds the
//! log up to its checkpoint again (writing nothing) so the window is what it was, then
//! continues from the checkpoint: the rows are a function of the log alone.

use std::collections::BTreeMap;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

use sqlx::{PgPool, Postgres, Transaction};

use super::fold::{FeatureFold, FeatureRow};
use crate::domain::RecordedEvent;
use crate::log::EventLog;
use crate::projections::runner::Projection;
use crate::projections::{db, ProjectionError, ProjectionName, ProjectionStatus, RebuildStats};

/// The projection's name in `projection_checkpoints` and `parkade replay --projection`.
pub const NAME: ProjectionName = ProjectionName::Features;
const TABLE: &str = "lot_features_15m";

/// A row of `lot_features_15m` as PostgreSQL gives it (`SELECT` of every column).
impl<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow> for FeatureRow {
    fn from_row(row: &'r sqlx::postgres::PgRow) -> Result<Self, sqlx::Error> {
        use sqlx::Row;
        let lot: String = row.try_get("lot_id")?;
        let start: chrono::DateTime<chrono::Utc> = row.try_get("bucket_start")?;
        Ok(FeatureRow {
            lot_id: crate::domain::LotId::from_normalised(&lot),
            bucket_start: start.timestamp_micros(),
            occupancy_start: row.try_get("occupancy_start")?,
            occupancy_end: row.try_get("occupancy_end")?,
            occupancy_min: row.try_get("occupancy_min")?,
            occupancy_max: row.try_get("occupancy_max")?,
            occupancy_mean: row.try_get("occupancy_mean")?,
            arrivals: row.try_get("arrivals")?,
            departures: row.try_get("departures")?,
            counts: row.try_get("counts")?,
            capacity: row.try_get("capacity")?,
        })
    }
}

/// Upsert rows into `table` (the last row of a key wins).
async fn write_rows(
    tx: &mut Transaction<'_, Postgres>,
    table: &str,
    rows: Vec<FeatureRow>,
) -> Result<(), ProjectionError> {
    let mut latest: BTreeMap<(String, i64), FeatureRow> = BTreeMap::new();
    for r in rows {
        latest.insert((r.lot_id.as_str().to_owned(), r.bucket_start), r);
    }
    let rows: Vec<FeatureRow> = latest.into_values().collect();
    if table == TABLE {
        mark_days_dirty(tx, &rows).await?;
    }
    for chunk in rows.chunks(5_000) {
        let col = |f: fn(&FeatureRow) -> i32| chunk.iter().map(f).collect::<Vec<i32>>();
        let sql = format!(
            "INSERT INTO {table} (lot_id, bucket_start, occupancy_start, occupancy_end, occupancy_min, \
               occupancy_max, occupancy_mean, arrivals, departures, counts, capacity) \
             SELECT * FROM UNNEST($1::text[], $2::timestamptz[], $3::int4[], $4::int4[], $5::int4[], \
               $6::int4[], $7::float8[], $8::int4[], $9::int4[], $10::int4[], $11::int4[]) \
             ON CONFLICT (lot_id, bucket_start) DO UPDATE SET occupancy_start = EXCLUDED.occupancy_start, \
               occupancy_end = EXCLUDED.occupancy_end, occupancy_min = EXCLUDED.occupancy_min, \
               occupancy_max = EXCLUDED.occupancy_max, occupancy_mean = EXCLUDED.occupancy_mean, \
               arrivals = EXCLUDED.arrivals, departures = EXCLUDED.departures, counts = EXCLUDED.counts, \
               capacity = EXCLUDED.capacity"
        );
        sqlx::query(&sql)
            .bind(
                chunk
                    .iter()
                    .map(|r| r.lot_id.as_str().to_owned())
                    .collect::<Vec<_>>(),
            )
            .bind(
                chunk
                    .iter()
                    .map(|r| crate::domain::Timestamp::from_micros(r.bucket_start).to_datetime())
                    .collect::<Vec<_>>(),
            )
            .bind(col(|r| r.occupancy_start))
            .bind(col(|r| r.occupancy_end))
            .bind(col(|r| r.occupancy_min))
            .bind(col(|r| r.occupancy_max))
            .bind(chunk.iter().map(|r| r.occupancy_mean).collect::<Vec<f64>>())
            .bind(col(|r| r.arrivals))
            .bind(col(|r| r.departures))
            .bind(col(|r| r.counts))
            .bind(col(|r| r.capacity))
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}

/// Mark the UTC days of `rows` as changed, for the lake exporter.
async fn mark_days_dirty(
    tx: &mut Transaction<'_, Postgres>,
    rows: &[FeatureRow],
) -> Result<(), ProjectionError> {
    let mut days: Vec<chrono::NaiveDate> = rows
        .iter()
        .map(|r| {
            crate::domain::Timestamp::from_micros(r.bucket_start)
                .to_datetime()
                .date_naive()
        })
        .collect();
    days.sort_unstable();
    days.dedup();
    sqlx::query(
        "INSERT INTO lot_features_dirty_days (day, version) SELECT d, 1 FROM UNNEST($1::date[]) AS d \
         ON CONFLICT (day) DO UPDATE SET version = lot_features_dirty_days.version + 1",
    )
    .bind(days)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Write rows covering the log range `[from, to)` with the checkpoint, in one
/// transaction. `Ok(Some(next))`: a rebuild moved the checkpoint; nothing was written.
pub async fn write_batch(
    pool: &PgPool,
    log_id: uuid::Uuid,
    from: u64,
    to: u64,
    rows: Vec<FeatureRow>,
) -> Result<Option<u64>, ProjectionError> {
    let mut tx = pool.begin().await?;
    if let Some(next) = db::lock_checkpoint(&mut tx, NAME, log_id, from).await? {
        return Ok(Some(next));
    }
    write_rows(&mut tx, TABLE, rows).await?;
    db::set_checkpoint(&mut tx, NAME, log_id, to).await?;
    tx.commit().await?;
    Ok(None)
}

/// Fold the log `[0, end)`, handing each batch's rows to `rows`; returns the fold (its
/// window as it was at `end`). Stops between batches once `stop` says so, and fails
/// when the log cannot be read up to `end`.
fn fold_to(
    log: &dyn EventLog,
    end: u64,
    lateness_secs: u64,
    stop: &dyn Fn() -> bool,
    mut rows: impl FnMut(Vec<FeatureRow>),
) -> Result<FeatureFold, ProjectionError> {
    let mut fold = FeatureFold::new(lateness_secs);
    if stop() {
        return Err(ProjectionError::Stopped);
    }
    let mut stopped = false;
    // Small batches, so that a stop signal is seen soon and rows go out often.
    crate::log::scan(log, 0, end, 8_192, |batch| {
        for e in batch {
            fold.add(e);
        }
        rows(fold.take_rows());
        stopped = stop();
        if stopped {
            std::ops::ControlFlow::Break(())
        } else {
            std::ops::ControlFlow::Continue(())
        }
    })?;
    if stopped {
        return Err(ProjectionError::Stopped);
    }
    Ok(fold)
}

/// The fold's window as it was at `end`, writing nothing (those rows are in the table).
fn warm(
    log: &dyn EventLog,
    end: u64,
    lateness_secs: u64,
    stop: &dyn Fn() -> bool,
) -> Result<FeatureFold, ProjectionError> {
    fold_to(log, end, lateness_secs, stop, |_| {})
}

/// Rebuild `lot_features_15m` from offset zero into a side table, then swap it in with
/// the checkpoint in one transaction.
pub async fn rebuild(
    pool: &PgPool,
    log: Arc<dyn EventLog>,
    lateness_secs: u64,
) -> Result<RebuildStats, ProjectionError> {
    let rebuild = db::Rebuild::start(pool, NAME, TABLE).await?;
    let started = std::time::Instant::now();
    let end = log.durable_end();
    let log_id = log.log_id();
    let (rows, too_late) = tokio::task::spawn_blocking(move || -> Result<_, ProjectionError> {
        let mut rows: BTreeMap<(String, i64), FeatureRow> = BTreeMap::new();
        let fold = fold_to(&*log, end, lateness_secs, &|| false, |batch| {
            for r in batch {
                rows.insert((r.lot_id.as_str().to_owned(), r.bucket_start), r);
            }
        })?;
        Ok((rows.into_values().collect::<Vec<_>>(), fold.too_late))
    })
    .await
    .expect("the fold task does not panic")?;
    let n = rows.len();
    let side = rebuild.side_table(pool).await?;
    let mut tx = pool.begin().await?;
    write_rows(&mut tx, side, rows).await?;
    tx.commit().await?;
    // Every day is rewritten in the lake.
    let dirty_every_day = format!(
        "INSERT INTO lot_features_dirty_days (day, version) \
         SELECT DISTINCT (bucket_start AT TIME ZONE 'UTC')::date, 1 FROM {TABLE} \
         ON CONFLICT (day) DO UPDATE SET version = lot_features_dirty_days.version + 1"
    );
    rebuild
        .swap_in(pool, log_id, end, &[&dirty_every_day])
        .await?;
    Ok(RebuildStats {
        events: end,
        written: n as u64,
        unit: "rows".into(),
        too_late,
        seconds: started.elapsed().as_secs_f64(),
        generation: None,
    })
}

/// The features projection as the [`Runner`](crate::projections::Runner) drives it:
/// the fold's window of open buckets lives on between batches, and each batch's
/// changed rows are written with the checkpoint.
pub struct Features {
    lateness_secs: u64,
    fold: FeatureFold,
    /// The rows the last batch changed, until they are written.
    rows: Vec<FeatureRow>,
}

impl Features {
    /// Events more than `lateness_secs` behind the newest one are counted, not folded.
    pub fn new(lateness_secs: u64) -> Features {
        Features {
            lateness_secs,
            fold: FeatureFold::new(lateness_secs),
            rows: Vec::new(),
        }
    }
}

/// A clone starts with an empty window (every run refolds it in `resume`).
impl Clone for Features {
    fn clone(&self) -> Features {
        Features::new(self.lateness_secs)
    }
}

impl Projection for Features {
    const NAME: ProjectionName = NAME;

    async fn resume(
        &mut self,
        log: Arc<dyn EventLog>,
        from: u64,
        stop: CancellationToken,
    ) -> Result<(), ProjectionError> {
        let lateness = self.lateness_secs;
        // The warm-up refolds the log; a stop signal ends it between batches.
        self.fold = tokio::task::spawn_blocking(move || {
            warm(&*log, from, lateness, &|| stop.is_cancelled())
        })
        .await
        .expect("the warm-up fold does not panic")?;
        self.rows.clear();
        Ok(())
    }

    fn fold(&mut self, batch: &[RecordedEvent]) {
        for e in batch {
            self.fold.add(e);
        }
        self.rows = self.fold.take_rows();
    }

    async fn write(
        &mut self,
        pool: &PgPool,
        log_id: uuid::Uuid,
        from: u64,
        to: u64,
    ) -> Result<Option<u64>, ProjectionError> {
        write_batch(pool, log_id, from, to, self.rows.clone()).await
    }

    fn report(&self, status: &mut ProjectionStatus) {
        status.too_late = self.fold.too_late;
    }
}
