//! The Birmingham count layout, `SystemCodeNumber,Capacity,Occupancy,LastUpdated`, read
//! one way for `parkade import` and `parkade backtest`: the same fields, the same time
//! formats (`YYYY-MM-DD HH:MM:SS` and `YYYY-MM-DD HH:MM`), the same capacity bounds.
//! What to do with a row the data's quirks make unusable (a negative count, a repeated
//! reading, a local time that does not exist) is each caller's policy.

use chrono::NaiveDateTime;

use crate::domain::{Capacity, MAX_CAPACITY};

/// The header's column names.
pub const HEADER: [&str; 4] = ["SystemCodeNumber", "Capacity", "Occupancy", "LastUpdated"];

/// Where the four columns are.
#[derive(Debug, Clone, Copy)]
pub struct Columns {
    pub code: usize,
    pub capacity: usize,
    pub occupancy: usize,
    pub updated: usize,
}

impl Columns {
    /// The columns of a header, when it has all four (in any order).
    pub fn find(headers: &csv::StringRecord) -> Option<Columns> {
        let pos = |name: &str| headers.iter().position(|h| h.trim() == name);
        Some(Columns {
            code: pos(HEADER[0])?,
            capacity: pos(HEADER[1])?,
            occupancy: pos(HEADER[2])?,
            updated: pos(HEADER[3])?,
        })
    }
}

/// One row as written.
#[derive(Debug, Clone)]
pub struct Row<'r> {
    /// `SystemCodeNumber`, trimmed (not empty).
    pub code: &'r str,
    pub capacity: Capacity,
    /// `Occupancy`: a whole number, negative in some rows of the data.
    pub occupancy: i64,
    /// `LastUpdated` as written, and read as a local time.
    pub updated_raw: &'r str,
    pub updated: NaiveDateTime,
}

/// Read a row; the message names the field at fault.
pub fn row<'r>(record: &'r csv::StringRecord, cols: &Columns) -> Result<Row<'r>, String> {
    let field = |i: usize| record.get(i).map(str::trim).unwrap_or("");
    let code = field(cols.code);
    if code.is_empty() {
        return Err("SystemCodeNumber is empty".into());
    }
    let raw = field(cols.capacity);
    let capacity = raw
        .parse::<i64>()
        .ok()
        .and_then(|c| Capacity::new(c).ok())
        .ok_or_else(|| {
            format!("Capacity {raw:?} is not a whole number between 1 and {MAX_CAPACITY}")
        })?;
    let raw = field(cols.occupancy);
    let occupancy = raw
        .parse::<i64>()
        .map_err(|_| format!("Occupancy {raw:?} is not a whole number"))?;
    let updated_raw = field(cols.updated);
    let updated =
        local_time(updated_raw).map_err(|e| format!("LastUpdated {updated_raw:?}: {e}"))?;
    Ok(Row {
        code,
        capacity,
        occupancy,
        updated_raw,
        updated,
    })
}

/// `YYYY-MM-DD HH:MM:SS`, or `YYYY-MM-DD HH:MM` (some exports drop the seconds).
pub fn local_time(raw: &str) -> Result<NaiveDateTime, String> {
    NaiveDateTime::parse_from_str(raw, "%Y-%m-%d %H:%M:%S")
        .or_else(|_| NaiveDateTime::parse_from_str(raw, "%Y-%m-%d %H:%M"))
        .map_err(|e| format!("{e} (expected YYYY-MM-DD HH:MM:SS or YYYY-MM-DD HH:MM)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(fields: &[&str]) -> csv::StringRecord {
        csv::StringRecord::from(fields.to_vec())
    }

    #[test]
    fn rows_are_read_with_either_time_format_and_faults_named() {
        let cols = Columns::find(&record(&HEADER)).unwrap();
        let r = record(&["BHMBCCMKT01", "577", "61", "2016-10-04 07:59:42"]);
        let first = row(&r, &cols).unwrap();
        assert_eq!(
            (first.code, first.capacity.get(), first.occupancy),
            ("BHMBCCMKT01", 577, 61)
        );
        let r = record(&["X", "10", "-3", "2016-10-04 08:00"]);
        let second = row(&r, &cols).unwrap();
        assert_eq!(
            second.occupancy, -3,
            "a negative count is read; callers decide"
        );
        assert_eq!(second.updated.to_string(), "2016-10-04 08:00:00");
        for (fields, named) in [
            (["", "10", "1", "2016-10-04 08:00"], "SystemCodeNumber"),
            (["X", "0", "1", "2016-10-04 08:00"], "Capacity"),
            (["X", "10", "1.5", "2016-10-04 08:00"], "Occupancy"),
            (["X", "10", "1", "04/10/2016 08:00"], "LastUpdated"),
        ] {
            let e = row(&record(&fields), &cols).unwrap_err();
            assert!(e.starts_with(named), "{e}");
        }
        // Columns in another order are found by name.
        let cols = Columns::find(&record(&[
            "LastUpdated",
            "Occupancy",
            "Capacity",
            "SystemCodeNumber",
        ]));
        assert_eq!(cols.map(|c| c.code), Some(3));
        assert!(Columns::find(&record(&["lot_id", "event_type"])).is_none());
    }
}
