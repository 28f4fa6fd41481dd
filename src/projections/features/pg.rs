//! `lot_features_15m`: writing the fold's rows with the checkpoint, the runner that keeps
//! it caught up, and the rebuild from offset zero.
//!
//! The fold keeps a window of recent buckets in memory. On start the runner folds the
//! log up to its checkpoint again (writing nothing) so the window is what it was, then
//! continues from the checkpoint: the rows are a function of the log alone.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use sqlx::{PgPool, Postgres, Transaction};
use tokio::sync::watch;

use super::fold::{FeatureFold, FeatureRow};
use crate::log::{EventLog, Subscription};
use crate::projections::{db, ProjectionError, ProjectionName, ProjectionState, StatusBoard};

/// The projection's name in `projection_checkpoints` and `parkade replay --projection`.
pub const NAME: ProjectionName = ProjectionName::Features;
const TABLE: &str = "lot_features_15m";
const TABLE_REBUILD: &str = "lot_features_15m_rebuild";

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

/// Figures of a rebuild.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct RebuildStats {
    pub events: u64,
    pub rows: usize,
    pub too_late: u64,
    pub total_seconds: f64,
}

/// Rebuild `lot_features_15m` from offset zero into a side table, then swap it in with
/// the checkpoint in one transaction.
pub async fn rebuild(
    pool: &PgPool,
    log: Arc<dyn EventLog>,
    lateness_secs: u64,
) -> Result<RebuildStats, ProjectionError> {
    // One rebuild of a projection at a time: the side table is shared.
    let lock = db::lock_rebuild(pool, NAME).await?;
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
    sqlx::query(&format!("DROP TABLE IF EXISTS {TABLE_REBUILD}"))
        .execute(pool)
        .await?;
    sqlx::query(&format!(
        "CREATE TABLE {TABLE_REBUILD} (LIKE {TABLE} INCLUDING ALL)"
    ))
    .execute(pool)
    .await?;
    let mut tx = pool.begin().await?;
    write_rows(&mut tx, TABLE_REBUILD, rows).await?;
    tx.commit().await?;
    let mut tx = pool.begin().await?;
    db::set_checkpoint(&mut tx, NAME, log_id, 0).await?;
    sqlx::query("SELECT next_offset FROM projection_checkpoints WHERE projection = $1 FOR UPDATE")
        .bind(NAME.as_str())
        .execute(&mut *tx)
        .await?;
    db::swap_in(&mut tx, TABLE, TABLE_REBUILD).await?;
    db::set_checkpoint(&mut tx, NAME, log_id, end).await?;
    // Every day is rewritten in the lake.
    sqlx::query(&format!(
        "INSERT INTO lot_features_dirty_days (day, version) \
         SELECT DISTINCT (bucket_start AT TIME ZONE 'UTC')::date, 1 FROM {TABLE} \
         ON CONFLICT (day) DO UPDATE SET version = lot_features_dirty_days.version + 1"
    ))
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    lock.release().await;
    Ok(RebuildStats {
        events: end,
        rows: n,
        too_late,
        total_seconds: started.elapsed().as_secs_f64(),
    })
}

/// Fold whatever the log holds beyond the checkpoint (commands that write the log
/// without a running server, such as `import`).
pub async fn catch_up(
    pool: &PgPool,
    log: &dyn EventLog,
    lateness_secs: u64,
) -> Result<u64, ProjectionError> {
    let log_id = log.log_id();
    let cp = db::ensure_checkpoint(pool, NAME, log_id).await?;
    let end = log.durable_end();
    let mut fold = warm(log, cp.next_offset, lateness_secs, &|| false)?;
    let mut cursor = log.cursor(cp.next_offset);
    let mut from = cp.next_offset;
    while cursor.position() < end {
        let batch = cursor.next_batch(65_536)?;
        if batch.is_empty() {
            break;
        }
        for e in &batch {
            fold.add(e);
        }
        let to = cursor.position();
        if let Some(next) = write_batch(pool, log_id, from, to, fold.take_rows()).await? {
            return Ok(next);
        }
        from = to;
    }
    Ok(from)
}

/// Keeps `lot_features_15m` caught up with the log.
#[derive(Clone)]
pub struct FeaturesRunner {
    pub pool: PgPool,
    pub log: Arc<dyn EventLog>,
    pub board: StatusBoard,
    pub batch_events: usize,
    pub lateness_secs: u64,
    pub max_backoff: Duration,
}

impl FeaturesRunner {
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let mut backoff = Duration::from_millis(100);
        'restart: loop {
            if *shutdown.borrow() {
                break;
            }
            let started = async {
                let cp = db::ensure_checkpoint(&self.pool, NAME, self.log.log_id()).await?;
                let end = self.log.durable_end();
                if cp.next_offset > end {
                    return Err(ProjectionError::AheadOfLog {
                        checkpoint: cp.next_offset,
                        log_end: end,
                    });
                }
                let log = self.log.clone();
                let lateness = self.lateness_secs;
                let next = cp.next_offset;
                // The warm-up refolds the log; a stop signal ends it between batches.
                let stop = shutdown.clone();
                let fold = tokio::task::spawn_blocking(move || {
                    warm(&*log, next, lateness, &|| *stop.borrow())
                })
                .await
                .expect("the warm-up fold does not panic")?;
                Ok((next, fold))
            }
            .await;
            let (mut from, mut fold) = match started {
                Ok(s) => s,
                Err(ProjectionError::Stopped) => break,
                Err(e) => {
                    if self.failed(&e, &mut backoff, &mut shutdown).await {
                        break;
                    }
                    continue;
                }
            };
            self.board.set(NAME, |s| {
                s.checkpoint = from;
                s.state = ProjectionState::Running;
            });
            let mut sub = Subscription::new(self.log.clone(), from);
            loop {
                let batch = tokio::select! {
                    b = sub.next_batch(self.batch_events) => b,
                    _ = shutdown.changed() => break 'restart,
                };
                let batch = match batch {
                    Ok(b) => b,
                    Err(e) => {
                        if self.failed(&e.into(), &mut backoff, &mut shutdown).await {
                            break 'restart;
                        }
                        continue 'restart;
                    }
                };
                for e in &batch {
                    fold.add(e);
                }
                let to = batch[batch.len() - 1].offset + 1;
                let rows = fold.take_rows();
                loop {
                    match write_batch(&self.pool, self.log.log_id(), from, to, rows.clone()).await {
                        Ok(None) => {
                            backoff = Duration::from_millis(100);
                            from = to;
                            let too_late = fold.too_late;
                            self.board.set(NAME, |s| {
                                s.checkpoint = to;
                                s.state = ProjectionState::Running;
                                s.too_late = too_late;
                            });
                            break;
                        }
                        Ok(Some(next)) => {
                            tracing::info!(
                                projection = %NAME,
                                resume = next,
                                "checkpoint moved by a rebuild; resuming there"
                            );
                            continue 'restart;
                        }
                        Err(e) => {
                            if self.failed(&e, &mut backoff, &mut shutdown).await {
                                break 'restart;
                            }
                        }
                    }
                }
            }
        }
        self.board.set(NAME, |s| s.state = ProjectionState::Stopped);
    }

    /// Record a failure and wait out the backoff. Returns true when shutting down.
    async fn failed(
        &self,
        e: &ProjectionError,
        backoff: &mut Duration,
        shutdown: &mut watch::Receiver<bool>,
    ) -> bool {
        crate::projections::failed_then_wait(
            &self.board,
            NAME,
            e,
            backoff,
            self.max_backoff,
            shutdown,
        )
        .await
    }
}
