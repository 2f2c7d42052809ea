//! `--web.config.file`: TLS, client certificates, basic auth and response headers in
//! the Prometheus exporter-toolkit format (what node_exporter and Prometheus read).
//! Parsed once; `web_config_watch` parses it again when it or a file it names changes,
//! so certificates and users change without a restart.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::Arc,
};

use anyhow::{bail, Context, Result};
use rustls::{
    crypto::ring as provider,
    pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer},
    server::{danger::ClientCertVerifier, WebPkiClientVerifier},
    RootCertStore, ServerConfig, SupportedCipherSuite,
};
use serde::Deserialize;

/// The file, as the exporter-toolkit documents it.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebConfig {
    #[serde(default)]
    tls_server_config: Option<TlsServerConfig>,
    #[serde(default)]
    http_server_config: Option<HttpServerConfig>,
    /// User name → bcrypt hash of the password.
    #[serde(default)]
    basic_auth_users: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TlsServerConfig {
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
    #[serde(default)]
    client_auth_type: Option<String>,
    client_ca_file: Option<PathBuf>,
    #[serde(default)]
    min_version: Option<String>,
    #[serde(default)]
    max_version: Option<String>,
    #[serde(default)]
    cipher_suites: Vec<String>,
    /// Go chooses by server preference when true; rustls always does.
    #[serde(default)]
    prefer_server_cipher_suites: Option<bool>,
    #[serde(default)]
    curve_preferences: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct HttpServerConfig {
    /// Headers added to every response.
    #[serde(default)]
    headers: BTreeMap<String, String>,
    /// HTTP/2 is not served; accepted for compatibility.
    #[serde(default)]
    http2: Option<bool>,
}

/// Headers the exporter-toolkit lets a web config set.
const HEADERS: &[&str] = &[
    "Strict-Transport-Security",
    "X-Content-Type-Options",
    "X-Frame-Options",
    "X-XSS-Protection",
    "Content-Security-Policy",
];

/// What a connection is served with, from one reading of the file.
pub struct Loaded {
    /// TLS, when `tls_server_config` is there.
    pub tls: Option<Arc<ServerConfig>>,
    /// User → bcrypt hash; empty: no authentication.
    pub users: BTreeMap<String, String>,
    /// Response headers.
    pub headers: Vec<(String, String)>,
    /// The file and those it names (certificate, key, client CA): a change to any is
    /// a new config.
    pub files: Vec<PathBuf>,
}

/// `Basic <base64(user:password)>` → (user, password).
pub fn basic_credentials(header: &[u8]) -> Option<(String, String)> {
    let encoded = header.strip_prefix(b"Basic ")?;
    let decoded = base64_decode(encoded)?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_string(), password.to_string()))
}

fn base64_decode(input: &[u8]) -> Option<Vec<u8>> {
    let value = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let input: Vec<u8> = input.iter().copied().filter(|&c| c != b'=').collect();
    let mut out = Vec::with_capacity(input.len() * 3 / 4);
    for chunk in input.chunks(4) {
        let mut n = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            n |= value(c)? << (18 - 6 * i);
        }
        let bytes = n.to_be_bytes();
        out.extend_from_slice(&bytes[1..chunk.len()]);
    }
    Some(out)
}

/// Reads and checks the file; every problem names the file and the key.
pub fn load(path: &Path) -> Result<Loaded> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("--web.config.file {}", path.display()))?;
    let config: WebConfig = serde_yaml_ng::from_str(&text)
        .with_context(|| format!("--web.config.file {}", path.display()))?;
    let at = |key: &str| format!("--web.config.file {}: {key}", path.display());
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut headers = Vec::new();
    if let Some(http) = &config.http_server_config {
        if http.http2 == Some(true) {
            tracing::debug!(
                "{}: HTTP/2 is not served; HTTP/1.1 is",
                at("http_server_config.http2")
            );
        }
        for (name, value) in &http.headers {
            if !HEADERS.iter().any(|h| h.eq_ignore_ascii_case(name)) {
                bail!(
                    "{}: {name:?} cannot be set (one of {})",
                    at("http_server_config.headers"),
                    HEADERS.join(", ")
                );
            }
            headers.push((name.clone(), value.clone()));
        }
    }
    for (user, hash) in &config.basic_auth_users {
        if bcrypt::verify("", hash).is_err() {
            bail!(
                "{}: the password of {user:?} is not a bcrypt hash",
                at("basic_auth_users")
            );
        }
    }
    let tls = match &config.tls_server_config {
        Some(t) => Some(Arc::new(tls(t, dir, &at)?)),
        None => None,
    };
    let mut files = vec![path.to_path_buf()];
    if let Some(t) = &config.tls_server_config {
        let named = [&t.cert_file, &t.key_file, &t.client_ca_file];
        files.extend(named.into_iter().flatten().map(|p| relative(dir, p)));
    }
    Ok(Loaded {
        tls,
        users: config.basic_auth_users,
        headers,
        files,
    })
}

/// A file path of the web config, relative to its directory.
fn relative(dir: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        dir.join(p)
    }
}

fn tls(t: &TlsServerConfig, dir: &Path, at: &dyn Fn(&str) -> String) -> Result<ServerConfig> {
    let (Some(cert), Some(key)) = (&t.cert_file, &t.key_file) else {
        bail!(
            "{}: cert_file and key_file are required",
            at("tls_server_config")
        );
    };
    let (cert, key) = (relative(dir, cert), relative(dir, key));
    let chain = CertificateDer::pem_file_iter(&cert)
        .and_then(|c| c.collect::<Result<Vec<_>, _>>())
        .map_err(|e| {
            anyhow::anyhow!(
                "{}: {}: {e}",
                at("tls_server_config.cert_file"),
                cert.display()
            )
        })?;
    if chain.is_empty() {
        bail!(
            "{}: {}: no certificate",
            at("tls_server_config.cert_file"),
            cert.display()
        );
    }
    let key = PrivateKeyDer::from_pem_file(&key).map_err(|e| {
        anyhow::anyhow!(
            "{}: {}: {e}",
            at("tls_server_config.key_file"),
            key.display()
        )
    })?;
    let versions = versions(t, at)?;
    let suites = cipher_suites(&t.cipher_suites, at)?;
    if !t.curve_preferences.is_empty() {
        tracing::debug!(
            "{}: rustls chooses curves itself",
            at("tls_server_config.curve_preferences")
        );
    }
    let _ = t.prefer_server_cipher_suites;
    let mut crypto = provider::default_provider();
    if !suites.is_empty() {
        // TLS 1.3 suites are not configurable (as in Go); TLS 1.2 ones as listed.
        crypto
            .cipher_suites
            .retain(|s| s.version() == &rustls::version::TLS13 || suites.contains(s));
    }
    let crypto = Arc::new(crypto);
    let verifier = client_verifier(t, dir, at, &crypto)?;
    let mut config = ServerConfig::builder_with_provider(crypto)
        .with_protocol_versions(&versions)
        .map_err(|e| anyhow::anyhow!("{}: {e}", at("tls_server_config")))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| anyhow::anyhow!("{}: {e}", at("tls_server_config.key_file")))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

fn versions(
    t: &TlsServerConfig,
    at: &dyn Fn(&str) -> String,
) -> Result<Vec<&'static rustls::SupportedProtocolVersion>> {
    let parse = |key: &str, v: &Option<String>, default: u8| -> Result<u8> {
        match v.as_deref() {
            None => Ok(default),
            Some("TLS12") => Ok(12),
            Some("TLS13") => Ok(13),
            Some("TLS10" | "TLS11") => bail!(
                "{}: {v:?}: only TLS12 and TLS13 are offered (TLS 1.0 and 1.1 are broken)",
                at(key)
            ),
            Some(other) => bail!(
                "{}: {other:?} is not one of TLS10, TLS11, TLS12, TLS13",
                at(key)
            ),
        }
    };
    let min = parse("tls_server_config.min_version", &t.min_version, 12)?;
    let max = parse("tls_server_config.max_version", &t.max_version, 13)?;
    if min > max {
        bail!("{}: above max_version", at("tls_server_config.min_version"));
    }
    Ok(
        [(12, &rustls::version::TLS12), (13, &rustls::version::TLS13)]
            .into_iter()
            .filter(|(v, _)| (min..=max).contains(v))
            .map(|(_, p)| p)
            .collect(),
    )
}

/// Go's names for the TLS 1.2 suites rustls has.
fn cipher_suites(
    names: &[String],
    at: &dyn Fn(&str) -> String,
) -> Result<Vec<SupportedCipherSuite>> {
    use provider::cipher_suite as cs;
    let known = [
        (
            "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
            cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        ),
        (
            "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
            cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        ),
        (
            "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305",
            cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
        ),
        (
            "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
            cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
        ),
        (
            "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
            cs::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        ),
        (
            "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
            cs::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
        ),
        (
            "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305",
            cs::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
        ),
        (
            "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
            cs::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
        ),
    ];
    names
        .iter()
        .map(|n| {
            known
                .iter()
                .find(|(k, _)| k == n)
                .map(|(_, s)| *s)
                .ok_or_else(|| {
                    let list: Vec<&str> = known.iter().map(|(k, _)| *k).collect();
                    anyhow::anyhow!(
                        "{}: {n:?} is not offered (one of {})",
                        at("tls_server_config.cipher_suites"),
                        list.join(", ")
                    )
                })
        })
        .collect()
}

/// `client_auth_type` as Go's crypto/tls names it.
fn client_verifier(
    t: &TlsServerConfig,
    dir: &Path,
    at: &dyn Fn(&str) -> String,
    crypto: &Arc<rustls::crypto::CryptoProvider>,
) -> Result<Arc<dyn ClientCertVerifier>> {
    let kind = t.client_auth_type.as_deref().unwrap_or("NoClientCert");
    let key = "tls_server_config.client_auth_type";
    let verify = match kind {
        "NoClientCert" => return Ok(WebPkiClientVerifier::no_client_auth()),
        "RequireAndVerifyClientCert" => true,
        "VerifyClientCertIfGiven" => false,
        // As Go: a certificate asked for (or required) and taken without verification.
        "RequestClientCert" | "RequireAnyClientCert" => {
            return Ok(Arc::new(AnyClientCert {
                required: kind == "RequireAnyClientCert",
                crypto: crypto.clone(),
            }))
        }
        other => bail!("{}: {other:?} is not one of NoClientCert, RequestClientCert, RequireAnyClientCert, VerifyClientCertIfGiven, RequireAndVerifyClientCert", at(key)),
    };
    let Some(ca) = &t.client_ca_file else {
        bail!("{}: {kind} needs client_ca_file", at(key));
    };
    let ca = relative(dir, ca);
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(&ca).map_err(|e| {
        anyhow::anyhow!(
            "{}: {}: {e}",
            at("tls_server_config.client_ca_file"),
            ca.display()
        )
    })? {
        let c = c.map_err(|e| {
            anyhow::anyhow!(
                "{}: {}: {e}",
                at("tls_server_config.client_ca_file"),
                ca.display()
            )
        })?;
        roots.add(c).map_err(|e| {
            anyhow::anyhow!(
                "{}: {}: {e}",
                at("tls_server_config.client_ca_file"),
                ca.display()
            )
        })?;
    }
    let builder = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), crypto.clone());
    let builder = if verify {
        builder
    } else {
        builder.allow_unauthenticated()
    };
    builder
        .build()
        .map_err(|e| anyhow::anyhow!("{}: {e}", at("tls_server_config.client_ca_file")))
}

/// Go's `RequestClientCert` and `RequireAnyClientCert`: any certificate is taken
/// (its signature over the handshake still checked), none is verified against a CA.
#[derive(Debug)]
struct AnyClientCert {
    required: bool,
    crypto: Arc<rustls::crypto::CryptoProvider>,
}

impl ClientCertVerifier for AnyClientCert {
    fn client_auth_mandatory(&self) -> bool {
        self.required
    }

    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::server::danger::ClientCertVerified, rustls::Error> {
        Ok(rustls::server::danger::ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.crypto.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.crypto.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.crypto
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tls_config(yaml: &str) -> TlsServerConfig {
        serde_yaml_ng::from_str(yaml).unwrap()
    }

    #[test]
    fn versions_suites_and_client_auth_as_go_names_them() {
        let at = |k: &str| format!("web.yml: {k}");
        let v = versions(&tls_config("min_version: TLS13"), &at).unwrap();
        assert_eq!(v, vec![&rustls::version::TLS13]);
        assert_eq!(versions(&tls_config("{}"), &at).unwrap().len(), 2);
        let e = versions(&tls_config("min_version: TLS10"), &at)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("web.yml: tls_server_config.min_version")
                && e.contains("only TLS12 and TLS13"),
            "{e}"
        );
        assert!(versions(&tls_config("min_version: TLS13\nmax_version: TLS12"), &at).is_err());
        let suites = ["TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256".to_string()];
        assert_eq!(cipher_suites(&suites, &at).unwrap().len(), 1);
        let e = cipher_suites(&["TLS_RSA_WITH_RC4_128_SHA".to_string()], &at)
            .unwrap_err()
            .to_string();
        assert!(e.contains("is not offered"), "{e}");
        let crypto = Arc::new(provider::default_provider());
        let e = client_verifier(
            &tls_config("client_auth_type: RequireAndVerifyClientCert"),
            Path::new("."),
            &at,
            &crypto,
        )
        .err()
        .unwrap()
        .to_string();
        assert!(e.contains("needs client_ca_file"), "{e}");
        assert!(client_verifier(
            &tls_config("client_auth_type: Sometimes"),
            Path::new("."),
            &at,
            &crypto
        )
        .is_err());
        let any = client_verifier(
            &tls_config("client_auth_type: RequireAnyClientCert"),
            Path::new("."),
            &at,
            &crypto,
        )
        .unwrap();
        assert!(any.client_auth_mandatory());
        let request = client_verifier(
            &tls_config("client_auth_type: RequestClientCert"),
            Path::new("."),
            &at,
            &crypto,
        )
        .unwrap();
        assert!(!request.client_auth_mandatory() && request.offer_client_auth());
    }

    proptest::proptest! {
        /// Authorization headers come from the network: any bytes are refused or
        /// decoded, never a panic; what base64 encodes decodes back.
        #[test]
        fn any_authorization_header_is_safe(header in proptest::collection::vec(proptest::num::u8::ANY, 0..80)) {
            let _ = basic_credentials(&header);
            let mut basic = b"Basic ".to_vec();
            basic.extend(&header);
            let _ = basic_credentials(&basic);
        }

        #[test]
        fn base64_round_trips(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..64)) {
            proptest::prop_assert_eq!(base64_decode(base64_encode(&bytes).as_bytes()), Some(bytes));
        }
    }

    fn base64_encode(bytes: &[u8]) -> String {
        const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let n = chunk
                .iter()
                .enumerate()
                .fold(0u32, |n, (i, &b)| n | (u32::from(b) << (16 - 8 * i)));
            for i in 0..=chunk.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            }
            out.push_str(&"="[..usize::from(chunk.len() < 3)].repeat(3 - chunk.len()));
        }
        out
    }

    #[test]
    fn basic_credentials_decode() {
        // "prometheus:secret"
        assert_eq!(
            basic_credentials(b"Basic cHJvbWV0aGV1czpzZWNyZXQ="),
            Some(("prometheus".into(), "secret".into()))
        );
        assert_eq!(basic_credentials(b"Bearer x"), None);
        assert_eq!(basic_credentials(b"Basic !!!"), None);
    }
}
