//! Active health checks (spec §10): one task per pool whose spec has `health`, checking every
//! endpoint each `interval` with a TCP connect (or an HTTP GET on `path` that must answer 2xx)
//! bounded by `timeout`. `unhealthy_after` failures in a row mark an endpoint down,
//! `healthy_after` passes in a row mark it up again; each change is logged, sets
//! `graygate_upstream_endpoint_healthy` and the reason `/admin/config` shows.
//!
//! The streaks live on the [`Endpoint`], so an endpoint that stays across a reload keeps its
//! verdict and its count. The task holds only a weak reference to its pool: it ends when the
//! pool is dropped (and is aborted at once by [`TaskHandle`]'s drop), and `Upstreams` replaces
//! it when the cluster's spec changes.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};

use super::client::{error_chain, ReqBody};
use super::endpoint::Endpoint;
use super::pool::{ClusterPool, TaskHandle};
use super::HealthSpec;

/// (Re)start the checks of `pool` from its current state: stops the old task, starts a new one
/// when the spec has `health`. Without `health`, endpoints the old checks marked down are
/// marked up again (nothing would ever clear the mark otherwise).
pub fn restart(pool: &Arc<ClusterPool>) {
    let state = pool.state.load_full();
    let task = match &state.spec.health {
        Some(spec) => Some(spawn(Arc::downgrade(pool), spec.clone())),
        None => {
            for e in &state.endpoints {
                e.check_passes.store(0, Ordering::Relaxed);
                e.check_failures.store(0, Ordering::Relaxed);
                if e.set_checked_healthy(true) {
                    e.set_check_reason(None);
                    tracing::info!(cluster = %pool.name, endpoint = %e.url, "health checks removed: endpoint marked up");
                }
                pool.refresh_gauge(e);
            }
            None
        }
    };
    if let Ok(mut g) = pool.health.lock() {
        // Dropping the old task aborts it.
        *g = task;
    }
}

fn spawn(pool: Weak<ClusterPool>, spec: HealthSpec) -> TaskHandle {
    let handle = tokio::spawn(async move {
        // Validation refuses a zero interval; never let one panic `interval` here.
        let every = spec.interval.max(std::time::Duration::from_millis(10));
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(pool) = pool.upgrade() else { return };
            check_all(&pool, &spec).await;
        }
    });
    TaskHandle(handle)
}

/// One round: every endpoint checked at once, then the verdicts applied.
async fn check_all(pool: &Arc<ClusterPool>, spec: &HealthSpec) {
    let state = pool.state.load_full();
    let checks = state.endpoints.iter().map(|e| {
        let state = state.clone();
        async move {
            let outcome = check_one(&state.client, e, spec).await;
            (e.clone(), outcome)
        }
    });
    for (e, outcome) in futures_util::future::join_all(checks).await {
        match outcome {
            Ok(()) => apply(pool, &e, spec, Ok(())),
            // This process could not even make the check (out of descriptors, buffers,
            // memory): no verdict either way, the endpoint is not to blame.
            Err(Failure::Local(why)) => {
                tracing::warn!(cluster = %pool.name, endpoint = %e.url, reason = %why, "health check not made: local resources exhausted")
            }
            Err(Failure::Endpoint(why)) => apply(pool, &e, spec, Err(why)),
        }
    }
}

/// Count one check's outcome and flip the verdict when a threshold is reached.
pub fn apply(pool: &ClusterPool, e: &Endpoint, spec: &HealthSpec, outcome: Result<(), String>) {
    match outcome {
        Ok(()) => {
            e.check_failures.store(0, Ordering::Relaxed);
            let n = e.check_passes.fetch_add(1, Ordering::Relaxed) + 1;
            if !e.checked_healthy() && n >= spec.healthy_after && e.set_checked_healthy(true) {
                e.set_check_reason(None);
                // Seen down, then up: a passive ejection from the outage ends too.
                let unejected = pool.end_ejection(e);
                pool.refresh_gauge(e);
                tracing::info!(cluster = %pool.name, endpoint = %e.url, passes = n, unejected, healthy = pool.is_healthy(e), "health check: endpoint up");
            }
        }
        Err(why) => {
            e.check_passes.store(0, Ordering::Relaxed);
            let n = e.check_failures.fetch_add(1, Ordering::Relaxed) + 1;
            if e.checked_healthy() {
                if n >= spec.unhealthy_after && e.set_checked_healthy(false) {
                    e.set_check_reason(Some(format!(
                        "health check failed {n} times in a row: {why}"
                    )));
                    pool.refresh_gauge(e);
                    tracing::warn!(cluster = %pool.name, endpoint = %e.url, failures = n, reason = %why, "health check: endpoint down");
                }
            } else {
                // Still down: keep the latest reason.
                e.set_check_reason(Some(format!(
                    "health check failed {n} times in a row: {why}"
                )));
            }
        }
    }
}

/// Why a check did not pass.
enum Failure {
    /// The endpoint failed it.
    Endpoint(String),
    /// This process could not make it (`EMFILE` and friends).
    Local(String),
}

/// One check of one endpoint, bounded by `spec.timeout`.
async fn check_one(
    client: &super::client::Client,
    e: &Endpoint,
    spec: &HealthSpec,
) -> Result<(), Failure> {
    let fut = async {
        match &spec.path {
            None => tcp_check(e).await,
            Some(path) => http_check(client, e, path).await,
        }
    };
    match tokio::time::timeout(spec.timeout, fut).await {
        Ok(r) => r,
        Err(_) => Err(Failure::Endpoint(format!(
            "no answer within {:?}",
            spec.timeout
        ))),
    }
}

async fn tcp_check(e: &Endpoint) -> Result<(), Failure> {
    let Some(auth) = &e.authority else {
        return Err(Failure::Endpoint(format!("`{}` has no host:port", e.url)));
    };
    let port = auth.port_u16().unwrap_or(if e.https { 443 } else { 80 });
    let host = auth.host().trim_start_matches('[').trim_end_matches(']');
    tokio::net::TcpStream::connect((host, port))
        .await
        .map(drop)
        .map_err(|err| {
            if crate::fdlimit::is_local(&err) {
                Failure::Local(format!("connect: {err}"))
            } else {
                Failure::Endpoint(format!("connect: {err}"))
            }
        })
}

async fn http_check(
    client: &super::client::Client,
    e: &Endpoint,
    path: &str,
) -> Result<(), Failure> {
    let mut parts = http::uri::Parts::default();
    parts.scheme = Some(if e.https {
        http::uri::Scheme::HTTPS
    } else {
        http::uri::Scheme::HTTP
    });
    parts.authority = e.authority.clone();
    parts.path_and_query = Some(
        path.parse()
            .map_err(|err| Failure::Endpoint(format!("health path `{path}`: {err}")))?,
    );
    let uri = http::Uri::from_parts(parts).map_err(|err| Failure::Endpoint(err.to_string()))?;
    let mut req = http::Request::new(ReqBody::Full(Full::new(Bytes::new())));
    *req.uri_mut() = uri;
    req.headers_mut().insert(
        http::header::USER_AGENT,
        http::HeaderValue::from_static("graygate-health"),
    );
    let resp = client.request(req).await.map_err(|err| {
        if crate::fdlimit::is_local_in_chain(&err) {
            Failure::Local(error_chain(&err))
        } else {
            Failure::Endpoint(error_chain(&err))
        }
    })?;
    let status = resp.status();
    // Read the answer (within the check's timeout) so the connection can be reused.
    let _ = resp.into_body().collect().await;
    if status.is_success() {
        Ok(())
    } else {
        Err(Failure::Endpoint(format!("GET {path} answered {status}")))
    }
}
