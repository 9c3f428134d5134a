//! Current-state operators: operators for a totally ordered time that keep only the current
//! state, in hash maps ([`distinct`], [`accumulate_by_key`], [`least_k`], [`accumulate_least_k`]),
//! and the input buffering they share with the per-user stage ([`file_by_time`], [`updates`]).
//!
//! Differential's `distinct_total`, `count_total` and `reduce` arrange their input: every update
//! is sorted into a batcher, built into a batch and merged into a trace that keeps history, so
//! that any time can be revisited and the arrangement shared. Most of the engine's operators need
//! none of that: the time is totally ordered, each time is complete before the next is looked at,
//! and nothing else reads their input. These operators route each update to the worker owning its
//! key, wait until the input frontier has passed an update's time, then apply all updates of that
//! time at once to a hash map of the current state and emit exactly the changes of the output,
//! at that time. Their output equals the differential operator's; they cost a hash probe per
//! update instead of a sort and a merge (dataflows/README.md, "Current-state operators for a total
//! order").

use std::collections::hash_map::Entry;
use std::collections::BTreeMap;

use differential_dataflow::difference::{Multiply, Semigroup};
use differential_dataflow::{AsCollection, ExchangeData, Hashable};
use rustc_hash::FxHashMap;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::{Capability, Operator};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::checkpoint;
use super::types::{Coll, Diff, Time};

/// Updates as they arrived: whole containers (see [`file_by_time`]).
pub type Updates<D> = Vec<Vec<(D, Time, Diff)>>;

/// The updates waiting for one time, with the capability to answer at that time.
type Pending<D> = (Capability<Time>, Updates<D>);

/// Files a received container under its time in `pending`, whole when all its updates share one
/// time (nearly always: operators send one time per container), else split by time; a time seen
/// first gets `capability(time)`. Keeping containers whole spares copying every update once more.
pub fn file_by_time<D, C>(
    pending: &mut BTreeMap<Time, (C, Updates<D>)>,
    container: &mut Vec<(D, Time, Diff)>,
    capability: impl Fn(&Time) -> C,
) {
    let Some(time) = container.first().map(|(_, t, _)| *t) else { return };
    if container.iter().all(|(_, t, _)| *t == time) {
        pending.entry(time).or_insert_with(|| (capability(&time), Vec::new())).1.push(std::mem::take(container));
        return;
    }
    let mut parts: BTreeMap<Time, Vec<(D, Time, Diff)>> = BTreeMap::new();
    for update in container.drain(..) {
        parts.entry(update.1).or_default().push(update);
    }
    for (time, part) in parts {
        pending.entry(time).or_insert_with(|| (capability(&time), Vec::new())).1.push(part);
    }
}

/// The `(data, diff)` of updates filed by [`file_by_time`].
pub fn updates<D>(updates: Updates<D>) -> impl Iterator<Item = (D, Diff)> {
    updates.into_iter().flatten().map(|(data, _, diff)| (data, diff))
}

/// Routes `collection` by `route`, and hands `logic` the updates of each time (not consolidated) in
/// time order, once no more updates at that time can arrive; `logic` pushes the output's changes.
/// `state` is what the operator keeps from one time to the next, registered for checkpoints under
/// `name` (see [`super::checkpoint`]); `logic` gets it with each time's updates.
fn in_time_order<'s, D, O, S, L>(
    collection: Coll<'s, D>,
    name: &str,
    route: impl Fn(&D) -> u64 + 'static,
    state: impl FnOnce() -> S,
    mut logic: L,
) -> Coll<'s, O>
where
    D: ExchangeData,
    O: differential_dataflow::Data,
    S: Serialize + DeserializeOwned + 'static,
    L: FnMut(&mut S, Time, Updates<D>, &mut Vec<(O, Diff)>) + 'static,
{
    let state = checkpoint::state(name, state);
    let pact = Exchange::new(move |(data, _, _): &(D, Time, Diff)| route(data));
    collection
        .inner
        .unary_frontier(pact, name, move |_, _| {
            let mut pending: BTreeMap<Time, Pending<D>> = BTreeMap::new();
            let mut changes: Vec<(O, Diff)> = Vec::new();
            move |(input, frontier), output| {
                input.for_each_stamp(|capability, containers| {
                    for container in containers {
                        file_by_time(&mut pending, container, |time| capability.delayed(time, 0));
                    }
                });
                while let Some(entry) = pending.first_entry() {
                    if frontier.less_equal(entry.key()) {
                        break; // updates at this time may still arrive
                    }
                    let (time, (capability, updates)) = entry.remove_entry();
                    logic(&mut state.borrow_mut(), time, updates, &mut changes);
                    let mut timed: Vec<(O, Time, Diff)> = changes.drain(..).map(|(o, diff)| (o, time, diff)).collect();
                    if !timed.is_empty() {
                        output.session(&capability).give_container(&mut timed);
                    }
                }
            }
        })
        .as_collection()
}

/// The join of `left` and `right` on their keys, `logic(key, left value, right value)` per pair of
/// records (multiplicities multiplied), like differential's `join_map`, keeping only the current
/// records of each side in hash maps: at each time the changes are the left's changes against the
/// right as it was, plus the left as it is now against the right's changes.
pub fn join_map<'s, K, A, B, O>(
    left: Coll<'s, (K, A)>,
    right: Coll<'s, (K, B)>,
    name: &str,
    logic: impl Fn(&K, &A, &B) -> O + 'static,
) -> Coll<'s, O>
where
    K: ExchangeData + std::hash::Hash + Eq,
    A: ExchangeData + std::hash::Hash + Eq,
    B: ExchangeData + std::hash::Hash + Eq,
    O: differential_dataflow::Data,
{
    type Side<K, V> = FxHashMap<K, FxHashMap<V, Diff>>;
    let state = checkpoint::state(name, || (Side::<K, A>::default(), Side::<K, B>::default()));
    let by_key_left = Exchange::new(|((key, _), _, _): &((K, A), Time, Diff)| key.hashed());
    let by_key_right = Exchange::new(|((key, _), _, _): &((K, B), Time, Diff)| key.hashed());
    left.inner
        .binary_frontier(right.inner, by_key_left, by_key_right, name, move |_, _| {
            let mut pending_left: BTreeMap<Time, Pending<(K, A)>> = BTreeMap::new();
            let mut pending_right: BTreeMap<Time, Pending<(K, B)>> = BTreeMap::new();
            move |(left_in, left_frontier), (right_in, right_frontier), output| {
                left_in.for_each_stamp(|capability, containers| {
                    for container in containers {
                        file_by_time(&mut pending_left, container, |time| capability.delayed(time, 0));
                    }
                });
                right_in.for_each_stamp(|capability, containers| {
                    for container in containers {
                        file_by_time(&mut pending_right, container, |time| capability.delayed(time, 0));
                    }
                });
                loop {
                    let next = [pending_left.keys().next(), pending_right.keys().next()].into_iter().flatten().min();
                    let Some(&time) = next else { break };
                    if left_frontier.less_equal(&time) || right_frontier.less_equal(&time) {
                        break; // updates at this time may still arrive
                    }
                    let from_left = pending_left.remove(&time);
                    let from_right = pending_right.remove(&time);
                    let capability = match (&from_left, &from_right) {
                        (Some((c, _)), _) | (None, Some((c, _))) => c.clone(),
                        (None, None) => unreachable!("a time is taken because something waits at it"),
                    };
                    let (lefts, rights) = &mut *state.borrow_mut();
                    let mut out: Vec<(O, Time, Diff)> = Vec::new();
                    // The left's changes against the right before this time...
                    if let Some((_, updates)) = from_left {
                        for ((key, a), diff) in self::updates(updates) {
                            if let Some(matches) = rights.get(&key) {
                                for (b, d) in matches {
                                    out.push((logic(&key, &a, b), time, diff * d));
                                }
                            }
                            add_to_side(lefts, key, a, diff);
                        }
                    }
                    // ...then the left as it is now against the right's changes.
                    if let Some((_, updates)) = from_right {
                        for ((key, b), diff) in self::updates(updates) {
                            if let Some(matches) = lefts.get(&key) {
                                for (a, d) in matches {
                                    out.push((logic(&key, a, &b), time, diff * d));
                                }
                            }
                            add_to_side(rights, key, b, diff);
                        }
                    }
                    if !out.is_empty() {
                        output.session(&capability).give_container(&mut out);
                    }
                }
            }
        })
        .as_collection()
}

/// Adds `diff` to a side of [`join_map`]: a record at zero leaves, and a key without records.
fn add_to_side<K: std::hash::Hash + Eq, V: std::hash::Hash + Eq>(
    side: &mut FxHashMap<K, FxHashMap<V, Diff>>,
    key: K,
    value: V,
    diff: Diff,
) {
    match side.entry(key) {
        Entry::Vacant(slot) => {
            slot.insert(FxHashMap::from_iter([(value, diff)]));
        }
        Entry::Occupied(mut values) => {
            match values.get_mut().entry(value) {
                Entry::Vacant(slot) => {
                    slot.insert(diff);
                }
                Entry::Occupied(mut count) => {
                    *count.get_mut() += diff;
                    if *count.get() == 0 {
                        count.remove();
                    }
                }
            }
            if values.get().is_empty() {
                values.remove();
            }
        }
    }
}

/// The distinct records of `collection` (those of positive multiplicity), like differential's
/// `distinct_total`.
pub fn distinct<'s, K>(collection: Coll<'s, K>, name: &str) -> Coll<'s, K>
where
    K: ExchangeData + Ord + std::hash::Hash,
{
    let mut delta: FxHashMap<K, Diff> = FxHashMap::default();
    in_time_order(
        collection,
        name,
        |key: &K| key.hashed(),
        FxHashMap::<K, Diff>::default,
        move |counts, _, updates, changes| {
            for (key, diff) in self::updates(updates) {
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
    let mut deltas: FxHashMap<K, R> = FxHashMap::default();
    in_time_order(
        collection,
        name,
        |(key, _): &(K, R)| key.hashed(),
        FxHashMap::<K, R>::default,
        move |totals, _, updates, changes| {
            for ((key, value), diff) in self::updates(updates) {
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
#[derive(Serialize, Deserialize)]
#[serde(bound(serialize = "K: Serialize + std::hash::Hash + Eq, S: Serialize"))]
#[serde(bound(deserialize = "K: DeserializeOwned + std::hash::Hash + Eq, S: DeserializeOwned"))]
struct Touched<K, S, B> {
    states: FxHashMap<K, (S, u64)>,
    #[serde(skip)]
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

/// One group's values in order and its current `k` least.
#[derive(Serialize, Deserialize)]
#[serde(bound(serialize = "V: Serialize + Ord", deserialize = "V: DeserializeOwned + Ord"))]
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
    in_time_order(
        collection,
        name,
        |(key, _): &(K, V)| key.hashed(),
        Touched::<K, Ordered<V>, Vec<V>>::new,
        move |groups, _, updates, changes| {
            groups.begin();
            for ((key, value), diff) in self::updates(updates) {
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

/// One group's accumulated items and a prefix of its ranking, kept lazily (see
/// [`accumulate_least_k`]).
#[derive(Serialize, Deserialize)]
#[serde(bound(
    serialize = "I: Serialize + std::hash::Hash + Eq, R: Serialize, V: Serialize",
    deserialize = "I: DeserializeOwned + std::hash::Hash + Eq, R: DeserializeOwned, V: DeserializeOwned"
))]
struct Tally<I, R, V> {
    /// Each item's total and whether it is a member.
    items: FxHashMap<I, (R, bool)>,
    /// The best items in order: every member ranks before every other item.
    members: Vec<(V, I)>,
    /// A value no non-member ranks before (`None` when there are no non-members).
    bound: Option<V>,
    /// The `k` best as they were before their first change at the current time; `None` while
    /// they are unchanged (most changes are to items far from the top).
    before: Option<Vec<V>>,
}

impl<I: Clone + Eq + std::hash::Hash, R: Semigroup, V: Ord + Clone> Tally<I, R, V> {
    fn new() -> Self {
        Tally { items: FxHashMap::default(), members: Vec::new(), bound: None, before: None }
    }

    fn non_members(&self) -> usize {
        self.items.len() - self.members.len()
    }

    fn lower_bound(&mut self, value: V) {
        if self.bound.as_ref().is_none_or(|b| value < *b) {
            self.bound = Some(value);
        }
    }

    /// Keeps the `k` best as they are before the members from index `at` on change.
    fn changing_at(&mut self, at: usize, k: usize) {
        if at < k && self.before.is_none() {
            self.before = Some(self.best(k));
        }
    }

    fn insert_member(&mut self, value: V, item: I, k: usize) {
        let at = self.members.partition_point(|(v, _)| *v < value);
        self.changing_at(at, k);
        self.members.insert(at, (value, item));
    }

    fn remove_member(&mut self, item: &I, k: usize) -> V {
        let at = self.members.iter().position(|(_, i)| i == item).expect("members are listed");
        self.changing_at(at, k);
        self.members.remove(at).0
    }

    /// Adds `delta` to `item`'s total and keeps the members a correct prefix of the ranking
    /// (`2k` at most); true when this is the first change of the `k` best at this time.
    fn add(&mut self, item: I, delta: R, k: usize, view: &impl Fn(&I, &R) -> V) -> bool {
        let unchanged = self.before.is_none();
        self.apply(item, delta, k, view);
        unchanged && self.before.is_some()
    }

    fn apply(&mut self, item: I, delta: R, k: usize, view: &impl Fn(&I, &R) -> V) {
        let (total, member) = match self.items.entry(item.clone()) {
            Entry::Occupied(mut slot) => {
                slot.get_mut().0.plus_equals(&delta);
                if slot.get().0.is_zero() {
                    let (_, member) = slot.remove();
                    if member {
                        self.remove_member(&item, k);
                    }
                    return; // a non-member leaving keeps the bound a lower bound
                }
                slot.get().clone()
            }
            Entry::Vacant(slot) => {
                if delta.is_zero() {
                    return;
                }
                slot.insert((delta.clone(), false));
                (delta, false)
            }
        };
        let value = view(&item, &total);
        if member {
            self.remove_member(&item, k);
            // Still ahead of every non-member: it stays; otherwise it may have fallen behind one.
            if self.bound.as_ref().is_none_or(|b| value < *b) {
                self.insert_member(value, item, k);
            } else {
                self.items.get_mut(&item).expect("present").1 = false;
                self.lower_bound(value);
            }
            return;
        }
        let ahead_of_worst = self.members.last().is_some_and(|(worst, _)| value < *worst);
        let only_non_member = self.non_members() == 1;
        if ahead_of_worst || (only_non_member && self.members.len() < 2 * k) {
            self.items.get_mut(&item).expect("present").1 = true;
            self.insert_member(value, item, k);
            if self.members.len() > 2 * k {
                // The last of 2k + 1 leaves: the k best stay as they are.
                let (evicted, evicted_item) = self.members.pop().expect("over capacity");
                self.items.get_mut(&evicted_item).expect("members are items").1 = false;
                self.lower_bound(evicted);
            }
        } else {
            self.lower_bound(value);
        }
    }

    /// Re-ranks from scratch when fewer than `k` members are left while other items exist. Only
    /// a change to the `k` best leaves fewer than `k` members, so `before` holds them already.
    fn refill(&mut self, k: usize, view: &impl Fn(&I, &R) -> V) {
        if self.members.len() >= k || self.non_members() == 0 {
            return;
        }
        debug_assert!(self.before.is_some(), "fewer than k members only after a change to the k best");
        let capacity = 2 * k;
        let mut all: Vec<(V, I)> =
            self.items.iter().map(|(item, (total, _))| (view(item, total), item.clone())).collect();
        let keep = capacity.min(all.len());
        if all.len() > keep {
            all.select_nth_unstable_by(keep, |a, b| a.0.cmp(&b.0));
            self.bound = Some(all[keep..].iter().map(|(v, _)| v).min().expect("non-empty").clone());
        } else {
            self.bound = None;
        }
        all.truncate(keep);
        all.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        for (_, member) in self.items.values_mut() {
            *member = false;
        }
        for (_, item) in &all {
            self.items.get_mut(item).expect("present").1 = true;
        }
        self.members = all;
    }

    fn best(&self, k: usize) -> Vec<V> {
        self.members.iter().take(k).map(|(v, _)| v.clone()).collect()
    }
}

/// Accumulates `(group, item)` values like [`accumulate_by_key`] and keeps, per group, the `k`
/// least of `view(item, total)` over its items, as `(group, (rank, view))` records (rank as in
/// [`least_k`]). The ranking is kept lazily: each group holds up to `2k` best items in order and a
/// lower bound on all others. A change to an item outside them costs a hash update and a
/// comparison; an item inside that falls behind the bound leaves them; only when fewer than `k`
/// are left is the group re-ranked by a scan of its items.
///
/// `forget_at(group)`, if some: at the first time at or after it that has updates here, the group
/// is dropped without retracting its output. For windows that are final, whose later changes
/// nobody reads and to which the caller sends nothing more.
pub fn accumulate_least_k<'s, G, I, R, V>(
    collection: Coll<'s, ((G, I), R)>,
    k: usize,
    ranked: bool,
    name: &str,
    view: impl Fn(&I, &R) -> V + 'static,
    forget_at: impl Fn(&G) -> Option<Time> + 'static,
) -> Coll<'s, (G, (u32, V))>
where
    G: ExchangeData + Ord + std::hash::Hash,
    I: ExchangeData + Ord + std::hash::Hash,
    R: ExchangeData + Ord + Semigroup + Multiply<Diff, Output = R>,
    V: ExchangeData + Ord,
{
    // Groups whose k best changed at the current time: only they are looked at again.
    let mut changed: Vec<G> = Vec::new();
    in_time_order(
        collection,
        name,
        |((group, _), _): &((G, I), R)| group.hashed(),
        Tallies::<G, I, R, V>::default,
        move |Tallies { groups, forgetting }, time, updates, changes| {
            while let Some(entry) = forgetting.first_entry().filter(|e| *e.key() <= time) {
                for group in entry.remove() {
                    groups.remove(&group);
                }
            }
            for (((group, item), value), diff) in self::updates(updates) {
                let tally = groups.entry(group.clone()).or_insert_with(|| {
                    if let Some(at) = forget_at(&group) {
                        forgetting.entry(at).or_default().push(group.clone());
                    }
                    Tally::new()
                });
                if tally.add(item, value.multiply(&diff), k, &view) {
                    changed.push(group);
                }
            }
            for group in changed.drain(..) {
                let tally = groups.get_mut(&group).expect("changed groups exist until here");
                tally.refill(k, &view);
                let before = tally.before.take().expect("a changed group kept its k best");
                emit_ranked_changes(&group, &before, &tally.best(k), ranked, changes);
                if tally.items.is_empty() {
                    groups.remove(&group);
                }
            }
        },
    )
}

/// The state of [`accumulate_least_k`]: each group's tally, and the groups to drop per time.
#[derive(Serialize, Deserialize)]
#[serde(bound(
    serialize = "G: Serialize + std::hash::Hash + Eq, I: Serialize + std::hash::Hash + Eq, R: Serialize, V: Serialize",
    deserialize = "G: DeserializeOwned + std::hash::Hash + Eq, I: DeserializeOwned + std::hash::Hash + Eq, R: \
                   DeserializeOwned, V: DeserializeOwned"
))]
struct Tallies<G, I, R, V> {
    groups: FxHashMap<G, Tally<I, R, V>>,
    forgetting: BTreeMap<Time, Vec<G>>,
}

impl<G, I, R, V> Default for Tallies<G, I, R, V> {
    fn default() -> Self {
        Tallies { groups: FxHashMap::default(), forgetting: BTreeMap::new() }
    }
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

#[cfg(test)]
mod tests {
    use std::cmp::Reverse;

    use super::super::operators::Sums;
    use super::Tally;

    /// The lazily kept ranking equals a full sort after every batch of random changes, including
    /// scores that fall (members leaving for the bound, re-ranking when too few are left), and
    /// a batch that changed the k best reports it once, with the k best from before the batch.
    #[test]
    fn lazy_tally_ranks_like_a_full_sort() {
        let view = |item: &u32, total: &Sums<1>| (Reverse(total.0[0]), *item);
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        for k in [1, 3, 10] {
            let mut tally: Tally<u32, Sums<1>, (Reverse<i64>, u32)> = Tally::new();
            let mut totals = std::collections::BTreeMap::<u32, i64>::new();
            let mut previous = Vec::new();
            for _batch in 0..2_000 {
                let mut reported = 0;
                for _ in 0..next(12) + 1 {
                    let item = next(100) as u32;
                    // Rises and falls alike: members fall behind others, items empty and come back.
                    let delta = next(13) as i64 - 6;
                    let total = totals.entry(item).or_insert(0);
                    *total += delta;
                    if *total == 0 {
                        totals.remove(&item);
                    }
                    reported += usize::from(tally.add(item, Sums([delta]), k, &view));
                }
                tally.refill(k, &view);
                let mut expected: Vec<_> = totals.iter().map(|(item, total)| view(item, &Sums([*total]))).collect();
                expected.sort_unstable();
                expected.truncate(k);
                assert_eq!(tally.best(k), expected);
                assert!(reported <= 1, "a change of the k best is reported once per batch");
                match tally.before.take() {
                    Some(before) => assert_eq!(before, previous, "the k best before the batch are kept"),
                    None => assert_eq!(expected, previous, "no change reported: the k best are unchanged"),
                }
                previous = expected;
            }
        }
    }
}
