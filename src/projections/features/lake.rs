//! `lot_features_15m` in the Parquet lake: one file per UTC day,
//! `features/date=YYYY-MM-DD/features.parquet`, rewritten whole when a row of that day
//! changes (late events update earlier buckets). Days to write are marked in
//! `lot_features_dirty_days` in the same transaction as the rows; a mark is cleared only
//! for the version that was written, so a change during an export is exported again.

use std::sync::Arc;
use std::time::Duration;

use arrow_array::builder::{
    Float64Builder, Int32Builder, StringBuilder, TimestampMicrosecondBuilder,
};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use chrono::{DateTime, NaiveDate, Utc};
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use sqlx::PgPool;
use tokio::sync::watch;

use crate::projections::archive::Store;
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

type Row = (
    String,
    DateTime<Utc>,
    i32,
    i32,
    i32,
    i32,
    f64,
    i32,
    i32,
    i32,
    i32,
);

fn encode(rows: &[Row]) -> Result<Vec<u8>, parquet::errors::ParquetError> {
    let n = rows.len();
    let mut lot = StringBuilder::with_capacity(n, n * 12);
    let mut start = TimestampMicrosecondBuilder::with_capacity(n).with_timezone("UTC");
    let mut ints: Vec<Int32Builder> = (0..8).map(|_| Int32Builder::with_capacity(n)).collect();
    let mut mean = Float64Builder::with_capacity(n);
    for r in rows {
        lot.append_value(&r.0);
        start.append_value(r.1.timestamp_micros());
        for (b, v) in ints
            .iter_mut()
            .zip([r.2, r.3, r.4, r.5, r.7, r.8, r.9, r.10])
        {
            b.append_value(v);
        }
        mean.append_value(r.6);
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

/// The key of a day's file in the store.
pub fn key(day: NaiveDate) -> String {
    format!("features/date={day}/features.parquet")
}

/// Write every marked day's file once; returns the days written. A day marked again
/// while it was written (today's, under steady traffic) keeps its mark for the next
/// call, so a day's file is rewritten at most once per call (per exporter interval).
pub async fn export_dirty(pool: &PgPool, store: &Store) -> Result<usize, String> {
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
            let rows: Vec<Row> = sqlx::query_as(
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
            store
                .put(&key(day), bytes)
                .await
                .map_err(|e| format!("writing the features of {day}: {e}"))?;
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

/// Exports changed days every `every` until shut down.
#[derive(Clone)]
pub struct LakeExporter {
    pub pool: PgPool,
    pub store: Store,
    pub board: StatusBoard,
    pub every: Duration,
}

impl LakeExporter {
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        loop {
            let stop = tokio::select! {
                _ = tokio::time::sleep(self.every) => false,
                _ = shutdown.changed() => true,
            };
            // One last export on the way out, so a clean stop leaves the lake current.
            match export_dirty(&self.pool, &self.store).await {
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
        self.board.set(NAME, |s| s.state = ProjectionState::Stopped);
    }
}
