//! The HTTP server, bounded: a cap on open connections, a deadline for each request's
//! header, a cap on concurrent scrapes and on event-tap subscribers, each refusal
//! counted in `ebpf_exporter_http_refused_total{reason}`.

use std::{sync::Arc, time::Duration};

use axum::Router;
use hyper_util::{rt::TokioIo, server::graceful::GracefulShutdown, service::TowerToHyperService};
use kube_ebpf_exporter::{
    web_auth::{Authenticator, Verdict},
    web_config::Loaded,
    web_config_watch::WebConfigWatch,
};
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

/// Serves one connection until it ends (or shutdown ends it).
async fn connection<IO, S>(
    io: IO,
    service: S,
    http: &hyper::server::conn::http1::Builder,
    watcher: hyper_util::server::graceful::Watcher,
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
        if e.is_timeout() {
            counter!(REFUSED, "reason" => "header_timeout").increment(1);
        }
    }
}

/// `app` behind the web config's basic auth (all but `/healthz`), with its headers on
/// every response.
fn secured(
    app: Router,
    loaded: Arc<Loaded>,
    auth: Arc<Authenticator>,
) -> impl hyper::service::Service<
    hyper::Request<hyper::body::Incoming>,
    Response = axum::response::Response,
    Error = std::convert::Infallible,
    Future = impl Future<Output = Result<axum::response::Response, std::convert::Infallible>> + Send,
> + Clone
       + Send
       + 'static {
    hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        let (app, loaded, auth) = (app.clone(), loaded.clone(), auth.clone());
        async move {
            use axum::http::{header, HeaderName, HeaderValue, StatusCode};
            use tower::ServiceExt;
            // Liveness says nothing, and the kubelet's probes carry no credentials.
            let verdict = if req.uri().path() == "/healthz" {
                Verdict::Allowed
            } else {
                let credentials = req
                    .headers()
                    .get(header::AUTHORIZATION)
                    .map(|v| v.as_bytes().to_vec());
                auth.check(&loaded.users, credentials.as_deref()).await
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
                Verdict::Allowed => app.oneshot(req.map(axum::body::Body::new)).await?,
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
            for (name, value) in &loaded.headers {
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

/// One accepted connection: plain, or secured as the web config says (as it is now:
/// certificates and users change in place).
async fn accepted<IO>(
    stream: IO,
    app: Router,
    http: &hyper::server::conn::http1::Builder,
    watcher: hyper_util::server::graceful::Watcher,
    limits: &Limits,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Some(web_config) = &limits.web_config else {
        return connection(stream, TowerToHyperService::new(app), http, watcher).await;
    };
    let loaded = web_config.current();
    let service = secured(app, loaded.clone(), limits.auth.clone());
    let Some(tls) = &loaded.tls else {
        return connection(stream, service, http, watcher).await;
    };
    // The handshake gets the header's deadline.
    let acceptor = tokio_rustls::TlsAcceptor::from(tls.clone());
    match tokio::time::timeout(limits.header_timeout, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => connection(tls, service, http, watcher).await,
        Ok(Err(e)) => {
            counter!(REFUSED, "reason" => "tls").increment(1);
            tracing::debug!("TLS handshake: {e}");
        }
        Err(_) => counter!(REFUSED, "reason" => "header_timeout").increment(1),
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
        let (app, http, watcher) = (app.clone(), http.clone(), graceful.watcher());
        let limits = limits.clone();
        tokio::spawn(async move {
            accepted(stream, app, &http, watcher, &limits).await;
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
