//! An OTLP trace receiver for tests, built from the official protocol definitions
//! (the `opentelemetry-proto` crate): gRPC (`TraceService/Export`) or HTTP/protobuf
//! (`POST /v1/traces`), on a loopback port, keeping every span it is sent.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{Arc, Condvar, Mutex},
    time::{Duration, Instant},
};

use opentelemetry_proto::tonic::{
    collector::trace::v1::{
        trace_service_server::{TraceService, TraceServiceServer},
        ExportTraceServiceRequest, ExportTraceServiceResponse,
    },
    common::v1::{any_value::Value, KeyValue},
};
use prost::Message;

impl std::fmt::Display for Span {
    /// Tab-separated: service, name, trace id, span id, parent span id (`-` for none),
    /// start and end (Unix ns), then `key=value` attributes joined by `;`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hex = |id: &[u8]| id.iter().map(|b| format!("{b:02x}")).collect::<String>();
        let parent = if self.parent_span_id.is_empty() {
            "-".into()
        } else {
            hex(&self.parent_span_id)
        };
        let attributes: Vec<String> = self
            .attributes
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        write!(
            f,
            "{}\t{}\t{}\t{}\t{parent}\t{}\t{}\t{}",
            self.resource.get("service.name").map_or("", String::as_str),
            self.name,
            hex(&self.trace_id),
            hex(&self.span_id),
            self.start_ns,
            self.end_ns,
            attributes.join(";")
        )
    }
}

/// One span as received, with its resource's attributes.
#[derive(Debug, Clone)]
pub struct Span {
    pub resource: BTreeMap<String, String>,
    pub name: String,
    pub trace_id: Vec<u8>,
    pub span_id: Vec<u8>,
    pub parent_span_id: Vec<u8>,
    pub start_ns: u64,
    pub end_ns: u64,
    pub attributes: BTreeMap<String, String>,
}

fn strings(kvs: &[KeyValue]) -> BTreeMap<String, String> {
    kvs.iter()
        .map(|kv| {
            let v = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(Value::StringValue(s)) => s.clone(),
                Some(other) => format!("{other:?}"),
                None => String::new(),
            };
            (kv.key.clone(), v)
        })
        .collect()
}

/// Spans received (and a signal for each arrival), and the last HTTP request's headers.
#[derive(Clone, Default)]
struct Store(
    Arc<(Mutex<Vec<Span>>, Condvar)>,
    Arc<Mutex<Vec<(String, String)>>>,
);

impl Store {
    fn keep(&self, request: ExportTraceServiceRequest) {
        let mut spans = self.0 .0.lock().unwrap();
        for rs in request.resource_spans {
            let resource = strings(&rs.resource.map(|r| r.attributes).unwrap_or_default());
            for ss in rs.scope_spans {
                for s in ss.spans {
                    spans.push(Span {
                        resource: resource.clone(),
                        name: s.name,
                        trace_id: s.trace_id,
                        span_id: s.span_id,
                        parent_span_id: s.parent_span_id,
                        start_ns: s.start_time_unix_nano,
                        end_ns: s.end_time_unix_nano,
                        attributes: strings(&s.attributes),
                    });
                }
            }
        }
        self.0 .1.notify_all();
    }
}

#[tonic::async_trait]
impl TraceService for Store {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        *self.1.lock().unwrap() = request
            .metadata()
            .iter()
            .filter_map(|kv| match kv {
                tonic::metadata::KeyAndValueRef::Ascii(k, v) => {
                    Some((k.to_string(), v.to_str().ok()?.to_string()))
                }
                tonic::metadata::KeyAndValueRef::Binary(..) => None,
            })
            .collect();
        self.keep(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// A running receiver; stops with the test process.
pub struct Receiver {
    /// What `OTEL_EXPORTER_OTLP_ENDPOINT` should say.
    pub endpoint: String,
    /// What `OTEL_EXPORTER_OTLP_PROTOCOL` should say.
    pub protocol: &'static str,
    store: Store,
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
}

impl Receiver {
    /// A gRPC receiver on a free loopback port.
    pub fn grpc() -> Self {
        Self::grpc_on("127.0.0.1:0")
    }

    /// A gRPC receiver on `addr`.
    pub fn grpc_on(addr: &str) -> Self {
        Self::serve_grpc(addr, None)
    }

    /// A gRPC receiver over TLS on a free loopback port, with the certificate chain and
    /// key in PEM files `cert` and `key`.
    pub fn grpc_tls(cert: &std::path::Path, key: &std::path::Path) -> Self {
        let identity = tonic::transport::Identity::from_pem(
            std::fs::read(cert).unwrap(),
            std::fs::read(key).unwrap(),
        );
        let mut r = Self::serve_grpc(
            "127.0.0.1:0",
            Some(tonic::transport::ServerTlsConfig::new().identity(identity)),
        );
        r.endpoint = r.endpoint.replace("http://", "https://");
        r
    }

    fn serve_grpc(addr: &str, tls: Option<tonic::transport::ServerTlsConfig>) -> Self {
        let store = Store::default();
        let listener = std::net::TcpListener::bind(addr).unwrap();
        let addr = listener.local_addr().unwrap();
        listener.set_nonblocking(true).unwrap();
        let service = TraceServiceServer::new(store.clone());
        std::thread::spawn(move || {
            runtime().block_on(async move {
                let incoming =
                    tokio_stream_of(tokio::net::TcpListener::from_std(listener).unwrap());
                let mut server = tonic::transport::Server::builder();
                if let Some(tls) = tls {
                    server = server.tls_config(tls).unwrap();
                }
                server
                    .add_service(service)
                    .serve_with_incoming(incoming)
                    .await
                    .unwrap();
            })
        });
        Self {
            endpoint: format!("http://{addr}"),
            protocol: "grpc",
            store,
        }
    }

    /// An HTTP/protobuf receiver on a free loopback port.
    pub fn http() -> Self {
        Self::http_on("127.0.0.1:0")
    }

    /// An HTTP/protobuf receiver on `addr`.
    pub fn http_on(addr: &str) -> Self {
        Self::serve_http(addr, None)
    }

    /// An HTTPS/protobuf receiver on a free loopback port, with the certificate chain
    /// and key in PEM files `cert` and `key`.
    pub fn https(cert: &std::path::Path, key: &std::path::Path) -> Self {
        use rustls_pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
        let chain = CertificateDer::pem_file_iter(cert)
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_file(key).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
        let mut r = Self::serve_http("127.0.0.1:0", Some(Arc::new(config)));
        r.endpoint = r.endpoint.replace("http://", "https://");
        r
    }

    fn serve_http(addr: &str, tls: Option<Arc<rustls::ServerConfig>>) -> Self {
        let store = Store::default();
        let listener = std::net::TcpListener::bind(addr).unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        listener.set_nonblocking(true).unwrap();
        let kept = store.clone();
        std::thread::spawn(move || {
            runtime().block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                loop {
                    let (stream, _) = listener.accept().await.unwrap();
                    let (kept, tls) = (kept.clone(), tls.clone());
                    tokio::spawn(async move {
                        let service = hyper::service::service_fn(move |req| {
                            let kept = kept.clone();
                            async move { Ok::<_, std::convert::Infallible>(answer(req, &kept).await) }
                        });
                        let http = hyper::server::conn::http1::Builder::new();
                        match tls {
                            Some(tls) => {
                                let Ok(stream) = tokio_rustls::TlsAcceptor::from(tls).accept(stream).await else {
                                    return;
                                };
                                let _ = http.serve_connection(hyper_util::rt::TokioIo::new(stream), service).await;
                            }
                            None => {
                                let _ = http.serve_connection(hyper_util::rt::TokioIo::new(stream), service).await;
                            }
                        }
                    });
                }
            })
        });
        Self {
            endpoint: format!("http://{addr}"),
            protocol: "http/protobuf",
            store,
        }
    }

    /// The headers (gRPC metadata) of the last request.
    pub fn headers(&self) -> Vec<(String, String)> {
        self.store.1.lock().unwrap().clone()
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<Span> {
        self.store.0 .0.lock().unwrap().clone()
    }

    /// The spans after the first `seen`, once there are any (waits without polling).
    pub fn spans_after(&self, seen: usize) -> Vec<Span> {
        let (spans, arrived) = &*self.store.0;
        let spans = arrived
            .wait_while(spans.lock().unwrap(), |s| s.len() <= seen)
            .unwrap();
        spans[seen..].to_vec()
    }

    /// Waits (up to `timeout`) until `done` holds for the spans received, then returns them.
    pub fn wait(&self, timeout: Duration, done: impl Fn(&[Span]) -> bool) -> Vec<Span> {
        let deadline = Instant::now() + timeout;
        loop {
            let spans = self.spans();
            if done(&spans) || Instant::now() >= deadline {
                return spans;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

async fn answer(
    req: hyper::Request<hyper::body::Incoming>,
    store: &Store,
) -> hyper::Response<http_body_util::Full<bytes::Bytes>> {
    use http_body_util::BodyExt;
    *store.1.lock().unwrap() = req
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or_default().to_string()))
        .collect();
    let status = if req.method() != hyper::Method::POST || req.uri().path() != "/v1/traces" {
        404
    } else {
        match req.into_body().collect().await.map(|b| b.to_bytes()) {
            Ok(body) => match ExportTraceServiceRequest::decode(body) {
                Ok(r) => {
                    store.keep(r);
                    200
                }
                Err(_) => 400,
            },
            Err(_) => 400,
        }
    };
    let body = ExportTraceServiceResponse::default().encode_to_vec();
    hyper::Response::builder()
        .status(status)
        .header("content-type", "application/x-protobuf")
        .body(http_body_util::Full::new(bytes::Bytes::from(body)))
        .unwrap()
}

/// The listener's connections as the stream tonic serves.
fn tokio_stream_of(
    listener: tokio::net::TcpListener,
) -> impl futures::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    futures::stream::unfold(listener, |l| async move {
        let next = l.accept().await.map(|(s, _)| s);
        Some((next, l))
    })
}
