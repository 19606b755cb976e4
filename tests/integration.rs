//! The one integration test binary. Every module starts real gateways on loopback port 0 in
//! front of real HTTP upstreams (stand-ins of the test's own, or the embedded reference ODFS).

mod support;

/// The admin surface and the metrics contract.
mod admin;
/// The reference ODFS backend: turn sequences, tokens, flow files, shared call stores.
mod backend;
/// The command line as the real binary: check, explain, diff, schema.
mod cli;
/// The audit trail (`/admin/history`), observed shares, and the console in a real browser.
mod console;
/// deploy/, examples/ and docs/operations.md checked with promtool, kustomize, kubernetes-validate,
/// systemd-analyze and static checks (missing tools: SKIP, or a failure under CI).
mod deploy;
/// The dependency rule of design.md: allowed `crate::` edges between modules, no circles.
mod deps;
/// The gateway in front of embedded reference ODFS clusters (the self-contained deployment).
mod embedded;
/// The two engines on one corpus of requests (framing and smuggling shapes among them): the
/// same answers, the same bytes forwarded.
mod engines;
/// Every row of the §3 error table; byte-exact forwarding; other paths.
mod errors;
/// One published generation: every error of a file in one run, hostile files, reloads that
/// never half-apply, turns that keep their generation (issue 13).
mod generation;
/// Pin creation, following, and every release path.
mod pins;
/// The client address: access line, x-forwarded-for, PROXY protocol v1/v2 behind a real
/// HAProxy and hand-made headers (spec §13).
mod proxy_protocol;
/// Hot reload under traffic, SIGHUP, retired clusters, graceful restart with pins.
mod reload;
/// Progressive rollouts judged by calls (spec §11): abort and completion over embedded clusters.
mod rollout;
/// Rule conditions, first-match order, V1 vs V2, split shares and determinism.
mod routing;
/// W3C trace context through the gateway and OTLP/HTTP span export (spec §13).
mod trace_context;

/// Several replicas on one Redis: shared pins, rollouts, first writer wins, outages, restarts.
mod replicas;
/// Spec §10 under faults: health checks, outlier ejection, fallback, pinned turns, max_inflight,
/// max_connections, timeouts and retries (issue 9, acceptance 1).
mod resilience;
/// `redis+sentinel://`: a failover under load against real Sentinels (spec §13).
mod sentinel;

/// Faults of the gateway's own making: kill -9 with pins, its own descriptor shortage, a blocked
/// log pipe at exit, error answers with the decision header, a Redis restart (issue 15).
mod own_faults;

/// Hostile clients: thousands of slow/idle connections, smuggling shapes, oversized headers,
/// short bodies, clients that stop reading (issue 9, acceptances 2 and 3).
mod hostile;

/// The fuzz corpora replayed through the fuzz targets' entry points (CI's fuzz smoke).
mod fuzz_corpus;
/// TLS to upstreams (test CA, wrong CA, server_name, client certificates, h2 by ALPN) and mTLS
/// on the dialog listener (issue 9, acceptance 4).
mod tls;
/// Keep-alive connections to plain-http endpoints: reuse, return after every answer shape,
/// no reuse of a half-read answer, idle connections the server closed.
mod upstream_conns;
