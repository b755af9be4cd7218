//! RFC 3339 timestamps, the CloudEvents `Timestamp` type, checked without a clock or a calendar crate.

/// Checks that `s` is an RFC 3339 date-time: `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)`.
pub fn validate_timestamp(s: &str) -> Result<(), &'static str> {
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
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        if i == start {
            return Err("has an empty fraction of a second");
        }
    }
    match b.get(i) {
        Some(b'Z' | b'z') if b.len() == i + 1 => Ok(()),
        Some(b'+' | b'-') if b.len() == i + 6 => {
            let oh = digits(i + 1..i + 3)?;
            sep(i + 3, b":")?;
            let om = digits(i + 4..i + 6)?;
            if oh > 23 || om > 59 { Err("has an offset out of range") } else { Ok(()) }
        }
        _ => Err("is not an RFC 3339 timestamp"),
    }
}

#[cfg(test)]
mod tests {
    use super::validate_timestamp;

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
