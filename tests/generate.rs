//! `cartflow generate`: calibrated to December 2019, ordered by time, deterministic, readable.

use cartflow::cli::GenerateArgs;
use cartflow::commands::generate::{run, spec_of};
use cartflow::commands::stats::DatasetStats;
use cartflow_connectors::input::read_events;
use cartflow_connectors::input::RejectLog;
use cartflow_dataflows::model::EventType;

fn args(out: &std::path::Path, events: u64, seed: u64) -> GenerateArgs {
    GenerateArgs {
        out: out.to_path_buf(),
        events: Some(events),
        users: None,
        products: None,
        days: None,
        start: None,
        seed,
        gzip: false,
        with_removes: false,
        preset: None,
        quiet: true,
    }
}

fn within(name: &str, measured: f64, target: f64, tolerance: f64) {
    assert!((measured - target).abs() <= tolerance, "{name}: measured {measured:.4}, target {target} ± {tolerance}");
}

#[test]
fn a_mid_size_dataset_matches_the_december_statistics() {
    let dir = tempfile::tempdir().unwrap();
    let summary = run(&args(dir.path(), 1_000_000, 7)).unwrap();
    assert_eq!(summary.events, 1_000_000);
    let s = DatasetStats::of(std::slice::from_ref(&summary.events_path), Some(&summary.users_path)).unwrap();
    assert_eq!(s.events, 1_000_000, "every generated row is valid");
    let share = |t: EventType| s.share(s.by_type[t.index()]);
    within("view share", share(EventType::View), 0.9325, 0.005);
    within("cart share", share(EventType::Cart), 0.0503, 0.003);
    within("purchase share", share(EventType::Purchase), 0.0172, 0.0015);
    assert_eq!(s.by_type[EventType::RemoveFromCart.index()], 0, "no removes by default");
    within("cart/view", share(EventType::Cart) / share(EventType::View), 0.054, 0.004);
    within("purchase/cart", share(EventType::Purchase) / share(EventType::Cart), 0.34, 0.03);
    within("empty category_code", s.share(s.empty_code), 0.105, 0.015);
    within("empty brand", s.share(s.empty_brand), 0.12, 0.01);
    assert_eq!(s.top_brands[0].0, "samsung");
    within("samsung share", s.share(s.top_brands[0].1), 0.126, 0.01);
    within("top-3 share", s.share(s.top_brands.iter().take(3).map(|b| b.1).sum()), 0.28, 0.02);
    within("events per session", s.events as f64 / s.sessions as f64, 4.9, 0.3);
    let without_cart = s.purchase_sessions_without_cart as f64 / s.purchase_sessions as f64;
    assert!((0.55..0.80).contains(&without_cart), "most purchase sessions have no cart: {without_cart}");
    within("pace (events/s)", s.events as f64 / (s.last_time - s.first_time) as f64, 25.0, 2.0);
    assert!(s.night_to_day_rate() < 0.4, "quiet nights: {}", s.night_to_day_rate());
    assert!(s.duplicate_rows > 0 && s.repeated_carts > 0 && s.zero_price_rows > 0, "the real data's defects");
    assert!(s.max_price <= 257_407);
    assert!(s.purchase_price_sum / s.by_type[3] as i64 <= s.view_price_sum / s.by_type[0] as i64, "purchases cheaper");
    assert!(s.max_user_events > 200, "a heavy user tail: {}", s.max_user_events);
    let p = s.profiles.unwrap();
    within("users without profile", p.event_users_without_profile as f64 / s.users as f64, 0.03, 0.01);
    assert!(p.ages.iter().all(|&n| n > 0), "under 18, all five groups and unknown: {:?}", p.ages);
    assert_eq!(p.regions, 16);

    let mut last = i64::MIN;
    read_events(&[summary.events_path], &mut RejectLog::new(None), false, |e, _| {
        assert!(e.time >= last, "ordered by time");
        last = e.time;
        Ok(())
    })
    .unwrap();
}

#[test]
fn same_seed_same_bytes_other_seed_other_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let a = run(&args(&dir.path().join("a"), 30_000, 1)).unwrap();
    let b = run(&args(&dir.path().join("b"), 30_000, 1)).unwrap();
    let c = run(&args(&dir.path().join("c"), 30_000, 2)).unwrap();
    let read = |p: &std::path::Path| std::fs::read(p).unwrap();
    assert_eq!(read(&a.events_path), read(&b.events_path));
    assert_eq!(read(&a.users_path), read(&b.users_path));
    assert_ne!(read(&a.events_path), read(&c.events_path));
}

#[test]
fn gzip_removes_and_overrides() {
    let dir = tempfile::tempdir().unwrap();
    let mut gz = args(dir.path(), 20_000, 3);
    gz.gzip = true;
    gz.with_removes = true;
    gz.days = Some(2);
    gz.users = Some(500);
    gz.products = Some(300);
    gz.start = Some(cartflow_dataflows::model::time::parse_instant_arg("2026-01-05").unwrap());
    let summary = run(&gz).unwrap();
    assert!(summary.events_path.to_string_lossy().ends_with("events.csv.gz"));
    let s = DatasetStats::of(&[summary.events_path], None).unwrap();
    assert_eq!(s.events, 20_000);
    assert!(s.by_type[EventType::RemoveFromCart.index()] > 0);
    assert!(s.users <= 500 && s.products <= 300);
    assert!(s.first_time >= summary.first_time && s.first_time < summary.first_time + 3_600);
    assert!(s.last_time - s.first_time > 86_400, "two days");
    assert_eq!(cartflow_dataflows::model::time::format_rfc3339(s.first_time)[..10], *"2026-01-05");
    let bad = GenerateArgs { users: Some(0), ..args(dir.path(), 10, 1) };
    assert!(spec_of(&bad).is_err());
}
