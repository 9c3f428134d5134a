//! User profiles and the demographic segments of SPEC §3 and §6.5.

use chrono::{Datelike, NaiveDate};
use rustc_hash::FxHashMap;

use super::symbol::Symbol;
use super::time::is_leap_year;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
pub enum AgeGroup {
    From18To24,
    From25To34,
    From35To44,
    From45To54,
    From55,
    Unknown,
}

impl AgeGroup {
    pub const ALL: [AgeGroup; 6] = [
        AgeGroup::From18To24,
        AgeGroup::From25To34,
        AgeGroup::From35To44,
        AgeGroup::From45To54,
        AgeGroup::From55,
        AgeGroup::Unknown,
    ];

    pub fn label(self) -> &'static str {
        match self {
            AgeGroup::From18To24 => "18-24",
            AgeGroup::From25To34 => "25-34",
            AgeGroup::From35To44 => "35-44",
            AgeGroup::From45To54 => "45-54",
            AgeGroup::From55 => "55+",
            AgeGroup::Unknown => "unknown",
        }
    }

    fn of_age(years: i32) -> AgeGroup {
        match years {
            i32::MIN..=24 => AgeGroup::From18To24, // under 18 falls in 18-24 (SPEC §6.5)
            25..=34 => AgeGroup::From25To34,
            35..=44 => AgeGroup::From35To44,
            45..=54 => AgeGroup::From45To54,
            _ => AgeGroup::From55,
        }
    }
}

/// Completed years on `on`: the difference of the years, minus one when `on`'s month-day comes
/// before the birthday; a Feb 29 birthday counts on Mar 1 in non-leap years (SPEC §3, §6.5).
pub fn age_in_years(birth: NaiveDate, on: NaiveDate) -> i32 {
    let mut birthday = (birth.month(), birth.day());
    if birthday == (2, 29) && !is_leap_year(on.year()) {
        birthday = (3, 1);
    }
    let before_birthday = (on.month(), on.day()) < birthday;
    on.year() - birth.year() - i32::from(before_birthday)
}

pub fn age_group(birth: Option<NaiveDate>, on: NaiveDate) -> AgeGroup {
    birth.map_or(AgeGroup::Unknown, |b| AgeGroup::of_age(age_in_years(b, on)))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
pub struct Profile {
    pub birth_date: Option<NaiveDate>,
    pub region: Symbol,
}

impl Profile {
    /// SPEC §6.5: the non-empty `region`, else the non-empty `city`, else `unknown`.
    pub fn new(birth_date: Option<NaiveDate>, region: Option<&str>, city: Option<&str>) -> Profile {
        let region = [region, city].into_iter().flatten().find(|s| !s.is_empty()).unwrap_or(UNKNOWN);
        Profile { birth_date, region: Symbol::intern(region) }
    }
}

/// The label of every missing segment value.
pub const UNKNOWN: &str = "unknown";

/// [`UNKNOWN`] as a symbol, interned once (interning takes the symbol table's lock, shared by all
/// threads: too dear per event).
pub fn unknown_symbol() -> Symbol {
    static SYMBOL: std::sync::OnceLock<Symbol> = std::sync::OnceLock::new();
    *SYMBOL.get_or_init(|| Symbol::intern(UNKNOWN))
}

/// All profiles, one per user (the last row for a user wins, SPEC §6.5).
#[derive(Clone, Debug, Default)]
pub struct Profiles {
    by_user: FxHashMap<u64, Profile>,
}

impl Profiles {
    pub fn insert(&mut self, user_id: u64, profile: Profile) {
        self.by_user.insert(user_id, profile);
    }

    pub fn get(&self, user_id: u64) -> Option<&Profile> {
        self.by_user.get(&user_id)
    }

    pub fn len(&self) -> usize {
        self.by_user.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_user.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (u64, &Profile)> {
        self.by_user.iter().map(|(user, profile)| (*user, profile))
    }

    /// The user's age group on `on` (`unknown` without a profile or a birth date).
    pub fn age_group(&self, user_id: u64, on: NaiveDate) -> AgeGroup {
        age_group(self.get(user_id).and_then(|p| p.birth_date), on)
    }

    /// The user's region (`unknown` without a profile).
    pub fn region(&self, user_id: u64) -> Symbol {
        self.get(user_id).map_or_else(unknown_symbol, |p| p.region)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn date(y: i32, m: u32, d: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, d).unwrap()
    }

    #[test]
    fn birthdays() {
        assert_eq!(age_in_years(date(1990, 10, 1), date(2019, 10, 1)), 29, "on the day");
        assert_eq!(age_in_years(date(1990, 10, 2), date(2019, 10, 1)), 28, "the day before");
        assert_eq!(age_in_years(date(2000, 2, 29), date(2019, 2, 28)), 18, "Feb 29 not yet in a common year");
        assert_eq!(age_in_years(date(2000, 2, 29), date(2019, 3, 1)), 19, "counts on Mar 1");
        assert_eq!(age_in_years(date(2000, 2, 29), date(2020, 2, 29)), 20, "on the day in a leap year");
        assert_eq!(age_in_years(date(2000, 2, 29), date(2020, 2, 28)), 19);
        assert_eq!(age_group(Some(date(1995, 1, 1)), date(2019, 12, 31)), AgeGroup::From18To24);
        assert_eq!(age_group(Some(date(1994, 12, 31)), date(2019, 12, 31)), AgeGroup::From25To34, "25 on the day");
        assert_eq!(age_group(Some(date(2010, 1, 1)), date(2019, 12, 31)), AgeGroup::From18To24, "under 18");
        assert_eq!(age_group(Some(date(1964, 12, 1)), date(2019, 12, 1)), AgeGroup::From55);
        assert_eq!(age_group(None, date(2019, 12, 1)), AgeGroup::Unknown);
    }

    #[test]
    fn region_falls_back_to_city_then_unknown() {
        assert_eq!(Profile::new(None, Some("mazowieckie"), Some("Warszawa")).region.as_str(), "mazowieckie");
        assert_eq!(Profile::new(None, Some(""), Some("Warszawa")).region.as_str(), "Warszawa");
        assert_eq!(Profile::new(None, None, Some("")).region.as_str(), "unknown");
        let mut profiles = Profiles::default();
        profiles.insert(1, Profile::new(Some(date(1990, 1, 1)), None, Some("Kraków")));
        profiles.insert(1, Profile::new(None, Some("małopolskie"), None));
        assert_eq!(profiles.region(1).as_str(), "małopolskie", "last row wins");
        assert_eq!(profiles.age_group(1, date(2019, 1, 1)), AgeGroup::Unknown);
        assert_eq!(profiles.region(2).as_str(), "unknown");
    }
}
