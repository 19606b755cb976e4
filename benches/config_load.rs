//! The phases of loading a 10,000-rule routes.yaml, each timed on its own (median of 15):
//! the YAML read into the raw structs, the compile into a snapshot, and the plan against the
//! previous snapshot. Run: `cargo bench --bench config_load`.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use tokio::time::Instant;

fn routes(n: usize, weight: u32) -> String {
    let mut y = String::from(
        "listen: 127.0.0.1:0\nadmin: 127.0.0.1:0\nclusters:\n  stable: { endpoints: [http://127.0.0.1:18180] }\n  canary: { endpoints: [http://127.0.0.1:18185] }\nrules:\n",
    );
    for i in 0..n {
        let _ = writeln!(
            y,
            "  - {{ name: w{i}, vdn: [{}], cluster: canary }}",
            100_000 + i
        );
    }
    let _ = writeln!(
        y,
        "  - {{ name: ramp, split: {{ canary: {weight}, stable: {} }} }}\ndefault: stable",
        100 - weight
    );
    y
}

fn median(mut v: Vec<Duration>) -> f64 {
    v.sort();
    v[v.len() / 2].as_secs_f64() * 1e3
}

fn main() {
    let path = Path::new("routes.yaml");
    for n in [1_000, 10_000] {
        let (mut parse, mut compile, mut plan) = (Vec::new(), Vec::new(), Vec::new());
        let mut previous = graygate::config::load_str(&routes(n, 10), "routes.yaml", path).unwrap();
        for k in 0..15 {
            let text = routes(n, 11 + k);
            let t = Instant::now();
            let (raw, unknown) = graygate::config::parse(&text, "routes.yaml").unwrap();
            parse.push(t.elapsed());
            let t = Instant::now();
            let snap = graygate::config::compile::compile(raw, "routes.yaml", &text, path, unknown)
                .unwrap();
            compile.push(t.elapsed());
            let t = Instant::now();
            let _ = graygate::config::diff::diff(&previous, &snap);
            let _ = graygate::config::diff::moved_shares(&previous, &snap, 1000);
            plan.push(t.elapsed());
            previous = snap;
        }
        println!(
            "{n:>6} rules: parse {:.1} ms, compile {:.1} ms, plan {:.1} ms",
            median(parse),
            median(compile),
            median(plan)
        );
    }
}
