//! XEP-0082: XMPP Date and Time Profiles — the one DateTime parser and
//! formatter (MAM's `start`/`end`, MUC's `<history since/>`, `<delay/>`
//! stamps).
//!
//! Years are the four digits of the profile (`CCYY`), so every accepted
//! string is a few thousand years from the epoch at most; the arithmetic
//! is checked all the same, and the conversion to [`SystemTime`] uses
//! `checked_add`/`checked_sub`, so no input can overflow or panic.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Parses a XEP-0082 DateTime: `CCYY-MM-DDThh:mm:ss[.s…](Z|±hh:mm)`.
/// Fractions beyond nanoseconds are truncated; a leap second (`:60`) is
/// accepted and counts as the next second. `None` for anything else.
pub fn parse(s: &str) -> Option<SystemTime> {
    let (date, time) = s.split_once('T')?;
    let mut d = date.split('-');
    let y = digits(d.next()?, 4)?;
    let m = digits(d.next()?, 2)?;
    let day = digits(d.next()?, 2)?;
    if d.next().is_some() || !(1..=12).contains(&m) || day < 1 || day > month_days(y, m) {
        return None;
    }
    let (clock, offset_secs) = if let Some(c) = time.strip_suffix('Z') {
        (c, 0)
    } else {
        let at = time.rfind(['+', '-'])?;
        let (c, off) = time.split_at(at);
        let (oh, om) = off[1..].split_once(':')?;
        let (oh, om) = (digits(oh, 2)?, digits(om, 2)?);
        if oh > 23 || om > 59 {
            return None;
        }
        let secs = oh * 3600 + om * 60;
        (c, if off.starts_with('-') { -secs } else { secs })
    };
    let (hms, frac) = match clock.split_once('.') {
        Some((hms, frac)) => (hms, Some(frac)),
        None => (clock, None),
    };
    let mut t = hms.split(':');
    let (hh, mm, ss) = (
        digits(t.next()?, 2)?,
        digits(t.next()?, 2)?,
        digits(t.next()?, 2)?,
    );
    if t.next().is_some() || hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    let nanos = match frac {
        None => 0,
        // A dot needs digits after it.
        Some(f) if f.is_empty() || !f.bytes().all(|b| b.is_ascii_digit()) => return None,
        Some(f) => f
            .bytes()
            .chain(std::iter::repeat(b'0'))
            .take(9)
            .fold(0u32, |n, b| n * 10 + u32::from(b - b'0')),
    };
    let secs = days_from_civil(y, m, day)
        .checked_mul(86_400)?
        .checked_add(hh * 3600 + mm * 60 + ss)?
        .checked_sub(offset_secs)?;
    // An offset can carry 0000-01-01 or 9999-12-31 past the four-digit
    // years in UTC, where `format` could not write the result back.
    if !(MIN_SECS..=MAX_SECS).contains(&secs) {
        return None;
    }
    let whole = Duration::from_secs(secs.unsigned_abs());
    let at = if secs >= 0 {
        UNIX_EPOCH.checked_add(whole)?
    } else {
        UNIX_EPOCH.checked_sub(whole)?
    };
    at.checked_add(Duration::from_nanos(u64::from(nanos)))
}

/// `2026-11-25T12:48:18.123Z` for `t`: UTC, millisecond precision
/// (truncated). Times before the epoch are formatted too; the year has
/// four digits for every time [`parse`] can return (`parse` refuses an
/// offset that carries the time out of years 0000–9999 in UTC).
pub fn format(t: SystemTime) -> String {
    // Whole seconds since the epoch, floored, and the milliseconds past them.
    let (secs, millis) = match t.duration_since(UNIX_EPOCH) {
        Ok(d) => (d.as_secs() as i64, d.subsec_millis()),
        Err(e) => {
            let d = e.duration();
            let (s, ns) = (d.as_secs() as i64, d.subsec_nanos());
            if ns == 0 {
                (-s, 0)
            } else {
                // 0.5 s before the epoch is -1 s + 500 ms.
                (-s - 1, (1_000_000_000 - ns) / 1_000_000)
            }
        }
    };
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, day) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60,
    )
}

/// 0000-01-01T00:00:00Z and 9999-12-31T23:59:59Z, in seconds from the epoch:
/// the instants with a four-digit year in UTC.
const MIN_SECS: i64 = -62_167_219_200;
const MAX_SECS: i64 = 253_402_300_799;

/// Exactly `len` ASCII digits.
fn digits(s: &str, len: usize) -> Option<i64> {
    (s.len() == len && s.bytes().all(|b| b.is_ascii_digit()))
        .then(|| s.bytes().fold(0, |n, b| n * 10 + i64::from(b - b'0')))
}

fn month_days(y: i64, m: i64) -> i64 {
    match m {
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Howard Hinnant's days-from-civil (proleptic Gregorian).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let doy = (153 * ((m + 9) % 12) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Howard Hinnant's days-to-civil, the inverse of [`days_from_civil`].
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Milliseconds since the epoch, negative before it.
    fn ms(s: &str) -> Option<i128> {
        parse(s).map(|t| match t.duration_since(UNIX_EPOCH) {
            Ok(d) => d.as_millis() as i128,
            Err(e) => -(e.duration().as_millis() as i128),
        })
    }

    fn at(secs: i64, millis: u32) -> SystemTime {
        let t = if secs >= 0 {
            UNIX_EPOCH + Duration::from_secs(secs as u64)
        } else {
            UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
        };
        t + Duration::from_millis(u64::from(millis))
    }

    #[test]
    fn known_instants() {
        assert_eq!(ms("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(ms("2026-11-18T11:06:40.123Z"), Some(1_795_000_000_123));
        assert_eq!(ms("2026-11-18T12:06:40.123+01:00"), Some(1_795_000_000_123));
        assert_eq!(ms("2010-06-06T22:30:00-01:30"), Some(1_275_868_800_000));
        assert_eq!(ms("2010-06-07T00:00:00.5Z"), Some(1_275_868_800_500));
        assert_eq!(
            ms("2010-06-07T00:00:00.123456789123Z"),
            Some(1_275_868_800_123)
        );
        assert_eq!(ms("2000-02-29T00:00:00Z"), Some(951_782_400_000));
        assert_eq!(ms("1969-12-31T23:59:59Z"), Some(-1000));
        assert_eq!(
            ms("0000-01-01T00:00:00Z"),
            Some(i128::from(MIN_SECS) * 1000)
        );
        assert_eq!(
            ms("9999-12-31T23:59:59Z"),
            Some(i128::from(MAX_SECS) * 1000)
        );
        assert_eq!(ms("2016-12-31T23:59:60Z"), ms("2017-01-01T00:00:00Z"));
        assert_eq!(format(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        assert_eq!(format(at(1_795_000_000, 123)), "2026-11-18T11:06:40.123Z");
        assert_eq!(
            format(UNIX_EPOCH - Duration::from_millis(500)),
            "1969-12-31T23:59:59.500Z"
        );
        assert_eq!(format(at(MIN_SECS, 0)), "0000-01-01T00:00:00.000Z");
    }

    #[test]
    fn refuses_what_is_not_the_profile() {
        for bad in [
            "",
            "yesterday",
            "2010-06-07",
            "2010-06-07T00:00:00",
            "2010-13-07T00:00:00Z",
            "2010-02-30T00:00:00Z",
            "1900-02-29T00:00:00Z",
            "2010-06-07T24:00:00Z",
            "2010-06-07T00:00:00.Z",
            "2010-06-07T00:00:00.1x2Z",
            "2010-06-07T00:00:00+2:0x",
            "2010-06-07T00:00:00+24:00",
            "x010-06-07T00:00:00Z",
            "+2010-06-07T00:00:00Z",
            "2010-6-7T0:0:0Z",
            "2010-06-07-01T00:00:00Z",
            "2010-06-07T00:00:00:00Z",
            "2010-06-07T00:00:00ZZ",
            // Issue 14: years that overflowed the old parsers' arithmetic.
            "9223372036854775807-01-01T00:00:00Z",
            "-9223372036854775808-01-01T00:00:00Z",
            "99999999999999999999-12-31T23:59:59Z",
            "106751991167301-01-01T00:00:00Z",
            // Found by the datetime fuzz target: in range locally, but year
            // 10000 (or -1) in UTC, which `format` cannot write back.
            "9999-12-31T23:59:60-23:59",
            "9999-12-31T23:59:59-00:01",
            "0000-01-01T00:00:00+00:01",
        ] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
    }

    proptest! {
        #[test]
        fn never_panics_on_any_string(s in "\\PC*") {
            let _ = parse(&s);
        }

        #[test]
        fn never_panics_on_date_shaped_strings(
            s in "[+-]?[0-9]{1,25}-[0-9]{1,4}-[0-9]{1,4}T[0-9]{1,4}:[0-9]{1,4}:[0-9]{1,4}(\\.[0-9]{0,30})?(Z|[+-][0-9]{1,4}:[0-9]{1,4})"
        ) {
            let _ = parse(&s);
        }

        #[test]
        fn format_then_parse_is_identity(secs in MIN_SECS..=MAX_SECS, millis in 0u32..1000) {
            let t = at(secs, millis);
            prop_assert_eq!(parse(&format(t)), Some(t));
        }

        #[test]
        fn an_offset_shifts_by_itself(
            secs in MIN_SECS + 86_400..=MAX_SECS - 86_400,
            oh in 0i64..24,
            om in 0i64..60,
            east in any::<bool>(),
        ) {
            // Local wall-clock time `secs` at offset ±oh:om is UTC secs ∓ offset.
            let utc = format(at(secs, 0));
            let local = format!(
                "{}{}{oh:02}:{om:02}",
                utc.trim_end_matches('Z'),
                if east { '+' } else { '-' }
            );
            let off = oh * 3600 + om * 60;
            let expected = if east { secs - off } else { secs + off };
            prop_assert_eq!(parse(&local), Some(at(expected, 0)));
        }
    }
}
