//! The ODFS dialog vocabulary shared by the gateway and the reference backend.
//!
//! Only names and small value types live here: dialog paths, `Vdn`, `UserId` (whose `Display`
//! masks the value, so the safe log line is the easy one), `Inaction` and `Outaction`. No I/O,
//! no JSON handling: the gateway's probe and the backend each read bodies their own way.

use std::fmt;

/// V2 dialog path prefix; the vdnId follows as the last segment.
pub const V2_PREFIX: &str = "/oifde/rest/v2/crs/process/";
/// V1 dialog path (no vdn).
pub const V1_PATH: &str = "/oifde/rest/crs/process";
/// Token API path.
pub const TOKEN_PATH: &str = "/oifde/rest/api/gettoken";
/// The header in which the reference backend names the instance that answered.
pub const INSTANCE_HEADER: &str = "x-odfs-instance";
/// The longest userid the protocol allows, in characters.
pub const MAX_USERID_CHARS: usize = 64;

/// A VDN (tenant) id from a V2 URL.
pub type Vdn = u32;

/// Which dialog surface a request path names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DialogPath<'a> {
    /// `POST /oifde/rest/v2/crs/process/{vdnId}`; the raw segment is kept so the caller can
    /// parse it and report a bad one.
    V2(&'a str),
    /// `POST /oifde/rest/crs/process`.
    V1,
    /// Anything else (token API, other OIAP APIs).
    Other,
}

impl<'a> DialogPath<'a> {
    /// Classify a request path (without the query string).
    pub fn classify(path: &'a str) -> Self {
        if let Some(rest) = path.strip_prefix(V2_PREFIX) {
            return DialogPath::V2(rest);
        }
        if path == V1_PATH {
            return DialogPath::V1;
        }
        DialogPath::Other
    }
}

/// Parse a vdnId path segment: a decimal integer that fits in a u32 (A1). Leading `+`, signs,
/// spaces and empty segments are refused.
pub fn parse_vdn(segment: &str) -> Option<Vdn> {
    if segment.is_empty() || segment.len() > 10 || !segment.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    segment.parse::<u32>().ok()
}

/// What the access party just did (request `inaction`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Inaction(pub i64);

impl Inaction {
    pub const RECORDING: Inaction = Inaction(7);
    pub const INIT: Inaction = Inaction(8);
    pub const INTERACTION: Inaction = Inaction(9);
    pub const TRANSFER: Inaction = Inaction(11);
    pub const RECOGNITION: Inaction = Inaction(13);

    /// A turn that may start a call: 8, or 7 which may come before 8.
    pub fn starts_call(self) -> bool {
        self.0 == 7 || self.0 == 8
    }

    /// The metric label: one of the documented values or `other` (bounded cardinality).
    pub fn label(self) -> &'static str {
        match self.0 {
            7 => "7",
            8 => "8",
            9 => "9",
            11 => "11",
            13 => "13",
            _ => "other",
        }
    }
}

impl fmt::Display for Inaction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// What the ODFS tells the access party to do next (response `outaction`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Outaction(pub i64);

impl Outaction {
    pub const RECORDING: Outaction = Outaction(7);
    pub const INTERACTION: Outaction = Outaction(9);
    pub const HANGUP: Outaction = Outaction(10);
    pub const TRANSFER: Outaction = Outaction(11);
    pub const QUERY: Outaction = Outaction(12);
    pub const RECOGNITION: Outaction = Outaction(13);

    pub fn is_end(self) -> bool {
        self.0 == 10
    }
}

impl fmt::Display for Outaction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The `input` value that reports the caller hung up.
pub const INPUT_HANGUP: &str = "hangup";

/// A userid borrowed for display in logs: shows at most the first 4 and the last 2 characters.
/// Call ids are often derived from phone numbers, so the whole value is never logged.
#[derive(Clone, Copy)]
pub struct Masked<'a>(pub &'a str);

impl fmt::Display for Masked<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Slices at character boundaries: no allocation (this runs for every access line).
        let n = self.0.chars().count();
        if n <= 6 {
            return f.write_str("***");
        }
        let head_end = self
            .0
            .char_indices()
            .nth(4)
            .map_or(self.0.len(), |(i, _)| i);
        let tail_start = self.0.char_indices().nth(n - 2).map_or(0, |(i, _)| i);
        f.write_str(&self.0[..head_end])?;
        f.write_str("***")?;
        f.write_str(&self.0[tail_start..])
    }
}

impl fmt::Debug for Masked<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_paths() {
        assert_eq!(
            DialogPath::classify("/oifde/rest/v2/crs/process/101"),
            DialogPath::V2("101")
        );
        assert_eq!(
            DialogPath::classify("/oifde/rest/crs/process"),
            DialogPath::V1
        );
        assert_eq!(
            DialogPath::classify("/oifde/rest/api/gettoken"),
            DialogPath::Other
        );
        assert_eq!(
            DialogPath::classify("/oifde/rest/crs/process/"),
            DialogPath::Other
        );
    }

    #[test]
    fn vdn_must_be_a_u32() {
        assert_eq!(parse_vdn("101"), Some(101));
        assert_eq!(parse_vdn("4294967295"), Some(u32::MAX));
        assert_eq!(parse_vdn("4294967296"), None);
        assert_eq!(parse_vdn("-1"), None);
        assert_eq!(parse_vdn("+1"), None);
        assert_eq!(parse_vdn("1a"), None);
        assert_eq!(parse_vdn(""), None);
        assert_eq!(parse_vdn("101/x"), None);
    }

    #[test]
    fn masked_never_shows_the_whole_value() {
        assert_eq!(Masked("1528780879-9581").to_string(), "1528***81");
        assert_eq!(Masked("abc").to_string(), "***");
        assert_eq!(Masked("1234567").to_string(), "1234***67");
        // Multi-byte characters are cut at their boundaries.
        assert_eq!(Masked("ééééééééé").to_string(), "éééé***éé");
        assert_eq!(Masked("αβγδεζη").to_string(), "αβγδ***ζη");
    }

    #[test]
    fn inaction_labels_are_bounded() {
        assert_eq!(Inaction(8).label(), "8");
        assert_eq!(Inaction(12).label(), "other");
        assert!(Inaction(7).starts_call() && Inaction(8).starts_call());
        assert!(!Inaction(9).starts_call());
    }
}
