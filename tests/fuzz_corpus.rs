//! CI's fuzz smoke: every committed corpus input (and every regression found by the fuzzers)
//! goes through the same entry points as the fuzz targets, without libFuzzer. The long runs are
//! `scripts/fuzz.sh SECONDS`.

use std::path::Path;

fn inputs(target: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut v: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| std::fs::read(e.unwrap().path()).unwrap())
        .collect();
    assert!(!v.is_empty(), "no corpus for {target}");
    // Truncations of each input stand in for a few mutations.
    let extra: Vec<Vec<u8>> = v
        .iter()
        .flat_map(|b| (1..8).map(move |k| b[..b.len() * k / 8].to_vec()))
        .collect();
    v.extend(extra);
    v
}

#[test]
fn probe_scan_corpus() {
    let mut spec = graygate::probe::ProbeSpec::new();
    spec.add_path("inparams.channelType");
    for data in inputs("probe_scan") {
        let _ = graygate::probe::scan(&data, graygate::probe::Dialog::V2(101), &spec);
        let _ = graygate::respond::peek_outaction(&data);
    }
}

#[test]
fn routes_load_corpus() {
    for data in inputs("routes_load") {
        if let Ok(text) = std::str::from_utf8(&data) {
            let _ =
                graygate::config::load_str(text, "fuzz.yaml", Path::new("/nonexistent/fuzz.yaml"));
        }
    }
}

#[test]
fn flow_load_corpus() {
    for data in inputs("flow_load") {
        if let Ok(text) = std::str::from_utf8(&data) {
            let _ = graygate::backend::flow::compile::compile_text("fuzz.yaml", text);
        }
    }
}

#[test]
fn path_classify_corpus() {
    // The same input shape as fuzz_targets/path_classify.rs: a prefix selector, then the path.
    const PREFIXES: [&str; 4] = [
        "",
        "/oifde/rest/",
        "/oifde/rest/v2/crs/",
        "/OIFDE/rest/crs/",
    ];
    let mut respelled = 0;
    for data in inputs("path_classify") {
        let Some((&sel, rest)) = data.split_first() else {
            continue;
        };
        let Ok(tail) = std::str::from_utf8(rest) else {
            continue;
        };
        let path = format!("{}{tail}", PREFIXES[usize::from(sel) % PREFIXES.len()]);
        let class = graygate::protocol::DialogPath::classify(&path);
        if class == graygate::protocol::DialogPath::Other {
            assert!(!graygate::protocol::is_dialog_spelling(&path), "{path:?}");
        }
        respelled += usize::from(class == graygate::protocol::DialogPath::OtherSpelling);
    }
    // The seeds include other spellings of both interfaces: they must be seen as such.
    assert!(
        respelled >= 5,
        "only {respelled} other spellings recognized in the seeds"
    );
}

#[test]
fn http_head_corpus() {
    for data in inputs("http_head") {
        use graygate::proxy::fast::head::{parse, Head};
        if let Head::Dialog(d) | Head::Chunked(d) = parse(&data, 64 * 1024) {
            assert!(d.keep.iter().all(|r| r.end <= d.len));
        }
        let _ = graygate::proxy::fast::parse_answer(&data);
    }
}

#[test]
fn chunked_corpus() {
    for data in inputs("chunked") {
        let mut c = graygate::proxy::fast::chunk::Chunked::new();
        let _ = c.feed(&data, |_| {});
    }
}
