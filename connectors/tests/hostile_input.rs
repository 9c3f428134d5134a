//! Hostile input: property tests of the CSV, profile and Kafka-message parsers. Whatever the bytes,
//! no panic; every data row is either an event or a reject with a reason, and the counts add up.

use std::io::Write;

use cartflow_connectors::input::read_profiles;
use cartflow_connectors::input::RejectLog;
use cartflow_connectors::input::{read_events, EventParser, RawFields};
use cartflow_connectors::kafka::message::{decode, encode};
use proptest::prelude::*;

const HEADER: &str = "event_time,event_type,product_id,category_id,category_code,brand,price,user_id,user_session";
const VALID: &str = "2019-12-01 00:00:05 UTC,cart,1003461,2053013555631882655,electronics.smartphone,xiaomi,489.07,520088904,4d3b30da-a5e4-49df-b1a8-ba5943f1dd33";

/// Bytes that break CSV and parsers in interesting ways, mixed with ordinary ones.
fn nasty_byte() -> impl Strategy<Value = u8> {
    prop_oneof![
        Just(b','),
        Just(b'"'),
        Just(b'\n'),
        Just(b'\r'),
        Just(b'-'),
        Just(b'.'),
        Just(0u8),
        Just(0xFFu8),
        Just(0xC3u8),
        any::<u8>(),
        (b'0'..=b'9'),
    ]
}

/// A line: valid, a valid line with bytes replaced, inserted or cut, or noise.
fn line() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(VALID.as_bytes().to_vec()),
        (proptest::collection::vec((0..VALID.len(), nasty_byte()), 1..6)).prop_map(|edits| {
            let mut line = VALID.as_bytes().to_vec();
            let last = line.len() - 1;
            for (at, byte) in edits {
                line[at.min(last)] = byte;
            }
            line
        }),
        (0..VALID.len(), nasty_byte()).prop_map(|(at, byte)| {
            let mut line = VALID.as_bytes().to_vec();
            line.insert(at, byte);
            line
        }),
        (0..VALID.len()).prop_map(|cut| VALID.as_bytes()[..cut].to_vec()),
        proptest::collection::vec(nasty_byte(), 0..80),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn csv_rows_are_events_or_counted_rejects(lines in proptest::collection::vec(line(), 0..40)) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.csv");
        let mut file = std::fs::File::create(&path).unwrap();
        writeln!(file, "{HEADER}").unwrap();
        for line in &lines {
            file.write_all(line).unwrap();
            file.write_all(b"\n").unwrap();
        }
        drop(file);
        let mut rejects = RejectLog::new(Some(dir.path().join("rejects.csv")));
        let mut events = 0u64;
        let stats = read_events(&[path], &mut rejects, false, |_, _| { events += 1; Ok(()) }).unwrap();
        prop_assert_eq!(stats.valid, events);
        prop_assert_eq!(stats.rows, stats.valid + stats.rejected);
        prop_assert_eq!(rejects.total(), stats.rejected);
        // Each reject is in the rejects file with its reason.
        rejects.flush().unwrap();
        if stats.rejected > 0 {
            let mut written = csv::Reader::from_path(dir.path().join("rejects.csv")).unwrap();
            let reasons: Vec<String> = written.records().map(|r| r.unwrap()[2].to_string()).collect();
            prop_assert_eq!(reasons.len() as u64, stats.rejected);
            prop_assert!(reasons.iter().all(|r| !r.is_empty()));
        }
        // Every non-blank physical line is one row: a stray quote costs only its own line, and
        // untouched valid lines are never rejected.
        let mut content = Vec::new();
        for line in &lines {
            content.extend_from_slice(line);
            content.push(b'\n');
        }
        let physical = content
            .split(|b| *b == b'\n')
            .filter(|l| l.iter().any(|b| *b != b'\r'))
            .count() as u64;
        prop_assert_eq!(stats.rows, physical);
        let intact = lines.iter().filter(|l| l.as_slice() == VALID.as_bytes()).count() as u64;
        prop_assert!(stats.valid >= intact);
    }

    #[test]
    fn profile_rows_are_profiles_or_counted_rejects(
        rows in proptest::collection::vec(proptest::collection::vec(nasty_byte(), 0..40), 0..30)
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users.csv");
        let mut file = std::fs::File::create(&path).unwrap();
        writeln!(file, "user_id,birth_date,city,region").unwrap();
        writeln!(file, "520088904,1990-02-29,Warszawa,mazowieckie").unwrap();
        for row in &rows {
            file.write_all(row).unwrap();
            file.write_all(b"\n").unwrap();
        }
        drop(file);
        let mut rejects = RejectLog::new(None);
        let (profiles, stats) = read_profiles(&path, &mut rejects).unwrap();
        prop_assert_eq!(rejects.total(), stats.rejected);
        prop_assert!(stats.users as u64 <= stats.rows - stats.rejected);
        prop_assert!(stats.users >= 1, "the valid first row is kept");
        prop_assert_eq!(profiles.len(), stats.users);
    }

    #[test]
    fn any_message_decodes_or_is_rejected_with_a_reason(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let mut parser = EventParser::default();
        let _ = decode(&bytes, &mut parser);
    }

    #[test]
    fn json_like_messages_decode_or_are_rejected(
        time in prop_oneof![Just("\"2019-12-01T00:00:05Z\"".to_string()), "\"[0-9T:Z.+-]{0,30}\"", Just("null".to_string()), Just("5".to_string())],
        price in prop_oneof![Just("489.07".to_string()), "-?[0-9]{0,14}(\\.[0-9]{0,4})?(e[0-9]{1,3})?", Just("\"1.5\"".to_string()), Just("true".to_string())],
        id in prop_oneof![Just("1003461".to_string()), "[0-9]{0,22}", Just("-1".to_string()), Just("\"42\"".to_string()), Just("1e3".to_string())],
        kind in prop_oneof![Just("\"view\"".to_string()), Just("\"purchase\"".to_string()), "\"[a-zA-Z_]{0,10}\"", Just("[]".to_string())],
        extra in prop_oneof![Just(String::new()), Just(",\"x\":{\"y\":[1,2]}".to_string()), Just(",\"price\":1".to_string())],
    ) {
        let message = format!(
            "{{\"event_time\":{time},\"event_type\":{kind},\"product_id\":{id},\"category_id\":\"2053013555631882655\",\
             \"category_code\":null,\"brand\":\"x\",\"price\":{price},\"user_id\":{id},\"user_session\":\"s\"{extra}}}"
        );
        let mut parser = EventParser::default();
        if let Ok(decoded) = decode(message.as_bytes(), &mut parser) {
            // What decodes survives a round trip through cartflow's own encoding.
            let mut again = Vec::new();
            encode(&decoded.event, &decoded.session, decoded.original_time.unwrap_or(decoded.event.time), &mut again);
            let redecoded = decode(&again, &mut parser).unwrap();
            prop_assert_eq!(redecoded.event, decoded.event);
        }
    }

    #[test]
    fn valid_events_round_trip_through_messages(
        product in 1u64.., category in 1u64.., user in 1u64..,
        cents in 0u64..99_999_999_999, seconds in 0i64..4_000_000_000,
        kind in prop_oneof![Just("view"), Just("cart"), Just("remove_from_cart"), Just("purchase")],
        brand in "[^\\x00-\\x1f\"\\\\,]{0,12}", session in "[a-f0-9-]{0,36}",
    ) {
        let time = chrono::DateTime::from_timestamp(seconds, 0).unwrap().format("%Y-%m-%d %H:%M:%S UTC").to_string();
        let price = format!("{}.{:02}", cents / 100, cents % 100);
        let fields = [
            time.as_bytes(), kind.as_bytes(), product.to_string().into_bytes().leak(), category.to_string().into_bytes().leak(),
            b"".as_slice(), brand.as_bytes(), price.as_bytes(), user.to_string().into_bytes().leak(), session.as_bytes(),
        ];
        let mut parser = EventParser::default();
        let event = parser.parse(&RawFields { fields }).expect("a valid row");
        let mut message = Vec::new();
        encode(&event, &session, event.time, &mut message);
        let decoded = decode(&message, &mut parser).unwrap();
        prop_assert_eq!(decoded.event, event);
        prop_assert_eq!(decoded.session.as_ref(), session.as_str());
    }
}
