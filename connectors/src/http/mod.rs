//! The HTTP side: JSON endpoints for every store table, `/health`, Prometheus `/metrics` and the
//! dashboard at `/`, served with axum from the SQLite store (`cartflow serve`, `run --serve`).
//!
//! Every request opens the store read-only (SQLite's WAL lets it read while `run` writes) on
//! tokio's blocking pool. Bound to loopback by default; with a token, everything but `/` (a page
//! without data) and `/health` needs `Authorization: Bearer <token>`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use cartflow_dataflows::model::time::{
    floor_to, format_date, format_rfc3339, parse_event_time, parse_instant_arg, utc_date, DAY, HOUR,
};
use cartflow_dataflows::schema::{state_key, table_named, Kind, Row, Table, TableId, TABLES};
use serde_json::json;
use tracing::{info, warn};

use crate::metrics::{Snapshot, METRICS};
use crate::store::json::row_json;
use crate::store::sqlite::{Query as StoreQuery, SqliteStore};

const DASHBOARD: &str = include_str!("dashboard.html");

/// Rows a table request returns unless `limit` says otherwise, and the most it may ask for.
const DEFAULT_LIMIT: u64 = 1_000;
const MAX_LIMIT: u64 = 100_000;
/// The most values one column's filter may list (`product_id=1,2,3`, `brand=a&brand=b`).
const MAX_ANY_OF: usize = 100;

#[derive(Clone, Debug)]
pub struct ServeOptions {
    pub listen: SocketAddr,
    /// The SQLite store to read; `None` for a run that writes HBase: then only `/health` and
    /// `/metrics` answer, from the run's live metrics.
    pub db: Option<PathBuf>,
    /// Bearer token required by the API and `/metrics`.
    pub token: Option<String>,
    /// `/health` answers 503 (`"status": "lagging"`) once the frontier is older than this many
    /// seconds of wall clock (`--max-lag`); `None`: never.
    pub max_lag: Option<i64>,
}

struct AppState {
    /// A job that serves its own metrics only (`archive`, `simulate`).
    job: Option<&'static str>,
    db: Option<PathBuf>,
    token: Option<String>,
    max_lag: Option<i64>,
    started: Instant,
}

/// A running server; [`HttpServer::stop`] ends it gracefully.
pub struct HttpServer {
    address: SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<Result<()>>>,
}

impl HttpServer {
    /// Binds and serves on a thread of its own (a small tokio runtime).
    pub fn start(options: ServeOptions) -> Result<HttpServer> {
        HttpServer::start_for(options, None)
    }

    /// `/metrics` and `/health` of a job without a store (`archive`, `simulate`: `--metrics`).
    pub fn start_metrics(listen: SocketAddr, job: &'static str) -> Result<HttpServer> {
        HttpServer::start_for(ServeOptions { listen, db: None, token: None, max_lag: None }, Some(job))
    }

    fn start_for(options: ServeOptions, job: Option<&'static str>) -> Result<HttpServer> {
        let listener = std::net::TcpListener::bind(options.listen)
            .with_context(|| format!("binding the HTTP server to {}", options.listen))?;
        listener.set_nonblocking(true)?;
        let address = listener.local_addr()?;
        if !address.ip().is_loopback() && job.is_some() {
            warn!("serving metrics on {address}, beyond loopback: anyone who reaches it can read them");
        } else if !address.ip().is_loopback() && options.token.is_none() {
            warn!("serving on {address}, beyond loopback, without a token: anyone who reaches it can read the results (set --token)");
        }
        let state = Arc::new(AppState {
            job,
            db: options.db.clone(),
            token: options.token.clone(),
            max_lag: options.max_lag,
            started: Instant::now(),
        });
        let router = router(state);
        let (shutdown, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new().name("http".into()).spawn(move || -> Result<()> {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .max_blocking_threads(4)
                .thread_name("http-worker")
                .enable_all()
                .build()?;
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener)?;
                axum::serve(listener, router)
                    .with_graceful_shutdown(async move {
                        let _ = stopped.await;
                    })
                    .await?;
                Ok(())
            })
        })?;
        match &options.db {
            _ if job.is_some() => {
                info!("serving /health and /metrics of {} at http://{address}/", job.unwrap_or_default())
            }
            Some(db) => info!(
                "serving the dashboard at http://{address}/ and the API at http://{address}/api (store {})",
                db.display()
            ),
            None => info!("serving /health and /metrics at http://{address}/ (the tables are in HBase)"),
        }
        Ok(HttpServer { address, shutdown: Some(shutdown), thread: Some(thread) })
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Stops accepting, finishes the requests in flight, and returns.
    pub fn stop(mut self) -> Result<()> {
        self.stop_inner()
    }

    /// Serves until the process ends (or the server fails).
    pub fn wait(mut self) -> Result<()> {
        // The shutdown sender stays in `self` meanwhile: dropping it would stop the server.
        self.join()
    }

    fn stop_inner(&mut self) -> Result<()> {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        self.join()
    }

    fn join(&mut self) -> Result<()> {
        match self.thread.take() {
            Some(thread) => thread.join().map_err(|_| anyhow::anyhow!("the HTTP server panicked"))?,
            None => Ok(()),
        }
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        let _ = self.stop_inner();
    }
}

fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/", get(dashboard))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/api", get(api_index))
        .route("/api/tables", get(api_index))
        .route("/api/tables/{table}", get(table_rows))
        .route("/api/state", get(pipeline_state))
        .route("/api/snapshots", get(snapshots))
        .route("/api/activity", get(activity))
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(state.clone(), authorize))
        .with_state(state)
}

/// An error answered as `{"error": "..."}` with its status.
struct ApiError(StatusCode, String);

impl ApiError {
    fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError(StatusCode::BAD_REQUEST, message.into())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

impl From<anyhow::Error> for ApiError {
    fn from(error: anyhow::Error) -> ApiError {
        ApiError(StatusCode::SERVICE_UNAVAILABLE, format!("the store could not be read: {error:#}"))
    }
}

async fn authorize(State(state): State<Arc<AppState>>, headers: HeaderMap, request: Request, next: Next) -> Response {
    let open = matches!(request.uri().path(), "/" | "/health");
    if let (Some(token), false) = (&state.token, open) {
        let presented =
            headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
        if presented != Some(token.as_str()) {
            let mut response =
                ApiError(StatusCode::UNAUTHORIZED, "this server needs 'Authorization: Bearer <token>'".into())
                    .into_response();
            response.headers_mut().insert(header::WWW_AUTHENTICATE, "Bearer".parse().expect("a valid header"));
            return response;
        }
    }
    next.run(request).await
}

/// Runs a store read on the blocking pool.
async fn read_store<T: Send + 'static>(
    state: &Arc<AppState>,
    read: impl FnOnce(&SqliteStore) -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    let Some(db) = state.db.clone() else {
        if let Some(job) = state.job {
            return Err(ApiError(
                StatusCode::NOT_FOUND,
                format!("this is the metrics server of cartflow {job}: only /health and /metrics answer"),
            ));
        }
        return Err(ApiError(
            StatusCode::NOT_FOUND,
            "this server has no SQLite store (the run writes HBase): read the tables from HBase; /health and /metrics answer here".into(),
        ));
    };
    tokio::task::spawn_blocking(move || SqliteStore::open_read_only(&db)?.in_one_read(read))
        .await
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, format!("the read failed: {e}")))?
}

async fn dashboard() -> impl IntoResponse {
    ([(header::CACHE_CONTROL, "no-cache")], Html(DASHBOARD))
}

async fn not_found() -> ApiError {
    ApiError(StatusCode::NOT_FOUND, "no such endpoint; see /api for the list".into())
}

fn now_seconds() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

async fn health(State(state): State<Arc<AppState>>) -> Response {
    let uptime = state.started.elapsed().as_secs();
    if let Some(job) = state.job {
        // Alive and serving; how it is doing is in /metrics.
        return Json(json!({ "status": "ok", "job": job, "uptime_seconds": uptime })).into_response();
    }
    let entries = match state.db {
        Some(_) => read_store(&state, |store| Ok(store.state_entries()?)).await,
        // A run into HBase: its own frontier and live edge.
        None => {
            let snapshot = METRICS.snapshot();
            let frontier = snapshot.frontier.map(|f| (state_key::FRONTIER.to_string(), format_rfc3339(f)));
            let edge = snapshot.live_edge.map(|e| (state_key::LIVE_EDGE.to_string(), format_rfc3339(e)));
            Ok(frontier.into_iter().chain(edge).collect())
        }
    };
    match entries {
        Ok(entries) => {
            let frontier = entries.get(state_key::FRONTIER).filter(|f| !f.is_empty()).cloned();
            let lag = frontier
                .as_deref()
                .and_then(|f| cartflow_dataflows::model::time::parse_event_time(f.as_bytes()))
                .map(|f| now_seconds() - f);
            // Results older than `--max-lag` are a failed health check: a supervisor or a load
            // balancer acts on the status code.
            let lagging = state.max_lag.zip(lag).is_some_and(|(max, lag)| lag > max);
            let status = match (frontier.is_some(), lagging) {
                (false, _) => "starting",
                (true, false) => "ok",
                (true, true) => "lagging",
            };
            let code = if lagging { StatusCode::SERVICE_UNAVAILABLE } else { StatusCode::OK };
            // A live source's realtime windows run ahead of the frontier, up to the live edge.
            let edge = entries.get(state_key::LIVE_EDGE).filter(|e| !e.is_empty()).cloned();
            let edge_lag = edge
                .as_deref()
                .and_then(|e| cartflow_dataflows::model::time::parse_event_time(e.as_bytes()))
                .map(|e| now_seconds() - e);
            let body = Json(json!({
                "status": status,
                "frontier": frontier,
                "frontier_lag_seconds": lag,
                "live_edge": edge,
                "live_edge_lag_seconds": edge_lag,
                "max_lag_seconds": state.max_lag,
                "source": entries.get(state_key::SOURCE),
                "uptime_seconds": uptime,
            }));
            (code, body).into_response()
        }
        Err(ApiError(_, error)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "unavailable", "error": error, "uptime_seconds": uptime })),
        )
            .into_response(),
    }
}

async fn metrics(State(state): State<Arc<AppState>>) -> Result<Response, ApiError> {
    let snapshot = if METRICS.is_live() || state.db.is_none() {
        METRICS.snapshot()
    } else {
        read_store(&state, |store| Ok(Snapshot::from_state(&store.state_entries()?))).await?
    };
    let text = snapshot.encode(now_seconds());
    Ok(([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], text).into_response())
}

fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Int => "integer",
        Kind::Real => "real",
        Kind::Text => "text",
    }
}

async fn api_index() -> Json<serde_json::Value> {
    let tables: Vec<_> = TABLES
        .iter()
        .map(|t| {
            json!({
                "name": t.name,
                "url": format!("/api/tables/{}", t.name),
                "key": t.key_columns().iter().map(|c| c.name).collect::<Vec<_>>(),
                "columns": t.columns.iter().map(|c| json!({"name": c.name, "type": kind_name(c.kind)})).collect::<Vec<_>>(),
                "parameters": parameters(t),
            })
        })
        .collect();
    Json(json!({
        "tables": tables,
        "endpoints": ["/health", "/metrics", "/api/tables/{table}", "/api/state", "/api/snapshots", "/api/activity"],
        "parameters": {
            "<column>": format!(
                "rows whose column equals the value; repeat the parameter (or, for an integer column, give a comma-separated list such as product_id=1,2,3) for rows equal to any of up to {MAX_ANY_OF} values (one such column per request)"
            ),
            "snapshot": "current, latest (the newest day) or YYYY-MM-DD (funnel, recommendation, brand_performance)",
            "segment": "funnel and daily_sales: the segment (with dimension=all|category|brand); recommendation: AGE_GROUP/REGION; brand_performance: the age group",
            "from, to": "from <= time < to, RFC 3339 or a date: window_start of the realtime tables, the snapshot day of the snapshot tables, the day of daily_sales",
            "order": "asc (default) or desc, by primary key (or by `sort`, then the key)",
            "sort": "a column to order by before the key (with order=desc: largest first)",
            "limit": format!("at most this many rows (default {DEFAULT_LIMIT}, at most {MAX_LIMIT})"),
        },
        "activity": {
            "url": "/api/activity",
            "rows": "per day or hour: the realtime windows inside it summed (total_events, views, carts, removes, purchases, revenue_cents: exact, from the 5-minute windows that tile it), peak_active_users (the most users of any of its windows), windows (how many lie inside it) and final (all of them are)",
            "parameters": {
                "by": "day (default) or hour",
                "from, to": "from <= window start < to, RFC 3339 or a date, rounded down to a whole day or hour",
            },
        },
    }))
}

/// The parameters a table takes besides its columns.
fn parameters(table: &Table) -> Vec<&'static str> {
    let mut names = vec!["limit", "order", "sort"];
    if table.has_snapshots() {
        names.push("snapshot");
        names.extend(["from", "to"]);
    }
    if matches!(table.id, TableId::Funnel | TableId::Recommendation | TableId::BrandPerformance) {
        names.push("segment");
    }
    if table.id == TableId::DailySales {
        names.extend(["from", "to"]);
    }
    if matches!(table.id, TableId::RealtimeWindow | TableId::RealtimeTopProduct | TableId::RealtimeTopBrand) {
        names.extend(["from", "to"]);
    }
    names
}

/// A table request's parameters, checked; `latest_snapshot` is resolved against the store.
struct TableRequest {
    query: StoreQuery,
    latest_snapshot: bool,
    /// A column filter listing several values: rows whose column equals any of them.
    any_of: Option<(String, Vec<String>)>,
}

fn day(name: &str, text: &str) -> Result<String, ApiError> {
    if let Ok(date) = chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        return Ok(date.format("%Y-%m-%d").to_string());
    }
    let instant = parse_instant_arg(text).map_err(|e| ApiError::bad_request(format!("{name}: {e}")))?;
    Ok(cartflow_dataflows::model::time::utc_date(instant).format("%Y-%m-%d").to_string())
}

fn table_request(table: &'static Table, params: Vec<(String, String)>) -> Result<TableRequest, ApiError> {
    let mut query = StoreQuery { limit: Some(DEFAULT_LIMIT), ..StoreQuery::all(table) };
    let mut latest_snapshot = false;
    let (mut from, mut to) = (None, None);
    // Column filters with their values, in the order given.
    let mut filters: Vec<(String, Vec<String>)> = Vec::new();
    let allowed = parameters(table);
    for (name, value) in params {
        let name = name.as_str();
        if !allowed.contains(&name) && table.column_index(name).is_none() {
            let columns: Vec<_> = table.columns.iter().map(|c| c.name).collect();
            return Err(ApiError::bad_request(format!(
                "unknown parameter '{name}' for table {}: it takes {} and its columns {}",
                table.name,
                allowed.join(", "),
                columns.join(", ")
            )));
        }
        match name {
            "limit" => match value.parse::<u64>() {
                Ok(n) if (1..=MAX_LIMIT).contains(&n) => query.limit = Some(n),
                _ => {
                    return Err(ApiError::bad_request(format!(
                        "limit must be a whole number from 1 to {MAX_LIMIT}, not '{value}'"
                    )))
                }
            },
            "order" => match value.as_str() {
                "asc" => query.descending = false,
                "desc" => query.descending = true,
                other => return Err(ApiError::bad_request(format!("order must be asc or desc, not '{other}'"))),
            },
            "sort" => {
                if table.column_index(&value).is_none() {
                    return Err(ApiError::bad_request(format!("sort: table {} has no column '{value}'", table.name)));
                }
                query.sort_by = Some(value);
            }
            "snapshot" => match value.as_str() {
                "latest" => latest_snapshot = true,
                "current" => query.equals.push(("snapshot".into(), value)),
                other => {
                    chrono::NaiveDate::parse_from_str(other, "%Y-%m-%d").map_err(|_| {
                        ApiError::bad_request(format!(
                            "snapshot must be current, latest or a day YYYY-MM-DD, not '{other}'"
                        ))
                    })?;
                    query.equals.push(("snapshot".into(), value));
                }
            },
            // daily_sales' segment is a plain column (it may list several values).
            "segment" if table.id != TableId::DailySales => match table.id {
                TableId::Funnel => query.equals.push(("segment".into(), value)),
                TableId::BrandPerformance => query.equals.push(("age_group".into(), value)),
                _ => {
                    let Some((age_group, region)) = value.split_once('/') else {
                        return Err(ApiError::bad_request(format!(
                            "a recommendation segment is AGE_GROUP/REGION (such as 25-34/mazowieckie or */*), not '{value}'"
                        )));
                    };
                    query.equals.push(("age_group".into(), age_group.to_string()));
                    query.equals.push(("region".into(), region.to_string()));
                }
            },
            "from" | "to" => {
                let bound = if table.has_snapshots() || table.id == TableId::DailySales {
                    day(name, &value)?
                } else {
                    format_rfc3339(
                        parse_instant_arg(&value).map_err(|e| ApiError::bad_request(format!("{name}: {e}")))?,
                    )
                };
                if name == "from" {
                    from = Some(bound);
                } else {
                    to = Some(bound);
                }
            }
            column => {
                let kind = table.columns[table.column_index(column).expect("checked above")].kind;
                // An integer column takes a comma-separated list (no id has a comma); a repeated
                // column lists values of any column.
                let values: Vec<&str> =
                    if kind == Kind::Int { value.split(',').collect() } else { vec![value.as_str()] };
                for value in values {
                    let valid = match kind {
                        Kind::Int => value.parse::<u64>().is_ok() || value.parse::<i64>().is_ok(),
                        Kind::Real => value.parse::<f64>().is_ok(),
                        Kind::Text => true,
                    };
                    if !valid {
                        return Err(ApiError::bad_request(format!(
                            "{column} is an {} column; '{value}' is not one",
                            kind_name(kind)
                        )));
                    }
                    match filters.iter().position(|(c, _)| c.as_str() == column) {
                        Some(i) => filters[i].1.push(value.to_string()),
                        None => filters.push((column.to_string(), vec![value.to_string()])),
                    }
                }
            }
        }
    }
    let (single, several): (Vec<_>, Vec<_>) = filters.into_iter().partition(|(_, values)| values.len() == 1);
    for (column, values) in single {
        for value in values {
            query.equals.push((column.clone(), value));
        }
    }
    if several.len() > 1 {
        let names: Vec<&str> = several.iter().map(|(c, _)| c.as_str()).collect();
        return Err(ApiError::bad_request(format!(
            "only one column may list several values, not {}",
            names.join(" and ")
        )));
    }
    let any_of = several.into_iter().next();
    if let Some((column, values)) = any_of.as_ref().filter(|(_, values)| values.len() > MAX_ANY_OF) {
        return Err(ApiError::bad_request(format!(
            "{column} lists {} values; at most {MAX_ANY_OF} are allowed",
            values.len()
        )));
    }
    if from.is_some() || to.is_some() {
        let column = match table.id {
            TableId::DailySales => "day",
            _ if table.has_snapshots() => "snapshot",
            _ => "window_start",
        };
        if table.has_snapshots() && to.is_none() {
            // Day snapshots sort before `current` as text; a range means days only.
            to = Some("9999-12-31".into());
        }
        query.ranges.push((column.into(), from, to));
    }
    Ok(TableRequest { query, latest_snapshot, any_of })
}

async fn table_rows(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    params: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Some(table) = table_named(&name) else {
        let names: Vec<_> = TABLES.iter().map(|t| t.name).collect();
        return Err(ApiError(StatusCode::NOT_FOUND, format!("no table '{name}' (tables: {})", names.join(", "))));
    };
    let Query(params) = params.map_err(|e| ApiError::bad_request(format!("the query string is malformed: {e}")))?;
    let TableRequest { mut query, latest_snapshot, any_of } = table_request(table, params)?;
    read_store(&state, move |store| {
        let mut snapshot = None;
        if latest_snapshot {
            snapshot = store.snapshots(table.id)?.into_iter().find(|s| s != "current");
            query.equals.push(("snapshot".into(), snapshot.clone().unwrap_or_else(|| "none".into())));
        }
        // A list is one `IN` read: ordered, limited and consistent as any other.
        query.any_of = any_of;
        let rows = store.query(&query)?;
        let frontier = store.state(state_key::FRONTIER)?;
        Ok(Json(json!({
            "table": table.name,
            "frontier": frontier,
            "snapshot": snapshot,
            "count": rows.len(),
            "rows": rows.iter().map(|r| row_json(table, r)).collect::<Vec<_>>(),
        })))
    })
    .await
}

async fn pipeline_state(State(state): State<Arc<AppState>>) -> Result<Json<BTreeMap<String, String>>, ApiError> {
    read_store(&state, |store| Ok(Json(store.state_entries()?))).await
}

async fn snapshots(State(state): State<Arc<AppState>>) -> Result<Json<serde_json::Value>, ApiError> {
    read_store(&state, |store| {
        let mut object = serde_json::Map::new();
        for table in TABLES.iter().filter(|t| t.has_snapshots()) {
            object.insert(table.name.into(), json!(store.snapshots(table.id)?));
        }
        Ok(Json(serde_json::Value::Object(object)))
    })
    .await
}

/// The realtime windows' columns summed per bucket by `/api/activity`.
const ACTIVITY_SUMS: [&str; 6] = ["total_events", "views", "carts", "removes", "purchases", "revenue_cents"];

#[derive(Default)]
struct ActivityBucket {
    /// Windows wholly inside the bucket, and those of them not final yet.
    windows: u64,
    open: u64,
    /// [`ACTIVITY_SUMS`] over the windows that tile the bucket.
    sums: [i64; 6],
    peak_active_users: i64,
}

/// Per bucket of `unit` seconds (a day or an hour), from the windows wholly inside it: the sums
/// over the windows that tile it (those starting at a multiple of their length, 5 minutes: every
/// event is in exactly one of them, so the sums are exact) and the most active users of any of its
/// windows. Buckets without a window have no row.
/// `final`: every window in the bucket is final and the frontier has passed its end (no event
/// can still land in it).
fn activity_buckets(table: &Table, rows: &[Row], unit: i64, frontier: Option<i64>) -> Vec<serde_json::Value> {
    let column = |name: &str| table.column_index(name).expect("a realtime_window column");
    let (start_at, end_at, users_at, final_at) =
        (column("window_start"), column("window_end"), column("active_users"), column("final"));
    let summed: Vec<usize> = ACTIVITY_SUMS.iter().map(|&name| column(name)).collect();
    let mut buckets: BTreeMap<i64, ActivityBucket> = BTreeMap::new();
    for row in rows {
        let time = |i: usize| row[i].as_str().and_then(|t| parse_event_time(t.as_bytes()));
        let (Some(start), Some(end)) = (time(start_at), time(end_at)) else { continue };
        let bucket = floor_to(start, unit);
        if end <= start || end > bucket + unit {
            // It reaches into the next bucket.
            continue;
        }
        let entry = buckets.entry(bucket).or_default();
        entry.windows += 1;
        if row[final_at].as_i64() != Some(1) {
            entry.open += 1;
        }
        entry.peak_active_users = entry.peak_active_users.max(row[users_at].as_i64().unwrap_or(0));
        if start.rem_euclid(end - start) == 0 {
            for (sum, &i) in entry.sums.iter_mut().zip(&summed) {
                *sum += row[i].as_i64().unwrap_or(0);
            }
        }
    }
    buckets
        .into_iter()
        .map(|(start, bucket)| {
            let mut object = serde_json::Map::new();
            object.insert("start".into(), format_rfc3339(start).into());
            object.insert("end".into(), format_rfc3339(start + unit).into());
            object.insert("day".into(), format_date(utc_date(start)).into());
            object.insert("windows".into(), bucket.windows.into());
            let complete = frontier.is_some_and(|f| f >= start + unit);
            object.insert("final".into(), (bucket.open == 0 && complete).into());
            for (name, sum) in ACTIVITY_SUMS.iter().zip(bucket.sums) {
                object.insert(name.to_string(), sum.into());
            }
            object.insert("peak_active_users".into(), bucket.peak_active_users.into());
            serde_json::Value::Object(object)
        })
        .collect()
}

/// `/api/activity?by=day|hour&from=…&to=…`: the realtime windows summed per day or per hour, the
/// trends of the dashboard in a few small rows.
async fn activity(
    State(state): State<Arc<AppState>>,
    params: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Query(params) = params.map_err(|e| ApiError::bad_request(format!("the query string is malformed: {e}")))?;
    let (mut unit, mut from, mut to) = (DAY, None, None);
    for (name, value) in params {
        match name.as_str() {
            "by" => {
                unit = match value.as_str() {
                    "day" => DAY,
                    "hour" => HOUR,
                    other => return Err(ApiError::bad_request(format!("by must be day or hour, not '{other}'"))),
                };
            }
            "from" | "to" => {
                let t = parse_instant_arg(&value).map_err(|e| ApiError::bad_request(format!("{name}: {e}")))?;
                if name == "from" {
                    from = Some(t);
                } else {
                    to = Some(t);
                }
            }
            other => {
                return Err(ApiError::bad_request(format!(
                    "unknown parameter '{other}' for /api/activity: it takes by (day or hour), from and to"
                )))
            }
        }
    }
    let table = TableId::RealtimeWindow.table();
    let mut query = StoreQuery::all(table);
    let (from, to) = (from.map(|t| floor_to(t, unit)), to.map(|t| floor_to(t, unit)));
    if from.is_some() || to.is_some() {
        query.ranges.push(("window_start".into(), from.map(format_rfc3339), to.map(format_rfc3339)));
    }
    let by = if unit == DAY { "day" } else { "hour" };
    read_store(&state, move |store| {
        let rows = store.query(&query)?;
        let frontier = store.state(state_key::FRONTIER)?;
        let at = frontier.as_deref().and_then(|f| parse_event_time(f.as_bytes()));
        let buckets = activity_buckets(table, &rows, unit, at);
        Ok(Json(json!({
            "by": by,
            "frontier": frontier,
            "count": buckets.len(),
            "rows": buckets,
        })))
    })
    .await
}
