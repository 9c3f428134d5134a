//! SPEC §3.3 incrementally: the per-user stage emits, per (segment, product), the change in
//! distinct viewers, carters and buyers over the 24-hour window (profiles looked up per user);
//! here they are added up and cut to a hierarchical top 10 per segment.

use std::cmp::Reverse;

use super::hashed::{accumulate_least_k, least_k};
use super::operators::{bucket_of, Sums};
use super::output::Output;
use super::Coll;
use crate::analyses::recommendations::{ProductScore, TOP_N};

pub use crate::analyses::recommendations::Segment;

/// Hash buckets per segment: the (*, *) segment's products spread over the workers.
const BUCKETS: u64 = 64;

/// A tally's key: ((segment, hash bucket of the product), product).
pub type BucketedKey = ((Segment, u64), u64);

/// The hash bucket of `product` within its segment.
pub fn bucket(product: u64) -> u64 {
    bucket_of(&product, BUCKETS)
}

/// `changes`: per (segment, bucket, product), the change in distinct viewers, carters and buyers.
pub fn dataflow<'s>(changes: Coll<'s, (BucketedKey, Sums<3>)>) -> Coll<'s, Output> {
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
