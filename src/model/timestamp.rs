//! Reading RFC 3339 timestamps quickly. Every metadata file and every PR of a listing carries
//! several, in the one form prenv and GitHub write (`2026-11-24T10:00:00Z`); chrono's general
//! parser took a tenth of a sync that read 10,000 of each. That form is read here directly;
//! anything else (offsets, fractions, lower-case separators) goes to chrono, so what is accepted
//! and how it is refused are chrono's, as before.
//!
//! Used with `#[serde(deserialize_with = …)]`; serializing stays chrono's.

use chrono::{DateTime, FixedOffset, NaiveDate, Utc};
use serde::Deserializer;
use serde::de::{self, Visitor};

/// Parses `text` as chrono's `DateTime<Utc>` deserializer does (RFC 3339, relaxed, any offset).
pub fn parse(text: &str) -> Result<DateTime<Utc>, chrono::ParseError> {
    match plain_utc(text.as_bytes()) {
        Some(at) => Ok(at),
        None => text.parse::<DateTime<FixedOffset>>().map(|at| at.with_timezone(&Utc)),
    }
}

/// `YYYY-MM-DDTHH:MM:SSZ` exactly, and a valid instant; `None` for anything else.
fn plain_utc(b: &[u8]) -> Option<DateTime<Utc>> {
    if b.len() != 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[13] != b':' || b[16] != b':' || b[19] != b'Z'
    {
        return None;
    }
    let num = |range: std::ops::Range<usize>| -> Option<u32> {
        b[range]
            .iter()
            .try_fold(0u32, |n, d| d.is_ascii_digit().then(|| n * 10 + u32::from(d - b'0')))
    };
    let date = NaiveDate::from_ymd_opt(i32::try_from(num(0..4)?).ok()?, num(5..7)?, num(8..10)?)?;
    // A leap second (:60) is chrono's to read.
    let time = date.and_hms_opt(num(11..13)?, num(14..16)?, num(17..19)?)?;
    Some(time.and_utc())
}

struct Instant;

impl Visitor<'_> for Instant {
    type Value = DateTime<Utc>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an RFC 3339 formatted date and time string")
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<DateTime<Utc>, E> {
        parse(text).map_err(E::custom)
    }
}

struct MaybeInstant;

impl<'de> Visitor<'de> for MaybeInstant {
    type Value = Option<DateTime<Utc>>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an RFC 3339 formatted date and time string or null")
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(Instant).map(Some)
    }
}

/// A `DateTime<Utc>` field.
pub fn instant<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
    d.deserialize_str(Instant)
}

/// An `Option<DateTime<Utc>>` field (`null` is `None`); give it `#[serde(default)]` too, so that
/// a missing field is `None` as it is for a plain `Option`.
pub fn maybe_instant<'de, D: Deserializer<'de>>(d: D) -> Result<Option<DateTime<Utc>>, D::Error> {
    d.deserialize_option(MaybeInstant)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn chrono_reads(text: &str) -> Result<DateTime<Utc>, String> {
        serde_json::from_value::<DateTime<Utc>>(serde_json::Value::String(text.into())).map_err(|e| e.to_string())
    }

    fn ours(text: &str) -> Result<DateTime<Utc>, String> {
        #[derive(serde::Deserialize)]
        struct At(#[serde(deserialize_with = "instant")] DateTime<Utc>);
        serde_json::from_value::<At>(serde_json::Value::String(text.into()))
            .map(|at| at.0)
            .map_err(|e| e.to_string())
    }

    proptest! {
        /// Any text of the plain form's shape, valid or not (month 13, February 30th, hour 24,
        /// second 60), is read as chrono reads it, or refused with chrono's words.
        #[test]
        fn the_plain_form_reads_as_chrono_reads_it(
            y in 0u32..10000, mo in 0u32..14, d in 0u32..33, h in 0u32..26, mi in 0u32..61, s in 0u32..62,
        ) {
            let text = format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z");
            prop_assert_eq!(ours(&text), chrono_reads(&text));
        }

        /// Other forms go to chrono: the same instant, or the same refusal.
        #[test]
        fn other_forms_read_as_chrono_reads_them(text in "[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]{1,9})?(Z|z|[+-][0-9]{2}:[0-9]{2})?") {
            prop_assert_eq!(ours(&text), chrono_reads(&text));
        }
    }

    #[test]
    fn null_and_a_missing_field_are_none_and_a_bad_time_names_itself() {
        #[derive(serde::Deserialize, Debug)]
        struct Maybe {
            #[serde(default, deserialize_with = "maybe_instant")]
            at: Option<DateTime<Utc>>,
        }
        let read = |json: &str| {
            serde_json::from_str::<Maybe>(json)
                .map(|m| m.at)
                .map_err(|e| e.to_string())
        };
        assert_eq!(read("{}"), Ok(None));
        assert_eq!(read(r#"{"at": null}"#), Ok(None));
        assert_eq!(
            read(r#"{"at": "2026-11-24T10:00:00Z"}"#),
            Ok(Some(chrono_reads("2026-11-24T10:00:00Z").unwrap()))
        );
        let error = read(r#"{"at": "2026-02-30T10:00:00Z"}"#).unwrap_err();
        assert!(error.contains("out of range"), "{error}");
        assert!(read(r#"{"at": 5}"#).unwrap_err().contains("RFC 3339"));
    }
}
