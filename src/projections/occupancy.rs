//! The occupancy read model: `current_lot_occupancy`, one row per registered lot.
//!
//! Each log record carries the lot's occupancy and capacity after the event, so a batch
//! folds to "the last record of each lot" and is written as one bulk upsert guarded by
//! `last_offset` (re-applying an older record changes nothing). The checkpoint row is
//! locked (`FOR UPDATE`) at the start of every batch transaction: a rebuild that swapped
//! the table in the meantime is noticed and the runner resumes from the rebuild's
//! checkpoint.

use std::collections::HashMap;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

use chrono::{DateTime, Utc};
use sqlx::{PgPool, Postgres, Transaction};
use uuid::Uuid;

use super::runner::Projection;
use super::{FaultPoint, ProjectionError, ProjectionName, RebuildStats};
use crate::domain::{LotEvent, LotId, RecordedEvent};
use crate::log::EventLog;

/// The projection's name in `projection_checkpoints`.
pub const NAME: ProjectionName = ProjectionName::Occupancy;
const TABLE: &str = "current_lot_occupancy";

/// One row of `current_lot_occupancy`.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct OccupancyRow {
    pub lot_id: String,
    pub name: String,
    pub capacity: i32,
    pub occupancy: i32,
    pub updated_at: DateTime<Utc>,
    pub last_offset: i64,
}

pub use super::db::Checkpoint;

struct Pending {
    name: Option<String>,
    capacity: u32,
    occupancy: u32,
    updated_at: DateTime<Utc>,
    last_offset: u64,
}

/// A batch of events folded to the last state of each lot.
#[derive(Default)]
pub struct Fold {
    lots: HashMap<LotId, Pending>,
    /// The first event whose values PostgreSQL cannot store (a NUL in a name, from a
    /// log written before names were checked): writing fails naming it.
    unstorable: Option<(u64, LotId, &'static str)>,
}

impl Fold {
    pub fn add(&mut self, e: &RecordedEvent) {
        let name = match &e.event.event {
            LotEvent::LotRegistered { name, .. } => {
                if name.contains('\0') && self.unstorable.is_none() {
                    self.unstorable = Some((
                        e.offset,
                        e.event.lot_id.clone(),
                        "its name holds a NUL character, which PostgreSQL text cannot store",
                    ));
                }
                Some(name.clone())
            }
            _ => None,
        };
        let updated_at = e.event.occurred_at.to_datetime();
        let entry = self.lots.entry(e.event.lot_id.clone()).or_insert(Pending {
            name: None,
            capacity: 0,
            occupancy: 0,
            updated_at,
            last_offset: e.offset,
        });
        if name.is_some() {
            entry.name = name;
        }
        entry.capacity = e.event.capacity;
        entry.occupancy = e.event.occupancy;
        entry.updated_at = updated_at;
        entry.last_offset = e.offset;
    }

    pub fn len(&self) -> usize {
        self.lots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.lots.is_empty()
    }

    /// Upsert the folded rows into `table`, at most `chunk` rows per statement.
    async fn write(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        table: &str,
    ) -> Result<(), ProjectionError> {
        if let Some((offset, lot, reason)) = &self.unstorable {
            return Err(ProjectionError::Unstorable {
                offset: *offset,
                lot: lot.to_string(),
                reason: (*reason).into(),
            });
        }
        let rows: Vec<(&LotId, &Pending)> = self.lots.iter().collect();
        for chunk in rows.chunks(5_000) {
            let mut ids = Vec::with_capacity(chunk.len());
            let mut names = Vec::with_capacity(chunk.len());
            let mut caps = Vec::with_capacity(chunk.len());
            let mut occs = Vec::with_capacity(chunk.len());
            let mut ats = Vec::with_capacity(chunk.len());
            let mut offs = Vec::with_capacity(chunk.len());
            for (id, p) in chunk {
                ids.push(id.as_str().to_owned());
                names.push(p.name.clone());
                caps.push(i32::try_from(p.capacity).unwrap_or(i32::MAX));
                occs.push(i32::try_from(p.occupancy).unwrap_or(i32::MAX));
                ats.push(p.updated_at);
                offs.push(i64::try_from(p.last_offset).unwrap_or(i64::MAX));
            }
            let sql = format!(
                "INSERT INTO {table} AS t (lot_id, name, capacity, occupancy, updated_at, last_offset) \
                 SELECT u.lot_id, COALESCE(u.name, c.name, ''), u.capacity, u.occupancy, u.updated_at, u.last_offset \
                 FROM UNNEST($1::text[], $2::text[], $3::int4[], $4::int4[], $5::timestamptz[], $6::int8[]) \
                   AS u(lot_id, name, capacity, occupancy, updated_at, last_offset) \
                 LEFT JOIN {table} c ON c.lot_id = u.lot_id \
                 ON CONFLICT (lot_id) DO UPDATE SET name = EXCLUDED.name, capacity = EXCLUDED.capacity, \
                   occupancy = EXCLUDED.occupancy, updated_at = EXCLUDED.updated_at, last_offset = EXCLUDED.last_offset \
                 WHERE t.last_offset < EXCLUDED.last_offset"
            );
            sqlx::query(&sql)
                .bind(ids)
                .bind(names)
                .bind(caps)
                .bind(occs)
                .bind(ats)
                .bind(offs)
                .execute(&mut **tx)
                .await?;
        }
        Ok(())
    }
}

pub async fn read_checkpoint<'e, E>(executor: E) -> Result<Option<Checkpoint>, ProjectionError>
where
    E: sqlx::PgExecutor<'e>,
{
    super::db::read_checkpoint(executor, NAME).await
}

/// Write a folded batch covering `[from, to)` together with the checkpoint.
/// `Ok(Some(next))`: the checkpoint was not at `from` (a rebuild moved it), nothing
/// was written.
pub async fn write_batch(
    pool: &PgPool,
    log_id: Uuid,
    from: u64,
    to: u64,
    fold: &Fold,
    fault: &FaultPoint,
) -> Result<Option<u64>, ProjectionError> {
    let mut tx = pool.begin().await?;
    if let Some(next) = super::db::lock_checkpoint(&mut tx, NAME, log_id, from).await? {
        return Ok(Some(next));
    }
    fold.write(&mut tx, TABLE).await?;
    super::db::set_checkpoint(&mut tx, NAME, log_id, to).await?;
    if fault.trip() {
        // Dropping the transaction rolls it back, as a crash before COMMIT would.
        return Err(ProjectionError::Injected(
            "failing the batch between write and commit",
        ));
    }
    tx.commit().await?;
    Ok(None)
}

/// The occupancy projection as the [`Runner`](super::Runner) drives it: each batch is
/// folded to the last state of its lots and written with the checkpoint.
#[derive(Default)]
pub struct Occupancy {
    /// Fails batch commits while armed (tests and drills).
    pub fault: FaultPoint,
    folded: Fold,
}

impl Occupancy {
    pub fn new(fault: FaultPoint) -> Occupancy {
        Occupancy {
            fault,
            folded: Fold::default(),
        }
    }
}

/// A clone starts with nothing folded (as every run does).
impl Clone for Occupancy {
    fn clone(&self) -> Occupancy {
        Occupancy::new(self.fault.clone())
    }
}

impl Projection for Occupancy {
    const NAME: ProjectionName = NAME;

    async fn resume(
        &mut self,
        _log: Arc<dyn EventLog>,
        _from: u64,
        _stop: CancellationToken,
    ) -> Result<(), ProjectionError> {
        self.folded = Fold::default();
        Ok(())
    }

    fn fold(&mut self, batch: &[RecordedEvent]) {
        self.folded = Fold::default();
        for e in batch {
            self.folded.add(e);
        }
    }

    async fn write(
        &mut self,
        pool: &PgPool,
        log_id: Uuid,
        from: u64,
        to: u64,
    ) -> Result<Option<u64>, ProjectionError> {
        write_batch(pool, log_id, from, to, &self.folded, &self.fault).await
    }
}

/// Rebuild the read model from offset zero: fold the whole durable log, fill a fresh
/// table beside the live one, then swap them and move the checkpoint in one
/// transaction. Readers see the old table until the swap and the new one after it.
/// `progress(done, total)` is called as the fold advances.
pub async fn rebuild(
    pool: &PgPool,
    log: std::sync::Arc<dyn EventLog>,
    progress: impl Fn(u64, u64) + Send + 'static,
) -> Result<RebuildStats, ProjectionError> {
    let rebuild = super::db::Rebuild::start(pool, NAME, TABLE).await?;
    let started = std::time::Instant::now();
    let end = log.durable_end();
    let log_id = log.log_id();
    let fold = tokio::task::spawn_blocking(move || -> Result<Fold, ProjectionError> {
        let mut fold = Fold::default();
        let mut done = 0;
        crate::log::scan(&*log, 0, end, crate::log::SCAN_BATCH, |batch| {
            for e in batch {
                fold.add(e);
            }
            done += batch.len() as u64;
            progress(done, end);
            std::ops::ControlFlow::Continue(())
        })?;
        Ok(fold)
    })
    .await
    .expect("the fold task does not panic")?;
    let fold_seconds = started.elapsed().as_secs_f64();

    let side = rebuild.side_table(pool).await?;
    let mut tx = pool.begin().await?;
    fold.write(&mut tx, side).await?;
    tx.commit().await?;
    rebuild.swap_in(pool, log_id, end, &[]).await?;
    tracing::debug!(fold_seconds, "occupancy folded for its rebuild");
    Ok(RebuildStats {
        events: end,
        written: fold.len() as u64,
        unit: "lots".into(),
        too_late: 0,
        seconds: started.elapsed().as_secs_f64(),
        generation: None,
    })
}

/// The checkpoint and every row, read in one snapshot.
pub async fn snapshot(
    pool: &PgPool,
) -> Result<(Option<Checkpoint>, Vec<OccupancyRow>), ProjectionError> {
    let mut tx = pool.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        .execute(&mut *tx)
        .await?;
    let cp = read_checkpoint(&mut *tx).await?;
    let rows = sqlx::query_as::<_, OccupancyRow>(
        "SELECT lot_id, name, capacity, occupancy, updated_at, last_offset FROM current_lot_occupancy ORDER BY lot_id",
    )
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok((cp, rows))
}

/// A lot's capacity, as the read model has it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct LotCapacity {
    pub lot_id: String,
    pub capacity: i32,
}

/// Every lot of `current_lot_occupancy` with its capacity, by id.
pub async fn capacities(pool: &PgPool) -> Result<Vec<LotCapacity>, sqlx::Error> {
    sqlx::query_as("SELECT lot_id, capacity FROM current_lot_occupancy ORDER BY lot_id")
        .fetch_all(pool)
        .await
}
