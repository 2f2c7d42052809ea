//! As root, with Debian's `prometheus` and `promtool`: a real Prometheus server scrapes
//! the exporter on loopback, and PromQL over a pod's TCP connects gives the answers the
//! exporter's own histogram says it should; promtool finds nothing wrong with the page;
//! Prometheus with native histograms (protobuf) answers quantiles of exactly known
//! values within the schema's error, and label values that need escaping arrive intact
//! in protobuf and OpenMetrics;
//! every query of the Grafana dashboard finds the series of a pod that ran a workload
//! for every built-in program.

mod common;

use std::{
    io::Write,
    process::{Child, Command, Stdio},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use common::{
    compile_example, connects, get, run_workload, samples, workload, Cgroups, Exporter, Pod,
    TempDir,
};

const METRIC: &str = "ebpf_exporter_tcp_connect_latency_seconds";

/// A Prometheus server, killed on drop.
struct Prometheus {
    child: Child,
    addr: String,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    /// Starts Prometheus scraping `target` every second, and waits until it is ready.
    fn start(target: &str, dir: &std::path::Path) -> Self {
        Self::start_with(target, dir, &[])
    }

    /// As [`Prometheus::start`], with extra flags.
    fn start_with(target: &str, dir: &std::path::Path, flags: &[&str]) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global: {{ scrape_interval: 1s, evaluation_interval: 1s }}\n\
                 scrape_configs:\n  - job_name: kube-ebpf-exporter\n    \
                 static_configs: [{{ targets: ['{target}'] }}]\n"
            ),
        )
        .unwrap();
        let addr = format!("127.0.0.1:{}", common::free_port());
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .args(flags)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("prometheus.log")).unwrap())
            .spawn()
            .unwrap();
        let p = Self { child, addr };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !get(&p.addr, "/-/ready").is_some_and(|b| b.contains("Ready")) {
            assert!(Instant::now() < deadline, "prometheus not ready");
            std::thread::sleep(Duration::from_millis(100));
        }
        p
    }

    /// The single value of an instant query evaluated at `time` (Unix seconds).
    fn query(&self, promql: &str, time: f64) -> Option<f64> {
        let path = format!("/api/v1/query?query={}&time={time:.3}", encode(promql));
        let body = get(&self.addr, &path)?;
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["status"], "success", "{promql}: {body}");
        let result = v["data"]["result"].as_array()?;
        assert!(result.len() <= 1, "{promql}: {body}");
        result.first()?["value"][1].as_str()?.parse().ok()
    }

    /// The series an instant query at `time` returns; panics when Prometheus rejects it.
    fn series(&self, promql: &str, time: f64) -> usize {
        let path = format!("/api/v1/query?query={}&time={time:.3}", encode(promql));
        let body = get(&self.addr, &path).unwrap();
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["status"], "success", "{promql}: {body}");
        v["data"]["result"].as_array().unwrap().len()
    }

    /// Waits until `promql` evaluates to `want` now.
    fn wait_for(&self, promql: &str, want: f64) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let got = self.query(promql, now());
            if got == Some(want) {
                return;
            }
            assert!(Instant::now() < deadline, "{promql}: {got:?}, want {want}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// Percent-encodes a query parameter.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The pod's cumulative buckets on the exporter's page, as (le, count) in order.
fn buckets(page: &str, pod: &str) -> Vec<(f64, f64)> {
    let mut out: Vec<(f64, f64)> = samples(page, &format!("{METRIC}_bucket"))
        .into_iter()
        .filter(|(l, _)| l.contains(pod) && l.contains("subnet=\"127\""))
        .map(|(l, v)| {
            let le = l.split("le=\"").nth(1).unwrap().split('"').next().unwrap();
            (le.parse().unwrap(), v)
        })
        .collect();
    out.sort_by(|a, b| a.0.total_cmp(&b.0));
    out
}

/// Prometheus's `histogram_quantile` over cumulative buckets: linear within the bucket
/// that holds the rank; the lowest bucket starts at 0.
fn quantile(q: f64, buckets: &[(f64, f64)]) -> f64 {
    let total = buckets.last().unwrap().1;
    let rank = q * total;
    let i = buckets.iter().position(|&(_, c)| c >= rank).unwrap();
    let (upper, count) = buckets[i];
    if upper.is_infinite() {
        return buckets[i - 1].0;
    }
    let (lower, below) = if i == 0 { (0.0, 0.0) } else { buckets[i - 1] };
    lower + (upper - lower) * (rank - below) / (count - below)
}

#[test]
fn prometheus_scrapes_the_pods_connect_latency() {
    let name = "prometheus_scrapes_the_pods_connect_latency";
    if !test_support::privileged(name)
        || !test_support::tool(name, "prometheus")
        || !test_support::tool(name, "promtool")
    {
        return;
    }
    let pod = Pod::new("shop", "web-prom-7c9d2", "nginx");
    let dir = TempDir::new(pod.name);
    let mut cgroups = Cgroups::new(pod.name);
    let cg = pod.cgroup(&mut cgroups);
    let flags = pod.logs(&dir.0);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let exporter = Exporter::start(&flags, &dir.0.join("exporter.log"));
    let prometheus = Prometheus::start(&exporter.addr, &dir.0);

    let selector = format!("{{app_pod=\"{}\",subnet=\"127\"}}", pod.name);
    let count = format!("{METRIC}_count{selector}");
    // Batch 1 makes the series; the window queried later starts after Prometheus has
    // it at A, so its increase is batch 2 alone.
    const A: usize = 20;
    const B: usize = 40;
    connects(A, &cg);
    prometheus.wait_for(&count, A as f64);
    let start = now();
    std::thread::sleep(Duration::from_millis(2500));
    let before = buckets(&exporter.metrics(), pod.name);
    connects(B, &cg);
    prometheus.wait_for(&count, (A + B) as f64);
    let page = exporter.metrics();
    let after = buckets(&page, pod.name);
    std::thread::sleep(Duration::from_secs(4));
    let at = now();
    let range = (at - start).floor() as u64;

    // increase() extrapolates to the window's edges, at most an interval past the
    // samples, so it reads a little over B, never under.
    let inc = prometheus
        .query(&format!("increase({count}[{range}s])"), at)
        .unwrap();
    assert!(
        (B as f64..=B as f64 * 1.4).contains(&inc),
        "increase {inc}, want about {B}"
    );
    // increase() extrapolates each bucket by its own factor (counters are not
    // extrapolated below zero), so quantiles are compared exactly on the buckets as
    // scraped: Prometheus's answer must be the one the exporter's page gives.
    let delta: Vec<(f64, f64)> = after
        .iter()
        .zip(&before)
        .map(|(&(le, a), &(le0, b))| {
            assert_eq!(le, le0);
            (le, a - b)
        })
        .collect();
    assert_eq!(delta.last().unwrap().1, B as f64, "{page}");
    for q in [0.5, 0.9, 0.99] {
        let got = prometheus
            .query(
                &format!("histogram_quantile({q}, sum by (le) ({METRIC}_bucket{selector}))"),
                at,
            )
            .unwrap();
        let want = quantile(q, &after);
        assert!(
            (got - want).abs() <= want * 1e-9,
            "p{q}: prometheus {got}, exporter's buckets {want}\n{page}"
        );
    }

    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(page.as_bytes())
        .unwrap();
    let out = promtool.wait_with_output().unwrap();
    let report = String::from_utf8_lossy(&out.stdout) + String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && report.trim().is_empty(),
        "promtool check metrics: {report}"
    );
}

/// Runs a workload for every built-in program in `cg`: each program's series exist for
/// the pod afterwards.
fn every_programs_workload(cg: &std::path::Path) {
    connects(5, cg);
    // Refused: a connect error, a reset received, an exit with code 3.
    let closed = common::free_port().to_string();
    let refused = Command::new(workload())
        .arg(cg)
        .args(["connect", &closed, "1"])
        .status()
        .unwrap();
    assert_eq!(refused.code(), Some(3));
    let netns = "ip link set lo up; ip addr add 10.9.9.1/32 dev lo; ip route add 10.9.9.9/32 dev lo src 10.9.9.1; echo 1 >/proc/sys/net/ipv4/tcp_syn_retries; exec \"$@\"";
    let unanswered = Command::new("unshare")
        .args(["-n", "sh", "-ec", netns, "netns"])
        .arg(workload())
        .arg(cg)
        .args(["connect-timeout", "10.9.9.9", "80", "1"])
        .output()
        .unwrap();
    assert!(unanswered.status.success(), "{unanswered:?}");
    run_workload(Some(cg), &["udp-overflow", "50"]);
    run_workload(Some(cg), &["open-missing", "5"]);
    run_workload(Some(cg), &["spin", "200", "2"]);
    run_workload(Some(cg), &["lifecycle", "1"]);
    let file =
        std::path::Path::new("/var/tmp").join(format!("kebpf-dashboard-{}", std::process::id()));
    std::fs::write(&file, vec![0u8; 65536]).unwrap();
    std::fs::File::open(&file).unwrap().sync_all().unwrap();
    run_workload(
        Some(cg),
        &["direct-write", file.to_str().unwrap(), "1", "65536"],
    );
    // Memory: reclaim at 16 MiB, then one OOM kill.
    let v1 = common::memory_limit(cg, 16 << 20);
    let with_limit = |args: &[&str]| {
        let mut cmd = Command::new(workload());
        cmd.arg(cg).args(args);
        if let Some(v1) = &v1 {
            cmd.env("WORKLOAD_MEMORY_CGROUP", v1);
        }
        cmd.status().unwrap()
    };
    let _ = std::fs::remove_file(&file);
    let cache = file.with_extension("cache");
    assert!(with_limit(&["pagecache", cache.to_str().unwrap(), "48"]).success());
    let _ = std::fs::remove_file(&cache);
    assert!(!with_limit(&["oom"]).success());
    if let Some(v1) = v1 {
        let _ = std::fs::remove_dir(v1);
    }
}

#[test]
fn every_dashboard_query_finds_its_programs_series() {
    let name = "every_dashboard_query_finds_its_programs_series";
    if !test_support::privileged(name) || !test_support::tool(name, "prometheus") {
        return;
    }
    let pod = Pod::new("shop", "dashboard-2d3e4-f5a6b", "app");
    let dir = TempDir::new(pod.name);
    let mut cgroups = Cgroups::new(pod.name);
    let cg = pod.cgroup(&mut cgroups);
    let mut flags = pod.logs(&dir.0);
    flags.extend(["--programs".into(), "all".into()]);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let exporter = Exporter::start(&flags, &dir.0.join("exporter.log"));
    let prometheus = Prometheus::start(&exporter.addr, &dir.0);
    every_programs_workload(&cg);
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/deploy/grafana/kube-ebpf-exporter.json"
        ))
        .unwrap(),
    )
    .unwrap();
    let mut checked = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        // Rows have no queries.
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap();
            let pod_scoped = expr.contains("app_pod=~\"$pod\"");
            let expr = expr
                .replace("$__rate_interval", "60s")
                .replace("$node", ".*")
                .replace("$namespace", ".*")
                .replace("$pod", pod.name);
            // Valid PromQL everywhere; a query over a program's metric finds the pod
            // (once Prometheus holds two scrapes of it: scrapes time out at 1 s).
            let deadline = Instant::now() + Duration::from_secs(20);
            while prometheus.series(&expr, now()) == 0 && pod_scoped {
                assert!(
                    Instant::now() < deadline,
                    "{}: {expr}\nup: {:?}\n{}",
                    panel["title"],
                    prometheus.query("up", now()),
                    std::fs::read_to_string(dir.0.join("prometheus.log")).unwrap_or_default()
                );
                std::thread::sleep(Duration::from_millis(250));
            }
            checked += usize::from(pod_scoped);
        }
    }
    assert!(checked >= 20, "{checked} pod queries");
}

/// The response's headers and body to a GET of `/metrics` with these request headers.
fn fetch(addr: &str, headers: &str) -> (String, Vec<u8>) {
    use std::io::Read;
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(s, "GET /metrics HTTP/1.0\r\nHost: {addr}\r\n{headers}\r\n").unwrap();
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).unwrap();
    let end = resp.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    (
        String::from_utf8_lossy(&resp[..end]).to_lowercase(),
        resp[end + 4..].to_vec(),
    )
}

/// Kind names (`static_map` values) that every format must escape or carry as UTF-8.
const KINDS: [&str; 3] = ["quote\"d", "back\\slash", "new\nline ☃"];

#[test]
fn native_histograms_answer_within_the_schemas_error() {
    let name = "native_histograms_answer_within_the_schemas_error";
    if !test_support::privileged(name) || !test_support::tool(name, "prometheus") {
        return;
    }
    let pod = Pod::new("jobs", "batch-native-5f7d9", "worker");
    let dir = TempDir::new(pod.name);
    let mut cgroups = Cgroups::new(pod.name);
    let cg = pod.cgroup(&mut cgroups);
    let example = "workload-job-costs";
    compile_example(example, &dir.0);
    let yaml = dir.0.join(format!("{example}.yaml"));
    let config = std::fs::read_to_string(&yaml).unwrap().replace(
        r#"{ "0": small, "1": medium, "2": large }"#,
        r#"{ "0": "quote\"d", "1": "back\\slash", "2": "new\nline ☃" }"#,
    );
    std::fs::write(&yaml, config).unwrap();
    // The probe's binary is `kebpf-workload`, found on the exporter's PATH.
    let bin = dir.0.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let program = bin.join("kebpf-workload");
    std::fs::copy(workload(), &program).unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut args = vec![
        "--config.dir".to_string(),
        dir.0.display().to_string(),
        "--config.names".into(),
        example.into(),
        "--config.strict".into(),
    ];
    args.extend(pod.logs(&dir.0));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let exporter = Exporter::start_with_env(&args, &[("PATH", &path)], &dir.0.join("exporter.log"));
    let native = Prometheus::start_with(
        &exporter.addr,
        &dir.0.join("native"),
        &["--enable-feature=native-histograms"],
    );
    let classic = Prometheus::start(&exporter.addr, &dir.0.join("classic"));

    // Job i has kind i % 3 and cost i * 1000 ns: exactly known values per kind.
    const N: u64 = 3000;
    let status = Command::new(&program)
        .arg(&cg)
        .args(["jobs", &N.to_string()])
        .status()
        .unwrap();
    assert!(status.success());

    let metric = "ebpf_exporter_workload_job_cost_seconds";
    // Schema 3: a bucket's upper bound is 2^(1/8) times its lower one.
    let error = 2f64.powf(0.125) - 1.0;
    for (k, kind) in KINDS.iter().enumerate() {
        let mut values: Vec<f64> = (0..N)
            .filter(|i| i % 3 == k as u64)
            .map(|i| (i * 1000) as f64 * 1e-9)
            .collect();
        values.sort_by(f64::total_cmp);
        let escaped = kind
            .replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n");
        let selector = format!("{{app_pod=\"{}\",kind=\"{escaped}\"}}", pod.name);
        native.wait_for(
            &format!("histogram_count({metric}{selector})"),
            values.len() as f64,
        );
        let sum = native
            .query(&format!("histogram_sum({metric}{selector})"), now())
            .unwrap();
        let want: f64 = values.iter().sum();
        assert!(
            (sum - want).abs() <= want * 1e-9,
            "{kind:?}: sum {sum}, want {want}"
        );
        for q in [0.5, 0.9, 0.99] {
            let got = native
                .query(
                    &format!("histogram_quantile({q}, {metric}{selector})"),
                    now(),
                )
                .unwrap();
            let rank = (q * values.len() as f64).ceil() as usize;
            let exact = values[rank - 1];
            assert!(
                (got - exact).abs() <= exact * error,
                "{kind:?} p{q}: native {got}, exact {exact} (error bound {:.1} %)",
                error * 100.0
            );
        }
        // The classic histogram as before, from OpenMetrics: 21 bounds and +Inf.
        classic.wait_for(&format!("{metric}_count{selector}"), values.len() as f64);
        assert_eq!(
            classic.series(&format!("{metric}_bucket{selector}"), now()),
            22
        );
    }
    // Label values arrived intact through both parsers.
    for p in [&native, &classic] {
        let body = get(&p.addr, "/api/v1/label/kind/values").unwrap();
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        let mut got: Vec<&str> = v["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap())
            .collect();
        got.sort_unstable();
        let mut want = KINDS.to_vec();
        want.sort_unstable();
        assert_eq!(got, want);
    }

    // Each format says what it is; text stays the default; gzip applies to all.
    let protobuf = "application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=delimited";
    for (accept, content_type) in [
        ("", "text/plain; version=0.0.4; charset=utf-8"),
        ("Accept: */*\r\n", "text/plain; version=0.0.4; charset=utf-8"),
        (
            "Accept: application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5\r\n",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        ),
        (
            "Accept: application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited;q=0.5,text/plain;q=0.2\r\n",
            protobuf,
        ),
    ] {
        let (head, body) = fetch(&exporter.addr, accept);
        let content_type = content_type.to_lowercase();
        assert!(head.contains(&format!("content-type: {content_type}")), "{accept}: {head}");
        let (zipped, compressed) = fetch(&exporter.addr, &format!("{accept}Accept-Encoding: gzip\r\n"));
        assert!(zipped.contains("content-encoding: gzip") && zipped.contains(&content_type));
        let mut unzipped = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&compressed[..]), &mut unzipped).unwrap();
        assert!(!body.is_empty() && unzipped.len() > body.len() / 2, "{accept}");
    }
    let (_, om) = fetch(
        &exporter.addr,
        "Accept: application/openmetrics-text;version=1.0.0\r\n",
    );
    assert!(String::from_utf8(om).unwrap().ends_with("# EOF\n"));
}
