//! The fast path's head readers must answer every byte string — taken, partial, or hyper's —
//! never panic, and every range they hand out must lie inside the head.
#![no_main]

use graygate::proxy::fast::head::{parse, Head};
use graygate::proxy::fast::parse_answer;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let head = parse(data, 64 * 1024);
    if let Head::Dialog(d) | Head::Chunked(d) = &head {
        assert!(d.len <= data.len());
        for r in d
            .keep
            .iter()
            .chain(d.tracestate.iter())
            .chain(d.forwarded_for.iter())
            .chain(d.request_id.iter())
            .chain(d.traceparent.iter())
        {
            assert!(r.start <= r.end && r.end <= d.len, "{r:?} outside a {}-byte head", d.len);
        }
        assert!(d.path.end <= d.len);
        assert!(d.content_length <= 64 * 1024);
    }
    if let Head::Chunked(d) = &head {
        assert_eq!(d.content_length, 0);
    }
    if let Ok(Some(a)) = parse_answer(data) {
        assert!(a.head_len <= data.len());
        for r in &a.keep {
            assert!(r.start <= r.end && r.end <= a.head_len);
        }
    }
});
