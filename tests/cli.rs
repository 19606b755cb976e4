//! The command line: `check`, `explain`, `diff`, `schema` run as the real binary.

use std::path::Path;
use std::process::Command;

fn graygate(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_graygate"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_accepts_the_repo_routes_and_good_fixtures() {
    for f in ["routes.yaml", "tests/fixtures/routes/good/full.yaml"] {
        let (code, out, err) = graygate(&["check", "-c", f]);
        assert_eq!(code, 0, "{f}: {out}{err}");
        assert!(
            out.contains(": ok") && out.contains("cluster(s)") && out.contains("default:"),
            "{out}"
        );
    }
}

#[test]
fn check_reports_every_error_with_file_line_column() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/routes/bad");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "yaml") {
            continue;
        }
        let rel = format!(
            "tests/fixtures/routes/bad/{}",
            path.file_name().unwrap().to_string_lossy()
        );
        let expected = std::fs::read_to_string(path.with_extension("expected")).unwrap();
        let (code, out, _) = graygate(&["check", "-c", &rel]);
        assert_eq!(code, 1, "{rel} must fail");
        assert_eq!(out, expected, "{rel}");
        for line in out.lines() {
            let mut parts = line.splitn(4, ':');
            assert_eq!(parts.next(), Some(rel.as_str()));
            assert!(parts.next().unwrap().parse::<usize>().unwrap() >= 1);
            assert!(parts.next().unwrap().parse::<usize>().unwrap() >= 1);
        }
        n += 1;
    }
    assert!(n >= 8);
}

#[test]
fn check_of_a_missing_file_fails() {
    let (code, out, _) = graygate(&["check", "-c", "no/such/routes.yaml"]);
    assert_eq!(code, 1);
    assert!(out.contains("cannot read the file"));
}

#[test]
fn explain_names_rule_and_cluster() {
    let f = "tests/fixtures/routes/good/full.yaml";
    let (code, out, _) = graygate(&[
        "explain", "-c", f, "--vdn", "250", "--userid", "x", "--json",
    ]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (v["rule"].as_str(), v["cluster"].as_str()),
        (Some("canary-tenants"), Some("canary"))
    );
    // V1: vdn rules never match; a tester prefix does.
    let (_, out, _) = graygate(&["explain", "-c", f, "--userid", "test-1", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (v["rule"].as_str(), v["cluster"].as_str()),
        (Some("testers"), Some("canary"))
    );
    // fields and headers
    let (_, out, _) = graygate(&[
        "explain",
        "-c",
        f,
        "--vdn",
        "7",
        "--userid",
        "w",
        "--field",
        "inparams.channelType=WEB",
        "--header",
        "x-gray=canary",
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["rule"], "channel-web");
    let (_, out, _) = graygate(&[
        "explain",
        "-c",
        f,
        "--vdn",
        "7",
        "--userid",
        "w",
        "--field",
        "inparams.channelType=WEB",
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        v["rule"], "one-in-ten",
        "headers missing: falls through to the split"
    );
    assert!(v["why"].as_str().unwrap().contains("rendezvous"));
    let (code, out, _) = graygate(&["explain", "-c", f, "--vdn", "7", "--userid", "w"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("rule:"), "{out}");
}

fn ramp(dir: &Path, name: &str, canary: u32) -> String {
    let p = dir.join(name);
    std::fs::write(
        &p,
        format!(
            "clusters:\n  stable: {{ endpoints: [http://127.0.0.1:1] }}\n  canary: {{ endpoints: [http://127.0.0.1:2] }}\nrules:\n  - name: tenant\n    vdn: [101]\n    cluster: canary\n  - name: ramp\n    split: {{ canary: {canary}, stable: {} }}\ndefault: stable\n",
            100 - canary
        ),
    )
    .unwrap();
    p.display().to_string()
}

#[test]
fn diff_reports_the_moved_share_per_rule() {
    let dir = tempfile::tempdir().unwrap();
    let (old, new) = (
        ramp(dir.path(), "old.yaml", 10),
        ramp(dir.path(), "new.yaml", 50),
    );
    let (code, out, err) = graygate(&["diff", &old, &new, "--sample", "20000", "--json"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let rules = v["rules"].as_array().unwrap();
    let r = rules.iter().find(|r| r["rule"] == "ramp").unwrap();
    let to_canary = r["flows"]["stable -> canary"].as_f64().unwrap();
    assert!((to_canary - 0.40).abs() < 0.02, "{to_canary}");
    assert!(
        r["flows"].get("canary -> stable").is_none(),
        "nothing moves back to stable"
    );
    let t = rules.iter().find(|r| r["rule"] == "tenant").unwrap();
    assert_eq!(t["moved"], 0.0);
    // The human form says the same.
    let (_, out, _) = graygate(&["diff", &old, &new, "--sample", "2000"]);
    assert!(
        out.contains("ramp") && out.contains("stable -> canary"),
        "{out}"
    );
}

#[test]
fn schema_is_generated_and_rejects_unknown_keys() {
    let (code, out, _) = graygate(&["schema"]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["additionalProperties"], false);
    assert!(v["properties"]["clusters"].is_object());
    assert!(v["required"]
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r == "default"));
    let committed = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/routes.schema.json"),
    )
    .unwrap();
    assert_eq!(
        committed.trim(),
        out.trim(),
        "docs/routes.schema.json is stale: run `graygate schema > docs/routes.schema.json`"
    );
}

/// A file against itself: no change, nobody moves (issue 13, acceptance).
#[test]
fn diff_of_a_file_against_itself_reports_no_change() {
    let f = "examples/progressive-rollout.yaml";
    let (code, out, err) = graygate(&["diff", f, f, "--sample", "5000", "--json"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    for (k, list) in v["changes"].as_object().unwrap() {
        assert_eq!(list.as_array().map(Vec::len), Some(0), "{f}: {k}: {list}");
    }
    let f = "tests/fixtures/routes/good/full.yaml";
    let (code, out, err) = graygate(&["diff", f, f, "--sample", "5000", "--json"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    for (k, list) in v["changes"].as_object().unwrap() {
        assert_eq!(list.as_array().map(Vec::len), Some(0), "{k}: {list}");
    }
    for m in v["rules"].as_array().unwrap() {
        assert_eq!(m["moved"], 0.0, "{m}");
    }
    let (_, out, _) = graygate(&["diff", f, f, "--sample", "1000"]);
    assert!(out.starts_with("changes: no change\n"), "{out}");
}

/// `diff` names the rule and the cluster that changed, and samples rules with `fields`,
/// `headers` and userid conditions (they used to get no samples at all).
#[test]
fn diff_names_what_changed_and_samples_every_kind_of_rule() {
    let dir = tempfile::tempdir().unwrap();
    let old = std::fs::read_to_string("tests/fixtures/routes/good/full.yaml").unwrap();
    let new = old
        .replace(
            "    fields: { inparams.channelType: [WEB] }\n    headers: { x-gray: [canary] }\n    cluster: canary",
            "    fields: { inparams.channelType: [WEB] }\n    headers: { x-gray: [canary] }\n    cluster: stable",
        )
        .replace("prefix: [test-]", "prefix: [qa-]")
        .replace("    endpoints: [http://10.0.0.21:8080]", "    endpoints: [http://10.0.0.22:8080]");
    assert_ne!(old, new);
    let (a, b) = (dir.path().join("old.yaml"), dir.path().join("new.yaml"));
    std::fs::write(&a, &old).unwrap();
    std::fs::write(&b, &new).unwrap();
    let (code, out, err) = graygate(&[
        "diff",
        a.to_str().unwrap(),
        b.to_str().unwrap(),
        "--sample",
        "20000",
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let ch = &v["changes"];
    assert_eq!(
        ch["rules_changed"],
        serde_json::json!(["testers", "channel-web"]),
        "{ch}"
    );
    assert_eq!(
        ch["clusters_changed"],
        serde_json::json!(["canary"]),
        "{ch}"
    );
    assert_eq!(ch["rules_added"], serde_json::json!([]), "{ch}");
    assert_eq!(ch["settings_changed"], serde_json::json!([]), "{ch}");
    let rule = |name: &str| {
        v["rules"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["rule"] == name)
            .unwrap_or_else(|| panic!("{name} has no samples: {v}"))
            .clone()
    };
    // The header-and-field rule is sampled, and all of its calls now go to stable.
    let web = rule("channel-web");
    assert!(web["samples"].as_u64().unwrap() > 100, "{web}");
    assert_eq!(web["moved"], 1.0, "{web}");
    assert_eq!(web["flows"]["canary -> stable"], 1.0, "{web}");
    // The prefix rule is sampled; `test-…` userids no longer match it and go to the split,
    // which sends most of them to stable.
    let testers = rule("testers");
    assert!(testers["samples"].as_u64().unwrap() > 100, "{testers}");
    assert!(testers["moved"].as_f64().unwrap() > 0.8, "{testers}");
    let (_, out, _) = graygate(&[
        "diff",
        a.to_str().unwrap(),
        b.to_str().unwrap(),
        "--sample",
        "2000",
    ]);
    assert!(
        out.starts_with("changes: clusters changed: canary; rules changed: testers, channel-web\n"),
        "{out}"
    );
}

/// A file deployed with a Secret's token (deploy/k8s): `check` off-cluster notes the missing
/// file and passes; a file that is there but empty is still an error.
#[test]
fn check_notes_a_named_file_that_is_not_on_this_machine() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("routes.yaml");
    let yaml = "admin_token_file: /nonexistent/graygate-admin/token\nclusters:\n  stable: { endpoints: [http://127.0.0.1:1] }\ndefault: stable\n";
    std::fs::write(&p, yaml).unwrap();
    let (code, out, err) = graygate(&["check", "-c", p.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(": ok"), "{out}");
    assert!(
        err.contains(":1:1: note: admin_token_file: `/nonexistent/graygate-admin/token` is not on this machine"),
        "{err}"
    );
    std::fs::write(dir.path().join("token"), "  \n").unwrap();
    std::fs::write(
        &p,
        yaml.replace("/nonexistent/graygate-admin/token", "token"),
    )
    .unwrap();
    let (code, out, _) = graygate(&["check", "-c", p.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("is empty"), "{out}");
}
