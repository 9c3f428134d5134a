//! `cartflow query`: rows of one store table, filtered, as a table, CSV or JSON.

use std::io::Write;

use anyhow::{bail, Context, Result};
use cartflow_connectors::store::json::row_json;
use cartflow_connectors::store::sqlite::{Query, SqliteStore};
use cartflow_dataflows::schema::{table_named, Row, Table, Value, TABLES};
use comfy_table::presets::UTF8_FULL_CONDENSED;

use crate::cli::{OutputFormat, QueryArgs};

pub fn run(args: &QueryArgs, out: &mut dyn Write) -> Result<()> {
    let Some(table) = table_named(&args.table) else {
        let names: Vec<_> = TABLES.iter().map(|t| t.name).collect();
        bail!("no table '{}' (tables: {})", args.table, names.join(", "));
    };
    let mut equals = Vec::new();
    if let Some(snapshot) = &args.snapshot {
        if !table.has_snapshots() {
            bail!("table {} has no snapshots (only funnel, recommendation and brand_performance do)", table.name);
        }
        equals.push(("snapshot".to_string(), snapshot.clone()));
    }
    for filter in &args.filters {
        let (column, value) =
            filter.split_once('=').with_context(|| format!("--where '{filter}' is not COLUMN=VALUE"))?;
        equals.push((column.to_string(), value.to_string()));
    }
    let store = SqliteStore::open_read_only(&args.db)?;
    let rows = store.query(&Query { equals, limit: args.limit, ..Query::all(table) })?;
    match args.format {
        OutputFormat::Table => write_table(table, &rows, out),
        OutputFormat::Csv => write_csv(table, &rows, out),
        OutputFormat::Json => write_json(table, &rows, out),
    }
}

fn cell(value: &Value) -> String {
    match value {
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn write_table(table: &Table, rows: &[Row], out: &mut dyn Write) -> Result<()> {
    let mut view = comfy_table::Table::new();
    view.load_style(UTF8_FULL_CONDENSED).set_header(table.columns.iter().map(|c| c.name));
    for row in rows {
        view.add_row(row.iter().map(cell));
    }
    writeln!(out, "{view}")?;
    writeln!(out, "{} row(s)", rows.len())?;
    Ok(())
}

fn write_csv(table: &Table, rows: &[Row], out: &mut dyn Write) -> Result<()> {
    let mut writer = csv::Writer::from_writer(out);
    writer.write_record(table.columns.iter().map(|c| c.name))?;
    for row in rows {
        writer.write_record(row.iter().map(cell))?;
    }
    writer.flush()?;
    Ok(())
}

fn write_json(table: &Table, rows: &[Row], out: &mut dyn Write) -> Result<()> {
    let array: Vec<_> = rows.iter().map(|row| row_json(table, row)).collect();
    serde_json::to_writer_pretty(&mut *out, &array)?;
    writeln!(out)?;
    Ok(())
}
