//! RFC 3339 timestamps for witness predicates, without a date-time crate.
//!
//! Written timestamps are always UTC with whole seconds
//! (`2026-11-28T10:06:00Z`). Read timestamps may carry a fraction and any
//! numeric offset (`2026-11-28T11:06:00.5+01:00`), as other producers write
//! them. Years 0000–9999 only, as RFC 3339 allows.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

const SECS_PER_DAY: i64 = 86_400;

/// `t` as `YYYY-MM-DDTHH:MM:SSZ` (UTC, sub-seconds dropped toward the past).
pub fn format_rfc3339(t: SystemTime) -> String {
    let secs: i64 = match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => {
            let d = e.duration();
            let whole = i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
            // Floor: -0.5 s is 23:59:59 of the day before.
            if d.subsec_nanos() > 0 {
                -whole - 1
            } else {
                -whole
            }
        }
    };
    let days = secs.div_euclid(SECS_PER_DAY);
    let rem = secs.rem_euclid(SECS_PER_DAY);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// Parses an RFC 3339 `date-time` (`YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)`).
pub fn parse_rfc3339(s: &str) -> Result<SystemTime, String> {
    let bad = |why: &str| format!("{s:?} is not an RFC 3339 timestamp: {why}");
    let b = s.as_bytes();
    if b.len() < 20 {
        return Err(bad("too short"));
    }
    let num = |range: std::ops::Range<usize>| -> Result<i64, String> {
        let part = b.get(range).ok_or_else(|| bad("too short"))?;
        if part.is_empty() || !part.iter().all(u8::is_ascii_digit) {
            return Err(bad("expected digits"));
        }
        Ok(part
            .iter()
            .fold(0i64, |acc, &c| acc * 10 + i64::from(c - b'0')))
    };
    let sep = |i: usize, allowed: &[u8]| -> Result<(), String> {
        match b.get(i) {
            Some(c) if allowed.contains(c) => Ok(()),
            _ => Err(bad("bad separator")),
        }
    };
    let year = num(0..4)?;
    sep(4, b"-")?;
    let month = num(5..7)?;
    sep(7, b"-")?;
    let day = num(8..10)?;
    sep(10, b"Tt")?;
    let hour = num(11..13)?;
    sep(13, b":")?;
    let minute = num(14..16)?;
    sep(16, b":")?;
    let mut second = num(17..19)?;

    if !(1..=12).contains(&month) {
        return Err(bad("month out of range"));
    }
    if day < 1 || day > days_in_month(year, month) {
        return Err(bad("day out of range"));
    }
    if hour > 23 || minute > 59 || second > 60 {
        return Err(bad("time out of range"));
    }
    // A leap second is read as the last ordinary second of its minute.
    if second == 60 {
        second = 59;
    }

    let mut i = 19;
    let mut nanos: u32 = 0;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            if i - start < 9 {
                nanos = nanos * 10 + u32::from(b[i] - b'0');
            }
            i += 1;
        }
        let digits = i - start;
        if digits == 0 {
            return Err(bad("empty fraction"));
        }
        for _ in digits..9 {
            nanos *= 10;
        }
    }
    let offset_secs = match b.get(i) {
        Some(b'Z' | b'z') => {
            i += 1;
            0
        }
        Some(&sign @ (b'+' | b'-')) => {
            let oh = num(i + 1..i + 3)?;
            sep(i + 3, b":")?;
            let om = num(i + 4..i + 6)?;
            if oh > 23 || om > 59 {
                return Err(bad("offset out of range"));
            }
            i += 6;
            let off = oh * 3600 + om * 60;
            if sign == b'-' {
                -off
            } else {
                off
            }
        }
        _ => return Err(bad("missing time zone (Z or ±HH:MM)")),
    };
    if i != b.len() {
        return Err(bad("trailing characters"));
    }

    let secs =
        days_from_civil(year, month, day) * SECS_PER_DAY + hour * 3600 + minute * 60 + second
            - offset_secs;
    let t = if secs >= 0 {
        UNIX_EPOCH.checked_add(Duration::new(secs.unsigned_abs(), nanos))
    } else {
        UNIX_EPOCH
            .checked_sub(Duration::from_secs(secs.unsigned_abs()))
            .and_then(|t| t.checked_add(Duration::from_nanos(u64::from(nanos))))
    };
    t.ok_or_else(|| bad("out of the representable range"))
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if is_leap(y) => 29,
        2 => 28,
        _ => 0,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date. Counts in 400-year
/// cycles (146 097 days) of years that start on March 1st, so that the leap
/// day is the last day of its year.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let cycle = y.div_euclid(400);
    let year_of_cycle = y.rem_euclid(400);
    let month_from_march = (m + 9) % 12; // March = 0 … February = 11
    let day_of_year = (153 * month_from_march + 2) / 5 + d - 1;
    let day_of_cycle = year_of_cycle * 365 + year_of_cycle / 4 - year_of_cycle / 100 + day_of_year;
    // 719 468 days from 0000-03-01 to 1970-01-01.
    cycle * 146_097 + day_of_cycle - 719_468
}

/// The inverse of [`days_from_civil`].
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let cycle = z.div_euclid(146_097);
    let day_of_cycle = z.rem_euclid(146_097);
    let year_of_cycle =
        (day_of_cycle - day_of_cycle / 1460 + day_of_cycle / 36_524 - day_of_cycle / 146_096) / 365;
    let day_of_year =
        day_of_cycle - (365 * year_of_cycle + year_of_cycle / 4 - year_of_cycle / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let d = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let m = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    };
    let y = cycle * 400 + year_of_cycle + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn formats_known_instants() {
        assert_eq!(format_rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        assert_eq!(format_rfc3339(at(951_782_400)), "2000-02-29T00:00:00Z");
        assert_eq!(format_rfc3339(at(1_700_000_000)), "2023-11-14T22:13:20Z");
        assert_eq!(format_rfc3339(at(4_102_444_799)), "2099-12-31T23:59:59Z");
        assert_eq!(
            format_rfc3339(at(1_700_000_000) + Duration::from_millis(999)),
            "2023-11-14T22:13:20Z"
        );
        assert_eq!(
            format_rfc3339(UNIX_EPOCH - Duration::from_millis(500)),
            "1969-12-31T23:59:59Z"
        );
    }

    #[test]
    fn parses_forms() {
        assert_eq!(
            parse_rfc3339("2023-11-14T22:13:20Z").unwrap(),
            at(1_700_000_000)
        );
        assert_eq!(
            parse_rfc3339("2023-11-14t22:13:20z").unwrap(),
            at(1_700_000_000)
        );
        assert_eq!(
            parse_rfc3339("2023-11-14T23:13:20+01:00").unwrap(),
            at(1_700_000_000)
        );
        assert_eq!(
            parse_rfc3339("2023-11-14T17:43:20-04:30").unwrap(),
            at(1_700_000_000)
        );
        assert_eq!(
            parse_rfc3339("2023-11-14T22:13:20.25Z").unwrap(),
            at(1_700_000_000) + Duration::from_millis(250)
        );
        assert_eq!(
            parse_rfc3339("2023-11-14T22:13:20.1234567891Z").unwrap(),
            at(1_700_000_000) + Duration::from_nanos(123_456_789)
        );
        assert_eq!(
            parse_rfc3339("2016-12-31T23:59:60Z").unwrap(),
            at(1_483_228_799)
        );
        assert_eq!(
            parse_rfc3339("1969-12-31T23:59:59Z").unwrap(),
            UNIX_EPOCH - Duration::from_secs(1)
        );
    }

    #[test]
    fn round_trips_every_day_for_centuries() {
        let mut days = days_from_civil(1900, 1, 1);
        let end = days_from_civil(2400, 12, 31);
        let mut last = (1899, 12, 31);
        while days <= end {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
            assert!((y, m, d) > last);
            assert!(d <= days_in_month(y, m));
            last = (y, m, d);
            days += 1;
        }
        for secs in [0u64, 59, 86_399, 86_400, 1_234_567_890, 253_402_300_799] {
            let s = format_rfc3339(at(secs));
            assert_eq!(parse_rfc3339(&s).unwrap(), at(secs), "{s}");
        }
    }

    #[test]
    fn rejects() {
        for s in [
            "",
            "2023-11-14",
            "2023-11-14T22:13:20",
            "2023-11-14 22:13:20Z",
            "2023-13-14T22:13:20Z",
            "2023-00-14T22:13:20Z",
            "2023-02-29T22:13:20Z",
            "2023-11-31T22:13:20Z",
            "2023-11-14T24:00:00Z",
            "2023-11-14T22:60:00Z",
            "2023-11-14T22:13:61Z",
            "2023-11-14T22:13:20.Z",
            "2023-11-14T22:13:20+0100",
            "2023-11-14T22:13:20+24:00",
            "2023-11-14T22:13:20Zjunk",
            "2023-11-14T22:13:20Z ",
            "+023-11-14T22:13:20Z",
            "2023-1a-14T22:13:20Z",
            "1700000000",
        ] {
            assert!(parse_rfc3339(s).is_err(), "{s:?} accepted");
        }
    }
}
