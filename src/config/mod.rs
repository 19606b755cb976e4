//! The config side path: file → raw serde structs → compiled [`Snapshot`].
//!
//! `load` reads, parses and compiles completely, reporting every error with `file:line:column`;
//! it starts nothing (no sockets, no backends), so `graygate check`, `explain` and `diff` use it
//! as it is. Making a snapshot live (pools, publish) is the reloader's job.

pub mod compile;
pub mod diff;
pub mod raw;
pub mod reload;
pub mod value;

use std::path::Path;

use crate::located::{Located, LocatedErrors};
use crate::snapshot::Snapshot;

pub use compile::sha256_hex;

/// Read, parse, validate and compile a routes file.
pub fn load(path: &Path) -> Result<Snapshot, LocatedErrors> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| {
        LocatedErrors(vec![Located::new(
            &file,
            0,
            0,
            "",
            format!("cannot read the file: {e}"),
        )])
    })?;
    load_str(&text, &file, path)
}

/// Parse and compile routes from text (`file` names it in errors).
pub fn load_str(text: &str, file: &str, path: &Path) -> Result<Snapshot, LocatedErrors> {
    let raw: raw::RoutesFile = serde_yaml::from_str(text)
        .map_err(|e| LocatedErrors(vec![refine(Located::from_yaml(file, &e), text)]))?;
    compile::compile(raw, file, text, path)
}

/// serde_yaml places an error raised by a value's own check at the enclosing mapping. When the
/// message quotes the offending text (`like this`), point at that text instead, searching from
/// the reported line on.
pub fn refine(mut e: Located, text: &str) -> Located {
    let Some(start) = e.message.find('`') else {
        return e;
    };
    let Some(len) = e.message[start + 1..].find('`') else {
        return e;
    };
    let needle = &e.message[start + 1..start + 1 + len];
    if needle.is_empty() {
        return e;
    }
    for (i, line) in text.lines().enumerate().skip(e.line.saturating_sub(1)) {
        if let Some(col) = line.find(needle) {
            if i + 1 != e.line || col + 1 > e.column {
                e.line = i + 1;
                e.column = col + 1;
            }
            return e;
        }
    }
    e
}
