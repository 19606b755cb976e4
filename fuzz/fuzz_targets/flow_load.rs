//! The reference backend's flow loader must answer every text with flows or located errors,
//! never a panic: operators hand-edit flow files.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = graygate::backend::flow::compile::compile_text("fuzz.yaml", text);
});
