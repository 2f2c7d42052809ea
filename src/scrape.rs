//! `/metrics`: the page rendered on a blocking thread, in chunks and gzip as asked: the
//! streams' series, every table read now, the exporter's own metrics.

use std::sync::Arc;

use axum::{extract::State, http::header, response::IntoResponse};
use bytes::Bytes;
use kube_ebpf_exporter::pipeline::Stream;

use crate::{app::AppState, telemetry};

/// `/metrics`: rendered on a blocking thread and streamed in chunks, so a scrape of
/// many series never holds the whole page.
pub async fn metrics(
    State(s): State<Arc<AppState>>,
    headers: axum::http::HeaderMap,
) -> axum::response::Response {
    let Some(slot) = s.scrapes.try_take() else {
        return (
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "too many concurrent scrapes (web.max_requests)\n",
        )
            .into_response();
    };
    let gzip = accepts_gzip(&headers);
    let format = aggregate::Format::negotiate(
        headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or(""),
    );
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(4);
    tokio::task::spawn_blocking(move || {
        let _held = slot;
        // A client that went away just stops reading.
        let send = |bytes: Vec<u8>| {
            let _ = tx.blocking_send(Bytes::from(bytes));
        };
        if gzip {
            // Each chunk is flushed, so the page streams compressed as it renders.
            let mut z = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            render_page(&s, format, &mut |chunk: Vec<u8>| {
                use std::io::Write;
                let _ = z.write_all(&chunk).and_then(|()| z.flush());
                send(std::mem::take(z.get_mut()));
            });
            if let Ok(rest) = z.finish() {
                send(rest);
            }
        } else {
            render_page(&s, format, &mut |chunk: Vec<u8>| send(chunk));
        }
    });
    let body = axum::body::Body::from_stream(tokio_stream::StreamExt::map(
        tokio_stream::wrappers::ReceiverStream::new(rx),
        Ok::<_, std::convert::Infallible>,
    ));
    let mut response = ([(header::CONTENT_TYPE, format.content_type())], body).into_response();
    if gzip {
        response.headers_mut().insert(
            header::CONTENT_ENCODING,
            axum::http::HeaderValue::from_static("gzip"),
        );
    }
    response
}

/// Whether `Accept-Encoding` takes gzip (Prometheus always sends it).
fn accepts_gzip(headers: &axum::http::HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|coding| {
            let mut parts = coding.split(';').map(str::trim);
            parts
                .next()
                .is_some_and(|name| name.eq_ignore_ascii_case("gzip"))
                && !parts.any(|p| p.replace(' ', "") == "q=0")
        })
}

/// Renders the metrics page in `format`, in chunks: the streams' series, every table
/// read now, the exporter's own metrics.
fn render_page(s: &AppState, format: aggregate::Format, emit: &mut dyn FnMut(Vec<u8>)) {
    let mut out = aggregate::PageWriter::chunked(format, 256 * 1024, &mut *emit);
    let gone = s.enricher.expire(s.series_grace);
    if !gone.is_empty() {
        s.registry.expire(&gone);
    }
    s.registry.render(&mut out);
    let running = s.running.lock();
    for r in running.iter() {
        let sink = s.sink.as_ref().filter(|k| k.wants(&r.name));
        for (t, &split) in r.plan.tables.iter().zip(&r.split_cpus) {
            match r.object.read_table(&t.map, split) {
                Ok(ingest::TableContents { mut entries, fill }) => {
                    if let Some(fill) = fill {
                        s.telemetry.table_fill(&r.name, &t.map, fill);
                    }
                    r.expire_removed(t, split, &mut entries, &s.enricher, s.series_grace);
                    let rows = t.rows(&entries);
                    t.render(&rows, &mut out);
                    if let Some(sink) = sink {
                        sink.write_table(&r.name, &s.node, t, &rows);
                    }
                }
                Err(e) => {
                    tracing::warn!(config = %r.name, "{e}");
                    s.telemetry.table_read_error(&r.name, &t.map);
                }
            }
        }
    }
    let streams: Vec<Stream> = s.streams.snapshot().iter().flatten().cloned().collect();
    s.telemetry.update(
        &running,
        &s.failures.lock(),
        &streams,
        &s.pipeline,
        &s.registry,
        s.tap.as_deref(),
    );
    s.telemetry.sources(&s.enricher.source_health());
    if let Some(spans) = &s.spans {
        telemetry::update_spans(spans.stats());
    }
    out.push_text(&s.telemetry.render());
    let rest = out.finish();
    emit(rest);
}
