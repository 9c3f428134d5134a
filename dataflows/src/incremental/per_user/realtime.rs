//! The per-user stage's share of the realtime windows (SPEC §3.1): a user's active minutes, and
//! what this worker has added to each open window's totals, retracted when the window is final.

use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};

use super::{Emitted, UserStage, UserState, Visit};
use crate::analyses::realtime::{window_starts, SLIDE, WINDOW_LENGTH};
use crate::incremental::deltas::window_slots;
use crate::incremental::operators::Sums;
use crate::model::time::floor_to;
use crate::model::{Event, EventType, Symbol, Timestamp};

/// The realtime windows' share of this worker: what it has added to each open window's totals
/// (retracted when the window is final, so the downstream sums return to zero), and which users
/// were active in each minute (a user counts once per window; its minutes are in [`UserState`]).
/// Views and brand activity per minute are sent once and never retracted: the tops forget a
/// window's tally themselves once it is final (see [`crate::incremental::realtime`]).
#[derive(Default, Serialize, Deserialize)]
pub(super) struct Realtime {
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
    pub(super) fn drop_window(&mut self, start: Timestamp, users: &mut FxHashMap<u64, UserState>, out: &mut Emitted) {
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

impl UserStage {
    /// One event's share of the realtime windows (`minutes`: its user's).
    pub(super) fn realtime_event(rt: &mut Realtime, minutes: &mut Vec<(Timestamp, bool)>, event: &Event) {
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
    pub(super) fn finish_realtime(&mut self) {
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
