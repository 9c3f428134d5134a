//! The per-user stage: the windowed, per-user state of the realtime windows, the funnel, the
//! recommendations and brand performance in one operator, which emits only aggregate deltas.
//!
//! All four analyses count things per user: distinct users per window, first times per
//! (user, product), distinct viewers per (user, product, type), distinct users per (user, brand).
//! Events and profiles are routed by user once, so each worker holds whole users: the profile
//! "join" is a local hash lookup, a window's events are kept once (per (user, product) for 24 hours,
//! per (user, brand) for 7 days, per user the active minutes of open realtime windows) and leave it
//! by the operator's own schedule, and what leaves the operator is a delta per aggregate key, summed
//! over all users of the worker at each time, on one typed output per analysis input
//! ([`super::deltas`], which the consumers import too). Downstream, `sum_by_key` and the top-k
//! tallies add up the workers' deltas.
//!
//! Times are handled like [`super::current_state`]: updates wait under their capabilities until the
//! input frontiers pass their time, then each time is applied whole, in time order: profile
//! changes, then window expiries, then new events. Expiries due before the next step boundary join
//! the time being applied, since nothing observes results between boundaries ("Visits join the
//! step" in dataflows/README.md).
//!
//! This file holds the operator, a user's entry (`UserState`) and what is applied per time
//! (`UserStage`: events, visits, profile changes); each analysis's share of the state is in its
//! own file: `realtime.rs` (active minutes and window totals), `pairs.rs` (the (user, product)
//! pairs of the last 24 hours) with `funnel.rs` (their first times and reach) and `scores.rs`
//! (their recommendation segments), `brands.rs` (the (user, brand) pairs of the last 7 days), and
//! `user_keyed.rs` (how a user's entry holds its products and brands).

mod brands;
mod funnel;
mod pairs;
mod realtime;
mod scores;
mod user_keyed;

use std::collections::BTreeMap;

use differential_dataflow::difference::IsZero;
use differential_dataflow::{AsCollection, Hashable};
use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};
use smallvec::SmallVec;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::operators::Capability;

use self::brands::{brand_event, BrandEvent, BrandState, Brands};
use self::pairs::{PairEvent, PairState, Pairs};
use self::realtime::Realtime;
use self::scores::{add_scores, score_slot};
use self::user_keyed::UserKeyed;
use super::checkpoint;
use super::current_state::{file_by_time, updates, Updates};
use super::deltas::{BrandDelta, Deltas, FunnelDelta, MinuteBrandDelta, MinuteViewsDelta, ScoreDelta, WindowDelta};
use super::operators::Sums;
use super::types::{Coll, Diff, ProfileRecord, Settings, StepEnds, Time};
use crate::model::profile::{age_group, unknown_symbol};
use crate::model::time::utc_date;
use crate::model::{Event, EventType, Profile, Symbol, Timestamp};

/// What the stage emits at one time, per analysis: changes of aggregates, each summed over the
/// users of the worker (the records and slot layouts of [`super::deltas`]).
#[derive(Default)]
struct Emitted {
    /// A realtime window's totals.
    windows: Vec<WindowDelta>,
    /// A product's views and their price sum in one minute.
    minute_views: Vec<MinuteViewsDelta>,
    /// A brand's events, views, carts, purchases and revenue in one minute.
    minute_brands: Vec<MinuteBrandDelta>,
    /// A funnel segment's sums.
    funnel: Vec<FunnelDelta>,
    /// Distinct viewers, carters and buyers of a product in a segment, keyed as the
    /// recommendations' tallies are.
    scores: Vec<ScoreDelta>,
    /// A brand at an age group (`None` = `*`).
    brands: Vec<BrandDelta>,
}

/// Work a key has at a later time: its oldest events leave their window.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
enum Visit {
    Pair(u64, u64),
    Brand(u64, Symbol),
    /// The realtime window starting at this minute is final: its totals and the minute's data
    /// leave.
    Window(Timestamp),
}

/// A capability per output, all at one time.
type Capabilities = [Capability<Time>; OUTPUTS];
const OUTPUTS: usize = 6;

/// What waits for the frontier per time, with the capabilities to answer at that time.
type Waiting<W> = BTreeMap<Time, (Capabilities, W)>;

/// The per-user stage over `events` and `profiles`: its deltas, one collection per analysis input.
pub fn dataflow<'s>(
    events: Coll<'s, Event>,
    profiles: Coll<'s, ProfileRecord>,
    settings: &Settings,
    step_ends: Option<StepEnds>,
) -> Deltas<'s> {
    let settings = *settings;
    let events_by_user = Exchange::new(|(e, _, _): &(Event, Time, Diff)| e.user_id.hashed());
    let profiles_by_user = Exchange::new(|((user, _), _, _): &(ProfileRecord, Time, Diff)| user.hashed());
    let mut builder =
        OperatorBuilder::new("Per user: realtime, funnel, recommendations, brands".to_owned(), events.inner.scope());
    let mut events_in = builder.new_input(events.inner, events_by_user);
    let mut profiles_in = builder.new_input(profiles.inner, profiles_by_user);
    let (windows_out, windows) = builder.new_output();
    let (views_out, minute_views) = builder.new_output();
    let (brand_activity_out, minute_brands) = builder.new_output();
    let (funnel_out, funnel) = builder.new_output();
    let (scores_out, scores) = builder.new_output();
    let (brands_out, brands) = builder.new_output();
    let mut windows_out: DeltaOutput<_> = OutputBuilder::from(windows_out);
    let mut views_out: DeltaOutput<_> = OutputBuilder::from(views_out);
    let mut brand_activity_out: DeltaOutput<_> = OutputBuilder::from(brand_activity_out);
    let mut funnel_out: DeltaOutput<_> = OutputBuilder::from(funnel_out);
    let mut scores_out: DeltaOutput<_> = OutputBuilder::from(scores_out);
    let mut brands_out: DeltaOutput<_> = OutputBuilder::from(brands_out);
    // The users' entries and the visits due later outlive a time: they are the stage's state in a
    // checkpoint (the visits' capabilities are made again from the initial ones on a restore).
    let kept = checkpoint::state("Per user", || Kept { stage: UserStage::new(settings), visits: BTreeMap::new() });
    builder.build(move |initial| {
        let mut waiting_events: Waiting<Updates<Event>> = BTreeMap::new();
        let mut waiting_profiles: Waiting<Updates<ProfileRecord>> = BTreeMap::new();
        let mut visit_capabilities: BTreeMap<Time, Capabilities> = kept
            .borrow()
            .visits
            .keys()
            .map(|at| (*at, std::array::from_fn(|port| initial[port].delayed(at))))
            .collect();
        drop(initial);
        move |frontiers| {
            let mut kept = kept.borrow_mut();
            let Kept { stage, visits } = &mut *kept;
            let (events_frontier, profiles_frontier) = (&frontiers[0], &frontiers[1]);
            events_in.for_each_stamp(|capability, containers| {
                for container in containers {
                    file_by_time(&mut waiting_events, container, |time| {
                        std::array::from_fn(|port| capability.delayed(time, port))
                    });
                }
            });
            profiles_in.for_each_stamp(|capability, containers| {
                for container in containers {
                    file_by_time(&mut waiting_profiles, container, |time| {
                        std::array::from_fn(|port| capability.delayed(time, port))
                    });
                }
            });
            loop {
                let next = [waiting_events.keys().next(), waiting_profiles.keys().next(), visits.keys().next()]
                    .into_iter()
                    .flatten()
                    .min()
                    .copied();
                let Some(time) = next else { break };
                if events_frontier.less_equal(&time) || profiles_frontier.less_equal(&time) {
                    break; // updates at this time may still arrive
                }
                // Any capabilities of this time will do to answer at it.
                let mut capabilities = None;
                let profile_updates = waiting_profiles.remove(&time).map(|(c, updates)| {
                    capabilities.get_or_insert(c);
                    updates
                });
                let mut due: Vec<(Time, Visit)> = Vec::new();
                if let Some(visits_now) = visits.remove(&time) {
                    let c = visit_capabilities.remove(&time).expect("every time with visits has capabilities");
                    capabilities.get_or_insert(c);
                    due.extend(visits_now.into_iter().map(|visit| (time, visit)));
                }
                let new_events = waiting_events.remove(&time).map(|(c, events)| {
                    capabilities.get_or_insert(c);
                    events
                });
                let caps = capabilities.expect("a time is processed because something waits at it");
                // Visits due before the next step boundary join this time: results are observed at
                // boundaries only, and the first one after `time` sees them either way. Their
                // deltas then add up with the step's new events (one change per aggregate and step
                // instead of one per minute). Never past the frontier (the last boundary may be
                // off the step grid) or a later time with input, which must come first.
                let limit = [
                    events_frontier.frontier().iter().min(),
                    profiles_frontier.frontier().iter().min(),
                    waiting_events.keys().next(),
                    waiting_profiles.keys().next(),
                ]
                .into_iter()
                .flatten()
                .fold(
                    // The end of the driver's step when steps vary (a Kafka backlog in large
                    // steps), else the next boundary of the step grid.
                    step_ends.as_ref().and_then(|ends| ends(time)).unwrap_or_else(|| settings.boundary_after(time)),
                    |limit, t| limit.min(*t),
                );
                while let Some(entry) = visits.first_entry().filter(|e| *e.key() < limit) {
                    let (at, visits_then) = entry.remove_entry();
                    visit_capabilities.remove(&at);
                    due.extend(visits_then.into_iter().map(|visit| (at, visit)));
                }
                stage.apply(time, profile_updates.unwrap_or_default(), due, new_events.unwrap_or_default());
                loop {
                    // Visits scheduled by those just applied may be due before the limit, too.
                    let mut due_now = Vec::new();
                    for (at, visit) in stage.scheduled.drain(..) {
                        debug_assert!(at > time, "windows end after their events");
                        if at < limit {
                            due_now.push((at, visit));
                            continue;
                        }
                        visit_capabilities
                            .entry(at)
                            .or_insert_with(|| std::array::from_fn(|port| caps[port].delayed(&at)));
                        visits.entry(at).or_default().push(visit);
                    }
                    if due_now.is_empty() {
                        break;
                    }
                    stage.apply(time, Vec::new(), due_now, Vec::new());
                }
                let out = stage.finish_time();
                give(&mut windows_out, &caps[0], &mut out.windows, time);
                give(&mut views_out, &caps[1], &mut out.minute_views, time);
                give(&mut brand_activity_out, &caps[2], &mut out.minute_brands, time);
                give(&mut funnel_out, &caps[3], &mut out.funnel, time);
                give(&mut scores_out, &caps[4], &mut out.scores, time);
                give(&mut brands_out, &caps[5], &mut out.brands, time);
            }
        }
    });
    Deltas {
        windows: windows.as_collection(),
        minute_views: minute_views.as_collection(),
        minute_brands: minute_brands.as_collection(),
        funnel: funnel.as_collection(),
        scores: scores.as_collection(),
        brands: brands.as_collection(),
    }
}

/// What the stage keeps from one time to the next: its users' entries, and the visits due at
/// later times.
#[derive(Serialize, Deserialize)]
struct Kept {
    stage: UserStage,
    visits: BTreeMap<Time, Vec<Visit>>,
}

/// One of the stage's outputs.
type DeltaOutput<D> = OutputBuilder<Time, CapacityContainerBuilder<Vec<(D, Time, Diff)>>>;

/// Sends `records` on `output` at `time`.
fn give<D: Clone + 'static>(
    output: &mut DeltaOutput<D>,
    capability: &Capability<Time>,
    records: &mut Vec<D>,
    time: Time,
) {
    if records.is_empty() {
        return;
    }
    let mut timed: Vec<(D, Time, Diff)> = records.drain(..).map(|record| (record, time, 1)).collect();
    output.activate().session(capability).give_container(&mut timed);
}

/// What the stage keeps per user of this worker, in one entry so that an event, a visit or a
/// pair's funnel change costs one probe for all of it. A user without profile, open minutes,
/// reach, products or brands has no entry.
#[derive(Default, Serialize, Deserialize)]
struct UserState {
    profile: Option<Profile>,
    /// The minutes with events (and whether one was a purchase), until their windows are final.
    minutes: Vec<(Timestamp, bool)>,
    /// Per funnel segment (in no order): how many of the user's products reach each funnel bit.
    reach: funnel::Reach,
    /// The user's products with events in the last 24 hours.
    pairs: UserKeyed<u64, PairState>,
    /// The user's brands with events in the last 7 days.
    brands: UserKeyed<Symbol, BrandState>,
}

impl UserState {
    fn is_idle(&self) -> bool {
        self.profile.is_none()
            && self.minutes.is_empty()
            && self.reach.is_empty()
            && self.pairs.is_empty()
            && self.brands.is_empty()
    }
}

/// This worker's share of the stage: its users' entries, each analysis's changes at the current
/// time, and the visits to schedule.
#[derive(Serialize, Deserialize)]
struct UserStage {
    settings: Settings,
    users: FxHashMap<u64, UserState>,
    pairs: Pairs,
    brands: Brands,
    /// Visits to schedule, filled by `apply`.
    #[serde(skip)]
    scheduled: Vec<(Time, Visit)>,
    realtime: Realtime,
    /// This time's deltas, ready to emit: the realtime ones go here directly, the others are
    /// summed per key in `pairs` and `brands` first.
    #[serde(skip)]
    out: Emitted,
}

impl UserStage {
    fn new(settings: Settings) -> Self {
        UserStage {
            settings,
            users: FxHashMap::default(),
            pairs: Pairs {
                settings,
                funnel_out: FxHashMap::default(),
                scores_out: FxHashMap::default(),
                first_times: Default::default(),
            },
            scheduled: Vec::new(),
            realtime: Realtime::default(),
            out: Emitted::default(),
            brands: Brands { settings, out: FxHashMap::default() },
        }
    }

    /// Applies everything of one time: profile changes, then the visits due (each with the time
    /// it is due at, which may be later), then new events.
    fn apply(&mut self, time: Time, profiles: Updates<ProfileRecord>, due: Vec<(Time, Visit)>, events: Updates<Event>) {
        if !profiles.is_empty() {
            self.change_profiles(profiles);
        }
        // Each user's visits, then its events, one after another: the user's entry and lists are
        // then in cache after the first, where a user has several visits or events in a step
        // (a session's products, ~7 events per user and 4 h step). Order does not change the
        // result (the deltas of one time add up, a pair's events are kept in time order whatever
        // the order they come in, and a visit finding its events gone does nothing), so the sorts
        // are unstable ones: in place, no scratch buffer of a step's size to allocate.
        let mut due = due;
        due.sort_unstable_by_key(|(at, visit)| match visit {
            Visit::Pair(user, _) | Visit::Brand(user, _) => (*user, *at),
            Visit::Window(_) => (0, *at),
        });
        let mut events: Vec<(Event, Diff)> = updates(events).collect();
        events.sort_unstable_by_key(|(event, _)| event.user_id);
        for (at, visit) in due {
            debug_assert!(at >= time);
            match visit {
                Visit::Pair(user, product) => {
                    self.pairs.expire(&mut self.scheduled, &mut self.users, at, user, product)
                }
                Visit::Brand(user, brand) => self.brands.expire(&mut self.scheduled, &mut self.users, at, user, brand),
                Visit::Window(start) => self.realtime.drop_window(start, &mut self.users, &mut self.out),
            }
        }
        for (event, diff) in events {
            assert!(diff > 0, "events are only ever inserted");
            let user = self.users.entry(event.user_id).or_default();
            let profile = user.profile;
            let age = age_group(profile.and_then(|p| p.birth_date), utc_date(event.time));
            let region = profile.map_or_else(unknown_symbol, |p| p.region);
            for _ in 0..diff {
                Self::realtime_event(&mut self.realtime, &mut user.minutes, &event);
                if event.event_type != EventType::RemoveFromCart {
                    let pair = PairEvent {
                        time: event.time,
                        event_type: event.event_type,
                        age,
                        category_code: event.category_code,
                        brand: event.brand,
                    };
                    self.pairs.insert(&mut self.scheduled, user, event.user_id, event.product_id, pair, region);
                }
            }
            for _ in 0..diff {
                if let Some(brand) = event.brand {
                    let e = BrandEvent { time: event.time, event_type: event.event_type, age, price: event.price };
                    self.brands.insert(&mut self.scheduled, user, event.user_id, brand, e);
                }
            }
        }
        self.finish_realtime();
    }

    /// New profile records: a user's profile is the record inserted at this time, if any, else
    /// none; users whose profile changed have every age- or region-dependent count re-derived.
    fn change_profiles(&mut self, changes: Updates<ProfileRecord>) {
        let mut incoming: FxHashMap<u64, Option<Profile>> = FxHashMap::default();
        for ((user, record), diff) in updates(changes) {
            if diff > 0 {
                incoming.insert(user, Some(record));
            } else {
                incoming.entry(user).or_insert(None);
            }
        }
        let mut changed: FxHashMap<u64, (Option<Profile>, Option<Profile>)> = FxHashMap::default();
        for (user, new) in incoming {
            let old = self.users.get(&user).and_then(|u| u.profile);
            if old != new {
                let state = self.users.entry(user).or_default();
                state.profile = new;
                if state.is_idle() {
                    self.users.remove(&user);
                }
                changed.insert(user, (old, new));
            }
        }
        let region = |p: &Option<Profile>| p.map_or_else(unknown_symbol, |p| p.region);
        let age = |p: &Option<Profile>, t: Timestamp| age_group(p.and_then(|p| p.birth_date), utc_date(t));
        for (user, (old, new)) in changed {
            // A user without an entry has no products or brands to re-derive.
            let Some(state) = self.users.get_mut(&user) else { continue };
            let scores_out = &mut self.pairs.scores_out;
            state.pairs.for_each_mut(|product, pair| {
                add_scores(scores_out, pair, product, region(&old), -1);
                pair.per_type_age.clear();
                for e in pair.events.iter_mut() {
                    e.age = age(&new, e.time);
                    count(&mut pair.per_type_age, (score_slot(e.event_type), e.age), 1);
                }
                add_scores(scores_out, pair, product, region(&new), 1);
            });
            let brands_out = &mut self.brands.out;
            state.brands.for_each_mut(|brand, brand_state| {
                let events: Vec<BrandEvent> = std::mem::take(&mut brand_state.events).into_vec();
                for e in &events {
                    brand_event(brands_out, brand_state, brand, e, -1);
                }
                for mut e in events {
                    e.age = age(&new, e.time);
                    brand_event(brands_out, brand_state, brand, &e, 1);
                    brand_state.events.push(e);
                }
            });
        }
    }

    /// This time's deltas, without those that sum to zero; the caller empties them.
    fn finish_time(&mut self) -> &mut Emitted {
        let out = &mut self.out;
        out.windows.retain(|(_, sums)| !sums.is_zero());
        // Views and brand activity are only ever added to: never zero.
        let non_zero = |sums: &[i64]| sums.iter().any(|x| *x != 0);
        out.funnel.extend(self.pairs.funnel_out.drain().filter(|(_, s)| non_zero(s)).map(|(k, s)| (k, Sums(s))));
        out.scores.extend(self.pairs.scores_out.drain().filter(|(_, s)| non_zero(s)).map(|(k, s)| (k, Sums(s))));
        // Sent grouped by tally (segment and bucket), so that the tallies downstream take one
        // group after another instead of probing all of them in turn. Any order that groups them
        // will do: this one packs bucket, age group and the region's identity into one number
        // (the map has already added the changes up, so the order only matters for speed).
        out.scores.sort_unstable_by_key(|(((segment, bucket), _), _)| {
            let age = segment.age_group.map_or(0, |a| a as u64 + 1);
            let region = segment.region.map_or(0, |r| r.identity() as u64);
            (bucket << 58) ^ (age << 52) ^ region
        });
        out.brands.extend(self.brands.out.drain().filter(|(_, s)| non_zero(s)).map(|(k, s)| (k, Sums(s))));
        out
    }
}

/// Inserts `item` keeping `items` ordered by `time` (after equal times), returning its index.
/// Events nearly always arrive in time order, so the search starts from the back.
fn insert_in_time_order<A: smallvec::Array>(
    items: &mut SmallVec<A>,
    item: A::Item,
    time: impl Fn(&A::Item) -> Timestamp,
) -> usize {
    let t = time(&item);
    let mut at = items.len();
    while at > 0 && time(&items[at - 1]) > t {
        at -= 1;
    }
    items.insert(at, item);
    at
}

/// Adds `diff` to the count of `key`; true when the count went from or to zero (those transitions
/// are what the stage emits). Lists of counts are short: a few age groups and roles per key.
fn count<K: PartialEq, A: smallvec::Array<Item = (K, u32)>>(counts: &mut SmallVec<A>, key: K, diff: i64) -> bool {
    match counts.iter().position(|(k, _)| *k == key) {
        Some(i) => {
            let count = counts[i].1.checked_add_signed(diff as i32).expect("counts stay non-negative");
            counts[i].1 = count;
            if count == 0 {
                counts.swap_remove(i);
            }
            count == 0
        }
        None => {
            debug_assert!(diff > 0, "a count that is not there is only added to");
            counts.push((key, diff as u32));
            true
        }
    }
}
