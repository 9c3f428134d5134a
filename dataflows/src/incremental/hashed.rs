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

use std::collections::hash_map::Entry;
use std::collections::BTreeMap;

use differential_dataflow::difference::{Multiply, Semigroup};
use differential_dataflow::{AsCollection, ExchangeData, Hashable};
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

/// Per-key state of an operator that re-derives a key's output once per time: the states, and the
/// keys touched at the current time with the output each had before it.
struct Touched<K, S, B> {
    states: FxHashMap<K, (S, u64)>,
    touched: Vec<(K, B)>,
    stamp: u64,
}

impl<K: std::hash::Hash + Eq + Clone, S, B> Touched<K, S, B> {
    fn new() -> Self {
        Touched { states: FxHashMap::default(), touched: Vec::new(), stamp: 0 }
    }

    /// Starts applying the updates of a new time.
    fn begin(&mut self) {
        self.stamp += 1;
    }

    /// The state of `key` (`new` if it has none), noting the key as touched at this time with the
    /// output `before` takes from its state the first time.
    fn touch(&mut self, key: K, new: impl FnOnce() -> S, before: impl FnOnce(&mut S) -> B) -> &mut S {
        let (state, stamp) = self.states.entry(key.clone()).or_insert_with(|| (new(), 0));
        if *stamp != self.stamp {
            *stamp = self.stamp;
            self.touched.push((key, before(state)));
        }
        state
    }

    /// Hands each touched key, its output before this time and its state to `finish`, which
    /// returns whether the state is kept (a key without values leaves).
    fn finish(&mut self, mut finish: impl FnMut(&K, B, &mut S) -> bool) {
        for (key, before) in self.touched.drain(..) {
            let (state, _) = self.states.get_mut(&key).expect("touched keys have a state");
            if !finish(&key, before, state) {
                self.states.remove(&key);
            }
        }
    }
}

/// One group's current input (sorted by value) and the output derived from it.
struct Group<V, O> {
    values: Vec<(V, Diff)>,
    output: Option<O>,
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
    let mut groups: Touched<K, Group<V, O>, Option<O>> = Touched::new();
    in_time_order(
        collection,
        name,
        |(key, _): &(K, V)| key.hashed(),
        move |updates, changes| {
            groups.begin();
            for ((key, value), diff) in updates {
                let group = groups.touch(key, || Group { values: Vec::new(), output: None }, |g| g.output.take());
                add_value(&mut group.values, value, diff);
            }
            groups.finish(|key, before, group| {
                let after = (!group.values.is_empty()).then(|| logic(key, &group.values));
                if before != after {
                    if let Some(before) = before {
                        changes.push(((key.clone(), before), -1));
                    }
                    if let Some(after) = &after {
                        changes.push(((key.clone(), after.clone()), 1));
                    }
                }
                group.output = after;
                group.output.is_some()
            });
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

/// One group's values in order and its current `k` least.
struct Ordered<V> {
    values: BTreeMap<V, Diff>,
    least: Vec<V>,
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
    let mut groups: Touched<K, Ordered<V>, Vec<V>> = Touched::new();
    in_time_order(
        collection,
        name,
        |(key, _): &(K, V)| key.hashed(),
        move |updates, changes| {
            groups.begin();
            for ((key, value), diff) in updates {
                let new = || Ordered { values: BTreeMap::new(), least: Vec::new() };
                let group = groups.touch(key, new, |g| std::mem::take(&mut g.least));
                let count = group.values.entry(value.clone()).or_insert(0);
                *count += diff;
                if *count == 0 {
                    group.values.remove(&value);
                }
            }
            groups.finish(|key, before, group| {
                group.least = group.values.keys().take(k).cloned().collect();
                emit_ranked_changes(key, &before, &group.least, ranked, changes);
                !group.values.is_empty()
            });
        },
    )
}

/// One group's accumulated items and its current best.
struct Tally<I, R, V> {
    items: FxHashMap<I, R>,
    best: Vec<V>,
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
    let mut groups: Touched<G, Tally<I, R, V>, Vec<V>> = Touched::new();
    in_time_order(
        collection,
        name,
        |((group, _), _): &((G, I), R)| group.hashed(),
        move |updates, changes| {
            groups.begin();
            for (((group, item), value), diff) in updates {
                let new = || Tally { items: FxHashMap::default(), best: Vec::new() };
                let tally = groups.touch(group, new, |t| std::mem::take(&mut t.best));
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
            groups.finish(|group, before, tally| {
                let mut views: Vec<V> = tally.items.iter().map(|(item, total)| view(item, total)).collect();
                if views.len() > k {
                    views.select_nth_unstable(k - 1);
                    views.truncate(k);
                }
                views.sort_unstable();
                emit_ranked_changes(group, &before, &views, ranked, changes);
                tally.best = views;
                !tally.items.is_empty()
            });
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
