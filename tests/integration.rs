//! The one integration test binary; each module tests one surface against real loopback servers.

// deploy/, examples/ and docs/operations.md checked with promtool, kustomize, kubernetes-validate,
// systemd-analyze and static checks (missing tools: SKIP, or a failure under CI).
mod deploy;
