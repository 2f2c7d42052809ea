//! The exporter's config: defaults embedded, a YAML file, `KUBE_EBPF_EXPORTER__*` overrides.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use aggregate::{
    config::{MetricsConfig, RingConfig},
    KubeLabelNames,
};
use anyhow::{Context, Result};
use figment::{
    providers::{Env, Format, Yaml},
    Figment,
};
use serde::Deserialize;

/// The default config, built into the binary.
pub const DEFAULT: &str = include_str!("default.yaml");
/// Prefix of environment overrides; `__` separates levels
/// (`KUBE_EBPF_EXPORTER__WEB__LISTEN_ADDRESS=:9000`).
pub const ENV_PREFIX: &str = "KUBE_EBPF_EXPORTER__";

/// Everything the exporter runs with.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// HTTP exposition.
    #[serde(default)]
    pub web: Web,
    /// Value of the node label; default `$NODE_NAME`, else the hostname.
    #[serde(default)]
    pub node_id: Option<String>,
    /// Where pod metadata comes from, and the pod label names.
    #[serde(default)]
    pub kubernetes: Kubernetes,
    /// Queues, batches and ring sizes.
    #[serde(default)]
    pub pipeline: PipelineConfig,
    /// The JSON event tap (`/events`, `kube-ebpf-exporter tap`) and its file sink.
    #[serde(default)]
    pub tap: TapConfig,
    /// Programs by name: an object and the metrics built from it.
    #[serde(default)]
    pub programs: BTreeMap<String, Program>,
}

/// HTTP settings.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Web {
    /// `host:port` or `:port` (all interfaces).
    #[serde(default = "default_listen")]
    pub listen_address: String,
    /// Path of the metrics page.
    #[serde(default = "default_telemetry_path")]
    pub telemetry_path: String,
    /// Connections open at once; more are closed as they arrive (counted).
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Seconds a client has to send each request's header; also the longest a kept-alive
    /// connection idles (hyper times both with one deadline).
    #[serde(default = "default_header_timeout")]
    pub header_timeout_seconds: u64,
    /// Scrapes rendered at once; more get 503 (counted), like node_exporter's
    /// `--web.max-requests`.
    #[serde(default = "default_max_requests")]
    pub max_requests: usize,
}

impl Default for Web {
    fn default() -> Self {
        Self {
            listen_address: default_listen(),
            telemetry_path: default_telemetry_path(),
            max_connections: default_max_connections(),
            header_timeout_seconds: default_header_timeout(),
            max_requests: default_max_requests(),
        }
    }
}

const fn default_max_connections() -> usize {
    512
}

const fn default_header_timeout() -> u64 {
    10
}

const fn default_max_requests() -> usize {
    40
}

fn default_listen() -> String {
    ":9435".into()
}

fn default_telemetry_path() -> String {
    "/metrics".into()
}

/// Kubernetes metadata settings.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Kubernetes {
    /// Where pod names come from, asked in this order; `logs` needs nothing but the
    /// node's filesystem.
    #[serde(default = "default_sources")]
    pub sources: Vec<MetadataSource>,
    /// The container runtime's CRI socket for the `cri` source; unset: the first that
    /// exists of the containerd, CRI-O and k3s defaults (none: the source is skipped).
    #[serde(default)]
    pub cri_socket: Option<String>,
    /// The node whose pods the `api` source watches; unset: `$NODE_NAME` (set it from
    /// the downward API's `spec.nodeName`).
    #[serde(default)]
    pub node_name: Option<String>,
    /// The kubelet's pod log directory (`<namespace>_<pod>_<uid>/<container>/`).
    #[serde(default = "default_pod_logs")]
    pub pod_logs_dir: String,
    /// The kubelet's container log links (`<pod>_<namespace>_<container>-<id>.log`).
    #[serde(default = "default_container_logs")]
    pub container_logs_dir: String,
    /// Names of the pod labels on every series.
    #[serde(default)]
    pub labels: LabelNames,
    /// Follow cgroup creation and removal (tracepoints `cgroup:cgroup_mkdir`/`rmdir`) so
    /// containers that live for milliseconds are still attributed.
    #[serde(default = "yes")]
    pub cgroup_events: bool,
    /// Seconds a deleted pod's series stay after its last container cgroup is removed
    /// (needs `cgroup_events`).
    #[serde(default = "default_grace")]
    pub series_grace_seconds: u64,
    /// Milliseconds events of a pod's cgroup wait for the pod's metadata when they come
    /// first (then they go on unattributed); 0 does not wait.
    #[serde(default = "default_metadata_wait")]
    pub metadata_wait_ms: u64,
}

const fn default_metadata_wait() -> u64 {
    2000
}

const fn default_grace() -> u64 {
    300
}

const fn yes() -> bool {
    true
}

/// A pod metadata source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MetadataSource {
    /// The container runtime over its CRI socket: names and pod labels.
    Cri,
    /// The Kubernetes API (a watch of this node's pods): names, pod labels, workload.
    Api,
    /// The kubelet's log directories: names only.
    Logs,
}

fn default_sources() -> Vec<MetadataSource> {
    vec![MetadataSource::Cri, MetadataSource::Logs]
}

/// Where containerd, CRI-O and k3s put their CRI sockets.
pub const CRI_SOCKETS: [&str; 3] = [
    "/run/containerd/containerd.sock",
    "/var/run/crio/crio.sock",
    "/run/k3s/containerd/containerd.sock",
];

impl Default for Kubernetes {
    fn default() -> Self {
        Self {
            sources: default_sources(),
            cri_socket: None,
            node_name: None,
            pod_logs_dir: default_pod_logs(),
            container_logs_dir: default_container_logs(),
            labels: LabelNames::default(),
            cgroup_events: true,
            series_grace_seconds: default_grace(),
            metadata_wait_ms: default_metadata_wait(),
        }
    }
}

fn default_pod_logs() -> String {
    "/var/log/pods".into()
}

fn default_container_logs() -> String {
    "/var/log/containers".into()
}

/// Pod label names.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LabelNames {
    /// Namespace label.
    pub namespace: String,
    /// Pod label.
    pub pod: String,
    /// Container label.
    pub container: String,
    /// Node label.
    pub node: String,
    /// Opt-in: label naming the workload that owns the pod (e.g. `app_workload`; a
    /// ReplicaSet's pods name its Deployment). Needs the `api` metadata source.
    pub workload: Option<String>,
    /// Opt-in: label naming that workload's kind (e.g. `app_workload_kind`).
    pub workload_kind: Option<String>,
    /// Opt-in: pod labels to copy, pod label key → Prometheus label name (e.g.
    /// `app.kubernetes.io/name: app_name`). From the `api` or `cri` source.
    pub pod_labels: BTreeMap<String, String>,
}

impl LabelNames {
    /// The opt-in labels, in the order their names are in [`KubeLabelNames::extra`].
    pub fn extra(&self) -> Vec<(enrich::Extra, String)> {
        let mut extra = Vec::new();
        if let Some(name) = &self.workload_kind {
            extra.push((enrich::Extra::WorkloadKind, name.clone()));
        }
        if let Some(name) = &self.workload {
            extra.push((enrich::Extra::Workload, name.clone()));
        }
        for (key, name) in &self.pod_labels {
            extra.push((enrich::Extra::PodLabel(key.clone()), name.clone()));
        }
        extra
    }
}

impl Default for LabelNames {
    fn default() -> Self {
        let d = KubeLabelNames::default();
        Self {
            namespace: d.namespace,
            pod: d.pod,
            container: d.container,
            node: d.node,
            workload: None,
            workload_kind: None,
            pod_labels: BTreeMap::new(),
        }
    }
}

impl From<&LabelNames> for KubeLabelNames {
    fn from(l: &LabelNames) -> Self {
        Self {
            namespace: l.namespace.clone(),
            pod: l.pod.clone(),
            container: l.container.clone(),
            node: l.node.clone(),
            extra: l.extra().into_iter().map(|(_, name)| name).collect(),
        }
    }
}

/// Pipeline tuning.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PipelineConfig {
    /// Threads reading rings (default 1: a reader copies records at memory speed).
    pub ingest_workers: usize,
    /// Threads mapping records to pods (default: a quarter of the CPUs, at least 1).
    pub enrich_workers: usize,
    /// Threads (shards, by pod) updating series (default: a quarter of the CPUs, at least 1).
    pub aggregate_workers: usize,
    /// Batches each queue between stages holds; beyond it, records are dropped and
    /// counted.
    pub queue_batches: usize,
    /// Bytes of records per batch.
    pub batch_bytes: usize,
    /// How often rings are drained when no wakeup came, in milliseconds.
    pub drain_interval_ms: u64,
    /// How often records that CPUs staged for a batched ring (`OUTPUT_RINGBUF_BATCHED`)
    /// are written out, in milliseconds: the most a record of a quiet CPU waits.
    pub flush_interval_ms: u64,
    /// Size of every ring read, in bytes (power of two, multiple of the page size).
    pub ring_bytes: u32,
    /// Unread bytes at which a program wakes the reader (default: a quarter ring).
    pub wakeup_bytes: Option<u64>,
    /// Pages (4 KiB) per CPU of each perf event array buffer.
    pub perf_pages: usize,
    /// Most series a ring metric keeps (its `max_series` overrides); further label
    /// sets count in one `__overflow__` series.
    pub max_series: usize,
    /// How programs stream records: `auto` uses ring buffers where the kernel has them
    /// (5.8+) and the `-DOUTPUT_PERF` builds (perf event arrays) elsewhere; `ringbuf` and
    /// `perf` force one.
    pub output: RecordOutput,
}

/// Record output of programs that stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RecordOutput {
    /// Ring buffers when the kernel has them.
    Auto,
    /// Always ring buffers.
    Ringbuf,
    /// Always perf event arrays.
    Perf,
}

impl RecordOutput {
    /// Whether to load the perf event array builds.
    pub fn perf(self) -> bool {
        match self {
            RecordOutput::Auto => !aya_ring_buffers(),
            RecordOutput::Ringbuf => false,
            RecordOutput::Perf => true,
        }
    }
}

/// Whether this kernel has ring buffer maps.
fn aya_ring_buffers() -> bool {
    ingest::ring_buffers_supported()
}

impl Default for PipelineConfig {
    fn default() -> Self {
        let quarter = std::thread::available_parallelism()
            .map_or(1, |n| n.get() / 4)
            .max(1);
        Self {
            ingest_workers: 1,
            enrich_workers: quarter,
            aggregate_workers: quarter,
            queue_batches: 1024,
            batch_bytes: 64 * 1024,
            drain_interval_ms: 10,
            flush_interval_ms: 100,
            ring_bytes: 4 * 1024 * 1024,
            wakeup_bytes: None,
            perf_pages: 256,
            max_series: aggregate::DEFAULT_MAX_SERIES,
            output: RecordOutput::Auto,
        }
    }
}

/// Where the event stream is served by default (and where `tap` looks for it).
pub const DEFAULT_TAP_LISTEN: &str = "unix:/run/kube-ebpf-exporter/tap.sock";

/// Where the event stream listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TapListen {
    /// A unix socket (only this host's processes, by file permission).
    Unix(PathBuf),
    /// A loopback TCP address.
    Loopback(std::net::SocketAddr),
    /// The metrics listener, behind the web config's basic auth (required).
    Metrics,
}

impl TapListen {
    /// Parses `tap.listen`; anything but a unix socket, a loopback address or `metrics`
    /// is refused.
    pub fn parse(s: &str) -> std::result::Result<Self, TapListenError> {
        if s == "metrics" {
            return Ok(Self::Metrics);
        }
        if let Some(path) = s.strip_prefix("unix:") {
            if !path.starts_with('/') {
                return Err(TapListenError::RelativeSocket(s.into()));
            }
            return Ok(Self::Unix(path.into()));
        }
        let addr: std::net::SocketAddr = s
            .parse()
            .map_err(|_| TapListenError::NotAnAddress(s.into()))?;
        if !addr.ip().is_loopback() {
            return Err(TapListenError::NotLoopback(s.into()));
        }
        Ok(Self::Loopback(addr))
    }
}

/// Why `tap.listen` is refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum TapListenError {
    #[error("{0:?}: a unix socket needs an absolute path")]
    RelativeSocket(String),
    #[error("{0:?} is neither unix:<path> nor ip:port (e.g. 127.0.0.1:9436)")]
    NotAnAddress(String),
    #[error("{0:?} is not a loopback address: the event stream shows every process on the node, so it is served only on a unix socket, loopback, or `metrics` (the metrics listener, with --web.config.file basic_auth_users); reach it with `kubectl exec <pod> -- kube-ebpf-exporter tap` or `kubectl port-forward`")]
    NotLoopback(String),
}

/// Event tap settings.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TapConfig {
    /// Serve `/events` (and feed the sink); off removes the tap entirely.
    pub enabled: bool,
    /// Batches waiting for the tap thread; beyond it, tap events are dropped and counted.
    pub input_batches: usize,
    /// Lines waiting for each subscriber; a slower reader loses events (counted).
    pub queue_events: usize,
    /// `/events` subscribers at once; more get 429 (counted).
    pub max_subscribers: usize,
    /// Where `/events` is served, apart from the metrics listener: `unix:<path>` (the
    /// default, for `kube-ebpf-exporter tap` in the same container) or a loopback
    /// `ip:port`. The stream shows every process on the node, so it is never on a
    /// network listener without authentication.
    pub listen: String,
    /// Cluster name written into every event.
    pub cluster: Option<String>,
    /// Write selected configs' events to files.
    pub sink: Option<SinkConfig>,
}

impl Default for TapConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            input_batches: 256,
            queue_events: 4096,
            max_subscribers: 16,
            listen: DEFAULT_TAP_LISTEN.into(),
            cluster: None,
            sink: None,
        }
    }
}

/// The file sink: hourly-rotated gzip JSON lines.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkConfig {
    /// Directory of `events-<YYYYMMDDHH>.jsonl.gz` files.
    pub dir: PathBuf,
    /// Configs whose events (rings) or non-zero entries at each scrape (tables) are written.
    pub configs: Vec<String>,
    /// Disk budget; the oldest files go first.
    #[serde(default = "default_sink_bytes")]
    pub max_bytes: u64,
}

fn default_sink_bytes() -> u64 {
    1 << 30
}

/// One program: the config of one object, as in cloudflare/ebpf_exporter's
/// `<name>.yaml` plus our `rings` and `object`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Program {
    /// A built-in object's name or a path to a `.bpf.o` (relative to the config);
    /// default: `<name>.bpf.o` beside a config dir's file, else the built-in object
    /// named like the program.
    #[serde(default)]
    pub object: Option<String>,
    /// Ring buffers read, with their record layouts.
    #[serde(default)]
    pub rings: Vec<RingConfig>,
    /// Metrics built from rings and maps.
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// Kernel symbols whose addresses are set in the object's `kaddr_<symbol>` globals.
    #[serde(default)]
    pub kaddrs: Vec<String>,
    /// Entries written into named maps after load and before attach (match tables as
    /// data, as cloudflare/ebpf_exporter#638 proposes): map → key → integer value.
    /// Keys are text or numbers, as the map's key type (its BTF) takes them.
    #[serde(default)]
    pub maps: BTreeMap<String, BTreeMap<String, MapValue>>,
    /// Ring buffers whose records are spans, exported over OTLP (the reference
    /// exporter's `tracing:` section).
    #[serde(default)]
    pub tracing: spans::config::TracingConfig,
    /// A map the exporter fills with the cgroups whose paths match, for filtering in
    /// the kernel (the reference exporter's `cgroup_id_map`).
    #[serde(default)]
    pub cgroup_id_map: Option<CgroupIdMapConfig>,
    /// Whether it runs unless `--programs` names it (main config programs only).
    #[serde(default = "yes")]
    pub enabled: bool,
    /// What the program answers, for `kube-ebpf-exporter programs`.
    #[serde(default)]
    pub description: Option<String>,
    /// What it costs, as measured (`benchmark/`), for `kube-ebpf-exporter programs`.
    #[serde(default)]
    pub cost: Option<String>,
    /// BPF programs (function names) that may fail to load or attach without failing
    /// the config: variants for kernels that have their hook (kprobes, fentry).
    #[serde(default)]
    pub optional: Vec<String>,
}

/// A `maps:` value: an integer, negative where the map's values are signed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum MapValue {
    Unsigned(u64),
    Signed(i64),
}

impl From<MapValue> for i128 {
    fn from(v: MapValue) -> Self {
        match v {
            MapValue::Unsigned(u) => i128::from(u),
            MapValue::Signed(i) => i128::from(i),
        }
    }
}

/// `cgroup_id_map`: which map, how it holds cgroups, which cgroups.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CgroupIdMapConfig {
    /// The map's name in the object.
    pub name: String,
    /// `hash` (key: cgroup id) or `cgrp_storage` (the cgroup's own storage, 6.2+).
    #[serde(default, rename = "type")]
    pub kind: CgroupIdMapType,
    /// Regular expressions matched against each cgroup's full path
    /// (`/sys/fs/cgroup/...`); any match puts the cgroup in the map.
    pub regexps: Vec<String>,
}

/// How a cgroup id map holds its cgroups.
#[derive(Debug, Default, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum CgroupIdMapType {
    #[default]
    Hash,
    CgrpStorage,
}

impl Program {
    /// Reads `<dir>/<name>.yaml` (a cloudflare/ebpf_exporter config file).
    ///
    /// # Errors
    /// The file is missing, is not YAML, or has unknown keys or wrong values: the
    /// message names the file, the key and the reason.
    pub fn load(path: &Path) -> Result<Self> {
        std::fs::metadata(path).with_context(|| format!("config file {}", path.display()))?;
        Figment::from(Yaml::file_exact(path))
            .extract()
            .map_err(|e| {
                let errors: Vec<String> = e.into_iter().map(|e| describe(&e)).collect();
                anyhow::anyhow!(
                    "invalid config in {}:\n  {}",
                    path.display(),
                    errors.join("\n  ")
                )
            })
    }
}

/// Extracts `T` from YAML `text`, every error described as the loaders do.
fn parse_text<T: serde::de::DeserializeOwned>(text: &str, source: &str) -> Result<T> {
    Figment::from(Yaml::string(text)).extract().map_err(|e| {
        let errors: Vec<String> = e.into_iter().map(|e| describe(&e)).collect();
        anyhow::anyhow!("invalid config in {source}:\n  {}", errors.join("\n  "))
    })
}

impl Program {
    /// Parses a program config from text (`source` names it in errors).
    ///
    /// # Errors
    /// As [`Program::load`].
    pub fn parse(text: &str, source: &str) -> Result<Self> {
        parse_text(text, source)
    }
}

impl Config {
    /// Parses exporter settings from text, without environment overrides.
    ///
    /// # Errors
    /// As [`Config::load`].
    pub fn parse(text: &str, source: &str) -> Result<Self> {
        parse_text(text, source)
    }

    /// Loads `file` (or the embedded default) merged with environment overrides.
    ///
    /// # Errors
    /// As [`Config::load_with`].
    pub fn load(file: Option<&Path>) -> Result<Self> {
        Self::load_with(file, Figment::new())
    }

    /// Loads `file` (or the embedded default), with environment overrides over it and
    /// `flags` (the command line's) over both.
    ///
    /// # Errors
    /// A missing or unreadable file, bad YAML, an unknown key or a wrong value type:
    /// the message names the file (or the flags), the key and the reason.
    pub fn load_with(file: Option<&Path>, flags: impl figment::Provider) -> Result<Self> {
        let (figment, source) = match file {
            Some(path) => {
                std::fs::metadata(path)
                    .with_context(|| format!("config file {}", path.display()))?;
                (
                    Figment::from(Yaml::file_exact(path)),
                    path.display().to_string(),
                )
            }
            None => (
                Figment::from(Yaml::string(DEFAULT)),
                "the embedded default config".to_string(),
            ),
        };
        let figment = figment
            .merge(Env::prefixed(ENV_PREFIX).split("__"))
            .merge(flags);
        figment.extract().map_err(|e| {
            let errors: Vec<String> = e.into_iter().map(|e| describe(&e)).collect();
            anyhow::anyhow!("invalid config in {source}:\n  {}", errors.join("\n  "))
        })
    }
}

/// A numeric setting outside its range: `key = value: reason (env var)`.
fn out_of_range(key: &str, value: impl std::fmt::Display, range: &str) -> String {
    let env = format!("{ENV_PREFIX}{}", key.to_uppercase().replace('.', "__"));
    format!("{key} = {value}: must be {range} (set in the file or by {env})")
}

impl Config {
    /// Checks every numeric setting against its range (the kernel's rules for ring and
    /// perf buffer sizes included); each problem names the key, the value and the range.
    // Long: one range check per setting, each naming its key.
    pub fn validate(&self) -> Vec<String> {
        let mut bad = Vec::new();
        let mut check = |key: &str, value: u64, min: u64, max: u64| {
            if !(min..=max).contains(&value) {
                bad.push(out_of_range(key, value, &format!("{min}..={max}")));
            }
        };
        let p = &self.pipeline;
        let threads = 256;
        check(
            "pipeline.ingest_workers",
            p.ingest_workers as u64,
            1,
            threads,
        );
        check(
            "pipeline.enrich_workers",
            p.enrich_workers as u64,
            1,
            threads,
        );
        check(
            "pipeline.aggregate_workers",
            p.aggregate_workers as u64,
            1,
            threads,
        );
        check("pipeline.queue_batches", p.queue_batches as u64, 1, 1 << 20);
        check("pipeline.batch_bytes", p.batch_bytes as u64, 4096, 16 << 20);
        check("pipeline.drain_interval_ms", p.drain_interval_ms, 1, 10_000);
        check("pipeline.flush_interval_ms", p.flush_interval_ms, 1, 10_000);
        check("pipeline.max_series", p.max_series as u64, 1, 10_000_000);
        check("pipeline.perf_pages", p.perf_pages as u64, 1, 1 << 16);
        let w = &self.web;
        check("web.max_connections", w.max_connections as u64, 1, 1 << 16);
        check(
            "web.header_timeout_seconds",
            w.header_timeout_seconds,
            1,
            300,
        );
        check("web.max_requests", w.max_requests as u64, 1, 1024);
        let t = &self.tap;
        check("tap.max_subscribers", t.max_subscribers as u64, 1, 1024);
        check("tap.input_batches", t.input_batches as u64, 1, 1 << 20);
        check("tap.queue_events", t.queue_events as u64, 1, 1 << 24);
        let k = &self.kubernetes;
        check(
            "kubernetes.series_grace_seconds",
            k.series_grace_seconds,
            0,
            7 * 86_400,
        );
        check("kubernetes.metadata_wait_ms", k.metadata_wait_ms, 0, 60_000);
        if let Some(sink) = &t.sink {
            check("tap.sink.max_bytes", sink.max_bytes, 1 << 20, u64::MAX);
        }
        if let Err(e) = TapListen::parse(&t.listen) {
            bad.push(format!("tap.listen: {e}"));
        }
        // The kernel's rules: a ring buffer is a power of two pages; a perf buffer
        // a power of two of pages per CPU.
        let page = page_size();
        let ring = u64::from(p.ring_bytes);
        if !ring.is_power_of_two() || ring < page || ring > 1 << 30 {
            bad.push(out_of_range(
                "pipeline.ring_bytes",
                ring,
                &format!("a power of two from the page size ({page}) to 1073741824"),
            ));
        }
        if !p.perf_pages.is_power_of_two() {
            bad.push(out_of_range(
                "pipeline.perf_pages",
                p.perf_pages,
                "a power of two",
            ));
        }
        if let Some(w) = p.wakeup_bytes {
            if w == 0 || w >= ring {
                bad.push(out_of_range(
                    "pipeline.wakeup_bytes",
                    w,
                    &format!("1..{ring} (below pipeline.ring_bytes)"),
                ));
            }
        }
        bad
    }
}

/// The kernel's page size.
fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(size).unwrap_or(4096)
}

/// One figment error as `key: reason (source)`.
fn describe(e: &figment::Error) -> String {
    let key = if e.path.is_empty() {
        "<top level>".to_string()
    } else {
        e.path.join(".")
    };
    let from = e
        .metadata
        .as_ref()
        .map(|m| match &m.source {
            Some(src) => format!(" (from {src})"),
            None => format!(" (from {})", m.name),
        })
        .unwrap_or_default();
    format!("{key}: {}{from}", e.kind)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_config_parses() {
        let c = Config::load(None).unwrap();
        assert_eq!(c.web.listen_address, ":9435");
        assert!(c.programs.contains_key("tcp_connect_latency"));
        assert_eq!(c.validate(), Vec::<String>::new());
    }

    proptest::proptest! {
        /// Whatever `tap.listen` says, the stream never lands on a network address.
        #[test]
        fn no_tap_listen_value_reaches_the_network(s in "\\PC{0,40}") {
            match TapListen::parse(&s) {
                Ok(TapListen::Loopback(a)) => proptest::prop_assert!(a.ip().is_loopback()),
                Ok(TapListen::Unix(p)) => proptest::prop_assert!(p.is_absolute()),
                Ok(TapListen::Metrics) => proptest::prop_assert_eq!(s.as_str(), "metrics"),
                Err(_) => {}
            }
        }
    }

    #[test]
    fn the_event_stream_listens_only_locally() {
        assert_eq!(
            TapListen::parse(DEFAULT_TAP_LISTEN),
            Ok(TapListen::Unix("/run/kube-ebpf-exporter/tap.sock".into()))
        );
        assert_eq!(
            TapListen::parse("127.0.0.1:9436"),
            Ok(TapListen::Loopback("127.0.0.1:9436".parse().unwrap()))
        );
        assert!(TapListen::parse("[::1]:9436").is_ok());
        assert!(matches!(
            TapListen::parse("0.0.0.0:9436"),
            Err(TapListenError::NotLoopback(_))
        ));
        assert!(TapListen::parse("unix:tap.sock").is_err());
        assert!(TapListen::parse("localhost").is_err());
    }

    #[test]
    fn out_of_range_settings_name_key_value_and_range() {
        let mut c = Config::load(None).unwrap();
        c.pipeline.enrich_workers = 100_000;
        c.pipeline.ring_bytes = 3;
        c.pipeline.wakeup_bytes = Some(1 << 30);
        c.pipeline.perf_pages = 3;
        c.tap.queue_events = 0;
        let bad = c.validate();
        let want = [
            "pipeline.enrich_workers = 100000: must be 1..=256 (set in the file or by KUBE_EBPF_EXPORTER__PIPELINE__ENRICH_WORKERS)",
            "pipeline.ring_bytes = 3: must be a power of two from the page size",
            "pipeline.wakeup_bytes = 1073741824: must be 1..3 (below pipeline.ring_bytes)",
            "pipeline.perf_pages = 3: must be a power of two",
            "tap.queue_events = 0: must be 1..=16777216",
        ];
        for w in want {
            assert!(bad.iter().any(|b| b.starts_with(w)), "{w}\n{bad:#?}");
        }
        assert_eq!(bad.len(), want.len(), "{bad:#?}");
    }

    #[test]
    fn errors_name_file_key_and_reason() {
        let dir = std::env::temp_dir().join(format!("cfg-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("bad.yaml");
        std::fs::write(&file, DEFAULT.replace("telemetry_path:", "telemetry_pth:")).unwrap();
        let err = format!("{:#}", Config::load(Some(&file)).unwrap_err());
        assert!(err.contains(&file.display().to_string()), "{err}");
        assert!(
            err.contains("web.telemetry_pth") && err.contains("unknown field"),
            "{err}"
        );

        std::fs::write(&file, DEFAULT.replace("bucket_max: 26", "bucket_max: lots")).unwrap();
        let err = format!("{:#}", Config::load(Some(&file)).unwrap_err());
        assert!(
            err.contains("bucket_max") && err.contains("invalid type"),
            "{err}"
        );

        let err = format!(
            "{:#}",
            Config::load(Some(&dir.join("missing.yaml"))).unwrap_err()
        );
        assert!(
            err.contains("missing.yaml") && err.contains("No such file"),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
