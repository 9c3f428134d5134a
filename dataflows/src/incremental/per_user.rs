//! The per-user stage: the windowed, per-user state of the realtime windows, the funnel, the
//! recommendations and brand performance in one operator, which emits only aggregate deltas.
//!
//! All four analyses count things per user: distinct users per window, first times per
//! (user, product), distinct viewers per (user, product, type), distinct users per (user, brand).
//! Events and profiles are routed by user once, so each worker holds whole users: the profile
//! "join" is a local hash lookup, a window's events are kept once (per (user, product) for 24 hours,
//! per (user, brand) for 7 days, per user the active minutes of open realtime windows) and leave it
//! by the operator's own schedule, and what leaves the operator is a delta per aggregate key, summed
//! over all users of the worker at each time, on one typed output per analysis input ([`Deltas`]).
//! Downstream, `sum_by_key` and the top-k tallies add up the workers' deltas.
//!
//! Times are handled like [`super::hashed`]: updates wait under their capabilities until the input
//! frontiers pass their time, then each time is applied whole, in time order: profile changes,
//! then window expiries, then new events. Expiries due before the next step boundary join the
//! time being applied, since nothing observes results between boundaries ("Visits join the step"
//! in dataflows/README.md).

use std::collections::BTreeMap;

use differential_dataflow::difference::IsZero;
use differential_dataflow::{AsCollection, Hashable};
use rustc_hash::FxHashMap;
use smallvec::SmallVec;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::operators::Capability;

use super::hashed::{file_by_time, updates, Updates};
use super::operators::Sums;
use super::recommendations as recs;
use super::user_keyed::UserKeyed;
use super::{Coll, Diff, ProfileRecord, Settings, StepEnds, Time};
use crate::analyses::realtime::{window_starts, SLIDE, WINDOW_LENGTH};
use crate::analyses::{brands, funnel};
use crate::model::profile::{age_group, unknown_symbol};
use crate::model::time::{floor_to, utc_date};
use crate::model::{AgeGroup, Cents, Event, EventType, Profile, Symbol, Timestamp};

/// Slots of a funnel segment's sums: users per stage (3), users per transition (3), gap sums (3)
/// and gap pair counts (3).
pub mod funnel_slots {
    pub const STAGE_USERS: usize = 0;
    pub const TRANSITION_USERS: usize = 3;
    pub const GAP_SUM: usize = 6;
    pub const GAP_PAIRS: usize = 9;
}

/// Slots of a (brand, age group) aggregate.
pub mod brand_slots {
    pub const USERS: usize = 0;
    pub const VIEWS: usize = 1;
    pub const CARTS: usize = 2;
    pub const PURCHASES: usize = 3;
    pub const REVENUE: usize = 4;
    pub const VIEWERS: usize = 5;
    pub const BUYERS: usize = 6;
}

/// Slots of a realtime window's totals.
pub mod window_slots {
    pub const EVENTS: usize = 0;
    /// Four slots, by `EventType::index()`.
    pub const BY_TYPE: usize = 1;
    pub const REVENUE: usize = 5;
    pub const USERS: usize = 6;
    pub const BUYERS: usize = 7;
}

/// What the stage emits at one time, per analysis: changes of aggregates, each summed over the
/// users of the worker.
#[derive(Default)]
struct Emitted {
    /// A realtime window's totals, slots as in [`window_slots`].
    windows: Vec<(Timestamp, Sums<8>)>,
    /// A product's views and their price sum in one minute.
    minute_views: Vec<((Timestamp, u64), Sums<2>)>,
    /// A brand's events, views, carts, purchases and revenue in one minute.
    minute_brands: Vec<((Timestamp, Symbol), Sums<5>)>,
    /// A funnel segment's sums, slots as in [`funnel_slots`].
    funnel: Vec<(funnel::Segment, Sums<12>)>,
    /// Distinct viewers, carters and buyers of a product in a segment, keyed by
    /// ((segment, hash bucket of the product), product) as the recommendations' tallies are.
    scores: Vec<(recs::BucketedKey, Sums<3>)>,
    /// A brand at an age group (`None` = `*`), slots as in [`brand_slots`].
    brands: Vec<((Symbol, Option<AgeGroup>), Sums<7>)>,
}

/// Work a key has at a later time: its oldest events leave their window.
#[derive(Clone, Copy, Debug)]
enum Visit {
    Pair(u64, u64),
    Brand(u64, Symbol),
    /// The realtime window starting at this minute is final: its totals and the minute's data
    /// leave.
    Window(Timestamp),
}

/// The per-user stage's output: one collection of deltas per analysis input, each typed and sent
/// on its own output (records of 24 to 104 bytes, not all of the widest kind).
pub struct Deltas<'s> {
    pub windows: Coll<'s, (Timestamp, Sums<8>)>,
    pub minute_views: Coll<'s, ((Timestamp, u64), Sums<2>)>,
    pub minute_brands: Coll<'s, ((Timestamp, Symbol), Sums<5>)>,
    pub funnel: Coll<'s, (funnel::Segment, Sums<12>)>,
    pub scores: Coll<'s, (recs::BucketedKey, Sums<3>)>,
    pub brands: Coll<'s, ((Symbol, Option<AgeGroup>), Sums<7>)>,
}

/// A capability per output, all at one time.
type Capabilities = [Capability<Time>; OUTPUTS];
const OUTPUTS: usize = 6;

/// What waits for the frontier per time, with the capabilities to answer at that time.
type Waiting<W> = BTreeMap<Time, (Capabilities, W)>;

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
    builder.build(move |_initial| {
        let mut stage = UserStage::new(settings);
        let mut waiting_events: Waiting<Updates<Event>> = BTreeMap::new();
        let mut waiting_profiles: Waiting<Updates<ProfileRecord>> = BTreeMap::new();
        let mut visits: Waiting<Vec<Visit>> = BTreeMap::new();
        move |frontiers| {
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
                if let Some((c, visits_now)) = visits.remove(&time) {
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
                    let (at, (_, visits_then)) = entry.remove_entry();
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
                        let slot = visits
                            .entry(at)
                            .or_insert_with(|| (std::array::from_fn(|port| caps[port].delayed(&at)), Vec::new()));
                        slot.1.push(visit);
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

/// One non-removal event of a (user, product) pair, with the user's age group at its date.
#[derive(Clone, Copy, Debug)]
struct PairEvent {
    time: Timestamp,
    event_type: EventType,
    age: AgeGroup,
    category_code: Option<Symbol>,
    brand: Option<Symbol>,
}

/// A (user, product) pair over the last 24 hours: its events in time order, and how many of them
/// there are per (type, age group) (the recommendation segments it counts in).
#[derive(Default)]
struct PairState {
    events: SmallVec<[PairEvent; 2]>,
    per_type_age: SmallVec<[((u8, AgeGroup), u32); 2]>,
}

/// How many events make a user count per (age group or `*`, distinct-user slot), inline: a user
/// usually counts in two to four.
type Memberships = SmallVec<[((Option<AgeGroup>, u8), u32); 4]>;

/// One event of a (user, brand) over the last 7 days.
#[derive(Clone, Copy, Debug)]
struct BrandEvent {
    time: Timestamp,
    event_type: EventType,
    age: AgeGroup,
    price: Cents,
}

/// A (user, brand) over the last 7 days: its events in time order and how many of them make the
/// user count at each (age group, distinct-user slot).
#[derive(Default)]
struct BrandState {
    events: SmallVec<[BrandEvent; 2]>,
    memberships: Memberships,
}

/// What the stage keeps per user of this worker, in one entry so that an event, a visit or a
/// pair's funnel change costs one probe for all of it. A user without profile, open minutes,
/// reach, products or brands has no entry.
#[derive(Default)]
struct UserState {
    profile: Option<Profile>,
    /// The minutes with events (and whether one was a purchase), until their windows are final.
    minutes: Vec<(Timestamp, bool)>,
    /// Per funnel segment (in no order): how many of the user's products reach each funnel bit
    /// (see [`reached`]).
    reach: Vec<(funnel::Segment, [u32; 6])>,
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

struct UserStage {
    settings: Settings,
    users: FxHashMap<u64, UserState>,
    pairs: Pairs,
    brands: Brands,
    /// Visits to schedule, filled by `apply`.
    scheduled: Vec<(Time, Visit)>,
    realtime: Realtime,
    /// This time's deltas, ready to emit: the realtime ones go here directly, the others are
    /// summed per key in `pairs` and `brands` first.
    out: Emitted,
}

/// The realtime windows' share of this worker: what it has added to each open window's totals
/// (retracted when the window is final, so the downstream sums return to zero), and which users
/// were active in each minute (a user counts once per window; its minutes are in [`UserState`]).
/// Views and brand activity per minute are sent once and never retracted: the tops forget a
/// window's tally themselves once it is final (see `realtime.rs`).
#[derive(Default)]
struct Realtime {
    windows: FxHashMap<Timestamp, [i64; 8]>,
    /// Per minute, the users holding it in their `minutes`.
    minute_users: FxHashMap<Timestamp, Vec<u64>>,
    /// Changes at the current time: totals per minute (fanned out to windows at the end), distinct
    /// users and buyers per window, views and brand activity per minute.
    minute_totals_out: FxHashMap<Timestamp, [i64; 6]>,
    users_out: FxHashMap<Timestamp, [i64; 2]>,
    /// One change per view and per event with a brand, added up by sorting at the end of the
    /// time, so that they leave in minute order and the tops downstream work on a few windows at
    /// once (for brand activity, a map plus a sort of its output measured the same).
    views_out: Vec<((Timestamp, u64), [i64; 2])>,
    brands_out: Vec<((Timestamp, Symbol), [i64; 5])>,
}

impl Realtime {
    /// A user active at `minute` (buying if `purchase`): counts once more in each window
    /// containing the minute where the user had no other active (buying) minute.
    fn activity(&mut self, user: u64, minutes: &mut Vec<(Timestamp, bool)>, minute: Timestamp, purchase: bool) {
        let (known, bought) = match minutes.iter().position(|(m, _)| *m == minute) {
            Some(i) => (true, minutes[i].1),
            None => (false, false),
        };
        if known && (bought || !purchase) {
            return;
        }
        for start in window_starts(minute) {
            let others = |buyer: bool| {
                minutes.iter().any(|(m, b)| *m != minute && *m >= start && *m < start + WINDOW_LENGTH && (*b || !buyer))
            };
            let counts = self.users_out.entry(start).or_default();
            if !known && !others(false) {
                counts[0] += 1;
            }
            if purchase && !others(true) {
                counts[1] += 1;
            }
        }
        match minutes.iter_mut().find(|(m, _)| *m == minute) {
            Some(entry) => entry.1 = true,
            None => {
                minutes.push((minute, purchase));
                self.minute_users.entry(minute).or_default().push(user);
            }
        }
    }

    /// The window starting at `start` is final: what this worker added to its totals is retracted;
    /// users forget its first minute.
    fn drop_window(&mut self, start: Timestamp, users: &mut FxHashMap<u64, UserState>, out: &mut Emitted) {
        if let Some(held) = self.windows.remove(&start) {
            out.windows.push((start, Sums(held.map(|x| -x))));
        }
        for user in self.minute_users.remove(&start).unwrap_or_default() {
            if let Some(state) = users.get_mut(&user) {
                state.minutes.retain(|(m, _)| *m != start);
                if state.minutes.is_empty() {
                    // Users with a profile stay: an idle one must not keep its lists' memory.
                    state.minutes = Vec::new();
                }
                if state.is_idle() {
                    users.remove(&user);
                }
            }
        }
    }
}

fn score_slot(event_type: EventType) -> u8 {
    match event_type {
        EventType::View => 0,
        EventType::Cart => 1,
        _ => 2,
    }
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

    /// One event's share of the realtime windows (`minutes`: its user's).
    fn realtime_event(rt: &mut Realtime, minutes: &mut Vec<(Timestamp, bool)>, event: &Event) {
        use window_slots::{BY_TYPE, EVENTS, REVENUE};
        let minute = floor_to(event.time, SLIDE);
        let totals = rt.minute_totals_out.entry(minute).or_default();
        totals[EVENTS] += 1;
        totals[BY_TYPE + event.event_type.index()] += 1;
        let purchase = event.event_type == EventType::Purchase;
        if purchase {
            totals[REVENUE] += event.price;
        }
        rt.activity(event.user_id, minutes, minute, purchase);
        if event.event_type == EventType::View {
            rt.views_out.push(((minute, event.product_id), [1, event.price]));
        }
        if let Some(brand) = event.brand {
            let activity = match event.event_type {
                EventType::View => [1, 1, 0, 0, 0],
                EventType::Cart => [1, 0, 1, 0, 0],
                EventType::Purchase => [1, 0, 0, 1, event.price],
                EventType::RemoveFromCart => [1, 0, 0, 0, 0],
            };
            rt.brands_out.push(((minute, brand), activity));
        }
    }

    /// Turns the realtime changes of this time into window and minute deltas, remembering the
    /// window totals for their retraction when each window is final.
    fn finish_realtime(&mut self) {
        use window_slots::{BUYERS, USERS};
        let rt = &mut self.realtime;
        let mut window_changes: FxHashMap<Timestamp, [i64; 8]> = FxHashMap::default();
        for (minute, totals) in rt.minute_totals_out.drain() {
            for start in window_starts(minute) {
                let sums = window_changes.entry(start).or_default();
                for (sum, total) in sums.iter_mut().zip(totals) {
                    *sum += total;
                }
            }
        }
        for (start, [users, buyers]) in rt.users_out.drain() {
            let sums = window_changes.entry(start).or_default();
            sums[USERS] += users;
            sums[BUYERS] += buyers;
        }
        for (start, change) in window_changes {
            let held = rt.windows.entry(start).or_insert_with(|| {
                // On the retire grid, which the driver always closes: the window is seen final
                // (and frozen by the materializer) before its totals leave.
                let drop_at = self.settings.retire_at_or_after(start + WINDOW_LENGTH + self.settings.lateness);
                self.scheduled.push((drop_at, Visit::Window(start)));
                [0; 8]
            });
            for (h, c) in held.iter_mut().zip(change) {
                *h += c;
            }
            self.out.windows.push((start, Sums(change)));
        }
        rt.views_out.sort_unstable_by_key(|(key, _)| *key);
        sum_runs(&mut rt.views_out, &mut self.out.minute_views);
        // Brands by identity within a minute (any order that groups equal keys will do).
        rt.brands_out.sort_unstable_by_key(|((minute, brand), _)| (*minute, brand.identity()));
        sum_runs(&mut rt.brands_out, &mut self.out.minute_brands);
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

/// The funnel's and the recommendations' changes at the current time from the (user, product)
/// pairs of this worker's users over the last 24 hours (kept in [`UserState::pairs`]).
struct Pairs {
    settings: Settings,
    funnel_out: FxHashMap<funnel::Segment, [i64; 12]>,
    /// Changes of distinct viewers, carters and buyers per (segment, bucket, product).
    scores_out: FxHashMap<recs::BucketedKey, [i64; 3]>,
    /// Buffers for a pair's first times before and after a change.
    first_times: [FirstTimesBySegment; 2],
}

impl Pairs {
    /// A new event of the pair `(user, product)` (of the user `state`): its recommendation
    /// counts, and its funnel change, right away (the funnel sums of a time add up the changes).
    fn insert(
        &mut self,
        scheduled: &mut Vec<(Time, Visit)>,
        state: &mut UserState,
        user: u64,
        product: u64,
        e: PairEvent,
        region: Symbol,
    ) {
        let UserState { pairs, reach, .. } = state;
        let pair = pairs.get_or_default(product);
        // An event after one of the same type and labels moves no first time: no funnel change
        // (a quarter of all events).
        let same_first_times = pair.events.iter().any(|x| {
            x.event_type == e.event_type && x.time <= e.time && x.category_code == e.category_code && x.brand == e.brand
        });
        if !same_first_times {
            // First times only move towards earlier times as events arrive: after = before with
            // `e` recorded.
            let [before, after] = &mut self.first_times;
            first_times(&pair.events, before);
            after.clone_from(before);
            record_first_time(after, &e);
            after.sort_unstable_by_key(|(segment, _)| *segment);
            change_funnel(&mut self.funnel_out, reach, before, after);
        }
        let at = insert_in_time_order(&mut pair.events, e, |e| e.time);
        if at == 0 {
            scheduled.push((self.settings.expiry(e.time, funnel::WINDOW_LENGTH), Visit::Pair(user, product)));
        }
        count_scores(&mut self.scores_out, &mut pair.per_type_age, product, e, region, 1);
    }

    /// The pair's events that leave the window at `time`.
    fn expire(
        &mut self,
        scheduled: &mut Vec<(Time, Visit)>,
        users: &mut FxHashMap<u64, UserState>,
        time: Time,
        user: u64,
        product: u64,
    ) {
        let Some(state) = users.get_mut(&user) else { return };
        let UserState { profile, reach, pairs, .. } = state;
        let Some(pair) = pairs.get_mut(&product) else { return };
        let window = funnel::WINDOW_LENGTH;
        let settings = self.settings;
        let expired = pair.events.iter().take_while(|e| settings.expiry(e.time, window) <= time).count();
        if expired == 0 {
            return; // an earlier visit at this time took them
        }
        let [before, after] = &mut self.first_times;
        first_times(&pair.events, before);
        let region = profile.map_or_else(unknown_symbol, |p| p.region);
        for e in pair.events.drain(..expired) {
            count_scores(&mut self.scores_out, &mut pair.per_type_age, product, e, region, -1);
        }
        first_times(&pair.events, after);
        match pair.events.first() {
            Some(e) => scheduled.push((settings.expiry(e.time, window), Visit::Pair(user, product))),
            None => pairs.remove(&product),
        }
        if before != after {
            change_funnel(&mut self.funnel_out, reach, before, after);
        }
        if state.is_idle() {
            users.remove(&user);
        }
    }
}

/// Brand performance's changes at the current time from the (user, brand) pairs of this worker's
/// users over the last 7 days (kept in [`UserState::brands`]).
struct Brands {
    settings: Settings,
    /// Per (brand, age group or `*`), slots as in [`brand_slots`].
    out: FxHashMap<(Symbol, Option<AgeGroup>), [i64; 7]>,
}

impl Brands {
    /// A new event of the user `state`'s `brand`: its counts, and the brand's visit if it is the
    /// oldest.
    fn insert(
        &mut self,
        scheduled: &mut Vec<(Time, Visit)>,
        state: &mut UserState,
        user: u64,
        brand: Symbol,
        e: BrandEvent,
    ) {
        let brand_state = state.brands.get_or_default(brand);
        brand_event(&mut self.out, brand_state, brand, &e, 1);
        if insert_in_time_order(&mut brand_state.events, e, |e| e.time) == 0 {
            scheduled.push((self.settings.expiry(e.time, brands::WINDOW_LENGTH), Visit::Brand(user, brand)));
        }
    }

    /// The events of the user's `brand` that leave the 7-day window at `time`.
    fn expire(
        &mut self,
        scheduled: &mut Vec<(Time, Visit)>,
        users: &mut FxHashMap<u64, UserState>,
        time: Time,
        user: u64,
        brand: Symbol,
    ) {
        let Some(state) = users.get_mut(&user) else { return };
        let Some(brand_state) = state.brands.get_mut(&brand) else { return };
        let window = brands::WINDOW_LENGTH;
        let settings = self.settings;
        let expired = brand_state.events.iter().take_while(|e| settings.expiry(e.time, window) <= time).count();
        if expired == 0 {
            return;
        }
        let gone: SmallVec<[BrandEvent; 2]> = brand_state.events.drain(..expired).collect();
        for e in &gone {
            brand_event(&mut self.out, brand_state, brand, e, -1);
        }
        match brand_state.events.first() {
            Some(e) => scheduled.push((settings.expiry(e.time, window), Visit::Brand(user, brand))),
            None => {
                state.brands.remove(&brand);
                if state.is_idle() {
                    users.remove(&user);
                }
            }
        }
    }
}

/// Moves `changes` (sorted: equal keys adjacent) to `out`, one record per key with the changes
/// added up.
fn sum_runs<K: PartialEq, const N: usize>(changes: &mut Vec<(K, [i64; N])>, out: &mut Vec<(K, Sums<N>)>) {
    for (key, change) in changes.drain(..) {
        match out.last_mut() {
            Some((last, Sums(sums))) if *last == key => {
                for (sum, c) in sums.iter_mut().zip(change) {
                    *sum += c;
                }
            }
            _ => out.push((key, Sums(change))),
        }
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

fn score(
    out: &mut FxHashMap<recs::BucketedKey, [i64; 3]>,
    segment: recs::Segment,
    bucket: u64,
    product: u64,
    slot: u8,
    diff: i64,
) {
    out.entry(((segment, bucket), product)).or_default()[slot as usize] += diff;
}

/// Counts one event of a pair in (`diff` = 1) or out (-1) of the recommendation segments: the
/// pair counts in (age, region) and (age, *) while it has an event of the type at that age group,
/// and in (*, *) while it has one of the type at any age group.
fn count_scores(
    out: &mut FxHashMap<recs::BucketedKey, [i64; 3]>,
    per_type_age: &mut SmallVec<[((u8, AgeGroup), u32); 2]>,
    product: u64,
    e: PairEvent,
    region: Symbol,
    diff: i64,
) {
    let slot = score_slot(e.event_type);
    if count(per_type_age, (slot, e.age), diff) {
        let bucket = recs::bucket(product);
        for segment in &recs::Segment::all_of(e.age, region)[..2] {
            score(out, *segment, bucket, product, slot, diff);
        }
        // (*, *) changes when the type's first age group arrives or its last one leaves.
        let ages_of_type = per_type_age.iter().filter(|((s, _), _)| *s == slot).count();
        if ages_of_type == usize::from(diff > 0) {
            score(out, recs::Segment { age_group: None, region: None }, bucket, product, slot, diff);
        }
    }
}

/// Every segment a pair counts in, `diff` times (see [`count_scores`]).
fn add_scores(
    out: &mut FxHashMap<recs::BucketedKey, [i64; 3]>,
    pair: &PairState,
    product: u64,
    region: Symbol,
    diff: i64,
) {
    let bucket = recs::bucket(product);
    for slot in 0..3 {
        if pair.per_type_age.iter().any(|((s, _), _)| *s == slot) {
            score(out, recs::Segment { age_group: None, region: None }, bucket, product, slot, diff);
        }
    }
    for ((slot, age), _) in &pair.per_type_age {
        for segment in &recs::Segment::all_of(*age, region)[..2] {
            score(out, *segment, bucket, product, *slot, diff);
        }
    }
}

/// A pair's funnel first times per segment: three segments (all, category, brand) unless its
/// events disagree on the category or brand, so they fit inline.
type FirstTimesBySegment = SmallVec<[(funnel::Segment, funnel::FirstTimes); 3]>;

/// The funnel first times of a pair per segment, ordered by segment, into `per_segment` (filled
/// in place: the caller's buffers are reused, not ~200-byte values returned per call).
fn first_times(events: &[PairEvent], per_segment: &mut FirstTimesBySegment) {
    per_segment.clear();
    let Some(first) = events.first() else { return };
    if events.iter().all(|e| e.category_code == first.category_code && e.brand == first.brand) {
        // Nearly always: one product's events carry one category and brand, so every segment sees
        // all of them and has the same first times.
        let mut times = funnel::FirstTimes::default();
        for e in events {
            times.record(e.event_type, e.time);
        }
        per_segment.extend(funnel::segments_of_labels(first.category_code, first.brand).map(|s| (s, times)));
    } else {
        for e in events {
            record_first_time(per_segment, e);
        }
    }
    per_segment.sort_unstable_by_key(|(segment, _)| *segment);
}

/// Records `e` in the first times of each of its segments (unordered).
fn record_first_time(per_segment: &mut FirstTimesBySegment, e: &PairEvent) {
    for segment in funnel::segments_of_labels(e.category_code, e.brand) {
        let slot = match per_segment.iter().position(|(s, _)| *s == segment) {
            Some(i) => i,
            None => {
                per_segment.push((segment, funnel::FirstTimes::default()));
                per_segment.len() - 1
            }
        };
        per_segment[slot].1.record(e.event_type, e.time);
    }
}

/// Turns one pair's change of first times (both ordered by segment) into segment deltas: its
/// gaps, and its reach bits through the user's per-segment counters (a user counts once per
/// segment and bit). Segments whose first times did not change are left alone.
fn change_funnel(
    out: &mut FxHashMap<funnel::Segment, [i64; 12]>,
    reach: &mut Vec<(funnel::Segment, [u32; 6])>,
    before: &[(funnel::Segment, funnel::FirstTimes)],
    after: &[(funnel::Segment, funnel::FirstTimes)],
) {
    let (mut b, mut a) = (before.iter().peekable(), after.iter().peekable());
    loop {
        let (segment, old, new) = match (b.peek(), a.peek()) {
            (None, None) => return,
            (Some((sb, _)), Some((sa, _))) if sb == sa => {
                let ((segment, old), (_, new)) = (b.next().unwrap(), a.next().unwrap());
                if old == new {
                    continue;
                }
                (*segment, Some(old), Some(new))
            }
            (Some((sb, _)), Some((sa, _))) if sb > sa => {
                let (segment, new) = a.next().unwrap();
                (*segment, None, Some(new))
            }
            (Some(_), _) => {
                let (segment, old) = b.next().unwrap();
                (*segment, Some(old), None)
            }
            (None, Some(_)) => {
                let (segment, new) = a.next().unwrap();
                (*segment, None, Some(new))
            }
        };
        change_segment(out, reach, segment, old, new);
    }
}

/// One segment's part of [`change_funnel`].
fn change_segment(
    out: &mut FxHashMap<funnel::Segment, [i64; 12]>,
    reach: &mut Vec<(funnel::Segment, [u32; 6])>,
    segment: funnel::Segment,
    old: Option<&funnel::FirstTimes>,
    new: Option<&funnel::FirstTimes>,
) {
    use funnel_slots::{GAP_PAIRS, GAP_SUM};
    let sums = out.entry(segment).or_default();
    for (first, diff) in [(old, -1), (new, 1)] {
        for (i, gap) in first.map_or([None; 3], |f| f.transitions()).into_iter().enumerate() {
            if let Some(gap) = gap {
                sums[GAP_SUM + i] += diff * gap;
                sums[GAP_PAIRS + i] += diff;
            }
        }
    }
    let (was, is) = (old.map_or(0, reached), new.map_or(0, reached));
    if was == is {
        return;
    }
    // A scan comparing interned symbols by address: cheaper than ordering them by their text.
    let at = match reach.iter().position(|(s, _)| *s == segment) {
        Some(at) => at,
        None => {
            reach.push((segment, [0; 6]));
            reach.len() - 1
        }
    };
    let counts = &mut reach[at].1;
    for (bit, count) in counts.iter_mut().enumerate() {
        match (was >> bit & 1, is >> bit & 1) {
            (0, 1) => {
                *count += 1;
                if *count == 1 {
                    sums[bit] += 1;
                }
            }
            (1, 0) => {
                *count -= 1;
                if *count == 0 {
                    sums[bit] -= 1;
                }
            }
            _ => {}
        }
    }
    if counts.iter().all(|c| *c == 0) {
        reach.swap_remove(at);
        if reach.is_empty() {
            *reach = Vec::new(); // see `drop_window`
        }
    }
}

/// Bits 0–2: viewed, carted, purchased; bits 3–5: view→cart, cart→purchase, view→purchase (the
/// funnel's slots `STAGE_USERS` and `TRANSITION_USERS`).
fn reached(first: &funnel::FirstTimes) -> u8 {
    let mut bits = 0;
    for (i, time) in [first.view, first.cart, first.purchase].into_iter().enumerate() {
        bits |= u8::from(time.is_some()) << i;
    }
    for (i, gap) in first.transitions().into_iter().enumerate() {
        bits |= u8::from(gap.is_some()) << (3 + i);
    }
    bits
}

/// Adds (`diff` = 1) or removes (-1) one event of a (user, brand): its counts and revenue at its
/// age group and at `*`, and the user's distinct-user memberships.
fn brand_event(
    out: &mut FxHashMap<(Symbol, Option<AgeGroup>), [i64; 7]>,
    state: &mut BrandState,
    brand: Symbol,
    e: &BrandEvent,
    diff: i64,
) {
    use brand_slots::{BUYERS, CARTS, PURCHASES, REVENUE, USERS, VIEWERS, VIEWS};
    let (count_slot, role) = match e.event_type {
        EventType::View => (Some(VIEWS), Some(VIEWERS)),
        EventType::Cart => (Some(CARTS), None),
        EventType::Purchase => (Some(PURCHASES), Some(BUYERS)),
        EventType::RemoveFromCart => (None, None),
    };
    for age in [Some(e.age), None] {
        let sums = out.entry((brand, age)).or_default();
        if let Some(slot) = count_slot {
            sums[slot] += diff;
        }
        if e.event_type == EventType::Purchase {
            sums[REVENUE] += diff * e.price;
        }
        for slot in [Some(USERS), role].into_iter().flatten() {
            if count(&mut state.memberships, (age, slot as u8), diff) {
                sums[slot] += diff;
            }
        }
    }
}
