//! The per-user stage's share of brand performance (SPEC §3.4): a user's (user, brand) pairs over
//! the last 7 days, and the distinct-user memberships whose changes are the (brand, age group)
//! deltas (slots as in [`crate::incremental::deltas::brand_slots`]).

use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};
use smallvec::SmallVec;

use super::{count, insert_in_time_order, UserState, Visit};
use crate::analyses::brands;
use crate::incremental::deltas::brand_slots;
use crate::incremental::types::{Settings, Time};
use crate::model::{AgeGroup, Cents, EventType, Symbol, Timestamp};

/// How many events make a user count per (age group or `*`, distinct-user slot), inline: a user
/// usually counts in two to four.
type Memberships = SmallVec<[((Option<AgeGroup>, u8), u32); 4]>;

/// One event of a (user, brand) over the last 7 days.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub(super) struct BrandEvent {
    pub(super) time: Timestamp,
    pub(super) event_type: EventType,
    pub(super) age: AgeGroup,
    pub(super) price: Cents,
}

/// A (user, brand) over the last 7 days: its events in time order and how many of them make the
/// user count at each (age group, distinct-user slot).
#[derive(Default, Serialize, Deserialize)]
pub(super) struct BrandState {
    pub(super) events: SmallVec<[BrandEvent; 2]>,
    memberships: Memberships,
}

/// Brand performance's changes at the current time from the (user, brand) pairs of this worker's
/// users over the last 7 days (kept in [`UserState::brands`]).
#[derive(Serialize, Deserialize)]
pub(super) struct Brands {
    pub(super) settings: Settings,
    /// Per (brand, age group or `*`), slots as in [`brand_slots`].
    pub(super) out: FxHashMap<(Symbol, Option<AgeGroup>), [i64; 7]>,
}

impl Brands {
    /// A new event of the user `state`'s `brand`: its counts, and the brand's visit if it is the
    /// oldest.
    pub(super) fn insert(
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
    pub(super) fn expire(
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

/// Adds (`diff` = 1) or removes (-1) one event of a (user, brand): its counts and revenue at its
/// age group and at `*`, and the user's distinct-user memberships.
pub(super) fn brand_event(
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
