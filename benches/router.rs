//! Rule evaluation for 10, 1,000 and 10,000 rules, and the split choice.
//!
//! `vdn`: every rule has a vdn condition, so the vdn index narrows a turn to the rules of its vdn;
//! the turn's vdn is matched by the LAST rule (the worst case for a linear scan). `userid-prefix`:
//! every rule is a userid prefix rule, which the index cannot narrow, and the turn matches none,
//! so all N rules are tried before the default: the cost without the index.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion};
use graygate::probe::{Dialog, Turn};
use graygate::protocol::Inaction;
use graygate::router::{decide, split::Split, RuleRef};
use graygate::snapshot::Snapshot;
use http::HeaderMap;

const HEAD: &str = "listen: 127.0.0.1:0\nadmin: 127.0.0.1:0\nclusters:\n  stable: { endpoints: [\"http://127.0.0.1:18080\"] }\n  canary: { endpoints: [\"http://127.0.0.1:18085\"] }\ndefault: stable\nrules:\n";

fn routes(n: usize, kind: &str) -> Snapshot {
    let mut y = String::from(HEAD);
    for i in 0..n {
        let cluster = if i % 2 == 0 { "canary" } else { "stable" };
        match kind {
            "vdn" => writeln!(
                y,
                "  - {{ name: r{i}, vdn: [{}], cluster: {cluster} }}",
                1000 + i
            ),
            _ => writeln!(
                y,
                "  - {{ name: r{i}, userid: {{ prefix: [\"p{i}-\"] }}, cluster: {cluster} }}"
            ),
        }
        .unwrap();
    }
    graygate::config::load_str(&y, "b.yaml", Path::new("b.yaml")).expect("bench routes compile")
}

fn turn(vdn: u32) -> Turn {
    Turn {
        dialog: Dialog::V2(vdn),
        userid: "1732000000-123456-42".into(),
        inaction: Inaction(8),
        hangup: false,
        fields: Vec::new(),
    }
}

fn bench_rules(c: &mut Criterion) {
    let headers = HeaderMap::new();
    let mut g = c.benchmark_group("decide");
    g.measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500))
        .sample_size(20);
    for n in [10usize, 1_000, 10_000] {
        let snap = routes(n, "vdn");
        let t = turn(1000 + n as u32 - 1);
        assert_eq!(
            decide(&t, &headers, &snap.routing).rule,
            RuleRef::Rule(n - 1)
        );
        g.bench_with_input(BenchmarkId::new("vdn-indexed", n), &n, |b, _| {
            b.iter(|| decide(black_box(&t), &headers, &snap.routing))
        });
    }
    for n in [10usize, 1_000, 10_000] {
        let snap = routes(n, "prefix");
        let t = turn(101);
        assert_eq!(decide(&t, &headers, &snap.routing).rule, RuleRef::Default);
        g.bench_with_input(BenchmarkId::new("userid-prefix", n), &n, |b, _| {
            b.iter(|| decide(black_box(&t), &headers, &snap.routing))
        });
    }
    g.finish();
}

fn bench_split(c: &mut Criterion) {
    let mut g = c.benchmark_group("split");
    g.measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500))
        .sample_size(20);
    let two = Split::new("one-in-ten", [(0, "stable", 90.0), (1, "canary", 10.0)]);
    let four = Split::new(
        "four",
        [
            (0, "a", 40.0),
            (1, "b", 30.0),
            (2, "c", 20.0),
            (3, "d", 10.0),
        ],
    );
    let userid = "1732000000-123456-42";
    g.bench_function("choose/2-clusters", |b| {
        b.iter(|| two.choose(black_box(userid), |_| true))
    });
    g.bench_function("choose/4-clusters", |b| {
        b.iter(|| four.choose(black_box(userid), |_| true))
    });
    g.finish();
}

criterion_group!(benches, bench_rules, bench_split);
criterion_main!(benches);
