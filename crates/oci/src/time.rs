//! RFC 3339 timestamps (TOC modtimes, witness predicates, lease expiry),
//! over `jiff`, the one date-time implementation of the project.
//!
//! Written timestamps are UTC with whole seconds (`2026-11-28T10:06:00Z`).
//! Read timestamps must be RFC 3339 `date-time`s: a fraction and any numeric
//! `±HH:MM` offset are accepted, the looser ISO 8601 forms jiff would also
//! take (a space for `T`, `+0100`, no offset) are not. A leap second (`:60`)
//! reads as `:59`.

use std::time::SystemTime;

/// `t` as `YYYY-MM-DDTHH:MM:SSZ` (UTC, sub-seconds dropped toward the past).
/// Instants outside years 0000-9999 are clamped to them.
pub fn format_rfc3339(t: SystemTime) -> String {
    let ts = jiff::Timestamp::try_from(t).unwrap_or(if t < SystemTime::UNIX_EPOCH {
        jiff::Timestamp::MIN
    } else {
        jiff::Timestamp::MAX
    });
    let secs = ts.as_second() - i64::from(ts.subsec_nanosecond() < 0);
    format_unix(secs)
}

/// Unix seconds as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn format_unix(secs: i64) -> String {
    let secs = secs.clamp(-62_167_219_200, jiff::Timestamp::MAX.as_second());
    match jiff::Timestamp::from_second(secs) {
        Ok(ts) => ts.strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
        Err(_) => "1970-01-01T00:00:00Z".to_owned(),
    }
}

/// Parses an RFC 3339 `date-time` (`YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)`)
/// into Unix seconds and nanoseconds (of a second, toward the future).
pub fn parse_rfc3339_unix(s: &str) -> Result<(i64, u32), String> {
    check_syntax(s).map_err(|why| format!("{s:?} is not an RFC 3339 timestamp: {why}"))?;
    // jiff has no leap seconds; RFC 3339 allows :60.
    let fixed;
    let s = if s.get(17..19) == Some("60") {
        fixed = format!("{}59{}", &s[..17], &s[19..]);
        fixed.as_str()
    } else {
        s
    };
    let ts: jiff::Timestamp = s
        .parse()
        .map_err(|e| format!("{s:?} is not an RFC 3339 timestamp: {e}"))?;
    let nanos = ts.subsec_nanosecond();
    Ok(if nanos < 0 {
        (ts.as_second() - 1, (1_000_000_000 + nanos).unsigned_abs())
    } else {
        (ts.as_second(), nanos.unsigned_abs())
    })
}

/// [`parse_rfc3339_unix`] as a `SystemTime`.
pub fn parse_rfc3339(s: &str) -> Result<SystemTime, String> {
    let (secs, nanos) = parse_rfc3339_unix(s)?;
    let t = jiff::Timestamp::new(secs, nanos as i32).map_err(|e| e.to_string())?;
    Ok(SystemTime::from(t))
}

/// The RFC 3339 shape, byte by byte (jiff checks the calendar).
fn check_syntax(s: &str) -> Result<(), &'static str> {
    let b = s.as_bytes();
    let digits =
        |r: std::ops::Range<usize>| b.get(r).is_some_and(|p| p.iter().all(u8::is_ascii_digit));
    let at = |i: usize, allowed: &[u8]| b.get(i).is_some_and(|c| allowed.contains(c));
    if !(digits(0..4)
        && at(4, b"-")
        && digits(5..7)
        && at(7, b"-")
        && digits(8..10)
        && at(10, b"Tt")
        && digits(11..13)
        && at(13, b":")
        && digits(14..16)
        && at(16, b":")
        && digits(17..19))
    {
        return Err("expected YYYY-MM-DDTHH:MM:SS");
    }
    let mut i = 19;
    if at(i, b".") {
        let start = i + 1;
        i = start;
        while at(i, b"0123456789") {
            i += 1;
        }
        if i == start {
            return Err("empty fraction");
        }
    }
    match b.get(i..) {
        Some(b"Z") | Some(b"z") => Ok(()),
        Some(rest)
            if rest.len() == 6
                && (rest[0] == b'+' || rest[0] == b'-')
                && digits(i + 1..i + 3)
                && rest[3] == b':'
                && digits(i + 4..i + 6) =>
        {
            let two = |k: usize| (rest[k] - b'0') * 10 + (rest[k + 1] - b'0');
            if two(1) > 23 || two(4) > 59 {
                return Err("offset out of range");
            }
            Ok(())
        }
        _ => Err("expected Z or a ±HH:MM offset at the end"),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

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
        assert_eq!(format_unix(-1), "1969-12-31T23:59:59Z");
    }

    #[test]
    fn parses_forms() {
        for (s, want) in [
            ("2023-11-14T22:13:20Z", at(1_700_000_000)),
            ("2023-11-14t22:13:20z", at(1_700_000_000)),
            ("2023-11-14T23:13:20+01:00", at(1_700_000_000)),
            ("2023-11-14T17:43:20-04:30", at(1_700_000_000)),
            (
                "2023-11-14T22:13:20.25Z",
                at(1_700_000_000) + Duration::from_millis(250),
            ),
            ("2016-12-31T23:59:60Z", at(1_483_228_799)),
            ("1969-12-31T23:59:59Z", UNIX_EPOCH - Duration::from_secs(1)),
        ] {
            assert_eq!(parse_rfc3339(s).unwrap(), want, "{s}");
        }
        assert_eq!(
            parse_rfc3339_unix("1969-12-31T23:59:59.5Z").unwrap(),
            (-1, 500_000_000)
        );
        for secs in [0u64, 59, 86_399, 86_400, 1_234_567_890, 253_402_207_200] {
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
