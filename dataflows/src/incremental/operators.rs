//! The small pieces the analyses are built from: abelian sums carried in the difference field,
//! insert-then-retract windows with data-dependent expiry, and hierarchical top-k.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};

use differential_dataflow::difference::{IsZero, Multiply, Semigroup};
use differential_dataflow::{AsCollection, ExchangeData};
use rustc_hash::FxHasher;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::{Capability, Operator};

use super::hashed::least_k;
use super::{Coll, Diff, Time};

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

/// Sums per key: `(key, sums)` whenever the sums change (see [`super::hashed::accumulate_by_key`]).
pub fn sum_by_key<'s, K, const N: usize>(updates: Coll<'s, (K, Sums<N>)>) -> Coll<'s, (K, Sums<N>)>
where
    K: ExchangeData + Ord + Hash,
{
    super::hashed::accumulate_by_key(updates, "SumByKey")
}

/// Retractions due at one time, with the capability to send them then.
type Scheduled<D> = (Capability<Time>, Vec<(D, Time, Diff)>);

/// Insert-then-retract: every update is passed on now and its opposite is scheduled at
/// `expiry(data)` (or now, if that is earlier), so the collection holds each record from its
/// insertion until its expiry. The expiry depends on the record's own event time, not on the
/// logical time it was inserted at: replay can insert a whole step at the step's start while every
/// record still leaves its window at the exact minute (see dataflows/README.md).
///
/// Scheduled retractions wait here, by time, under a capability for that time, and are released
/// only once the input frontier reaches it. Sent at once instead, they would sit in the batchers of
/// every downstream arrangement, which re-merge all pending updates at each step: a week of
/// pending retractions re-sorted at every boundary.
pub fn expire<'s, D, F>(collection: Coll<'s, D>, expiry: F) -> Coll<'s, D>
where
    D: differential_dataflow::Data,
    F: Fn(&D) -> Time + 'static,
{
    collection
        .inner
        .unary_frontier(Pipeline, "Expire", move |_, _| {
            let mut scheduled: BTreeMap<Time, Scheduled<D>> = BTreeMap::new();
            move |(input, frontier), output| {
                input.for_each_stamp(|capability, containers| {
                    let Some(&now) = capability.least() else { return };
                    let mut current = Vec::new();
                    for container in containers {
                        for (data, time, diff) in container.drain(..) {
                            let at = expiry(&data).max(time);
                            let slot = scheduled.entry(at).or_insert_with(|| (capability.delayed(&at, 0), Vec::new()));
                            slot.1.push((data.clone(), at, -diff));
                            current.push((data, time, diff));
                        }
                    }
                    let now = capability.delayed(&now, 0);
                    output.session(&now).give_container(&mut current);
                });
                // Release what is due: no input before its time can arrive any more.
                while let Some(entry) = scheduled.first_entry() {
                    if frontier.frontier().iter().any(|t| t < entry.key()) {
                        break;
                    }
                    let (capability, mut updates) = entry.remove();
                    output.session(&capability).give_container(&mut updates);
                }
            }
        })
        .as_collection()
}

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
