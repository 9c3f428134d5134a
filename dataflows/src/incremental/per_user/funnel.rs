//! The per-user stage's share of the funnel (SPEC §3.2): a (user, product) pair's first times per
//! segment, and the user's reach counters per segment, whose changes are the segments' deltas
//! (slots as in [`crate::incremental::deltas::funnel_slots`]).

use rustc_hash::FxHashMap;
use smallvec::SmallVec;

use super::pairs::PairEvent;
use crate::analyses::funnel;
use crate::incremental::deltas::funnel_slots;

/// Per funnel segment (in no order): how many of a user's products reach each funnel bit (see
/// [`reached`]).
pub(super) type Reach = Vec<(funnel::Segment, [u32; 6])>;

/// A pair's funnel first times per segment: three segments (all, category, brand) unless its
/// events disagree on the category or brand, so they fit inline.
pub(super) type FirstTimesBySegment = SmallVec<[(funnel::Segment, funnel::FirstTimes); 3]>;

/// The funnel first times of a pair per segment, ordered by segment, into `per_segment` (filled
/// in place: the caller's buffers are reused, not ~200-byte values returned per call).
pub(super) fn first_times(events: &[PairEvent], per_segment: &mut FirstTimesBySegment) {
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
pub(super) fn record_first_time(per_segment: &mut FirstTimesBySegment, e: &PairEvent) {
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
pub(super) fn change_funnel(
    out: &mut FxHashMap<funnel::Segment, [i64; 12]>,
    reach: &mut Reach,
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
    reach: &mut Reach,
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
            *reach = Vec::new(); // see `Realtime::drop_window`
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
