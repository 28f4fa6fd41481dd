//! `lot_features_15m` in the Parquet lake: one file per UTC day,
//! `features/date=YYYY-MM-DD/features.parquet`, rewritten whole when a row of that day
//! changes (late events update earlier buckets). Days to write are marked in
//! `lot_features_dirty_days` in the same transaction as the rows; a mark is cleared only
//! for the version that was written, so a change during an export is exported again.

use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

use arrow_array::builder::{
    Float64Builder, Int32Builder, StringBuilder, TimestampMicrosecondBuilder,
};
use arrow_array::{
    ArrayRef, Float64Array, Int32Array, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use chrono::{DateTime, NaiveDate, Utc};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use sqlx::PgPool;

use super::fold::FeatureRow;
use crate::domain::LotId;
use crate::projections::archive::Store;
use crate::projections::lease::{write_under, LakeLease, LeaseError};
use crate::projections::{ProjectionName, ProjectionState, StatusBoard};

/// Name on the status board.
pub const NAME: ProjectionName = ProjectionName::FeaturesLake;

/// The columns of a features file.
pub fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("lot_id", DataType::Utf8, false),
        Field::new(
            "bucket_start",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            false,
        ),
        Field::new("occupancy_start", DataType::Int32, false),
        Field::new("occupancy_end", DataType::Int32, false),
        Field::new("occupancy_min", DataType::Int32, false),
        Field::new("occupancy_max", DataType::Int32, false),
        Field::new("occupancy_mean", DataType::Float64, false),
        Field::new("arrivals", DataType::Int32, false),
        Field::new("departures", DataType::Int32, false),
        Field::new("counts", DataType::Int32, false),
        Field::new("capacity", DataType::Int32, false),
    ]))
}

/// The eight integer columns of a row, in the file's order around the mean.
fn ints(r: &FeatureRow) -> [i32; 8] {
    [
        r.occupancy_start,
        r.occupancy_end,
        r.occupancy_min,
        r.occupancy_max,
        r.arrivals,
        r.departures,
        r.counts,
        r.capacity,
    ]
}

fn encode(rows: &[FeatureRow]) -> Result<Vec<u8>, parquet::errors::ParquetError> {
    let n = rows.len();
    let mut lot = StringBuilder::with_capacity(n, n * 12);
    let mut start = TimestampMicrosecondBuilder::with_capacity(n).with_timezone("UTC");
    let mut ints: Vec<Int32Builder> = (0..8).map(|_| Int32Builder::with_capacity(n)).collect();
    let mut mean = Float64Builder::with_capacity(n);
    for r in rows {
        lot.append_value(r.lot_id.as_str());
        start.append_value(r.bucket_start);
        for (b, v) in ints.iter_mut().zip(self::ints(r)) {
            b.append_value(v);
        }
        mean.append_value(r.occupancy_mean);
    }
    let mut ints: Vec<ArrayRef> = ints
        .into_iter()
        .map(|mut b| Arc::new(b.finish()) as ArrayRef)
        .collect();
    let tail = ints.split_off(4);
    let mut columns: Vec<ArrayRef> = vec![Arc::new(lot.finish()), Arc::new(start.finish())];
    columns.extend(ints);
    columns.push(Arc::new(mean.finish()));
    columns.extend(tail);
    let batch = RecordBatch::try_new(schema(), columns)?;
    let props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_statistics_enabled(EnabledStatistics::Page)
        .build();
    let mut out = Vec::new();
    let mut w = ArrowWriter::try_new(&mut out, schema(), Some(props))?;
    w.write(&batch)?;
    w.close()?;
    Ok(out)
}

/// The rows of a day's file (of any file with [`schema`]'s columns).
pub fn decode(bytes: Vec<u8>) -> Result<Vec<FeatureRow>, String> {
    let reader = ParquetRecordBatchReaderBuilder::try_new(bytes::Bytes::from(bytes))
        .and_then(|b| b.build())
        .map_err(|e| e.to_string())?;
    let mut rows = Vec::new();
    for batch in reader {
        let batch = batch.map_err(|e| e.to_string())?;
        let lot = column::<StringArray>(&batch, "lot_id")?;
        let start = column::<TimestampMicrosecondArray>(&batch, "bucket_start")?;
        let mean = column::<Float64Array>(&batch, "occupancy_mean")?;
        let int = |name| column::<Int32Array>(&batch, name);
        let (o_start, o_end, o_min, o_max) = (
            int("occupancy_start")?,
            int("occupancy_end")?,
            int("occupancy_min")?,
            int("occupancy_max")?,
        );
        let (arrivals, departures, counts, capacity) = (
            int("arrivals")?,
            int("departures")?,
            int("counts")?,
            int("capacity")?,
        );
        for i in 0..batch.num_rows() {
            let lot_id = LotId::parse(lot.value(i)).map_err(|e| format!("lot_id: {e}"))?;
            rows.push(FeatureRow {
                lot_id,
                bucket_start: start.value(i),
                occupancy_start: o_start.value(i),
                occupancy_end: o_end.value(i),
                occupancy_min: o_min.value(i),
                occupancy_max: o_max.value(i),
                occupancy_mean: mean.value(i),
                arrivals: arrivals.value(i),
                departures: departures.value(i),
                counts: counts.value(i),
                capacity: capacity.value(i),
            });
        }
    }
    Ok(rows)
}

/// Column `name` of `batch` as an array of type `A`.
fn column<'b, A: 'static>(batch: &'b RecordBatch, name: &str) -> Result<&'b A, String> {
    batch
        .column_by_name(name)
        .and_then(|c| c.as_any().downcast_ref::<A>())
        .ok_or_else(|| format!("the file has no {name} column of the expected type"))
}

/// The training readings of the `weeks` weeks up to `until`, from the lake's day files:
/// the same rows [`query::readings`](super::query::readings) reads from PostgreSQL
/// (buckets with an event and a capacity, each read at its end).
pub async fn readings(
    store: &Store,
    until: DateTime<Utc>,
    weeks: u32,
) -> Result<Vec<super::query::Reading>, String> {
    let from = until - chrono::Duration::weeks(i64::from(weeks));
    let keys = store
        .list("features/")
        .await
        .map_err(|e| format!("listing the features in {}: {e}", store.describe()))?;
    let mut out = Vec::new();
    for key in keys {
        let Some(day) = day_of(&key) else { continue };
        let midnight = day.and_hms_opt(0, 0, 0).expect("midnight").and_utc();
        if midnight > until || midnight + chrono::Duration::days(1) <= from {
            continue;
        }
        let Some(bytes) = store.get(&key).await.map_err(|e| e.to_string())? else {
            continue;
        };
        let rows = tokio::task::spawn_blocking(move || decode(bytes))
            .await
            .expect("decoding does not panic")
            .map_err(|e| format!("{key}: {e}"))?;
        let (from, until) = (from.timestamp_micros(), until.timestamp_micros());
        out.extend(
            rows.iter()
                .filter_map(|r| super::query::Reading::of_row(r, from, until)),
        );
    }
    Ok(out)
}

/// The end of the newest day the lake holds features of; `None` when it holds none.
pub async fn newest_day_end(store: &Store) -> Result<Option<DateTime<Utc>>, String> {
    let keys = store
        .list("features/")
        .await
        .map_err(|e| format!("listing the features in {}: {e}", store.describe()))?;
    Ok(keys
        .iter()
        .filter_map(|k| day_of(k))
        .max()
        .and_then(|d| d.succ_opt())
        .map(|d| d.and_hms_opt(0, 0, 0).expect("midnight").and_utc()))
}

/// The day of a day file's key (`features/date=YYYY-MM-DD/features.parquet`).
fn day_of(key: &str) -> Option<NaiveDate> {
    let rest = key.strip_prefix("features/date=")?;
    let (day, file) = rest.split_once('/')?;
    (file == "features.parquet").then_some(())?;
    day.parse().ok()
}

/// The key of a day's file in the store.
pub fn key(day: NaiveDate) -> String {
    format!("features/date={day}/features.parquet")
}

/// Write every marked day's file once; returns the days written. A day marked again
/// while it was written (today's, under steady traffic) keeps its mark for the next
/// call, so a day's file is rewritten at most once per call (per exporter interval).
pub async fn export_dirty(pool: &PgPool, store: &Store) -> Result<usize, String> {
    export_dirty_under(pool, store, None).await
}

/// [`export_dirty`], each file written under `lease` when there is one (a bucket several
/// processes share).
async fn export_dirty_under(
    pool: &PgPool,
    store: &Store,
    mut lease: Option<&mut LakeLease>,
) -> Result<usize, String> {
    let mut written = 0;
    let mut after = NaiveDate::from_ymd_opt(1, 1, 1).expect("a valid date");
    loop {
        let days: Vec<(NaiveDate, i64)> = sqlx::query_as(
            "SELECT day, version FROM lot_features_dirty_days WHERE day > $1 ORDER BY day LIMIT 64",
        )
        .bind(after)
        .fetch_all(pool)
        .await
        .map_err(|e| format!("reading the days to export: {e}"))?;
        if days.is_empty() {
            return Ok(written);
        }
        for (day, version) in days {
            after = day;
            let rows: Vec<FeatureRow> = sqlx::query_as(
                "SELECT lot_id, bucket_start, occupancy_start, occupancy_end, occupancy_min, occupancy_max, \
                   occupancy_mean, arrivals, departures, counts, capacity FROM lot_features_15m \
                 WHERE bucket_start >= $1 AND bucket_start < $1 + interval '1 day' \
                 ORDER BY lot_id, bucket_start",
            )
            .bind(day.and_hms_opt(0, 0, 0).expect("midnight").and_utc())
            .fetch_all(pool)
            .await
            .map_err(|e| format!("reading the features of {day}: {e}"))?;
            let bytes = tokio::task::spawn_blocking(move || encode(&rows))
                .await
                .expect("encoding does not panic")
                .map_err(|e| format!("encoding the features of {day}: {e}"))?;
            let put = async {
                store.put(&key(day), bytes).await.map_err(|e| {
                    LakeWriteError::Store(format!("writing the features of {day}: {e}"))
                })
            };
            write_under(lease.as_deref_mut(), put)
                .await
                .map_err(|e| e.to_string())?;
            sqlx::query("DELETE FROM lot_features_dirty_days WHERE day = $1 AND version = $2")
                .bind(day)
                .bind(version)
                .execute(pool)
                .await
                .map_err(|e| format!("clearing the mark of {day}: {e}"))?;
            written += 1;
        }
    }
}

/// A failed write of a features file.
#[derive(Debug, thiserror::Error)]
enum LakeWriteError {
    #[error("{0}")]
    Store(String),
    #[error(transparent)]
    Lease(#[from] LeaseError),
}

/// Exports changed days every `every` until shut down.
#[derive(Clone)]
pub struct LakeExporter {
    pub pool: PgPool,
    pub store: Store,
    pub board: StatusBoard,
    pub every: Duration,
    /// On a bucket several processes share: the lease the files are written under.
    pub lease: Option<Arc<tokio::sync::Mutex<LakeLease>>>,
}

impl LakeExporter {
    pub async fn run(self, shutdown: CancellationToken) {
        let mut lease = match &self.lease {
            Some(l) => Some(l.lock().await),
            None => None,
        };
        loop {
            if let Some(lease) = lease.as_deref_mut() {
                if !lease.take(&self.board, &shutdown).await {
                    break;
                }
            }
            // The holder renews its lease while it waits, so nobody takes it over.
            let stop = match lease.as_deref_mut() {
                Some(lease) => match lease.hold_for(self.every, &shutdown).await {
                    Ok(stop) => stop,
                    Err(e) => {
                        tracing::warn!(projection = %NAME, error = %e, "standing by again");
                        continue;
                    }
                },
                None => tokio::select! {
                    _ = tokio::time::sleep(self.every) => false,
                    _ = shutdown.cancelled() => true,
                },
            };
            // One last export on the way out, so a clean stop leaves the lake current.
            match export_dirty_under(&self.pool, &self.store, lease.as_deref_mut()).await {
                Ok(_) => self.board.set(NAME, |s| s.state = ProjectionState::Running),
                Err(e) => {
                    tracing::error!(error = %e, "features lake export failed; retrying");
                    self.board.report_failure_text(NAME, e);
                }
            }
            if stop {
                break;
            }
        }
        if let Some(lease) = lease.as_deref_mut() {
            lease.release().await;
        }
        self.board.set(NAME, |s| s.state = ProjectionState::Stopped);
    }
}
