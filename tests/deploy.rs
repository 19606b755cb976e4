//! `deploy/`, `examples/` and `docs/operations.md`: the files operators run graygate with, checked
//! with the tools operators use.
//!
//! | check | tool |
//! |---|---|
//! | scrape configs, rule files | `promtool check config` / `check rules` |
//! | every alert firing and not firing | `promtool test rules deploy/prometheus/tests.yml` |
//! | every dashboard / rule expression parses | `promtool check rules` on a generated rule file |
//! | every metric name is one of spec §6 | none (a list copied from the spec) |
//! | Kubernetes base and overlays render and validate | `kustomize build` (or `kubectl kustomize`), `python3 -m kubernetes_validate --strict` |
//! | the systemd unit | `systemd-analyze verify` |
//! | the Dockerfile | none (static: COPY sources, EXPOSE, USER) |
//! | examples and ConfigMap routes.yaml follow spec §2 | none (a structural lint until `graygate check` runs here) |
//!
//! A missing tool is a SKIP line on a developer's machine and a failure when `CI` is set; the
//! tools are installed by `scripts/install-test-deps.sh`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::support::have_tool;
use serde_yaml::Value as Yaml;

// === the contract copied from spec §6 ===

/// Every metric of spec §6 with its labels (`job`/`instance` come from the scrape, `le` from
/// histograms). Histograms are listed by base name; `_bucket`, `_sum`, `_count` are derived.
const SPEC_METRICS: &[(&str, &[&str])] = &[
    (
        "graygate_requests_total",
        &["cluster", "rule", "inaction", "code"],
    ),
    (
        "graygate_request_duration_seconds",
        &["cluster", "inaction"],
    ),
    ("graygate_upstream_duration_seconds", &["cluster"]),
    ("graygate_gateway_errors_total", &["code"]),
    ("graygate_pins", &["cluster"]),
    ("graygate_pins_created_total", &["cluster"]),
    ("graygate_pins_released_total", &["cluster", "reason"]),
    ("graygate_orphan_turns_total", &["action"]),
    ("graygate_config_reloads_total", &["result"]),
    ("graygate_config_generation", &[]),
    ("graygate_config_last_reload_success_timestamp_seconds", &[]),
    (
        "graygate_upstream_endpoint_healthy",
        &["cluster", "endpoint"],
    ),
    ("graygate_inflight_requests", &["cluster"]),
    (
        "graygate_endpoint_ejections_total",
        &["cluster", "endpoint"],
    ),
    ("graygate_fallbacks_total", &["from", "to"]),
    ("graygate_pin_store_errors_total", &["op"]),
    ("graygate_pin_store_duration_seconds", &["op"]),
    ("graygate_connections", &["listener"]),
    ("graygate_rejected_connections_total", &["reason"]),
    ("graygate_pins_evicted_total", &["cluster"]),
    (
        "graygate_call_outcomes_total",
        &["cluster", "rule", "outcome"],
    ),
    ("graygate_rollout_share_percent", &["rule"]),
    ("graygate_rollout_state", &["rule", "state"]),
    ("graygate_rollout_transitions_total", &["rule", "to"]),
];

/// The spec's histograms (their series carry `_bucket`/`_sum`/`_count` and the `le` label).
const SPEC_HISTOGRAMS: &[&str] = &[
    "graygate_request_duration_seconds",
    "graygate_upstream_duration_seconds",
    "graygate_pin_store_duration_seconds",
];

/// Spec §6: "Process metrics (memory, CPU, open fds) are exported too" — the standard names of
/// the process collector, the only non-`graygate_` names the dashboard may use.
const PROCESS_METRICS: &[&str] = &["process_resident_memory_bytes", "process_cpu_seconds_total"];

/// The defaults of spec §2: dialog `listen` and `admin` ports.
const DEFAULT_DIALOG_PORT: u16 = 8080;
const DEFAULT_ADMIN_PORT: u16 = 9090;

/// The gateway's drain grace after SIGTERM (issue 4) that stop timeouts must exceed.
const DRAIN_GRACE_SECS: u64 = 30;

// === helpers ===

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    let path = repo().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn yaml(rel: &str) -> Yaml {
    serde_yaml::from_str(&read(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn run(program: &str, args: &[&str], cwd: &Path) -> Output {
    Command::new(program)
        .args(args)
        .current_dir(cwd)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"))
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn assert_ok(what: &str, o: &Output) {
    assert!(
        o.status.success(),
        "{what} failed ({}):\n{}",
        o.status,
        text(o)
    );
}

fn get<'a>(v: &'a Yaml, path: &str) -> &'a Yaml {
    let mut cur = v;
    for key in path.split('.') {
        cur = match key.parse::<usize>() {
            Ok(i) => cur.get(i),
            Err(_) => cur.get(key),
        }
        .unwrap_or_else(|| panic!("missing {path} (at {key}) in {v:?}"));
    }
    cur
}

fn s<'a>(v: &'a Yaml, path: &str) -> &'a str {
    get(v, path)
        .as_str()
        .unwrap_or_else(|| panic!("{path} is not a string"))
}

/// A duration as spec §2 writes it (`250ms`, `5s`, `30m`, `1h`) in seconds.
fn secs(d: &str) -> f64 {
    let (num, unit) = d.split_at(d.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(d.len()));
    let n: f64 = num.parse().unwrap_or_else(|_| panic!("bad duration {d:?}"));
    n * match unit {
        "ms" => 0.001,
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        _ => panic!("bad duration unit in {d:?}"),
    }
}

// === metric names used by the dashboard and the rules ===

/// Every PromQL expression in `deploy/`: (where, expression). Grafana's variables are left in.
fn all_expressions() -> Vec<(String, String)> {
    let mut out = Vec::new();
    for file in [
        "deploy/prometheus/recording-rules.yml",
        "deploy/prometheus/alerts.yml",
    ] {
        for group in get(&yaml(file), "groups").as_sequence().unwrap() {
            for rule in get(group, "rules").as_sequence().unwrap() {
                let name = rule.get("record").or_else(|| rule.get("alert")).unwrap();
                out.push((
                    format!("{file}: {}", name.as_str().unwrap()),
                    s(rule, "expr").to_string(),
                ));
            }
        }
    }
    out.extend(grafana_expressions());
    out
}

/// Every `expr` in the Grafana dashboard (panel targets, rows' panels, annotations).
fn grafana_expressions() -> Vec<(String, String)> {
    fn walk(v: &serde_json::Value, at: &str, out: &mut Vec<(String, String)>) {
        match v {
            serde_json::Value::Object(m) => {
                let title = m.get("title").and_then(|t| t.as_str()).unwrap_or(at);
                for (k, child) in m {
                    if k == "expr" {
                        if let Some(e) = child.as_str() {
                            out.push((format!("grafana: {title}"), e.to_string()));
                        }
                    } else if k == "definition" {
                        // A variable's `label_values(SELECTOR, label)`: the selector is PromQL.
                        let def = child.as_str().unwrap_or("");
                        if let Some(args) = def.strip_prefix("label_values(") {
                            let selector =
                                &args[..args.rfind(',').expect("label_values(selector, label)")];
                            out.push((format!("grafana variable: {def}"), selector.to_string()));
                        }
                    } else {
                        walk(child, title, out);
                    }
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|c| walk(c, at, out)),
            _ => {}
        }
    }
    let dash: serde_json::Value =
        serde_json::from_str(&read("deploy/grafana/graygate.json")).unwrap();
    let mut out = Vec::new();
    walk(&dash, "dashboard", &mut out);
    out
}

/// The metric base names an expression reads: identifiers that start with `graygate_` or
/// `process_` (never recording-rule names, which contain `:`), with a histogram's
/// `_bucket`/`_sum`/`_count` stripped. Label names and values are not metric names: text inside
/// `{…}` and quotes is skipped. This is the list a live gateway's /metrics must contain.
pub fn metric_base_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let (mut in_braces, mut in_quotes) = (false, false);
    let chars: Vec<char> = expr.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if in_quotes {
            if c == '\\' {
                i += 1;
            } else if c == '"' {
                in_quotes = false;
            }
            i += 1;
            continue;
        }
        match c {
            '"' => in_quotes = true,
            '{' => in_braces = true,
            '}' => in_braces = false,
            c if (c.is_ascii_alphabetic() || c == '_') && !in_braces => {
                let start = i;
                while i < chars.len()
                    && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
                {
                    i += 1;
                }
                let ident: String = chars[start..i].iter().collect();
                if !ident.contains(':')
                    && (ident.starts_with("graygate_") || ident.starts_with("process_"))
                {
                    names.insert(strip_histogram_suffix(&ident).to_string());
                }
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    names
}

fn strip_histogram_suffix(name: &str) -> &str {
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix) {
            return base;
        }
    }
    name
}

/// Every metric base name used anywhere in `deploy/` (dashboard, recording rules, alerts).
pub fn used_metric_names() -> BTreeSet<String> {
    all_expressions()
        .iter()
        .flat_map(|(_, e)| metric_base_names(e))
        .collect()
}

#[test]
fn metric_base_names_skips_labels_and_recorded_names() {
    let names = metric_base_names(
        r#"sum by (cluster) (rate(graygate_request_duration_seconds_bucket{code=~"graygate_x"}[5m]))
           / job_cluster:graygate_requests:rate5m + graygate_pins"#,
    );
    let want: BTreeSet<String> = ["graygate_request_duration_seconds", "graygate_pins"]
        .map(String::from)
        .into();
    assert_eq!(names, want);
}

#[test]
fn every_metric_name_used_is_in_spec() {
    let spec: BTreeSet<&str> = SPEC_METRICS.iter().map(|(n, _)| *n).collect();
    let used = used_metric_names();
    let unknown: Vec<_> = used
        .iter()
        .filter(|n| !spec.contains(n.as_str()) && !PROCESS_METRICS.contains(&n.as_str()))
        .collect();
    assert!(
        unknown.is_empty(),
        "metric names not in spec §6: {unknown:?}"
    );
    // What a rollout needs is actually on the dashboard and in the rules.
    for needed in [
        "graygate_requests_total",
        "graygate_request_duration_seconds",
        "graygate_pins",
        "graygate_pins_created_total",
        "graygate_upstream_endpoint_healthy",
        "graygate_config_generation",
        "graygate_config_reloads_total",
        "graygate_orphan_turns_total",
        "graygate_pins_released_total",
    ] {
        assert!(
            used.contains(needed),
            "{needed} is used by no dashboard panel or rule"
        );
    }
}

#[test]
fn every_label_used_is_in_spec() {
    let labels: BTreeMap<&str, &[&str]> = SPEC_METRICS.iter().copied().collect();
    let allowed = |metric: &str, label: &str| {
        let base = strip_histogram_suffix(metric);
        ["job", "instance"].contains(&label)
            || (label == "le" && SPEC_HISTOGRAMS.contains(&base))
            || labels.get(base).is_some_and(|l| l.contains(&label))
    };
    let selector = regex::Regex::new(r"\b(graygate_[a-z_]+)\{([^}]*)\}").unwrap();
    let matcher = regex::Regex::new(r#"([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*""#).unwrap();
    let mut bad = Vec::new();
    for (at, expr) in all_expressions() {
        for sel in selector.captures_iter(&expr) {
            for m in matcher.captures_iter(&sel[2]) {
                if !allowed(&sel[1], &m[1]) {
                    bad.push(format!("{at}: {}{{{}…}}", &sel[1], &m[1]));
                }
            }
        }
    }
    assert!(bad.is_empty(), "labels not in spec §6:\n{}", bad.join("\n"));
}

/// The labels a series may carry: spec §6's for a metric (plus `le` for a histogram's buckets),
/// and for a recorded series the levels of its name (`job_cluster:…` has `job` and `cluster`).
fn labels_of(name: &str) -> BTreeSet<String> {
    let mut out: BTreeSet<String> = ["job", "instance"].map(String::from).into();
    if let Some((level, _)) = name.split_once(':') {
        out.extend(level.split('_').map(String::from));
        return out;
    }
    let base = strip_histogram_suffix(name);
    if let Some((_, labels)) = SPEC_METRICS.iter().find(|(n, _)| *n == base) {
        out.extend(labels.iter().map(|l| l.to_string()));
    }
    if SPEC_HISTOGRAMS.contains(&base) && name.ends_with("_bucket") {
        out.insert("le".into());
    }
    out
}

#[test]
fn every_grouping_label_exists() {
    // `by (…)`, `without (…)`, `on (…)`, `ignoring (…)`: each label must be carried by some series
    // the expression reads; a typo there silently aggregates everything into one series.
    let series =
        regex::Regex::new(r"\b[a-z_]+:[a-zA-Z0-9_:]+|\b(graygate|process)_[a-z_]+").unwrap();
    let grouping =
        regex::Regex::new(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
            .unwrap();
    let mut bad = Vec::new();
    for (at, expr) in all_expressions() {
        let known: BTreeSet<String> = series
            .find_iter(&expr)
            .flat_map(|m| labels_of(m.as_str()))
            .collect();
        for g in grouping.captures_iter(&expr) {
            for label in g[2].split(',').map(str::trim).filter(|l| !l.is_empty()) {
                if !known.contains(label) {
                    bad.push(format!("{at}: {}({label})", &g[1]));
                }
            }
        }
    }
    assert!(
        bad.is_empty(),
        "grouping by labels no series has:\n{}",
        bad.join("\n")
    );
}

// === Prometheus ===

#[test]
fn prometheus_config_and_rules_check() {
    if !have_tool(
        "prometheus_config_and_rules_check",
        "promtool",
        &["--version"],
    ) {
        return;
    }
    let dir = repo().join("deploy/prometheus");
    assert_ok(
        "promtool check config prometheus.yml",
        &run("promtool", &["check", "config", "prometheus.yml"], &dir),
    );
    assert_ok(
        "promtool check rules",
        &run(
            "promtool",
            &["check", "rules", "recording-rules.yml", "alerts.yml"],
            &dir,
        ),
    );

    // Kubernetes discovery: Debian builds promtool without it ("field kubernetes_sd_configs not
    // found"). Then the file is checked with the discovery swapped for a static target, so the
    // rest (relabelling, rule files) is still checked; an upstream promtool checks it whole.
    let k8s = run(
        "promtool",
        &["check", "config", "prometheus-kubernetes.yml"],
        &dir,
    );
    if !k8s.status.success() && text(&k8s).contains("kubernetes_sd_configs not found") {
        eprintln!("NOTE prometheus-kubernetes.yml: this promtool has no Kubernetes discovery; checking the rest");
        let mut cfg = yaml("deploy/prometheus/prometheus-kubernetes.yml");
        for job in cfg["scrape_configs"].as_sequence_mut().unwrap() {
            let m = job.as_mapping_mut().unwrap();
            assert!(m.remove("kubernetes_sd_configs").is_some());
            m.insert(
                "static_configs".into(),
                serde_yaml::from_str("[{targets: ['pod:9090']}]").unwrap(),
            );
        }
        let tmp = tempfile::Builder::new()
            .suffix(".yml")
            .tempfile_in(&dir)
            .unwrap();
        std::fs::write(tmp.path(), serde_yaml::to_string(&cfg).unwrap()).unwrap();
        assert_ok(
            "promtool check config prometheus-kubernetes.yml (static)",
            &run(
                "promtool",
                &["check", "config", tmp.path().to_str().unwrap()],
                &dir,
            ),
        );
    } else {
        assert_ok("promtool check config prometheus-kubernetes.yml", &k8s);
    }
}

#[test]
fn prometheus_alert_unit_tests() {
    if !have_tool("prometheus_alert_unit_tests", "promtool", &["--version"]) {
        return;
    }
    let dir = repo().join("deploy/prometheus");
    let out = run("promtool", &["test", "rules", "tests.yml"], &dir);
    assert_ok("promtool test rules tests.yml", &out);
    assert!(text(&out).contains("SUCCESS"), "{}", text(&out));
}

#[test]
fn every_alert_is_tested_firing_and_not_firing() {
    let alerts = alert_names();
    let tests = yaml("deploy/prometheus/tests.yml");
    let (mut firing, mut silent) = (BTreeSet::new(), BTreeSet::new());
    for t in get(&tests, "tests").as_sequence().unwrap() {
        for case in t
            .get("alert_rule_test")
            .and_then(|c| c.as_sequence())
            .into_iter()
            .flatten()
        {
            let name = s(case, "alertname").to_string();
            let fires = case
                .get("exp_alerts")
                .and_then(|e| e.as_sequence())
                .is_some_and(|e| !e.is_empty());
            if fires {
                firing.insert(name)
            } else {
                silent.insert(name)
            };
        }
    }
    for a in &alerts {
        assert!(firing.contains(a), "tests.yml never expects {a} to fire");
        assert!(
            silent.contains(a),
            "tests.yml never expects {a} to stay silent"
        );
    }
}

fn alert_names() -> Vec<String> {
    let mut names = Vec::new();
    for group in get(&yaml("deploy/prometheus/alerts.yml"), "groups")
        .as_sequence()
        .unwrap()
    {
        for rule in get(group, "rules").as_sequence().unwrap() {
            names.push(s(rule, "alert").to_string());
        }
    }
    names
}

#[test]
fn every_alert_has_annotations_and_a_runbook_section() {
    let doc = read("docs/operations.md");
    let anchors: BTreeSet<String> = doc
        .lines()
        .filter(|l| l.starts_with('#'))
        .map(github_anchor)
        .collect();
    let wanted = [
        "GraygateCanaryErrorRatioHigh",
        "GraygateConfigReloadFailing",
        "GraygateClusterNoHealthyEndpoint",
        "GraygateOrphanTurns",
        "GraygatePinsGrowing",
        "GraygateLatencyP99High",
        "GraygateRolloutAborted",
        "GraygateRolloutStuck",
    ];
    let names = alert_names();
    for w in wanted {
        assert!(names.iter().any(|n| n == w), "alerts.yml has no {w}");
    }
    for group in get(&yaml("deploy/prometheus/alerts.yml"), "groups")
        .as_sequence()
        .unwrap()
    {
        for rule in get(group, "rules").as_sequence().unwrap() {
            let alert = s(rule, "alert");
            for key in ["summary", "description"] {
                assert!(
                    !s(rule, &format!("annotations.{key}")).trim().is_empty(),
                    "{alert}: empty {key}"
                );
            }
            assert!(
                get(rule, "labels.severity").as_str().is_some(),
                "{alert}: no severity"
            );
            let url = s(rule, "annotations.runbook_url");
            let (file, anchor) = url
                .split_once('#')
                .unwrap_or_else(|| panic!("{alert}: runbook_url without #"));
            assert_eq!(file, "docs/operations.md", "{alert}");
            assert_eq!(
                anchor,
                format!("alert-{}", alert.to_lowercase()),
                "{alert}: anchor name"
            );
            assert!(
                anchors.contains(anchor),
                "{alert}: docs/operations.md has no section #{anchor}"
            );
        }
    }
}

/// The anchor GitHub (and most Markdown renderers) give a heading.
fn github_anchor(heading: &str) -> String {
    heading
        .trim_start_matches('#')
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

#[test]
fn recorded_names_used_are_recorded() {
    let mut recorded = BTreeSet::new();
    for group in get(&yaml("deploy/prometheus/recording-rules.yml"), "groups")
        .as_sequence()
        .unwrap()
    {
        for rule in get(group, "rules").as_sequence().unwrap() {
            recorded.insert(s(rule, "record").to_string());
        }
    }
    let name = regex::Regex::new(r"[a-zA-Z_]+:[a-zA-Z0-9_:]+").unwrap();
    for (at, expr) in all_expressions() {
        for m in name.find_iter(&expr) {
            assert!(
                recorded.contains(m.as_str()),
                "{at}: {} is not recorded",
                m.as_str()
            );
        }
    }
}

/// Grafana's variables replaced by values that keep a query valid PromQL.
fn grafana_to_promql(expr: &str) -> String {
    expr.replace("$__rate_interval", "5m")
        .replace("$__interval", "1m")
        .replace("$__range", "1h")
        .replace("$job", "graygate")
        .replace("$cluster", ".+")
}

#[test]
fn every_dashboard_query_parses() {
    let exprs = grafana_expressions();
    assert!(exprs.len() >= 15, "only {} dashboard queries", exprs.len());
    for (at, e) in &exprs {
        assert!(
            !grafana_to_promql(e).contains('$'),
            "{at}: an unknown Grafana variable in {e}"
        );
    }
    if !have_tool("every_dashboard_query_parses", "promtool", &["--version"]) {
        return;
    }
    // Each query becomes a recording rule; promtool parses every expression of a rule file.
    let rules: Vec<Yaml> = exprs
        .iter()
        .enumerate()
        .map(|(i, (_, e))| {
            let mut m = serde_yaml::Mapping::new();
            m.insert(
                "record".into(),
                format!("graygate_dashboard_check:query_{i}").into(),
            );
            m.insert("expr".into(), grafana_to_promql(e).into());
            Yaml::Mapping(m)
        })
        .collect();
    let file: Yaml = serde_yaml::from_str("groups: [{name: dashboard}]").unwrap();
    let mut file = file;
    file["groups"][0]
        .as_mapping_mut()
        .unwrap()
        .insert("rules".into(), Yaml::Sequence(rules));
    let tmp = tempfile::Builder::new().suffix(".yml").tempfile().unwrap();
    std::fs::write(tmp.path(), serde_yaml::to_string(&file).unwrap()).unwrap();
    let out = run(
        "promtool",
        &["check", "rules", tmp.path().to_str().unwrap()],
        &repo(),
    );
    assert_ok("promtool check rules <dashboard queries>", &out);
}

#[test]
fn dashboard_shows_a_rollout() {
    let dash: serde_json::Value =
        serde_json::from_str(&read("deploy/grafana/graygate.json")).unwrap();
    let titles: Vec<String> = dash["panels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["title"].as_str().unwrap_or("").to_lowercase())
        .collect();
    for want in [
        "new calls",
        "share",
        "error ratio",
        "p50",
        "pinned calls",
        "endpoint health",
        "generation",
        "reload",
    ] {
        assert!(
            titles.iter().any(|t| t.contains(want)),
            "no dashboard panel about {want:?}: {titles:?}"
        );
    }
    let mut ids = BTreeSet::new();
    for p in dash["panels"].as_array().unwrap() {
        assert!(
            ids.insert(p["id"].as_u64().unwrap()),
            "duplicate panel id {}",
            p["id"]
        );
    }
}

// === Kubernetes ===

/// Render a kustomization with `kustomize build`, or `kubectl kustomize` when only kubectl is there.
fn kustomize(test: &str, dir: &str) -> Option<String> {
    let dir = repo().join(dir);
    let dir = dir.to_str().unwrap();
    let ok = |p: &str, a: &[&str]| {
        Command::new(p)
            .args(a)
            .output()
            .is_ok_and(|o| o.status.success())
    };
    let out = if ok("kustomize", &["version"]) {
        run("kustomize", &["build", dir], &repo())
    } else if ok("kubectl", &["kustomize", "--help"]) {
        run("kubectl", &["kustomize", dir], &repo())
    } else {
        have_tool(test, "kustomize", &["version"]);
        return None;
    };
    assert_ok(&format!("kustomize build {dir}"), &out);
    Some(String::from_utf8(out.stdout).unwrap())
}

/// The oldest Kubernetes the manifests are for: the native `preStop: sleep` action is on by
/// default from 1.30.
const OLDEST_KUBERNETES: &str = "1.30.0";

/// `kubernetes-validate --strict` against one Kubernetes version (None: the validator's newest).
fn kubernetes_validate(test: &str, manifests: &str, version: Option<&str>) -> Option<Output> {
    if !have_tool(test, "python3", &["-m", "kubernetes_validate", "--version"]) {
        return None;
    }
    let tmp = tempfile::Builder::new().suffix(".yaml").tempfile().unwrap();
    std::fs::write(tmp.path(), manifests).unwrap();
    let mut args = vec!["-m", "kubernetes_validate", "--strict", "--quiet"];
    if let Some(v) = version {
        args.extend(["-k", v]);
    }
    args.push(tmp.path().to_str().unwrap());
    Some(run("python3", &args, &repo()))
}

fn documents(manifests: &str) -> Vec<Yaml> {
    serde_yaml::Deserializer::from_str(manifests)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .filter(|d: &Yaml| !d.is_null())
        .collect()
}

fn object<'a>(docs: &'a [Yaml], kind: &str, name: &str) -> &'a Yaml {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind}/{name} rendered"))
}

const OVERLAYS: &[&str] = &["deploy/k8s/base", "deploy/k8s/overlays/redis"];

#[test]
fn kustomizations_render_and_validate() {
    for dir in OVERLAYS {
        let Some(manifests) = kustomize("kustomizations_render_and_validate", dir) else {
            return;
        };
        for version in [None, Some(OLDEST_KUBERNETES)] {
            let Some(out) =
                kubernetes_validate("kustomizations_render_and_validate", &manifests, version)
            else {
                return;
            };
            let what = format!("kubernetes-validate --strict {version:?} on {dir}");
            assert_ok(&what, &out);
            // The same output says nothing is unknown: every kind rendered has a schema.
            assert!(
                !text(&out).contains("Couldn't find schema"),
                "{what}: {}",
                text(&out)
            );
        }
    }
}

#[test]
fn kubernetes_validate_rejects_an_unknown_field() {
    // The control: strict validation is not a no-op.
    let Some(manifests) = kustomize(
        "kubernetes_validate_rejects_an_unknown_field",
        "deploy/k8s/base",
    ) else {
        return;
    };
    let broken = manifests.replacen("  replicas: 2\n", "  replicas: 2\n  replicaz: 2\n", 1);
    assert_ne!(broken, manifests);
    let Some(out) = kubernetes_validate(
        "kubernetes_validate_rejects_an_unknown_field",
        &broken,
        None,
    ) else {
        return;
    };
    assert!(
        !out.status.success(),
        "an unknown field passed:\n{}",
        text(&out)
    );
}

#[test]
fn gateway_deployment_is_what_operators_need() {
    for dir in OVERLAYS {
        let Some(manifests) = kustomize("gateway_deployment_is_what_operators_need", dir) else {
            return;
        };
        let docs = documents(&manifests);
        check_gateway_objects(dir, &docs);
    }
}

fn check_gateway_objects(dir: &str, docs: &[Yaml]) {
    let deploy = object(docs, "Deployment", "graygate");
    assert!(
        get(deploy, "spec.replicas").as_u64().unwrap() >= 2,
        "{dir}: fewer than 2 replicas"
    );
    let pod = get(deploy, "spec.template.spec");
    let c = get(pod, "containers.0");
    let args: Vec<&str> = get(c, "args")
        .as_sequence()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    let at = args.iter().position(|a| *a == "-c").expect("-c");
    assert_eq!(&args[..1], ["serve"], "{dir}");
    assert_eq!(args[at + 1], "/etc/graygate/routes.yaml", "{dir}");

    // Non-root, read-only root filesystem, resources.
    assert_eq!(
        get(pod, "securityContext.runAsNonRoot").as_bool(),
        Some(true),
        "{dir}"
    );
    assert_ne!(
        get(pod, "securityContext.runAsUser").as_u64(),
        Some(0),
        "{dir}"
    );
    assert_eq!(
        get(c, "securityContext.readOnlyRootFilesystem").as_bool(),
        Some(true),
        "{dir}"
    );
    assert_eq!(
        get(c, "securityContext.allowPrivilegeEscalation").as_bool(),
        Some(false),
        "{dir}"
    );
    get(c, "resources.requests.cpu");
    get(c, "resources.limits.memory");

    // The config is a directory mount: no subPath anywhere, and the mount holds routes.yaml.
    for m in get(c, "volumeMounts").as_sequence().unwrap() {
        assert!(
            m.get("subPath").is_none(),
            "{dir}: subPath mount {m:?} never sees ConfigMap updates"
        );
    }
    let mount = get(c, "volumeMounts")
        .as_sequence()
        .unwrap()
        .iter()
        .find(|m| m["mountPath"] == "/etc/graygate")
        .expect("a mount at /etc/graygate");
    let volume = get(pod, "volumes")
        .as_sequence()
        .unwrap()
        .iter()
        .find(|v| v["name"] == mount["name"])
        .unwrap();
    let cm_name = s(volume, "configMap.name");
    let cm = object(docs, "ConfigMap", cm_name);
    let routes: Yaml = serde_yaml::from_str(
        cm["data"]["routes.yaml"]
            .as_str()
            .expect("routes.yaml in the ConfigMap"),
    )
    .expect("routes.yaml in the ConfigMap parses");

    // Probes on the admin listener, which must bind all interfaces in the pod.
    let port = |name: &str| -> u64 {
        get(c, "ports")
            .as_sequence()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .map(|p| p["containerPort"].as_u64().unwrap())
            .unwrap_or_else(|| panic!("{dir}: no container port {name}"))
    };
    let admin = s(&routes, "admin");
    assert!(
        admin.starts_with("0.0.0.0:"),
        "{dir}: admin {admin} cannot be probed by the kubelet"
    );
    assert_eq!(
        admin.rsplit(':').next().unwrap().parse::<u64>().unwrap(),
        port("admin"),
        "{dir}"
    );
    assert_eq!(
        s(&routes, "listen")
            .rsplit(':')
            .next()
            .unwrap()
            .parse::<u64>()
            .unwrap(),
        port("dialog"),
        "{dir}"
    );
    for (probe, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")] {
        assert_eq!(s(c, &format!("{probe}.httpGet.path")), path, "{dir}");
        assert_eq!(s(c, &format!("{probe}.httpGet.port")), "admin", "{dir}");
    }

    // /admin/* on 0.0.0.0 is protected by a token from a mounted Secret.
    let token = s(&routes, "admin_token_file");
    let secret_mount = get(c, "volumeMounts")
        .as_sequence()
        .unwrap()
        .iter()
        .find(|m| token.starts_with(&format!("{}/", m["mountPath"].as_str().unwrap())))
        .unwrap_or_else(|| panic!("{dir}: admin_token_file {token} is in no mounted volume"));
    let secret_volume = get(pod, "volumes")
        .as_sequence()
        .unwrap()
        .iter()
        .find(|v| v["name"] == secret_mount["name"])
        .unwrap();
    get(secret_volume, "secret.secretName");

    // Graceful stop: preStop pause + drain grace < terminationGracePeriodSeconds.
    let pause = get(c, "lifecycle.preStop.sleep.seconds").as_u64().unwrap();
    let grace = get(pod, "terminationGracePeriodSeconds").as_u64().unwrap();
    assert!(
        grace > pause + DRAIN_GRACE_SECS,
        "{dir}: {grace}s grace <= {pause}s preStop + {DRAIN_GRACE_SECS}s drain"
    );

    // The Service carries dialog traffic and the metrics port; the PDB keeps one pod.
    let svc = object(docs, "Service", "graygate");
    let svc_ports: Vec<(&str, u64)> = get(svc, "spec.ports")
        .as_sequence()
        .unwrap()
        .iter()
        .map(|p| (p["name"].as_str().unwrap(), p["port"].as_u64().unwrap()))
        .collect();
    assert!(
        svc_ports.contains(&("dialog", DEFAULT_DIALOG_PORT as u64)),
        "{dir}: {svc_ports:?}"
    );
    assert!(
        svc_ports.contains(&("metrics", DEFAULT_ADMIN_PORT as u64)),
        "{dir}: {svc_ports:?}"
    );
    let selector = get(svc, "spec.selector").as_mapping().unwrap();
    let labels = get(deploy, "spec.template.metadata.labels")
        .as_mapping()
        .unwrap();
    for (k, v) in selector {
        assert_eq!(
            labels.get(k),
            Some(v),
            "{dir}: the Service selects no gateway pod"
        );
    }
    // The NetworkPolicy selects the gateway pods, admits dialog traffic, and admits the admin
    // port only from named peers (probes come from the node, which is always allowed).
    let np = object(docs, "NetworkPolicy", "graygate");
    for (k, v) in get(np, "spec.podSelector.matchLabels")
        .as_mapping()
        .unwrap()
    {
        assert_eq!(
            labels.get(k),
            Some(v),
            "{dir}: the NetworkPolicy selects no gateway pod"
        );
    }
    let rules = get(np, "spec.ingress").as_sequence().unwrap();
    let port_of = |r: &Yaml| -> Vec<String> {
        r["ports"]
            .as_sequence()
            .map(|ps| {
                ps.iter()
                    .map(|p| match &p["port"] {
                        Yaml::String(s) => s.clone(),
                        Yaml::Number(n) => n.to_string(),
                        _ => String::new(),
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    let admin_rules: Vec<&Yaml> = rules
        .iter()
        .filter(|r| {
            let ps = port_of(r);
            ps.is_empty() || ps.iter().any(|p| p == "admin" || p == "9090")
        })
        .collect();
    assert!(!admin_rules.is_empty(), "{dir}: nothing admits the scraper");
    for r in &admin_rules {
        let from = r["from"].as_sequence();
        assert!(
            from.is_some_and(|f| !f.is_empty()),
            "{dir}: the admin port is open to every pod: {r:?}"
        );
    }
    assert!(
        rules
            .iter()
            .any(|r| port_of(r).iter().any(|p| p == "dialog" || p == "8080")
                && r["from"].as_sequence().is_none()),
        "{dir}: dialog traffic is not admitted"
    );
    let pdb = object(docs, "PodDisruptionBudget", "graygate");
    assert!(
        get(pdb, "spec.minAvailable").as_u64().unwrap() >= 1,
        "{dir}"
    );

    // Real endpoints, and the pin store the overlay is about.
    for (name, cluster) in get(&routes, "clusters").as_mapping().unwrap() {
        let eps = get(cluster, "endpoints")
            .as_sequence()
            .unwrap_or_else(|| panic!("{name:?}: no endpoints"));
        for e in eps {
            let e = e.as_str().unwrap();
            assert!(
                e.starts_with("http://") || e.starts_with("https://"),
                "{dir}: {e}"
            );
            assert!(
                !e.contains("127.0.0.1") && !e.contains("localhost"),
                "{dir}: loopback endpoint {e} in a pod"
            );
        }
    }
    let store = s(&routes, "pins.store");
    if dir.ends_with("redis") {
        assert_eq!(store, "redis://redis:6379/0", "{dir}");
        let redis_svc = object(docs, "Service", "redis");
        assert_eq!(get(redis_svc, "spec.ports.0.port").as_u64(), Some(6379));
        redis_password_and_network_policy(dir, docs, deploy);
    } else {
        assert_eq!(store, "memory", "{dir}");
    }
}

/// The redis overlay: Redis requires the password of the Secret `graygate-redis`, the gateway
/// reads the same Secret as a file (never the ConfigMap), and a NetworkPolicy admits only the
/// gateway pods to Redis's port.
fn redis_password_and_network_policy(dir: &str, docs: &[Yaml], gateway: &Yaml) {
    let secret_ref = |env: &Yaml, name: &str| -> Option<(String, String)> {
        let e = env
            .as_sequence()?
            .iter()
            .find(|e| e["name"].as_str() == Some(name))?;
        let r = &e["valueFrom"]["secretKeyRef"];
        Some((r["name"].as_str()?.into(), r["key"].as_str()?.into()))
    };
    let redis = object(docs, "Deployment", "redis");
    let rc = get(redis, "spec.template.spec.containers.0");
    let args: Vec<&str> = rc["args"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(|a| a.as_str())
        .collect();
    let i = args
        .iter()
        .position(|a| *a == "--requirepass")
        .unwrap_or_else(|| panic!("{dir}: redis without --requirepass: {args:?}"));
    assert_eq!(args.get(i + 1), Some(&"$(REDIS_PASSWORD)"), "{dir}");
    let want = Some(("graygate-redis".to_string(), "password".to_string()));
    assert_eq!(secret_ref(&rc["env"], "REDIS_PASSWORD"), want, "{dir}");
    assert_eq!(secret_ref(&rc["env"], "REDISCLI_AUTH"), want, "{dir}");

    // The gateway: GRAYGATE_REDIS_PASSWORD_FILE names a file of a mounted graygate-redis Secret.
    let spec = get(gateway, "spec.template.spec");
    let gc = spec["containers"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "graygate")
        .unwrap();
    let file = gc["env"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "GRAYGATE_REDIS_PASSWORD_FILE")
        .and_then(|e| e["value"].as_str())
        .unwrap_or_else(|| panic!("{dir}: the gateway has no GRAYGATE_REDIS_PASSWORD_FILE"));
    let mount = gc["volumeMounts"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|m| file.starts_with(&format!("{}/", m["mountPath"].as_str().unwrap())))
        .unwrap_or_else(|| panic!("{dir}: {file} is on no mounted volume"));
    let volume = spec["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|v| v["name"] == mount["name"])
        .unwrap();
    assert_eq!(volume["secret"]["secretName"], "graygate-redis", "{dir}");
    // No password in the ConfigMap's routes.yaml.
    let cm = object(docs, "ConfigMap", "graygate-routes");
    let routes_text = cm["data"]["routes.yaml"].as_str().unwrap();
    let routes: Yaml = serde_yaml::from_str(routes_text).unwrap();
    let store = s(&routes, "pins.store");
    assert!(
        !store.contains('@'),
        "{dir}: a password in the ConfigMap: {store}"
    );

    // The NetworkPolicy: selects the Redis pods, admits only the gateway pods, on 6379.
    let np = object(docs, "NetworkPolicy", "redis");
    let redis_labels = get(redis, "spec.template.metadata.labels")
        .as_mapping()
        .unwrap();
    for (k, v) in get(np, "spec.podSelector.matchLabels")
        .as_mapping()
        .unwrap()
    {
        assert_eq!(
            redis_labels.get(k),
            Some(v),
            "{dir}: the policy selects no Redis pod"
        );
    }
    assert_eq!(get(np, "spec.policyTypes.0"), "Ingress", "{dir}");
    let ingress = get(np, "spec.ingress").as_sequence().unwrap();
    assert_eq!(ingress.len(), 1, "{dir}: one rule");
    let from = ingress[0]["from"].as_sequence().unwrap();
    assert_eq!(from.len(), 1, "{dir}: one source");
    assert!(from[0].get("namespaceSelector").is_none() && from[0].get("ipBlock").is_none());
    let gw_labels = get(gateway, "spec.template.metadata.labels")
        .as_mapping()
        .unwrap();
    let sel = from[0]["podSelector"]["matchLabels"].as_mapping().unwrap();
    assert!(!sel.is_empty(), "{dir}: an empty selector admits every pod");
    for (k, v) in sel {
        assert_eq!(
            gw_labels.get(k),
            Some(v),
            "{dir}: the policy admits no gateway pod"
        );
    }
    assert_eq!(ingress[0]["ports"][0]["port"].as_u64(), Some(6379), "{dir}");
}

#[test]
fn service_monitor_selects_the_metrics_port() {
    let sm = yaml("deploy/k8s/servicemonitor.yaml");
    for dir in OVERLAYS {
        let k = yaml(&format!("{dir}/kustomization.yaml"));
        for r in get(&k, "resources").as_sequence().unwrap() {
            assert!(
                !r.as_str().unwrap().contains("servicemonitor"),
                "{dir}: the ServiceMonitor must stay optional"
            );
        }
    }
    let svc = yaml("deploy/k8s/base/service.yaml");
    let labels = get(&svc, "metadata.labels").as_mapping().unwrap();
    for (k, v) in get(&sm, "spec.selector.matchLabels").as_mapping().unwrap() {
        assert_eq!(labels.get(k), Some(v), "ServiceMonitor selects no Service");
    }
    let port = s(&sm, "spec.endpoints.0.port");
    assert!(get(&svc, "spec.ports")
        .as_sequence()
        .unwrap()
        .iter()
        .any(|p| p["name"] == port));
    assert_eq!(s(&sm, "spec.endpoints.0.path"), "/metrics");
    // kubernetes-validate has no schema for the Operator's CRD: it may only say so, not fail.
    if let Some(out) = kubernetes_validate(
        "service_monitor_selects_the_metrics_port",
        &read("deploy/k8s/servicemonitor.yaml"),
        None,
    ) {
        assert_ok("kubernetes-validate servicemonitor.yaml", &out);
    }
}

// === systemd ===

#[test]
fn systemd_unit_verifies() {
    let unit = read("deploy/systemd/graygate.service");
    let directives: Vec<(&str, &str)> = unit
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#') && l.contains('='))
        .map(|l| l.split_once('=').unwrap())
        .collect();
    let one = |key: &str| -> &str {
        let v: Vec<&str> = directives
            .iter()
            .filter(|(k, _)| *k == key)
            .map(|(_, v)| *v)
            .collect();
        assert_eq!(v.len(), 1, "{key}: {v:?}");
        v[0]
    };
    assert_eq!(one("Type"), "notify");
    assert_eq!(
        one("ExecStart"),
        "/usr/local/bin/graygate serve -c /etc/graygate/routes.yaml"
    );
    assert!(directives.contains(&("ExecReload", "/bin/kill -HUP $MAINPID")));
    assert!(secs(one("TimeoutStopSec")) > DRAIN_GRACE_SECS as f64);
    assert!(
        one("LimitNOFILE").parse::<u64>().unwrap() >= 2 * 10_000,
        "LimitNOFILE below 2 x max_connections"
    );
    assert_eq!(one("NoNewPrivileges"), "yes");
    assert_eq!(one("ProtectSystem"), "strict");
    assert_eq!(one("DynamicUser"), "yes");
    assert_eq!(one("ConfigurationDirectory"), "graygate");
    assert_eq!(one("StateDirectory"), "graygate");
    assert_eq!(one("CapabilityBoundingSet"), "", "no capability by default");
    assert_eq!(one("AmbientCapabilities"), "");

    if !have_tool("systemd_unit_verifies", "systemd-analyze", &["--version"]) {
        return;
    }
    // systemd-analyze verify checks that ExecStart's binary exists: point the unit at a stub.
    let tmp = tempfile::tempdir().unwrap();
    let stub = tmp.path().join("graygate");
    std::fs::write(&stub, "#!/bin/sh\nexit 0\n").unwrap();
    std::fs::set_permissions(&stub, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let copy = tmp.path().join("graygate.service");
    std::fs::write(
        &copy,
        unit.replace("/usr/local/bin/graygate", stub.to_str().unwrap()),
    )
    .unwrap();
    let out = run(
        "systemd-analyze",
        &["verify", copy.to_str().unwrap()],
        tmp.path(),
    );
    assert_ok("systemd-analyze verify graygate.service", &out);
    // verify exits 0 on unknown keys and other warnings about the unit: none allowed.
    let about_unit: Vec<&str> = std::str::from_utf8(&out.stderr)
        .unwrap()
        .lines()
        .chain(std::str::from_utf8(&out.stdout).unwrap().lines())
        .filter(|l| l.contains("graygate.service"))
        .collect();
    assert!(
        about_unit.is_empty(),
        "systemd-analyze warned:\n{}",
        about_unit.join("\n")
    );
}

// === Docker ===

#[test]
fn dockerfile_copies_what_exists_and_exposes_the_defaults() {
    let df = read("deploy/docker/Dockerfile");
    // Join continuation lines, drop comments.
    let joined = df
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n");
    let joined = joined.replace("\\\n", " ");
    let mut stages = Vec::new();
    let mut exposed = BTreeSet::new();
    let mut user = None;
    let mut copied_to = BTreeSet::new();
    for line in joined.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let (instr, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
        let words: Vec<&str> = rest.split_whitespace().collect();
        match instr.to_ascii_uppercase().as_str() {
            "FROM" => {
                if let Some(i) = words.iter().position(|w| w.eq_ignore_ascii_case("as")) {
                    stages.push(words[i + 1].to_string());
                }
                user = None;
            }
            "COPY" | "ADD" => {
                let from = words.iter().find_map(|w| w.strip_prefix("--from="));
                let paths: Vec<&str> = words
                    .iter()
                    .copied()
                    .filter(|w| !w.starts_with("--"))
                    .collect();
                let (srcs, dest) = paths.split_at(paths.len() - 1);
                assert!(!srcs.is_empty(), "{line}");
                copied_to.insert(dest[0].to_string());
                match from {
                    Some(stage) => assert!(
                        stages.iter().any(|s| s == stage),
                        "{line}: no stage {stage}"
                    ),
                    None => {
                        for src in srcs {
                            let path = repo().join(src);
                            if !path.exists() && *src == "routes.yaml" {
                                // The repository's default routes.yaml comes with the backend
                                // issue; until it lands the image has nothing to bake in.
                                eprintln!("NOTE Dockerfile: {src} is not in the repository yet");
                                continue;
                            }
                            assert!(
                                path.exists(),
                                "{line}: {src} does not exist in the build context"
                            );
                            assert!(
                                !dockerignored(src),
                                "{line}: {src} is excluded by .dockerignore"
                            );
                        }
                    }
                }
            }
            "EXPOSE" => exposed.extend(
                words
                    .iter()
                    .map(|p| p.trim_end_matches("/tcp").parse::<u16>().unwrap()),
            ),
            "USER" => user = Some(words[0].to_string()),
            "CMD" | "ENTRYPOINT" if line.contains("\"-c\"") => {
                let cfg = line
                    .split("\"-c\",")
                    .nth(1)
                    .unwrap()
                    .trim()
                    .split('"')
                    .nth(1)
                    .unwrap();
                assert!(
                    copied_to.contains(cfg),
                    "{line}: {cfg} is not put there by a COPY"
                );
            }
            _ => {}
        }
    }
    assert_eq!(
        exposed,
        BTreeSet::from([DEFAULT_DIALOG_PORT, DEFAULT_ADMIN_PORT])
    );
    let user = user.expect("the runtime stage sets USER");
    assert!(
        !["root", "0", "0:0"].contains(&user.as_str()),
        "runs as {user}"
    );
    assert!(
        df.contains("FROM rust:1-bookworm AS build"),
        "multi-stage build from rust:1-bookworm"
    );
}

/// Does the repository's .dockerignore exclude this path (plain names and `dir/…` only)?
fn dockerignored(src: &str) -> bool {
    if src == "." {
        return false;
    }
    read(".dockerignore")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .any(|p| src == p || src.starts_with(&format!("{p}/")))
}

#[test]
fn dockerignore_keeps_the_build_inputs() {
    for needed in [
        "Cargo.toml",
        "Cargo.lock",
        "src",
        "routes.yaml",
        "tests",
        "benches",
    ] {
        assert!(!dockerignored(needed), ".dockerignore excludes {needed}");
    }
    for heavy in ["target", ".git"] {
        assert!(dockerignored(heavy), ".dockerignore should exclude {heavy}");
    }
}

// === routes.yaml files: examples/ and the ConfigMaps ===

/// Every routes.yaml an operator is shown: the examples and the Kubernetes ConfigMaps.
fn routes_files() -> Vec<String> {
    let mut files: Vec<String> = std::fs::read_dir(repo().join("examples"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".yaml"))
        .map(|n| format!("examples/{n}"))
        .collect();
    files.sort();
    files.extend([
        "deploy/k8s/base/routes.yaml".to_string(),
        "deploy/k8s/overlays/redis/routes.yaml".to_string(),
    ]);
    files
}

/// A structural lint of spec §2, standing in for `graygate check` and the JSON Schema until the
/// gateway's own check can run here: known keys only, value shapes, cross-references.
fn lint_routes(file: &str, doc: &Yaml) -> Vec<String> {
    fn known(errs: &mut Vec<String>, file: &str, v: &Yaml, at: &str, allowed: &[&str]) {
        match v.as_mapping() {
            Some(m) => {
                for k in m.keys() {
                    let k = k.as_str().unwrap_or("?");
                    if !allowed.contains(&k) {
                        errs.push(format!("{file}: {at}{k}: unknown key"));
                    }
                }
            }
            None => errs.push(format!("{file}: {at}: not a mapping")),
        }
    }
    let mut errs = Vec::new();
    macro_rules! keys {
        ($v:expr, $at:expr, $allowed:expr) => {
            known(&mut errs, file, $v, $at, $allowed)
        };
    }
    keys!(
        doc,
        "",
        &[
            "listen",
            "tls",
            "admin",
            "admin_token_file",
            "decision_header",
            "listen_proxy_protocol",
            "tracing",
            "limits",
            "pins",
            "clusters",
            "rules",
            "default"
        ]
    );
    if let Some(l) = doc.get("limits") {
        keys!(
            l,
            "limits.",
            &[
                "max_body",
                "header_read_timeout",
                "request_timeout",
                "max_connections"
            ]
        );
    }
    if let Some(p) = doc.get("pins") {
        keys!(
            p,
            "pins.",
            &[
                "store",
                "idle_ttl",
                "end_grace",
                "orphan_turns",
                "snapshot",
                "redis"
            ]
        );
        if let Some(r) = p.get("redis") {
            keys!(r, "pins.redis.", &["key_prefix", "timeout"]);
        }
    }
    let mut durations = Vec::new();
    for path in [
        "limits.header_read_timeout",
        "limits.request_timeout",
        "pins.idle_ttl",
        "pins.end_grace",
        "pins.redis.timeout",
    ] {
        let mut cur = Some(doc);
        for k in path.split('.') {
            cur = cur.and_then(|c| c.get(k));
        }
        if let Some(v) = cur {
            durations.push((path.to_string(), v.clone()));
        }
    }
    let clusters = doc
        .get("clusters")
        .and_then(|c| c.as_mapping())
        .cloned()
        .unwrap_or_default();
    if clusters.is_empty() {
        errs.push(format!("{file}: clusters: none"));
    }
    let names: BTreeSet<String> = clusters
        .keys()
        .map(|k| k.as_str().unwrap().to_string())
        .collect();
    for (name, c) in &clusters {
        let name = name.as_str().unwrap();
        let at = format!("clusters.{name}.");
        keys!(
            c,
            &at,
            &[
                "endpoints",
                "embedded",
                "balance",
                "timeout",
                "connect_timeout",
                "max_inflight",
                "health",
                "outlier",
                "fallback",
                "tls",
                "drain"
            ]
        );
        match (c.get("endpoints"), c.get("embedded")) {
            (Some(eps), None) => {
                for e in eps.as_sequence().into_iter().flatten() {
                    let e = e.as_str().unwrap_or("");
                    if !(e.starts_with("http://") || e.starts_with("https://")) {
                        errs.push(format!(
                            "{file}: {at}endpoints: {e:?} is not an http(s) URL"
                        ));
                    }
                }
            }
            (None, Some(_)) => {}
            _ => errs.push(format!("{file}: {at}: needs endpoints or embedded")),
        }
        if let Some(h) = c.get("health") {
            keys!(
                h,
                &format!("{at}health."),
                &[
                    "interval",
                    "timeout",
                    "path",
                    "unhealthy_after",
                    "healthy_after"
                ]
            );
        }
        if let Some(o) = c.get("outlier") {
            keys!(
                o,
                &format!("{at}outlier."),
                &["consecutive_failures", "eject_for", "max_ejected"]
            );
        }
        if let Some(b) = c.get("balance").and_then(|b| b.as_str()) {
            if !["round_robin", "least_request", "userid_hash"].contains(&b) {
                errs.push(format!("{file}: {at}balance: {b}"));
            }
        }
        if let Some(f) = c.get("fallback").and_then(|f| f.as_str()) {
            if !names.contains(f) || f == name {
                errs.push(format!("{file}: {at}fallback: {f} is not another cluster"));
            }
        }
        for k in ["timeout", "connect_timeout"] {
            if let Some(v) = c.get(k) {
                durations.push((format!("{at}{k}"), v.clone()));
            }
        }
    }
    let duration = regex::Regex::new(r"^[0-9]+(ms|s|m|h)$").unwrap();
    for (at, v) in durations {
        if !v.as_str().is_some_and(|d| duration.is_match(d)) {
            errs.push(format!("{file}: {at}: {v:?} is not a duration like 30s"));
        }
    }
    let mut rule_names = BTreeSet::new();
    for (i, r) in doc
        .get("rules")
        .and_then(|r| r.as_sequence())
        .into_iter()
        .flatten()
        .enumerate()
    {
        let at = format!("rules[{i}].");
        keys!(
            r,
            &at,
            &["name", "vdn", "userid", "fields", "headers", "cluster", "split", "rollout", "salt"]
        );
        match r.get("name").and_then(|n| n.as_str()) {
            Some(n) if rule_names.insert(n.to_string()) => {}
            Some(n) => errs.push(format!("{file}: {at}name: {n} is not unique")),
            None => errs.push(format!("{file}: {at}name: missing")),
        }
        if let Some(u) = r.get("userid") {
            keys!(
                u,
                &format!("{at}userid."),
                &["exact", "prefix", "suffix", "regex"]
            );
            if let Some(re) = u.get("regex").and_then(|r| r.as_str()) {
                if regex::Regex::new(re).is_err() {
                    errs.push(format!("{file}: {at}userid.regex: does not compile"));
                }
            }
        }
        for spec in r
            .get("vdn")
            .and_then(|v| v.as_sequence())
            .into_iter()
            .flatten()
        {
            let ok = match spec {
                Yaml::Number(n) => n.as_u64().is_some(),
                Yaml::String(s) => s
                    .split_once('-')
                    .and_then(|(a, b)| Some((a.parse::<u32>().ok()?, b.parse::<u32>().ok()?)))
                    .is_some_and(|(a, b)| a <= b),
                _ => false,
            };
            if !ok {
                errs.push(format!("{file}: {at}vdn: {spec:?}"));
            }
        }
        let targets: Vec<String> = match (r.get("cluster"), r.get("split"), r.get("rollout")) {
            (Some(c), None, None) => vec![c.as_str().unwrap_or("").to_string()],
            (None, None, Some(ro)) => {
                keys!(
                    ro,
                    &format!("{at}rollout."),
                    &[
                        "from",
                        "to",
                        "steps",
                        "step_min",
                        "min_calls",
                        "advance",
                        "confidence",
                        "abort_when"
                    ]
                );
                ["from", "to"]
                    .iter()
                    .map(|k| {
                        ro.get(*k)
                            .and_then(|c| c.as_str())
                            .unwrap_or("")
                            .to_string()
                    })
                    .collect()
            }
            (None, Some(split), None) => split
                .as_mapping()
                .into_iter()
                .flatten()
                .map(|(k, w)| {
                    if !w.as_f64().is_some_and(|w| w > 0.0) {
                        errs.push(format!("{file}: {at}split: weight {w:?} is not positive"));
                    }
                    k.as_str().unwrap_or("").to_string()
                })
                .collect(),
            _ => {
                errs.push(format!(
                    "{file}: {at}: needs exactly one of cluster, split and rollout"
                ));
                vec![]
            }
        };
        for t in targets {
            if !names.contains(&t) {
                errs.push(format!("{file}: {at}: cluster {t} does not exist"));
            }
        }
    }
    match doc.get("default").and_then(|d| d.as_str()) {
        Some(d) if names.contains(d) => {}
        d => errs.push(format!("{file}: default: {d:?} is not a cluster")),
    }
    errs
}

#[test]
fn routes_files_follow_spec() {
    let files = routes_files();
    assert!(files.len() >= 9, "{files:?}");
    let errs: Vec<String> = files
        .iter()
        .flat_map(|f| lint_routes(f, &yaml(f)))
        .collect();
    assert!(errs.is_empty(), "{}", errs.join("\n"));
}

#[test]
fn routes_lint_catches_mistakes() {
    // The lint above must not be a no-op: each of these is one mistake of spec §2.
    let base =
        "clusters: { a: { endpoints: [http://h:1] }, b: { embedded: { label: b } } }\ndefault: a\n";
    assert!(lint_routes("ok", &serde_yaml::from_str(base).unwrap()).is_empty());
    for bad in [
        "clusters: { a: { endpoints: [http://h:1] } }\ndefault: b\n",
        "clusters: { a: { endpoints: [ftp://h:1] } }\ndefault: a\n",
        "clusters: { a: {} }\ndefault: a\n",
        "clusters: { a: { endpoints: [http://h:1], timeout: 10 } }\ndefault: a\n",
        "clusters: { a: { endpoints: [http://h:1] } }\nrules: [{ name: r, cluster: a, split: { a: 1 } }]\ndefault: a\n",
        "clusters: { a: { endpoints: [http://h:1] } }\nrules: [{ cluster: a }]\ndefault: a\n",
        "clusters: { a: { endpoints: [http://h:1] } }\nrules: [{ name: r, split: { a: 0 } }]\ndefault: a\n",
        "clusters: { a: { endpoints: [http://h:1] } }\nrules: [{ name: r, vdn: [300-200], cluster: a }]\ndefault: a\n",
        "clusters: { a: { endpoints: [http://h:1] } }\ndefault: a\nlisten_typo: 0.0.0.0:1\n",
    ] {
        assert!(!lint_routes("bad", &serde_yaml::from_str(bad).unwrap()).is_empty(), "accepted: {bad}");
    }
}

#[test]
fn ramp_examples_ramp() {
    let mut salts = BTreeSet::new();
    for (file, canary) in [
        ("examples/ramp-001.yaml", 1.0),
        ("examples/ramp-010.yaml", 10.0),
        ("examples/ramp-050.yaml", 50.0),
    ] {
        let doc = yaml(file);
        let rule = get(&doc, "rules.0");
        let w = |c: &str| get(rule, &format!("split.{c}")).as_f64().unwrap();
        assert_eq!(
            w("canary") / (w("canary") + w("stable")) * 100.0,
            canary,
            "{file}"
        );
        salts.insert(s(rule, "salt").to_string());
    }
    assert_eq!(salts.len(), 1, "the ramp must keep one salt: {salts:?}");
    assert_eq!(s(&yaml("examples/ramp-100.yaml"), "default"), "canary");
    // Drain keeps the old cluster (its pins finish there), retire removes it.
    let drain = yaml("examples/drain-then-retire-1.yaml");
    assert_eq!(get(&drain, "clusters.stable.drain").as_bool(), Some(true));
    assert!(yaml("examples/drain-then-retire-2.yaml")["clusters"]
        .get("stable")
        .is_none());
}

// === docs/operations.md ===

#[test]
fn operations_runbook_covers_the_rollout() {
    let doc = read("docs/operations.md");
    for needed in [
        "graygate check",
        "graygate diff",
        "POST /admin/reload",
        "SIGHUP",
        "drain: true",
        "pins.snapshot",
        "redis://",
        "preStop",
        "/readyz",
        "100 bytes",
        "deploy/grafana/graygate.json",
    ] {
        assert!(
            doc.contains(needed),
            "docs/operations.md does not mention {needed:?}"
        );
    }
    for heading in ["abort", "drain", "retire", "upgrading graygate", "sizing"] {
        assert!(
            doc.lines()
                .any(|l| l.starts_with('#') && l.to_lowercase().contains(heading)),
            "docs/operations.md has no section about {heading}"
        );
    }
}

#[test]
fn install_script_is_valid_bash() {
    let script = repo().join("scripts/install-test-deps.sh");
    assert!(script.exists());
    let out = run("bash", &["-n", script.to_str().unwrap()], &repo());
    assert_ok("bash -n scripts/install-test-deps.sh", &out);
}

// === Checks against the real gateway ===

/// Every routes.yaml an operator is handed: the repo's default, every example and both
/// ConfigMaps.
fn shipped_routes_files() -> Vec<PathBuf> {
    let mut v = vec![
        repo().join("routes.yaml"),
        repo().join("deploy/k8s/base/routes.yaml"),
        repo().join("deploy/k8s/overlays/redis/routes.yaml"),
    ];
    for e in std::fs::read_dir(repo().join("examples")).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "yaml") {
            v.push(p);
        }
    }
    v
}

#[test]
fn shipped_routes_files_pass_graygate_check() {
    for p in shipped_routes_files() {
        let out = Command::new(env!("CARGO_BIN_EXE_graygate"))
            .args(["check", "-c"])
            .arg(&p)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "{}: {text}", p.display());
        // admin_token_file in the ConfigMaps points at a Secret mount that exists only in a
        // pod: off-cluster it is a note, as the files' headers promise.
        if std::fs::read_to_string(&p)
            .unwrap()
            .contains("\nadmin_token_file: /var/run/")
        {
            assert!(
                text.contains("note: admin_token_file:"),
                "{}: {text}",
                p.display()
            );
        }
    }
}

#[test]
fn shipped_routes_files_validate_against_the_schema_and_it_rejects_unknown_keys() {
    if !have_tool("schema", "python3", &["-c", "import jsonschema, yaml"]) {
        return;
    }
    let script = r#"
import json, sys, yaml, jsonschema
schema = json.load(open(sys.argv[1]))
bad = 0
for f in sys.argv[2:]:
    doc = yaml.safe_load(open(f))
    errs = list(jsonschema.Draft7Validator(schema).iter_errors(doc))
    for e in errs:
        print(f"{f}: {e.message}")
    bad += len(errs)
wrong = {"clusters": {"a": {"endpoints": ["http://x:1"], "timeuot": "5s"}}, "default": "a"}
if not list(jsonschema.Draft7Validator(schema).iter_errors(wrong)):
    print("schema accepted an unknown key"); bad += 1
sys.exit(1 if bad else 0)
"#;
    let mut args: Vec<String> = vec![
        "-c".into(),
        script.into(),
        repo().join("docs/routes.schema.json").display().to_string(),
    ];
    args.extend(
        shipped_routes_files()
            .iter()
            .map(|p| p.display().to_string()),
    );
    let out = Command::new("python3").args(&args).output().unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_name_used_appears_in_a_live_gateway() {
    use crate::support::*;
    let (stable, canary) = (
        Upstream::start("stable").await,
        Upstream::start("canary").await,
    );
    let gw = Gateway::start(&two_clusters(&stable, &canary, "    fallback: stable\nrules:\n  - { name: t, vdn: [101], cluster: canary }\n  - { name: r, vdn: [102], rollout: { from: stable, to: canary, steps: [5, 100] } }\ndefault: stable\n")).await;
    let c = Client::new();
    for k in 0..5 {
        c.turn(&gw, Some(101), &format!("live-{k}"), 8, None).await;
        c.turn(&gw, Some(101), &format!("live-{k}"), 9, Some("hangup"))
            .await;
    }
    let text = c.get_text(&gw.admin_url("/metrics")).await;
    for name in used_metric_names() {
        assert!(
            text.contains(&format!("\n{name}"))
                || text.contains(&format!("\n{name}_bucket"))
                || text.contains(&format!("\n{name}{{")),
            "{name} is used by a dashboard or rule but not exported"
        );
    }
}
