//! The campus's year: which days have classes, exams, breaks or a holiday, by Simon
//! Fraser University's usual dates (three terms: spring from early January, summer from
//! May, fall from September; each followed by two weeks of exams, then a break) and
//! British Columbia's statutory holidays. Approximate every year, not an official
//! calendar: enough for simulated history to look like a campus term.

use chrono::{Datelike, NaiveDate, Weekday};

/// What kind of day it is on campus.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Term {
    /// Classes in session (in summer, fewer of them).
    Classes,
    /// The spring reading break (the week of Family Day).
    ReadingBreak,
    /// Final exams.
    Exams,
    /// Between terms.
    Break,
    /// A statutory holiday: the campus is as quiet as at a weekend.
    Holiday,
}

impl Term {
    /// The day's kind.
    pub fn of(day: NaiveDate) -> Term {
        if is_holiday(day) {
            return Term::Holiday;
        }
        let md = (day.month(), day.day());
        let family_day = nth_weekday(day.year(), 2, Weekday::Mon, 3);
        if day > family_day && day <= family_day + chrono::Days::new(4) {
            return Term::ReadingBreak;
        }
        match md {
            (1, 1..=5) => Term::Break,
            (1, _) | (2, _) | (3, _) | (4, 1..=10) => Term::Classes,
            (4, 11..=25) => Term::Exams,
            (4, _) | (5, 1..=10) => Term::Break,
            (5, _) | (6, _) | (7, _) | (8, 1..=7) => Term::Classes,
            (8, 8..=20) => Term::Exams,
            (8, _) | (9, 1..=7) => Term::Break,
            (9, _) | (10, _) | (11, _) | (12, 1..=5) => Term::Classes,
            (12, 6..=19) => Term::Exams,
            _ => Term::Break,
        }
    }

    /// How busy a weekday of this kind is, against a weekday of fall or spring classes.
    /// `None` for a holiday (it follows the weekend curve).
    pub fn weekday_scale(self, day: NaiveDate) -> Option<f64> {
        match self {
            Term::Classes if (5..=8).contains(&day.month()) => Some(0.6),
            Term::Classes => Some(1.0),
            Term::Exams => Some(0.8),
            Term::ReadingBreak => Some(0.5),
            Term::Break => Some(0.4),
            Term::Holiday => None,
        }
    }
}

/// British Columbia's statutory holidays on which the university closes (Good Friday
/// and Easter Monday, whose dates move with Easter, are left out).
fn is_holiday(day: NaiveDate) -> bool {
    let y = day.year();
    let fixed = [(1, 1), (7, 1), (9, 30), (11, 11), (12, 25), (12, 26)];
    if fixed.contains(&(day.month(), day.day())) {
        return true;
    }
    let victoria_day = {
        // The Monday before 25 May.
        let mut d = NaiveDate::from_ymd_opt(y, 5, 24).expect("24 May");
        while d.weekday() != Weekday::Mon {
            d = d.pred_opt().expect("a day before");
        }
        d
    };
    [
        nth_weekday(y, 2, Weekday::Mon, 3),  // Family Day
        victoria_day,                        // Victoria Day
        nth_weekday(y, 8, Weekday::Mon, 1),  // BC Day
        nth_weekday(y, 9, Weekday::Mon, 1),  // Labour Day
        nth_weekday(y, 10, Weekday::Mon, 2), // Thanksgiving
    ]
    .contains(&day)
}

/// The `n`th `weekday` of `month` in `year`.
fn nth_weekday(year: i32, month: u32, weekday: Weekday, n: u8) -> NaiveDate {
    NaiveDate::from_weekday_of_month_opt(year, month, weekday, n).expect("a valid month")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day(s: &str) -> NaiveDate {
        s.parse().unwrap()
    }

    #[test]
    fn the_year_has_terms_exams_breaks_and_holidays() {
        for (d, t) in [
            ("2026-11-24", Term::Classes),
            ("2026-11-11", Term::Holiday), // Remembrance Day
            ("2026-10-12", Term::Holiday), // Thanksgiving, 2nd Monday
            ("2026-09-07", Term::Holiday), // Labour Day
            ("2026-09-08", Term::Classes), // the fall term's first day
            ("2026-12-10", Term::Exams),
            ("2026-12-28", Term::Break),
            ("2027-01-11", Term::Classes),
            ("2027-02-15", Term::Holiday), // Family Day, 3rd Monday
            ("2027-02-17", Term::ReadingBreak),
            ("2027-02-22", Term::Classes),
            ("2027-04-20", Term::Exams),
            ("2027-05-24", Term::Holiday), // Victoria Day
            ("2027-06-15", Term::Classes),
            ("2027-08-02", Term::Holiday), // BC Day
        ] {
            assert_eq!(Term::of(day(d)), t, "{d}");
        }
        let summer = day("2027-06-15");
        let fall = day("2026-11-24");
        assert!(Term::of(summer).weekday_scale(summer) < Term::of(fall).weekday_scale(fall));
        assert_eq!(Term::Holiday.weekday_scale(fall), None);
    }
}
