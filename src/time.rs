//! Time as the mirror reads it from records and writes it to the database:
//! RFC 3339 text, compared as instants. Below both the API client and the
//! store, which each need it.

use std::time::{SystemTime, UNIX_EPOCH};

/// Now as RFC 3339 UTC text, the format of every timestamp in the database.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

/// `t` as nanoseconds since 1970, the scale of [`instant`] (0 before 1970).
pub fn nanos(t: SystemTime) -> i128 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i128::try_from(d.as_nanos()).unwrap_or(i128::MAX))
}

/// An RFC 3339 time as nanoseconds since 1970, whatever its precision and
/// offset (`2026-12-01T10:00:00Z`, `…00.123456+01:00`), so times written in
/// different forms compare correctly. None if it is not one.
pub fn instant(s: &str) -> Option<i128> {
    let b = s.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let t = s.get(r)?;
        t.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| t.parse().ok())?
    };
    if b.len() < 19 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let mut i = 19;
    let mut nanos: i64 = 0;
    if b.get(i) == Some(&b'.') {
        let start = i + 1;
        i = start;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        let digits = &s[start..i];
        if digits.is_empty() {
            return None;
        }
        let mut nine = digits.chars().take(9).collect::<String>();
        while nine.len() < 9 {
            nine.push('0');
        }
        nanos = nine.parse().ok()?;
    }
    let offset_secs = match &s[i..] {
        "Z" | "z" | "" => 0,
        off if off.len() == 6 && (off.starts_with('+') || off.starts_with('-')) => {
            let oh = num(i + 1..i + 3)?;
            let om = num(i + 4..i + 6)?;
            let sign = if off.starts_with('-') { -1 } else { 1 };
            sign * (oh * 3600 + om * 60)
        }
        _ => return None,
    };
    // days from civil (Howard Hinnant's algorithm)
    let (y, m) = if mo <= 2 {
        (y - 1, mo + 9)
    } else {
        (y, mo - 3)
    };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + h * 3600 + mi * 60 + sec - offset_secs;
    Some(i128::from(secs) * 1_000_000_000 + i128::from(nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_in_any_form_compare() {
        let z = instant("2026-12-01T10:00:00Z").unwrap();
        assert_eq!(instant("2026-12-01T11:00:00+01:00"), Some(z));
        assert_eq!(instant("2026-12-01T10:00:00.000000Z"), Some(z));
        assert_eq!(instant("2026-12-01 10:00:00"), Some(z));
        assert_eq!(instant("2026-12-01T10:00:00.5Z"), Some(z + 500_000_000));
        assert!(instant("2026-12-01T09:59:59.999999Z").unwrap() < z);
        assert_eq!(instant("1970-01-01T00:00:01Z"), Some(1_000_000_000));
        for bad in [
            "",
            "yesterday",
            "2026-13-01T00:00:00Z",
            "2026-12-01T10:00:00+1",
        ] {
            assert_eq!(instant(bad), None, "{bad}");
        }
    }
}
