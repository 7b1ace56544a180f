//! What the CLI prints, with python-openstackclient's conventions (its `cliff` formatters):
//! a listing is a table of rows under column names, a single object a `Field | Value` table;
//! `-f table|json|yaml|value|csv` chooses the form, `-c COLUMN` (repeatable) the columns,
//! `--sort-column` the order of rows, `--max-width` the widest a table may be.
//!
//! Cells are JSON values, so that `json` and `yaml` keep numbers, booleans and lists as they
//! are, while `table`, `value` and `csv` show them as text (a list one item per line in a
//! table, comma-separated elsewhere).

use std::fmt::Write;

use serde_json::{Map, Value};

/// The forms of `-f`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Format {
    #[default]
    Table,
    Json,
    Yaml,
    /// Values only, separated by spaces (one row, or one field, per line).
    Value,
    Csv,
}

/// How to print: the options every command takes.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct OutputOptions {
    /// The output format.
    #[arg(short = 'f', long = "format", value_enum, default_value_t = Format::Table, global = true,
        help_heading = "Output")]
    pub format: Format,
    /// Show only this column (or field); repeat for several, in this order.
    #[arg(
        short = 'c',
        long = "column",
        value_name = "COLUMN",
        global = true,
        help_heading = "Output"
    )]
    pub columns: Vec<String>,
    /// Sort a listing by this column; repeat for several.
    #[arg(
        long = "sort-column",
        value_name = "SORT_COLUMN",
        global = true,
        help_heading = "Output"
    )]
    pub sort_columns: Vec<String>,
    /// Sort in descending order (with --sort-column).
    #[arg(long = "sort-descending", global = true, help_heading = "Output")]
    pub sort_descending: bool,
    /// The widest a table may be, in characters; long cells are wrapped.
    #[arg(
        long = "max-width",
        value_name = "INTEGER",
        global = true,
        help_heading = "Output"
    )]
    pub max_width: Option<usize>,
    /// Shorthand for `-f json` (as earlier versions of this CLI had it).
    #[arg(long, global = true, hide = true)]
    pub json: bool,
}

/// Why printing failed: a column the listing does not have.
#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    #[error("no column {unknown:?}; the columns are: {known}")]
    UnknownColumn { unknown: String, known: String },
    #[error("cannot write {format:?}")]
    Encode {
        format: Format,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// Rows under column names.
#[derive(Debug, Clone, PartialEq)]
pub struct Listing {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Value>>,
}

/// One object's fields, in order.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub fields: Vec<(String, Value)>,
}

impl OutputOptions {
    fn format(&self) -> Format {
        if self.json {
            Format::Json
        } else {
            self.format
        }
    }
}

/// Indexes of `wanted` among `columns` (all of them when none is wanted).
fn select(columns: &[String], wanted: &[String]) -> Result<Vec<usize>, OutputError> {
    if wanted.is_empty() {
        return Ok((0..columns.len()).collect());
    }
    wanted
        .iter()
        .map(|w| {
            columns
                .iter()
                .position(|c| c == w || c.eq_ignore_ascii_case(w))
                .ok_or_else(|| OutputError::UnknownColumn {
                    unknown: w.clone(),
                    known: columns.join(", "),
                })
        })
        .collect()
}

/// A cell as text: strings as they are, `null` empty, lists joined by `sep`.
fn text(v: &Value, sep: &str) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        Value::Array(items) => items
            .iter()
            .map(|i| text(i, sep))
            .collect::<Vec<_>>()
            .join(sep),
        other => other.to_string(),
    }
}

/// Orders values for sorting: numbers as numbers, nulls first, the rest as text.
fn compare(a: &Value, b: &Value) -> std::cmp::Ordering {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x
            .as_f64()
            .partial_cmp(&y.as_f64())
            .unwrap_or(std::cmp::Ordering::Equal),
        (Value::Null, Value::Null) => std::cmp::Ordering::Equal,
        (Value::Null, _) => std::cmp::Ordering::Less,
        (_, Value::Null) => std::cmp::Ordering::Greater,
        _ => text(a, ",").cmp(&text(b, ",")),
    }
}

impl Listing {
    pub fn new(columns: &[&str]) -> Self {
        Listing {
            columns: columns.iter().map(|c| c.to_string()).collect(),
            rows: vec![],
        }
    }

    /// The listing as `options` asks for it.
    pub fn render(&self, options: &OutputOptions) -> Result<String, OutputError> {
        let mut rows = self.rows.clone();
        if !options.sort_columns.is_empty() {
            let keys = select(&self.columns, &options.sort_columns)?;
            rows.sort_by(|a, b| {
                keys.iter()
                    .map(|k| compare(&a[*k], &b[*k]))
                    .find(|o| o.is_ne())
                    .unwrap_or(std::cmp::Ordering::Equal)
            });
            if options.sort_descending {
                rows.reverse();
            }
        }
        let shown = select(&self.columns, &options.columns)?;
        let columns: Vec<&str> = shown.iter().map(|i| self.columns[*i].as_str()).collect();
        let rows: Vec<Vec<&Value>> = rows
            .iter()
            .map(|r| shown.iter().map(|i| &r[*i]).collect())
            .collect();
        let format = options.format();
        match format {
            Format::Table => {
                let cells: Vec<Vec<String>> = rows
                    .iter()
                    .map(|r| r.iter().map(|v| text(v, "\n")).collect())
                    .collect();
                Ok(table(&columns, &cells, options.max_width))
            }
            Format::Value => Ok(rows
                .iter()
                .map(|r| r.iter().map(|v| text(v, ",")).collect::<Vec<_>>().join(" ") + "\n")
                .collect()),
            Format::Csv => {
                let mut w = csv::WriterBuilder::new()
                    .quote_style(csv::QuoteStyle::NonNumeric)
                    .from_writer(vec![]);
                let encode = |e: csv::Error| OutputError::Encode {
                    format,
                    source: Box::new(e),
                };
                w.write_record(&columns).map_err(encode)?;
                for r in &rows {
                    w.write_record(r.iter().map(|v| text(v, ",")))
                        .map_err(encode)?;
                }
                let bytes = w.into_inner().map_err(|e| OutputError::Encode {
                    format,
                    source: Box::new(e.into_error()),
                })?;
                Ok(String::from_utf8_lossy(&bytes).into_owned())
            }
            Format::Json | Format::Yaml => {
                let objects: Vec<Value> = rows
                    .iter()
                    .map(|r| {
                        Value::Object(
                            columns
                                .iter()
                                .zip(r)
                                .map(|(c, v)| (c.to_string(), (*v).clone()))
                                .collect::<Map<_, _>>(),
                        )
                    })
                    .collect();
                structured(format, &Value::Array(objects))
            }
        }
    }
}

impl Record {
    pub fn new() -> Self {
        Record { fields: vec![] }
    }

    pub fn field(mut self, name: &str, value: impl Into<Value>) -> Self {
        self.fields.push((name.to_string(), value.into()));
        self
    }

    /// The record as `options` asks for it (`--sort-column` does not apply).
    pub fn render(&self, options: &OutputOptions) -> Result<String, OutputError> {
        let names: Vec<String> = self.fields.iter().map(|(n, _)| n.clone()).collect();
        let shown = select(&names, &options.columns)?;
        let fields: Vec<&(String, Value)> = shown.iter().map(|i| &self.fields[*i]).collect();
        let format = options.format();
        match format {
            Format::Table => {
                let cells: Vec<Vec<String>> = fields
                    .iter()
                    .map(|(n, v)| vec![n.clone(), text(v, "\n")])
                    .collect();
                Ok(table(&["Field", "Value"], &cells, options.max_width))
            }
            Format::Value => Ok(fields.iter().map(|(_, v)| text(v, ",") + "\n").collect()),
            Format::Csv => {
                let listing = Listing {
                    columns: fields.iter().map(|(n, _)| n.clone()).collect(),
                    rows: vec![fields.iter().map(|(_, v)| v.clone()).collect()],
                };
                listing.render(&OutputOptions {
                    format: Format::Csv,
                    ..Default::default()
                })
            }
            Format::Json | Format::Yaml => {
                let object: Map<String, Value> =
                    fields.iter().map(|(n, v)| (n.clone(), v.clone())).collect();
                structured(format, &Value::Object(object))
            }
        }
    }
}

impl Default for Record {
    fn default() -> Self {
        Record::new()
    }
}

fn structured(format: Format, value: &Value) -> Result<String, OutputError> {
    let encode =
        |e: Box<dyn std::error::Error + Send + Sync>| OutputError::Encode { format, source: e };
    match format {
        Format::Yaml => yaml_serde::to_string(value).map_err(|e| encode(Box::new(e))),
        _ => serde_json::to_string_pretty(value)
            .map(|s| s + "\n")
            .map_err(|e| encode(Box::new(e))),
    }
}

/// `text` cut into lines of at most `width` characters, at spaces where it can.
fn wrap(text: &str, width: usize) -> Vec<String> {
    let width = width.max(1);
    let mut lines = vec![];
    for line in text.split('\n') {
        let mut current = String::new();
        for word in line.split(' ') {
            let mut word = word.to_string();
            loop {
                let used = current.chars().count();
                let need = word.chars().count() + usize::from(used > 0);
                if used + need <= width {
                    if used > 0 {
                        current.push(' ');
                    }
                    current.push_str(&word);
                    break;
                }
                if used > 0 {
                    lines.push(std::mem::take(&mut current));
                    continue;
                }
                // A word longer than the column: cut it.
                let head: String = word.chars().take(width).collect();
                word = word.chars().skip(width).collect();
                lines.push(head);
                if word.is_empty() {
                    break;
                }
            }
        }
        lines.push(current);
    }
    lines
}

/// A boxed table as the `openstack` client draws it; with `max_width`, the widest columns
/// are narrowed (their cells wrapped) until the table fits, as far as one character a
/// column allows.
pub fn table(headers: &[&str], rows: &[Vec<String>], max_width: Option<usize>) -> String {
    let width_of = |s: &str| s.split('\n').map(|l| l.chars().count()).max().unwrap_or(0);
    let mut widths: Vec<usize> = headers.iter().map(|h| width_of(h)).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(width_of(cell));
        }
    }
    if let Some(max) = max_width {
        // Borders and padding: "| " + " | " between + " |".
        let frame = 3 * widths.len() + 1;
        while widths.iter().sum::<usize>() + frame > max {
            let (widest, w) = widths
                .iter()
                .copied()
                .enumerate()
                .max_by_key(|(_, w)| *w)
                .unwrap_or((0, 0));
            if w <= 1 {
                break;
            }
            widths[widest] = w - 1;
        }
    }
    let rule = format!(
        "+{}+\n",
        widths
            .iter()
            .map(|w| "-".repeat(w + 2))
            .collect::<Vec<_>>()
            .join("+")
    );
    let mut out = rule.clone();
    let line = |cells: Vec<&str>, out: &mut String| {
        let wrapped: Vec<Vec<String>> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| wrap(c, *w))
            .collect();
        let height = wrapped.iter().map(Vec::len).max().unwrap_or(1);
        for i in 0..height {
            let padded: Vec<String> = wrapped
                .iter()
                .zip(&widths)
                .map(|(lines, w)| {
                    let l = lines.get(i).map(String::as_str).unwrap_or("");
                    format!("{l:<w$}")
                })
                .collect();
            let _ = writeln!(out, "| {} |", padded.join(" | "));
        }
    };
    line(headers.to_vec(), &mut out);
    out += &rule;
    for row in rows {
        line(row.iter().map(String::as_str).collect(), &mut out);
    }
    if !rows.is_empty() {
        out += &rule;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn listing() -> Listing {
        let mut l = Listing::new(&["ID", "Status", "Router Port", "Allowed"]);
        l.rows.push(vec![
            json!("b2"),
            json!("ACTIVE"),
            json!(4001),
            json!(["198.51.100.0/24", "192.0.2.7/32"]),
        ]);
        l.rows
            .push(vec![json!("a1"), json!("DOWN"), json!(4010), json!([])]);
        l
    }

    fn options(format: Format) -> OutputOptions {
        OutputOptions {
            format,
            ..Default::default()
        }
    }

    #[test]
    fn a_listing_in_every_format() {
        let l = listing();
        insta::assert_snapshot!("listing_table", l.render(&options(Format::Table)).unwrap());
        insta::assert_snapshot!("listing_json", l.render(&options(Format::Json)).unwrap());
        insta::assert_snapshot!("listing_yaml", l.render(&options(Format::Yaml)).unwrap());
        insta::assert_snapshot!("listing_value", l.render(&options(Format::Value)).unwrap());
        insta::assert_snapshot!("listing_csv", l.render(&options(Format::Csv)).unwrap());
    }

    #[test]
    fn a_record_in_every_format() {
        let r = Record::new()
            .field("id", "a1")
            .field("external_port", 4001)
            .field("allowed_cidrs", json!(["198.51.100.0/24", "192.0.2.7/32"]))
            .field("status_reason", Value::Null);
        insta::assert_snapshot!("record_table", r.render(&options(Format::Table)).unwrap());
        insta::assert_snapshot!("record_json", r.render(&options(Format::Json)).unwrap());
        insta::assert_snapshot!("record_yaml", r.render(&options(Format::Yaml)).unwrap());
        insta::assert_snapshot!("record_value", r.render(&options(Format::Value)).unwrap());
    }

    #[test]
    fn columns_are_chosen_and_sorted_by_name_and_unknown_ones_are_named() {
        let mut o = options(Format::Value);
        o.columns = vec!["router port".into(), "ID".into()];
        o.sort_columns = vec!["ID".into()];
        assert_eq!(listing().render(&o).unwrap(), "4010 a1\n4001 b2\n");
        o.sort_descending = true;
        assert_eq!(listing().render(&o).unwrap(), "4001 b2\n4010 a1\n");
        o.columns = vec!["Server".into()];
        let err = listing().render(&o).unwrap_err().to_string();
        assert_eq!(
            err,
            "no column \"Server\"; the columns are: ID, Status, Router Port, Allowed"
        );
        // Numbers sort as numbers.
        let mut l = Listing::new(&["Port"]);
        l.rows = vec![vec![json!(900)], vec![json!(4000)], vec![json!(80)]];
        let mut o = options(Format::Value);
        o.sort_columns = vec!["Port".into()];
        assert_eq!(l.render(&o).unwrap(), "80\n900\n4000\n");
    }

    #[test]
    fn a_table_narrower_than_its_cells_wraps_them() {
        let mut l = Listing::new(&["ID", "Description"]);
        l.rows.push(vec![
            json!("a1"),
            json!("the web server of the shop, behind the router"),
        ]);
        let mut o = options(Format::Table);
        o.max_width = Some(30);
        let out = l.render(&o).unwrap();
        assert!(out.lines().all(|line| line.chars().count() <= 30), "{out}");
        insta::assert_snapshot!("wrapped", out);
    }

    #[test]
    fn json_is_a_shorthand() {
        let mut o = options(Format::Table);
        o.json = true;
        assert!(listing().render(&o).unwrap().starts_with("[\n"));
    }
}
