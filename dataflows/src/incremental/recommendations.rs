//! SPEC §3.3 incrementally: the per-user stage emits, per (segment, product), the change in
//! distinct viewers, carters and buyers over the 24-hour window (profiles looked up per user);
//! here they are added up and cut to a hierarchical top 10 per segment.

use std::cmp::Reverse;

use super::current_state::{accumulate_least_k, least_k};
use super::deltas::ScoreDelta;
use super::operators::Sums;
use super::output::Output;
use super::types::Coll;
use crate::analyses::recommendations::{ProductScore, TOP_N};

/// `changes`: per (segment, bucket, product), the change in distinct viewers, carters and buyers.
pub fn dataflow<'s>(changes: Coll<'s, ScoreDelta>) -> Coll<'s, Output> {
    // Tallied and cut to the top 10 in one step per (segment, hash bucket of the product), then the
    // buckets' winners ranked per segment: the hierarchical top-k of dataflows/README.md.
    let winners = accumulate_least_k(
        changes,
        TOP_N,
        false,
        "Recommendations: tally and bucket top",
        |product, sums| {
            let Sums([viewers, carters, buyers]) = *sums;
            let score = ProductScore {
                product_id: *product,
                viewers: viewers as u64,
                carters: carters as u64,
                buyers: buyers as u64,
            };
            (Reverse(score.score()), *product, score)
        },
        |_| None,
    );
    least_k(winners.map(|((segment, _bucket), (_, value))| (segment, value)), TOP_N, true, "Recommendations: rank")
        .map(|(segment, (rank, (_, _, score)))| Output::Recommendation(segment, rank, score))
}
