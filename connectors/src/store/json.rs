//! A store row as JSON, keyed by column name: the rows of the HTTP API and of `query --format
//! json`.

use cartflow_dataflows::schema::{Row, Table, Value};

/// JSON object of a row keyed by column name; integers and reals are numbers, NULL is null.
pub fn row_json(table: &Table, row: &Row) -> serde_json::Value {
    let object = table
        .columns
        .iter()
        .zip(row)
        .map(|(column, value)| {
            let json = match value {
                Value::Null => serde_json::Value::Null,
                Value::Int(i) => (*i).into(),
                Value::Real(x) => serde_json::Number::from_f64(*x).map_or(serde_json::Value::Null, Into::into),
                Value::Text(s) => s.clone().into(),
            };
            (column.name.to_string(), json)
        })
        .collect();
    serde_json::Value::Object(object)
}
