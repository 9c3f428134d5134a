//! Operators for a totally ordered time that keep only the current state, in hash maps.
//!
//! Differential's `distinct_total`, `count_total` and `reduce` arrange their input: every update
//! is sorted into a batcher, built into a batch and merged into a trace that keeps history, so
//! that any time can be revisited and the arrangement shared. Most of the engine's operators need
//! none of that: the time is totally ordered, each time is complete before the next is looked at,
//! and nothing else reads their input. These operators route each update to the worker owning its
//! key, wait until the input frontier has passed an update's time, then apply all updates of that
//! time at once to a hash map of the current state and emit exactly the changes of the output,
//! at that time. Their output equals the differential operator's; they cost a hash probe per
//! update instead of a sort and a merge (see dataflows/README.md for the measured difference).

use std::collections::BTreeMap;

use differential_dataflow::difference::{Multiply, Semigroup};
use differential_dataflow::{AsCollection, ExchangeData, Hashable};
use std::collections::hash_map::Entry;

use rustc_hash::FxHashMap;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::{Capability, Operator};

use super::{Coll, Diff, Time};

/// The updates waiting for one time, with the capability to answer at that time.
type Pending<D> = (Capability<Time>, Vec<(D, Diff)>);

/// Routes `collection` by `route`, and hands `logic` the updates of each time (not consolidated) in
/// time order, once no more updates at that time can arrive; `logic` pushes the output's changes.
fn in_time_order<'s, D, O, L>(
    collection: Coll<'s, D>,
    name: &str,
    route: impl Fn(&D) -> u64 + 'static,
    mut logic: L,
) -> Coll<'s, O>
where
    D: ExchangeData,
    O: differential_dataflow::Data,
    L: FnMut(Vec<(D, Diff)>, &mut Vec<(O, Diff)>) + 'static,
{
    let pact = Exchange::new(move |(data, _, _): &(D, Time, Diff)| route(data));
    collection
        .inner
        .unary_frontier(pact, name, move |_, _| {
            let mut pending: BTreeMap<Time, Pending<D>> = BTreeMap::new();
            let mut changes: Vec<(O, Diff)> = Vec::new();
            move |(input, frontier), output| {
                input.for_each_stamp(|capability, containers| {
                    for container in containers {
                        for (data, time, diff) in container.drain(..) {
                            let slot =
                                pending.entry(time).or_insert_with(|| (capability.delayed(&time, 0), Vec::new()));
                            slot.1.push((data, diff));
                        }
                    }
                });
                while let Some(entry) = pending.first_entry() {
                    if frontier.less_equal(entry.key()) {
                        break; // updates at this time may still arrive
                    }
                    let (time, (capability, updates)) = entry.remove_entry();
                    logic(updates, &mut changes);
                    let mut timed: Vec<(O, Time, Diff)> = changes.drain(..).map(|(o, diff)| (o, time, diff)).collect();
                    if !timed.is_empty() {
                        output.session(&capability).give_container(&mut timed);
                    }
                }
            }
        })
        .as_collection()
}

/// The distinct records of `collection` (those of positive multiplicity), like differential's
/// `distinct_total`.
pub fn distinct<'s, K>(collection: Coll<'s, K>, name: &str) -> Coll<'s, K>
where
    K: ExchangeData + Ord + std::hash::Hash,
{
    let mut counts: FxHashMap<K, Diff> = FxHashMap::default();
    let mut delta: FxHashMap<K, Diff> = FxHashMap::default();
    in_time_order(
        collection,
        name,
        |key: &K| key.hashed(),
        move |updates, changes| {
            for (key, diff) in updates {
                *delta.entry(key).or_insert(0) += diff;
            }
            for (key, diff) in delta.drain() {
                if diff == 0 {
                    continue;
                }
                let count = counts.entry(key.clone()).or_insert(0);
                let before = *count > 0;
                *count += diff;
                let after = *count > 0;
                if *count == 0 {
                    counts.remove(&key);
                }
                if before != after {
                    changes.push((key, if after { 1 } else { -1 }));
                }
            }
        },
    )
}

/// The accumulated value per key (each update's value times its multiplicity, added up with the
/// semigroup), as `(key, total)` records that change whenever the total does; keys whose total
/// is zero have no record. Like differential's `explode` + `count_total`.
pub fn accumulate_by_key<'s, K, R>(collection: Coll<'s, (K, R)>, name: &str) -> Coll<'s, (K, R)>
where
    K: ExchangeData + Ord + std::hash::Hash,
    R: ExchangeData + Ord + Semigroup + Multiply<Diff, Output = R>,
{
    let mut totals: FxHashMap<K, R> = FxHashMap::default();
    let mut deltas: FxHashMap<K, R> = FxHashMap::default();
    in_time_order(
        collection,
        name,
        |(key, _): &(K, R)| key.hashed(),
        move |updates, changes| {
            for ((key, value), diff) in updates {
                let value = value.multiply(&diff);
                match deltas.entry(key) {
                    Entry::Occupied(mut sum) => sum.get_mut().plus_equals(&value),
                    Entry::Vacant(slot) => {
                        slot.insert(value);
                    }
                }
            }
            for (key, delta) in deltas.drain() {
                if delta.is_zero() {
                    continue;
                }
                let before = totals.remove(&key);
                let after = match &before {
                    Some(before) => {
                        let mut after = before.clone();
                        after.plus_equals(&delta);
                        after
                    }
                    None => delta,
                };
                if let Some(before) = before {
                    changes.push(((key.clone(), before), -1));
                }
                if !after.is_zero() {
                    changes.push(((key.clone(), after.clone()), 1));
                    totals.insert(key, after);
                }
            }
        },
    )
}

/// One group's current input (sorted by value), the output derived from it, and the output before
/// the time being applied (`stamp` tells whether `before` belongs to that time).
struct Group<V, O> {
    values: Vec<(V, Diff)>,
    output: Option<O>,
    before: Option<O>,
    stamp: u64,
}

/// `logic` applied to each key's values (sorted, with positive multiplicities), as `(key, output)`
/// records that change whenever the output does; keys without values have no record. Like
/// differential's `reduce` with one output record per key.
pub fn reduce<'s, K, V, O, L>(collection: Coll<'s, (K, V)>, name: &str, logic: L) -> Coll<'s, (K, O)>
where
    K: ExchangeData + Ord + std::hash::Hash,
    V: ExchangeData + Ord,
    O: differential_dataflow::Data,
    L: Fn(&K, &[(V, Diff)]) -> O + 'static,
{
    let mut groups: FxHashMap<K, Group<V, O>> = FxHashMap::default();
    let mut touched: Vec<K> = Vec::new();
    let mut stamp = 0;
    in_time_order(
        collection,
        name,
        |(key, _): &(K, V)| key.hashed(),
        move |updates, changes| {
            stamp += 1;
            for ((key, value), diff) in updates {
                let group = groups.entry(key.clone()).or_insert_with(|| Group {
                    values: Vec::new(),
                    output: None,
                    before: None,
                    stamp: 0,
                });
                if group.stamp != stamp {
                    group.stamp = stamp;
                    group.before = group.output.take();
                    touched.push(key);
                }
                add_value(&mut group.values, value, diff);
            }
            for key in touched.drain(..) {
                let group = groups.get_mut(&key).expect("touched groups exist");
                let before = group.before.take();
                let after = (!group.values.is_empty()).then(|| logic(&key, &group.values));
                if before != after {
                    if let Some(before) = before {
                        changes.push(((key.clone(), before), -1));
                    }
                    if let Some(after) = &after {
                        changes.push(((key.clone(), after.clone()), 1));
                    }
                }
                if after.is_none() {
                    groups.remove(&key);
                } else {
                    group.output = after;
                }
            }
        },
    )
}

/// Adds one update to a sorted, consolidated list of values.
fn add_value<V: Ord>(values: &mut Vec<(V, Diff)>, value: V, diff: Diff) {
    match values.binary_search_by(|(v, _)| v.cmp(&value)) {
        Ok(i) => {
            values[i].1 += diff;
            if values[i].1 == 0 {
                values.remove(i);
            }
        }
        Err(i) => values.insert(i, (value, diff)),
    }
}

/// One group's values in order, its current `k` least, and those before the time being applied.
struct Ordered<V> {
    values: BTreeMap<V, Diff>,
    least: Vec<V>,
    before: Option<Vec<V>>,
    stamp: u64,
}

/// The `k` least values of each key, as `(key, (rank, value))` records (rank 1-based when `ranked`,
/// else 0). The values are held in order, so a change costs a logarithmic update and reading `k`
/// values, never a sort of the group; only the records that enter or leave the `k` least are
/// emitted (a changed score usually moves one value).
pub fn least_k<'s, K, V>(collection: Coll<'s, (K, V)>, k: usize, ranked: bool, name: &str) -> Coll<'s, (K, (u32, V))>
where
    K: ExchangeData + Ord + std::hash::Hash,
    V: ExchangeData + Ord,
{
    let mut groups: FxHashMap<K, Ordered<V>> = FxHashMap::default();
    let mut touched: Vec<K> = Vec::new();
    let mut stamp = 0;
    in_time_order(
        collection,
        name,
        |(key, _): &(K, V)| key.hashed(),
        move |updates, changes| {
            stamp += 1;
            for ((key, value), diff) in updates {
                let group = groups.entry(key.clone()).or_insert_with(|| Ordered {
                    values: BTreeMap::new(),
                    least: Vec::new(),
                    before: None,
                    stamp: 0,
                });
                if group.stamp != stamp {
                    group.stamp = stamp;
                    group.before = Some(std::mem::take(&mut group.least));
                    touched.push(key);
                }
                let count = group.values.entry(value.clone()).or_insert(0);
                *count += diff;
                if *count == 0 {
                    group.values.remove(&value);
                }
            }
            for key in touched.drain(..) {
                let group = groups.get_mut(&key).expect("touched groups exist");
                let before = group.before.take().unwrap_or_default();
                let after: Vec<V> = group.values.keys().take(k).cloned().collect();
                emit_ranked_changes(&key, &before, &after, ranked, changes);
                if group.values.is_empty() {
                    groups.remove(&key);
                } else {
                    group.least = after;
                }
            }
        },
    )
}

/// One group's accumulated items, its current best, and those before the time being applied.
struct Tally<I, R, V> {
    items: FxHashMap<I, R>,
    best: Vec<V>,
    before: Option<Vec<V>>,
    stamp: u64,
}

/// Accumulates `(group, item)` values like [`accumulate_by_key`] and keeps, per group, the `k`
/// least of `view(item, total)` over its items, as `(group, (rank, view))` records (rank as in
/// [`least_k`]). A touched group is re-ranked by one linear scan of its items per time: a scan of a
/// few thousand totals in a hash map is cheaper than two ordered-map updates per changed item.
pub fn accumulate_least_k<'s, G, I, R, V>(
    collection: Coll<'s, ((G, I), R)>,
    k: usize,
    ranked: bool,
    name: &str,
    view: impl Fn(&I, &R) -> V + 'static,
) -> Coll<'s, (G, (u32, V))>
where
    G: ExchangeData + Ord + std::hash::Hash,
    I: ExchangeData + Ord + std::hash::Hash,
    R: ExchangeData + Ord + Semigroup + Multiply<Diff, Output = R>,
    V: ExchangeData + Ord,
{
    let mut groups: FxHashMap<G, Tally<I, R, V>> = FxHashMap::default();
    let mut touched: Vec<G> = Vec::new();
    let mut stamp = 0;
    in_time_order(
        collection,
        name,
        |((group, _), _): &((G, I), R)| group.hashed(),
        move |updates, changes| {
            stamp += 1;
            for (((group, item), value), diff) in updates {
                let tally = groups.entry(group.clone()).or_insert_with(|| Tally {
                    items: FxHashMap::default(),
                    best: Vec::new(),
                    before: None,
                    stamp: 0,
                });
                if tally.stamp != stamp {
                    tally.stamp = stamp;
                    tally.before = Some(std::mem::take(&mut tally.best));
                    touched.push(group);
                }
                let value = value.multiply(&diff);
                match tally.items.entry(item) {
                    Entry::Occupied(mut total) => {
                        total.get_mut().plus_equals(&value);
                        if total.get().is_zero() {
                            total.remove();
                        }
                    }
                    Entry::Vacant(slot) => {
                        if !value.is_zero() {
                            slot.insert(value);
                        }
                    }
                }
            }
            for group in touched.drain(..) {
                let tally = groups.get_mut(&group).expect("touched groups exist");
                let before = tally.before.take().unwrap_or_default();
                let mut views: Vec<V> = tally.items.iter().map(|(item, total)| view(item, total)).collect();
                if views.len() > k {
                    views.select_nth_unstable(k - 1);
                    views.truncate(k);
                }
                views.sort_unstable();
                emit_ranked_changes(&group, &before, &views, ranked, changes);
                if tally.items.is_empty() {
                    groups.remove(&group);
                } else {
                    tally.best = views;
                }
            }
        },
    )
}

/// A ranked value of a key: `(key, (rank, value))`.
type Ranked<K, V> = (K, (u32, V));

/// Emits the changes from the `before` to the `after` least values of `key`, as `(rank, value)`
/// records (rank 0 for all when not `ranked`): only what entered or left, usually one value.
fn emit_ranked_changes<K: Clone, V: Clone + PartialEq>(
    key: &K,
    before: &[V],
    after: &[V],
    ranked: bool,
    changes: &mut Vec<(Ranked<K, V>, Diff)>,
) {
    if before == after {
        return;
    }
    let rank = |i: usize| if ranked { i as u32 + 1 } else { 0 };
    let before: Vec<(u32, &V)> = before.iter().enumerate().map(|(i, v)| (rank(i), v)).collect();
    let after: Vec<(u32, &V)> = after.iter().enumerate().map(|(i, v)| (rank(i), v)).collect();
    for (r, v) in before.iter().filter(|x| !after.contains(x)) {
        changes.push(((key.clone(), (*r, (*v).clone())), -1));
    }
    for (r, v) in after.iter().filter(|x| !before.contains(x)) {
        changes.push(((key.clone(), (*r, (*v).clone())), 1));
    }
}
