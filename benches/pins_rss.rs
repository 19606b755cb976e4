//! Resident memory of the in-memory pin table with 1,000,000 live pins (target: ≤ 200 MB).
//!
//! Not a criterion bench: it fills a `MemoryStore` with a million dialog-shaped userids, then
//! prints VmRSS before and after from `/proc/self/status`. Run: `cargo bench --bench pins_rss`.

use std::time::Duration;

use graygate::ids as names;
use graygate::metrics::Metrics;
use graygate::pins::memory::MemoryStore;
use graygate::pins::{Pin, PinStore};

fn vm_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0)
}

fn main() {
    let n: usize = std::env::var("PINS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
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
    let before = vm_rss_kib();
    rt.block_on(async {
        let mut key = String::with_capacity(32);
        for i in 0..n {
            use std::fmt::Write as _;
            key.clear();
            // The shape of dialog.lua's userids: "<unix time>-<6 digits>-<call number>".
            let _ = write!(key, "{}-{:06}-{}", 1_732_000_000 + i / 1000, i % 999_983, i);
            store.create(&key, pin, Duration::from_secs(1800)).await;
        }
    });
    assert_eq!(store.len(), n);
    let after = vm_rss_kib();
    println!(
        "pins_rss: {n} live pins: VmRSS {:.1} MB (before {:.1} MB, table {:.1} MB, {:.0} B/pin); target <= 200 MB: {}",
        after as f64 / 1024.0,
        before as f64 / 1024.0,
        (after - before) as f64 / 1024.0,
        (after - before) as f64 * 1024.0 / n as f64,
        if after <= 200 * 1024 { "met" } else { "MISSED" }
    );
}
