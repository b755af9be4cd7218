//! RFC 3339 timestamps, the CloudEvents `Timestamp` type, checked without a clock or a calendar crate.

/// Checks that `s` is an RFC 3339 date-time: `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)`.
pub fn validate_timestamp(s: &str) -> Result<(), &'static str> {
    parse_timestamp(s).map(|_| ())
}

/// Parses an RFC 3339 date-time into seconds since the Unix epoch (UTC) and nanoseconds (fraction digits past the
/// ninth are dropped; a leap second counts as the next second's start).
pub fn parse_timestamp(s: &str) -> Result<(i64, u32), &'static str> {
    let b = s.as_bytes();
    let digits = |range: core::ops::Range<usize>| -> Result<u32, &'static str> {
        let part = b.get(range).ok_or("is not an RFC 3339 timestamp")?;
        part.iter().try_fold(0u32, |acc, &c| {
            if c.is_ascii_digit() { Ok(acc * 10 + u32::from(c - b'0')) } else { Err("is not an RFC 3339 timestamp") }
        })
    };
    let sep = |i: usize, allowed: &[u8]| -> Result<(), &'static str> {
        match b.get(i) {
            Some(c) if allowed.contains(c) => Ok(()),
            _ => Err("is not an RFC 3339 timestamp"),
        }
    };
    let year = digits(0..4)?;
    sep(4, b"-")?;
    let month = digits(5..7)?;
    sep(7, b"-")?;
    let day = digits(8..10)?;
    sep(10, b"Tt")?;
    let hour = digits(11..13)?;
    sep(13, b":")?;
    let minute = digits(14..16)?;
    sep(16, b":")?;
    let second = digits(17..19)?;
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let days_in_month = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return Err("has a month outside 01-12"),
    };
    if day == 0 || day > days_in_month || hour > 23 || minute > 59 || second > 60 {
        return Err("has a date or time field out of range");
    }
    let mut i = 19;
    let mut nanos = 0u32;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while let Some(&c) = b.get(i).filter(|c| c.is_ascii_digit()) {
            if i - start < 9 {
                nanos = nanos * 10 + u32::from(c - b'0');
            }
            i += 1;
        }
        if i == start {
            return Err("has an empty fraction of a second");
        }
        for _ in (i - start)..9 {
            nanos *= 10;
        }
    }
    let offset_s: i64 = match b.get(i) {
        Some(b'Z' | b'z') if b.len() == i + 1 => 0,
        Some(&sign @ (b'+' | b'-')) if b.len() == i + 6 => {
            let oh = digits(i + 1..i + 3)?;
            sep(i + 3, b":")?;
            let om = digits(i + 4..i + 6)?;
            if oh > 23 || om > 59 {
                return Err("has an offset out of range");
            }
            let offset = i64::from(oh * 3600 + om * 60);
            if sign == b'-' { -offset } else { offset }
        }
        _ => return Err("is not an RFC 3339 timestamp"),
    };
    let days = days_from_civil(i64::from(year), i64::from(month), i64::from(day));
    let secs = days * 86_400 + i64::from(hour * 3600 + minute * 60 + second) - offset_s;
    Ok((secs, nanos))
}

/// Formats seconds since the Unix epoch and nanoseconds as an RFC 3339 UTC timestamp (`...Z`), with the fraction
/// only when it is not zero. `None` for years outside 0000-9999.
pub fn format_timestamp(secs: i64, nanos: u32) -> Option<alloc::string::String> {
    use core::fmt::Write;
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    if !(0..=9999).contains(&y) || nanos >= 1_000_000_000 {
        return None;
    }
    let mut out = alloc::string::String::with_capacity(30);
    let _ = write!(out, "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}", rem / 3600, rem % 3600 / 60, rem % 60);
    if nanos != 0 {
        let _ = write!(out, ".{nanos:09}");
        while out.ends_with('0') {
            out.pop();
        }
    }
    out.push('Z');
    Some(out)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day count since 1970-01-01 (the inverse of [`days_from_civil`]).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[cfg(test)]
mod tests {
    use super::{format_timestamp, parse_timestamp, validate_timestamp};

    #[test]
    fn parses_to_epoch_seconds_and_nanos() {
        assert_eq!(parse_timestamp("1970-01-01T00:00:00Z"), Ok((0, 0)));
        assert_eq!(parse_timestamp("2018-04-05T17:31:00Z"), Ok((1_522_949_460, 0)));
        assert_eq!(parse_timestamp("2018-04-05T19:31:00.5+02:00"), Ok((1_522_949_460, 500_000_000)));
        assert_eq!(parse_timestamp("1969-12-31T23:59:59.123456789123Z"), Ok((-1, 123_456_789)));
        assert_eq!(format_timestamp(1_522_949_460, 500_000_000).as_deref(), Some("2018-04-05T17:31:00.5Z"));
        assert_eq!(format_timestamp(-1, 0).as_deref(), Some("1969-12-31T23:59:59Z"));
        for s in ["2024-02-29T23:59:59.000001Z", "2000-01-01T00:00:00Z", "9999-12-31T23:59:59.999999999Z"] {
            let (secs, nanos) = parse_timestamp(s).unwrap();
            assert_eq!(format_timestamp(secs, nanos).as_deref(), Some(s));
        }
    }

    #[test]
    fn accepts_rfc3339_forms() {
        for ok in
            ["2018-04-05T17:31:00Z", "2026-11-23T12:00:00.123456+01:00", "2024-02-29t00:00:00z", "1990-12-31T23:59:60Z"]
        {
            assert_eq!(validate_timestamp(ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn refuses_other_forms() {
        for bad in [
            "2018-04-05",
            "2018-04-05 17:31:00Z",
            "2023-02-29T00:00:00Z",
            "2018-13-05T17:31:00Z",
            "2018-04-05T17:31:00",
            "2018-04-05T17:31:00.Z",
            "2018-04-05T17:31:00+0100",
            "today",
        ] {
            assert!(validate_timestamp(bad).is_err(), "{bad}");
        }
    }
}
