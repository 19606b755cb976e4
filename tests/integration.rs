//! The one integration test binary; each module tests one surface against real loopback servers.
