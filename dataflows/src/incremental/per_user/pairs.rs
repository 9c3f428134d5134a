//! The per-user stage's (user, product) pairs over the last 24 hours, which the funnel (SPEC §3.2,
//! `funnel.rs`) and the recommendations (SPEC §3.3, `scores.rs`) both count from: a pair's events
//! in time order, their insertion and their expiry.

use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};
use smallvec::SmallVec;

use super::funnel::{change_funnel, first_times, record_first_time, FirstTimesBySegment};
use super::scores::count_scores;
use super::{insert_in_time_order, UserState, Visit};
use crate::analyses::funnel;
use crate::incremental::deltas::BucketedKey;
use crate::incremental::types::{Settings, Time};
use crate::model::profile::unknown_symbol;
use crate::model::{AgeGroup, EventType, Symbol, Timestamp};

/// One non-removal event of a (user, product) pair, with the user's age group at its date.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub(super) struct PairEvent {
    pub(super) time: Timestamp,
    pub(super) event_type: EventType,
    pub(super) age: AgeGroup,
    pub(super) category_code: Option<Symbol>,
    pub(super) brand: Option<Symbol>,
}

/// A (user, product) pair over the last 24 hours: its events in time order, and how many of them
/// there are per (type, age group) (the recommendation segments it counts in).
#[derive(Default, Serialize, Deserialize)]
pub(super) struct PairState {
    pub(super) events: SmallVec<[PairEvent; 2]>,
    pub(super) per_type_age: SmallVec<[((u8, AgeGroup), u32); 2]>,
}

/// The funnel's and the recommendations' changes at the current time from the (user, product)
/// pairs of this worker's users over the last 24 hours (kept in [`UserState::pairs`]).
#[derive(Serialize, Deserialize)]
pub(super) struct Pairs {
    pub(super) settings: Settings,
    pub(super) funnel_out: FxHashMap<funnel::Segment, [i64; 12]>,
    /// Changes of distinct viewers, carters and buyers per (segment, bucket, product).
    pub(super) scores_out: FxHashMap<BucketedKey, [i64; 3]>,
    /// Buffers for a pair's first times before and after a change.
    pub(super) first_times: [FirstTimesBySegment; 2],
}

impl Pairs {
    /// A new event of the pair `(user, product)` (of the user `state`): its recommendation
    /// counts, and its funnel change, right away (the funnel sums of a time add up the changes).
    pub(super) fn insert(
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
    pub(super) fn expire(
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
