//! Click-stream events (SPEC §1.1) in the compact form every analysis works on.

use serde::{Deserialize, Serialize};

use super::symbol::Symbol;
use super::time::Timestamp;

/// Money as integer cents (SPEC §1.1: `33.2` and `33.20` are equal).
pub type Cents = i64;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[repr(u8)]
pub enum EventType {
    View,
    Cart,
    RemoveFromCart,
    Purchase,
}

impl EventType {
    pub const ALL: [EventType; 4] = [EventType::View, EventType::Cart, EventType::RemoveFromCart, EventType::Purchase];

    /// The name used in the CSV and in Kafka messages; case-sensitive (SPEC §6.4).
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::View => "view",
            EventType::Cart => "cart",
            EventType::RemoveFromCart => "remove_from_cart",
            EventType::Purchase => "purchase",
        }
    }

    pub fn parse(text: &[u8]) -> Option<EventType> {
        match text {
            b"view" => Some(EventType::View),
            b"cart" => Some(EventType::Cart),
            b"remove_from_cart" => Some(EventType::RemoveFromCart),
            b"purchase" => Some(EventType::Purchase),
            _ => None,
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// One valid event. `user_session` is not part of it: no analysis reads it, and it is the one
/// high-cardinality string of the input; connectors that forward events carry it alongside.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Event {
    pub time: Timestamp,
    pub event_type: EventType,
    pub product_id: u64,
    pub category_id: u64,
    pub category_code: Option<Symbol>,
    pub brand: Option<Symbol>,
    pub price: Cents,
    pub user_id: u64,
}

/// Parses plain decimal digits below 2^64 (SPEC §6.4): no sign, no spaces, not empty.
pub fn parse_id(text: &[u8]) -> Option<u64> {
    if text.is_empty() {
        return None;
    }
    let mut value: u64 = 0;
    for &b in text {
        if !b.is_ascii_digit() {
            return None;
        }
        value = value.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
    }
    Some(value)
}

/// Why a price field is not a valid price.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PriceError {
    /// Not a decimal number with at most two significant decimals that fits DECIMAL(12,2).
    Invalid,
    Negative,
}

/// Largest value of DECIMAL(12,2), in cents.
pub const MAX_PRICE_CENTS: Cents = 999_999_999_999;

/// Parses a price into cents exactly (SPEC §1.1, §6.4): `33.2` = `33.20` = 3320, `12.340` is fine,
/// `12.345` is rejected (never rounded), `-0.00` is 0, other negative values are rejected.
pub fn parse_price(text: &[u8]) -> Result<Cents, PriceError> {
    let (negative, body) = match text.first() {
        Some(b'-') => (true, &text[1..]),
        _ => (false, text),
    };
    let (whole, fraction) = match body.iter().position(|&b| b == b'.') {
        Some(dot) => (&body[..dot], &body[dot + 1..]),
        None => (body, &body[body.len()..]),
    };
    if whole.is_empty() && fraction.is_empty() {
        return Err(PriceError::Invalid);
    }
    if !whole.iter().chain(fraction).all(u8::is_ascii_digit) {
        return Err(PriceError::Invalid);
    }
    let fraction = {
        let significant = fraction.iter().rposition(|&b| b != b'0').map_or(0, |i| i + 1);
        &fraction[..significant]
    };
    if fraction.len() > 2 {
        return Err(PriceError::Invalid);
    }
    let whole = {
        let first = whole.iter().position(|&b| b != b'0').unwrap_or(whole.len());
        &whole[first..]
    };
    if whole.len() > 10 {
        return Err(PriceError::Invalid);
    }
    let mut cents: i64 = 0;
    for &b in whole {
        cents = cents * 10 + i64::from(b - b'0');
    }
    for i in 0..2 {
        cents = cents * 10 + fraction.get(i).map_or(0, |&b| i64::from(b - b'0'));
    }
    if negative && cents != 0 {
        return Err(PriceError::Negative);
    }
    Ok(cents)
}

/// `3320` → `33.20`.
pub fn format_cents(cents: Cents) -> String {
    let sign = if cents < 0 { "-" } else { "" };
    format!("{sign}{}.{:02}", cents.unsigned_abs() / 100, cents.unsigned_abs() % 100)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prices_are_exact() {
        assert_eq!(parse_price(b"33.2"), Ok(3320));
        assert_eq!(parse_price(b"33.20"), Ok(3320));
        assert_eq!(parse_price(b"12.340"), Ok(1234));
        assert_eq!(parse_price(b"0.00"), Ok(0));
        assert_eq!(parse_price(b"-0.00"), Ok(0));
        assert_eq!(parse_price(b"7"), Ok(700));
        assert_eq!(parse_price(b"2574.07"), Ok(257407));
        assert_eq!(parse_price(b"9999999999.99"), Ok(MAX_PRICE_CENTS));
        assert_eq!(parse_price(b"12.345"), Err(PriceError::Invalid));
        assert_eq!(parse_price(b"10000000000.00"), Err(PriceError::Invalid));
        assert_eq!(parse_price(b"-1.00"), Err(PriceError::Negative));
        for bad in [&b""[..], b".", b"1e3", b"+1", b" 1", b"1,5", b"NaN", b"1.2.3"] {
            assert_eq!(parse_price(bad), Err(PriceError::Invalid), "{}", String::from_utf8_lossy(bad));
        }
        assert_eq!(format_cents(5_944_263), "59442.63");
        assert_eq!(format_cents(5), "0.05");
    }

    #[test]
    fn ids_are_plain_digits_below_2_pow_64() {
        assert_eq!(parse_id(b"2053013552326770905"), Some(2053013552326770905));
        assert_eq!(parse_id(b"18446744073709551615"), Some(u64::MAX));
        assert_eq!(parse_id(b"18446744073709551616"), None);
        for bad in [&b""[..], b"-1", b"+1", b"1.0", b" 1", b"1e9"] {
            assert_eq!(parse_id(bad), None);
        }
    }
}
