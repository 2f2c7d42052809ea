//! The HTTP server, bounded: a cap on open connections, a deadline for each request's
//! header, a cap on concurrent scrapes and on event-tap subscribers, each refusal
//! counted in `ebpf_exporter_http_refused_total{reason}`.

use std::{sync::Arc, time::Duration};

use axum::Router;
use hyper_util::{rt::TokioIo, server::graceful::GracefulShutdown, service::TowerToHyperService};
use metrics::counter;
use std::future::Future;
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::{TcpListener, UnixListener},
    sync::{OwnedSemaphorePermit, Semaphore},
};

/// What `serve` takes connections from: TCP, or a unix socket (the event stream's).
pub trait Listener: Send + 'static {
    /// A connection.
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    /// The next connection.
    fn next(&self) -> impl Future<Output = std::io::Result<Self::Io>> + Send;
}

impl Listener for TcpListener {
    type Io = tokio::net::TcpStream;
    async fn next(&self) -> std::io::Result<Self::Io> {
        Ok(self.accept().await?.0)
    }
}

impl Listener for UnixListener {
    type Io = tokio::net::UnixStream;
    async fn next(&self) -> std::io::Result<Self::Io> {
        Ok(self.accept().await?.0)
    }
}

/// The counter of refused connections and requests.
pub const REFUSED: &str = "ebpf_exporter_http_refused_total";

/// Limits on what clients may hold.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Connections open at once; more are closed as they come.
    pub max_connections: usize,
    /// Time a client has to send a request's header (each request on a connection).
    pub header_timeout: Duration,
    /// How long connections may take to finish at shutdown.
    pub shutdown_timeout: Duration,
}

/// A cap on something requests hold (scrapes, subscribers): a permit while held.
#[derive(Debug, Clone)]
pub struct Slots {
    semaphore: Arc<Semaphore>,
    reason: &'static str,
}

impl Slots {
    /// `n` slots; a refusal counts under `reason`.
    pub fn new(n: usize, reason: &'static str) -> Self {
        Self {
            semaphore: Arc::new(Semaphore::new(n)),
            reason,
        }
    }

    /// A slot, or `None` (counted) when all are held.
    pub fn try_take(&self) -> Option<OwnedSemaphorePermit> {
        let permit = self.semaphore.clone().try_acquire_owned().ok();
        if permit.is_none() {
            counter!(REFUSED, "reason" => self.reason).increment(1);
        }
        permit
    }
}

/// Serves `app` on `listener` within `limits` until `shutdown` completes, then lets
/// open connections finish for up to `limits.shutdown_timeout`.
pub async fn serve(
    listener: impl Listener,
    app: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) {
    let connections = Slots::new(limits.max_connections, "connections");
    let graceful = GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.next() => match accepted {
                Ok(c) => c,
                Err(e) => {
                    // Out of descriptors, most likely: give connections time to close.
                    tracing::warn!("accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // Over the cap: closed at once, so the descriptor is free again.
        let Some(permit) = connections.try_take() else {
            continue;
        };
        let service = TowerToHyperService::new(app.clone());
        let conn = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                if e.is_timeout() {
                    counter!(REFUSED, "reason" => "header_timeout").increment(1);
                }
            }
            drop(permit);
        });
    }
    drop(listener);
    if tokio::time::timeout(limits.shutdown_timeout, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            "connections still open after {:?}; closing them",
            limits.shutdown_timeout
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_refuse_beyond_the_cap_until_one_is_given_back() {
        let slots = Slots::new(2, "test");
        let a = slots.try_take().unwrap();
        let _b = slots.try_take().unwrap();
        assert!(slots.try_take().is_none());
        drop(a);
        assert!(slots.try_take().is_some());
    }
}
