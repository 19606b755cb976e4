//! The chunked-framing reader must refuse or accept every byte string without a panic, the
//! same way whatever pieces it arrives in, and never claim more bytes than it was given.
#![no_main]

use graygate::proxy::fast::chunk::Chunked;
use libfuzzer_sys::fuzz_target;

fn run(data: &[u8], step: usize) -> (Result<usize, ()>, Vec<u8>, bool) {
    let mut c = Chunked::new();
    let mut out = Vec::new();
    let mut used = 0;
    for piece in data.chunks(step.max(1)) {
        match c.feed(piece, |d| out.extend_from_slice(d)) {
            Ok(n) => {
                assert!(n <= piece.len());
                used += n;
                if c.is_done() {
                    break;
                }
            }
            Err(_) => return (Err(()), out, false),
        }
    }
    (Ok(used), out, c.is_done())
}

fuzz_target!(|data: &[u8]| {
    let Some((&step, body)) = data.split_first() else {
        return;
    };
    let whole = run(body, body.len().max(1));
    let pieces = run(body, usize::from(step % 17) + 1);
    // Data handed out before an error may differ in length by piece, never the verdict.
    assert_eq!(whole.0.is_ok(), pieces.0.is_ok());
    if whole.0.is_ok() {
        assert_eq!(whole, pieces);
    }
});
