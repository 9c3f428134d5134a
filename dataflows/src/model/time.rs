//! The one clock: event time, as whole seconds since the Unix epoch (UTC). SPEC §2.

use chrono::{DateTime, Datelike, NaiveDate, NaiveDateTime, Timelike};

/// Seconds since 1970-01-01T00:00:00Z.
pub type Timestamp = i64;

pub const MINUTE: i64 = 60;
pub const HOUR: i64 = 60 * MINUTE;
pub const DAY: i64 = 24 * HOUR;

/// Rounds down to a multiple of `unit` (also for times before the epoch).
pub fn floor_to(t: Timestamp, unit: i64) -> Timestamp {
    t.div_euclid(unit) * unit
}

/// SPEC §6.1: the end frontier of a bounded input is the first whole minute after its last event.
pub fn end_frontier_after(last_event: Timestamp) -> Timestamp {
    floor_to(last_event, MINUTE) + MINUTE
}

pub fn utc_date(t: Timestamp) -> NaiveDate {
    DateTime::from_timestamp(t.div_euclid(DAY) * DAY, 0).expect("timestamp in chrono's range").date_naive()
}

pub fn midnight_of(date: NaiveDate) -> Timestamp {
    date.and_hms_opt(0, 0, 0).expect("valid midnight").and_utc().timestamp()
}

/// `2019-10-01T00:00:00Z`: the store's text form of an instant (SPEC §4).
/// Written digit by digit for years 0–9999 (chrono's `format` parses its pattern at every call, a
/// visible share of writing millions of rows); other years go through chrono.
pub fn format_rfc3339(t: Timestamp) -> String {
    let Some(dt) = DateTime::from_timestamp(t, 0) else { return format!("@{t}") };
    let (date, time) = (dt.date_naive(), dt.time());
    if !(0..=9999).contains(&date.year()) {
        return dt.format("%Y-%m-%dT%H:%M:%SZ").to_string();
    }
    let mut text = [0u8; 20];
    let mut put = |at: usize, value: u32, width: usize| {
        let mut value = value;
        for i in (0..width).rev() {
            text[at + i] = b'0' + (value % 10) as u8;
            value /= 10;
        }
    };
    put(0, date.year() as u32, 4);
    put(5, date.month(), 2);
    put(8, date.day(), 2);
    put(11, time.hour(), 2);
    put(14, time.minute(), 2);
    put(17, time.second(), 2);
    for (at, separator) in [(4, b'-'), (7, b'-'), (10, b'T'), (13, b':'), (16, b':'), (19, b'Z')] {
        text[at] = separator;
    }
    String::from_utf8(text.to_vec()).expect("ASCII")
}

/// `YYYY-MM-DD`: the name of a daily snapshot.
pub fn format_date(date: NaiveDate) -> String {
    date.format("%Y-%m-%d").to_string()
}

fn digits(bytes: &[u8]) -> Option<u32> {
    let mut value = 0u32;
    for &b in bytes {
        if !b.is_ascii_digit() {
            return None;
        }
        value = value * 10 + u32::from(b - b'0');
    }
    Some(value)
}

/// Parses an event time: the REES46 form `2019-12-01 00:00:02 UTC` (fast path, no allocation) or
/// RFC 3339 such as `2026-01-05T13:45:12Z` or with an offset; fractional seconds are truncated to
/// the second. Returns `None` for anything else.
pub fn parse_event_time(text: &[u8]) -> Option<Timestamp> {
    if text.len() == 23 && &text[19..] == b" UTC" {
        let b = text;
        if b[4] != b'-' || b[7] != b'-' || b[10] != b' ' || b[13] != b':' || b[16] != b':' {
            return None;
        }
        let date = NaiveDate::from_ymd_opt(digits(&b[0..4])? as i32, digits(&b[5..7])?, digits(&b[8..10])?)?;
        let time = date.and_hms_opt(digits(&b[11..13])?, digits(&b[14..16])?, digits(&b[17..19])?)?;
        return Some(time.and_utc().timestamp());
    }
    // Fast path for the RFC 3339 form cartflow writes itself (Kafka messages): `2019-12-01T00:00:02Z`.
    // Anything unusual (a leap second, say) falls through to chrono.
    if text.len() == 20 && text[10] == b'T' && text[19] == b'Z' {
        let b = text;
        let fast = (|| {
            if b[4] != b'-' || b[7] != b'-' || b[13] != b':' || b[16] != b':' {
                return None;
            }
            let date = NaiveDate::from_ymd_opt(digits(&b[0..4])? as i32, digits(&b[5..7])?, digits(&b[8..10])?)?;
            let time = date.and_hms_opt(digits(&b[11..13])?, digits(&b[14..16])?, digits(&b[17..19])?)?;
            Some(time.and_utc().timestamp())
        })();
        if fast.is_some() {
            return fast;
        }
    }
    let text = std::str::from_utf8(text).ok()?;
    DateTime::parse_from_rfc3339(text).ok().map(|dt| dt.timestamp())
}

/// Parses an instant given on the command line: RFC 3339, the REES46 form, a naive
/// `YYYY-MM-DD[T| ]HH:MM[:SS]` meaning UTC, or a date `YYYY-MM-DD` meaning its midnight UTC.
pub fn parse_instant_arg(text: &str) -> Result<Timestamp, String> {
    if let Some(t) = parse_event_time(text.as_bytes()) {
        return Ok(t);
    }
    for format in ["%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M", "%Y-%m-%d %H:%M"] {
        if let Ok(naive) = NaiveDateTime::parse_from_str(text, format) {
            return Ok(naive.and_utc().timestamp());
        }
    }
    if let Ok(date) = NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        return Ok(midnight_of(date));
    }
    Err(format!("'{text}' is not a time: use RFC 3339 (2019-10-01T02:00:00Z), '2019-10-01 02:00:00' (UTC) or a date"))
}

/// Parses a duration such as `90s`, `5m`, `2h`, `7d` or a plain number of seconds.
pub fn parse_duration_arg(text: &str) -> Result<i64, String> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(split) => text.split_at(split),
        None => (text, "s"),
    };
    let value: i64 = number.parse().map_err(|_| format!("'{text}' is not a duration such as 90s, 5m, 2h or 7d"))?;
    let scale = match unit {
        "s" => 1,
        "m" | "min" => MINUTE,
        "h" => HOUR,
        "d" => DAY,
        _ => return Err(format!("'{text}': unknown unit '{unit}' (use s, m, h or d)")),
    };
    value.checked_mul(scale).ok_or_else(|| format!("'{text}' is too long"))
}

pub fn is_leap_year(year: i32) -> bool {
    NaiveDate::from_ymd_opt(year, 2, 29).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fast_rfc3339_path_agrees_with_chrono() {
        for text in [
            "2019-12-01T00:00:02Z",
            "1970-01-01T00:00:00Z",
            "2024-02-29T23:59:59Z",
            "2023-02-29T00:00:00Z",
            "2019-12-01T24:00:00Z",
            "2016-12-31T23:59:60Z",
            "2019-12-01T00:00:0xZ",
            "2019/12/01T00:00:02Z",
        ] {
            let chrono = DateTime::parse_from_rfc3339(text).ok().map(|dt| dt.timestamp());
            assert_eq!(parse_event_time(text.as_bytes()), chrono, "{text}");
        }
    }

    #[test]
    fn rfc3339_text_matches_chrono_for_every_kind_of_instant() {
        let chrono_text = |t: i64| DateTime::from_timestamp(t, 0).unwrap().format("%Y-%m-%dT%H:%M:%SZ").to_string();
        let mut t = -62_167_219_200; // 0000-01-01T00:00:00Z
        while t < 253_402_300_800 {
            // up to 9999-12-31
            assert_eq!(format_rfc3339(t), chrono_text(t), "{t}");
            t += 86_399 * 37 + 3_601;
        }
        for t in [0, 1_575_158_399, 1_575_158_400, 253_402_300_799, 253_402_300_800, -62_167_219_201] {
            assert_eq!(format_rfc3339(t), chrono_text(t), "{t}");
        }
    }

    #[test]
    fn parses_both_forms_and_rejects_garbage() {
        let a = parse_event_time(b"2019-12-01 00:00:02 UTC").unwrap();
        assert_eq!(format_rfc3339(a), "2019-12-01T00:00:02Z");
        assert_eq!(parse_event_time(b"2019-12-01T00:00:02Z"), Some(a));
        assert_eq!(parse_event_time(b"2019-12-01T01:00:02+01:00"), Some(a));
        assert_eq!(parse_event_time(b"2019-12-01T00:00:02.900Z"), Some(a));
        for bad in [
            &b"2019-13-01 00:00:02 UTC"[..],
            b"2019-02-30 00:00:00 UTC",
            b"2019-12-01 24:00:00 UTC",
            b"",
            b"yesterday",
            b"2019-12-01 00:00:02",
        ] {
            assert_eq!(parse_event_time(bad), None, "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn frontier_and_floors() {
        let t = parse_event_time(b"2019-10-01 02:50:00 UTC").unwrap();
        assert_eq!(format_rfc3339(end_frontier_after(t)), "2019-10-01T02:51:00Z");
        assert_eq!(floor_to(-1, MINUTE), -60);
        assert_eq!(parse_instant_arg("2019-10-02").unwrap(), parse_event_time(b"2019-10-02T00:00:00Z").unwrap());
        assert_eq!(parse_duration_arg("7d").unwrap(), 7 * DAY);
        assert!(parse_duration_arg("7w").is_err());
    }
}
