//! The per-user stage's output contract: the records [`super::per_user`] emits and
//! [`super::realtime`], [`super::funnel`], [`super::recommendations`] and [`super::brands`] add
//! up, the slot layouts of their sums, and the recommendations' bucketed keys. The stage and its
//! consumers both import them from here, so a layout is defined once.
//!
//! Every record is a delta per aggregate key, summed over the users of one worker at one time;
//! downstream, `sum_by_key` and the top-k tallies add up the workers' deltas.

use super::operators::{bucket_of, Sums};
use super::types::Coll;
use crate::analyses::{funnel, recommendations};
use crate::model::{AgeGroup, Symbol, Timestamp};

/// The per-user stage's output: one collection of deltas per analysis input, each typed and sent
/// on its own output (records of 24 to 104 bytes, not all of the widest kind).
pub struct Deltas<'s> {
    pub windows: Coll<'s, WindowDelta>,
    pub minute_views: Coll<'s, MinuteViewsDelta>,
    pub minute_brands: Coll<'s, MinuteBrandDelta>,
    pub funnel: Coll<'s, FunnelDelta>,
    pub scores: Coll<'s, ScoreDelta>,
    pub brands: Coll<'s, BrandDelta>,
}

/// A realtime window's totals: (window start, slots as in [`window_slots`]).
pub type WindowDelta = (Timestamp, Sums<8>);

/// Slots of a realtime window's totals.
pub mod window_slots {
    pub const EVENTS: usize = 0;
    /// Four slots, by `EventType::index()`.
    pub const BY_TYPE: usize = 1;
    pub const REVENUE: usize = 5;
    pub const USERS: usize = 6;
    pub const BUYERS: usize = 7;
}

/// A product's views in one minute: ((minute, product), [views, their price sum]).
pub type MinuteViewsDelta = ((Timestamp, u64), Sums<2>);

/// A brand's activity in one minute: ((minute, brand), [events, views, carts, purchases,
/// revenue]).
pub type MinuteBrandDelta = ((Timestamp, Symbol), Sums<5>);

/// A funnel segment's sums, slots as in [`funnel_slots`].
pub type FunnelDelta = (funnel::Segment, Sums<12>);

/// Slots of a funnel segment's sums: users per stage (3), users per transition (3), gap sums (3)
/// and gap pair counts (3).
pub mod funnel_slots {
    pub const STAGE_USERS: usize = 0;
    pub const TRANSITION_USERS: usize = 3;
    pub const GAP_SUM: usize = 6;
    pub const GAP_PAIRS: usize = 9;
}

/// Distinct viewers, carters and buyers of a product in a segment ([viewers, carters, buyers]),
/// keyed as the recommendations' tallies are (see [`BucketedKey`]).
pub type ScoreDelta = (BucketedKey, Sums<3>);

/// Hash buckets per segment: the (*, *) segment's products spread over the workers.
const BUCKETS: u64 = 64;

/// A tally's key: ((segment, hash bucket of the product), product).
pub type BucketedKey = ((recommendations::Segment, u64), u64);

/// The hash bucket of `product` within its segment.
pub fn bucket(product: u64) -> u64 {
    bucket_of(&product, BUCKETS)
}

/// A brand at an age group (`None` = `*`), slots as in [`brand_slots`].
pub type BrandDelta = ((Symbol, Option<AgeGroup>), Sums<7>);

/// Slots of a (brand, age group) aggregate.
pub mod brand_slots {
    pub const USERS: usize = 0;
    pub const VIEWS: usize = 1;
    pub const CARTS: usize = 2;
    pub const PURCHASES: usize = 3;
    pub const REVENUE: usize = 4;
    pub const VIEWERS: usize = 5;
    pub const BUYERS: usize = 6;
}
