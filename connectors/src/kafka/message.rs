//! Kafka message values (SPEC §1.3): the JSON object `simulate` writes, and the original system's
//! messages, both decoded through the same validation as a CSV row.

use std::borrow::Cow;

use cartflow_dataflows::model::event::format_cents;
use cartflow_dataflows::model::time::{format_rfc3339, parse_event_time};
use cartflow_dataflows::model::{Event, Timestamp};
use chrono::NaiveDateTime;
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::input::RejectReason;
use crate::input::{EventParser, RawFields};

/// Messages larger than this are rejected unread (a click event is ~300 bytes).
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;

/// A decoded message: the event (at its mapped time), its session and, when the message carries
/// it, the source row's time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decoded<'a> {
    pub event: Event,
    pub session: Cow<'a, str>,
    pub original_time: Option<Timestamp>,
}

/// The JSON value of one event: the nine CSV fields with the mapped `event_time`, `category_id` as
/// a string, absent code and brand as null, the price as an exact decimal number, and the source
/// row's `original_time` (SPEC §1.3).
pub fn encode(event: &Event, session: &str, original_time: Timestamp, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(b"{\"event_time\":\"");
    out.extend_from_slice(format_rfc3339(event.time).as_bytes());
    out.extend_from_slice(b"\",\"event_type\":\"");
    out.extend_from_slice(event.event_type.as_str().as_bytes());
    out.extend_from_slice(b"\",\"product_id\":");
    out.extend_from_slice(itoa::Buffer::new().format(event.product_id).as_bytes());
    out.extend_from_slice(b",\"category_id\":\"");
    out.extend_from_slice(itoa::Buffer::new().format(event.category_id).as_bytes());
    out.extend_from_slice(b"\",\"category_code\":");
    push_optional_string(out, event.category_code.map(|s| s.as_str()));
    out.extend_from_slice(b",\"brand\":");
    push_optional_string(out, event.brand.map(|s| s.as_str()));
    out.extend_from_slice(b",\"price\":");
    out.extend_from_slice(format_cents(event.price).as_bytes());
    out.extend_from_slice(b",\"user_id\":");
    out.extend_from_slice(itoa::Buffer::new().format(event.user_id).as_bytes());
    out.extend_from_slice(b",\"user_session\":");
    push_optional_string(out, Some(session));
    out.extend_from_slice(b",\"original_time\":\"");
    out.extend_from_slice(format_rfc3339(original_time).as_bytes());
    out.extend_from_slice(b"\"}");
}

fn push_optional_string(out: &mut Vec<u8>, text: Option<&str>) {
    match text {
        // serde_json escapes quotes, backslashes and control characters.
        Some(text) => serde_json::to_writer(&mut *out, text).expect("writing to a Vec cannot fail"),
        None => out.extend_from_slice(b"null"),
    }
}

/// Both message formats: ours (`event_time` mapped, `original_time`) and the original system's
/// (`event_time` the source time, `mapped_time` the event time, `processing_time`; naive ISO times
/// meaning UTC). Unknown fields are ignored.
#[derive(Deserialize)]
struct Wire<'a> {
    #[serde(borrow)]
    event_time: Option<&'a RawValue>,
    #[serde(borrow)]
    mapped_time: Option<&'a RawValue>,
    #[serde(borrow)]
    original_time: Option<&'a RawValue>,
    #[serde(borrow)]
    event_type: Option<&'a RawValue>,
    #[serde(borrow)]
    product_id: Option<&'a RawValue>,
    #[serde(borrow)]
    category_id: Option<&'a RawValue>,
    #[serde(borrow)]
    category_code: Option<&'a RawValue>,
    #[serde(borrow)]
    brand: Option<&'a RawValue>,
    #[serde(borrow)]
    price: Option<&'a RawValue>,
    #[serde(borrow)]
    user_id: Option<&'a RawValue>,
    #[serde(borrow)]
    user_session: Option<&'a RawValue>,
}

/// A field's text as the CSV reader would see it: a string's content, a number's digits as
/// written (so prices and ids stay exact), and nothing for null or a missing field.
fn field(raw: Option<&RawValue>) -> Result<Cow<'_, str>, RejectReason> {
    let Some(raw) = raw else { return Ok(Cow::Borrowed("")) };
    let text = raw.get();
    match text.as_bytes().first() {
        Some(b'"') => serde_json::from_str::<Cow<str>>(text).map_err(|_| RejectReason::Json),
        Some(b'n') if text == "null" => Ok(Cow::Borrowed("")),
        Some(b'{' | b'[') => Err(RejectReason::Json),
        _ => Ok(Cow::Borrowed(text)),
    }
}

/// An event time in either format: RFC 3339 or the REES46 form, or a naive ISO time meaning UTC
/// (fractional seconds are truncated).
fn message_time(text: &str) -> Option<Timestamp> {
    if let Some(t) = parse_event_time(text.as_bytes()) {
        return Some(t);
    }
    ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"]
        .iter()
        .find_map(|format| NaiveDateTime::parse_from_str(text, format).ok())
        .map(|naive| naive.and_utc().timestamp())
}

/// Decodes one message value. Every failure has a reject reason; nothing panics.
pub fn decode<'a>(value: &'a [u8], parser: &mut EventParser) -> Result<Decoded<'a>, RejectReason> {
    if value.len() > MAX_MESSAGE_BYTES {
        return Err(RejectReason::Oversized);
    }
    let wire: Wire<'a> = serde_json::from_slice(value).map_err(|_| RejectReason::Json)?;
    // The original system's messages carry the event time in `mapped_time` and the source time in
    // `event_time`.
    let (time, original) = match wire.mapped_time {
        Some(mapped) => (field(Some(mapped))?, field(wire.event_time)?),
        None => (field(wire.event_time)?, field(wire.original_time)?),
    };
    let time = message_time(&time).ok_or(RejectReason::EventTime)?;
    let original_time = if original.is_empty() { None } else { message_time(&original) };
    let event_type = field(wire.event_type)?;
    let product_id = field(wire.product_id)?;
    let category_id = field(wire.category_id)?;
    let category_code = field(wire.category_code)?;
    let brand = field(wire.brand)?;
    let price = field(wire.price)?;
    let user_id = field(wire.user_id)?;
    let session = field(wire.user_session)?;
    // The time is already parsed (in either format); the parser checks the other fields and gets
    // a placeholder time in the form it reads fastest.
    let mut event = parser.parse(&RawFields {
        fields: [
            b"1970-01-01 00:00:00 UTC",
            event_type.as_bytes(),
            product_id.as_bytes(),
            category_id.as_bytes(),
            category_code.as_bytes(),
            brand.as_bytes(),
            price.as_bytes(),
            user_id.as_bytes(),
            session.as_bytes(),
        ],
    })?;
    event.time = time;
    Ok(Decoded { event, session, original_time })
}

#[cfg(test)]
mod tests {
    use super::*;
    use cartflow_dataflows::model::{EventType, Symbol};

    fn event() -> Event {
        Event {
            time: parse_event_time(b"2019-12-01 00:00:02 UTC").unwrap(),
            event_type: EventType::Purchase,
            product_id: 1_005_115,
            category_id: 2_053_013_555_631_882_655,
            category_code: Some(Symbol::intern("electronics.smartphone")),
            brand: None,
            price: 3_320,
            user_id: 519_107_250,
        }
    }

    #[test]
    fn our_messages_round_trip_exactly() {
        let mut out = Vec::new();
        let original = parse_event_time(b"2019-10-01 00:00:02 UTC").unwrap();
        encode(&event(), "a\"b", original, &mut out);
        let text = String::from_utf8(out.clone()).unwrap();
        assert!(text.contains("\"category_id\":\"2053013555631882655\""), "{text}");
        assert!(text.contains("\"brand\":null") && text.contains("\"price\":33.20"), "{text}");
        let decoded = decode(&out, &mut EventParser::default()).unwrap();
        assert_eq!(decoded.event, event());
        assert_eq!(decoded.session, "a\"b");
        assert_eq!(decoded.original_time, Some(original));
    }

    #[test]
    fn the_original_systems_messages_use_mapped_time() {
        let value = br#"{"event_time": "2019-10-01T00:00:02", "mapped_time": "2019-12-01T00:00:02.123456",
            "processing_time": "2026-01-01T10:00:00", "event_type": "purchase", "product_id": 1005115,
            "category_id": 2053013555631882655, "category_code": "electronics.smartphone", "brand": "",
            "price": 33.2, "user_id": 519107250, "user_session": "x"}"#;
        let decoded = decode(value, &mut EventParser::default()).unwrap();
        assert_eq!(decoded.event, event());
        assert_eq!(decoded.original_time, parse_event_time(b"2019-10-01 00:00:02 UTC"));
    }

    #[test]
    fn bad_messages_are_rejected_with_a_reason() {
        let mut parser = EventParser::default();
        let ok = r#"{"event_time":"2019-12-01T00:00:02Z","event_type":"view","product_id":1,"category_id":"2","price":1.5,"user_id":3}"#;
        assert!(decode(ok.as_bytes(), &mut parser).is_ok());
        let cases: [(&str, RejectReason); 8] = [
            ("not json", RejectReason::Json),
            ("[1,2]", RejectReason::Json),
            (&ok.replace("1.5", "1.555"), RejectReason::Price),
            (&ok.replace("1.5", "-2"), RejectReason::NegativePrice),
            (&ok.replace("\"view\"", "\"click\""), RejectReason::EventType),
            (&ok.replace("\"2019-12-01T00:00:02Z\"", "\"yesterday\""), RejectReason::EventTime),
            (&ok.replace("\"user_id\":3", "\"user_id\":-3"), RejectReason::UserId),
            (&ok.replace("\"product_id\":1,", ""), RejectReason::MissingProductId),
        ];
        for (value, reason) in cases {
            assert_eq!(decode(value.as_bytes(), &mut parser).map(|d| d.event), Err(reason), "{value}");
        }
        let huge = vec![b' '; MAX_MESSAGE_BYTES + 1];
        assert_eq!(decode(&huge, &mut parser).map(|d| d.event), Err(RejectReason::Oversized));
    }
}
