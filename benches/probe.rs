//! The body probe on dialog-shaped bodies: a ~300-byte turn and a ~4 KiB start turn with a large
//! `extparams` blob that the probe must skip (it is still syntax-checked).

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use graygate::probe::{scan, Dialog, ProbeSpec};
use std::time::Duration;

const TOKEN: &str = "eyJhbGciOiJIUzI1NiJ9.eyJ0ZW5hbnQiOiJ0MDAxIiwiZXhwIjo0MTAyNDQ0ODAwfQ.c2lnbmF0dXJlLW5vdC1jaGVja2Vk";

/// A later turn, as `dialog.lua` sends it (~300 bytes).
fn small_body() -> Vec<u8> {
    format!(
        r#"{{"userid":"1732000000-123456-42","inaction":9,"inparams":{{"call_id":"1732000000-123456-42","call_dst_id":"10086","flow_result_type":"2","input":"1","inter_idx":"1","auth_token":"{TOKEN}"}}}}"#
    )
    .into_bytes()
}

/// A start turn padded with extension data to ~4 KiB; `userid` comes last, after the blob.
fn large_body() -> Vec<u8> {
    let mut ext = String::new();
    let mut i = 0;
    while ext.len() < 3600 {
        ext.push_str(&format!(
            r#""k{i}":{{"v":"value-{i}","n":[{i},{},true,null],"s":"a\"quoted\" text"}},"#,
            i * 7
        ));
        i += 1;
    }
    ext.pop();
    format!(
        r#"{{"inaction":8,"seat":"vir","inparams":{{"call_id":"1732000000-123456-42","call_sor_id":"13500000001","call_dst_id":"10086","channelType":"WEB","auth_token":"{TOKEN}"}},"extparams":{{{ext}}},"userid":"1732000000-123456-42"}}"#
    )
    .into_bytes()
}

fn bench(c: &mut Criterion) {
    let mut spec = ProbeSpec::new();
    spec.add_path("inparams.channelType");
    let mut g = c.benchmark_group("probe");
    g.measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500))
        .sample_size(20);
    for (name, body) in [("300B", small_body()), ("4KiB", large_body())] {
        assert!(scan(&body, Dialog::V2(101), &spec).is_ok(), "{name} scans");
        g.throughput(Throughput::Bytes(body.len() as u64));
        g.bench_function(format!("scan/{name}({}B)", body.len()), |b| {
            b.iter(|| scan(black_box(&body), Dialog::V2(101), &spec))
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
