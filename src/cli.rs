//! The command line: subcommands, and the flags that override the config file (as a
//! figment provider layered over the file and the environment).

use std::path::PathBuf;

use clap::Parser;
use figment::{
    providers::Serialized,
    value::{Dict, Map},
    Metadata, Profile, Provider,
};
use serde::Serialize;

use crate::{privileges, tap_client};

/// Prometheus exporter for custom eBPF metrics, with Kubernetes pod labels.
#[derive(Debug, Parser)]
#[command(version, args_conflicts_with_subcommands = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub args: Args,
}

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Print live, enriched events from a running exporter (its /events).
    Tap(tap_client::TapArgs),
    /// List the built-in programs: what each answers, its hooks, kernel needs, and
    /// whether the embedded default runs it.
    Programs,
}

#[derive(Debug, clap::Args)]
pub struct Args {
    /// YAML config file; without it (and without --config.dir) the embedded default runs.
    #[arg(long = "config.file", value_name = "PATH")]
    pub config_file: Option<PathBuf>,
    /// Directory of `<name>.yaml` configs, each beside its compiled `<name>.bpf.o`.
    #[arg(long = "config.dir", value_name = "DIR")]
    pub config_dir: Option<PathBuf>,
    /// Which of the main config's programs run: comma-separated names, or `all`
    /// (default: those not marked `enabled: false`).
    #[arg(
        long = "programs",
        env = "KUBE_EBPF_EXPORTER_PROGRAMS",
        value_name = "NAMES",
        value_delimiter = ','
    )]
    pub programs: Vec<String>,
    /// Comma-separated config names to run from --config.dir (default: every .yaml).
    #[arg(long = "config.names", value_name = "NAMES", value_delimiter = ',')]
    pub config_names: Vec<String>,
    /// Load and attach every config, report each, and exit (non-zero if any failed).
    #[arg(long = "config.check")]
    pub config_check: bool,
    /// Stop at the first config that fails, instead of skipping it and reporting it
    /// in ebpf_exporter_config_failed.
    #[arg(long = "config.strict")]
    pub config_strict: bool,
    /// Reload program configs without a restart: on SIGHUP, when --config.dir or the
    /// config file's directory changes, and every --config.reload-interval. Keeps
    /// CAP_BPF and CAP_PERFMON to load programs later.
    #[arg(long = "config.reload")]
    pub config_reload: bool,
    /// Seconds between checks of the configs on disk (with --config.reload).
    #[arg(
        long = "config.reload-interval",
        value_name = "SECONDS",
        default_value_t = 60
    )]
    pub config_reload_interval: u64,
    /// Serve POST /-/reload (keeps CAP_BPF and CAP_PERFMON, as --config.reload).
    #[arg(long = "web.enable-lifecycle")]
    pub web_enable_lifecycle: bool,
    /// Address to serve metrics on (`host:port` or `:port`); overrides the config.
    #[arg(long = "web.listen-address", value_name = "ADDR")]
    pub listen_address: Option<String>,
    /// Path of the metrics page; overrides the config.
    #[arg(long = "web.telemetry-path", value_name = "PATH")]
    pub telemetry_path: Option<String>,
    /// TLS, basic auth and headers for the metrics listener, in the Prometheus
    /// exporter-toolkit format; parsed again when one of its files changes.
    #[arg(long = "web.config.file", value_name = "FILE")]
    pub web_config_file: Option<PathBuf>,
    /// External kernel BTF, for kernels without /sys/kernel/btf/vmlinux.
    #[arg(long = "btf.path", value_name = "PATH")]
    pub btf_path: Option<PathBuf>,
    /// Capabilities to keep after attaching, beyond what the exporter still uses
    /// (e.g. perfmon,sys_admin); the rest are dropped.
    #[arg(long = "capabilities.keep", value_name = "CAPS", value_delimiter = ',', value_parser = privileges::parse)]
    pub capabilities_keep: Vec<caps::Capability>,
    /// Keep every capability the exporter started with.
    #[arg(long = "capabilities.keep-all")]
    pub capabilities_keep_all: bool,
    /// Value of the node_id label (default: $NODE_NAME, else the hostname).
    #[arg(long = "node-id", env = "NODE_ID", value_name = "NAME")]
    pub node_id: Option<String>,
    /// Ring reader threads; overrides pipeline.ingest_workers.
    #[arg(long = "ingest.workers", value_name = "N")]
    pub ingest_workers: Option<usize>,
    /// Enrich worker threads; overrides pipeline.enrich_workers.
    #[arg(long = "enrich.workers", value_name = "N")]
    pub enrich_workers: Option<usize>,
    /// Aggregate worker threads (shards by pod); overrides pipeline.aggregate_workers.
    #[arg(long = "aggregate.workers", value_name = "N")]
    pub aggregate_workers: Option<usize>,
    /// The kubelet's pod log directory; overrides the config.
    #[arg(long = "kubelet.pod-logs-dir", value_name = "DIR")]
    pub pod_logs_dir: Option<String>,
    /// The kubelet's container log link directory; overrides the config.
    #[arg(long = "kubelet.container-logs-dir", value_name = "DIR")]
    pub container_logs_dir: Option<String>,
}

/// The flags that override config keys, shaped as the config (only those given).
#[derive(Serialize)]
struct Overrides<'a> {
    web: WebOverrides<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    node_id: Option<&'a str>,
    pipeline: PipelineOverrides,
    kubernetes: KubernetesOverrides<'a>,
}

#[derive(Serialize)]
struct WebOverrides<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    listen_address: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    telemetry_path: Option<&'a str>,
}

#[derive(Serialize)]
struct PipelineOverrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    ingest_workers: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    enrich_workers: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    aggregate_workers: Option<usize>,
}

#[derive(Serialize)]
struct KubernetesOverrides<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pod_logs_dir: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    container_logs_dir: Option<&'a str>,
}

/// The flags given, over the config file and the environment.
impl Provider for Args {
    fn metadata(&self) -> Metadata {
        Metadata::named("command-line flags")
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        let overrides = Overrides {
            web: WebOverrides {
                listen_address: self.listen_address.as_deref(),
                telemetry_path: self.telemetry_path.as_deref(),
            },
            node_id: self.node_id.as_deref(),
            pipeline: PipelineOverrides {
                ingest_workers: self.ingest_workers,
                enrich_workers: self.enrich_workers,
                aggregate_workers: self.aggregate_workers,
            },
            kubernetes: KubernetesOverrides {
                pod_logs_dir: self.pod_logs_dir.as_deref(),
                container_logs_dir: self.container_logs_dir.as_deref(),
            },
        };
        Serialized::globals(overrides).data()
    }
}
