//! One harness per parser that takes untrusted bytes. Each takes arbitrary bytes and
//! must neither panic nor hang, whatever they are; `tests/harnesses.rs` runs them under
//! `cargo test` (the seed corpus in `fuzz/corpus/<harness>/` and random bytes), and
//! `fuzz/` runs them as coverage-guided campaigns (`fuzz/run.sh`).

use std::sync::{Arc, OnceLock};

use aggregate::{
    config::DecoderConfig,
    decoder::{Chain, Context},
    Format, KubeLabelNames, PageWriter, ProgramPlan, Registry, StreamAggregator, StreamPlan,
    StreamStats,
};
use enrich::PodLabels;
use kube_ebpf_exporter::config::{Config, Program, TapListen};

/// A harness: it takes any bytes.
pub type Harness = fn(&[u8]);

/// Every harness by name (the name of its corpus directory and fuzz target).
pub const HARNESSES: [(&str, Harness); 10] = [
    ("settings_yaml", settings_yaml),
    ("program_config", program_config),
    ("ring_records", ring_records),
    ("decoders", decoders),
    ("cgroup_paths", cgroup_paths),
    ("tap_query", tap_query),
    ("elf_usdt", elf_usdt),
    ("cri_messages", cri_messages),
    ("api_pods", api_pods),
    ("http_headers", http_headers),
];

/// The exporter's settings file, then the checks that run on it.
pub fn settings_yaml(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(config) = Config::parse(text, "fuzz") {
        let _ = config.validate();
        let _ = TapListen::parse(&config.tap.listen);
    }
}

/// Writes every family of `registry` in every format.
fn render_all(registry: &Registry) {
    for format in [Format::Text, Format::OpenMetrics, Format::Protobuf] {
        let mut sink = PageWriter::buffer(format);
        registry.render(&mut sink);
        let _ = sink.finish();
    }
}

/// Feeds `records` (cut into records of the stream's size, the last one short) to
/// every stream of `plan`, then renders.
fn observe_all(streams: &[Arc<StreamPlan>], registry: &Registry, records: &[u8]) {
    let pod = Arc::new(PodLabels {
        id: 1,
        namespace: "ns".into(),
        pod: "pod".into(),
        container: "c".into(),
        extra: Box::default(),
    });
    for stream in streams {
        let size = stream.record_size.max(1);
        for record in records.chunks(size) {
            for f in stream.fields() {
                if record.len() >= size {
                    let _ = f.raw(record);
                    let _ = f.label(record);
                }
            }
        }
        let mut agg = StreamAggregator::new(stream.clone(), Arc::new(StreamStats::default()));
        for record in records.chunks(size) {
            agg.observe(record, &pod);
        }
        agg.flush_stats();
    }
    render_all(registry);
}

/// A program config (YAML up to the first NUL byte) compiled against a registry, and
/// the bytes after it as its records.
pub fn program_config(data: &[u8]) {
    let (yaml, records) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let Ok(text) = std::str::from_utf8(yaml) else {
        return;
    };
    let Ok(program) = Program::parse(text, "fuzz") else {
        return;
    };
    let registry = Registry::new(KubeLabelNames::default(), "node".into());
    if let Ok(plan) = ProgramPlan::compile(
        &program.rings,
        &program.metrics,
        &registry,
        &Context::default(),
        "",
    ) {
        let streams: Vec<Arc<StreamPlan>> = plan.streams.into_iter().map(Arc::new).collect();
        observe_all(&streams, &registry, records);
    }
}

/// A ring whose labels use every decoder that needs no host state, with native and
/// classic histograms.
const RECORDS: &str = r#"
rings:
  - name: events
    fields:
      - { name: a, size: 8 }
      - { name: b, size: 4 }
      - { name: c, size: 4 }
      - { name: s, size: 16 }
      - { name: ip, size: 16 }
metrics:
  counters:
    - name: a_total
      help: a
      ring: events
      value: { field: c, scale: 1 }
      labels:
        - { name: s, field: s, decoders: [{ name: string }, { name: regexp, regexps: ["^x", "y$"] }] }
        - { name: e, field: b, decoders: [{ name: errno }] }
    - name: b_total
      help: b
      ring: events
      labels:
        - { name: ip, field: ip, decoders: [{ name: inet_ip }] }
        - { name: sub, field: b, decoders: [{ name: inet_subnet }] }
        - { name: sc, field: c, decoders: [{ name: uint }, { name: syscall }] }
        - { name: m, field: b, decoders: [{ name: uint }, { name: static_map, static_map: { "1": one } }] }
  histograms:
    - name: h_seconds
      help: h
      ring: events
      value: { field: a, scale: 1e-9 }
      bucket_type: exp2
      bucket_min: 0
      bucket_max: 30
      bucket_multiplier: 1e-09
      native_histogram: { schema: 8, max_buckets: 4 }
      labels:
        - { name: hex, field: b, decoders: [{ name: hex }] }
    - name: l_bytes
      help: l
      ring: events
      value: { field: b }
      bucket_type: linear
      bucket_min: 1
      bucket_max: 5
      bucket_multiplier: 100
      native_histogram: { schema: -4, zero_threshold: 10 }
"#;

/// [`RECORDS`] compiled once (its regexps are the costly part), with the registry of
/// its families: series accumulate across inputs, up to each metric's `max_series`.
fn records_plan() -> &'static (Registry, Vec<Arc<StreamPlan>>) {
    static PLAN: OnceLock<(Registry, Vec<Arc<StreamPlan>>)> = OnceLock::new();
    PLAN.get_or_init(|| {
        let program = Program::parse(RECORDS, "records").expect("the harness's config");
        let registry = Registry::new(KubeLabelNames::default(), "node".into()).max_series(64);
        let plan = ProgramPlan::compile(
            &program.rings,
            &program.metrics,
            &registry,
            &Context::default(),
            "",
        )
        .expect("the harness's config compiles");
        (registry, plan.streams.into_iter().map(Arc::new).collect())
    })
}

/// Arbitrary ring records against a fixed plan: decoding, aggregation, exposition.
pub fn ring_records(data: &[u8]) {
    let (registry, streams) = records_plan();
    observe_all(streams, registry, data);
}

/// Decoders that need no host state (kallsyms, cgroups, devices come from the host).
const DECODERS: [&str; 12] = [
    "uint",
    "string",
    "hex",
    "errno",
    "syscall",
    "inet_ip",
    "inet_subnet",
    "dname",
    "ifname",
    "exit_reason",
    "static_map",
    "regexp",
];

/// One decoder chain: the first byte picks the decoder, the second the input size,
/// the rest is its input (and, for static_map and regexp, their settings).
pub fn decoders(data: &[u8]) {
    let [pick, size, rest @ ..] = data else {
        return;
    };
    let name = DECODERS[usize::from(*pick) % DECODERS.len()];
    let mut d = DecoderConfig::named(name);
    let text = String::from_utf8_lossy(rest).to_string();
    match name {
        "static_map" => {
            d.static_map
                .insert(text.chars().take(3).collect(), "x".into());
            d.allow_unknown = pick & 0x80 != 0;
        }
        "regexp" => d.regexps.push(text.chars().take(8).collect()),
        _ => {}
    }
    let size = usize::from(*size % 64).max(1);
    let chain = if matches!(name, "static_map" | "regexp") {
        Chain::build(
            &[DecoderConfig::named("string"), d],
            size,
            "",
            &Context::default(),
        )
    } else {
        Chain::build(&[d], size, "", &Context::default())
    };
    if let Ok(chain) = chain {
        let mut input = rest.to_vec();
        input.resize(size, 0);
        let _ = chain.decode(&input);
    }
}

/// Cgroup paths (kubelet naming), and the mount table the cgroup2 mount is found in.
pub fn cgroup_paths(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let _ = enrich::kubepath::parse(&text);
    let _ = enrich::kubepath::standalone_container(&text);
    let _ = enrich::cgroup2_mount(&text);
}

/// An `/events` query string against the streams of a fixed config.
pub fn tap_query(data: &[u8]) {
    let Ok(query) = std::str::from_utf8(data) else {
        return;
    };
    let streams: Vec<aggregate::Stream> = records_plan()
        .1
        .iter()
        .map(|p| aggregate::Stream {
            program: "records".into(),
            plan: p.clone(),
            stats: Default::default(),
        })
        .collect();
    let _ = tap::Filter::parse(query, &streams);
}

/// An ELF file: its USDT notes (`.note.stapsdt`) and argument specs, its `.kconfig`
/// and other externs, and the rewrite a load makes of it.
pub fn elf_usdt(data: &[u8]) {
    if let Ok(sites) = ingest::usdt::sites(data, "workload", "job") {
        for s in sites {
            let _ = format!("{s:?}");
        }
    }
    let _ = ingest::elf::externs(data);
    if let Ok(text) = std::str::from_utf8(data) {
        for arg in text.split(' ') {
            let _ = ingest::usdt::parse_arg(arg);
        }
    }
}

/// CRI responses as they come over the wire: the first byte splits the sandbox
/// listing from the container listing.
pub fn cri_messages(data: &[u8]) {
    let [split, rest @ ..] = data else {
        return;
    };
    let at = usize::from(*split).min(rest.len());
    let _ = enrich::cri::index_listing(&rest[..at], &rest[at..]);
}

/// A pod as the API server sends it (JSON).
pub fn api_pods(data: &[u8]) {
    let _ = enrich::pod_from_json(data);
}

/// Request headers the exporter parses: `Authorization: Basic`, `Accept` for the
/// exposition format.
pub fn http_headers(data: &[u8]) {
    let _ = kube_ebpf_exporter::web_config::basic_credentials(data);
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = Format::negotiate(text);
    }
}
