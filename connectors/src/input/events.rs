//! Event validation (SPEC §1.1, §6.4): the nine fields of a row, from a CSV line, a Kafka message
//! or the archive, into an [`Event`] or a [`RejectReason`]. Every reader of events uses it.

use cartflow_dataflows::model::event::{parse_id, parse_price, PriceError};
use cartflow_dataflows::model::time::parse_event_time;
use cartflow_dataflows::model::{Event, EventType, Symbol};
use rustc_hash::FxHashMap;

use super::rejects::RejectReason;

/// Validates the fields of one row into an [`Event`]. Keeps a cache of interned brands and
/// category codes so the hot path takes no lock.
#[derive(Default)]
pub struct EventParser {
    symbols: FxHashMap<Box<[u8]>, Symbol>,
}

/// The nine fields of a row in SPEC order, as raw bytes.
pub struct RawFields<'a> {
    pub fields: [&'a [u8]; 9],
}

impl EventParser {
    fn symbol(&mut self, bytes: &[u8]) -> Result<Option<Symbol>, RejectReason> {
        if bytes.is_empty() {
            return Ok(None);
        }
        if let Some(symbol) = self.symbols.get(bytes) {
            return Ok(Some(*symbol));
        }
        let text = std::str::from_utf8(bytes).map_err(|_| RejectReason::Encoding)?;
        let symbol = Symbol::intern(text);
        self.symbols.insert(bytes.into(), symbol);
        Ok(Some(symbol))
    }

    pub fn parse(&mut self, raw: &RawFields<'_>) -> Result<Event, RejectReason> {
        let [time, event_type, product_id, category_id, category_code, brand, price, user_id, session] = raw.fields;
        let time = parse_event_time(time).ok_or(RejectReason::EventTime)?;
        let event_type = EventType::parse(event_type).ok_or(RejectReason::EventType)?;
        let product_id = match product_id {
            [] => return Err(RejectReason::MissingProductId),
            digits => parse_id(digits).ok_or(RejectReason::ProductId)?,
        };
        let category_id = match category_id {
            [] => return Err(RejectReason::MissingCategoryId),
            digits => parse_id(digits).ok_or(RejectReason::CategoryId)?,
        };
        let category_code = self.symbol(category_code)?;
        let brand = self.symbol(brand)?;
        let price = parse_price(price).map_err(|e| match e {
            PriceError::Negative => RejectReason::NegativePrice,
            PriceError::Invalid => RejectReason::Price,
        })?;
        let user_id = match user_id {
            [] => return Err(RejectReason::MissingUserId),
            digits => parse_id(digits).ok_or(RejectReason::UserId)?,
        };
        std::str::from_utf8(session).map_err(|_| RejectReason::Encoding)?;
        Ok(Event { time, event_type, product_id, category_id, category_code, brand, price, user_id })
    }
}
