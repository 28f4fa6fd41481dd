//! Forecasting as a user runs it: `parkade holdout` and `parkade backtest` on the real
//! Birmingham data, the accuracy the issue asks for, and no look-ahead.

use std::collections::HashMap;
use std::path::Path;

use crate::common;
use common::{birmingham, parkade};

/// `(lot, target_time, horizon) -> predicted_rate` of a predictions file; every row's
/// interval, when it has one, holds its forecast.
fn predictions(path: &Path) -> HashMap<(String, String, u32), f64> {
    let mut r = csv::Reader::from_path(path).unwrap();
    assert_eq!(
        r.headers().unwrap().iter().collect::<Vec<_>>(),
        [
            "lot_id",
            "target_time",
            "horizon_min",
            "predicted_rate",
            "low",
            "high"
        ]
    );
    r.records()
        .map(|rec| {
            let rec = rec.unwrap();
            if !rec[4].is_empty() {
                let (low, rate, high): (f64, f64, f64) = (
                    rec[4].parse().unwrap(),
                    rec[3].parse().unwrap(),
                    rec[5].parse().unwrap(),
                );
                assert!(low <= rate && rate <= high, "{rec:?}");
            }
            (
                (
                    rec[0].to_owned(),
                    rec[1].to_owned(),
                    rec[2].parse().unwrap(),
                ),
                rec[3].parse().unwrap(),
            )
        })
        .collect()
}

fn split(dir: &Path) -> (String, String) {
    let (h, a) = (dir.join("H.csv"), dir.join("A.csv"));
    let (code, out) = parkade(
        &[
            "holdout",
            birmingham().to_str().unwrap(),
            "--history",
            h.to_str().unwrap(),
            "--actuals",
            a.to_str().unwrap(),
        ],
        dir,
        None,
    );
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("the week from 2016-12-05 to 2016-12-11"),
        "{out}"
    );
    (h.display().to_string(), a.display().to_string())
}

fn backtest(dir: &Path, h: &str, a: &str, out_name: &str) -> (String, std::path::PathBuf) {
    let out = dir.join(out_name);
    let (code, text) = parkade(
        &[
            "backtest",
            "--history",
            h,
            "--actuals",
            a,
            "--out",
            out.to_str().unwrap(),
        ],
        dir,
        None,
    );
    assert_eq!(code, 0, "{text}");
    (text, out)
}

#[test]
fn the_model_beats_both_baselines_by_the_margins_asked_on_the_held_out_week() {
    let dir = common::data_dir();
    let (h, a) = split(dir.path());
    let (text, out) = backtest(dir.path(), &h, &a, "predictions.csv");
    println!("{text}");
    // The table: | 30 min | rows | model | persistence | seasonal | N% lower | target |
    let mut seen = 0;
    for line in text
        .lines()
        .filter(|l| l.starts_with("| ") && l.contains(" min |"))
    {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let horizon: u32 = cells[1].trim_end_matches(" min").parse().unwrap();
        let model: f64 = cells[3].parse().unwrap();
        let best = cells[4]
            .parse::<f64>()
            .unwrap()
            .min(cells[5].parse().unwrap());
        let needed = match horizon {
            30 => 0.45,
            60 => 0.40,
            120 => 0.25,
            1440 => 0.05,
            other => panic!("unexpected horizon {other}"),
        };
        assert!(
            model <= best * (1.0 - needed),
            "{horizon} min: model MAE {model} is not {needed} below the better baseline {best}"
        );
        // The p10-p90 interval holds about 80% of the actual rates (within four points;
        // 78.8-81.9% when this was written).
        let coverage: f64 = cells[9].trim_end_matches('%').parse().unwrap();
        assert!(
            (76.0..=84.0).contains(&coverage),
            "{horizon} min: the p10-p90 interval held {coverage}% of the actuals"
        );
        seen += 1;
    }
    assert_eq!(seen, 4, "{text}");
    // Every scored actual row has a prediction per horizon, rates within reason.
    let p = predictions(&out);
    let actual_rows = text
        .lines()
        .find(|l| l.starts_with("| 30 min"))
        .and_then(|l| l.split('|').nth(2))
        .and_then(|c| c.trim().parse::<usize>().ok())
        .unwrap();
    assert_eq!(p.len(), actual_rows * 4);
    assert!(p.values().all(|r| (0.0..=1.5).contains(r)));
}

#[test]
fn a_forecast_does_not_move_when_actuals_after_its_issue_time_change() {
    let dir = common::data_dir();
    let (h, a) = split(dir.path());
    let (_, before) = backtest(dir.path(), &h, &a, "before.csv");
    // Change every actual from Thursday 2016-12-08 12:00 on (local time).
    let change_from = "2016-12-08 12:00:00";
    let changed = dir.path().join("A-changed.csv");
    let mut r = csv::Reader::from_path(&a).unwrap();
    let mut w = csv::Writer::from_path(&changed).unwrap();
    w.write_record(r.headers().unwrap()).unwrap();
    for rec in r.records() {
        let rec = rec.unwrap();
        let mut fields: Vec<String> = rec.iter().map(str::to_owned).collect();
        if fields[3].as_str() >= change_from {
            let cap: i64 = fields[1].parse().unwrap();
            let occ: i64 = fields[2].parse().unwrap();
            fields[2] = ((occ + cap / 3) % cap.max(1)).to_string();
        }
        w.write_record(&fields).unwrap();
    }
    w.flush().unwrap();
    let (_, after) = backtest(dir.path(), &h, changed.to_str().unwrap(), "after.csv");
    let (before, after) = (predictions(&before), predictions(&after));
    assert_eq!(before.len(), after.len());
    let issue = |target: &str, horizon: u32| {
        let t = chrono::NaiveDateTime::parse_from_str(target, "%Y-%m-%d %H:%M:%S").unwrap();
        t - chrono::Duration::minutes(i64::from(horizon))
    };
    let cut = chrono::NaiveDateTime::parse_from_str(change_from, "%Y-%m-%d %H:%M:%S").unwrap();
    let (mut unchanged, mut moved) = (0, 0);
    for (key, b) in &before {
        let a = after[key];
        if issue(&key.1, key.2) < cut {
            assert_eq!(*b, a, "{key:?} was issued before the change and moved");
            unchanged += 1;
        } else if (a - b).abs() > 1e-9 {
            moved += 1;
        }
    }
    assert!(unchanged > 1000, "{unchanged}");
    // The check has teeth: forecasts issued after the change do see it.
    assert!(moved > 100, "{moved}");
}

#[test]
fn train_from_a_csv_saves_a_current_model() {
    let dir = common::data_dir();
    let (code, out) = parkade(
        &["train", "--csv", birmingham().to_str().unwrap()],
        dir.path(),
        None,
    );
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("| 30 min |"), "{out}");
    let version = std::fs::read_to_string(dir.path().join("models/CURRENT")).unwrap();
    let model: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join(format!("models/{}.json", version.trim())))
            .unwrap(),
    )
    .unwrap();
    assert_eq!(model["version"].as_str(), Some(version.trim()));
    assert_eq!(model["horizons"].as_array().unwrap().len(), 14);
    // Training needs history: a file of one day is refused with the reason.
    let short = dir.path().join("short.csv");
    std::fs::write(
        &short,
        "SystemCodeNumber,Capacity,Occupancy,LastUpdated\nA,10,1,2016-10-04 08:00:00\nA,10,2,2016-10-04 08:30:00\n",
    )
    .unwrap();
    let (code, out) = parkade(
        &["train", "--csv", short.to_str().unwrap()],
        dir.path(),
        None,
    );
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("not enough history"), "{out}");
}

#[test]
fn a_lot_with_a_few_days_of_history_gets_its_partial_profile_which_beats_persistence() {
    let dir = common::data_dir();
    let (h, a) = split(dir.path());
    let out = dir.path().join("short.csv");
    let (code, text) = parkade(
        &[
            "backtest",
            "--history",
            &h,
            "--actuals",
            &a,
            "--out",
            out.to_str().unwrap(),
            "--short-history-days",
            "3",
        ],
        dir.path(),
        None,
    );
    assert_eq!(code, 0, "{text}");
    println!("{text}");
    // The second table: | horizon | rows | by partial profile | by persistence | MAE |
    // persistence MAE | interval coverage |
    let (_, fallbacks) = text
        .split_once("too little history for the model")
        .expect("a table of the forecasts with too little history");
    let mut seen = 0;
    for line in fallbacks
        .lines()
        .filter(|l| l.starts_with("| ") && l.contains(" min |"))
    {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let by_profile: usize = cells[3].parse().unwrap();
        let (written, persistence): (f64, f64) =
            (cells[5].parse().unwrap(), cells[6].parse().unwrap());
        assert!(by_profile > 0, "{line}");
        assert!(
            written < persistence * 0.9,
            "{line}: the fallbacks are not better than persistence"
        );
        // The model's p10-p90 interval around a partial profile holds about 80%.
        let coverage: f64 = cells[7].trim_end_matches('%').parse().unwrap();
        assert!((72.0..=90.0).contains(&coverage), "{line}: coverage");
        seen += 1;
    }
    assert_eq!(seen, 4, "{text}");
}
