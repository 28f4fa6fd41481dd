//! Layouts of published parking datasets, each read one way for every command that takes
//! it (`parkade import` folds it into the log, `parkade backtest` reads it directly).
//! Pure readers of CSV records: no I/O of their own, no policy for unusable rows.

pub mod birmingham;
