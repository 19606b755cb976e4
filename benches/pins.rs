//! Pin insert / lookup / release on an in-memory table holding 1,000,000 live pins.
//!
//! `MemoryStore`'s methods are async but never wait, so a current-thread runtime's `block_on`
//! drives each call to completion at once. Every measured operation leaves the table at one
//! million pins: insert+release creates and removes a fresh key, lookup hits a live one.

use std::time::Duration;

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use graygate::ids as names;
use graygate::metrics::Metrics;
use graygate::pins::memory::MemoryStore;
use graygate::pins::{Pin, PinStore, ReleaseReason};

const LIVE: usize = 1_000_000;
const TTL: Duration = Duration::from_secs(1800);

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    let store = MemoryStore::new(Metrics::new());
    let pin = Pin {
        cluster: names::intern("canary"),
        rule: names::intern("one-in-ten"),
        generation: 1,
        created_at_ms: 0,
        ending: false,
        epoch: 0,
        failed: false,
        transferred: false,
    };
    let keys: Vec<String> = (0..LIVE).map(|i| format!("1732000000-{i:06}-0")).collect();
    rt.block_on(async {
        for k in &keys {
            store.create(k, pin, TTL).await;
        }
    });
    assert_eq!(store.len(), LIVE);

    let mut g = c.benchmark_group("pins-1M-live");
    g.measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500))
        .sample_size(20);
    let mut i = 0usize;
    g.bench_function("lookup(get+touch)", |b| {
        b.iter(|| {
            i = (i + 7919) % LIVE;
            rt.block_on(store.get(black_box(&keys[i]), TTL))
        })
    });
    let mut n = 0u64;
    g.bench_function("insert+release", |b| {
        b.iter(|| {
            n += 1;
            let mut k = itoa::Buffer::new();
            let k = k.format(n);
            rt.block_on(async {
                store.create(k, pin, TTL).await;
                store.release(k, ReleaseReason::Hangup).await
            })
        })
    });
    g.finish();
    assert_eq!(store.len(), LIVE);
}

criterion_group!(benches, bench);
criterion_main!(benches);
