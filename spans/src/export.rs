//! The OTLP span exporter, configured as every OpenTelemetry SDK is: from the
//! `OTEL_*` environment (endpoint, protocol, headers, timeout, TLS, `OTEL_SDK_DISABLED`).

use std::{sync::Arc, time::Duration};

use opentelemetry_otlp::{SpanExporter, WithHttpConfig, WithTonicConfig};

/// Why the exporter could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// A protocol this build does not speak.
    #[error("{var}={value:?}: the protocols are grpc and http/protobuf")]
    Protocol {
        /// The variable that named it.
        var: &'static str,
        /// What it said.
        value: String,
    },
    /// A certificate or key file named by the environment.
    #[error("{var}={path:?}: {source}")]
    File {
        /// The variable that named it.
        var: &'static str,
        /// The file.
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// A certificate or key that does not parse.
    #[error("{var}: {reason}")]
    Tls {
        /// The variable that named it.
        var: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The OTLP crate refused the configuration (a malformed endpoint, say).
    #[error("OTLP exporter: {0}")]
    Build(#[from] opentelemetry_otlp::ExporterBuildError),
    /// The stage's thread or runtime could not start.
    #[error("span stage: {0}")]
    Thread(#[from] std::io::Error),
}

/// Transport, as `OTEL_EXPORTER_OTLP_PROTOCOL` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// gRPC (port 4317 by convention).
    Grpc,
    /// Protobuf over HTTP POST to `<endpoint>/v1/traces` (port 4318); the default.
    HttpProtobuf,
}

/// Why spans go nowhere (said once at start-up).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Nowhere {
    /// `OTEL_SDK_DISABLED=true`.
    #[error("OTEL_SDK_DISABLED is true")]
    Disabled,
    /// `OTEL_TRACES_EXPORTER=none`.
    #[error("OTEL_TRACES_EXPORTER is none")]
    NoExporter,
    /// No endpoint variable.
    #[error("neither OTEL_EXPORTER_OTLP_ENDPOINT nor OTEL_EXPORTER_OTLP_TRACES_ENDPOINT is set")]
    NoEndpoint,
}

/// The first of the traces-specific variable and the general one that `env` has set.
fn var_in(
    env: impl Fn(&str) -> Option<String>,
    traces: &'static str,
    general: &'static str,
) -> Option<(&'static str, String)> {
    [traces, general]
        .into_iter()
        .find_map(|v| env(v).filter(|s| !s.is_empty()).map(|s| (v, s)))
}

/// [`var_in`] the process's environment.
fn var(traces: &'static str, general: &'static str) -> Option<(&'static str, String)> {
    var_in(|v| std::env::var(v).ok(), traces, general)
}

/// Where spans go, or why nowhere.
///
/// # Errors
/// Why nowhere: the SDK or the exporter switched off, or no endpoint.
pub fn destination() -> Result<(Protocol, String), Nowhere> {
    destination_in(|v| std::env::var(v).ok())
}

/// [`destination`] in the environment `env`.
fn destination_in(env: impl Fn(&str) -> Option<String>) -> Result<(Protocol, String), Nowhere> {
    if env("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
        return Err(Nowhere::Disabled);
    }
    if env("OTEL_TRACES_EXPORTER").is_some_and(|v| v == "none") {
        return Err(Nowhere::NoExporter);
    }
    let (_, endpoint) = var_in(
        &env,
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
    )
    .ok_or(Nowhere::NoEndpoint)?;
    let protocol = match var_in(
        &env,
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
    ) {
        Some((_, p)) if p == "grpc" => Protocol::Grpc,
        // http/protobuf, the default; anything else `exporter` refuses, naming it.
        _ => Protocol::HttpProtobuf,
    };
    Ok((protocol, endpoint))
}

fn read(var: &'static str, path: &str) -> Result<Vec<u8>, ExportError> {
    std::fs::read(path).map_err(|source| ExportError::File {
        var,
        path: path.into(),
        source,
    })
}

/// PEM files the TLS variables name: CA, client certificate, client key.
struct TlsFiles {
    ca: Option<Vec<u8>>,
    identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl TlsFiles {
    fn from_env() -> Result<Self, ExportError> {
        let file = |traces, general| var(traces, general).map(|(v, p)| read(v, &p)).transpose();
        let ca = file(
            "OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE",
            "OTEL_EXPORTER_OTLP_CERTIFICATE",
        )?;
        let cert = file(
            "OTEL_EXPORTER_OTLP_TRACES_CLIENT_CERTIFICATE",
            "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE",
        )?;
        let key = file(
            "OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY",
            "OTEL_EXPORTER_OTLP_CLIENT_KEY",
        )?;
        Ok(Self {
            ca,
            identity: cert.zip(key),
        })
    }

    /// A rustls client config: the CA file's certificates, else the system's roots.
    fn rustls(&self) -> Result<rustls::ClientConfig, ExportError> {
        use rustls_pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
        let tls = |reason: String| ExportError::Tls {
            var: "OTEL_EXPORTER_OTLP_CERTIFICATE",
            reason,
        };
        let mut roots = rustls::RootCertStore::empty();
        match &self.ca {
            Some(pem) => {
                for c in CertificateDer::pem_slice_iter(pem) {
                    roots
                        .add(c.map_err(|e| tls(e.to_string()))?)
                        .map_err(|e| tls(e.to_string()))?;
                }
            }
            None => {
                let native = rustls_native_certs::load_native_certs();
                roots.add_parsable_certificates(native.certs);
            }
        }
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| tls(e.to_string()))?
        .with_root_certificates(roots);
        let client = |reason: String| ExportError::Tls {
            var: "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE",
            reason,
        };
        match &self.identity {
            Some((cert, key)) => {
                let chain = CertificateDer::pem_slice_iter(cert)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| client(e.to_string()))?;
                let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| client(e.to_string()))?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| client(e.to_string()))
            }
            None => Ok(builder.with_no_client_auth()),
        }
    }
}

/// The export timeout the SDKs read (milliseconds, default 10 s).
fn timeout() -> Duration {
    var(
        "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
        "OTEL_EXPORTER_OTLP_TIMEOUT",
    )
    .and_then(|(_, ms)| ms.parse().ok())
    .map_or(Duration::from_secs(10), Duration::from_millis)
}

/// The exporter for `protocol`; endpoint, headers, timeout and compression are read
/// from the environment by the OTLP crate, TLS files here. Needs a Tokio runtime to
/// export on.
///
/// # Errors
/// An unknown protocol, unreadable or malformed TLS files, a malformed endpoint.
pub(crate) fn exporter(protocol: Protocol) -> Result<SpanExporter, ExportError> {
    if let Some((var, value)) = var(
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
    ) {
        if value != "grpc" && value != "http/protobuf" {
            return Err(ExportError::Protocol { var, value });
        }
    }
    let files = TlsFiles::from_env()?;
    let exporter = match protocol {
        Protocol::Grpc => {
            let mut tls = tonic::transport::ClientTlsConfig::new().with_native_roots();
            if let Some(ca) = &files.ca {
                tls = tls.ca_certificate(tonic::transport::Certificate::from_pem(ca));
            }
            if let Some((cert, key)) = &files.identity {
                tls = tls.identity(tonic::transport::Identity::from_pem(cert, key));
            }
            let endpoint = var(
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "OTEL_EXPORTER_OTLP_ENDPOINT",
            );
            let builder = SpanExporter::builder().with_tonic();
            // Plain http:// endpoints stay plain; tonic refuses TLS settings for them.
            if endpoint.is_some_and(|(_, e)| e.starts_with("https:")) {
                builder.with_tls_config(tls).build()?
            } else {
                builder.build()?
            }
        }
        Protocol::HttpProtobuf => {
            let https = hyper_rustls::HttpsConnectorBuilder::new()
                .with_tls_config(files.rustls()?)
                .https_or_http()
                .enable_http1()
                .build();
            let client = opentelemetry_http::hyper::HyperClient::new(https, timeout(), None);
            SpanExporter::builder()
                .with_http()
                .with_http_client(client)
                .build()?
        }
    };
    Ok(exporter)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dest(vars: &[(&str, &str)]) -> Result<(Protocol, String), Nowhere> {
        destination_in(|v| {
            vars.iter()
                .find(|(k, _)| *k == v)
                .map(|(_, x)| x.to_string())
        })
    }

    #[test]
    fn the_environment_decides_where_spans_go() {
        let e = "OTEL_EXPORTER_OTLP_ENDPOINT";
        assert_eq!(dest(&[]), Err(Nowhere::NoEndpoint));
        assert_eq!(
            dest(&[(e, "http://c:4318")]),
            Ok((Protocol::HttpProtobuf, "http://c:4318".into())),
            "http/protobuf by default"
        );
        let grpc = [
            (e, "http://c:4317"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ];
        assert_eq!(dest(&grpc).unwrap().0, Protocol::Grpc);
        let traces = [
            (e, "http://c"),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://t"),
            ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "grpc"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
        ];
        assert_eq!(
            dest(&traces),
            Ok((Protocol::Grpc, "http://t".into())),
            "the traces variables first"
        );
        assert_eq!(
            dest(&[(e, "http://c"), ("OTEL_SDK_DISABLED", "TRUE")]),
            Err(Nowhere::Disabled)
        );
        assert_eq!(
            dest(&[(e, "http://c"), ("OTEL_TRACES_EXPORTER", "none")]),
            Err(Nowhere::NoExporter)
        );
    }
}
