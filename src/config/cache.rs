//! `train.cache_images`: how much memory the data loader may spend keeping decoded images, as
//! the config file spells it. What `auto` becomes on a given machine is the data module's
//! business (`crate::data::cache_limit`).

use std::fmt;

use serde::{Deserialize, Serialize};

/// The memory budget of the decoded-image cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(try_from = "serde_json::Value", into = "String")]
pub enum CacheImages {
    /// A share of the memory available when training starts (the default).
    #[default]
    Auto,
    /// Every image, whatever it costs (`"all"` or `true`: the behaviour before budgets).
    All,
    /// No cache: every image is decoded every epoch (`"off"` or `false`).
    Off,
    /// At most this many bytes (`"512KiB"`, `"64MiB"`, `"12GiB"`, …).
    Bytes(u64),
}

/// Units a size may end with, and their bytes.
const UNITS: [(&str, u64); 9] = [
    ("TiB", 1 << 40),
    ("GiB", 1 << 30),
    ("MiB", 1 << 20),
    ("KiB", 1 << 10),
    ("TB", 1_000_000_000_000),
    ("GB", 1_000_000_000),
    ("MB", 1_000_000),
    ("KB", 1_000),
    ("B", 1),
];

impl CacheImages {
    /// Parses `"auto"`, `"all"`, `"off"` or a size with a unit; `None` for anything else.
    pub fn parse(text: &str) -> Option<CacheImages> {
        let text = text.trim();
        match text.to_ascii_lowercase().as_str() {
            "auto" => return Some(CacheImages::Auto),
            "all" => return Some(CacheImages::All),
            "off" => return Some(CacheImages::Off),
            _ => {}
        }
        let (unit, scale) = UNITS.iter().find(|(unit, _)| text.ends_with(unit))?;
        let number = text[..text.len() - unit.len()].trim();
        let valid = !number.is_empty() && number.chars().all(|c| c.is_ascii_digit() || c == '.');
        let value: f64 = if valid { number.parse().ok()? } else { return None };
        let bytes = value * *scale as f64;
        (bytes.is_finite() && bytes < u64::MAX as f64).then(|| CacheImages::Bytes(bytes.round() as u64))
    }
}

impl fmt::Display for CacheImages {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            CacheImages::Auto => f.write_str("auto"),
            CacheImages::All => f.write_str("all"),
            CacheImages::Off => f.write_str("off"),
            CacheImages::Bytes(bytes) => {
                let binary = &UNITS[..4];
                match binary.iter().find(|(_, scale)| bytes >= *scale && bytes % scale == 0) {
                    Some((unit, scale)) => write!(f, "{}{unit}", bytes / scale),
                    None => write!(f, "{bytes}B"),
                }
            }
        }
    }
}

impl From<CacheImages> for String {
    fn from(value: CacheImages) -> String {
        value.to_string()
    }
}

impl TryFrom<serde_json::Value> for CacheImages {
    type Error = String;

    fn try_from(value: serde_json::Value) -> Result<Self, String> {
        let parsed = match &value {
            serde_json::Value::Bool(true) => Some(CacheImages::All),
            serde_json::Value::Bool(false) => Some(CacheImages::Off),
            serde_json::Value::String(text) => CacheImages::parse(text),
            _ => None,
        };
        parsed.ok_or_else(|| {
            format!(
                "train.cache_images must be \"auto\", \"all\", \"off\", true, false or a size with a \
                 unit (\"512KiB\", \"64MiB\", \"12GiB\"), got {value}"
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_words_and_booleans_parse() {
        assert_eq!(CacheImages::parse("auto"), Some(CacheImages::Auto));
        assert_eq!(CacheImages::parse("ALL"), Some(CacheImages::All));
        assert_eq!(CacheImages::parse("off"), Some(CacheImages::Off));
        assert_eq!(CacheImages::parse("512KiB"), Some(CacheImages::Bytes(512 << 10)));
        assert_eq!(CacheImages::parse("64 MiB"), Some(CacheImages::Bytes(64 << 20)));
        assert_eq!(CacheImages::parse("12GiB"), Some(CacheImages::Bytes(12 << 30)));
        assert_eq!(CacheImages::parse("1.5GiB"), Some(CacheImages::Bytes(3 << 29)));
        assert_eq!(CacheImages::parse("2GB"), Some(CacheImages::Bytes(2_000_000_000)));
        assert_eq!(CacheImages::parse("100B"), Some(CacheImages::Bytes(100)));
        for bad in ["", "12", "GiB", "-1GiB", "12XB", "1e3MiB", "1.2.3MiB", "lots", "99999999999TiB"] {
            assert_eq!(CacheImages::parse(bad), None, "{bad:?}");
        }
        let from = |v: serde_json::Value| CacheImages::try_from(v);
        assert_eq!(from(serde_json::json!(true)), Ok(CacheImages::All));
        assert_eq!(from(serde_json::json!(false)), Ok(CacheImages::Off));
        assert!(from(serde_json::json!(12)).unwrap_err().contains("got 12"));
    }

    #[test]
    fn display_round_trips() {
        for text in ["auto", "all", "off", "512KiB", "64MiB", "12GiB", "1000B", "1536MiB"] {
            let parsed = CacheImages::parse(text).unwrap();
            assert_eq!(parsed.to_string(), text);
            assert_eq!(CacheImages::parse(&parsed.to_string()), Some(parsed));
        }
        assert_eq!(CacheImages::Bytes(2_000_000_000).to_string(), "1953125KiB");
        assert_eq!(CacheImages::Bytes(1001).to_string(), "1001B");
    }
}
