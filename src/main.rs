//! kube-ebpf-exporter: eBPF programs in, Prometheus metrics with pod labels out.
//!
//! Flow: bpf (kernel programs) → ingest (ring readers) → enrich (cgroup → pod) →
//! aggregate (series) → HTTP exposition. This file is the composition root: it parses
//! the command line, resolves the settings, starts the configs ([`startup`]), the
//! stages ([`app`]) and the server ([`http`]), and waits for shutdown.

mod app;
mod attach_mark;
mod catalog;
mod cli;
mod http;
mod privileges;
mod programs;
mod scrape;
mod settings;
mod startup;
mod tap_client;
mod telemetry;
mod units;
mod watch;
mod web;

use std::sync::Arc;

use anyhow::{bail, Result};
use clap::Parser;
use kube_ebpf_exporter::{config::TapListen, web_config, web_config_watch::WebConfigWatch};

use crate::{
    cli::{Cli, Command},
    settings::Settings,
    telemetry::Telemetry,
};

fn main() -> Result<()> {
    let cli = Cli::parse();
    match &cli.command {
        Some(Command::Tap(t)) => tap_client::run(t),
        Some(Command::Programs) => catalog::list_programs(),
        // One thread until programs are attached and capabilities dropped (see serve);
        // HTTP adds its serving thread after that, and scrapes render on blocking threads.
        None => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(serve(Settings::resolve(cli.args)?)),
    }
}

fn init_tracing() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// Starts everything over `settings` and serves until SIGTERM or ^C.
async fn serve(mut settings: Settings) -> Result<()> {
    init_tracing();
    let web_config = match &settings.web_config {
        // Checked now; parsed again whenever one of its files changes.
        Some(path) => Some(Arc::new(WebConfigWatch::new(
            path.clone(),
            web_config::load(path)?,
        ))),
        None => None,
    };
    let listen = TapListen::parse(&settings.config.tap.listen).expect("validated");
    if listen == TapListen::Metrics
        && web_config
            .as_ref()
            .is_none_or(|w| w.current().users.is_empty())
    {
        bail!(
            "{}: tap.listen: metrics serves the event stream to the network, so it needs --web.config.file with basic_auth_users",
            settings.source
        );
    }
    let started = startup::start_configs(&mut settings)?;
    let telemetry = Telemetry::install()?;
    let state = app::start_pipeline(&settings, started, telemetry)?;
    http::serve(&settings, listen, web_config, state).await
}
