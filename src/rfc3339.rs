//! RFC 3339 timestamps with microseconds (`2026-11-30T02:59:59.123456Z`), as every audit record
//! carries two or three of them.
//!
//! Written straight into a 27-byte buffer: formatting through `Display` and a `String` writer
//! cost several times the work. Output is `humantime::format_rfc3339_micros`'s for 1970 to
//! 9999; a clock outside that range (humantime's formatter fails there, and `to_string` would
//! panic) is clamped to its ends instead: a timestamp is never a reason to fail a decision.

use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds from 1970 to 10000-01-01T00:00:00Z: four-digit years end there.
const YEAR_10000: u64 = 253_402_300_800;

/// `humantime::format_rfc3339_micros(t).to_string()`, faster, and total.
pub fn micros(t: SystemTime) -> String {
    let Ok(since) = t.duration_since(UNIX_EPOCH) else {
        return "1970-01-01T00:00:00.000000Z".to_owned();
    };
    let secs = since.as_secs();
    if secs >= YEAR_10000 {
        return "9999-12-31T23:59:59.999999Z".to_owned();
    }
    let (year, month, day) = civil_from_days(secs / 86_400);
    let in_day = secs % 86_400;
    let mut out = [0u8; 27];
    put(&mut out[0..4], year);
    out[4] = b'-';
    put(&mut out[5..7], month);
    out[7] = b'-';
    put(&mut out[8..10], day);
    out[10] = b'T';
    put(&mut out[11..13], in_day / 3600);
    out[13] = b':';
    put(&mut out[14..16], in_day / 60 % 60);
    out[16] = b':';
    put(&mut out[17..19], in_day % 60);
    out[19] = b'.';
    put(&mut out[20..26], u64::from(since.subsec_micros()));
    out[26] = b'Z';
    // Only ASCII digits and separators were written.
    String::from_utf8_lossy(&out).into_owned()
}

/// Writes `n` as decimal digits filling `to`, zero-padded (`n` has at most `to.len()` digits).
fn put(to: &mut [u8], mut n: u64) {
    for digit in to.iter_mut().rev() {
        *digit = b'0' + (n % 10) as u8;
        n /= 10;
    }
}

/// (year, month, day) of the proleptic Gregorian calendar, `days` after 1970-01-01 (Howard
/// Hinnant's `civil_from_days`, for days on or after the epoch).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn humantime_micros(t: SystemTime) -> String {
        humantime::format_rfc3339_micros(t).to_string()
    }

    #[test]
    fn matches_humantime_on_edges_and_leap_days() {
        let edges: [u64; 12] = [
            0,
            59,
            86_399,
            86_400,
            951_782_400,   // 2000-02-29
            951_868_799,   // 2000-02-29T23:59:59
            4_107_542_400, // 2100-03-01 (2100 is no leap year)
            1_709_164_800, // 2024-02-29
            1_795_996_799, // 2026-11-30T... (today-ish)
            253_402_300_799,
            u64::from(u32::MAX),
            1,
        ];
        for secs in edges {
            for fraction in [0u64, 1, 999_999, 123_456] {
                let t = UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_micros(fraction);
                assert_eq!(micros(t), humantime_micros(t), "{secs}.{fraction}");
            }
        }
        // Beyond humantime's range: clamped, never a panic.
        let before = UNIX_EPOCH - Duration::from_secs(1);
        assert_eq!(micros(before), "1970-01-01T00:00:00.000000Z");
        let after = UNIX_EPOCH + Duration::from_secs(YEAR_10000);
        assert_eq!(micros(after), "9999-12-31T23:59:59.999999Z");
    }

    #[test]
    fn matches_humantime_every_day_to_2100_and_sparsely_to_9999() {
        // Every date through 2100 (leap years and the 2100 century rule), each at another
        // time of day; then a prime step through the remaining centuries.
        for day in 0..47_500u64 {
            let secs = day * 86_400 + day * 7_919 % 86_400;
            let t = UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_micros(day % 1_000_000);
            assert_eq!(micros(t), humantime_micros(t), "{secs}");
        }
        let mut secs = 0u64;
        while secs < YEAR_10000 {
            let t = UNIX_EPOCH + Duration::from_secs(secs);
            assert_eq!(micros(t), humantime_micros(t), "{secs}");
            secs += 999_983;
        }
    }
}
