//! Serving: the JSON API (filters, errors, the bearer token), `/health` and `/metrics` over a real
//! store; the dashboard in headless Chromium (Debian's `chromium`), which must load without a
//! console error and show the numbers the API returns; and `cartflow demo`, whose paced replay the
//! dashboard follows live and whose final store equals `batch`.

mod common;

use std::io::{BufRead, Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use cartflow_connectors::http::{HttpServer, ServeOptions};
use cartflow_connectors::store::sqlite::{Query, SqliteStore};
use cartflow_dataflows::schema::{table_named, TableId};
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
    for path in ["/api/tables/funnel", "/metrics", "/api/state"] {
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

/// Runs headless Chromium on `url` with `mode` (`--dump-dom` or `--screenshot=…`), giving the
/// page's scripts ten seconds of virtual time; returns (stdout, stderr).
fn headless(chromium: &Path, profile: &Path, mode: &str, url: &str) -> (String, String) {
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
            "--window-size=1400,1800",
            "--virtual-time-budget=10000",
        ])
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
    let (dom, stderr) = headless(&chromium, &dir.path().join("profile"), "--dump-dom", &url);
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
    assert!(dom.contains(&format!("<td class=\"text\" data-field=\"product_id\">{}</td>", product["product_id"])));

    let screenshot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    let _ = std::fs::remove_file(&screenshot);
    let (_, stderr) =
        headless(&chromium, &dir.path().join("profile"), &format!("--screenshot={}", screenshot.display()), &url);
    assert!(console_lines(&stderr).is_empty(), "console messages: {:#?}", console_lines(&stderr));
    let png = std::fs::read(&screenshot).unwrap();
    assert!(png.starts_with(b"\x89PNG") && png.len() > 20_000, "a real screenshot ({} bytes)", png.len());
    eprintln!("dashboard screenshot: {}", screenshot.display());
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
        let (dom, stderr) = headless(&chromium, &dir.path().join("profile"), "--dump-dom", &url);
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
