//! The part of HBase's filter language (`ParseFilter`) the stand-in evaluates: the filters
//! applications pass to `scan(filter=...)` most often, combined with `AND`, `OR` and parentheses.
//!
//! `PrefixFilter('p')`, `KeyOnlyFilter()`, `FirstKeyOnlyFilter()`, `ColumnPrefixFilter('p')` and
//! `SingleColumnValueFilter('f', 'q', op, 'comparator'[, filterIfMissing, latestVersionOnly])` with
//! the comparators `binary:`, `binaryprefix:` and `substring:`. Anything else is refused with a
//! message naming it, never ignored: a filter silently dropped would return rows the caller asked
//! to leave out.

/// A row as a filter sees it: its key and its cells (`family:qualifier` → newest value), in
/// column order.
pub(super) type Cells = Vec<(Vec<u8>, Vec<u8>)>;

#[derive(Debug, PartialEq)]
pub(super) enum Filter {
    Prefix(Vec<u8>),
    KeyOnly,
    FirstKeyOnly,
    ColumnPrefix(Vec<u8>),
    SingleColumnValue { column: Vec<u8>, op: Op, comparator: Comparator, filter_if_missing: bool },
    And(Box<Filter>, Box<Filter>),
    Or(Box<Filter>, Box<Filter>),
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) enum Op {
    Less,
    LessOrEqual,
    Equal,
    NotEqual,
    GreaterOrEqual,
    Greater,
}

#[derive(Debug, PartialEq)]
pub(super) enum Comparator {
    Binary(Vec<u8>),
    BinaryPrefix(Vec<u8>),
    Substring(Vec<u8>),
}

impl Filter {
    /// Filters a row: `None` if it is left out, else the cells that remain (a row left without
    /// cells is left out too, as in HBase). Row tests see the stored cells, as HBase's filters
    /// see them before any filter reshapes what is returned.
    pub(super) fn apply(&self, key: &[u8], cells: Cells) -> Option<Cells> {
        if !self.keeps(key, &cells) {
            return None;
        }
        let cells = self.shape(key, &cells, cells.clone());
        (!cells.is_empty()).then_some(cells)
    }

    /// Does the row pass the filter's tests?
    fn keeps(&self, key: &[u8], cells: &Cells) -> bool {
        match self {
            Filter::Prefix(prefix) => key.starts_with(prefix),
            Filter::KeyOnly | Filter::FirstKeyOnly | Filter::ColumnPrefix(_) => true,
            Filter::SingleColumnValue { column, op, comparator, filter_if_missing } => {
                match cells.iter().find(|(c, _)| c == column) {
                    Some((_, value)) => op.holds(comparator.compare(value)),
                    None => !filter_if_missing,
                }
            }
            Filter::And(first, second) => first.keeps(key, cells) && second.keeps(key, cells),
            Filter::Or(first, second) => first.keeps(key, cells) || second.keeps(key, cells),
        }
    }

    /// The cells a kept row returns (`stored`: the row's cells before any filter).
    fn shape(&self, key: &[u8], stored: &Cells, cells: Cells) -> Cells {
        match self {
            Filter::Prefix(_) | Filter::SingleColumnValue { .. } => cells,
            Filter::KeyOnly => cells.into_iter().map(|(column, _)| (column, Vec::new())).collect(),
            Filter::FirstKeyOnly => cells.into_iter().take(1).collect(),
            Filter::ColumnPrefix(prefix) => cells
                .into_iter()
                .filter(|(column, _)| {
                    let qualifier = column.splitn(2, |b| *b == b':').nth(1).unwrap_or_default();
                    qualifier.starts_with(prefix)
                })
                .collect(),
            Filter::And(first, second) => second.shape(key, stored, first.shape(key, stored, cells)),
            // The cells of the first side that keeps the row.
            Filter::Or(first, second) => match first.keeps(key, stored) {
                true => first.shape(key, stored, cells),
                false => second.shape(key, stored, cells),
            },
        }
    }
}

impl Op {
    /// Does `value <op> operand` hold, given how the value compares with the operand?
    fn holds(self, ordering: std::cmp::Ordering) -> bool {
        use std::cmp::Ordering::*;
        match self {
            Op::Less => ordering == Less,
            Op::LessOrEqual => ordering != Greater,
            Op::Equal => ordering == Equal,
            Op::NotEqual => ordering != Equal,
            Op::GreaterOrEqual => ordering != Less,
            Op::Greater => ordering == Greater,
        }
    }
}

impl Comparator {
    /// How a cell's value compares with the operand (substring: `Equal` when it contains it).
    fn compare(&self, value: &[u8]) -> std::cmp::Ordering {
        use std::cmp::Ordering::*;
        match self {
            Comparator::Binary(operand) => value.cmp(operand),
            Comparator::BinaryPrefix(operand) => value[..value.len().min(operand.len())].cmp(operand),
            Comparator::Substring(operand) => {
                // HBase's SubstringComparator ignores case.
                let (value, operand) = (value.to_ascii_lowercase(), operand.to_ascii_lowercase());
                let found = operand.is_empty() || value.windows(operand.len()).any(|w| w == operand.as_slice());
                if found {
                    Equal
                } else {
                    Less
                }
            }
        }
    }
}

#[derive(Debug, PartialEq)]
enum Token {
    Name(String),
    Quoted(Vec<u8>),
    Op(Op),
    Open,
    Close,
    Comma,
}

fn tokens(text: &[u8]) -> Result<Vec<Token>, String> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < text.len() {
        let c = text[i];
        match c {
            b' ' | b'\t' | b'\n' | b'\r' => i += 1,
            b'(' => (out.push(Token::Open), i += 1).1,
            b')' => (out.push(Token::Close), i += 1).1,
            b',' => (out.push(Token::Comma), i += 1).1,
            b'\'' => {
                // A quoted string; a quote inside is written twice.
                let mut value = Vec::new();
                i += 1;
                loop {
                    match text.get(i) {
                        None => return Err("a quoted string is not closed".into()),
                        Some(b'\'') if text.get(i + 1) == Some(&b'\'') => (value.push(b'\''), i += 2).1,
                        Some(b'\'') => break i += 1,
                        Some(&b) => (value.push(b), i += 1).1,
                    }
                }
                out.push(Token::Quoted(value));
            }
            b'<' | b'>' | b'=' | b'!' => {
                let two = text.get(i..i + 2).unwrap_or_default();
                let (op, len) = match two {
                    b"<=" => (Op::LessOrEqual, 2),
                    b">=" => (Op::GreaterOrEqual, 2),
                    b"!=" => (Op::NotEqual, 2),
                    _ => match c {
                        b'<' => (Op::Less, 1),
                        b'>' => (Op::Greater, 1),
                        b'=' => (Op::Equal, 1),
                        _ => return Err("'!' must be followed by '='".into()),
                    },
                };
                out.push(Token::Op(op));
                i += len;
            }
            c if c.is_ascii_alphanumeric() || c == b'_' || c == b'-' => {
                let start = i;
                while i < text.len() && (text[i].is_ascii_alphanumeric() || text[i] == b'_' || text[i] == b'-') {
                    i += 1;
                }
                out.push(Token::Name(String::from_utf8_lossy(&text[start..i]).into_owned()));
            }
            other => return Err(format!("unexpected character '{}'", other as char)),
        }
    }
    Ok(out)
}

struct Parser {
    tokens: Vec<Token>,
    at: usize,
}

/// Parses a filter string (HBase's filter language, the subset above).
pub(super) fn parse(text: &[u8]) -> Result<Filter, String> {
    let mut parser = Parser { tokens: tokens(text)?, at: 0 };
    let filter = parser.expression()?;
    match parser.tokens.get(parser.at) {
        None => Ok(filter),
        Some(token) => Err(format!("unexpected {token:?} after a complete filter")),
    }
}

impl Parser {
    fn next(&mut self) -> Option<&Token> {
        let token = self.tokens.get(self.at);
        self.at += 1;
        token
    }

    fn peek_name(&self, name: &str) -> bool {
        matches!(self.tokens.get(self.at), Some(Token::Name(n)) if n.eq_ignore_ascii_case(name))
    }

    /// `term (AND term | OR term)*`, AND binding tighter than OR, as in HBase.
    fn expression(&mut self) -> Result<Filter, String> {
        let mut left = self.conjunction()?;
        while self.peek_name("OR") {
            self.at += 1;
            left = Filter::Or(Box::new(left), Box::new(self.conjunction()?));
        }
        Ok(left)
    }

    fn conjunction(&mut self) -> Result<Filter, String> {
        let mut left = self.term()?;
        while self.peek_name("AND") {
            self.at += 1;
            left = Filter::And(Box::new(left), Box::new(self.term()?));
        }
        Ok(left)
    }

    fn term(&mut self) -> Result<Filter, String> {
        match self.next() {
            Some(Token::Open) => {
                let inner = self.expression()?;
                match self.next() {
                    Some(Token::Close) => Ok(inner),
                    _ => Err("a '(' is not closed".into()),
                }
            }
            Some(Token::Name(name)) => {
                let name = name.clone();
                let arguments = self.arguments()?;
                filter(&name, arguments)
            }
            other => Err(format!("expected a filter, found {other:?}")),
        }
    }

    fn arguments(&mut self) -> Result<Vec<Token>, String> {
        if self.next() != Some(&Token::Open) {
            return Err("a filter's name must be followed by '('".into());
        }
        let mut arguments = Vec::new();
        loop {
            match self.tokens.get(self.at) {
                Some(Token::Close) => {
                    self.at += 1;
                    return Ok(arguments);
                }
                Some(Token::Comma) => self.at += 1,
                Some(_) => {
                    let token = std::mem::replace(&mut self.tokens[self.at], Token::Comma);
                    self.at += 1;
                    arguments.push(token);
                }
                None => return Err("a filter's arguments are not closed with ')'".into()),
            }
        }
    }
}

fn quoted(token: Option<&Token>, what: &str) -> Result<Vec<u8>, String> {
    match token {
        Some(Token::Quoted(value)) => Ok(value.clone()),
        other => Err(format!("{what}: expected a quoted string, found {other:?}")),
    }
}

fn boolean(token: Option<&Token>, what: &str) -> Result<bool, String> {
    match token {
        None => Ok(false),
        Some(Token::Name(n)) if n.eq_ignore_ascii_case("true") => Ok(true),
        Some(Token::Name(n)) if n.eq_ignore_ascii_case("false") => Ok(false),
        other => Err(format!("{what}: expected true or false, found {other:?}")),
    }
}

fn filter(name: &str, arguments: Vec<Token>) -> Result<Filter, String> {
    let count = |n: std::ops::RangeInclusive<usize>| {
        if n.contains(&arguments.len()) {
            Ok(())
        } else {
            Err(format!("{name} takes {n:?} argument(s), got {}", arguments.len()))
        }
    };
    match name {
        "PrefixFilter" => count(1..=1).and_then(|_| Ok(Filter::Prefix(quoted(arguments.first(), name)?))),
        "KeyOnlyFilter" => count(0..=0).map(|_| Filter::KeyOnly),
        "FirstKeyOnlyFilter" => count(0..=0).map(|_| Filter::FirstKeyOnly),
        "ColumnPrefixFilter" => count(1..=1).and_then(|_| Ok(Filter::ColumnPrefix(quoted(arguments.first(), name)?))),
        "SingleColumnValueFilter" => {
            count(4..=6)?;
            let family = quoted(arguments.first(), name)?;
            let qualifier = quoted(arguments.get(1), name)?;
            let Some(Token::Op(op)) = arguments.get(2) else {
                return Err(format!("{name}: the third argument must be a comparison operator"));
            };
            let operand = quoted(arguments.get(3), name)?;
            let comparator = match operand.iter().position(|b| *b == b':') {
                Some(at) => match &operand[..at] {
                    b"binary" => Comparator::Binary(operand[at + 1..].to_vec()),
                    b"binaryprefix" => Comparator::BinaryPrefix(operand[at + 1..].to_vec()),
                    b"substring" => Comparator::Substring(operand[at + 1..].to_vec()),
                    other => {
                        return Err(format!(
                            "{name}: the comparator '{}' is not supported by the stand-in (binary, binaryprefix, substring)",
                            String::from_utf8_lossy(other)
                        ))
                    }
                },
                None => return Err(format!("{name}: a comparator is written 'type:value'")),
            };
            let filter_if_missing = boolean(arguments.get(4), name)?;
            // latestVersionOnly (the sixth) changes nothing here: filters see the newest version.
            boolean(arguments.get(5), name)?;
            let mut column = family;
            column.push(b':');
            column.extend(qualifier);
            Ok(Filter::SingleColumnValue { column, op: *op, comparator, filter_if_missing })
        }
        other => Err(format!("the filter {other} is not supported by cartflow's HBase stand-in")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(cells: &[(&str, &str)]) -> Cells {
        cells.iter().map(|(c, v)| (c.as_bytes().to_vec(), v.as_bytes().to_vec())).collect()
    }

    #[test]
    fn filters_parse_and_keep_the_rows_hbase_keeps() {
        let cells = row(&[("d:dimension", "brand"), ("d:segment", "it's"), ("d:users_viewed", "3")]);
        let keep = |text: &str, key: &str| parse(text.as_bytes()).unwrap().apply(key.as_bytes(), cells.clone());
        assert!(keep("PrefixFilter('2019|')", "2019|a").is_some());
        assert!(keep("PrefixFilter('2019|')", "2020|a").is_none());
        assert_eq!(
            keep("KeyOnlyFilter()", "k").unwrap(),
            row(&[("d:dimension", ""), ("d:segment", ""), ("d:users_viewed", "")])
        );
        assert_eq!(keep("FirstKeyOnlyFilter()", "k").unwrap(), row(&[("d:dimension", "brand")]));
        assert_eq!(keep("ColumnPrefixFilter('users_')", "k").unwrap(), row(&[("d:users_viewed", "3")]));
        assert!(keep("ColumnPrefixFilter('nothing')", "k").is_none());
        assert!(keep("SingleColumnValueFilter('d', 'dimension', =, 'binary:brand')", "k").is_some());
        assert!(keep("SingleColumnValueFilter('d', 'dimension', !=, 'binary:brand')", "k").is_none());
        assert!(keep("SingleColumnValueFilter('d','segment',=,'binary:it''s')", "k").is_some());
        assert!(keep("SingleColumnValueFilter('d', 'dimension', =, 'substring:ran')", "k").is_some());
        assert!(keep("SingleColumnValueFilter('d', 'dimension', =, 'substring:RAN')", "k").is_some());
        // A row test sees the stored values, whatever another filter returns of them.
        assert!(keep("KeyOnlyFilter() AND SingleColumnValueFilter('d', 'dimension', =, 'binary:brand')", "k").is_some());
        assert!(keep("SingleColumnValueFilter('d', 'dimension', >, 'binaryprefix:a')", "k").is_some());
        assert!(keep("SingleColumnValueFilter('d', 'missing', =, 'binary:x')", "k").is_some());
        assert!(keep("SingleColumnValueFilter('d', 'missing', =, 'binary:x', true, true)", "k").is_none());
        assert!(keep("PrefixFilter('k') AND SingleColumnValueFilter('d', 'dimension', =, 'binary:all')", "k").is_none());
        assert!(keep("PrefixFilter('x') OR (PrefixFilter('k') AND KeyOnlyFilter())", "k").is_some());
        assert_eq!(
            keep("PrefixFilter('k') AND ColumnPrefixFilter('seg')", "k").unwrap(),
            row(&[("d:segment", "it's")])
        );
        for bad in ["RowFilter(=, 'binary:x')", "PrefixFilter('x'", "PrefixFilter(x)", "PrefixFilter('a') AND", "'x'"] {
            assert!(parse(bad.as_bytes()).is_err(), "{bad} parsed");
        }
        assert!(parse(b"RegexStringComparator()").unwrap_err().contains("RegexStringComparator"));
    }
}
