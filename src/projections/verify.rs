//! `parkade verify`: fold the log independently (with the domain's `apply`, not the
//! occupancy carried in the records) and compare it with the read model.

use std::collections::BTreeMap;
use std::sync::Arc;

use sqlx::PgPool;

use super::occupancy::{self, OccupancyRow};
use super::ProjectionError;
use crate::domain::{apply, LotState, Timestamp};
use crate::log::EventLog;

/// The outcome of a verification.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    /// Offset up to which the read model claims to be complete.
    pub checkpoint: u64,
    /// Durable end of the log.
    pub log_end: u64,
    pub lots: usize,
    pub differences: Vec<String>,
}

impl Report {
    pub fn is_clean(&self) -> bool {
        self.differences.is_empty()
    }
}

struct Folded {
    state: LotState,
    last_offset: u64,
    updated_at: Timestamp,
}

/// Fold the log up to the read model's checkpoint and compare, lot by lot.
pub async fn verify(pool: &PgPool, log: Arc<dyn EventLog>) -> Result<Report, ProjectionError> {
    let (cp, rows) = occupancy::snapshot(pool).await?;
    let log_end = log.durable_end();
    let mut differences = Vec::new();
    let checkpoint = match cp {
        None => {
            differences.push("the read model has no checkpoint: it was never built".to_string());
            0
        }
        Some(cp) => {
            if cp.log_id != log.log_id() {
                differences.push(format!(
                    "the read model was built from log {}, this log is {}",
                    cp.log_id,
                    log.log_id()
                ));
            }
            if cp.next_offset > log_end {
                differences.push(format!(
                    "the read model's checkpoint {} is beyond the log's end {log_end}",
                    cp.next_offset
                ));
            }
            cp.next_offset.min(log_end)
        }
    };
    let (folded, mut log_problems) = tokio::task::spawn_blocking(move || fold(log, checkpoint))
        .await
        .expect("the fold task does not panic")?;
    differences.append(&mut log_problems);
    let mut table: BTreeMap<String, OccupancyRow> =
        rows.into_iter().map(|r| (r.lot_id.clone(), r)).collect();
    let lots = folded.len();
    for (lot, f) in &folded {
        let Some(row) = table.remove(lot) else {
            differences.push(format!(
                "lot {lot}: in the log but missing from the read model"
            ));
            continue;
        };
        let want = (
            f.state.name().to_owned(),
            i64::from(f.state.capacity()),
            i64::from(f.state.occupancy),
            f.updated_at.to_datetime(),
            i64::try_from(f.last_offset).unwrap_or(i64::MAX),
        );
        let got = (
            row.name.clone(),
            i64::from(row.capacity),
            i64::from(row.occupancy),
            row.updated_at,
            row.last_offset,
        );
        if want != got {
            differences.push(format!(
                "lot {lot}: log gives name={:?} capacity={} occupancy={} updated_at={} last_offset={}, read model has name={:?} capacity={} occupancy={} updated_at={} last_offset={}",
                want.0, want.1, want.2, want.3, want.4, got.0, got.1, got.2, got.3, got.4
            ));
        }
    }
    for lot in table.keys() {
        differences.push(format!("lot {lot}: in the read model but not in the log"));
    }
    Ok(Report {
        checkpoint,
        log_end,
        lots,
        differences,
    })
}

/// Fold `[0, end)`; also report records whose carried state disagrees with the fold.
fn fold(
    log: Arc<dyn EventLog>,
    end: u64,
) -> Result<(BTreeMap<String, Folded>, Vec<String>), ProjectionError> {
    let mut lots: BTreeMap<String, Folded> = BTreeMap::new();
    let mut problems = Vec::new();
    crate::log::scan(&*log, 0, end, crate::log::SCAN_BATCH, |batch| {
        for e in batch {
            let f = lots
                .entry(e.event.lot_id.to_string())
                .or_insert_with(|| Folded {
                    state: LotState::default(),
                    last_offset: 0,
                    updated_at: e.event.occurred_at,
                });
            apply(&mut f.state, &e.event.event);
            f.last_offset = e.offset;
            f.updated_at = e.event.occurred_at;
            if (f.state.occupancy, f.state.capacity()) != (e.event.occupancy, e.event.capacity)
                && problems.len() < 100
            {
                problems.push(format!(
                    "offset {}: lot {} records occupancy {} / capacity {}, the fold gives {} / {}",
                    e.offset,
                    e.event.lot_id,
                    e.event.occupancy,
                    e.event.capacity,
                    f.state.occupancy,
                    f.state.capacity()
                ));
            }
        }
        std::ops::ControlFlow::Continue(())
    })?;
    lots.retain(|_, f| f.state.is_registered());
    Ok((lots, problems))
}
