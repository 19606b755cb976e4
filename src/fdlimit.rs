//! The process's file-descriptor budget, and telling our own resource errors from an
//! upstream's.
//!
//! At start `graygate serve` raises the soft `RLIMIT_NOFILE` to the hard one ([`raise_nofile`]),
//! and the default `limits.max_connections` is derived from what it got ([`derive`]), the way
//! HAProxy derives `maxconn`: every client connection may hold one upstream connection (two
//! with an embedded cluster, whose server side lives in this process too), and a reserve stays
//! for the listeners, the admin listener's own connections, health checks, Redis, the config
//! watch and the pin snapshot. An explicit `max_connections` still wins.
//!
//! An error such as `EMFILE` on a connect is the gateway's own shortage, not a sign that the
//! endpoint is sick: [`is_local`] says which errors those are, so that they never count against
//! an endpoint's health or outlier state (they are answered 503 `GW.LOCAL_RESOURCES`).

/// Descriptors kept aside for everything but client connections and their upstream sides.
pub const FIXED_RESERVE: u64 = 64;
/// The admin listener's connection cap when descriptors are plentiful.
pub const ADMIN_MAX_CONNECTIONS: u64 = 256;
/// The default `max_connections` when the descriptor limit allows it (spec §2).
pub const DEFAULT_MAX_CONNECTIONS: u64 = 10_000;

/// Raise the soft descriptor limit to the hard one. Returns (soft, hard) after the attempt, or
/// `None` where the limit cannot be read.
pub fn raise_nofile() -> Option<(u64, u64)> {
    #[cfg(unix)]
    {
        use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
        let lim = getrlimit(Resource::Nofile);
        // `None` is unlimited; an unlimited hard limit cannot be the soft one (the kernel caps
        // it at nr_open), so aim for a million then.
        let hard = lim.maximum.unwrap_or(1 << 20);
        let mut soft = lim.current.unwrap_or(u64::MAX);
        if soft < hard {
            let want = Rlimit {
                current: Some(hard),
                maximum: lim.maximum,
            };
            if setrlimit(Resource::Nofile, want).is_ok() {
                soft = hard;
            }
        }
        Some((soft, lim.maximum.unwrap_or(u64::MAX)))
    }
    #[cfg(not(unix))]
    {
        None
    }
}

/// The soft descriptor limit now (`None`: unlimited or unknown).
pub fn nofile() -> Option<u64> {
    #[cfg(unix)]
    {
        rustix::process::getrlimit(rustix::process::Resource::Nofile).current
    }
    #[cfg(not(unix))]
    {
        None
    }
}

/// The connection caps a descriptor limit allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// Dialog connections (the default `max_connections`).
    pub dialog: u64,
    /// Admin connections.
    pub admin: u64,
}

/// Split `nofile` descriptors: a fixed reserve, the admin listener's share (an eighth, at most
/// [`ADMIN_MAX_CONNECTIONS`], at least 4), and the rest for dialog connections at
/// `per_connection` descriptors each, at most [`DEFAULT_MAX_CONNECTIONS`], at least 1.
pub fn derive(nofile: u64, per_connection: u64) -> Budget {
    let admin = (nofile / 8).clamp(4, ADMIN_MAX_CONNECTIONS);
    let left = nofile.saturating_sub(FIXED_RESERVE + admin);
    let dialog = (left / per_connection.max(1)).clamp(1, DEFAULT_MAX_CONNECTIONS);
    Budget { dialog, admin }
}

/// An I/O error that says this process (or this machine) is short of a resource, not that the
/// peer failed: `EMFILE`, `ENFILE`, `ENOBUFS`, `ENOMEM`.
pub fn is_local(e: &std::io::Error) -> bool {
    #[cfg(unix)]
    {
        use rustix::io::Errno;
        let Some(code) = e.raw_os_error() else {
            return false;
        };
        [Errno::MFILE, Errno::NFILE, Errno::NOBUFS, Errno::NOMEM]
            .iter()
            .any(|x| x.raw_os_error() == code)
    }
    #[cfg(not(unix))]
    {
        let _ = e;
        false
    }
}

/// [`is_local`] for any error with an `io::Error` somewhere in its source chain (also inside an
/// `io::Error` that wraps another error, whose `source()` skips the wrapped one).
pub fn is_local_in_chain(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    let mut depth = 0;
    while let Some(err) = cur {
        depth += 1;
        if depth > 16 {
            return false;
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if is_local(io) {
                return true;
            }
            if let Some(inner) = io.get_ref() {
                cur = Some(inner as &(dyn std::error::Error + 'static));
                continue;
            }
        }
        cur = err.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budgets() {
        // A low limit: the reserve and the admin share come first.
        assert_eq!(
            derive(256, 2),
            Budget {
                dialog: 80,
                admin: 32
            }
        );
        assert_eq!(
            derive(1024, 2),
            Budget {
                dialog: 416,
                admin: 128
            }
        );
        // Plenty: the spec's default cap, the admin's full cap.
        assert_eq!(
            derive(1 << 20, 2),
            Budget {
                dialog: 10_000,
                admin: 256
            }
        );
        // An embedded cluster's server side costs a descriptor too.
        assert_eq!(derive(256, 3).dialog, 53);
        // Absurdly low: still one connection of each.
        assert_eq!(
            derive(16, 2),
            Budget {
                dialog: 1,
                admin: 4
            }
        );
    }

    #[test]
    fn local_errors() {
        use rustix::io::Errno;
        for code in [Errno::MFILE, Errno::NFILE, Errno::NOBUFS, Errno::NOMEM] {
            assert!(is_local(&std::io::Error::from_raw_os_error(
                code.raw_os_error()
            )));
        }
        assert!(!is_local(&std::io::Error::from_raw_os_error(
            Errno::CONNREFUSED.raw_os_error()
        )));
        let wrapped = std::io::Error::other(std::io::Error::from_raw_os_error(
            Errno::MFILE.raw_os_error(),
        ));
        assert!(!is_local(&wrapped));
        assert!(is_local_in_chain(&wrapped));
    }
}
