//! TLS everywhere (spec §10): https upstreams with a test CA (made at run time, never
//! committed), a wrong CA, `server_name`, client certificates to the upstream, HTTP/2 by ALPN,
//! and the dialog listener with `client_ca`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::{TcpListener, TcpStream};

use crate::support::*;

/// A CA that signs server and client certificates; PEM files in a temp dir.
struct Pki {
    dir: tempfile::TempDir,
    ca_cert: rcgen::Certificate,
    ca_key: KeyPair,
}

/// A certificate and its key, as files and as rustls values.
struct Issued {
    cert_file: PathBuf,
    key_file: PathBuf,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl Pki {
    fn new(name: &str) -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("{name} test CA"));
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_key = KeyPair::generate().unwrap();
        let ca_cert = params.self_signed(&ca_key).unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca_cert.pem()).unwrap();
        Pki {
            dir,
            ca_cert,
            ca_key,
        }
    }

    fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    fn ca_der(&self) -> CertificateDer<'static> {
        self.ca_cert.der().clone()
    }

    fn issue(&self, file: &str, names: &[&str], client: bool) -> Issued {
        let mut params =
            CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.distinguished_name.push(
            rcgen::DnType::CommonName,
            names.first().copied().unwrap_or(file),
        );
        params.extended_key_usages = vec![if client {
            ExtendedKeyUsagePurpose::ClientAuth
        } else {
            ExtendedKeyUsagePurpose::ServerAuth
        }];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ca_cert, &self.ca_key).unwrap();
        let cert_file = self.dir.path().join(format!("{file}.pem"));
        let key_file = self.dir.path().join(format!("{file}-key.pem"));
        std::fs::write(&cert_file, cert.pem()).unwrap();
        std::fs::write(&key_file, key.serialize_pem()).unwrap();
        Issued {
            cert_file,
            key_file,
            chain: vec![cert.der().clone()],
            key: PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
        }
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn roots(ca: CertificateDer<'static>) -> Arc<rustls::RootCertStore> {
    let mut r = rustls::RootCertStore::empty();
    r.add(ca).unwrap();
    Arc::new(r)
}

/// An https ODFS stand-in: answers dialog turns with `x-upstream` and `x-version` (the HTTP
/// version the gateway used). `client_ca`: require a client certificate signed by it.
async fn tls_upstream(
    label: &'static str,
    server: &Issued,
    client_ca: Option<CertificateDer<'static>>,
    alpn: &[&[u8]],
) -> SocketAddr {
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = match client_ca {
        Some(ca) => builder.with_client_cert_verifier(
            rustls::server::WebPkiClientVerifier::builder_with_provider(roots(ca), provider())
                .build()
                .unwrap(),
        ),
        None => builder.with_no_client_auth(),
    };
    let mut cfg = builder
        .with_single_cert(server.chain.clone(), server.key.clone_key())
        .unwrap();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(s).await else {
                    return;
                };
                let svc = hyper::service::service_fn(
                    move |req: Request<hyper::body::Incoming>| async move {
                        let version = format!("{:?}", req.version());
                        let path = req.uri().path().to_string();
                        let (parts, body) = req.into_parts();
                        let body = body
                            .collect()
                            .await
                            .map(|c| c.to_bytes())
                            .unwrap_or_default();
                        let seen = Seen {
                            method: parts.method,
                            path,
                            headers: parts.headers,
                            body,
                        };
                        let mut resp = dialog_answer(label, &seen);
                        resp.headers_mut()
                            .insert("x-version", version.parse().unwrap());
                        Ok::<_, std::convert::Infallible>(resp)
                    },
                );
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    addr
}

fn cluster_yaml(endpoint: &str, tls: &str) -> String {
    format!(
        "clusters:\n  stable:\n    endpoints: [{endpoint}]\n    tls: {{ {tls} }}\n    outlier: {{ consecutive_failures: 100 }}\ndefault: stable\n"
    )
}

fn p(path: &Path) -> String {
    path.display().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_upstream_with_test_ca_h2_and_http1() {
    let pki = Pki::new("odfs");
    let server = pki.issue("odfs", &["127.0.0.1", "odfs.test"], false);
    let c = Client::new();

    // ALPN offers h2: the gateway speaks HTTP/2 to it.
    let h2 = tls_upstream("h2", &server, None, &[b"h2", b"http/1.1"]).await;
    let gw = Gateway::start(&cluster_yaml(
        &format!("https://{h2}"),
        &format!("ca: {}", p(&pki.ca_file())),
    ))
    .await;
    let a = c.turn(&gw, Some(1), "tls-1", 8, None).await;
    assert_eq!(a.status, 200, "{:?}", a.body);
    assert_eq!(a.upstream(), Some("h2"));
    assert_eq!(a.header("x-version"), Some("HTTP/2.0"));

    // Only http/1.1 offered: HTTP/1.1. The name to verify comes from `server_name`.
    let h1 = tls_upstream("h1", &server, None, &[b"http/1.1"]).await;
    let gw = Gateway::start(&cluster_yaml(
        &format!("https://{h1}"),
        &format!("ca: {}, server_name: odfs.test", p(&pki.ca_file())),
    ))
    .await;
    let a = c.turn(&gw, Some(1), "tls-2", 8, None).await;
    assert_eq!(a.status, 200, "{:?}", a.body);
    assert_eq!(a.header("x-version"), Some("HTTP/1.1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_ca_or_name_is_502_with_the_reason() {
    let pki = Pki::new("odfs");
    let other = Pki::new("other");
    let server = pki.issue("odfs", &["127.0.0.1"], false);
    let up = tls_upstream("h2", &server, None, &[b"h2", b"http/1.1"]).await;
    let c = Client::new();
    let gw = Gateway::start(&cluster_yaml(
        &format!("https://{up}"),
        &format!("ca: {}", p(&other.ca_file())),
    ))
    .await;
    let a = c.turn(&gw, Some(1), "bad-ca", 8, None).await;
    assert_eq!(a.status, 502);
    let j = a.json();
    assert_eq!(j["errorCode"], "GW.UPSTREAM");
    let msg = j["errorMsg"].as_str().unwrap_or_default().to_string();
    assert!(
        msg.contains("UnknownIssuer") || msg.contains("certificate"),
        "{msg}"
    );

    // Right CA, wrong name.
    let gw = Gateway::start(&cluster_yaml(
        &format!("https://{up}"),
        &format!("ca: {}, server_name: elsewhere.test", p(&pki.ca_file())),
    ))
    .await;
    let a = c.turn(&gw, Some(1), "bad-name", 8, None).await;
    assert_eq!(a.status, 502);
    let msg = a.json()["errorMsg"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        msg.contains("NotValidForName") || msg.contains("certificate"),
        "{msg}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificate_to_an_upstream_that_requires_one() {
    let pki = Pki::new("odfs");
    let server = pki.issue("odfs", &["127.0.0.1"], false);
    let client = pki.issue("gateway", &["graygate"], true);
    let up = tls_upstream("mtls", &server, Some(pki.ca_der()), &[b"h2", b"http/1.1"]).await;
    let c = Client::new();
    // Without a client certificate the upstream refuses the handshake.
    let gw = Gateway::start(&cluster_yaml(
        &format!("https://{up}"),
        &format!("ca: {}", p(&pki.ca_file())),
    ))
    .await;
    let a = c.turn(&gw, Some(1), "no-cert", 8, None).await;
    assert_eq!(a.status, 502, "{:?}", a.body);
    // With one it answers.
    let gw = Gateway::start(&cluster_yaml(
        &format!("https://{up}"),
        &format!(
            "ca: {}, cert: {}, key: {}",
            p(&pki.ca_file()),
            p(&client.cert_file),
            p(&client.key_file)
        ),
    ))
    .await;
    let a = c.turn(&gw, Some(1), "with-cert", 8, None).await;
    assert_eq!(a.status, 200, "{:?}", a.body);
    assert_eq!(a.upstream(), Some("mtls"));
}

/// A TLS client to the gateway's dialog listener; sends one dialog turn over HTTP/1.1.
async fn turn_over_tls(
    addr: SocketAddr,
    ca: CertificateDer<'static>,
    client: Option<&Issued>,
) -> Result<u16, String> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots(ca));
    let cfg = match client {
        Some(c) => builder
            .with_client_auth_cert(c.chain.clone(), c.key.clone_key())
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let name = ServerName::try_from("127.0.0.1").unwrap();
    let tls = connector
        .connect(name, tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let body = turn_body("tls-in", 8, None);
    let req = Request::post("/oifde/rest/v2/crs/process/1")
        .header("host", "gw")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let resp: Response<hyper::body::Incoming> =
        tokio::time::timeout(Duration::from_secs(5), send.send_request(req))
            .await
            .map_err(|_| "no answer".to_string())?
            .map_err(|e| format!("request: {e}"))?;
    Ok(resp.status().as_u16())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dialog_listener_requires_client_certificates_with_client_ca() {
    let pki = Pki::new("gw");
    let server = pki.issue("gateway", &["127.0.0.1"], false);
    let callers = Pki::new("callers");
    let good = callers.issue("ivr", &["ivr"], true);
    let stranger = Pki::new("stranger").issue("x", &["x"], true);
    let up = Upstream::start("stable").await;
    let yaml = format!(
        "tls: {{ cert: {}, key: {}, client_ca: {} }}\nclusters:\n  stable:\n    endpoints: [{}]\ndefault: stable\n",
        p(&server.cert_file),
        p(&server.key_file),
        p(&callers.ca_file()),
        up.url()
    );
    let gw = Gateway::start(&yaml).await;
    // No certificate: refused (with TLS 1.3 the client learns it on its first read).
    let r = turn_over_tls(gw.dialog, pki.ca_der(), None).await;
    assert!(r.is_err(), "{r:?}");
    // A certificate from another CA: refused too.
    let r = turn_over_tls(gw.dialog, pki.ca_der(), Some(&stranger)).await;
    assert!(r.is_err(), "{r:?}");
    let refused = || async {
        gw.metric("graygate_rejected_connections_total", &[("reason", "tls")])
            .await
    };
    assert!(
        eventually(Duration::from_secs(5), || async { refused().await == 2.0 }).await,
        "tls refusals counted {}",
        refused().await
    );
    // A certificate the client CA signed: served.
    let r = turn_over_tls(gw.dialog, pki.ca_der(), Some(&good)).await;
    assert_eq!(r, Ok(200));
    assert_eq!(up.count(), 1);
}

/// `graygate call` over https:// (the gateway's TLS listener, verified with `--ca`), and a
/// refusal when the certificate cannot be verified.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graygate_call_over_https() {
    let pki = Pki::new("gw");
    let server = pki.issue("gateway", &["127.0.0.1"], false);
    let yaml = format!(
        "tls: {{ cert: {}, key: {} }}\nclusters:\n  stable:\n    embedded: {{ label: stable }}\ndefault: stable\n",
        p(&server.cert_file),
        p(&server.key_file),
    );
    let gw = Gateway::start(&yaml).await;
    let url = format!("https://127.0.0.1:{}", gw.dialog.port());
    let run = |extra: Vec<String>| {
        let url = url.clone();
        tokio::task::spawn_blocking(move || {
            let mut args: Vec<String> = [
                "call", "--url", &url, "--vdn", "101", "--input", "1", "--input", "2",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            args.extend(extra);
            let out = std::process::Command::new(env!("CARGO_BIN_EXE_graygate"))
                .args(args)
                .output()
                .unwrap();
            (
                out.status.code().unwrap_or(-1),
                String::from_utf8_lossy(&out.stdout).to_string()
                    + &String::from_utf8_lossy(&out.stderr),
            )
        })
    };
    let (code, out) = run(vec!["--ca".into(), p(&pki.ca_file())]).await.unwrap();
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("[instance stable]"), "{out}");
    assert!(out.contains("outaction 10"), "{out}");
    // The system's roots do not know the test CA: refused, not sent in the clear.
    let (code, out) = run(vec![]).await.unwrap();
    assert_eq!(code, 1, "{out}");
}

/// Issue 13, point 6: a reload that names other certificate files for the dialog listener
/// applies them (new handshakes present the new certificate) and does not call for a restart;
/// a reload naming a certificate that cannot be read is refused and the running one stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_with_new_listener_certificates_applies_them() {
    let (old_pki, new_pki) = (Pki::new("old"), Pki::new("new"));
    let (old, new) = (
        old_pki.issue("gateway-old", &["127.0.0.1"], false),
        new_pki.issue("gateway-new", &["127.0.0.1"], false),
    );
    let up = Upstream::start("stable").await;
    let yaml = |cert: &Path, key: &Path| {
        format!(
            "tls: {{ cert: {}, key: {} }}\nclusters:\n  stable:\n    endpoints: [{}]\ndefault: stable\n",
            p(cert),
            p(key),
            up.url()
        )
    };
    let gw = Gateway::start(&yaml(&old.cert_file, &old.key_file)).await;
    let c = Client::new();
    assert_eq!(
        turn_over_tls(gw.dialog, old_pki.ca_der(), None).await,
        Ok(200)
    );

    gw.write_config(&yaml(&new.cert_file, &new.key_file));
    let r = c.post(&gw.admin_url("/admin/reload"), "").await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let cfg = gw.admin_json("/admin/config").await;
    assert_eq!(cfg["restart_needed"], serde_json::json!([]), "{cfg}");
    assert_eq!(
        turn_over_tls(gw.dialog, new_pki.ca_der(), None).await,
        Ok(200)
    );
    let r = turn_over_tls(gw.dialog, old_pki.ca_der(), None).await;
    assert!(r.is_err(), "the old certificate is still presented: {r:?}");

    // A certificate file that is not there: 422 naming `tls`, the new certificate stays.
    let missing = new_pki.dir.path().join("missing.pem");
    gw.write_config(&yaml(&missing, &new.key_file));
    let r = c.post(&gw.admin_url("/admin/reload"), "").await;
    assert_eq!(r.status, 422, "{:?}", r.body);
    assert!(
        String::from_utf8_lossy(&r.body).contains("tls"),
        "{:?}",
        r.body
    );
    assert_eq!(
        turn_over_tls(gw.dialog, new_pki.ca_der(), None).await,
        Ok(200)
    );
    assert_eq!(up.count(), 3);
}
