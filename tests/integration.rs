//! The one integration test binary. Every module starts real gateways on loopback port 0 in
//! front of real HTTP upstreams (stand-ins of the test's own, or the embedded reference ODFS).

mod support;

/// Rule conditions, first-match order, V1 vs V2, split shares and determinism.
mod routing;

/// Several replicas on one Redis: shared pins, rollouts, first writer wins, outages, restarts.
mod replicas;
