//! Interned strings for the low-cardinality text columns (`brand`, `category_code`, `region`).
//!
//! A [`Symbol`] is a thin pointer to a process-wide, append-only table entry, so it is `Copy`,
//! eight bytes wide, and compares for equality by address. Ordering compares the text (SPEC §6.8:
//! strings compare by UTF-8 bytes), so sorted output never depends on interning order. Hashing uses
//! a hash of the text computed once at interning time with a fixed-seed hasher, so the same string
//! hashes the same in every worker and every process (exchange routing must agree across processes).
//!
//! Entries are never freed: the table grows with the number of *distinct* strings (a few thousand
//! brands and category codes in real data), not with the number of events. Do not intern
//! high-cardinality values such as `user_session`.

use std::cmp::Ordering;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::{OnceLock, RwLock};

use rustc_hash::{FxHashMap, FxHasher};

struct Entry {
    hash: u64,
    text: Box<str>,
}

#[derive(Clone, Copy)]
pub struct Symbol(&'static Entry);

fn table() -> &'static RwLock<FxHashMap<&'static str, Symbol>> {
    static TABLE: OnceLock<RwLock<FxHashMap<&'static str, Symbol>>> = OnceLock::new();
    TABLE.get_or_init(Default::default)
}

fn stable_hash(text: &str) -> u64 {
    let mut hasher = FxHasher::default();
    text.as_bytes().hash(&mut hasher);
    hasher.finish()
}

impl Symbol {
    /// Returns the one symbol for `text`, creating it on first use.
    pub fn intern(text: &str) -> Symbol {
        if let Some(symbol) = table().read().expect("symbol table poisoned").get(text) {
            return *symbol;
        }
        let mut map = table().write().expect("symbol table poisoned");
        if let Some(symbol) = map.get(text) {
            return *symbol;
        }
        let entry: &'static Entry = Box::leak(Box::new(Entry { hash: stable_hash(text), text: text.into() }));
        let symbol = Symbol(entry);
        map.insert(&entry.text, symbol);
        symbol
    }

    pub fn as_str(self) -> &'static str {
        &self.0.text
    }

    /// A number that tells symbols apart (equal for equal symbols) without reading their text:
    /// for grouping, not for an order that means anything.
    pub fn identity(self) -> usize {
        std::ptr::from_ref(self.0) as usize
    }
}

impl PartialEq for Symbol {
    fn eq(&self, other: &Self) -> bool {
        std::ptr::eq(self.0, other.0)
    }
}
impl Eq for Symbol {}

impl Hash for Symbol {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.0.hash);
    }
}

impl Ord for Symbol {
    fn cmp(&self, other: &Self) -> Ordering {
        if self == other {
            Ordering::Equal
        } else {
            self.as_str().as_bytes().cmp(other.as_str().as_bytes())
        }
    }
}
impl PartialOrd for Symbol {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Debug for Symbol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}
impl fmt::Display for Symbol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl serde::Serialize for Symbol {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}
impl<'de> serde::Deserialize<'de> for Symbol {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        Ok(Symbol::intern(&text))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_text_same_symbol_and_text_order() {
        let a = Symbol::intern("samsung");
        let b = Symbol::intern(&String::from("samsung"));
        assert_eq!(a, b);
        assert!(std::ptr::eq(a.as_str(), b.as_str()));
        // Interned later but sorts first: order is by bytes, not by interning order.
        let z = Symbol::intern("zzz-brand");
        let first = Symbol::intern("aaa-brand");
        assert!(first < z);
        assert!(Symbol::intern("Apple") < Symbol::intern("apple"), "bytes, not case-folded");
        assert_eq!(stable_hash("samsung"), a.0.hash);
    }
}
