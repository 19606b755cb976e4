//! Flow files: bad ones rejected with line:column (fixtures beside their `.expected`), good ones used.

use super::*;

#[test]
fn bad_flow_files_are_rejected_with_line_and_column() {
    let dir = Path::new("tests/fixtures/flows/bad");
    let mut seen = 0;
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
    {
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        let expected = std::fs::read_to_string(path.with_extension("expected")).unwrap();
        let err = Backend::new(BackendOptions {
            flows: Some(path.clone()),
            ..BackendOptions::default()
        })
        .err()
        .unwrap_or_else(|| panic!("{name} was accepted"));
        let got = err
            .to_string()
            .replace(&format!("{}:", path.display()), &format!("{name}:"));
        assert_eq!(got.trim(), expected.trim(), "{name}");
        seen += 1;
    }
    assert!(seen >= 5, "fixtures found: {seen}");
}

#[tokio::test]
async fn flows_are_chosen_by_access_code() {
    let flows = Some(PathBuf::from("tests/fixtures/flows/good/two_flows.yaml"));
    let odfs = Odfs::start(BackendOptions { flows, ..demo("f") }).await;
    let url = odfs.url(0, "/oifde/rest/crs/process");
    let start = |userid: &str, dst: &str| json!({ "userid": userid, "inaction": 8, "inparams": { "call_dst_id": dst, "call_sor_id": "555" } });
    let r = post(&url, start("sales-1", "200")).await.ok();
    assert_eq!(
        r.param("prompt_text"),
        "Hello 555, connecting you to sales."
    );
    let r = post(&url, start("other-1", "12345")).await.ok();
    assert_eq!(
        (r.param("prompt_type"), r.param("prompt_wav")),
        ("0", "/prompts/closed.wav")
    );
}

#[test]
fn the_docs_show_the_demo_flow_as_built() {
    let docs = std::fs::read_to_string("docs/flows.md").unwrap();
    assert!(
        docs.contains(graygate::backend::flow::DEMO_YAML),
        "docs/flows.md is out of date with demo.yaml"
    );
}
