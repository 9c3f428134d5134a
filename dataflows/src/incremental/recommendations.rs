//! SPEC §3.3 incrementally: the per-user stage emits, per (segment, product), the change in
//! distinct viewers, carters and buyers over the 24-hour window (profiles looked up per user);
//! here they are added up and cut to a hierarchical top 10 per segment.

use std::cmp::Reverse;

use super::operators::{sum_by_key, top_k, Sums};
use super::output::Output;
use super::per_user::Delta;
use super::Coll;
use crate::analyses::recommendations::{ProductScore, TOP_N};

pub fn dataflow<'s>(deltas: Coll<'s, Delta>) -> Coll<'s, Output> {
    let changes = deltas.flat_map(|delta| match delta {
        Delta::Score(segment, product, sums) => Some(((segment, product), sums)),
        _ => None,
    });
    let candidates = sum_by_key(changes).map(|((segment, product_id), Sums([viewers, carters, buyers]))| {
        let score =
            ProductScore { product_id, viewers: viewers as u64, carters: carters as u64, buyers: buyers as u64 };
        (segment, (Reverse(score.score()), product_id, score))
    });
    top_k(candidates, TOP_N, 64, |(_, product_id, _)| *product_id)
        .map(|(segment, (rank, (_, _, score)))| Output::Recommendation(segment, rank, score))
}
