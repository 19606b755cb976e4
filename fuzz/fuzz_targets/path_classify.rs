//! The path classifier runs on every request before routing: it must answer every string, and
//! its answers must agree with each other — a path it calls `Other` (forwarded unrouted to the
//! default cluster) must never be one that `is_dialog_spelling` says names a dialog interface.
#![no_main]

use graygate::protocol::{is_dialog_spelling, DialogPath};
use libfuzzer_sys::fuzz_target;

/// Prefixes that put the fuzzer next to the interesting paths, picked by the first byte.
const PREFIXES: [&str; 4] = ["", "/oifde/rest/", "/oifde/rest/v2/crs/", "/OIFDE/rest/crs/"];

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let Ok(tail) = std::str::from_utf8(rest) else {
        return;
    };
    let path = format!("{}{tail}", PREFIXES[usize::from(sel) % PREFIXES.len()]);
    match DialogPath::classify(&path) {
        DialogPath::Other => assert!(
            !is_dialog_spelling(&path),
            "{path:?} is forwarded unrouted but names a dialog path"
        ),
        DialogPath::V2(seg) => assert!(path.ends_with(seg), "{path:?}: segment {seg:?}"),
        DialogPath::V1 | DialogPath::OtherSpelling => {}
    }
});
