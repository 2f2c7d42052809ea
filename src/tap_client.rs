//! `kube-ebpf-exporter tap`: prints live events from a running exporter's `/events`
//! (its local event stream listener: a unix socket by default).

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::TcpStream,
    os::unix::net::UnixStream,
};

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};

/// How events are printed.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LineFormat {
    /// One JSON object per line, as served.
    Json,
    /// One readable line per event.
    Pretty,
}

/// Flags of `tap`: filters as `/events` takes them.
#[derive(Debug, Args)]
pub struct TapArgs {
    /// The exporter's event stream (`tap.listen`): `unix:<path>` or `host:port`.
    #[arg(long, default_value = kube_ebpf_exporter::config::DEFAULT_TAP_LISTEN)]
    address: String,
    /// Only this config.
    #[arg(long)]
    config: Option<String>,
    /// Only this namespace.
    #[arg(long)]
    namespace: Option<String>,
    /// Only pods matching this glob (`web-*`).
    #[arg(long)]
    pod: Option<String>,
    /// Only this container.
    #[arg(long)]
    container: Option<String>,
    /// Only events whose field equals a value (`--field syscall=getpid`); repeatable.
    #[arg(long = "field", value_name = "NAME=VALUE")]
    fields: Vec<String>,
    /// Stop after this many events.
    #[arg(long)]
    limit: Option<u64>,
    /// At most this many events per second.
    #[arg(long)]
    rate: Option<u64>,
    /// Output format.
    #[arg(long, value_enum, default_value = "json")]
    output: LineFormat,
}

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

impl TapArgs {
    fn query(&self) -> Result<String> {
        let mut pairs: Vec<(String, String)> = Vec::new();
        let named = [
            ("config", &self.config),
            ("namespace", &self.namespace),
            ("pod", &self.pod),
            ("container", &self.container),
        ];
        for (k, v) in named {
            if let Some(v) = v {
                pairs.push((k.into(), v.clone()));
            }
        }
        for (k, v) in [("limit", self.limit), ("rate", self.rate)] {
            if let Some(v) = v {
                pairs.push((k.into(), v.to_string()));
            }
        }
        for f in &self.fields {
            let (k, v) = f
                .split_once('=')
                .with_context(|| format!("--field {f:?} is not NAME=VALUE"))?;
            pairs.push((k.into(), v.into()));
        }
        Ok(pairs
            .iter()
            .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
            .collect::<Vec<_>>()
            .join("&"))
    }
}

/// A connection to the exporter, over TCP or a unix socket.
trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

/// A readable line for one event.
fn pretty(line: &str) -> Result<String> {
    let e: serde_json::Value = serde_json::from_str(line).context("event is not JSON")?;
    let s = |k: &str| e.get(k).and_then(|v| v.as_str()).unwrap_or("");
    let who = if s("pod").is_empty() {
        format!("({})", s("unknown"))
    } else {
        format!("{}/{}/{}", s("namespace"), s("pod"), s("container"))
    };
    let mut out = format!("{} {} {}", s("time"), s("config"), who);
    if let Some(fields) = e.get("fields").and_then(|f| f.as_object()) {
        for (name, f) in fields {
            out.push_str(&format!(" {name}={}", f["raw"]));
            if let Some(v) = f.get("value").and_then(|v| v.as_str()) {
                out.push_str(&format!("({v})"));
            }
            if let Some(v) = f.get("scaled") {
                out.push_str(&format!("({v})"));
            }
        }
    }
    Ok(out)
}

/// Streams events to stdout until the exporter ends the stream or the limit is hit.
pub fn run(args: &TapArgs) -> Result<()> {
    let query = args.query()?;
    let connected: std::io::Result<Box<dyn ReadWrite>> = match args.address.strip_prefix("unix:") {
        Some(path) => UnixStream::connect(path).map(|s| Box::new(s) as _),
        None => TcpStream::connect(&args.address).map(|s| Box::new(s) as _),
    };
    let mut conn = connected.with_context(|| {
        format!("connecting to the exporter's event stream at {} (tap.listen; as the exporter's user, e.g. `kubectl exec <pod> -- kube-ebpf-exporter tap`)", args.address)
    })?;
    write!(
        conn,
        "GET /events?{query} HTTP/1.0\r\nHost: localhost\r\n\r\n"
    )?;
    let mut reader = BufReader::new(conn);
    let mut status = String::new();
    reader.read_line(&mut status)?;
    let mut header = String::new();
    while reader.read_line(&mut header)? > 2 {
        header.clear();
    }
    if !status.contains(" 200 ") {
        let mut body = String::new();
        let _ = reader.read_to_string(&mut body);
        bail!("{}: {}", status.trim(), body.trim());
    }
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    for line in reader.lines() {
        let line = line?;
        match args.output {
            LineFormat::Json => writeln!(out, "{line}")?,
            LineFormat::Pretty => writeln!(out, "{}", pretty(&line)?)?,
        }
        out.flush()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pretty_lines() {
        let line = r#"{"time":"2026-11-26T22:10:40.123456789Z","config":"tcp","namespace":"shop","pod":"web-1","container":"nginx","fields":{"latency_ns":{"raw":1500,"scaled":1.5e-6},"subnet":{"raw":32514,"label":"subnet","value":"127"}}}"#;
        assert_eq!(pretty(line).unwrap(), "2026-11-26T22:10:40.123456789Z tcp shop/web-1/nginx latency_ns=1500(1.5e-6) subnet=32514(127)");
        let outside = r#"{"time":"t","config":"c","namespace":"","pod":"","container":"","unknown":"not in a Kubernetes pod's cgroup","fields":{}}"#;
        assert_eq!(
            pretty(outside).unwrap(),
            "t c (not in a Kubernetes pod's cgroup)"
        );
        assert_eq!(encode("web-*"), "web-%2A");
    }
}
