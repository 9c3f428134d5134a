//! The small pieces the analyses are built from: sums carried as values ([`Sums`], [`sum_by_key`]),
//! hash buckets (`bucket_of`) and hierarchical top-k ([`top_k`]), over the operators of
//! [`super::current_state`].

use std::hash::{Hash, Hasher};

use differential_dataflow::difference::{IsZero, Multiply, Semigroup};
use differential_dataflow::{AsCollection, ExchangeData};
use rustc_hash::{FxHashMap, FxHasher};
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::Operator;

use super::current_state::{accumulate_by_key, least_k};
use super::types::{Coll, Diff, Time};

/// `N` integer sums carried as a record's value: [`sum_by_key`] adds them up per key (times each
/// record's multiplicity) with no per-group re-evaluation, and retractions subtract (the window
/// slides for free).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Sums<const N: usize>(pub [i64; N]);

impl<const N: usize> Sums<N> {
    /// One in slot `i`, zero elsewhere.
    pub fn unit(i: usize) -> Self {
        let mut sums = [0; N];
        sums[i] = 1;
        Sums(sums)
    }
}

impl<const N: usize> IsZero for Sums<N> {
    fn is_zero(&self) -> bool {
        self.0.iter().all(|x| *x == 0)
    }
}
impl<const N: usize> Semigroup for Sums<N> {
    fn plus_equals(&mut self, rhs: &Self) {
        for (a, b) in self.0.iter_mut().zip(rhs.0) {
            *a += b;
        }
    }
}
impl<const N: usize> Multiply<Diff> for Sums<N> {
    type Output = Self;
    fn multiply(mut self, rhs: &Diff) -> Self {
        for a in &mut self.0 {
            *a *= rhs;
        }
        self
    }
}
impl<const N: usize> serde::Serialize for Sums<N> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.as_slice().serialize(serializer)
    }
}
impl<'de, const N: usize> serde::Deserialize<'de> for Sums<N> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let values = Vec::<i64>::deserialize(deserializer)?;
        let len = values.len();
        values.try_into().map(Sums).map_err(|_| serde::de::Error::invalid_length(len, &"the sums' width"))
    }
}

/// Sums per key: `(key, sums)` whenever the sums change (see [`accumulate_by_key`]).
pub fn sum_by_key<'s, K, const N: usize>(updates: Coll<'s, (K, Sums<N>)>) -> Coll<'s, (K, Sums<N>)>
where
    K: ExchangeData + Ord + Hash,
{
    accumulate_by_key(updates, "SumByKey")
}

/// The sums `contributions` makes of each record, added up per key and time within each
/// activation's input (per stamp), before they are exchanged and wait for their time: a record per key and batch
/// instead of several per input record (a day's sales per segment otherwise held three records an
/// event until their step closed).
pub fn sum_within_batches<'s, D, K, I, const N: usize>(
    records: Coll<'s, D>,
    contributions: impl Fn(D) -> I + 'static,
) -> Coll<'s, (K, Sums<N>)>
where
    D: differential_dataflow::Data,
    K: ExchangeData + Hash,
    I: IntoIterator<Item = (K, Sums<N>)>,
{
    records
        .inner
        .unary(Pipeline, "SumWithinBatches", |_, _| {
            let mut sums: FxHashMap<(K, Time), Sums<N>> = FxHashMap::default();
            move |input, output| {
                input.for_each_stamp(|capability, containers| {
                    for container in containers {
                        for (record, time, diff) in container.drain(..) {
                            for (key, value) in contributions(record) {
                                let sum = sums.entry((key, time)).or_insert(Sums([0; N]));
                                sum.plus_equals(&value.multiply(&diff));
                            }
                        }
                    }
                    // Each record keeps its own time (at or after the capability's).
                    let mut summed: Vec<_> = sums
                        .drain()
                        .filter(|(_, s)| !s.is_zero())
                        .map(|((key, time), s)| ((key, s), time, 1))
                        .collect();
                    if !summed.is_empty() {
                        output.session(&capability).give_container(&mut summed);
                    }
                });
            }
        })
        .as_collection()
}

/// The hash bucket of `item` among `buckets`.
pub(super) fn bucket_of(item: &impl Hash, buckets: u64) -> u64 {
    let mut hasher = FxHasher::default();
    item.hash(&mut hasher);
    hasher.finish() % buckets
}

/// Hierarchical top-k: the `k` least values per group, with their rank (1-based). Values must
/// order best-first (for example `(Reverse(score), id)`). Each group is first cut to its top `k`
/// per hash bucket of the value's identity, then the bucket winners are ranked: a change touches one
/// bucket and at most `k × buckets` winners, and the buckets of one large group (the `(*, *)`
/// segment) spread over the workers instead of loading one.
pub fn top_k<'s, G, V, I>(
    values: Coll<'s, (G, V)>,
    k: usize,
    buckets: u64,
    identity: impl Fn(&V) -> I + 'static,
) -> Coll<'s, (G, (u32, V))>
where
    G: ExchangeData + Ord + Hash,
    V: ExchangeData + Ord,
    I: Hash,
{
    let winners = if buckets > 1 {
        let bucketed = values.map(move |(group, value)| ((group, bucket_of(&identity(&value), buckets)), value));
        least_k(bucketed, k, false, "TopK: bucket").map(|((group, _bucket), (_, value))| (group, value))
    } else {
        values
    };
    least_k(winners, k, true, "TopK: rank")
}
