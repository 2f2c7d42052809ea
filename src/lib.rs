//! kube-ebpf-exporter as a library: the pipeline that connects the stage crates, shared
//! by the binary and the benchmarks.

pub mod config;
pub mod handoff;
pub mod pipeline;
pub mod web_auth;
pub mod web_config;
pub mod web_config_watch;
