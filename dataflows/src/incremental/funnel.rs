//! SPEC §3.2 incrementally: first view/cart/purchase per (segment, user, product) over a 24-hour
//! insert-then-retract window, then per-segment sums carried in the difference field.

use super::hashed::reduce;
use super::operators::{expire, sum_by_key, Sums};
use super::output::Output;
use super::{Coll, Settings};
use crate::analyses::funnel::{segments_of_labels, FirstTimes, FunnelStats, Segment, WINDOW_LENGTH};
use crate::model::{Event, EventType};

// Slots: users per stage (3), users per transition (3), gap sums (3), pair counts (3).
const STAGE_USERS: usize = 0;
const TRANSITION_USERS: usize = 3;
const GAP_SUM: usize = 6;
const GAP_PAIRS: usize = 9;

pub fn dataflow<'s>(events: Coll<'s, Event>, settings: &Settings) -> Coll<'s, Output> {
    let settings = *settings;
    let window = expire(events.filter(|e| e.event_type != EventType::RemoveFromCart), move |e| {
        settings.expiry(e.time, WINDOW_LENGTH)
    });
    // Keyed by (user, product) rather than by (segment, user, product): the events of one pair
    // nearly always share their segments, so this holds and updates a third of the state.
    let stages = window.map(|e| ((e.user_id, e.product_id), (e.time, e.event_type, e.category_code, e.brand)));
    let firsts = reduce(stages, "Funnel: first times", |_key, input| {
        let mut per_segment: Vec<(Segment, FirstTimes)> = Vec::with_capacity(3);
        for ((time, event_type, category_code, brand), _) in input {
            for segment in segments_of_labels(*category_code, *brand) {
                let slot = match per_segment.iter().position(|(s, _)| *s == segment) {
                    Some(i) => i,
                    None => {
                        per_segment.push((segment, FirstTimes::default()));
                        per_segment.len() - 1
                    }
                };
                per_segment[slot].1.record(*event_type, *time);
            }
        }
        per_segment.sort_unstable();
        per_segment
    })
    .flat_map(|((user, product), per_segment)| {
        per_segment.into_iter().map(move |(segment, first)| ((segment, user, product), first))
    });

    let gaps = firsts.clone().flat_map(|((segment, _, _), first)| {
        let mut s = [0; 12];
        for (i, gap) in first.transitions().into_iter().enumerate() {
            if let Some(gap) = gap {
                s[GAP_SUM + i] = gap;
                s[GAP_PAIRS + i] = 1;
            }
        }
        (s[GAP_PAIRS..].iter().any(|n| *n > 0)).then_some((segment, Sums(s)))
    });
    // A user counts once per segment for each stage and transition any of their products reached.
    let reach = firsts.map(|((segment, user, _), first)| ((segment, user), reached(&first)));
    let users = reduce(reach, "Funnel: user reach", |_key, input| input.iter().fold(0u8, |all, (bits, _)| all | *bits))
        .map(|((segment, _user), bits)| {
            let mut s = [0; 12];
            for (i, slot) in s.iter_mut().take(6).enumerate() {
                *slot = i64::from(bits >> i & 1);
            }
            (segment, Sums(s))
        });

    sum_by_key(gaps.concat(users)).map(|(segment, Sums(s))| {
        let stats = FunnelStats {
            users_viewed: s[STAGE_USERS] as u64,
            users_carted: s[STAGE_USERS + 1] as u64,
            users_purchased: s[STAGE_USERS + 2] as u64,
            users_transition: std::array::from_fn(|i| s[TRANSITION_USERS + i] as u64),
            gap_sum_s: std::array::from_fn(|i| s[GAP_SUM + i]),
            gap_pairs: std::array::from_fn(|i| s[GAP_PAIRS + i] as u64),
        };
        Output::Funnel(segment, stats)
    })
}

/// Bits 0–2: viewed, carted, purchased; bits 3–5: view→cart, cart→purchase, view→purchase.
fn reached(first: &FirstTimes) -> u8 {
    let mut bits = 0;
    for (i, time) in [first.view, first.cart, first.purchase].into_iter().enumerate() {
        bits |= u8::from(time.is_some()) << i;
    }
    for (i, gap) in first.transitions().into_iter().enumerate() {
        bits |= u8::from(gap.is_some()) << (3 + i);
    }
    bits
}
