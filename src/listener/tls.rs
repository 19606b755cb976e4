//! TLS for the dialog listener: rustls with ALPN h2 and http/1.1, optional client certificates
//! (mTLS) and certificate reload: the server config sits in an `ArcSwap`, so a reload that
//! re-reads the files gives new connections the new certificate without a restart.

use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::server::WebPkiClientVerifier;
use rustls::ServerConfig;
use tokio_rustls::server::TlsStream;

use crate::snapshot::ListenerTls;

pub struct TlsAcceptor {
    config: ArcSwap<ServerConfig>,
}

impl TlsAcceptor {
    pub fn new(spec: &ListenerTls) -> Result<Self, String> {
        Ok(TlsAcceptor {
            config: ArcSwap::from_pointee(server_config(spec)?),
        })
    }

    /// Read and check the certificate, key and client CA (blocking file reads): the fallible
    /// half of a reload.
    pub fn prepare(spec: &ListenerTls) -> Result<ServerConfig, String> {
        server_config(spec)
    }

    /// Use a prepared config for the connections accepted from now on.
    pub fn install(&self, config: ServerConfig) {
        self.config.store(Arc::new(config));
        tracing::info!("listener certificate re-read");
    }

    pub async fn accept<IO>(&self, stream: IO) -> std::io::Result<TlsStream<IO>>
    where
        IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        let acceptor = tokio_rustls::TlsAcceptor::from(self.config.load_full());
        acceptor.accept(stream).await
    }
}

fn server_config(spec: &ListenerTls) -> Result<ServerConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs = crate::tlsfiles::read_certs(&spec.cert.display().to_string())?;
    let key = crate::tlsfiles::read_key(&spec.key.display().to_string())?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = match &spec.client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in crate::tlsfiles::read_certs(&ca.display().to_string())? {
                roots.add(c).map_err(|e| format!("{}: {e}", ca.display()))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| e.to_string())?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut cfg = builder
        .with_single_cert(certs, key)
        .map_err(|e| format!("certificate/key: {e}"))?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(cfg)
}
