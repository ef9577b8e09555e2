//! Proleptic Gregorian date arithmetic on plain integers (H. Hinnant's algorithms), for the
//! per-message paths of ingest where building chrono dates showed in profiles.

/// Days from 1970-01-01 to year `y`, month `m` (1–12), day `d`.
pub fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let year_of_era = y - era * 400;
    let day_of_year = (153 * ((m + 9) % 12) + 2) / 5 + d - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// The year of the day `days` after 1970-01-01.
pub fn year_of_days(days: i64) -> i64 {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z - era * 146_097;
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153; // March = 0
    year_of_era + era * 400 + i64::from(shifted_month >= 10)
}

/// Asia/Shanghai's offset from UTC in seconds.
pub fn shanghai_offset_s() -> i64 {
    i64::from(super::shanghai().local_minus_utc())
}

/// The Asia/Shanghai (UTC+8) calendar year of a Unix time in seconds.
pub fn shanghai_year(unix_s: i64) -> i64 {
    year_of_days((unix_s + shanghai_offset_s()).div_euclid(86_400))
}

/// The Unix time at which Asia/Shanghai year `y` begins.
pub fn shanghai_year_start(y: i64) -> i64 {
    days_from_civil(y, 1, 1) * 86_400 - shanghai_offset_s()
}

/// Days in month `m` (1–12) of year `y`.
pub fn month_length(y: i64, m: i64) -> i64 {
    match m {
        2 if y % 4 == 0 && (y % 100 != 0 || y % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{DateTime, Datelike, NaiveDate};

    #[test]
    fn agrees_with_chrono_on_every_day_of_ten_millennia() {
        let epoch = NaiveDate::from_ymd_opt(1970, 1, 1).unwrap();
        let mut date = NaiveDate::from_ymd_opt(-400, 1, 1).unwrap();
        while date.year() < 10_000 {
            let (y, m, d) = (i64::from(date.year()), i64::from(date.month()), i64::from(date.day()));
            let days = (date - epoch).num_days();
            assert_eq!(days_from_civil(y, m, d), days, "{date}");
            assert_eq!(year_of_days(days), y, "{date}");
            assert_eq!(month_length(y, m) == d, date.succ_opt().unwrap().month() != date.month(), "{date}");
            date = date.succ_opt().unwrap();
        }
    }

    #[test]
    fn shanghai_years_turn_at_local_midnight() {
        // 2019-12-31T16:00:00Z is 2020-01-01T00:00:00+08:00.
        let turn = DateTime::parse_from_rfc3339("2019-12-31T16:00:00Z").unwrap().timestamp();
        assert_eq!((shanghai_year(turn - 1), shanghai_year(turn)), (2019, 2020));
        assert_eq!(shanghai_year_start(2020), turn);
    }
}
