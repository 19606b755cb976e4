//! `graygate call` run as a process against an in-process backend.

use super::*;

async fn run_call(args: Vec<String>) -> (i32, String) {
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_graygate"))
            .args(args)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), text)
}

#[tokio::test]
async fn graygate_call_completes_a_call() {
    let odfs = Odfs::start(demo("canary")).await;
    let url = odfs.url(0, "");
    let args = [
        "call", "--url", &url, "--vdn", "101", "--input", "1", "--input", "2",
    ];
    let (code, out) = run_call(args.iter().map(|s| s.to_string()).collect()).await;
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("turn 1  inaction 8 -> outaction 9  [instance canary]  Welcome"),
        "{out}"
    );
    assert!(out.contains("inaction 9 -> outaction 12"), "{out}");
    assert!(out.contains("inaction 11 -> outaction 10"), "{out}");
    assert_eq!(odfs.backend.active_calls(), 0, "{out}");
}

#[tokio::test]
async fn graygate_call_fails_on_a_refused_turn() {
    let dir = tempfile::tempdir().unwrap();
    let odfs = Odfs::start(BackendOptions {
        tenants: Some(tenants_file(dir.path())),
        ..demo("t")
    })
    .await;
    let url = odfs.url(0, "");
    let args = [
        "call",
        "--url",
        &url,
        "--app-key",
        "tenant001",
        "--app-secret",
        "wrong",
    ];
    let (code, out) = run_call(args.iter().map(|s| s.to_string()).collect()).await;
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("HTTP 401"), "{out}");
    let args = [
        "call",
        "--url",
        &url,
        "--app-key",
        "tenant001",
        "--app-secret",
        "s3cret-one",
        "--input",
        "9",
    ];
    let (code, out) = run_call(args.iter().map(|s| s.to_string()).collect()).await;
    assert_eq!(code, 0, "{out}");
}
