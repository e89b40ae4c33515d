//! Typed values and rows: what relations and views are made of.
//!
//! Relations (`orders`, `order_lines`) and view outputs are rows of [`Value`]s
//! whose types are fixed by a schema ([`FieldType`]), so a view declared in
//! YAML can be checked before it runs and evaluated without reflection.

use std::fmt;
use std::sync::Arc;

use chrono::{DateTime, Datelike, NaiveDate, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

/// One row of a relation or of a view: values in schema order. Shared, so
/// the copies arrangements make while merging copy a pointer.
pub type Row = Arc<[Value]>;

/// Splits a row's fields (key fields first) into its key and its values.
pub fn split_key(mut fields: Vec<Value>, key_len: usize) -> (Row, Row) {
    let values = fields.split_off(key_len.min(fields.len()));
    (fields.into(), values.into())
}

/// The type of a field in a relation or a view.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum FieldType {
    /// Unsigned 64-bit integer (ids: `store_id`, `customer_id`, `product_id`).
    UInt,
    /// Signed 64-bit integer (money in cents, quantities, counts of sums).
    Int,
    /// UTF-8 text.
    Text,
    /// A calendar date (UTC), written `YYYY-MM-DD`.
    Date,
    /// An instant, written RFC 3339 in UTC with `Z`.
    Timestamp,
    /// `true` or `false`.
    Bool,
}

impl FieldType {
    /// The name used in `pipelines.yaml` messages and docs.
    pub fn name(self) -> &'static str {
        match self {
            FieldType::UInt => "unsigned integer",
            FieldType::Int => "integer",
            FieldType::Text => "text",
            FieldType::Date => "date",
            FieldType::Timestamp => "timestamp",
            FieldType::Bool => "boolean",
        }
    }

    /// Whether `sum` and `avg` accept fields of this type.
    pub fn is_numeric(self) -> bool {
        matches!(self, FieldType::UInt | FieldType::Int)
    }
}

impl fmt::Display for FieldType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A value of a row. The derived order is used for `min`, `max` and for
/// sorting output; fields of one schema always hold one variant (or `Null`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Value {
    /// No value (the `min` of an empty group, a label no rule matched).
    Null,
    /// See [`FieldType::Bool`].
    Bool(bool),
    /// See [`FieldType::UInt`].
    UInt(u64),
    /// See [`FieldType::Int`].
    Int(i64),
    /// See [`FieldType::Date`]: days since 1970-01-01.
    Date(i32),
    /// See [`FieldType::Timestamp`].
    Timestamp(Timestamp),
    /// See [`FieldType::Text`]. Shared, so copying a row copies no text.
    Text(Arc<str>),
}

impl Value {
    /// The value as a signed integer, for sums and averages.
    pub fn as_i128(&self) -> Option<i128> {
        match self {
            Value::UInt(v) => Some(i128::from(*v)),
            Value::Int(v) => Some(i128::from(*v)),
            _ => None,
        }
    }

    /// Writes the value as JSON, the way view rows appear in files and APIs.
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Value::Null => serde_json::Value::Null,
            Value::Bool(b) => serde_json::Value::Bool(*b),
            Value::UInt(v) => serde_json::Value::from(*v),
            Value::Int(v) => serde_json::Value::from(*v),
            Value::Date(d) => serde_json::Value::String(format_date(*d)),
            Value::Timestamp(t) => serde_json::Value::String(t.to_rfc3339()),
            Value::Text(s) => serde_json::Value::String(s.to_string()),
        }
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Null => f.write_str("null"),
            Value::Bool(b) => write!(f, "{b}"),
            Value::UInt(v) => write!(f, "{v}"),
            Value::Int(v) => write!(f, "{v}"),
            Value::Date(d) => f.write_str(&format_date(*d)),
            Value::Timestamp(t) => f.write_str(&t.to_rfc3339()),
            Value::Text(s) => write!(f, "'{s}'"),
        }
    }
}

/// An instant as nanoseconds since 1970-01-01T00:00:00Z.
///
/// Nanoseconds keep every fraction an RFC 3339 input can carry; the range is
/// years 1677 to 2262, and inputs outside it are rejected when decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Timestamp(pub i64);

impl Timestamp {
    /// Parses an RFC 3339 instant with any offset; `None` if it is not one or
    /// is out of range.
    ///
    /// A leap second (`23:59:60.5Z`) is read as the last instant of the
    /// second before it (`23:59:59.999999999Z`): it stays on its own UTC day
    /// and after every earlier instant, where counting its nanoseconds on
    /// would carry it into the next day.
    pub fn parse_rfc3339(text: &str) -> Option<Timestamp> {
        let parsed = DateTime::parse_from_rfc3339(text).ok()?;
        let nanos = i64::from(parsed.timestamp_subsec_nanos().min(999_999_999));
        parsed.timestamp().checked_mul(1_000_000_000)?.checked_add(nanos).map(Timestamp)
    }

    /// The instant in RFC 3339, UTC, with `Z`, and with a fraction only when
    /// it has one (3, 6 or 9 digits).
    pub fn to_rfc3339(self) -> String {
        DateTime::<Utc>::from_timestamp_nanos(self.0).to_rfc3339_opts(SecondsFormat::AutoSi, true)
    }

    /// The instant in RFC 3339 at a fixed UTC offset (minutes east), e.g.
    /// `2024-03-01T07:00:00-05:00`; the generator uses it to exercise
    /// offsets.
    pub fn to_rfc3339_at_offset(self, offset_minutes: i32) -> String {
        match chrono::FixedOffset::east_opt(offset_minutes * 60) {
            Some(offset) => DateTime::<Utc>::from_timestamp_nanos(self.0)
                .with_timezone(&offset)
                .to_rfc3339_opts(SecondsFormat::AutoSi, true),
            None => self.to_rfc3339(),
        }
    }

    /// The UTC calendar day of the instant, as days since 1970-01-01.
    pub fn utc_day(self) -> i32 {
        // Nanoseconds fit years 1677..2262, so the day count always fits i32.
        let days = self.0.div_euclid(86_400_000_000_000);
        days as i32
    }

    /// The UTC calendar month of the instant, `YYYY-MM`.
    pub fn utc_month(self) -> String {
        let date = DateTime::<Utc>::from_timestamp_nanos(self.0).date_naive();
        format!("{:04}-{:02}", date.year(), date.month())
    }

    /// The current instant, from the system clock.
    pub fn now() -> Timestamp {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        Timestamp(i64::try_from(nanos).unwrap_or(i64::MAX))
    }

    /// The UTC year of the instant.
    pub fn utc_year(self) -> i32 {
        DateTime::<Utc>::from_timestamp_nanos(self.0).year()
    }
}

const UNIX_EPOCH_DAY: NaiveDate = match NaiveDate::from_ymd_opt(1970, 1, 1) {
    Some(day) => day,
    None => panic!("1970-01-01 is a date"),
};

/// `YYYY-MM-DD` for a day count since 1970-01-01.
pub fn format_date(days: i32) -> String {
    let mut text = String::with_capacity(10);
    write_date(days, &mut text);
    text
}

/// Appends `YYYY-MM-DD` for a day count since 1970-01-01 (chrono's `%Y`
/// for years outside 0 to 9999), without parsing a format string.
pub fn write_date(days: i32, out: &mut String) {
    use std::fmt::Write;
    let _ = match UNIX_EPOCH_DAY.checked_add_signed(chrono::TimeDelta::days(i64::from(days))) {
        Some(date) if (0..=9999).contains(&date.year()) => {
            // Digit by digit, without the formatting machinery: a swap
            // names every hash and ranking set it reads with it.
            let digits = |out: &mut String, number: u32, width: u32| {
                for place in (0..width).rev() {
                    out.push(char::from(b'0' + (number / 10u32.pow(place) % 10) as u8));
                }
            };
            digits(out, date.year() as u32, 4);
            out.push('-');
            digits(out, date.month(), 2);
            out.push('-');
            digits(out, date.day(), 2);
            Ok(())
        }
        Some(date) => write!(out, "{}", date.format("%Y-%m-%d")),
        None => write!(out, "day {days}"),
    };
}

/// Parses `YYYY-MM-DD` into a day count since 1970-01-01.
pub fn parse_date(text: &str) -> Option<i32> {
    let date = match text.as_bytes() {
        // The form every store writes, read without a format's parser.
        [y0, y1, y2, y3, b'-', m0, m1, b'-', d0, d1]
            if [y0, y1, y2, y3, m0, m1, d0, d1].iter().all(|b| b.is_ascii_digit()) =>
        {
            let number = |digits: &[&u8]| digits.iter().fold(0u32, |n, d| n * 10 + u32::from(**d - b'0'));
            NaiveDate::from_ymd_opt(number(&[y0, y1, y2, y3]) as i32, number(&[m0, m1]), number(&[d0, d1]))?
        }
        _ => NaiveDate::parse_from_str(text, "%Y-%m-%d").ok()?,
    };
    i32::try_from(date.signed_duration_since(UNIX_EPOCH_DAY).num_days()).ok()
}

/// The date part of a timestamp's month, used by `month()` on dates.
pub fn date_month(days: i32) -> String {
    format_date(days)[..7].to_string()
}

/// The year of a day count.
pub fn date_year(days: i32) -> i32 {
    format_date(days)[..4].parse().unwrap_or(1970)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_render_in_utc_with_z() {
        let t = Timestamp::parse_rfc3339("2024-03-01T23:30:00-05:00").unwrap();
        assert_eq!(t.to_rfc3339(), "2024-03-02T04:30:00Z");
        assert_eq!(format_date(t.utc_day()), "2024-03-02");
        assert_eq!(t.to_rfc3339_at_offset(-300), "2024-03-01T23:30:00-05:00");
        let frac = Timestamp::parse_rfc3339("2024-03-01T12:00:00.250Z").unwrap();
        assert_eq!(frac.to_rfc3339(), "2024-03-01T12:00:00.250Z");
    }

    #[test]
    fn a_leap_second_stays_on_its_day() {
        let leap = Timestamp::parse_rfc3339("2016-12-31T23:59:60Z").unwrap();
        assert_eq!(format_date(leap.utc_day()), "2016-12-31");
        assert_eq!(leap.to_rfc3339(), "2016-12-31T23:59:59.999999999Z");
        let offset = Timestamp::parse_rfc3339("2016-12-31T18:59:60.5-05:00").unwrap();
        assert_eq!(offset, leap);
        assert!(Timestamp::parse_rfc3339("2016-12-31T23:59:59.5Z").unwrap() < leap);
        assert!(leap < Timestamp::parse_rfc3339("2017-01-01T00:00:00Z").unwrap());
        // The range is still checked.
        assert_eq!(Timestamp::parse_rfc3339("2262-04-12T00:00:00Z"), None);
        assert!(Timestamp::parse_rfc3339("2262-04-11T23:47:16Z").is_some());
        assert_eq!(Timestamp::parse_rfc3339("1677-09-21T00:12:43Z"), None);
    }

    #[test]
    fn days_before_1970_round_down() {
        let t = Timestamp::parse_rfc3339("1969-12-31T23:59:59Z").unwrap();
        assert_eq!(format_date(t.utc_day()), "1969-12-31");
        assert_eq!(parse_date("1969-12-31"), Some(-1));
        assert_eq!(date_month(parse_date("2024-02-29").unwrap()), "2024-02");
    }

    #[test]
    fn dates_format_like_chrono_everywhere() {
        let every_few = (-719_600..2_933_000).step_by(997);
        for days in [-800_000, -719_528, -1, 0, 19_000, 2_932_896, 2_932_897, i32::MAX].into_iter().chain(every_few) {
            let expected = match UNIX_EPOCH_DAY.checked_add_signed(chrono::TimeDelta::days(i64::from(days))) {
                Some(date) => date.format("%Y-%m-%d").to_string(),
                None => format!("day {days}"),
            };
            assert_eq!(format_date(days), expected, "{days}");
        }
        assert_eq!(format_date(0), "1970-01-01");
    }

    #[test]
    fn dates_parse_like_chrono() {
        let chrono = |text: &str| {
            NaiveDate::parse_from_str(text, "%Y-%m-%d")
                .ok()
                .and_then(|date| i32::try_from(date.signed_duration_since(UNIX_EPOCH_DAY).num_days()).ok())
        };
        let mut texts: Vec<String> = (-1_000..30_000).step_by(7).map(format_date).collect();
        texts.extend(
            ["2024-02-29", "2023-02-29", "2024-13-01", "2024-00-10", "2024-04-31", "0000-01-01", "9999-12-31"]
                .map(String::from),
        );
        texts.extend(
            ["2024-3-01", "2024-03-1", "+2024-03-01", "2024/03/01", "2024-03-0a", " 2024-03-01", ""].map(String::from),
        );
        for text in texts {
            assert_eq!(parse_date(&text), chrono(&text), "{text:?}");
        }
    }

    #[test]
    fn out_of_range_instants_are_rejected() {
        assert_eq!(Timestamp::parse_rfc3339("2300-01-01T00:00:00Z"), None);
        assert_eq!(Timestamp::parse_rfc3339("not a time"), None);
    }
}
