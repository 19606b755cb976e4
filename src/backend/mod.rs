//! The reference ODFS dialog backend (spec §7). Placeholder with the agreed API until the
//! backend branch lands: answers every dialog turn with outaction 9 (10 on `input=hangup`).

use std::convert::Infallible;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};

pub struct BackendOptions {
    pub label: String,
    pub flows: Option<PathBuf>,
    pub tenants: Option<PathBuf>,
    pub idle_timeout: Duration,
    pub sys_err_cap: u32,
}

impl Default for BackendOptions {
    fn default() -> Self {
        BackendOptions {
            label: "odfs".into(),
            flows: None,
            tenants: None,
            idle_timeout: Duration::from_secs(600),
            sys_err_cap: 3,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("{0}")]
    Config(String),
}

pub struct Backend {
    label: String,
}

impl Backend {
    pub fn new(opts: BackendOptions) -> Result<Arc<Backend>, BackendError> {
        Ok(Arc::new(Backend { label: opts.label }))
    }

    pub async fn serve(
        self: Arc<Self>,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        tokio::pin!(shutdown);
        loop {
            let (stream, _) = tokio::select! {
                r = listener.accept() => r?,
                _ = &mut shutdown => return Ok(()),
            };
            let me = self.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    let me = me.clone();
                    async move {
                        let body = req
                            .into_body()
                            .collect()
                            .await
                            .map(|c| c.to_bytes())
                            .unwrap_or_default();
                        let v: serde_json::Value =
                            serde_json::from_slice(&body).unwrap_or_default();
                        let hangup =
                            v.pointer("/inparams/input").and_then(|x| x.as_str()) == Some("hangup");
                        let out = if hangup { 10 } else { 9 };
                        let answer = serde_json::json!({"ret":0,"userid":v.get("userid"),"outaction":out,"outparams":{}});
                        Ok::<_, Infallible>(
                            Response::builder()
                                .header("content-type", "application/json")
                                .header(crate::protocol::INSTANCE_HEADER, me.label.as_str())
                                .body(Full::new(Bytes::from(answer.to_string())))
                                .unwrap_or_default(),
                        )
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    }
}
