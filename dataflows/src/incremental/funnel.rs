//! SPEC §3.2 incrementally: the per-user stage keeps first view/cart/purchase per (user, product)
//! over the 24-hour window and emits per-segment deltas of the users per stage and transition and
//! of the gap sums; here they are added up per segment.

use super::deltas::funnel_slots::{GAP_PAIRS, GAP_SUM, STAGE_USERS, TRANSITION_USERS};
use super::deltas::FunnelDelta;
use super::operators::{sum_by_key, Sums};
use super::output::Output;
use super::types::Coll;
use crate::analyses::funnel::FunnelStats;

pub fn dataflow<'s>(deltas: Coll<'s, FunnelDelta>) -> Coll<'s, Output> {
    sum_by_key(deltas).map(|(segment, Sums(s))| {
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
