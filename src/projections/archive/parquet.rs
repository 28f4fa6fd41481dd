//! Events to Parquet bytes (arrow writer, snappy, statistics per row group and page).

use std::sync::Arc;

use arrow_array::builder::{
    Int32Builder, Int64Builder, StringBuilder, TimestampMicrosecondBuilder,
};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::{EnabledStatistics, WriterProperties};

use crate::domain::{LotEvent, RecordedEvent};

/// The archive's columns, in order. Documented for Athena/Glue in the module docs.
pub fn schema() -> SchemaRef {
    let ts = || DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
    Arc::new(Schema::new(vec![
        Field::new("offset", DataType::Int64, false),
        Field::new("event_id", DataType::Utf8, false),
        Field::new("lot_id", DataType::Utf8, false),
        Field::new("lot_seq", DataType::Int64, false),
        Field::new("event_type", DataType::Utf8, false),
        Field::new("schema_version", DataType::Int32, false),
        Field::new("occurred_at", ts(), false),
        Field::new("recorded_at", ts(), false),
        Field::new("occupancy", DataType::Int32, false),
        Field::new("capacity", DataType::Int32, false),
        Field::new("count", DataType::Int32, true),
        Field::new("name", DataType::Utf8, true),
    ]))
}

fn to_i32(v: u32) -> i32 {
    i32::try_from(v).unwrap_or(i32::MAX)
}

/// Encode events as one Parquet file, rows sorted by (lot_id, occurred_at, offset).
pub fn encode(
    events: &mut [&RecordedEvent],
    row_group_rows: usize,
) -> Result<Vec<u8>, parquet::errors::ParquetError> {
    events.sort_unstable_by(|a, b| {
        (a.event.lot_id.as_str(), a.event.occurred_at, a.offset).cmp(&(
            b.event.lot_id.as_str(),
            b.event.occurred_at,
            b.offset,
        ))
    });
    let n = events.len();
    let mut offset = Int64Builder::with_capacity(n);
    let mut event_id = StringBuilder::with_capacity(n, n * 36);
    let mut lot_id = StringBuilder::with_capacity(n, n * 12);
    let mut lot_seq = Int64Builder::with_capacity(n);
    let mut event_type = StringBuilder::with_capacity(n, n * 16);
    let mut schema_version = Int32Builder::with_capacity(n);
    let mut occurred_at = TimestampMicrosecondBuilder::with_capacity(n).with_timezone("UTC");
    let mut recorded_at = TimestampMicrosecondBuilder::with_capacity(n).with_timezone("UTC");
    let mut occupancy = Int32Builder::with_capacity(n);
    let mut capacity = Int32Builder::with_capacity(n);
    let mut count = Int32Builder::with_capacity(n);
    let mut name = StringBuilder::new();
    let mut id_buf = uuid::Uuid::encode_buffer();
    for e in events.iter() {
        offset.append_value(i64::try_from(e.offset).unwrap_or(i64::MAX));
        event_id.append_value(e.event.event_id.hyphenated().encode_lower(&mut id_buf));
        lot_id.append_value(e.event.lot_id.as_str());
        lot_seq.append_value(i64::try_from(e.event.lot_seq).unwrap_or(i64::MAX));
        event_type.append_value(e.event.event.event_type().as_str());
        schema_version.append_value(i32::from(e.schema_version));
        occurred_at.append_value(e.event.occurred_at.micros());
        recorded_at.append_value(e.recorded_at.micros());
        occupancy.append_value(to_i32(e.event.occupancy));
        capacity.append_value(to_i32(e.event.capacity));
        match &e.event.event {
            LotEvent::OccupancyCounted { count: c } => count.append_value(to_i32(*c)),
            _ => count.append_null(),
        }
        match &e.event.event {
            LotEvent::LotRegistered { name: nm, .. } => name.append_value(nm),
            _ => name.append_null(),
        }
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(offset.finish()),
        Arc::new(event_id.finish()),
        Arc::new(lot_id.finish()),
        Arc::new(lot_seq.finish()),
        Arc::new(event_type.finish()),
        Arc::new(schema_version.finish()),
        Arc::new(occurred_at.finish()),
        Arc::new(recorded_at.finish()),
        Arc::new(occupancy.finish()),
        Arc::new(capacity.finish()),
        Arc::new(count.finish()),
        Arc::new(name.finish()),
    ];
    let schema = schema();
    let batch = RecordBatch::try_new(schema.clone(), columns)?;
    let props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_statistics_enabled(EnabledStatistics::Page)
        // Dictionaries pay off for repeated values (lot ids, event types, names), not
        // for unique ids, offsets and times: skip the attempt there.
        .set_dictionary_enabled(false)
        .set_column_dictionary_enabled("lot_id".into(), true)
        .set_column_dictionary_enabled("event_type".into(), true)
        .set_column_dictionary_enabled("name".into(), true)
        .set_max_row_group_row_count(Some(row_group_rows.max(1)))
        .set_created_by(format!("parkade {}", env!("CARGO_PKG_VERSION")))
        .build();
    let mut out = Vec::with_capacity(n * 24 + 4096);
    let mut writer = ArrowWriter::try_new(&mut out, schema, Some(props))?;
    writer.write(&batch)?;
    writer.close()?;
    Ok(out)
}
