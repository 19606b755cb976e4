//! The one integration test binary. Every module starts real gateways on loopback port 0 in
//! front of real HTTP upstreams (stand-ins of the test's own, or the embedded reference ODFS).

mod support;

/// Rule conditions, first-match order, V1 vs V2, split shares and determinism.
mod routing;

/// Spec §10 under faults: health checks, outlier ejection, fallback, pinned turns, max_inflight,
/// max_connections, timeouts and retries (issue 9, acceptance 1).
mod resilience;

/// Hostile clients: thousands of slow/idle connections, smuggling shapes, oversized headers,
/// short bodies, clients that stop reading (issue 9, acceptances 2 and 3).
mod hostile;

/// TLS to upstreams (test CA, wrong CA, server_name, client certificates, h2 by ALPN) and mTLS
/// on the dialog listener (issue 9, acceptance 4).
mod tls;
