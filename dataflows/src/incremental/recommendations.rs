//! SPEC §3.3 incrementally: distinct viewers/carters/buyers per (segment, product) over a 24-hour
//! window of events enriched with profiles, then a hierarchical top 10 per segment.

use std::cmp::Reverse;

use super::hashed::reduce;
use super::operators::{expire, sum_by_key, top_k, Sums};
use super::output::Output;
use super::{enrich, Coll, ProfilesByUser, Settings};
use crate::analyses::recommendations::{ProductScore, Segment, TOP_N, WINDOW_LENGTH};
use crate::model::profile::{age_group, UNKNOWN};
use crate::model::time::utc_date;
use crate::model::{Event, EventType, Symbol};

pub fn dataflow<'s>(events: Coll<'s, Event>, profiles: ProfilesByUser<'s>, settings: &Settings) -> Coll<'s, Output> {
    let settings = *settings;
    // Only what the analysis reads: (user, (time, product, type)).
    let slim = events
        .filter(|e| e.event_type != EventType::RemoveFromCart)
        .map(|e| (e.user_id, (e.time, e.product_id, e.event_type)));
    let window = expire(slim, move |(_, (time, _, _))| settings.expiry(*time, WINDOW_LENGTH));
    let demographics = enrich(window, profiles).map(|(user, (time, product, event_type), profile)| {
        let age = age_group(profile.and_then(|p| p.birth_date), utc_date(time));
        let region = profile.map_or_else(|| Symbol::intern(UNKNOWN), |p| p.region);
        ((user, product, event_type), (age, region))
    });
    // The segments each (user, product, type) is seen in: one state entry per triple rather than
    // one per (segment, triple), as its events nearly always share their age group and region.
    let seen = reduce(demographics, "Recommendations: segments seen", |_key, input| {
        let mut segments: Vec<Segment> =
            input.iter().flat_map(|((age, region), _)| Segment::all_of(*age, *region)).collect();
        segments.sort_unstable();
        segments.dedup();
        segments
    })
    .flat_map(|((user, product, event_type), segments)| {
        segments.into_iter().map(move |segment| (segment, product, event_type, user))
    });

    let slot = |t: EventType| match t {
        EventType::View => 0,
        EventType::Cart => 1,
        _ => 2,
    };
    let counts =
        sum_by_key(seen.map(move |(segment, product, t, _user)| ((segment, product), Sums::<3>::unit(slot(t)))));
    let candidates = counts.map(|((segment, product_id), Sums([viewers, carters, buyers]))| {
        let score =
            ProductScore { product_id, viewers: viewers as u64, carters: carters as u64, buyers: buyers as u64 };
        (segment, (Reverse(score.score()), product_id, score))
    });
    top_k(candidates, TOP_N, 64, |(_, product_id, _)| *product_id)
        .map(|(segment, (rank, (_, _, score)))| Output::Recommendation(segment, rank, score))
}
