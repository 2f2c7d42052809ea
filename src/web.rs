//! The HTTP server, bounded: a cap on open connections (where the oldest connection not
//! yet let in makes room for a new one), a deadline for each request's header, a cap on
//! concurrent scrapes and on event-tap subscribers, each refusal counted in
//! `ebpf_exporter_http_refused_total{reason}`.

use std::{
    collections::VecDeque,
    os::fd::{AsRawFd, RawFd},
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc, Weak,
    },
    time::Duration,
};

use axum::Router;
use hyper_util::{rt::TokioIo, server::graceful::GracefulShutdown};
use kube_ebpf_exporter::{
    web_auth::{Authenticator, Verdict},
    web_config::Loaded,
    web_config_watch::WebConfigWatch,
};
use metrics::counter;
use parking_lot::Mutex;
use std::future::Future;
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::{TcpListener, UnixListener},
    sync::{Notify, OwnedSemaphorePermit, Semaphore},
};

/// What `serve` takes connections from: TCP, or a unix socket (the event stream's).
pub trait Listener: Send + 'static {
    /// A connection.
    type Io: AsyncRead + AsyncWrite + AsRawFd + Unpin + Send + 'static;
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

/// Limits on what clients may hold, and how connections are secured.
#[derive(Clone)]
pub struct Limits {
    /// `--web.config.file` (TLS, basic auth, headers), kept current.
    pub web_config: Option<Arc<WebConfigWatch>>,
    /// Basic auth's verifier, shared by every connection.
    pub auth: Arc<Authenticator>,
    /// Connections open at once; more are closed as they come.
    pub max_connections: usize,
    /// Time a client has to send a request's header (each request on a connection).
    pub header_timeout: Duration,
    /// How long connections may take to finish at shutdown.
    pub shutdown_timeout: Duration,
    /// Where secured connections are served, apart from the accept loop and TLS
    /// handshakes; `None`: beside them.
    pub serving: Option<tokio::runtime::Handle>,
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

/// One open connection's place under the cap; given back when dropped.
struct Ticket {
    open: Arc<AtomicUsize>,
    /// A request on it was let in (past basic auth, where there is one).
    proven: AtomicBool,
    /// Its place was given back already (evicted).
    gone: AtomicBool,
    evict: Notify,
    /// The connection's socket, kept open by whoever awaits `evicted`.
    socket: RawFd,
}

impl Ticket {
    fn prove(&self) {
        self.proven.store(true, Ordering::Relaxed);
    }

    /// Completes when the connection is to close to make room for a new one; the
    /// socket is then reset rather than closed.
    async fn evicted(&self) {
        self.evict.notified().await;
        reset_on_close(self.socket);
    }
}

/// Makes closing `socket` send a reset: a stranger made to leave costs one packet and
/// leaves no TIME_WAIT behind, so a flood reconnecting as it is evicted churns less.
fn reset_on_close(socket: RawFd) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: plain setsockopt on a descriptor its owner keeps open for this call (a
    // bad one only fails); `linger` outlives the call.
    unsafe {
        libc::setsockopt(
            socket,
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            std::ptr::from_ref(&linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if !self.gone.swap(true, Ordering::AcqRel) {
            self.open.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// The cap on open connections. Strangers can fill it with connections that never
/// finish a handshake or a header; so when it is full, the oldest connection that has
/// not had a request let in makes room, and only when every connection has, is the new
/// one refused. A scraper with the right credentials keeps its connection, and a new
/// one gets its turn.
struct Admission {
    max: usize,
    open: Arc<AtomicUsize>,
    /// Connections in arrival order, proven or closed ones dropped lazily.
    unproven: Mutex<VecDeque<Weak<Ticket>>>,
}

impl Admission {
    fn new(max: usize) -> Self {
        Self {
            max,
            open: Arc::default(),
            unproven: Mutex::default(),
        }
    }

    /// A place for the new connection on `socket`, or `None` (counted) when every open
    /// one is proven.
    fn admit(&self, socket: RawFd) -> Option<Arc<Ticket>> {
        let mut unproven = self.unproven.lock();
        if self.open.load(Ordering::Acquire) >= self.max && !Self::evict_oldest(&mut unproven) {
            counter!(REFUSED, "reason" => "connections").increment(1);
            return None;
        }
        self.open.fetch_add(1, Ordering::AcqRel);
        let ticket = Arc::new(Ticket {
            open: self.open.clone(),
            proven: AtomicBool::new(false),
            gone: AtomicBool::new(false),
            evict: Notify::new(),
            socket,
        });
        // Bounded: proven and closed connections are swept once they are half of it.
        if unproven.len() >= 2 * self.max {
            unproven.retain(|t| {
                t.upgrade()
                    .is_some_and(|t| !t.proven.load(Ordering::Relaxed))
            });
        }
        unproven.push_back(Arc::downgrade(&ticket));
        Some(ticket)
    }

    /// Evicts the oldest open, unproven connection; whether there was one.
    fn evict_oldest(unproven: &mut VecDeque<Weak<Ticket>>) -> bool {
        while let Some(t) = unproven.pop_front() {
            let Some(t) = t.upgrade() else { continue };
            if t.proven.load(Ordering::Relaxed) || t.gone.swap(true, Ordering::AcqRel) {
                continue;
            }
            t.open.fetch_sub(1, Ordering::AcqRel);
            t.evict.notify_one();
            counter!(REFUSED, "reason" => "evicted").increment(1);
            return true;
        }
        false
    }
}

/// Serves one connection until it ends (or shutdown ends it).
async fn connection<IO, S>(
    io: IO,
    service: S,
    http: hyper::server::conn::http1::Builder,
    watcher: hyper_util::server::graceful::Watcher,
    ticket: &Ticket,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::Service<
            hyper::Request<hyper::body::Incoming>,
            Response = axum::response::Response,
            Error = std::convert::Infallible,
        > + Send
        + 'static,
    S::Future: Send + 'static,
{
    let conn = watcher.watch(http.serve_connection(TokioIo::new(io), service));
    if let Err(e) = conn.await {
        // hyper's header deadline also closes idle keep-alive connections: after a
        // request was let in, that is no refusal.
        if e.is_timeout() && !ticket.proven.load(Ordering::Relaxed) {
            counter!(REFUSED, "reason" => "header_timeout").increment(1);
        }
    }
}

/// `app` behind the web config's basic auth (all but `/healthz`), with its headers on
/// every response; a request let in proves `ticket`'s connection.
fn secured(
    app: Router,
    loaded: Option<Arc<Loaded>>,
    auth: Arc<Authenticator>,
    ticket: Arc<Ticket>,
) -> impl hyper::service::Service<
    hyper::Request<hyper::body::Incoming>,
    Response = axum::response::Response,
    Error = std::convert::Infallible,
    Future = impl Future<Output = Result<axum::response::Response, std::convert::Infallible>> + Send,
> + Clone
       + Send
       + 'static {
    hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        let (app, loaded, auth, ticket) =
            (app.clone(), loaded.clone(), auth.clone(), ticket.clone());
        async move {
            use axum::http::{header, HeaderName, HeaderValue, StatusCode};
            use tower::ServiceExt;
            // Liveness says nothing, and the kubelet's probes carry no credentials.
            let health = req.uri().path() == "/healthz";
            let verdict = match &loaded {
                Some(loaded) if !health => {
                    let credentials = req
                        .headers()
                        .get(header::AUTHORIZATION)
                        .map(|v| v.as_bytes().to_vec());
                    auth.check(&loaded.users, credentials.as_deref()).await
                }
                _ => Verdict::Allowed,
            };
            let refuse = |status: StatusCode, reason: &'static str| {
                counter!(REFUSED, "reason" => reason).increment(1);
                let mut r = axum::response::Response::new(axum::body::Body::from(format!(
                    "{}\n",
                    status.canonical_reason().unwrap_or("")
                )));
                *r.status_mut() = status;
                r
            };
            let mut response = match verdict {
                Verdict::Allowed => {
                    if !health {
                        ticket.prove();
                    }
                    app.oneshot(req.map(axum::body::Body::new)).await?
                }
                Verdict::Denied => {
                    let mut r = refuse(StatusCode::UNAUTHORIZED, "unauthorized");
                    r.headers_mut().insert(
                        header::WWW_AUTHENTICATE,
                        HeaderValue::from_static("Basic realm=\"kube-ebpf-exporter\""),
                    );
                    r
                }
                Verdict::Busy => {
                    let mut r = refuse(StatusCode::SERVICE_UNAVAILABLE, "auth_busy");
                    r.headers_mut()
                        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                    r
                }
            };
            for (name, value) in loaded.iter().flat_map(|l| &l.headers) {
                if let (Ok(n), Ok(v)) = (
                    HeaderName::try_from(name.as_str()),
                    HeaderValue::try_from(value.as_str()),
                ) {
                    response.headers_mut().insert(n, v);
                }
            }
            Ok(response)
        }
    })
}

/// What serving one accepted connection takes.
struct Accepted {
    app: Router,
    http: hyper::server::conn::http1::Builder,
    watcher: hyper_util::server::graceful::Watcher,
    limits: Limits,
    ticket: Arc<Ticket>,
}

impl Accepted {
    /// Secures `stream` as the web config says (as it is now: certificates and users
    /// change in place), then hands it to the serving threads; until then it runs
    /// beside the accept loop, under the header's deadline and open to eviction.
    async fn secure<IO>(self, stream: IO)
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let loaded = self.limits.web_config.as_ref().map(|w| w.current());
        let Some(tls) = loaded.as_ref().and_then(|l| l.tls.clone()) else {
            return self.established(stream, loaded);
        };
        let acceptor = tokio_rustls::TlsAcceptor::from(tls);
        let handshake = tokio::time::timeout(self.limits.header_timeout, acceptor.accept(stream));
        tokio::select! {
            done = handshake => match done {
                Ok(Ok(tls)) => self.established(tls, loaded),
                Ok(Err(e)) => {
                    counter!(REFUSED, "reason" => "tls").increment(1);
                    tracing::debug!("TLS handshake: {e}");
                }
                Err(_) => counter!(REFUSED, "reason" => "header_timeout").increment(1),
            },
            () = self.ticket.evicted() => {}
        }
    }

    /// Serves the secured connection (under the web config `loaded` when it was
    /// secured) on the serving threads, where strangers' junk never queues ahead of a
    /// scrape, until it ends or is evicted.
    fn established<IO>(self, io: IO, loaded: Option<Arc<Loaded>>)
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let Self {
            app,
            http,
            watcher,
            limits,
            ticket,
        } = self;
        let service = secured(app, loaded, limits.auth.clone(), ticket.clone());
        let served = Box::pin(async move {
            tokio::select! {
                () = connection(io, service, http, watcher, &ticket) => {}
                () = ticket.evicted() => {}
            }
        });
        match &limits.serving {
            Some(threads) => drop(threads.spawn(served)),
            None => drop(tokio::spawn(served)),
        }
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
    let admission = Admission::new(limits.max_connections);
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
        // Over the cap: reset at once, so the descriptor is free again.
        let Some(ticket) = admission.admit(stream.as_raw_fd()) else {
            reset_on_close(stream.as_raw_fd());
            continue;
        };
        let accepted = Accepted {
            app: app.clone(),
            http: http.clone(),
            watcher: graceful.watcher(),
            limits: limits.clone(),
            ticket,
        };
        tokio::spawn(Box::pin(accepted.secure(stream)));
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

    /// The unit tests' connections have no socket (setsockopt fails on it, harmlessly).
    const NO_SOCKET: RawFd = -1;

    #[test]
    fn slots_refuse_beyond_the_cap_until_one_is_given_back() {
        let slots = Slots::new(2, "test");
        let a = slots.try_take().unwrap();
        let _b = slots.try_take().unwrap();
        assert!(slots.try_take().is_none());
        drop(a);
        assert!(slots.try_take().is_some());
    }

    #[tokio::test]
    async fn a_full_cap_evicts_the_oldest_connection_not_yet_let_in() {
        let admission = Admission::new(3);
        let scraper = admission.admit(NO_SOCKET).unwrap();
        scraper.prove();
        let first = admission.admit(NO_SOCKET).unwrap();
        let second = admission.admit(NO_SOCKET).unwrap();
        // Full: the oldest unproven (first) makes room, the scraper stays.
        let third = admission.admit(NO_SOCKET).unwrap();
        tokio::time::timeout(Duration::from_secs(1), first.evicted())
            .await
            .expect("the oldest stranger was evicted");
        assert_eq!(admission.open.load(Ordering::Relaxed), 3);
        // Closing a connection gives its place back, once (first already gave its own).
        drop(first);
        drop(second);
        assert_eq!(admission.open.load(Ordering::Relaxed), 2);
        let fourth = admission.admit(NO_SOCKET).unwrap();
        third.prove();
        fourth.prove();
        // Every open connection proven: the new one is refused.
        assert!(admission.admit(NO_SOCKET).is_none());
        drop(fourth);
        assert!(admission.admit(NO_SOCKET).is_some());
        assert!(!scraper.gone.load(Ordering::Relaxed));
    }
}
