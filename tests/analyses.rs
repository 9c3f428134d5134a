//! Small hand-computed cases for every analysis of SPEC §3, through CSV → batch → SQLite.

mod common;

use cartflow_dataflows::schema::{TableId, Value};
use common::*;

const T0: &str = "2019-10-01 10:00:00 UTC";

/// An event line: time, type, product, category code, brand, price, user.
fn ev(time: &str, kind: &str, product: u64, code: &str, brand: &str, price: &str, user: u64) -> String {
    format!("{time},{kind},{product},2053013555631882655,{code},{brand},{price},{user},s{user}")
}

fn lines(events: &[String]) -> Vec<&str> {
    events.iter().map(String::as_str).collect()
}

#[test]
fn funnel_order_of_stages_matters() {
    let events = [
        // user 1 carts product 10 before viewing it: no view→cart pair.
        ev("2019-10-01 10:00:00 UTC", "cart", 10, "electronics.phone", "apple", "100.00", 1),
        ev("2019-10-01 10:05:00 UTC", "view", 10, "electronics.phone", "apple", "100.00", 1),
        // user 2: view, cart 60 s later, purchase 120 s after the cart; a second view later is not first.
        ev("2019-10-01 10:00:00 UTC", "view", 10, "electronics.phone", "apple", "100.00", 2),
        ev("2019-10-01 10:01:00 UTC", "cart", 10, "electronics.phone", "apple", "100.00", 2),
        ev("2019-10-01 10:03:00 UTC", "purchase", 10, "electronics.phone", "apple", "100.00", 2),
        ev("2019-10-01 10:04:00 UTC", "view", 10, "electronics.phone", "apple", "100.00", 2),
        ev("2019-10-01 10:04:00 UTC", "remove_from_cart", 10, "electronics.phone", "apple", "100.00", 2),
        // user 3: view and cart in the same second count (v ≤ c); no category code, no brand.
        ev("2019-10-01 10:02:00 UTC", "view", 11, "", "", "5.00", 3),
        ev("2019-10-01 10:02:00 UTC", "cart", 11, "", "", "5.00", 3),
        // user 4 only removes: ignored by the funnel, so it is in no stage.
        ev("2019-10-01 10:02:00 UTC", "remove_from_cart", 12, "", "", "5.00", 4),
    ];
    let run = batch_on(&lines(&events), None, None);
    let all = run.one(TableId::Funnel, &[("snapshot", "current"), ("dimension", "all"), ("segment", "all")]);
    assert_eq!(int(&all["users_viewed"]), 3);
    assert_eq!(int(&all["users_carted"]), 3);
    assert_eq!(int(&all["users_purchased"]), 1);
    assert_eq!(int(&all["users_view_to_cart"]), 2, "users 2 and 3, not user 1");
    assert_eq!(int(&all["users_cart_to_purchase"]), 1);
    assert_eq!(int(&all["users_view_to_purchase"]), 1);
    assert_eq!(real(&all["view_to_cart_rate"]), 2.0 / 3.0);
    assert_eq!(real(&all["view_to_cart_dropoff"]), 1.0 - 2.0 / 3.0);
    assert_eq!(real(&all["cart_to_purchase_rate"]), 1.0 / 3.0);
    assert_eq!(real(&all["avg_view_to_cart_s"]), 30.0, "pairs (2,10): 60 s and (3,11): 0 s");
    assert_eq!(real(&all["avg_cart_to_purchase_s"]), 120.0);
    assert_eq!(real(&all["avg_view_to_purchase_s"]), 180.0);

    let phone = run.one(TableId::Funnel, &[("dimension", "category"), ("segment", "electronics.phone")]);
    assert_eq!(int(&phone["users_viewed"]), 2);
    assert_eq!(int(&phone["users_view_to_cart"]), 1);
    let unknown = run.one(TableId::Funnel, &[("dimension", "category"), ("segment", "unknown")]);
    assert_eq!(int(&unknown["users_viewed"]), 1, "user 3; user 4's remove is ignored");
    assert_eq!(unknown["avg_cart_to_purchase_s"], Value::Null, "no pair: null, not 0");
    assert_eq!(real(&unknown["cart_to_purchase_rate"]), 0.0);
    let brands = run.rows(TableId::Funnel, &[("dimension", "brand")]);
    assert_eq!(brands.len(), 1, "events without a brand are left out of brand segments");
    assert_eq!(brands[0]["segment"].to_string(), "apple");
}

#[test]
fn funnel_window_is_the_24_hours_before_t() {
    let events = [
        ev("2019-10-01 09:59:59 UTC", "view", 10, "", "", "1.00", 1),
        ev("2019-10-01 10:00:00 UTC", "view", 10, "", "", "1.00", 2),
        ev("2019-10-02 09:59:59 UTC", "cart", 10, "", "", "1.00", 2),
    ];
    let run = batch_on(&lines(&events), None, Some("2019-10-02T10:00:00Z"));
    let all = run.one(TableId::Funnel, &[("snapshot", "current"), ("dimension", "all")]);
    assert_eq!(int(&all["users_viewed"]), 1, "the view at T - 24h - 1s is outside");
    assert_eq!(int(&all["users_view_to_cart"]), 1, "T - 24h itself is inside");
}

#[test]
fn realtime_window_edges_and_counts() {
    let events = [
        ev("2019-10-01 10:00:00 UTC", "view", 10, "", "apple", "10.00", 1),
        ev("2019-10-01 10:04:59 UTC", "purchase", 10, "", "apple", "8.00", 2),
        ev("2019-10-01 10:04:59 UTC", "purchase", 11, "", "apple", "2.00", 2),
        ev("2019-10-01 10:05:00 UTC", "remove_from_cart", 10, "", "apple", "10.00", 1),
    ];
    let run = batch_on(&lines(&events), None, None);
    let w = run.one(TableId::RealtimeWindow, &[("window_start", "2019-10-01T10:00:00Z")]);
    assert_eq!(w["window_end"].to_string(), "2019-10-01T10:05:00Z");
    assert_eq!(int(&w["total_events"]), 3, "the event at exactly s + 5 min belongs to the next windows");
    assert_eq!(int(&w["active_users"]), 2);
    assert_eq!((int(&w["views"]), int(&w["purchases"]), int(&w["removes"])), (1, 2, 0));
    assert_eq!(int(&w["revenue_cents"]), 1000);
    assert_eq!(real(&w["avg_purchase_price_cents"]), 500.0);
    assert_eq!(int(&w["buyers"]), 1);
    assert_eq!(int(&w["final"]), 1, "frontier 10:06 is past its end");
    let later = run.one(TableId::RealtimeWindow, &[("window_start", "2019-10-01T10:05:00Z")]);
    assert_eq!((int(&later["total_events"]), int(&later["removes"])), (1, 1));
    assert_eq!(later["avg_purchase_price_cents"], Value::Null);
    assert_eq!(int(&later["final"]), 0, "frontier 10:06 is before its end 10:10");
    // Windows 09:56 .. 10:05 have events; nothing else has a row.
    let windows = run.rows(TableId::RealtimeWindow, &[]);
    assert_eq!(windows.len(), 10);
    assert_eq!(windows[0]["window_start"].to_string(), "2019-10-01T09:56:00Z");
    // The remove counts as a brand event.
    let b = run.one(TableId::RealtimeTopBrand, &[("window_start", "2019-10-01T10:05:00Z")]);
    assert_eq!((int(&b["events"]), int(&b["views"]), int(&b["purchases"])), (1, 0, 0));
}

#[test]
fn ties_in_every_top_k_go_to_the_smaller_key() {
    let mut events = Vec::new();
    // 12 products with one view each at 10:00 (ties everywhere), product 99 with two views.
    for p in (20..32).rev() {
        events.push(ev(T0, "view", p, "", if p % 2 == 0 { "samsung" } else { "apple" }, "1.00", p));
    }
    events.push(ev(T0, "view", 99, "", "xiaomi", "3.00", 1));
    events.push(ev(T0, "view", 99, "", "xiaomi", "5.00", 2));
    let run = batch_on(&lines(&events), None, None);
    let top = run.rows(TableId::RealtimeTopProduct, &[("window_start", "2019-10-01T10:00:00Z")]);
    let ids: Vec<i64> = top.iter().map(|r| int(&r["product_id"])).collect();
    assert_eq!(ids, vec![99, 20, 21, 22, 23, 24, 25, 26, 27, 28], "top 10, ties by product_id");
    assert_eq!(real(&top[0]["avg_price_cents"]), 400.0);
    let brands = run.rows(TableId::RealtimeTopBrand, &[("window_start", "2019-10-01T10:00:00Z")]);
    let names: Vec<String> = brands.iter().map(|r| r["brand"].to_string()).collect();
    assert_eq!(names, ["apple", "samsung", "xiaomi"], "6, 6 and 2 events: the tie by name");

    // Recommendations: every product scores 1 except 99 (2 viewers).
    let recs = run.rows(TableId::Recommendation, &[("snapshot", "current"), ("age_group", "*"), ("region", "*")]);
    let ids: Vec<i64> = recs.iter().map(|r| int(&r["product_id"])).collect();
    assert_eq!(ids, vec![99, 20, 21, 22, 23, 24, 25, 26, 27, 28]);
    assert_eq!(int(&recs[0]["score"]), 2);

    // Brand performance: no revenue anywhere, so the brands fill the list by name.
    let ranks: Vec<(String, i64)> = run
        .rows(TableId::BrandPerformance, &[("snapshot", "current"), ("age_group", "*")])
        .iter()
        .map(|r| (r["brand"].to_string(), int(&r["brand_rank"])))
        .collect();
    assert_eq!(ranks, [("apple".to_string(), 1), ("samsung".to_string(), 2), ("xiaomi".to_string(), 3)]);
}

#[test]
fn recommendation_scores_and_segments_follow_profiles() {
    let profiles = "user_id,name,surname,birth_date,city,zip_code,street_name,house_number\n\
                    1,A,B,1994-10-01,Kraków,30-001,x,1\n\
                    2,C,D,1980-05-05,Gdańsk,80-001,y,2\n";
    let events = [
        // User 1 turns 25 at midnight: a view before and a cart after count in both age groups.
        ev("2019-09-30 23:30:00 UTC", "view", 10, "", "apple", "1.00", 1),
        ev("2019-10-01 00:30:00 UTC", "cart", 10, "", "apple", "1.00", 1),
        ev("2019-10-01 00:40:00 UTC", "purchase", 10, "", "apple", "1.00", 2),
        ev("2019-10-01 00:41:00 UTC", "view", 11, "", "", "1.00", 3), // no profile
    ];
    let run = batch_on(&lines(&events), Some(profiles), None);
    let rec = |age: &str, region: &str| {
        run.rows(TableId::Recommendation, &[("snapshot", "current"), ("age_group", age), ("region", region)])
    };
    let young = rec("18-24", "Kraków");
    assert_eq!((int(&young[0]["viewers"]), int(&young[0]["carters"])), (1, 0));
    let older = rec("25-34", "*");
    assert_eq!((int(&older[0]["viewers"]), int(&older[0]["carters"]), int(&older[0]["score"])), (0, 1, 2));
    let all = rec("*", "*");
    assert_eq!(int(&all[0]["product_id"]), 10);
    assert_eq!((int(&all[0]["viewers"]), int(&all[0]["carters"]), int(&all[0]["buyers"])), (1, 1, 1));
    assert_eq!(int(&all[0]["score"]), 1 + 2 + 5);
    assert_eq!(rec("unknown", "unknown").len(), 1, "user without a profile");
    assert_eq!(rec("35-44", "Gdańsk").len(), 1);

    // Brand performance: user 1 is in two age groups but counts once at '*'.
    let apple_all =
        run.one(TableId::BrandPerformance, &[("snapshot", "current"), ("brand", "apple"), ("age_group", "*")]);
    assert_eq!(int(&apple_all["unique_users"]), 2);
    assert_eq!((int(&apple_all["views"]), int(&apple_all["carts"]), int(&apple_all["purchases"])), (1, 1, 1));
    assert_eq!(real(&apple_all["conversion_rate"]), 1.0);
    assert_eq!(real(&apple_all["buyer_conversion_rate"]), 1.0, "1 buyer / 1 viewer (different users)");
    let ages: Vec<String> =
        run.rows(TableId::BrandPerformance, &[("brand", "apple")]).iter().map(|r| r["age_group"].to_string()).collect();
    // Both the 2019-09-30 daily snapshot and current have rows; current has 18-24, 25-34, 35-44, '*'.
    assert!(ages.contains(&"18-24".to_string()) && ages.contains(&"25-34".to_string()));

    // Demographics count every profile, ages at the frontier's date (2019-10-01).
    let demo = run.rows(TableId::Demographics, &[]);
    let pairs: Vec<(String, String, i64)> =
        demo.iter().map(|r| (r["region"].to_string(), r["age_group"].to_string(), int(&r["users"]))).collect();
    assert_eq!(pairs, [("Gdańsk".into(), "35-44".into(), 1), ("Kraków".into(), "25-34".into(), 1)]);
}

#[test]
fn birthdays_on_feb_29() {
    // Born on a leap day: 24 on 2021-02-28, 25 from 2021-03-01 (a common year).
    let profiles = "user_id,birth_date\n1,1996-02-29\n2,1994-02-29\n";
    let at = |time: &str| {
        let events = [ev(time, "view", 10, "", "", "1.00", 1), ev(time, "view", 10, "", "", "1.00", 2)];
        batch_on(&lines(&events), Some(profiles), None)
    };
    let run = at("2021-02-28 12:00:00 UTC");
    assert_eq!(run.rows(TableId::Recommendation, &[("age_group", "18-24"), ("region", "*")]).len(), 1);
    let run = at("2021-03-01 12:00:00 UTC");
    assert_eq!(run.rows(TableId::Recommendation, &[("age_group", "25-34"), ("region", "*")]).len(), 1);
    // 1994-02-29 is no date: an invalid birth_date counts as none.
    assert_eq!(run.rows(TableId::Recommendation, &[("age_group", "unknown"), ("region", "*")]).len(), 1);
}

#[test]
fn daily_snapshots_at_midnights_and_until() {
    let events = [
        ev("2019-10-01 10:00:00 UTC", "view", 10, "", "apple", "1.00", 1),
        ev("2019-10-02 10:00:00 UTC", "view", 11, "", "apple", "1.00", 2),
        ev("2019-10-02 11:00:00 UTC", "purchase", 11, "", "apple", "7.00", 2),
    ];
    let run = batch_on(&lines(&events), None, None);
    let snapshots: std::collections::BTreeSet<String> =
        run.rows(TableId::Funnel, &[]).iter().map(|r| r["snapshot"].to_string()).collect();
    assert_eq!(snapshots, ["2019-10-01".to_string(), "current".to_string()].into(), "2019-10-02 has not ended");
    let day1 = run.one(TableId::Funnel, &[("snapshot", "2019-10-01"), ("dimension", "all")]);
    assert_eq!(int(&day1["users_viewed"]), 1);
    let week = run.one(TableId::BrandPerformance, &[("snapshot", "current"), ("age_group", "*")]);
    assert_eq!((int(&week["views"]), int(&week["revenue_cents"])), (2, 700), "7 days cover both days");

    // With T exactly at a midnight, current equals that day's snapshot.
    let run = batch_on(&lines(&events), None, Some("2019-10-02T00:00:00Z"));
    for table in [TableId::Funnel, TableId::Recommendation, TableId::BrandPerformance] {
        let strip = |snapshot: &str| -> Vec<Vec<Value>> {
            run.table(table).into_iter().filter(|r| r[0].to_string() == snapshot).map(|r| r[1..].to_vec()).collect()
        };
        assert!(!strip("current").is_empty());
        assert_eq!(strip("current"), strip("2019-10-01"), "{table:?}");
    }
    assert_eq!(run.summary.after_until, 2, "events at or after --until are not applied");
    let products = run.rows(TableId::Product, &[]);
    assert_eq!(products.len(), 1);
    assert_eq!(run.store.state("frontier").unwrap().as_deref(), Some("2019-10-02T00:00:00Z"));
}

#[test]
fn catalog_takes_the_earliest_event_and_breaks_ties() {
    let events = [
        // Product 10's two earliest events share a time: the smaller (category_id, code, brand) wins,
        // and no brand sorts first.
        "2019-10-01 10:00:00 UTC,view,10,200,b.code,zeta,3.00,1,s".to_string(),
        "2019-10-01 10:00:00 UTC,view,10,200,b.code,,1.50,2,s".to_string(),
        "2019-10-01 09:00:00 UTC,cart,10,300,,,2.00,3,s".to_string().replace("09:00", "11:00"),
        "2019-10-01 12:00:00 UTC,purchase,10,300,a.code,alpha,2.50,3,s".to_string(),
        "2019-10-01 12:30:00 UTC,remove_from_cart,11,300,a.code,alpha,9.99,3,s".to_string(),
    ];
    let run = batch_on(&lines(&events), None, None);
    let p = run.one(TableId::Product, &[("product_id", "10")]);
    assert_eq!(int(&p["category_id"]), 200);
    assert_eq!(p["category_code"].to_string(), "b.code");
    assert_eq!(p["brand"], Value::Null);
    assert_eq!(p["first_seen"].to_string(), "2019-10-01T10:00:00Z");
    assert_eq!(p["last_seen"].to_string(), "2019-10-01T12:00:00Z");
    assert_eq!((int(&p["views"]), int(&p["carts"]), int(&p["purchases"])), (2, 1, 1));
    assert_eq!((int(&p["revenue_cents"]), int(&p["min_price_cents"]), int(&p["max_price_cents"])), (250, 150, 300));
    let removed = run.one(TableId::Product, &[("product_id", "11")]);
    assert_eq!(int(&removed["removes"]), 1);
    // Category 300: earliest event (11:00) has no code, so none; two products; three events.
    let c = run.one(TableId::Category, &[("category_id", "300")]);
    assert_eq!(c["category_code"], Value::Null);
    assert_eq!((int(&c["products"]), int(&c["events"])), (2, 3));
}
