//! The per-user stage's share of the recommendations (SPEC §3.3): the segments a (user, product)
//! pair counts in per event type, whose changes are the distinct viewers, carters and buyers per
//! (segment, bucket, product) ([`crate::incremental::deltas::ScoreDelta`]).

use rustc_hash::FxHashMap;
use smallvec::SmallVec;

use super::count;
use super::pairs::{PairEvent, PairState};
use crate::analyses::recommendations::Segment;
use crate::incremental::deltas::{bucket, BucketedKey};
use crate::model::{AgeGroup, EventType, Symbol};

/// The score slot of an event type: viewers, carters, buyers.
pub(super) fn score_slot(event_type: EventType) -> u8 {
    match event_type {
        EventType::View => 0,
        EventType::Cart => 1,
        _ => 2,
    }
}

fn score(out: &mut FxHashMap<BucketedKey, [i64; 3]>, segment: Segment, bucket: u64, product: u64, slot: u8, diff: i64) {
    out.entry(((segment, bucket), product)).or_default()[slot as usize] += diff;
}

/// Counts one event of a pair in (`diff` = 1) or out (-1) of the recommendation segments: the
/// pair counts in (age, region) and (age, *) while it has an event of the type at that age group,
/// and in (*, *) while it has one of the type at any age group.
pub(super) fn count_scores(
    out: &mut FxHashMap<BucketedKey, [i64; 3]>,
    per_type_age: &mut SmallVec<[((u8, AgeGroup), u32); 2]>,
    product: u64,
    e: PairEvent,
    region: Symbol,
    diff: i64,
) {
    let slot = score_slot(e.event_type);
    if count(per_type_age, (slot, e.age), diff) {
        let bucket = bucket(product);
        for segment in &Segment::all_of(e.age, region)[..2] {
            score(out, *segment, bucket, product, slot, diff);
        }
        // (*, *) changes when the type's first age group arrives or its last one leaves.
        let ages_of_type = per_type_age.iter().filter(|((s, _), _)| *s == slot).count();
        if ages_of_type == usize::from(diff > 0) {
            score(out, Segment { age_group: None, region: None }, bucket, product, slot, diff);
        }
    }
}

/// Every segment a pair counts in, `diff` times (see [`count_scores`]).
pub(super) fn add_scores(
    out: &mut FxHashMap<BucketedKey, [i64; 3]>,
    pair: &PairState,
    product: u64,
    region: Symbol,
    diff: i64,
) {
    let bucket = bucket(product);
    for slot in 0..3 {
        if pair.per_type_age.iter().any(|((s, _), _)| *s == slot) {
            score(out, Segment { age_group: None, region: None }, bucket, product, slot, diff);
        }
    }
    for ((slot, age), _) in &pair.per_type_age {
        for segment in &Segment::all_of(*age, region)[..2] {
            score(out, *segment, bucket, product, *slot, diff);
        }
    }
}
