//! [`UserKeyed`]: the states one user keeps per key (its products of the last 24 hours, its brands
//! of the last 7 days), stored inside the user's entry of the per-user stage.
//!
//! Keeping them under the user instead of in tables keyed by (user, key) means an event costs one
//! random probe (the user) instead of three, and a table of tens of millions of (user, key) entries
//! never has to grow. Most users have a handful of keys, searched linearly in a short list; the few
//! with many (bots, heavy shoppers) get a hash map, so no user costs quadratic time.

use std::hash::Hash;

use rustc_hash::FxHashMap;

/// A list up to this many keys, a hash map beyond.
const LIST_MAX: usize = 16;

#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(bound(
    serialize = "K: serde::Serialize + Eq + Hash, V: serde::Serialize",
    deserialize = "K: serde::de::DeserializeOwned + Eq + Hash, V: serde::de::DeserializeOwned"
))]
pub enum UserKeyed<K, V> {
    List(Vec<(K, V)>),
    Map(FxHashMap<K, V>),
}

impl<K, V> Default for UserKeyed<K, V> {
    fn default() -> Self {
        UserKeyed::List(Vec::new())
    }
}

impl<K: Copy + Eq + Hash, V: Default> UserKeyed<K, V> {
    pub fn is_empty(&self) -> bool {
        match self {
            UserKeyed::List(list) => list.is_empty(),
            UserKeyed::Map(map) => map.is_empty(),
        }
    }

    pub fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        match self {
            UserKeyed::List(list) => list.iter_mut().find(|(k, _)| k == key).map(|(_, v)| v),
            UserKeyed::Map(map) => map.get_mut(key),
        }
    }

    /// The state of `key`, a default one if it has none.
    pub fn get_or_default(&mut self, key: K) -> &mut V {
        if let UserKeyed::List(list) = self {
            if let Some(at) = list.iter().position(|(k, _)| *k == key) {
                return match self {
                    UserKeyed::List(list) => &mut list[at].1,
                    UserKeyed::Map(_) => unreachable!(),
                };
            }
            if list.len() >= LIST_MAX {
                let map: FxHashMap<K, V> = std::mem::take(list).into_iter().collect();
                *self = UserKeyed::Map(map);
            }
        }
        match self {
            UserKeyed::List(list) => {
                // Grown one entry, then doubling: most users have one or two keys, and a list
                // starting at Vec's usual four entries of ~100 bytes was a fifth of peak memory.
                if list.len() == list.capacity() {
                    list.reserve_exact(list.len().max(1));
                }
                list.push((key, V::default()));
                &mut list.last_mut().expect("just pushed").1
            }
            UserKeyed::Map(map) => map.entry(key).or_default(),
        }
    }

    /// Forgets `key`. Memory follows the number of keys down: a list at a quarter of its capacity
    /// shrinks to twice its length (an emptied one frees it), a map down to half a list's worth
    /// of keys becomes a list again. Users with a profile keep their entry for the whole run;
    /// without this, every user would keep the capacity of its busiest day, and memory would grow
    /// all month.
    pub fn remove(&mut self, key: &K) {
        match self {
            UserKeyed::List(list) => {
                if let Some(at) = list.iter().position(|(k, _)| k == key) {
                    list.swap_remove(at);
                    if list.len() <= list.capacity() / 4 {
                        list.shrink_to(list.len() * 2);
                    }
                }
            }
            UserKeyed::Map(map) => {
                map.remove(key);
                if map.len() <= LIST_MAX / 2 {
                    let mut list = Vec::with_capacity(map.len() * 2);
                    list.extend(map.drain());
                    *self = UserKeyed::List(list);
                } else if map.len() <= map.capacity() / 4 {
                    map.shrink_to(map.len() * 2);
                }
            }
        }
    }

    #[cfg(test)]
    fn capacity(&self) -> usize {
        match self {
            UserKeyed::List(list) => list.capacity(),
            UserKeyed::Map(map) => map.capacity(),
        }
    }

    pub fn for_each_mut(&mut self, mut f: impl FnMut(K, &mut V)) {
        match self {
            UserKeyed::List(list) => list.iter_mut().for_each(|(k, v)| f(*k, v)),
            UserKeyed::Map(map) => map.iter_mut().for_each(|(k, v)| f(*k, v)),
        }
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        match self {
            UserKeyed::List(list) => list.len(),
            UserKeyed::Map(map) => map.len(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_values_across_the_switch_to_a_map_and_back() {
        let mut keyed: UserKeyed<u64, u32> = UserKeyed::default();
        for key in 0..40 {
            *keyed.get_or_default(key) += key as u32 + 1;
            assert_eq!(keyed.len(), key as usize + 1);
        }
        assert!(matches!(keyed, UserKeyed::Map(_)));
        for key in 0..40 {
            assert_eq!(keyed.get_mut(&key).copied(), Some(key as u32 + 1));
        }
        *keyed.get_or_default(7) += 100;
        assert_eq!(keyed.get_mut(&7).copied(), Some(108));
        let mut sum = 0;
        keyed.for_each_mut(|_, v| sum += *v);
        assert_eq!(sum, (1..=40).sum::<u32>() + 100);
        for key in 0..40 {
            keyed.remove(&key);
        }
        assert!(keyed.is_empty());
        assert!(matches!(keyed, UserKeyed::List(_)));
        assert_eq!(keyed.get_mut(&3), None);
    }

    #[test]
    fn capacity_follows_the_keys_down() {
        let mut keyed: UserKeyed<u64, u32> = UserKeyed::default();
        for key in 0..100 {
            *keyed.get_or_default(key) = 1;
        }
        let busiest = keyed.capacity();
        for key in 0..95 {
            keyed.remove(&key);
        }
        assert!(matches!(keyed, UserKeyed::List(_)), "five keys are a list again");
        assert!(keyed.capacity() <= 2 * LIST_MAX && keyed.capacity() < busiest);
        for key in 95..99 {
            keyed.remove(&key);
        }
        assert_eq!(keyed.len(), 1);
        assert!(keyed.capacity() <= 4, "capacity {} for one key", keyed.capacity());
        assert_eq!(keyed.get_mut(&99).copied(), Some(1));
    }

    #[test]
    fn a_short_list_finds_and_removes_keys() {
        let mut keyed: UserKeyed<u64, u32> = UserKeyed::default();
        *keyed.get_or_default(5) = 1;
        *keyed.get_or_default(9) = 2;
        *keyed.get_or_default(5) += 10;
        assert!(matches!(keyed, UserKeyed::List(_)));
        assert_eq!(keyed.len(), 2);
        keyed.remove(&5);
        keyed.remove(&42);
        assert_eq!(keyed.get_mut(&5), None);
        assert_eq!(keyed.get_mut(&9).copied(), Some(2));
    }
}
