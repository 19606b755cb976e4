//! The body probe must answer every byte string with a `Turn` or a `ProbeError`, never a
//! panic: it runs on every dialog request before any routing.
#![no_main]

use graygate::probe::{scan, Dialog, ProbeSpec};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The first byte picks the interface (V1, or V2 with a vdn); the rest is the body.
    let Some((&sel, body)) = data.split_first() else {
        return;
    };
    let dialog = if sel & 1 == 0 {
        Dialog::V1
    } else {
        Dialog::V2(u32::from(sel))
    };
    let mut spec = ProbeSpec::new();
    spec.add_path("inparams.channelType");
    spec.add_path("inparams.a.b.c");
    spec.add_path("userid");
    if let Ok(turn) = scan(body, dialog, &spec) {
        for i in 0..3 {
            let _ = turn.field(i);
        }
    }
    let _ = graygate::probe::scan::userid_hint(body);
});
