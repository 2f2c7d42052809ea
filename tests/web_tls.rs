//! `--web.config.file` in the exporter-toolkit format, with real clients: curl over TLS
//! (the right CA, a wrong one, client certificates), basic auth (right, wrong, unknown
//! user), certificates and users replaced in place without a restart, and Debian's
//! Prometheus scraping with `tls_config` and `basic_auth`. Needs root and BPF, openssl,
//! curl and prometheus.

#[macro_use]
mod common;

use std::{
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use common::{
    free_port, get,
    tls::{ca, cert},
    TempDir,
};

/// `curl` with `args` against `url`: (exit code, HTTP status, headers and body).
fn curl(args: &[&str], url: &str) -> (i32, String, String) {
    let out = Command::new("curl")
        .args([
            "-s",
            "-i",
            "--max-time",
            "5",
            "-o",
            "-",
            "-w",
            "\n%{http_code}",
        ])
        .args(args)
        .arg(url)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", ""));
    (
        out.status.code().unwrap_or(-1),
        code.to_string(),
        body.to_string(),
    )
}

struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The exporter on a free port with `web` as its web config (only `process_lifecycle`
/// loaded), once a right scrape of `https://<addr>/metrics` answers 200; `env` adds
/// settings. Returns it and the address.
fn serve_tls(d: &Path, web: &Path, env: &[(&str, &str)]) -> (Running, String) {
    let addr = format!("127.0.0.1:{}", free_port());
    let log = std::fs::File::create(d.join("exporter.log")).unwrap();
    let exporter = Running(
        Command::new(common::BIN)
            .args([
                "--web.listen-address",
                &addr,
                "--web.config.file",
                web.to_str().unwrap(),
            ])
            .args(["--programs", "process_lifecycle"])
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let ca = d.join("ca.pem");
    let right = ["--cacert", ca.to_str().unwrap(), "-u", "prometheus:secret"];
    let deadline = Instant::now() + Duration::from_secs(20);
    while curl(&right, &format!("https://{addr}/metrics")).1 != "200" {
        assert!(
            Instant::now() < deadline,
            "not serving TLS: {}",
            std::fs::read_to_string(d.join("exporter.log")).unwrap()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    (exporter, addr)
}

#[test]
fn tls_client_certificates_and_basic_auth_as_the_exporter_toolkit() {
    let name = "tls_client_certificates_and_basic_auth_as_the_exporter_toolkit";
    if !test_support::privileged(name)
        || !test_support::tool(name, "openssl")
        || !test_support::tool(name, "curl")
        || !test_support::tool(name, "prometheus")
    {
        return;
    }
    let dir = TempDir::new("web-tls");
    let d = &dir.0;
    ca(d, "ca");
    ca(d, "other-ca");
    cert(d, "server", "ca", true);
    cert(d, "client", "ca", false);
    let hash = bcrypt::hash("secret", 6).unwrap();
    let config = |extra: &str| {
        format!("tls_server_config:\n  cert_file: server.pem\n  key_file: server.key\n{extra}http_server_config:\n  headers:\n    X-Content-Type-Options: nosniff\nbasic_auth_users:\n  prometheus: {hash}\n")
    };
    let web = d.join("web.yml");
    std::fs::write(&web, config("")).unwrap();
    // The format Prometheus's own tools read.
    if test_support::tool(name, "promtool") {
        let out = Command::new("promtool")
            .args(["check", "web-config"])
            .arg(&web)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "promtool check web-config: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // The event stream on the network listener: behind the same auth.
    let (_exporter, addr) = serve_tls(d, &web, &[("KUBE_EBPF_EXPORTER__TAP__LISTEN", "metrics")]);
    let url = format!("https://{addr}/metrics");
    let ca_pem = d.join("ca.pem");
    let ca_flag = ["--cacert", ca_pem.to_str().unwrap()];
    let auth = |user: &'static str| -> Vec<&str> { [&ca_flag[..], &["-u", user]].concat() };
    // The right CA and password; the configured header on every response.
    let (_, code, page) = curl(&auth("prometheus:secret"), &url);
    assert_eq!(code, "200");
    assert!(
        page.contains("ebpf_exporter_process_execs_total")
            && page
                .to_lowercase()
                .contains("x-content-type-options: nosniff"),
        "{page}"
    );
    // /events asks the same credentials there (the stream waits for events: the
    // status is what counts).
    let events = format!("https://{addr}/events?limit=1");
    let stream = |args: &[&str]| {
        let out = Command::new("curl")
            .args([
                "-s",
                "-o",
                "/dev/null",
                "--max-time",
                "2",
                "-w",
                "%{http_code}",
            ])
            .args(args)
            .arg(&events)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(stream(&auth("prometheus:secret")), "200");
    assert_eq!(stream(&ca_flag), "401");
    // Liveness needs no credentials (the kubelet's probes have none), only TLS.
    assert_eq!(curl(&ca_flag, &format!("https://{addr}/healthz")).1, "200");
    // Plain HTTP gets no page.
    assert!(get(&addr, "/metrics").is_none_or(|b| !b.contains("ebpf_exporter")));
    // A client trusting another CA refuses the server.
    let other = d.join("other-ca.pem");
    let (exit, _, _) = curl(
        &[
            "--cacert",
            other.to_str().unwrap(),
            "-u",
            "prometheus:secret",
        ],
        &url,
    );
    assert_eq!(exit, 60, "curl should fail verifying the certificate");
    // Wrong password, unknown user, none: 401.
    for user in [
        &auth("prometheus:wrong")[..],
        &auth("nobody:secret")[..],
        &ca_flag[..],
    ] {
        let (_, code, body) = curl(user, &url);
        assert_eq!(code, "401", "{user:?}: {body}");
        assert!(
            body.to_lowercase().contains("www-authenticate: basic"),
            "{body}"
        );
    }

    // Client certificates required, by editing the file in place.
    std::fs::write(
        &web,
        config("  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.pem\n"),
    )
    .unwrap();
    let (exit, _, _) = curl(&auth("prometheus:secret"), &url);
    assert_ne!(exit, 0, "a client without a certificate was served");
    let (client_pem, client_key) = (d.join("client.pem"), d.join("client.key"));
    let with_cert = [
        &auth("prometheus:secret")[..],
        &[
            "--cert",
            client_pem.to_str().unwrap(),
            "--key",
            client_key.to_str().unwrap(),
        ],
    ]
    .concat();
    assert_eq!(curl(&with_cert, &url).1, "200");
    // RequireAnyClientCert: any certificate, verified by no CA, but one is required.
    cert(d, "stranger", "other-ca", false);
    std::fs::write(&web, config("  client_auth_type: RequireAnyClientCert\n")).unwrap();
    let (stranger_pem, stranger_key) = (d.join("stranger.pem"), d.join("stranger.key"));
    let with_stranger = [
        &auth("prometheus:secret")[..],
        &[
            "--cert",
            stranger_pem.to_str().unwrap(),
            "--key",
            stranger_key.to_str().unwrap(),
        ],
    ]
    .concat();
    assert_eq!(curl(&with_stranger, &url).1, "200");
    assert_ne!(
        curl(&auth("prometheus:secret"), &url).0,
        0,
        "served without a client certificate"
    );

    // Certificate rotation: a new server certificate from another CA, no restart.
    std::fs::write(&web, config("")).unwrap();
    cert(d, "server", "other-ca", true);
    assert_eq!(
        curl(
            &[
                "--cacert",
                other.to_str().unwrap(),
                "-u",
                "prometheus:secret"
            ],
            &url
        )
        .1,
        "200"
    );
    assert_eq!(curl(&auth("prometheus:secret"), &url).0, 60);

    // Debian's Prometheus scrapes it with tls_config and basic_auth.
    let prom_addr = format!("127.0.0.1:{}", free_port());
    std::fs::write(
        d.join("prometheus.yml"),
        format!("global: {{ scrape_interval: 1s }}\nscrape_configs:\n  - job_name: tls\n    scheme: https\n    tls_config: {{ ca_file: {} }}\n    basic_auth: {{ username: prometheus, password: secret }}\n    static_configs: [{{ targets: ['{addr}'] }}]\n", other.display()),
    )
    .unwrap();
    let _prometheus = Running(
        Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                d.join("prometheus.yml").display()
            ))
            .arg(format!("--storage.tsdb.path={}", d.join("tsdb").display()))
            .arg(format!("--web.listen-address={prom_addr}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(d.join("prometheus.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let body =
            get(&prom_addr, "/api/v1/query?query=up%7Bjob%3D%22tls%22%7D").unwrap_or_default();
        if body.contains("\"value\":[") && body.contains(",\"1\"]") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus did not scrape over TLS: {body}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn a_bad_web_config_names_the_file_and_key() {
    let dir = TempDir::new("web-config-bad");
    let web = dir.0.join("web.yml");
    for (text, want) in [
        (
            "tls_server_config:\n  cert_fil: x\n",
            "unknown field `cert_fil`",
        ),
        (
            "basic_auth_users:\n  u: plain\n",
            "basic_auth_users: the password of \"u\" is not a bcrypt hash",
        ),
        (
            "tls_server_config:\n  cert_file: none.pem\n  key_file: none.key\n",
            "tls_server_config.cert_file",
        ),
        (
            "http_server_config:\n  headers:\n    Server: x\n",
            "http_server_config.headers: \"Server\" cannot be set",
        ),
    ] {
        std::fs::write(&web, text).unwrap();
        let out = Command::new(common::BIN)
            .args(["--config.check", "--web.config.file", web.to_str().unwrap()])
            .env("RUST_BACKTRACE", "0")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(web.to_str().unwrap()) && err.contains(want),
            "{text}: {err}"
        );
    }
    // The event stream on the metrics listener needs authentication.
    let out = Command::new(common::BIN)
        .arg("--config.check")
        .env("KUBE_EBPF_EXPORTER__TAP__LISTEN", "metrics")
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && err.contains("tap.listen: metrics serves the event stream to the network, so it needs --web.config.file with basic_auth_users"),
        "{err}"
    );
}

/// Strangers cannot stall the right scraper: while junk TLS handshakes sit open and
/// wrong passwords (bcrypt at exporter-toolkit's usual cost) keep every verification
/// thread busy, each scrape with the right password is answered, from the cache of
/// verified credentials. A web config change that does not parse keeps the last good
/// one, and is counted.
#[test]
fn right_scrapes_are_answered_while_strangers_attack() {
    let name = "right_scrapes_are_answered_while_strangers_attack";
    if !test_support::privileged(name)
        || !test_support::tool(name, "openssl")
        || !test_support::tool(name, "curl")
    {
        return;
    }
    let dir = TempDir::new("web-attack");
    let d = &dir.0;
    ca(d, "ca");
    cert(d, "server", "ca", true);
    let hash = bcrypt::hash("secret", 10).unwrap();
    let web = d.join("web.yml");
    std::fs::write(
        &web,
        format!("tls_server_config:\n  cert_file: server.pem\n  key_file: server.key\nbasic_auth_users:\n  prometheus: {hash}\n"),
    )
    .unwrap();
    // A cap the junk alone overflows: strangers make room for the right scraper.
    let (_exporter, addr) = serve_tls(
        d,
        &web,
        &[("KUBE_EBPF_EXPORTER__WEB__MAX_CONNECTIONS", "32")],
    );
    let url = format!("https://{addr}/metrics");
    let ca_pem = d.join("ca.pem");
    let right = [
        "--cacert",
        ca_pem.to_str().unwrap(),
        "-u",
        "prometheus:secret",
    ];
    let wrong = [
        "--cacert",
        ca_pem.to_str().unwrap(),
        "-u",
        "prometheus:wrong",
    ];
    // 100 connections that start a TLS handshake and never finish it.
    let junk: Vec<std::net::TcpStream> = (0..100)
        .map(|_| {
            let mut s = std::net::TcpStream::connect(&addr).unwrap();
            std::io::Write::write_all(&mut s, b"\x16\x03\x01\x02\x00\x01").unwrap();
            s
        })
        .collect();
    // Wrong passwords from 4 clients at once, without pause.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let wrong_clients: Vec<_> = (0..4)
        .map(|_| {
            let (stop, url, wrong) = (stop.clone(), url.clone(), wrong.map(String::from));
            std::thread::spawn(move || {
                let wrong: Vec<&str> = wrong.iter().map(String::as_str).collect();
                let mut refused = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    if curl(&wrong, &url).1 == "401" {
                        refused += 1;
                    }
                }
                refused
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let answers: Vec<String> = (0..5).map(|_| curl(&right, &url).1).collect();
    // The web config breaks: the last good one keeps serving.
    std::fs::write(&web, "tls_server_config: [broken\n").unwrap();
    let after_break = curl(&right, &url);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let refused: usize = wrong_clients.into_iter().map(|t| t.join().unwrap()).sum();
    drop(junk);

    assert_eq!(answers, ["200"; 5], "right scrapes under attack");
    assert!(refused > 0, "the wrong passwords were checked and refused");
    assert_eq!(after_break.1, "200");
    let evicted = after_break
        .2
        .lines()
        .find_map(|l| l.strip_prefix("ebpf_exporter_http_refused_total{reason=\"evicted\"} "))
        .and_then(|v| v.parse::<u64>().ok());
    assert!(
        evicted >= Some(100 - 32),
        "junk evicted beyond the cap: {evicted:?}"
    );
    assert!(
        after_break
            .2
            .contains("ebpf_exporter_web_config_reloads_total{result=\"failure\"} 1"),
        "{}",
        after_break
            .2
            .lines()
            .filter(|l| l.contains("web_config") || l.contains("refused"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}
