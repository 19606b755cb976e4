//! The routes.yaml loader must answer every text with a snapshot or located errors, never a
//! panic: `graygate check` and every reload run it on files people edit by hand.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = graygate::config::load_str(text, "fuzz.yaml", Path::new("/nonexistent/fuzz.yaml"));
});
