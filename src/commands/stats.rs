//! `cartflow stats`: the statistics the generator is calibrated to, measured on any REES46 input,
//! so generated data can be compared with real data (and with the December 2019 targets).

use std::hash::{Hash, Hasher};
use std::io::Write;
use std::path::PathBuf;

use anyhow::Result;
use cartflow_connectors::input::read_profiles;
use cartflow_connectors::input::RejectLog;
use cartflow_connectors::input::{read_events, resolve_inputs};
use cartflow_dataflows::model::time::{utc_date, HOUR};
use cartflow_dataflows::model::{AgeGroup, Event, EventType, Symbol};
use rustc_hash::{FxHashMap, FxHashSet, FxHasher};

use crate::cli::StatsArgs;
use crate::generator::Calibration as C;

#[derive(Clone, Debug, Default)]
pub struct DatasetStats {
    pub events: u64,
    pub by_type: [u64; 4],
    pub empty_code: u64,
    pub empty_brand: u64,
    /// Brands by event count, most frequent first (the first ten).
    pub top_brands: Vec<(String, u64)>,
    pub brands: usize,
    pub products: usize,
    pub categories: usize,
    pub users: usize,
    pub max_user_events: u64,
    pub sessions: usize,
    pub empty_sessions: u64,
    pub purchase_sessions: u64,
    pub purchase_sessions_without_cart: u64,
    pub duplicate_rows: u64,
    /// Carts repeating an earlier cart of the same user, product and second.
    pub repeated_carts: u64,
    pub zero_price_rows: u64,
    pub max_price: i64,
    pub view_price_sum: i64,
    pub purchase_price_sum: i64,
    /// Events per hour of the data (hours since the epoch).
    pub hourly: FxHashMap<i64, u64>,
    pub first_time: i64,
    pub last_time: i64,
    pub profiles: Option<ProfileMix>,
}

#[derive(Clone, Debug, Default)]
pub struct ProfileMix {
    pub profiles: usize,
    pub event_users_without_profile: usize,
    /// Ages at the first event's date: under 18, then the five groups, then unknown.
    pub ages: [u64; 7],
    pub regions: usize,
}

fn hash_of(value: impl Hash) -> u64 {
    let mut hasher = FxHasher::default();
    value.hash(&mut hasher);
    hasher.finish()
}

impl DatasetStats {
    /// Mean events per night hour (00:00–06:00 UTC) over mean events per other hour: the depth
    /// of the daily rhythm, whatever the span. `NaN` without both kinds of hours.
    pub fn night_to_day_rate(&self) -> f64 {
        let mean = |night: bool| {
            let hours: Vec<u64> =
                self.hourly.iter().filter(|(h, _)| (h.rem_euclid(24) < 6) == night).map(|(_, n)| *n).collect();
            hours.iter().sum::<u64>() as f64 / hours.len() as f64
        };
        mean(true) / mean(false)
    }

    pub fn share(&self, n: u64) -> f64 {
        n as f64 / self.events.max(1) as f64
    }

    pub fn of(inputs: &[PathBuf], profiles: Option<&PathBuf>) -> Result<DatasetStats> {
        let files = resolve_inputs(inputs)?;
        let mut s = DatasetStats { first_time: i64::MAX, last_time: i64::MIN, ..Default::default() };
        let mut brands: FxHashMap<Symbol, u64> = FxHashMap::default();
        let mut users: FxHashMap<u64, u64> = FxHashMap::default();
        let mut products = FxHashSet::default();
        let mut categories = FxHashSet::default();
        let mut sessions: FxHashMap<u64, u8> = FxHashMap::default();
        let mut rows = FxHashSet::default();
        let mut carts = FxHashSet::default();
        let mut rejects = RejectLog::new(None);
        read_events(&files, &mut rejects, false, |e: &Event, session: &[u8]| {
            s.events += 1;
            s.by_type[e.event_type.index()] += 1;
            s.empty_code += u64::from(e.category_code.is_none());
            match e.brand {
                Some(brand) => *brands.entry(brand).or_default() += 1,
                None => s.empty_brand += 1,
            }
            *users.entry(e.user_id).or_default() += 1;
            products.insert(e.product_id);
            categories.insert(e.category_id);
            s.empty_sessions += u64::from(session.is_empty());
            let flags = sessions.entry(hash_of((e.user_id, session))).or_default();
            match e.event_type {
                EventType::Cart => *flags |= 1,
                EventType::Purchase => *flags |= 2,
                _ => {}
            }
            if !rows.insert(hash_of((e, session))) {
                s.duplicate_rows += 1;
            }
            if e.event_type == EventType::Cart && !carts.insert((e.user_id, e.product_id, e.time)) {
                s.repeated_carts += 1;
            }
            s.zero_price_rows += u64::from(e.price == 0);
            s.max_price = s.max_price.max(e.price);
            match e.event_type {
                EventType::View => s.view_price_sum += e.price,
                EventType::Purchase => s.purchase_price_sum += e.price,
                _ => {}
            }
            *s.hourly.entry(e.time.div_euclid(HOUR)).or_default() += 1;
            s.first_time = s.first_time.min(e.time);
            s.last_time = s.last_time.max(e.time);
            Ok(())
        })?;
        let mut ranked: Vec<(Symbol, u64)> = brands.iter().map(|(b, n)| (*b, *n)).collect();
        ranked.sort_by_key(|&(b, n)| (std::cmp::Reverse(n), b));
        s.top_brands = ranked.iter().take(10).map(|(b, n)| (b.to_string(), *n)).collect();
        s.brands = brands.len();
        s.products = products.len();
        s.categories = categories.len();
        s.users = users.len();
        s.max_user_events = users.values().copied().max().unwrap_or(0);
        s.sessions = sessions.len();
        s.purchase_sessions = sessions.values().filter(|f| **f & 2 != 0).count() as u64;
        s.purchase_sessions_without_cart = sessions.values().filter(|f| **f == 2).count() as u64;
        if let Some(path) = profiles {
            let (profiles, _) = read_profiles(path, &mut rejects)?;
            let on = utc_date(s.first_time.max(0));
            let mut mix = ProfileMix { profiles: profiles.len(), ..Default::default() };
            let mut regions = FxHashSet::default();
            for (_, p) in profiles.iter() {
                regions.insert(p.region);
                let slot = match p.birth_date {
                    Some(b) if cartflow_dataflows::model::profile::age_in_years(b, on) < 18 => 0,
                    birth => {
                        1 + AgeGroup::ALL
                            .iter()
                            .position(|g| *g == cartflow_dataflows::model::profile::age_group(birth, on))
                            .unwrap_or(5)
                    }
                };
                mix.ages[slot] += 1;
            }
            mix.regions = regions.len();
            mix.event_users_without_profile = users.keys().filter(|u| profiles.get(**u).is_none()).count();
            s.profiles = Some(mix);
        }
        Ok(s)
    }

    /// `(statistic, measured, December 2019 target)` rows.
    pub fn table(&self) -> Vec<(String, String, String)> {
        let pct = |x: f64| format!("{:.2} %", 100.0 * x);
        let views = self.by_type[EventType::View.index()];
        let carts = self.by_type[EventType::Cart.index()];
        let purchases = self.by_type[EventType::Purchase.index()];
        let top3: u64 = self.top_brands.iter().take(3).map(|b| b.1).sum();
        let leader = self.top_brands.first().cloned().unwrap_or_default();
        let mut rows = vec![
            ("events".into(), self.events.to_string(), C::DECEMBER_EVENTS.to_string()),
            ("view share".into(), pct(self.share(views)), pct(C::VIEW_SHARE)),
            ("cart share".into(), pct(self.share(carts)), pct(C::CART_SHARE)),
            ("purchase share".into(), pct(self.share(purchases)), pct(C::PURCHASE_SHARE)),
            (
                "remove_from_cart share".into(),
                pct(self.share(self.by_type[EventType::RemoveFromCart.index()])),
                pct(0.0),
            ),
            ("cart / view".into(), pct(carts as f64 / views.max(1) as f64), "5.4 %".into()),
            ("purchase / cart".into(), pct(purchases as f64 / carts.max(1) as f64), "34 %".into()),
            ("empty category_code".into(), pct(self.share(self.empty_code)), pct(C::EMPTY_CODE_SHARE)),
            ("empty brand".into(), pct(self.share(self.empty_brand)), pct(C::EMPTY_BRAND_SHARE)),
            (format!("top brand ({})", leader.0), pct(self.share(leader.1)), "12.6 % (samsung)".into()),
            ("top 3 brands".into(), pct(self.share(top3)), "≈ 28 %".into()),
            ("brands".into(), self.brands.to_string(), "≈ 4,200".into()),
            ("products".into(), self.products.to_string(), C::DECEMBER_PRODUCTS.to_string()),
            ("category ids".into(), self.categories.to_string(), C::CATEGORIES.to_string()),
            ("users".into(), self.users.to_string(), C::DECEMBER_USERS.to_string()),
            ("events per user".into(), format!("{:.1}", self.events as f64 / self.users.max(1) as f64), "14.8".into()),
            ("max events of one user".into(), self.max_user_events.to_string(), "tens of thousands".into()),
            (
                "events per session".into(),
                format!("{:.2}", self.events as f64 / self.sessions.max(1) as f64),
                "4.9".into(),
            ),
            (
                "purchase sessions without a cart".into(),
                pct(self.purchase_sessions_without_cart as f64 / self.purchase_sessions.max(1) as f64),
                "most (67.5 % in the real Oct rows)".into(),
            ),
            ("exact duplicate rows".into(), pct(self.share(self.duplicate_rows)), "present".into()),
            ("repeated carts in one second".into(), pct(self.share(self.repeated_carts)), "present".into()),
            ("empty user_session".into(), self.empty_sessions.to_string(), "a handful".into()),
            ("price 0.00 rows".into(), pct(self.share(self.zero_price_rows)), "a few".into()),
            ("max price".into(), format!("{:.2}", self.max_price as f64 / 100.0), "2574.07".into()),
            (
                "avg view / purchase price".into(),
                format!(
                    "{:.2} / {:.2}",
                    self.view_price_sum as f64 / 100.0 / views.max(1) as f64,
                    self.purchase_price_sum as f64 / 100.0 / purchases.max(1) as f64
                ),
                "purchases slightly cheaper".into(),
            ),
            (
                "events per second".into(),
                format!("{:.1}", self.events as f64 / (self.last_time - self.first_time + 1).max(1) as f64),
                "25".into(),
            ),
            (
                "night (00-06 UTC) / day event rate".into(),
                format!("{:.2}", self.night_to_day_rate()),
                "quiet nights".into(),
            ),
        ];
        if let Some(p) = &self.profiles {
            rows.push(("profiles".into(), p.profiles.to_string(), "one per user but ~3 %".into()));
            rows.push((
                "event users without a profile".into(),
                pct(p.event_users_without_profile as f64 / self.users.max(1) as f64),
                "≈ 3 %".into(),
            ));
            let total = p.profiles.max(1) as f64;
            let ages = ["<18", "18-24", "25-34", "35-44", "45-54", "55+", "unknown"];
            let mix: Vec<String> =
                ages.iter().zip(p.ages).map(|(a, n)| format!("{a} {:.0}%", 100.0 * n as f64 / total)).collect();
            rows.push(("age groups".into(), mix.join(", "), "all five plus some under 18".into()));
            rows.push(("regions".into(), p.regions.to_string(), "16 voivodeships".into()));
        }
        rows
    }
}

pub fn run(args: &StatsArgs, out: &mut dyn Write) -> Result<()> {
    let stats = DatasetStats::of(&args.input, args.profiles.as_ref())?;
    let mut view = comfy_table::Table::new();
    view.load_style(comfy_table::presets::UTF8_FULL_CONDENSED).set_header(["statistic", "this input", "December 2019"]);
    for (name, measured, target) in stats.table() {
        view.add_row([name, measured, target]);
    }
    writeln!(out, "{view}")?;
    let brands: Vec<String> =
        stats.top_brands.iter().map(|(b, n)| format!("{b} {:.1}%", 100.0 * stats.share(*n))).collect();
    writeln!(out, "top brands: {}", brands.join(", "))?;
    Ok(())
}
