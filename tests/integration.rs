//! The one integration test binary; each module tests one surface against real loopback servers.

/// The reference ODFS backend: turn sequences, tokens, flow files, shared call stores.
mod backend;
