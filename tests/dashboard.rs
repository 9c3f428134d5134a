//! Serving: the JSON API (filters, lists, `/api/activity`, errors, the bearer token), `/health` and
//! `/metrics` over a real store; the dashboard in headless Chromium (Debian's `chromium`), which
//! must load without a console error and show the numbers the API returns (trends, the funnel
//! drawing, product labels), with screenshots at desktop and phone widths; and `cartflow demo`,
//! whose paced replay the dashboard follows live and whose final store equals `batch`.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use cartflow_connectors::http::{HttpServer, ServeOptions};
use cartflow_connectors::store::sqlite::{Query, SqliteStore};
use cartflow_dataflows::schema::{table_named, Row, TableId};
use common::{assert_same_results, batch_args, generated};
use serde_json::Value as Json;

/// A plain HTTP/1.1 GET: (status, body).
fn get(address: SocketAddr, path: &str, token: Option<&str>) -> (u16, String) {
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {address}\r\n{auth}Connection: close\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("a status");
    (status, body.to_string())
}

fn get_json(address: SocketAddr, path: &str, token: Option<&str>) -> Json {
    let (status, body) = get(address, path, token);
    assert_eq!(status, 200, "{path}: {body}");
    serde_json::from_str(&body).unwrap()
}

/// Percent-encodes a query value.
fn encoded(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// The realtime windows' columns `/api/activity` sums.
const ACTIVITY: [&str; 6] = ["total_events", "views", "carts", "removes", "purchases", "revenue_cents"];

/// What `/api/activity` answers, from the store's windows starting in `[from, to)`: per bucket (a
/// window start's first `prefix` characters: 10 for a day, 13 for an hour) the windows inside it,
/// the sums of [`ACTIVITY`] over those that tile it (starting at a multiple of 5 minutes) and the
/// most active users of any of them.
fn activity_from_windows(
    windows: &[Row],
    prefix: usize,
    from: &str,
    to: &str,
) -> BTreeMap<String, (u64, Vec<i64>, i64)> {
    let table = table_named("realtime_window").unwrap();
    let column = |name: &str| table.column_index(name).unwrap();
    // A window ending in the next bucket is in none; one ending at the bucket's end is inside it.
    let end_of_bucket = if prefix == 10 { "T00:00:00Z" } else { ":00:00Z" };
    let mut buckets: BTreeMap<String, (u64, Vec<i64>, i64)> = BTreeMap::new();
    for w in windows {
        let (start, end) = (w[column("window_start")].as_str().unwrap(), w[column("window_end")].as_str().unwrap());
        if !(from..to).contains(&start) || (end[..prefix] != start[..prefix] && &end[prefix..] != end_of_bucket) {
            continue;
        }
        let entry = buckets.entry(start[..prefix].to_string()).or_insert_with(|| (0, vec![0; ACTIVITY.len()], 0));
        entry.0 += 1;
        entry.2 = entry.2.max(w[column("active_users")].as_i64().unwrap());
        if start[14..16].parse::<u32>().unwrap().is_multiple_of(5) && &start[17..19] == "00" {
            for (sum, name) in entry.1.iter_mut().zip(ACTIVITY) {
                *sum += w[column(name)].as_i64().unwrap();
            }
        }
    }
    buckets
}

/// A store written by `batch` from generated events with profiles.
fn batch_store(dir: &Path) -> PathBuf {
    let (events, users) = generated(dir, 60_000, 2, 5);
    let db = dir.join("store.db");
    cartflow::commands::batch::run(&batch_args(vec![events], Some(users), None, db.clone())).unwrap();
    db
}

#[test]
fn the_api_filters_checks_its_parameters_and_honours_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let db = batch_store(dir.path());
    let token = Some("s3cret");
    let server = HttpServer::start(ServeOptions {
        listen: "127.0.0.1:0".parse().unwrap(),
        db: Some(db.clone()),
        token: token.map(Into::into),
        max_lag: None,
    })
    .unwrap();
    let address = server.address();
    let store = SqliteStore::open_read_only(&db).unwrap();

    // Open without the token: the page and the health check; everything else needs it.
    let health: Json = serde_json::from_str(&get(address, "/health", None).1).unwrap();
    assert_eq!(health["status"], "ok");
    // With --max-lag, results older than it fail the health check (this store's frontier is in
    // 2019); without, they never do.
    for (max_lag, code, status) in [(Some(3_600), 503, "lagging"), (Some(i64::MAX / 2), 200, "ok")] {
        let lagging = HttpServer::start(ServeOptions {
            listen: "127.0.0.1:0".parse().unwrap(),
            db: Some(db.clone()),
            token: None,
            max_lag,
        })
        .unwrap();
        let (got, body) = get(lagging.address(), "/health", None);
        let json: Json = serde_json::from_str(&body).unwrap();
        assert_eq!((got, json["status"].as_str()), (code, Some(status)), "--max-lag {max_lag:?}: {body}");
        assert_eq!(json["max_lag_seconds"], max_lag.unwrap());
        lagging.stop().unwrap();
    }
    assert_eq!(health["frontier"].as_str(), store.state("frontier").unwrap().as_deref());
    assert!(get(address, "/", None).1.contains("<title>cartflow</title>"));
    for path in ["/api/tables/funnel", "/metrics", "/api/state", "/api/activity"] {
        let (status, body) = get(address, path, None);
        assert_eq!(status, 401, "{path}: {body}");
        assert_eq!(get(address, path, Some("wrong")).0, 401, "{path}");
    }

    // Filters give what the store holds.
    let funnel = table_named("funnel").unwrap();
    let got = get_json(address, "/api/tables/funnel?snapshot=current&dimension=brand&limit=100000", token);
    let want = store
        .query(&Query {
            equals: vec![("snapshot".into(), "current".into()), ("dimension".into(), "brand".into())],
            ..Query::all(funnel)
        })
        .unwrap();
    assert!(want.len() > 20);
    assert_eq!(got["count"].as_u64().unwrap() as usize, want.len());
    let json_rows: Vec<Json> = want.iter().map(|r| cartflow_connectors::store::json::row_json(funnel, r)).collect();
    let got_rows = got["rows"].as_array().unwrap();
    if let Some(i) = got_rows.iter().zip(&json_rows).position(|(a, b)| a != b) {
        panic!("row {i} differs:\n api:   {}\n store: {}", got_rows[i], json_rows[i]);
    }

    // The busiest brands first, ties by key (descending).
    let top = get_json(
        address,
        "/api/tables/funnel?snapshot=current&dimension=brand&sort=users_viewed&order=desc&limit=3",
        token,
    );
    let mut by_views = want.clone();
    by_views.sort_by(|a, b| b[3].total_cmp(&a[3]).then_with(|| b[2].total_cmp(&a[2])));
    let expected: Vec<Json> =
        by_views[..3].iter().map(|r| cartflow_connectors::store::json::row_json(funnel, r)).collect();
    assert_eq!(top["rows"].as_array().unwrap(), &expected);

    let windows = store.read_table(TableId::RealtimeWindow).unwrap();
    let in_range = windows
        .iter()
        .filter(|w| {
            let start = w[0].as_str().unwrap();
            ("2019-12-01T12:00:00Z"..="2019-12-01T12:59:59Z").contains(&start)
        })
        .count();
    assert!(in_range > 0);
    let got = get_json(
        address,
        "/api/tables/realtime_window?from=2019-12-01T12:00:00Z&to=2019-12-01%2013:00:00&limit=100000",
        token,
    );
    assert_eq!(got["count"].as_u64().unwrap() as usize, in_range);
    let newest = get_json(address, "/api/tables/realtime_window?order=desc&limit=1", token);
    assert_eq!(newest["rows"][0]["window_start"].as_str(), windows.last().unwrap()[0].as_str());

    // Lists: an integer column takes values separated by commas, any column may be repeated; the
    // rows equal to any of them, each once, in the order asked for.
    let product = table_named("product").unwrap();
    let products = store.read_table(TableId::Product).unwrap();
    let (first, middle, last) = (&products[0], &products[products.len() / 2], &products[products.len() - 1]);
    let as_json =
        |rows: &[&Row]| rows.iter().map(|r| cartflow_connectors::store::json::row_json(product, r)).collect::<Vec<_>>();
    let list = format!("{},{},{},{}", last[0], first[0], middle[0], last[0]);
    let got = get_json(address, &format!("/api/tables/product?product_id={list}"), token);
    assert_eq!(got["count"], 3);
    assert_eq!(got["rows"].as_array().unwrap(), &as_json(&[first, middle, last]));
    let got = get_json(address, &format!("/api/tables/product?product_id={list}&order=desc&limit=2"), token);
    assert_eq!(got["rows"].as_array().unwrap(), &as_json(&[last, middle]));
    let views = product.column_index("views").unwrap();
    let mut by_views = vec![first, middle, last];
    by_views.sort_by(|a, b| b[views].total_cmp(&a[views]).then_with(|| b[0].total_cmp(&a[0])));
    let got = get_json(address, &format!("/api/tables/product?product_id={list}&sort=views&order=desc"), token);
    assert_eq!(got["rows"].as_array().unwrap(), &as_json(&by_views));
    // Two categories of many products each (one written twice, as 7 and 07 would be), sorted and
    // limited: the same rows as filtering and sorting every product here.
    let category = product.column_index("category_id").unwrap();
    let with_category: Vec<&Row> = products.iter().filter(|r| r[category].as_i64().is_some()).collect();
    let (a, b) = (&with_category[0][category], &with_category[with_category.len() - 1][category]);
    let mut in_both: Vec<&Row> = products.iter().filter(|r| &r[category] == a || &r[category] == b).collect();
    in_both.sort_by(|x, y| y[views].total_cmp(&x[views]).then_with(|| y[0].total_cmp(&x[0])));
    in_both.truncate(3);
    let got =
        get_json(address, &format!("/api/tables/product?category_id={a},{b},{a}&sort=views&order=desc&limit=3"), token);
    assert_eq!(got["rows"].as_array().unwrap(), &as_json(&in_both));
    let brand_performance = table_named("brand_performance").unwrap();
    let ranked = store
        .query(&Query {
            equals: vec![("snapshot".into(), "current".into()), ("age_group".into(), "*".into())],
            sort_by: Some("brand_rank".into()),
            ..Query::all(brand_performance)
        })
        .unwrap();
    assert!(ranked.len() >= 3);
    let brand_of = |r: &Row| encoded(r[1].as_str().unwrap());
    let got = get_json(
        address,
        &format!(
            "/api/tables/brand_performance?snapshot=current&segment=*&brand={}&brand={}&sort=brand_rank",
            brand_of(&ranked[2]),
            brand_of(&ranked[0])
        ),
        token,
    );
    let want: Vec<Json> = [&ranked[0], &ranked[2]]
        .iter()
        .map(|r| cartflow_connectors::store::json::row_json(brand_performance, r))
        .collect();
    assert_eq!(got["rows"].as_array().unwrap(), &want);

    // /api/activity: the windows inside each day (or hour) summed over the 5-minute windows that
    // tile it, where every event is exactly once.
    let check_activity = |path: &str, prefix: usize, from: &str, to: &str| -> Json {
        let got = get_json(address, path, token);
        let want = activity_from_windows(&windows, prefix, from, to);
        let rows = got["rows"].as_array().unwrap();
        let starts: Vec<&str> = rows.iter().map(|r| &r["start"].as_str().unwrap()[..prefix]).collect();
        assert_eq!(starts, want.keys().map(String::as_str).collect::<Vec<_>>(), "{path}: the buckets");
        for (i, row) in rows.iter().enumerate() {
            let (count, sums, peak) = &want[&row["start"].as_str().unwrap()[..prefix]];
            assert_eq!(row["windows"], *count, "{path}: {row}");
            // Every bucket but the last is final (the store's last windows may still be open).
            if i + 1 < rows.len() {
                assert_eq!(row["final"], true, "{path}: {row}");
            }
            assert_eq!(row["peak_active_users"], *peak, "{path}: {row}");
            for (name, sum) in ACTIVITY.iter().zip(sums) {
                assert_eq!(row[*name], *sum, "{path}: {name} of {row}");
            }
        }
        got
    };
    let days = check_activity("/api/activity?by=day", 10, "0000", "9999");
    let day_rows = days["rows"].as_array().unwrap();
    // The windows that start before the first midnight and reach into it make no day of their own.
    assert_eq!(day_rows[0]["day"], "2019-12-01", "{days}");
    // The days add up to the catalog's totals.
    for name in ["views", "carts", "purchases", "revenue_cents"] {
        let i = product.column_index(name).unwrap();
        let catalog: i64 = products.iter().map(|p| p[i].as_i64().unwrap()).sum();
        let per_day: i64 = day_rows.iter().map(|d| d[name].as_i64().unwrap()).sum();
        assert_eq!(per_day, catalog, "{name}: the days add up to the product table");
    }
    let hours = check_activity("/api/activity?by=hour&from=2019-12-02&to=2019-12-03", 13, "2019-12-02", "2019-12-03");
    let hour_rows = hours["rows"].as_array().unwrap();
    assert!(hour_rows.iter().all(|h| h["day"] == "2019-12-02"), "{hours}");
    let day = day_rows.iter().find(|d| d["day"] == "2019-12-02").unwrap();
    for name in ["total_events", "purchases", "revenue_cents"] {
        let total: i64 = hour_rows.iter().map(|h| h[name].as_i64().unwrap()).sum();
        assert_eq!(day[name], total, "the hours of 2019-12-02 add up to the day: {name}");
    }

    let latest = get_json(address, "/api/tables/brand_performance?snapshot=latest&segment=*&limit=1", token);
    assert_eq!(latest["snapshot"], "2019-12-02");
    assert_eq!(latest["rows"][0]["age_group"], "*");
    let everyone = get_json(address, "/api/tables/recommendation?snapshot=current&segment=*/*", token);
    assert!(everyone["count"].as_u64().unwrap() > 0);
    assert!(everyone["rows"].as_array().unwrap().iter().all(|r| r["age_group"] == "*" && r["region"] == "*"));
    let snapshots = get_json(address, "/api/snapshots", token);
    assert_eq!(snapshots["funnel"], serde_json::json!(["current", "2019-12-02", "2019-12-01"]));

    // Mistakes get a 400 (or 404) that says what is wrong.
    for (path, status, says) in [
        ("/api/tables/funnel?limit=0", 400, "limit must be"),
        ("/api/tables/funnel?limit=many", 400, "limit must be"),
        ("/api/tables/funnel?order=up", 400, "order must be"),
        ("/api/tables/funnel?sort=popularity", 400, "no column 'popularity'"),
        ("/api/tables/funnel?snapshot=yesterday", 400, "snapshot must be"),
        ("/api/tables/product?segment=x", 400, "unknown parameter 'segment'"),
        ("/api/tables/product?colour=red", 400, "unknown parameter 'colour'"),
        ("/api/tables/product?product_id=abc", 400, "product_id is an integer column"),
        ("/api/tables/product?product_id=1,abc", 400, "product_id is an integer column; 'abc'"),
        ("/api/tables/product?product_id=1,2&category_id=3,4", 400, "only one column may list several values"),
        ("/api/activity?by=week", 400, "by must be day or hour"),
        ("/api/activity?from=soon", 400, "from:"),
        ("/api/activity?product_id=1", 400, "unknown parameter 'product_id'"),
        ("/api/tables/recommendation?segment=25-34", 400, "AGE_GROUP/REGION"),
        ("/api/tables/realtime_window?from=soon", 400, "from:"),
        ("/api/tables/orders", 404, "no table 'orders'"),
        ("/nowhere", 404, "no such endpoint"),
    ] {
        let (got_status, body) = get(address, path, token);
        assert_eq!(got_status, status, "{path}: {body}");
        let error: Json = serde_json::from_str(&body).unwrap();
        assert!(error["error"].as_str().unwrap().contains(says), "{path}: {body}");
    }
    let many: Vec<String> = (1..=101).map(|i| i.to_string()).collect();
    let (status, body) = get(address, &format!("/api/tables/product?product_id={}", many.join(",")), token);
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("at most 100"), "{body}");

    // No job runs in this process: /metrics mirrors the store's pipeline_state.
    let (status, metrics) = get(address, "/metrics", token);
    assert_eq!(status, 200);
    let applied = store.state("events_applied").unwrap().unwrap();
    assert!(metrics.contains(&format!("cartflow_events_in_total {applied}\n")), "{metrics}");
    assert!(metrics.contains("cartflow_frontier_timestamp_seconds "), "{metrics}");
    server.stop().unwrap();
}

/// Debian's Chromium, or `None` outside CI when it is not installed (CI installs it).
fn chromium() -> Option<PathBuf> {
    let path = PathBuf::from("/usr/bin/chromium");
    if path.exists() {
        return Some(path);
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("chromium is missing under CI (.ci/run installs Debian's chromium)");
    }
    eprintln!("SKIPPED: /usr/bin/chromium is not installed (apt-get install chromium)");
    None
}

/// The window sizes of the dashboard's screenshots: a desktop and a phone.
const DESKTOP: (u32, u32) = (1280, 900);
const PHONE: (u32, u32) = (390, 844);

/// Runs headless Chromium on `url` with `mode` (`--dump-dom` or `--screenshot=…`) in a window of
/// `size` (width, height), giving the page's scripts ten seconds of virtual time; returns (stdout,
/// stderr). Headless Chromium lays a page out at least 500 px wide while it runs, and narrows it to
/// the size asked for just before a screenshot (the page redraws its charts when resized).
fn headless(chromium: &Path, profile: &Path, size: (u32, u32), mode: &str, url: &str) -> (String, String) {
    let output = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--enable-logging=stderr",
            "--v=0",
            "--virtual-time-budget=10000",
        ])
        .arg(format!("--window-size={},{}", size.0, size.1))
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(mode)
        .arg(url)
        .output()
        .unwrap();
    assert!(output.status.success(), "chromium failed: {}", String::from_utf8_lossy(&output.stderr));
    (String::from_utf8_lossy(&output.stdout).into_owned(), String::from_utf8_lossy(&output.stderr).into_owned())
}

/// The text inside the element with this id.
fn element_text<'a>(dom: &'a str, id: &str) -> &'a str {
    let open = format!("id=\"{id}\"");
    let start = dom.find(&open).unwrap_or_else(|| panic!("no #{id} in the page"));
    let after = &dom[start..];
    let text = &after[after.find('>').unwrap() + 1..];
    &text[..text.find('<').unwrap()]
}

/// The `data-value` of the cell `data-field="{field}"` in the first row with `row` (an attribute
/// such as `data-day="2019-12-01"`) of the table with this id.
fn cell<'a>(dom: &'a str, id: &str, row: &str, field: &str) -> &'a str {
    let start = dom.find(&format!("id=\"{id}\"")).unwrap_or_else(|| panic!("no #{id} in the page"));
    let table = &dom[start..];
    let table = &table[..table.find("</table>").unwrap_or(table.len())];
    let at = table.find(row).unwrap_or_else(|| panic!("no row {row} in #{id}: {table}"));
    let tr = &table[at..];
    let tr = &tr[..tr.find("</tr>").unwrap_or(tr.len())];
    let key = format!("data-field=\"{field}\" data-value=\"");
    let at = tr.find(&key).unwrap_or_else(|| panic!("no {field} in the row {row} of #{id}: {tr}")) + key.len();
    tr[at..].split('"').next().unwrap()
}

/// A number the page holds as a `data-value` equals the API's (null: an empty value).
fn assert_shown(shown: &str, api: &Json, what: &str) {
    if api.is_null() {
        assert_eq!(shown, "", "{what}: the API has null");
    } else {
        assert_eq!(shown.parse::<f64>().ok(), api.as_f64(), "{what}: the page shows '{shown}', the API {api}");
    }
}

/// The funnel drawing has three stages with the users of the API's funnel row, and its table the
/// same users, the drop-offs and the mean times between the stages.
fn assert_funnel_drawn(dom: &str, row: &Json) {
    let start = dom.find("id=\"funnel-chart\"").expect("the funnel drawing");
    let svg = &dom[start..];
    let svg = &svg[..svg.find("</svg>").expect("the end of the funnel drawing")];
    assert_eq!(svg.matches("class=\"stage\"").count(), 3, "three stages: {svg}");
    for (stage, field) in [("view", "users_viewed"), ("cart", "users_carted"), ("purchase", "users_purchased")] {
        let key = format!("data-stage=\"{stage}\" data-value=\"");
        let at = svg.find(&key).unwrap_or_else(|| panic!("no stage {stage} in the funnel drawing: {svg}")) + key.len();
        assert_shown(svg[at..].split('"').next().unwrap(), &row[field], &format!("the drawing's {stage} stage"));
        let stage_row = format!("data-stage=\"{stage}\"");
        assert_shown(cell(dom, "funnel-stages", &stage_row, "users"), &row[field], &format!("the {stage} stage"));
    }
    for (stage, dropoff, mean) in [
        ("cart", "view_to_cart_dropoff", "avg_view_to_cart_s"),
        ("purchase", "cart_to_purchase_dropoff", "avg_cart_to_purchase_s"),
    ] {
        let stage_row = format!("data-stage=\"{stage}\"");
        assert_shown(cell(dom, "funnel-stages", &stage_row, "dropoff"), &row[dropoff], dropoff);
        assert_shown(cell(dom, "funnel-stages", &stage_row, "mean_s"), &row[mean], mean);
    }
}

/// The page's `data-loaded` count and `data-errors` count from the `<body>` tag.
fn body_flags(dom: &str) -> (u32, u32) {
    let body = &dom[dom.find("<body").unwrap()..];
    let body = &body[..body.find('>').unwrap()];
    let attribute = |name: &str| {
        let at = body.find(&format!("{name}=\"")).unwrap() + name.len() + 2;
        body[at..].split('"').next().unwrap().parse::<u32>().unwrap()
    };
    (attribute("data-loaded"), attribute("data-errors"))
}

/// Console messages Chromium logged (none is expected: the page logs nothing when all is well).
fn console_lines(stderr: &str) -> Vec<&str> {
    stderr.lines().filter(|l| l.contains(":CONSOLE")).collect()
}

/// Thousands separators, as the page's `Intl.NumberFormat("en-US")` writes them.
fn grouped(n: i64) -> String {
    let digits = n.abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 {
        format!("-{out}")
    } else {
        out
    }
}

#[test]
fn the_dashboard_loads_in_headless_chromium_and_shows_the_api_numbers() {
    let Some(chromium) = chromium() else { return };
    let dir = tempfile::tempdir().unwrap();
    let db = batch_store(dir.path());
    let token = "dashboard-token";
    let server = HttpServer::start(ServeOptions {
        listen: "127.0.0.1:0".parse().unwrap(),
        db: Some(db),
        token: Some(token.into()),
        max_lag: None,
    })
    .unwrap();
    let address = server.address();
    // The page takes the token from its fragment and sends it with every API call.
    let url = format!("http://{address}/#token={token}");
    let profile = dir.path().join("profile");
    let (dom, stderr) = headless(&chromium, &profile, DESKTOP, "--dump-dom", &url);
    let (loaded, errors) = body_flags(&dom);
    assert!(loaded >= 1, "the page never finished a refresh");
    assert_eq!(errors, 0, "errors on the page: {}", element_text(&dom, "errors"));
    assert!(console_lines(&stderr).is_empty(), "console messages: {:#?}", console_lines(&stderr));

    let state = get_json(address, "/api/state", Some(token));
    assert_eq!(element_text(&dom, "frontier"), state["frontier"].as_str().unwrap());
    assert_eq!(element_text(&dom, "events"), grouped(state["events_applied"].as_str().unwrap().parse().unwrap()));
    let window = &get_json(address, "/api/tables/realtime_window?final=1&order=desc&limit=1", Some(token))["rows"][0];
    assert_eq!(element_text(&dom, "latest-active-users"), grouped(window["active_users"].as_i64().unwrap()));
    let funnel = get_json(address, "/api/tables/funnel?snapshot=current&dimension=category&limit=100000", Some(token));
    let top = funnel["rows"].as_array().unwrap().iter().max_by_key(|r| r["users_viewed"].as_i64().unwrap()).unwrap();
    assert!(
        dom.contains(&format!("<td class=\"text\" data-field=\"segment\">{}</td>", top["segment"].as_str().unwrap())),
        "the funnel shows its busiest category {}",
        top["segment"]
    );
    let brand =
        &get_json(address, "/api/tables/brand_performance?snapshot=current&segment=*&brand_rank=1", Some(token))
            ["rows"][0];
    assert!(dom.contains(&format!("<td class=\"text\" data-field=\"brand\">{}</td>", brand["brand"].as_str().unwrap())));
    let product = &get_json(
        address,
        &format!("/api/tables/realtime_top_product?window_start={}&rank=1", window["window_start"].as_str().unwrap()),
        Some(token),
    )["rows"][0];
    // Every product id shown carries its brand and category from the product table.
    let api = |path: &str| get_json(address, path, Some(token));
    let label = |id: &Json| {
        let row = &api(&format!("/api/tables/product?product_id={id}"))["rows"][0];
        let brand = row["brand"].as_str().unwrap_or("no brand");
        format!("{brand} · {}", row["category_code"].as_str().unwrap_or("no category"))
    };
    let id = &product["product_id"];
    let labelled = format!(
        "<td class=\"text\" data-field=\"product_id\"><span class=\"pid\">{id}</span> <span class=\"plabel\" data-product-id=\"{id}\">{}</span></td>",
        label(id)
    );
    assert!(dom.contains(&labelled), "the top product: {labelled}");
    let recommended = &api("/api/tables/recommendation?snapshot=current&segment=*/*&rank=1")["rows"][0];
    let id = &recommended["product_id"];
    let labelled = format!("<span class=\"plabel\" data-product-id=\"{id}\">{}</span>", label(id));
    assert!(dom.contains(&labelled), "the first recommendation: {labelled}");

    // Trends: revenue and purchases per day from daily_sales' all/all rows (exact for every day,
    // unlike the windows, kept for the retention only), events per day as /api/activity sums them,
    // the daily funnel snapshots of the segment shown (all), the top brand's revenue in
    // brand_performance's daily snapshots, and the newest day's hours.
    let days = api("/api/activity?by=day");
    let day_rows = days["rows"].as_array().unwrap();
    assert!(!day_rows.is_empty(), "{days}");
    for day in day_rows {
        let row = format!("data-day=\"{}\"", day["day"].as_str().unwrap());
        assert_shown(cell(&dom, "trend-days", &row, "total_events"), &day["total_events"], &format!("events of {row}"));
    }
    let sales = |segment: &str| api(&format!("/api/tables/daily_sales?{segment}&from=2000-01-01&sort=day&limit=100"));
    let all_sales = sales("dimension=all&segment=all");
    assert!(all_sales["count"].as_u64().unwrap() >= 2, "{all_sales}");
    for day in all_sales["rows"].as_array().unwrap() {
        let row = format!("data-day=\"{}\"", day["day"].as_str().unwrap());
        for field in ["revenue_cents", "purchases"] {
            assert_shown(cell(&dom, "trend-days", &row, field), &day[field], &format!("{field} of {row}"));
        }
    }
    let rates = ["users_viewed", "users_carted", "users_purchased", "view_to_cart_rate", "cart_to_purchase_rate"];
    let funnel_days = api("/api/tables/funnel?dimension=all&segment=all&from=2000-01-01");
    assert!(funnel_days["count"].as_u64().unwrap() >= 2, "{funnel_days}");
    for day in funnel_days["rows"].as_array().unwrap() {
        let row = format!("data-day=\"{}\"", day["snapshot"].as_str().unwrap());
        for field in rates.iter().chain(&["view_to_purchase_rate"]) {
            assert_shown(cell(&dom, "trend-days", &row, field), &day[*field], &format!("{field} of {row}"));
        }
    }
    let top_brand = brand["brand"].as_str().unwrap();
    let brand_days =
        api(&format!("/api/tables/brand_performance?segment=*&brand={}&from=2000-01-01", encoded(top_brand)));
    assert!(brand_days["count"].as_u64().unwrap() >= 2, "{brand_days}");
    for day in brand_days["rows"].as_array().unwrap() {
        let snapshot = day["snapshot"].as_str().unwrap();
        let row = format!("data-brand=\"{top_brand}\"");
        assert_shown(
            cell(&dom, "trend-brands", &row, snapshot),
            &day["revenue_cents"],
            &format!("{top_brand} {snapshot}"),
        );
    }
    let newest_day = day_rows.last().unwrap()["day"].as_str().unwrap();
    let hours = api(&format!("/api/activity?by=hour&from={newest_day}"));
    let hour_rows: Vec<&Json> = hours["rows"].as_array().unwrap().iter().filter(|h| h["day"] == newest_day).collect();
    assert!(!hour_rows.is_empty(), "{hours}");
    for hour in hour_rows {
        let row = format!("data-hour=\"{}\"", &hour["start"].as_str().unwrap()[11..13]);
        for field in ["total_events", "purchases", "revenue_cents", "peak_active_users"] {
            assert_shown(cell(&dom, "trend-hours", &row, field), &hour[field], &format!("{field} of {row}"));
        }
    }
    // The funnel of the segment shown, drawn: all, at the current snapshot.
    assert_funnel_drawn(&dom, &api("/api/tables/funnel?snapshot=current&dimension=all&segment=all")["rows"][0]);
    assert_eq!(element_text(&dom, "revenue-segment"), "all events");

    // A brand's funnel and trend, as a click on it shows them (and a link keeps them).
    let brand_url = format!("{url}&trend=brand:{}", encoded(top_brand));
    let (dom, stderr) = headless(&chromium, &profile, DESKTOP, "--dump-dom", &brand_url);
    let (loaded, errors) = body_flags(&dom);
    assert!(loaded >= 1 && errors == 0, "loaded {loaded}, errors: {}", element_text(&dom, "errors"));
    assert!(console_lines(&stderr).is_empty(), "console messages: {:#?}", console_lines(&stderr));
    assert_eq!(element_text(&dom, "trend-segment"), format!("brand {top_brand}"));
    let segment = format!("dimension=brand&segment={}", encoded(top_brand));
    assert_funnel_drawn(&dom, &api(&format!("/api/tables/funnel?snapshot=current&{segment}"))["rows"][0]);
    let segment_days = api(&format!("/api/tables/funnel?{segment}&from=2000-01-01"));
    assert!(segment_days["count"].as_u64().unwrap() >= 1, "{segment_days}");
    for day in segment_days["rows"].as_array().unwrap() {
        let row = format!("data-day=\"{}\"", day["snapshot"].as_str().unwrap());
        for field in rates {
            assert_shown(cell(&dom, "trend-days", &row, field), &day[field], &format!("{top_brand}: {field} of {row}"));
        }
    }
    for day in brand_days["rows"].as_array().unwrap() {
        let row = format!("data-day=\"{}\"", day["snapshot"].as_str().unwrap());
        let shown = cell(&dom, "trend-days", &row, "brand_revenue_cents");
        assert_shown(shown, &day["revenue_cents"], &format!("{top_brand}: 7-day revenue of {row}"));
    }
    // The revenue and purchases per day charted are the brand's daily_sales rows, which differ
    // from all's: a page ignoring the segment would fail here.
    for id in ["revenue-segment", "purchases-segment"] {
        assert_eq!(element_text(&dom, id), format!("brand {top_brand}"), "#{id}");
    }
    let brand_sales = sales(&segment);
    assert!(brand_sales["count"].as_u64().unwrap() >= 1, "{brand_sales}");
    for day in brand_sales["rows"].as_array().unwrap() {
        let row = format!("data-day=\"{}\"", day["day"].as_str().unwrap());
        for (field, column) in [("segment_revenue_cents", "revenue_cents"), ("segment_purchases", "purchases")] {
            let shown = cell(&dom, "trend-days", &row, field);
            assert_shown(shown, &day[column], &format!("{top_brand}: {column} of {row}"));
        }
    }
    // Beside them all events' from the same daily_sales request (it lists both segments).
    for day in all_sales["rows"].as_array().unwrap() {
        let row = format!("data-day=\"{}\"", day["day"].as_str().unwrap());
        for field in ["revenue_cents", "purchases"] {
            let shown = cell(&dom, "trend-days", &row, field);
            assert_shown(shown, &day[field], &format!("{top_brand} page: all's {field} of {row}"));
        }
    }
    let per_day = |sales: &Json| -> Vec<(Json, Json, Json)> {
        let rows = sales["rows"].as_array().unwrap();
        rows.iter().map(|r| (r["day"].clone(), r["revenue_cents"].clone(), r["purchases"].clone())).collect()
    };
    assert_ne!(per_day(&brand_sales), per_day(&all_sales), "{top_brand}'s daily sales equal all's");

    // A category's trend the same way: the category with the most revenue on a day.
    let best = api("/api/tables/daily_sales?dimension=category&sort=revenue_cents&order=desc&limit=1");
    let category = best["rows"][0]["segment"].as_str().unwrap().to_string();
    let (dom, stderr) =
        headless(&chromium, &profile, DESKTOP, "--dump-dom", &format!("{url}&trend=category:{}", encoded(&category)));
    assert!(console_lines(&stderr).is_empty(), "console messages: {:#?}", console_lines(&stderr));
    assert_eq!(element_text(&dom, "revenue-segment"), format!("category {category}"));
    let category_sales = sales(&format!("dimension=category&segment={}", encoded(&category)));
    assert_ne!(per_day(&category_sales), per_day(&all_sales), "{category}'s daily sales equal all's");
    for day in category_sales["rows"].as_array().unwrap() {
        let row = format!("data-day=\"{}\"", day["day"].as_str().unwrap());
        for (field, column) in [("segment_revenue_cents", "revenue_cents"), ("segment_purchases", "purchases")] {
            let shown = cell(&dom, "trend-days", &row, field);
            assert_shown(shown, &day[column], &format!("{category}: {column} of {row}"));
        }
    }

    // Screenshots at a desktop's and a phone's width.
    for (size, name, url, least) in
        [(DESKTOP, "dashboard.png", &url, 20_000), (PHONE, "dashboard-phone.png", &brand_url, 10_000)]
    {
        let screenshot = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
        let _ = std::fs::remove_file(&screenshot);
        let (_, stderr) = headless(&chromium, &profile, size, &format!("--screenshot={}", screenshot.display()), url);
        assert!(console_lines(&stderr).is_empty(), "console messages: {:#?}", console_lines(&stderr));
        let png = std::fs::read(&screenshot).unwrap();
        assert!(png.starts_with(b"\x89PNG") && png.len() > least, "a real screenshot ({} bytes)", png.len());
        // The PNG header's width (big-endian, after the signature and the IHDR chunk's length and type).
        let width = u32::from_be_bytes(png[16..20].try_into().unwrap());
        assert_eq!(width, size.0, "{name}: the screenshot's width");
        eprintln!("dashboard screenshot at {}x{}: {}", size.0, size.1, screenshot.display());
    }
    server.stop().unwrap();
}

#[test]
fn the_demo_replays_live_the_dashboard_follows_and_the_result_equals_batch() {
    let dir = tempfile::tempdir().unwrap();
    let demo_dir = dir.path().join("demo");
    let mut child = Command::new(env!("CARGO_BIN_EXE_cartflow"))
        .args(["--log", "warn", "demo", "--listen", "127.0.0.1:0", "--events", "40000", "--days", "1"])
        .args(["--pace", "3000", "--exit-when-done", "--dir"])
        .arg(&demo_dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    stdout.read_line(&mut first).unwrap();
    let url = first.trim().rsplit(' ').next().unwrap().to_string();
    assert!(url.starts_with("http://127.0.0.1:"), "{first}");
    let address: SocketAddr = url.trim_start_matches("http://").trim_end_matches('/').parse().unwrap();

    // The frontier moves while the demo runs (a day at 3000x takes ~29 s).
    let frontier = |address| get_json(address, "/health", None)["frontier"].as_str().map(str::to_string);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut first_seen = frontier(address);
    while first_seen.is_none() {
        assert!(std::time::Instant::now() < deadline, "no boundary was written");
        std::thread::sleep(Duration::from_millis(200));
        first_seen = frontier(address);
    }
    std::thread::sleep(Duration::from_secs(2));
    let later = frontier(address);
    assert!(later > first_seen, "the frontier moved from {first_seen:?} to {later:?}");
    if let Some(chromium) = chromium() {
        let (dom, stderr) = headless(&chromium, &dir.path().join("profile"), DESKTOP, "--dump-dom", &url);
        let (loaded, errors) = body_flags(&dom);
        assert!(loaded >= 1 && errors == 0, "loaded {loaded}, errors: {}", element_text(&dom, "errors"));
        assert!(console_lines(&stderr).is_empty(), "console messages: {:#?}", console_lines(&stderr));
    }
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).unwrap();
    assert!(child.wait().unwrap().success(), "{rest}");
    assert!(rest.contains("the replay is over: 40000 events applied"), "{rest}");

    // Paced and served, the run is still exact.
    let data = demo_dir.join("data");
    let batch_db = dir.path().join("batch.db");
    cartflow::commands::batch::run(&batch_args(
        vec![data.join("events.csv")],
        Some(data.join("users.csv")),
        None,
        batch_db.clone(),
    ))
    .unwrap();
    assert_same_results(&batch_db, &demo_dir.join("cartflow.db"), "demo (paced, 1 min steps, 2 workers)");
}
