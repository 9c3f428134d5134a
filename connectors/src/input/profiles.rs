//! The profiles reader (SPEC §1.2, §6.5): CSV with a header, `user_id` required, `birth_date`,
//! `city` and `region` optional, every other column ignored (the original `users.csv` loads as is).

use std::path::Path;

use anyhow::{bail, Context, Result};
use cartflow_dataflows::model::event::parse_id;
use cartflow_dataflows::model::{Profile, Profiles};
use chrono::NaiveDate;

use super::lines::{open_maybe_gzip, LineRecords};
use super::rejects::{RejectLog, RejectReason};

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProfileStats {
    pub rows: u64,
    pub rejected: u64,
    /// Rows whose `birth_date` was present but not a valid `YYYY-MM-DD` date (counted as none).
    pub invalid_birth_dates: u64,
    /// Distinct users after "the last row for a user wins".
    pub users: usize,
}

pub fn read_profiles(path: &Path, rejects: &mut RejectLog) -> Result<(Profiles, ProfileStats)> {
    let (reader, _) = open_maybe_gzip(path)?;
    let source = path.display().to_string();
    let mut records = LineRecords::new(reader);
    if !records.next_record().with_context(|| format!("{source}: reading the header"))? {
        bail!("{source}: the profiles file is empty (it needs a header with a 'user_id' column)");
    }
    let header: Vec<Vec<u8>> = records.fields().map(<[u8]>::to_vec).collect();
    let find = |name: &str| header.iter().position(|f| f.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(f) == name.as_bytes());
    let Some(user_col) = find("user_id") else {
        bail!("{source}: the profiles header has no 'user_id' column");
    };
    let (birth_col, city_col, region_col) = (find("birth_date"), find("city"), find("region"));

    let mut profiles = Profiles::default();
    let mut stats = ProfileStats::default();
    while records.next_record().with_context(|| format!("{source}: reading"))? {
        stats.rows += 1;
        let line = records.line_number();
        let field = |col: Option<usize>| col.filter(|c| *c < records.len()).map(|c| records.field(c));
        let user_id = if records.unclosed_quote() { None } else { field(Some(user_col)).and_then(parse_id) };
        let Some(user_id) = user_id else {
            stats.rejected += 1;
            let reason = if records.unclosed_quote() { RejectReason::Quoting } else { RejectReason::ProfileUserId };
            rejects.reject(&source, line, reason, records.raw())?;
            continue;
        };
        let text = |col: Option<usize>| field(col).and_then(|b| std::str::from_utf8(b).ok());
        let birth_date = match text(birth_col) {
            None | Some("") => None,
            Some(s) => {
                let date = NaiveDate::parse_from_str(s, "%Y-%m-%d").ok();
                stats.invalid_birth_dates += u64::from(date.is_none());
                date
            }
        };
        profiles.insert(user_id, Profile::new(birth_date, text(region_col), text(city_col)));
    }
    rejects.flush()?;
    stats.users = profiles.len();
    Ok((profiles, stats))
}
