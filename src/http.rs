//! What the exporter serves: `/metrics`, `/healthz`, the event stream (`/events`, on
//! the metrics listener or a local one of its own) and `POST /-/reload`.

use std::{path::Path, sync::Arc, time::Duration};

use anyhow::{Context as _, Result};
use axum::{
    extract::{RawQuery, State},
    http::header,
    response::IntoResponse,
    routing::get,
    Router,
};
use kube_ebpf_exporter::{config, web_config_watch::WebConfigWatch};

use crate::{
    app::{self, AppState},
    scrape,
    settings::Settings,
    units, web,
};

/// Serves metrics (and the event stream, and reloads when enabled) until SIGTERM or
/// ^C, then stops the stages in order.
pub async fn serve(
    settings: &Settings,
    listen: config::TapListen,
    web_config: Option<Arc<WebConfigWatch>>,
    state: Arc<AppState>,
) -> Result<()> {
    let (config, addr) = (&settings.config, settings.listen);
    let router = routes(settings, &listen, state.clone());
    let tap_server = start_tap_server(&listen, &state).await;
    let reloads = app::spawn_reloads(&settings.reload, state.clone());
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| {
        format!(
            "{}: web.listen_address: cannot listen on {addr}",
            settings.source
        )
    })?;
    tracing::info!(%addr, node = %state.node, path = %config.web.telemetry_path, "serving metrics");
    let serving = serving_runtime().context("starting the HTTP serving thread")?;
    // Strangers' connections are accepted and handshaken on this thread (threads it
    // starts from now on inherit this): a burst of them yields the CPU to a scrape.
    // SAFETY: lowers the calling thread's own priority; no pointers.
    unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as u32, 10) };
    let limits = web::Limits {
        web_config,
        auth: Arc::default(),
        max_connections: config.web.max_connections,
        header_timeout: Duration::from_secs(config.web.header_timeout_seconds),
        shutdown_timeout: Duration::from_secs(5),
        serving: Some(serving.handle().clone()),
    };
    web::serve(listener, router, limits, terminated()).await;
    // Connections have finished or been given up on: nothing there is waited for.
    serving.shutdown_background();
    tracing::info!("shutting down");
    reloads.abort();
    app::shut_down(state, tap_server).await;
    Ok(())
}

/// The thread that serves connections once they are secured. Accepts and TLS
/// handshakes stay on the main thread, so a flood of strangers' connections never
/// queues ahead of an authorised scrape's request.
fn serving_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("http-serve")
        .enable_all()
        .build()
}

/// The metrics listener's routes.
fn routes(settings: &Settings, listen: &config::TapListen, state: Arc<AppState>) -> Router {
    let mut router = Router::new()
        .route(&settings.config.web.telemetry_path, get(scrape::metrics))
        .route("/healthz", get(|| async { "ok\n" }));
    if state.tap.is_some() && *listen == config::TapListen::Metrics {
        router = router.route("/events", get(events));
    }
    if settings.reload.endpoint {
        router = router.route("/-/reload", axum::routing::post(reload_endpoint));
    }
    router.with_state(state)
}

/// Completes at SIGTERM or ^C.
async fn terminated() {
    let mut term =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).unwrap();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term.recv() => {},
    }
}

/// The event stream's own listener, local only, unless it is served on the metrics
/// listener (`tap.listen`); it stops with the stages.
async fn start_tap_server(
    listen: &config::TapListen,
    state: &Arc<AppState>,
) -> Option<tokio::task::JoinHandle<()>> {
    if state.tap.is_none() || *listen == config::TapListen::Metrics {
        return None;
    }
    let events = Router::new()
        .route("/events", get(events))
        .with_state(state.clone());
    let mut stop = state.shutdown.subscribe();
    serve_tap(listen, events, async move {
        let _ = stop.wait_for(|stopped| *stopped).await;
    })
    .await
}

/// `POST /-/reload` (with --web.enable-lifecycle): 200 with what changed, or 500 with
/// what failed (the old versions of failed configs keep running).
async fn reload_endpoint(State(s): State<Arc<AppState>>) -> axum::response::Response {
    let result = tokio::task::spawn_blocking(move || units::reload(&s)).await;
    match result {
        Ok(Ok(report)) if report.failed.is_empty() => {
            tracing::info!(trigger = "/-/reload", "config reload: {}", report.summary());
            (
                axum::http::StatusCode::OK,
                format!("{}\n", report.summary()),
            )
                .into_response()
        }
        Ok(Ok(report)) => {
            tracing::error!(trigger = "/-/reload", "config reload: {}", report.summary());
            (
                axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                format!("{}\n", report.summary()),
            )
                .into_response()
        }
        Ok(Err(e)) => (
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            format!("reload failed: {e:#}\n"),
        )
            .into_response(),
        Err(e) => (
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            format!("reload failed: {e}\n"),
        )
            .into_response(),
    }
}

/// `/events`: NDJSON of live events matching the query's filters; 400 on a bad filter.
async fn events(
    State(s): State<Arc<AppState>>,
    RawQuery(query): RawQuery,
) -> axum::response::Response {
    let tap = s.tap.as_ref().expect("route exists only with a tap");
    let filter = match tap::Filter::parse(query.as_deref().unwrap_or(""), &tap.streams()) {
        Ok(f) => f,
        Err(e) => {
            return (
                axum::http::StatusCode::BAD_REQUEST,
                format!("bad filter: {e}\n"),
            )
                .into_response()
        }
    };
    let Some(slot) = s.subscribers.try_take() else {
        return (
            axum::http::StatusCode::TOO_MANY_REQUESTS,
            "too many event subscribers (tap.max_subscribers)\n",
        )
            .into_response();
    };
    let rx = tap.subscribe_http(filter);
    // The slot is held as long as the stream is.
    let body = axum::body::Body::from_stream(tokio_stream::StreamExt::map(
        tokio_stream::wrappers::ReceiverStream::new(rx),
        move |line| {
            let _held = &slot;
            Ok::<_, std::convert::Infallible>(line)
        },
    ));
    ([(header::CONTENT_TYPE, "application/x-ndjson")], body).into_response()
}

/// Serves the event stream on its own local listener until `shutdown`; `None` (logged)
/// when it cannot listen: the exporter serves metrics without it.
async fn serve_tap(
    listen: &config::TapListen,
    app: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Option<tokio::task::JoinHandle<()>> {
    // Subscribers are held streams: at shutdown they get a second, not five.
    let limits = web::Limits {
        web_config: None,
        auth: Arc::default(),
        max_connections: 64,
        header_timeout: Duration::from_secs(10),
        shutdown_timeout: Duration::from_secs(1),
        serving: None,
    };
    let bound = match listen {
        config::TapListen::Unix(path) => bind_unix(path).map(|l| {
            let path = path.clone();
            tokio::spawn(async move {
                web::serve(l, app, limits, shutdown).await;
                // No socket is left for `tap` to find once nobody serves it.
                let _ = std::fs::remove_file(path);
            })
        }),
        config::TapListen::Loopback(addr) => tokio::net::TcpListener::bind(addr)
            .await
            .map(|l| tokio::spawn(web::serve(l, app, limits, shutdown))),
        config::TapListen::Metrics => unreachable!("served on the metrics listener"),
    };
    match bound {
        Ok(task) => {
            tracing::info!(at = ?listen, "serving the event stream (/events)");
            Some(task)
        }
        Err(e) => {
            tracing::warn!(at = ?listen, "tap.listen: cannot serve the event stream: {e}");
            None
        }
    }
}

/// A unix socket at `path` that only this user can connect to (a stale one from an
/// earlier run is replaced).
fn bind_unix(path: &Path) -> std::io::Result<tokio::net::UnixListener> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let listener = tokio::net::UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}
