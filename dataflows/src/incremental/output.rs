//! What the dataflows produce: one record type for every result table, holding the same
//! aggregates the batch reference computes. The store rows are built from them by the analyses'
//! own row builders, so the incremental and the batch path format every number the same way.

use serde::{Deserialize, Serialize};

use crate::analyses::brands::BrandStats;
use crate::analyses::catalog::{self, CategoryOrigin, ProductStats};
use crate::analyses::daily_sales::{self, DaySums};
use crate::analyses::funnel::{self, FunnelStats};
use crate::analyses::realtime::{BrandActivity, ProductViews, WindowTotals};
use crate::analyses::recommendations::{self, ProductScore};
use crate::model::{AgeGroup, Symbol, Timestamp};
use crate::schema::{Row, TableId};

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Output {
    Window(Timestamp, WindowTotals),
    TopProduct(Timestamp, u32, ProductViews),
    TopBrand(Timestamp, u32, BrandActivity),
    Funnel(funnel::Segment, FunnelStats),
    Recommendation(recommendations::Segment, u32, ProductScore),
    /// Brand, age group (`None` = `*`), brand rank, statistics.
    Brand(Symbol, Option<AgeGroup>, u32, BrandStats),
    Product(u64, ProductStats),
    /// Category id, origin, distinct products, events.
    Category(u64, CategoryOrigin, u64, u64),
    Demographics(Symbol, AgeGroup, u64),
    /// Day start, funnel segment, the day's totals.
    DailySales(Timestamp, funnel::Segment, DaySums),
}

/// The primary key of an [`Output`]'s row (see [`Output::store_key`]), ordered by table first and,
/// within the product table, by product id like the store's own index.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum StoreKey {
    Window(Timestamp),
    TopProduct(Timestamp, u32),
    TopBrand(Timestamp, u32),
    Funnel(funnel::Segment),
    Recommendation(recommendations::Segment, u32),
    Brand(Symbol, Option<AgeGroup>),
    Product(u64),
    Category(u64),
    Demographics(Symbol, AgeGroup),
    DailySales(Timestamp, funnel::Segment),
}

impl Output {
    pub fn table(&self) -> TableId {
        match self {
            Output::Window(..) => TableId::RealtimeWindow,
            Output::TopProduct(..) => TableId::RealtimeTopProduct,
            Output::TopBrand(..) => TableId::RealtimeTopBrand,
            Output::Funnel(..) => TableId::Funnel,
            Output::Recommendation(..) => TableId::Recommendation,
            Output::Brand(..) => TableId::BrandPerformance,
            Output::Product(..) => TableId::Product,
            Output::Category(..) => TableId::Category,
            Output::Demographics(..) => TableId::Demographics,
            Output::DailySales(..) => TableId::DailySales,
        }
    }

    /// The realtime window a record belongs to.
    pub fn window_start(&self) -> Option<Timestamp> {
        match self {
            Output::Window(start, _) | Output::TopProduct(start, ..) | Output::TopBrand(start, ..) => Some(*start),
            _ => None,
        }
    }

    /// Whether the record has a row per snapshot (funnel, recommendation, brand_performance).
    pub fn has_snapshots(&self) -> bool {
        matches!(self, Output::Funnel(..) | Output::Recommendation(..) | Output::Brand(..))
    }

    /// The record's primary key in its table's `current` rows, without building the row: two
    /// records of one table write the same row exactly when their keys are equal.
    pub fn store_key(&self) -> StoreKey {
        match self {
            Output::Window(start, _) => StoreKey::Window(*start),
            Output::TopProduct(start, rank, _) => StoreKey::TopProduct(*start, *rank),
            Output::TopBrand(start, rank, _) => StoreKey::TopBrand(*start, *rank),
            Output::Funnel(segment, _) => StoreKey::Funnel(*segment),
            Output::Recommendation(segment, rank, _) => StoreKey::Recommendation(*segment, *rank),
            Output::Brand(brand, age, _, _) => StoreKey::Brand(*brand, *age),
            Output::Product(id, _) => StoreKey::Product(*id),
            Output::Category(id, ..) => StoreKey::Category(*id),
            Output::Demographics(region, age, _) => StoreKey::Demographics(*region, *age),
            Output::DailySales(day, segment, _) => StoreKey::DailySales(*day, *segment),
        }
    }

    /// The store row. `snapshot` names the snapshot of snapshot tables; `is_final` is the
    /// realtime window's `final` flag.
    pub fn row(&self, snapshot: &str, is_final: bool) -> Row {
        match self {
            Output::Window(start, totals) => totals.row(*start, is_final),
            Output::TopProduct(start, rank, p) => p.row(*start, *rank as usize),
            Output::TopBrand(start, rank, b) => b.row(*start, *rank as usize),
            Output::Funnel(segment, stats) => stats.row(snapshot, *segment),
            Output::Recommendation(segment, rank, score) => score.row(snapshot, segment, *rank as usize),
            Output::Brand(brand, age, rank, stats) => stats.row(snapshot, *brand, *age, *rank as usize),
            Output::Product(id, stats) => stats.row(*id),
            Output::Category(id, origin, products, events) => catalog::category_row(*id, *origin, *products, *events),
            Output::Demographics(region, age, users) => catalog::demographics_row(*region, *age, *users),
            Output::DailySales(day, segment, sums) => daily_sales::row(*day, *segment, sums),
        }
    }
}
