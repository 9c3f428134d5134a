//! Realistic REES46-format data at any scale (issue: `cartflow generate`), calibrated to the public
//! December 2019 file, written in event-time order with bounded memory.
//!
//! The model: a timeline with a daily rhythm hands out session start times in proportion to the
//! event budget used so far, so the data fills the requested span exactly. Each session belongs to a
//! user (new users arrive at a steady rate; returning users are picked by a heavy-tailed activity
//! weight, which gives the bot-like tail), and is a run of views with occasional carts (sometimes
//! repeated within a second) and purchases. Events go into a ring of one-second buckets and are
//! written once no session can add to their second any more.

mod catalog;
mod names;

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use cartflow_connectors::progress::Progress;
use cartflow_dataflows::model::time::{floor_to, format_date, utc_date, Timestamp, DAY, HOUR, MINUTE};
use cartflow_dataflows::model::EventType;
use chrono::{Datelike, NaiveDate};
use rand::{RngExt, SeedableRng};
use rand_distr::weighted::WeightedAliasIndex;
use rand_distr::{Distribution, Exp, Geometric, LogNormal};
use rand_pcg::Pcg64Mcg;

use catalog::Catalog;
use names::REGIONS;

/// The figures the generator is calibrated to (December 2019 unless said otherwise).
pub struct Calibration;

impl Calibration {
    pub const DECEMBER_EVENTS: u64 = 67_542_878;
    pub const DECEMBER_USERS: u64 = 4_577_232;
    pub const DECEMBER_PRODUCTS: u64 = 205_230;
    pub const DECEMBER_DAYS: u32 = 31;
    pub const CATEGORIES: usize = 1_162;
    pub const BRANDS: usize = 4_200;
    pub const AVERAGE_RATE: f64 = 25.2; // events per second over the month
    pub const VIEW_SHARE: f64 = 0.9325;
    pub const CART_SHARE: f64 = 0.0503;
    pub const PURCHASE_SHARE: f64 = 0.0172;
    pub const EMPTY_CODE_SHARE: f64 = 0.105;
    pub const EMPTY_BRAND_SHARE: f64 = 0.12;
    /// samsung, apple, xiaomi: 12.6 % of all events, the three together about 28 %.
    pub const LEADER_SHARES: [f64; 3] = [0.126, 0.097, 0.057];
    pub const BRAND_TAIL_EXPONENT: f64 = 1.15;
    pub const PRODUCT_ZIPF_EXPONENT: f64 = 1.05;
    pub const UNBRANDED_PRODUCT_SHARE: f64 = 0.15;
    pub const CATEGORIES_WITHOUT_CODE: f64 = 0.12;
    pub const EVENTS_PER_SESSION: f64 = 4.9;
    /// Users' activity weights are lognormal with this sigma: the heaviest users of a month have
    /// tens of thousands of events.
    pub const USER_ACTIVITY_SIGMA: f64 = 1.8;
    pub const MEDIAN_PRICE: f64 = 150.0;
    pub const MAX_PRICE_CENTS: i64 = 257_407;
    pub const ZERO_PRICE_PRODUCTS: f64 = 0.001;
    /// A cart is repeated 1–3 more times in the same second this often (a tracker defect).
    pub const CART_BURST: f64 = 0.04;
    /// A cart is followed by the purchase of that product in the next step of the session this
    /// often: with the purchases of viewed products this leaves most purchase sessions without a
    /// cart, as in the real data.
    pub const PURCHASE_AFTER_CART: f64 = 0.04;
    /// An event is written twice, identically, this often.
    pub const DUPLICATE_ROW: f64 = 0.0005;
    /// A session has an empty `user_session` this often (a handful in a month).
    pub const EMPTY_SESSION: f64 = 5e-7;
    /// Share of event users with no profile.
    pub const USERS_WITHOUT_PROFILE: f64 = 0.03;
    /// Mean seconds between two events of a session.
    pub const MEAN_GAP_S: f64 = 40.0;
    /// Relative activity per UTC hour: quiet nights, busy evenings.
    pub const HOURLY_RHYTHM: [f64; 24] = [
        0.30, 0.18, 0.12, 0.10, 0.14, 0.30, 0.55, 0.80, 0.95, 1.05, 1.10, 1.10, 1.10, 1.10, 1.15, 1.20, 1.30, 1.40,
        1.50, 1.50, 1.35, 1.10, 0.80, 0.50,
    ];
}

use Calibration as C;

/// What to generate.
#[derive(Clone, Debug, PartialEq)]
pub struct Spec {
    pub events: u64,
    pub users: u64,
    pub products: u64,
    /// Seconds of event time the data spans.
    pub span: i64,
    /// Midnight UTC of the first day.
    pub start: Timestamp,
    pub seed: u64,
    pub with_removes: bool,
}

impl Spec {
    /// The default small dataset scaled to `events`: users and products grow sub-linearly as in
    /// the real files (a 3-hour slice has fewer events per user than a month), and the span keeps
    /// the average pace of 25 events/s.
    pub fn scaled(events: u64) -> Spec {
        let scale = events as f64 / C::DECEMBER_EVENTS as f64;
        Spec {
            events,
            users: ((C::DECEMBER_USERS as f64 * scale.powf(0.85)) as u64).max(1),
            products: ((C::DECEMBER_PRODUCTS as f64 * scale.powf(0.6)) as u64).max(8),
            span: ((events as f64 / C::AVERAGE_RATE) as i64).div_euclid(MINUTE).max(1) * MINUTE,
            start: NaiveDate::from_ymd_opt(2019, 12, 1).unwrap().and_hms_opt(0, 0, 0).unwrap().and_utc().timestamp(),
            seed: 42,
            with_removes: false,
        }
    }

    pub fn december_2019() -> Spec {
        Spec {
            users: C::DECEMBER_USERS,
            products: C::DECEMBER_PRODUCTS,
            span: i64::from(C::DECEMBER_DAYS) * DAY,
            ..Spec::scaled(C::DECEMBER_EVENTS)
        }
    }
}

/// Hands out session start times: the `p`-th fraction of the event budget starts at the time by
/// which that fraction of the day-rhythm-weighted span has passed.
struct Timeline {
    start: Timestamp,
    /// Cumulative rhythm weight at the end of each minute, normalised to 1.
    cumulative: Vec<f64>,
    minute: usize,
}

impl Timeline {
    fn new(start: Timestamp, span: i64) -> Timeline {
        let minutes = (span / MINUTE).max(1) as usize;
        let mut cumulative = Vec::with_capacity(minutes);
        let mut total = 0.0;
        for m in 0..minutes {
            let hour = (start + m as i64 * MINUTE).rem_euclid(DAY) / HOUR;
            total += C::HOURLY_RHYTHM[hour as usize];
            cumulative.push(total);
        }
        cumulative.iter_mut().for_each(|c| *c /= total);
        Timeline { start, cumulative, minute: 0 }
    }

    /// The time at fraction `p` (non-decreasing calls).
    fn at(&mut self, p: f64) -> Timestamp {
        while self.minute + 1 < self.cumulative.len() && self.cumulative[self.minute] <= p {
            self.minute += 1;
        }
        let before = if self.minute == 0 { 0.0 } else { self.cumulative[self.minute - 1] };
        let within = ((p - before) / (self.cumulative[self.minute] - before)).clamp(0.0, 0.999);
        self.start + self.minute as i64 * MINUTE + (within * MINUTE as f64) as i64
    }
}

/// Who a session belongs to: new users arrive at a steady rate until all have come; returning
/// users are drawn by a heavy-tailed activity weight.
struct Population {
    users: u64,
    arrived: u64,
    new_user_probability: f64,
    activity: WeightedAliasIndex<f64>,
}

impl Population {
    fn new(spec: &Spec, rng: &mut impl rand::Rng) -> Population {
        let sessions = spec.events as f64 / C::EVENTS_PER_SESSION;
        let weight = LogNormal::new(0.0, C::USER_ACTIVITY_SIGMA).expect("valid lognormal");
        let weights: Vec<f64> = (0..spec.users).map(|_| weight.sample(rng)).collect();
        Population {
            users: spec.users,
            arrived: 0,
            new_user_probability: (spec.users as f64 / sessions).min(1.0),
            activity: WeightedAliasIndex::new(weights).expect("valid user weights"),
        }
    }

    fn pick(&mut self, rng: &mut impl rand::Rng) -> u64 {
        if self.arrived < self.users && (self.arrived == 0 || rng.random_bool(self.new_user_probability)) {
            self.arrived += 1;
            return self.arrived - 1;
        }
        // A returning user: by activity among those who have arrived (the weights are i.i.d., so
        // folding an index onto the arrived ones keeps the heavy tail).
        self.activity.sample(rng) as u64 % self.arrived
    }
}

pub fn user_id(index: u64) -> u64 {
    500_000_000 + index
}

/// One event waiting in the ring for its second to be complete.
#[derive(Clone, Copy)]
struct Pending {
    event_type: EventType,
    product: u32,
    price: i64,
    user: u64,
    session: Option<uuid::Uuid>,
}

/// Most a session may last: events are kept in a ring of this many one-second buckets.
const MAX_SESSION_SPAN: i64 = 2 * HOUR;

struct Writer<W: Write> {
    out: W,
    catalog: Catalog,
    ring: Vec<Vec<Pending>>,
    /// Every second before this one has been written.
    written_until: Timestamp,
    line: Vec<u8>,
    time_text: [u8; 23],
    time_text_of: Timestamp,
    rows: u64,
}

impl<W: Write> Writer<W> {
    fn push(&mut self, time: Timestamp, pending: Pending) {
        debug_assert!(time >= self.written_until && time < self.written_until + MAX_SESSION_SPAN + MINUTE);
        let slot = time.rem_euclid(self.ring.len() as i64) as usize;
        self.ring[slot].push(pending);
    }

    /// Writes every second before `until`.
    fn write_until(&mut self, until: Timestamp) -> Result<()> {
        while self.written_until < until {
            let second = self.written_until;
            let slot = second.rem_euclid(self.ring.len() as i64) as usize;
            let mut bucket = std::mem::take(&mut self.ring[slot]);
            for pending in &bucket {
                self.write_row(second, pending)?;
            }
            bucket.clear();
            self.ring[slot] = bucket;
            self.written_until += 1;
        }
        Ok(())
    }

    fn write_row(&mut self, second: Timestamp, e: &Pending) -> Result<()> {
        if self.time_text_of != second {
            self.time_text_of = second;
            let text = chrono::DateTime::from_timestamp(second, 0).expect("in range").format("%Y-%m-%d %H:%M:%S UTC");
            let mut cursor = std::io::Cursor::new(&mut self.time_text[..]);
            write!(cursor, "{text}")?;
        }
        let product = &self.catalog.products[e.product as usize];
        let category = &self.catalog.categories[product.category as usize];
        let mut ints = itoa::Buffer::new();
        let line = &mut self.line;
        line.clear();
        line.extend_from_slice(&self.time_text);
        line.push(b',');
        line.extend_from_slice(e.event_type.as_str().as_bytes());
        line.push(b',');
        line.extend_from_slice(ints.format(product.id).as_bytes());
        line.push(b',');
        line.extend_from_slice(ints.format(category.id).as_bytes());
        line.push(b',');
        line.extend_from_slice(category.code.unwrap_or("").as_bytes());
        line.push(b',');
        if let Some(brand) = product.brand {
            line.extend_from_slice(self.catalog.brands[brand as usize].as_bytes());
        }
        line.push(b',');
        line.extend_from_slice(ints.format(e.price / 100).as_bytes());
        line.push(b'.');
        line.push(b'0' + (e.price % 100 / 10) as u8);
        line.push(b'0' + (e.price % 10) as u8);
        line.push(b',');
        line.extend_from_slice(ints.format(user_id(e.user)).as_bytes());
        line.push(b',');
        if let Some(session) = e.session {
            line.extend_from_slice(session.hyphenated().encode_lower(&mut uuid::Uuid::encode_buffer()).as_bytes());
        }
        line.push(b'\n');
        self.out.write_all(line)?;
        self.rows += 1;
        Ok(())
    }
}

/// Everything `generate` wrote.
#[derive(Debug)]
pub struct Summary {
    pub events_path: PathBuf,
    pub users_path: PathBuf,
    pub events: u64,
    pub profiles: u64,
    pub first_time: Timestamp,
    pub last_time: Timestamp,
}

/// Per-step probabilities of a cart and of a purchase that give the calibrated shares once cart
/// bursts add their repeats and some carts are followed by their purchase.
fn slot_probabilities() -> (f64, f64) {
    let burst_extra = C::CART_BURST * 2.0; // 1–3 extra carts, 2 on average
    let cart = C::CART_SHARE / (1.0 + burst_extra - burst_extra * C::CART_SHARE);
    // A follow-up purchase needs a next step: the session goes on after a cart this often.
    let goes_on = 1.0 - 1.0 / C::EVENTS_PER_SESSION;
    let purchase = C::PURCHASE_SHARE * (1.0 + burst_extra * cart) - cart * C::PURCHASE_AFTER_CART * goes_on;
    (cart, purchase)
}

/// Writes `events.csv[.gz]` and `users.csv` under `dir`, each first to a temporary name and then
/// renamed, so a reader never sees half a file.
pub fn generate(spec: &Spec, dir: &Path, gzip: bool, show_progress: bool) -> Result<Summary> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let events_path = dir.join(if gzip { "events.csv.gz" } else { "events.csv" });
    let users_path = dir.join("users.csv");
    let mut rng = Pcg64Mcg::seed_from_u64(spec.seed);
    let catalog = Catalog::new(spec.products, &mut rng);
    let mut population = Population::new(spec, &mut rng);

    let tmp = events_path.with_extension("partial");
    let file = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let out: Box<dyn Write> = if gzip {
        Box::new(BufWriter::with_capacity(1 << 20, flate2::write::GzEncoder::new(file, flate2::Compression::fast())))
    } else {
        Box::new(BufWriter::with_capacity(1 << 20, file))
    };
    let mut writer = Writer {
        out,
        catalog,
        ring: vec![Vec::new(); (MAX_SESSION_SPAN + 2 * MINUTE) as usize],
        written_until: spec.start,
        line: Vec::with_capacity(256),
        time_text: [b' '; 23],
        time_text_of: Timestamp::MIN,
        rows: 0,
    };
    writer.out.write_all(cartflow_connectors::input::HEADER.join(",").as_bytes())?;
    writer.out.write_all(b"\n")?;

    let mut progress = show_progress.then(|| Progress::new("generating events", spec.events, "events"));
    let mut timeline = Timeline::new(spec.start, spec.span);
    let (cart_p, purchase_p) = slot_probabilities();
    let extra_slots = Geometric::new(1.0 / (C::EVENTS_PER_SESSION / (1.0 + 2.0 * C::CART_BURST * cart_p))).expect("p");
    let gap = Exp::new(1.0 / C::MEAN_GAP_S).expect("valid rate");
    let mut budget_used = 0u64;
    let mut first_time = None;
    let mut last_time = spec.start;
    let mut viewed: Vec<u32> = Vec::new();
    let mut sessions = 0u64;

    while budget_used < spec.events {
        sessions += 1;
        let start = timeline.at(budget_used as f64 / spec.events as f64);
        writer.write_until(start)?;
        first_time.get_or_insert(start);
        let user = population.pick(&mut rng);
        let session =
            (!rng.random_bool(C::EMPTY_SESSION)).then(|| uuid::Builder::from_random_bytes(rng.random()).into_uuid());
        let slots = 1 + extra_slots.sample(&mut rng);
        viewed.clear();
        let mut carted: Option<u32> = None;
        let mut purchase_next = false;
        let mut time = start;
        for slot in 0..slots {
            if budget_used >= spec.events {
                break;
            }
            if slot > 0 {
                time += 1 + (gap.sample(&mut rng) as i64).min(10 * MINUTE);
                if time - start >= MAX_SESSION_SPAN {
                    break;
                }
            }
            let roll: f64 = rng.random();
            let (event_type, product) = if let Some(product) = carted.filter(|_| std::mem::take(&mut purchase_next)) {
                (EventType::Purchase, product)
            } else if roll < cart_p {
                // Carts follow a view of the same product when there is one.
                let product = viewed.last().copied().unwrap_or_else(|| writer.catalog.sample(&mut rng));
                carted = Some(product);
                purchase_next = rng.random_bool(C::PURCHASE_AFTER_CART);
                (EventType::Cart, product)
            } else if roll < cart_p + purchase_p {
                // Purchases lean a little to the cheaper of what was looked at (purchases are
                // slightly cheaper than views on average).
                let product = match (carted.filter(|_| rng.random_bool(0.5)), viewed.len()) {
                    (Some(p), _) => p,
                    (None, 0) => writer.catalog.sample(&mut rng),
                    (None, n) if rng.random_bool(0.7) => viewed[n - 1],
                    (None, n) => {
                        let a = viewed[n - 1];
                        let b = viewed[rng.random_range(0..n)];
                        let price = |p: u32| writer.catalog.products[p as usize].base_price;
                        if price(b) < price(a) {
                            b
                        } else {
                            a
                        }
                    }
                };
                (EventType::Purchase, product)
            } else {
                let product = if !viewed.is_empty() && rng.random_bool(0.3) {
                    viewed[rng.random_range(0..viewed.len())]
                } else {
                    writer.catalog.sample(&mut rng)
                };
                viewed.push(product);
                (EventType::View, product)
            };
            let base = writer.catalog.products[product as usize].base_price;
            let price = if base > 0 && rng.random_bool(0.15) {
                (base as f64 * rng.random_range(0.97..1.03)) as i64
            } else {
                base
            }
            .min(C::MAX_PRICE_CENTS);
            let pending = Pending { event_type, product, price, user, session };
            let mut copies = 1 + u64::from(rng.random_bool(C::DUPLICATE_ROW));
            if event_type == EventType::Cart && rng.random_bool(C::CART_BURST) {
                copies += rng.random_range(1..=3);
            }
            for _ in 0..copies.min(spec.events - budget_used) {
                writer.push(time, pending);
                budget_used += 1;
            }
            if spec.with_removes && event_type == EventType::Cart && budget_used < spec.events && rng.random_bool(0.3) {
                let later = (time + 5 + gap.sample(&mut rng) as i64).min(start + MAX_SESSION_SPAN - 1);
                writer.push(later, Pending { event_type: EventType::RemoveFromCart, ..pending });
                budget_used += 1;
                last_time = last_time.max(later);
            }
            last_time = last_time.max(time);
        }
        if let Some(p) = &mut progress {
            if sessions.is_multiple_of(1024) {
                p.update(budget_used, writer.rows, "events");
            }
        }
    }
    writer.write_until(last_time + 1)?;
    writer.out.flush()?;
    let rows = writer.rows;
    drop(writer); // closes the file (and finishes the gzip stream) before the rename
    std::fs::rename(&tmp, &events_path)?;
    if let Some(p) = &progress {
        p.finish();
    }

    let profiles = write_profiles(spec, population.arrived, &users_path)?;
    Ok(Summary {
        events_path,
        users_path,
        events: rows,
        profiles,
        first_time: first_time.unwrap_or(spec.start),
        last_time,
    })
}

/// `users.csv`: `user_id,birth_date,city,region` for every user who arrived, less about 3 %.
fn write_profiles(spec: &Spec, users: u64, path: &Path) -> Result<u64> {
    // A stream of its own, so the profiles do not depend on how many draws the events took.
    let mut rng = Pcg64Mcg::seed_from_u64(spec.seed ^ 0x005e_ed0f_0123_4567);
    let tmp = path.with_extension("partial");
    let mut out = BufWriter::new(File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?);
    writeln!(out, "user_id,birth_date,city,region")?;
    let region_pick = WeightedAliasIndex::new(REGIONS.iter().map(|r| r.1).collect()).expect("valid weights");
    // Age at the first day: under 18, 18-24, 25-34, 35-44, 45-54, 55+ (ranges of years).
    let ages: [(f64, i32, i32); 6] =
        [(0.03, 14, 17), (0.20, 18, 24), (0.31, 25, 34), (0.22, 35, 44), (0.14, 45, 54), (0.10, 55, 80)];
    let age_pick = WeightedAliasIndex::new(ages.iter().map(|a| a.0).collect()).expect("valid weights");
    let first_day = utc_date(floor_to(spec.start, DAY));
    let mut written = 0;
    for index in 0..users {
        if rng.random_bool(C::USERS_WITHOUT_PROFILE) {
            continue;
        }
        let (region, _, cities) = REGIONS[region_pick.sample(&mut rng)];
        let city = cities[rng.random_range(0..cities.len())];
        let (_, youngest, oldest) = ages[age_pick.sample(&mut rng)];
        let years = rng.random_range(youngest..=oldest);
        let birth_date = if rng.random_bool(0.015) {
            String::new() // unknown age
        } else {
            let birthday = first_day
                .with_year(first_day.year() - years)
                .unwrap_or_else(|| first_day.with_day(28).unwrap().with_year(first_day.year() - years).unwrap());
            format_date(birthday - chrono::Days::new(rng.random_range(1..365)))
        };
        writeln!(out, "{},{birth_date},{city},{region}", user_id(index))?;
        written += 1;
    }
    out.flush()?;
    drop(out);
    std::fs::rename(&tmp, path)?;
    Ok(written)
}
