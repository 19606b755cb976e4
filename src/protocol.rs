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
    /// Another spelling of a dialog path (doubled slashes, dot segments, `;params`,
    /// percent-encoding, letter case, a trailing `/`): refused with 400 `GW.BAD_URL`, never
    /// forwarded as an other request (see [`is_dialog_spelling`]).
    OtherSpelling,
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
        if is_dialog_spelling(path) {
            return DialogPath::OtherSpelling;
        }
        DialogPath::Other
    }
}

/// Longest path looked at for other spellings; a longer one is refused as a spelling when it
/// mentions the dialog prefix at all (no legitimate OIAP path is that long).
const SPELLING_MAX: usize = 2048;

/// True when `path`, after the normalizations some server behind the gateway may apply, names a
/// dialog interface: percent-decoding (repeated, as a double-decoding server would), `\` read
/// as `/`, ASCII letter case folded, `;params` cut from each segment, empty and `.` segments
/// dropped, `..` resolved. The gateway refuses such a path rather than forward it under rules
/// it did not apply (docs/resilience.md, "One meaning per path").
///
/// Allocation-free for the common case (a path with nothing to normalize is looked at in
/// place); at most a few buffers of the path's length otherwise.
pub fn is_dialog_spelling(path: &str) -> bool {
    let b = path.as_bytes();
    let plain = b.iter().all(|&c| {
        c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'/' | b'-' | b'_' | b'~')
    }) && !path.contains("//")
        && !path.ends_with('/');
    if plain {
        // Nothing to normalize: it names a dialog interface only as written, and those were
        // classified before this is called.
        return false;
    }
    if b.len() > SPELLING_MAX {
        return ascii_contains_ignore_case(b, b"oifde");
    }
    let mut cur: Vec<u8> = b.to_vec();
    for _ in 0..3 {
        let next = percent_decode(&cur);
        if next == cur {
            break;
        }
        cur = next;
    }
    let norm = normalize_segments(&cur);
    norm == V1_PATH.as_bytes()
        || (norm.len() > V2_PREFIX.len() && norm.starts_with(V2_PREFIX.as_bytes()))
}

fn ascii_contains_ignore_case(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle))
}

/// Decode every valid `%XX`; anything else is kept.
fn percent_decode(b: &[u8]) -> Vec<u8> {
    fn hex(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        }
    }
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push(h << 4 | l);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

/// `/`-joined segments, lower-cased, `\` as `/`, `;params` cut, empty and `.` segments dropped,
/// `..` popping the one before (never above the root).
fn normalize_segments(b: &[u8]) -> Vec<u8> {
    let lowered: Vec<u8> = b
        .iter()
        .map(|&c| {
            if c == b'\\' {
                b'/'
            } else {
                c.to_ascii_lowercase()
            }
        })
        .collect();
    let mut segs: Vec<&[u8]> = Vec::new();
    for seg in lowered.split(|&c| c == b'/') {
        let seg = match seg.iter().position(|&c| c == b';') {
            Some(p) => &seg[..p],
            None => seg,
        };
        match seg {
            b"" | b"." => {}
            b".." => {
                segs.pop();
            }
            s => segs.push(s),
        }
    }
    let mut out = Vec::with_capacity(b.len() + 1);
    for s in segs {
        out.push(b'/');
        out.extend_from_slice(s);
    }
    out
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
            DialogPath::OtherSpelling
        );
    }

    #[test]
    fn other_spellings_of_dialog_paths_are_recognized() {
        for p in [
            "//oifde/rest/v2/crs/process/101",
            "/oifde//rest/v2/crs/process/101",
            "/oifde/./rest/v2/crs/process/101",
            "/oifde/x/../rest/v2/crs/process/101",
            "/oifde/rest/v2/crs;a=b/process/101",
            "/oifde/rest/v2/crs/%70rocess/101",
            "/oifde/rest/v2/crs/%2570rocess/101",
            "/OIFDE/rest/v2/crs/process/101",
            "/oifde/rest/crs/process/",
            "/oifde/rest/crs/process;jsessionid=1",
            "/oifde/rest/crs/process/.",
            "/oifde\\rest\\crs\\process",
            "/oifde/rest/crs/process%2F",
            "/../oifde/rest/crs/process",
        ] {
            assert_eq!(DialogPath::classify(p), DialogPath::OtherSpelling, "{p}");
        }
        for p in [
            "/oifde/rest/api/gettoken",
            "/oifde/rest/api//gettoken",
            "/OIFDE/rest/api/gettoken",
            "/",
            "",
            "/oifde/rest/v2/crs/process",
            "/oifde/rest/crs/processes",
            "/oifde/rest/crs/process/x/..%",
            "%",
            "/%",
            "/%4",
        ] {
            assert_eq!(DialogPath::classify(p), DialogPath::Other, "{p}");
        }
        // Very long paths: refused when they mention the dialog prefix at all.
        let long = format!("/{}/oifde/rest/crs/process", "a/".repeat(2000));
        assert!(is_dialog_spelling(&long));
        let long = format!("/{}", "a/".repeat(2000));
        assert!(!is_dialog_spelling(&long));
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
