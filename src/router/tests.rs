//! Table-driven router tests over compiled configs.

use http::HeaderMap;

use crate::probe::{scan, Dialog};
use crate::router::{decide, RuleRef};

fn routing(yaml: &str) -> crate::snapshot::Snapshot {
    crate::config::load_str(yaml, "t.yaml", std::path::Path::new("t.yaml")).unwrap()
}

const BASE: &str = "
clusters:
  stable: { endpoints: [http://127.0.0.1:1] }
  canary: { endpoints: [http://127.0.0.1:2] }
  other:  { endpoints: [http://127.0.0.1:3] }
rules:
  - name: tenants
    vdn: [101, 200-299]
    cluster: canary
  - name: testers
    userid: { exact: [u-exact], prefix: [test-], suffix: [-qa], regex: '^re[0-9]+$' }
    cluster: other
  - name: web
    fields: { inparams.channelType: [WEB] }
    headers: { x-gray: [canary] }
    cluster: canary
default: stable
";

fn pick(
    s: &crate::snapshot::Snapshot,
    body: &str,
    dialog: Dialog,
    headers: &[(&str, &str)],
) -> (String, String) {
    let t = scan(body.as_bytes(), dialog, &s.probe).unwrap();
    let mut h = HeaderMap::new();
    for (k, v) in headers {
        h.insert(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    let d = decide(&t, &h, &s.routing);
    (
        s.routing.rule_name(d.rule).to_string(),
        s.routing.cluster_name(d.cluster).to_string(),
    )
}

#[test]
fn each_condition_and_first_match() {
    let s = routing(BASE);
    let b = |u: &str| format!(r#"{{"userid":"{u}","inaction":8}}"#);
    assert_eq!(
        pick(&s, &b("x"), Dialog::V2(101), &[]),
        ("tenants".into(), "canary".into())
    );
    assert_eq!(
        pick(&s, &b("x"), Dialog::V2(250), &[]),
        ("tenants".into(), "canary".into())
    );
    assert_eq!(
        pick(&s, &b("x"), Dialog::V2(300), &[]),
        ("default".into(), "stable".into())
    );
    // first match wins: a tester on a canary vdn is still "tenants"
    assert_eq!(
        pick(&s, &b("test-1"), Dialog::V2(101), &[]),
        ("tenants".into(), "canary".into())
    );
    for u in ["u-exact", "test-1", "a-qa", "re42"] {
        assert_eq!(
            pick(&s, &b(u), Dialog::V2(7), &[]),
            ("testers".into(), "other".into()),
            "{u}"
        );
    }
    assert_eq!(pick(&s, &b("re4x"), Dialog::V2(7), &[]).0, "default");
    let web = r#"{"userid":"w","inaction":8,"inparams":{"channelType":"WEB"}}"#;
    assert_eq!(
        pick(&s, web, Dialog::V2(7), &[("x-gray", "canary")]),
        ("web".into(), "canary".into())
    );
    assert_eq!(
        pick(&s, web, Dialog::V2(7), &[]).0,
        "default",
        "all conditions must hold"
    );
    assert_eq!(
        pick(&s, web, Dialog::V2(7), &[("x-gray", "other")]).0,
        "default"
    );
}

#[test]
fn v1_skips_vdn_rules() {
    let s = routing(BASE);
    assert_eq!(
        pick(&s, r#"{"userid":"x","inaction":8}"#, Dialog::V1, &[]),
        ("default".into(), "stable".into())
    );
    assert_eq!(
        pick(&s, r#"{"userid":"test-9","inaction":8}"#, Dialog::V1, &[]).0,
        "testers"
    );
}

#[test]
fn draining_cluster_gets_no_new_calls() {
    let y = BASE.replace(
        "canary: { endpoints: [http://127.0.0.1:2] }",
        "canary: { endpoints: [http://127.0.0.1:2], drain: true }",
    );
    let s = routing(&y);
    assert_eq!(
        pick(&s, r#"{"userid":"x","inaction":8}"#, Dialog::V2(101), &[]),
        ("default".into(), "stable".into())
    );
}

#[test]
fn vdn_index_keeps_file_order() {
    let mut y = String::from("clusters:\n  a: { endpoints: [http://127.0.0.1:1] }\n  b: { endpoints: [http://127.0.0.1:2] }\nrules:\n");
    for i in 0..2000 {
        y.push_str(&format!(
            "  - {{ name: r{i}, vdn: [{}], cluster: {} }}\n",
            1000 + i,
            if i % 2 == 0 { "a" } else { "b" }
        ));
    }
    y.push_str("  - { name: wide, vdn: [0-100000], cluster: b }\n  - { name: any, userid: { prefix: [z] }, cluster: a }\ndefault: a\n");
    let s = routing(&y);
    let body = r#"{"userid":"zz","inaction":8}"#;
    assert_eq!(pick(&s, body, Dialog::V2(1000), &[]).0, "r0");
    assert_eq!(pick(&s, body, Dialog::V2(1001), &[]).0, "r1");
    assert_eq!(pick(&s, body, Dialog::V2(5), &[]).0, "wide");
    assert_eq!(pick(&s, body, Dialog::V2(200000), &[]).0, "any");
    let t = scan(body.as_bytes(), Dialog::V2(2999), &s.probe).unwrap();
    assert_eq!(
        decide(&t, &HeaderMap::new(), &s.routing).rule,
        RuleRef::Rule(1999)
    );
}
