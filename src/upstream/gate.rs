//! How many connects to one endpoint may be in progress at once, shared by the hyper client's
//! keep-alive pool ([`super::conn`]) and the fast path's raw one ([`super::raw`]).
//!
//! A burst of turns with no idle connection (start-up, a reload that sends traffic to a new
//! endpoint) opens [`MAX_CONNECTING`] connections at a time; the other turns wait for the first
//! connection to come back or a connect to finish, as a browser or hyper's own pool would. An
//! unbounded burst of SYNs overflows the endpoint's accept queue (128 on many hosts), and a
//! dropped SYN costs a whole second (the first retransmission), which is a failed turn at the
//! default `connect_timeout`.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, Semaphore};
use tokio::time::Instant;

use super::client::UpstreamError;

/// Connects in progress per endpoint.
pub const MAX_CONNECTING: usize = 32;

/// Connect slots of one endpoint and the wake-up of turns waiting for one.
pub struct ConnectGate {
    connecting: Semaphore,
    /// Wakes a turn waiting for a connection: one was returned or a connect slot freed.
    available: Notify,
}

impl Default for ConnectGate {
    fn default() -> Self {
        ConnectGate {
            connecting: Semaphore::new(MAX_CONNECTING),
            available: Notify::new(),
        }
    }
}

impl ConnectGate {
    /// A connection went back to the idle pool: one waiting turn may take it.
    pub fn returned(&self) {
        self.available.notify_one();
    }

    /// Connect slots free now (for tests).
    pub fn free_slots(&self) -> usize {
        self.connecting.available_permits()
    }

    /// An idle connection from `take`, or one opened by `connect` in a free slot, or (when
    /// every slot is busy) whichever of those comes first, by `give_up`. `Ok((c, true))` is an
    /// idle connection (the server may have closed it under us), `Ok((c, false))` a new one.
    ///
    /// Waiting for a slot counts against `connect_timeout` like connecting does: an endpoint
    /// that swallows SYNs must not hold turns longer than one connect would, so that they can
    /// still try another endpoint within the cluster's timeout.
    pub async fn checkout<C, Fut>(
        &self,
        endpoint: &Arc<str>,
        give_up: Instant,
        connect_timeout: Duration,
        mut take: impl FnMut() -> Option<C>,
        mut connect: impl FnMut() -> Fut,
    ) -> Result<(C, bool), UpstreamError>
    where
        Fut: Future<Output = Result<C, UpstreamError>>,
    {
        loop {
            if let Some(c) = take() {
                return Ok((c, true));
            }
            if let Ok(slot) = self.connecting.try_acquire() {
                let r = connect().await;
                drop(slot);
                // A waiter may connect now (or take what this connect leaves behind).
                self.available.notify_one();
                return r.map(|c| (c, false));
            }
            // Register before looking again, so that a return in between is not missed.
            let wake = self.available.notified();
            tokio::pin!(wake);
            wake.as_mut().enable();
            if let Some(c) = take() {
                return Ok((c, true));
            }
            if self.connecting.available_permits() > 0 {
                continue;
            }
            if tokio::time::timeout_at(give_up, wake).await.is_err() {
                return Err(UpstreamError::Connect {
                    endpoint: endpoint.clone(),
                    reason: format!(
                        "no connection within {connect_timeout:?} ({MAX_CONNECTING} connects already in progress)"
                    ),
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;

    const ENDPOINT: &str = "http://192.0.2.1:80";

    /// A turn checking out of `gate` in a task of its own, with `secs` of connect timeout.
    fn turn<C, Fut>(
        gate: &Arc<ConnectGate>,
        secs: u64,
        take: impl FnMut() -> Option<C> + Send + 'static,
        connect: impl FnMut() -> Fut + Send + 'static,
    ) -> tokio::task::JoinHandle<Result<(C, bool), UpstreamError>>
    where
        C: Send + 'static,
        Fut: Future<Output = Result<C, UpstreamError>> + Send,
    {
        let gate = gate.clone();
        tokio::spawn(async move {
            let timeout = Duration::from_secs(secs);
            let endpoint: Arc<str> = Arc::from(ENDPOINT);
            gate.checkout(&endpoint, Instant::now() + timeout, timeout, take, connect)
                .await
        })
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_opens_at_most_max_connecting_at_once_and_every_turn_is_served() {
        let gate = Arc::new(ConnectGate::default());
        let (now, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let mut turns = Vec::new();
        for _ in 0..MAX_CONNECTING + 8 {
            let (now, most) = (now.clone(), most.clone());
            turns.push(turn(
                &gate,
                1,
                || None::<()>,
                move || {
                    let (now, most) = (now.clone(), most.clone());
                    async move {
                        let n = now.fetch_add(1, Ordering::SeqCst) + 1;
                        most.fetch_max(n, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        now.fetch_sub(1, Ordering::SeqCst);
                        Ok(())
                    }
                },
            ));
        }
        for t in turns {
            assert_eq!(t.await.unwrap().unwrap(), ((), false));
        }
        assert_eq!(most.load(Ordering::SeqCst), MAX_CONNECTING);
        assert_eq!(gate.free_slots(), MAX_CONNECTING);
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiting_turn_takes_a_returned_connection_and_gives_up_by_its_deadline() {
        let gate = Arc::new(ConnectGate::default());
        let idle: Arc<Mutex<Vec<u32>>> = Arc::default();
        // Every slot busy with a connect that hangs.
        let hung: Vec<_> = (0..MAX_CONNECTING)
            .map(|_| turn(&gate, 60, || None::<u32>, std::future::pending))
            .collect();
        tokio::task::yield_now().await;
        assert_eq!(gate.free_slots(), 0);
        let from = idle.clone();
        let waiter = turn(
            &gate,
            1,
            move || from.lock().unwrap().pop(),
            || async { panic!("no slot was free") },
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        idle.lock().unwrap().push(7);
        gate.returned();
        assert_eq!(waiter.await.unwrap().unwrap(), (7, true));

        // Nothing returned: the wait ends with the turn's connect_timeout, as an error.
        let start = Instant::now();
        let r = turn(
            &gate,
            1,
            || None::<u32>,
            || async { panic!("no slot was free") },
        )
        .await
        .unwrap();
        let Err(UpstreamError::Connect { reason, .. }) = r else {
            panic!("expected a connect error, got {r:?}");
        };
        assert!(reason.contains("connects already in progress"), "{reason}");
        assert_eq!(start.elapsed(), Duration::from_secs(1));
        for h in hung {
            h.abort();
        }
    }
}
