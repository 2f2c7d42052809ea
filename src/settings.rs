//! The resolved settings: the config file (or embedded default) under the environment
//! and the flags, checked; and what the flags decide beyond the config. Start-up, the
//! pipeline, HTTP and reloads read these, never the command line.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use anyhow::{bail, Context as _, Result};
use kube_ebpf_exporter::config::Config;

use crate::{cli::Args, units::Selection};

/// When configs are loaded again without a restart.
pub struct Reload {
    /// On SIGHUP, on changes in `watched` and every `interval` (`--config.reload`).
    pub on_change: bool,
    /// `POST /-/reload` (`--web.enable-lifecycle`).
    pub endpoint: bool,
    pub interval: Duration,
    /// `--config.dir` and the config file's directory: a ConfigMap's update shows in
    /// the directory holding the file, not in the file.
    pub watched: Vec<PathBuf>,
}

impl Reload {
    /// Whether configs may be loaded after start-up (so loading capabilities stay).
    pub fn any(&self) -> bool {
        self.on_change || self.endpoint
    }
}

/// Capabilities kept after attaching, beyond what the exporter still uses.
pub struct Keep {
    /// `--capabilities.keep-all`.
    pub all: bool,
    /// `--capabilities.keep`.
    pub extra: Vec<caps::Capability>,
}

/// Everything the exporter runs by.
pub struct Settings {
    pub config: Config,
    /// The config's name in messages.
    pub source: String,
    pub listen: SocketAddr,
    pub selection: Selection,
    /// `--web.config.file`.
    pub web_config: Option<PathBuf>,
    /// `--btf.path`.
    pub btf_path: Option<PathBuf>,
    /// `--config.check`: report each config and exit.
    pub check: bool,
    /// `--config.strict`: the first config that fails stops start-up.
    pub strict: bool,
    pub reload: Reload,
    pub keep: Keep,
}

impl Settings {
    /// The config with the environment and `args` over it, checked.
    pub fn resolve(args: Args) -> Result<Self> {
        let config = Config::load_with(args.config_file.as_deref(), &args)?;
        let source = args
            .config_file
            .as_ref()
            .map_or("embedded default config".to_string(), |p| {
                p.display().to_string()
            });
        let bad = config.validate();
        if !bad.is_empty() {
            bail!("{source}: settings out of range:\n  {}", bad.join("\n  "));
        }
        let path = &config.web.telemetry_path;
        if !path.starts_with('/') || path == "/healthz" {
            bail!("{source}: web.telemetry_path: {path:?} must start with / and not be /healthz");
        }
        let listen = listen_addr(&config.web.listen_address)
            .with_context(|| format!("{source}: web.listen_address"))?;
        let file_dir = args.config_file.as_ref().and_then(|f| {
            let dir = f.parent()?;
            Some(if dir.as_os_str().is_empty() {
                PathBuf::from(".")
            } else {
                dir.to_path_buf()
            })
        });
        Ok(Self {
            config,
            source,
            listen,
            reload: Reload {
                on_change: args.config_reload,
                endpoint: args.web_enable_lifecycle,
                interval: Duration::from_secs(args.config_reload_interval.max(1)),
                watched: args.config_dir.iter().cloned().chain(file_dir).collect(),
            },
            selection: Selection {
                file: args.config_file,
                dir: args.config_dir,
                names: args.config_names,
                programs: args.programs,
            },
            web_config: args.web_config_file,
            btf_path: args.btf_path,
            check: args.config_check,
            strict: args.config_strict,
            keep: Keep {
                all: args.capabilities_keep_all,
                extra: args.capabilities_keep,
            },
        })
    }
}

/// `host:port`, or `:port` for every interface.
fn listen_addr(s: &str) -> Result<SocketAddr> {
    let full = if s.starts_with(':') {
        format!("0.0.0.0{s}")
    } else {
        s.to_string()
    };
    full.parse()
        .with_context(|| format!("listen address {s:?} is not host:port or :port"))
}
