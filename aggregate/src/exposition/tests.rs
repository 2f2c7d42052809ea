//! Exposition in every format, read back by parsers written here (a line parser for
//! the text formats, prost messages for protobuf), not by the code under test.

use proptest::prelude::*;

use super::{format_float, Format, Kind, Native, PageWriter};

#[test]
fn formats_like_go() {
    let cases = [
        (1e-06, "1e-06"),
        (2e-06, "2e-06"),
        (1.6e-05, "1.6e-05"),
        (3.2e-05, "3.2e-05"),
        (0.000128, "0.000128"),
        (0.002206, "0.002206"),
        (67.108864, "67.108864"),
        (1.0, "1"),
        (10.0, "10"),
        (123456789.0, "1.23456789e+08"),
        (0.5, "0.5"),
        (f64::INFINITY, "+Inf"),
        (0.0, "0"),
        (-2.5, "-2.5"),
    ];
    for (f, want) in cases {
        assert_eq!(format_float(f), want, "{f}");
    }
}

#[test]
fn negotiates_what_prometheus_asks_for() {
    // Prometheus 2.42 with --enable-feature=native-histograms, then without.
    let native = "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited;q=0.5,application/openmetrics-text;version=1.0.0;q=0.4,application/openmetrics-text;version=0.0.1;q=0.3,text/plain;version=0.0.4;q=0.2,*/*;q=0.1";
    let plain = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
    assert_eq!(Format::negotiate(native), Format::Protobuf);
    assert_eq!(Format::negotiate(plain), Format::OpenMetrics);
    assert_eq!(Format::negotiate("*/*"), Format::Text);
    assert_eq!(Format::negotiate(""), Format::Text);
    assert_eq!(Format::negotiate("text/plain"), Format::Text);
    // Protobuf in another encoding, a future OpenMetrics, or q=0: not ours.
    assert_eq!(
        Format::negotiate(
            "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=text"
        ),
        Format::Text
    );
    assert_eq!(
        Format::negotiate("application/openmetrics-text;version=2.0.0"),
        Format::Text
    );
    assert_eq!(
        Format::negotiate("application/openmetrics-text;q=0, text/plain;q=0.1"),
        Format::Text
    );
    // Equal q: the first named.
    assert_eq!(
        Format::negotiate("application/openmetrics-text, text/plain"),
        Format::OpenMetrics
    );
    assert!(Format::OpenMetrics
        .content_type()
        .starts_with("application/openmetrics-text; version=1.0.0"));
}

/// prost messages of `io.prometheus.client` (metrics.proto), only the fields we write.
pub(crate) mod pb {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct MetricFamily {
        #[prost(string, optional, tag = "1")]
        pub name: Option<String>,
        #[prost(string, optional, tag = "2")]
        pub help: Option<String>,
        #[prost(int32, optional, tag = "3")]
        pub r#type: Option<i32>,
        #[prost(message, repeated, tag = "4")]
        pub metric: Vec<Metric>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Metric {
        #[prost(message, repeated, tag = "1")]
        pub label: Vec<LabelPair>,
        #[prost(message, optional, tag = "2")]
        pub gauge: Option<Value>,
        #[prost(message, optional, tag = "3")]
        pub counter: Option<Value>,
        #[prost(message, optional, tag = "5")]
        pub untyped: Option<Value>,
        #[prost(message, optional, tag = "7")]
        pub histogram: Option<Histogram>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct LabelPair {
        #[prost(string, optional, tag = "1")]
        pub name: Option<String>,
        #[prost(string, optional, tag = "2")]
        pub value: Option<String>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Value {
        #[prost(double, optional, tag = "1")]
        pub value: Option<f64>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Histogram {
        #[prost(uint64, optional, tag = "1")]
        pub sample_count: Option<u64>,
        #[prost(double, optional, tag = "2")]
        pub sample_sum: Option<f64>,
        #[prost(message, repeated, tag = "3")]
        pub bucket: Vec<Bucket>,
        #[prost(sint32, optional, tag = "5")]
        pub schema: Option<i32>,
        #[prost(double, optional, tag = "6")]
        pub zero_threshold: Option<f64>,
        #[prost(uint64, optional, tag = "7")]
        pub zero_count: Option<u64>,
        #[prost(message, repeated, tag = "12")]
        pub positive_span: Vec<Span>,
        #[prost(sint64, repeated, packed = "false", tag = "13")]
        pub positive_delta: Vec<i64>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Bucket {
        #[prost(uint64, optional, tag = "1")]
        pub cumulative_count: Option<u64>,
        #[prost(double, optional, tag = "2")]
        pub upper_bound: Option<f64>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Span {
        #[prost(sint32, optional, tag = "1")]
        pub offset: Option<i32>,
        #[prost(uint32, optional, tag = "2")]
        pub length: Option<u32>,
    }
}

pub(crate) fn decode_protobuf(mut page: &[u8]) -> Vec<pb::MetricFamily> {
    let mut out = Vec::new();
    while !page.is_empty() {
        out.push(
            prost::Message::decode_length_delimited(&mut page).expect("a delimited MetricFamily"),
        );
    }
    out
}

/// A text sample: name, label pairs, value.
type Sample = (String, Vec<(String, String)>, f64);

/// Parses a text page (0.0.4 or OpenMetrics) into (`# TYPE` lines, `# HELP` texts,
/// samples), unescaping as the format says, char by char.
/// (name, text) pairs of `# TYPE` or `# HELP` lines.
type Lines = Vec<(String, String)>;

fn parse_text(page: &str, om: bool) -> (Lines, Lines, Vec<Sample>) {
    let (mut types, mut helps, mut samples) = (Vec::new(), Vec::new(), Vec::new());
    let unescape = |s: &str| {
        let mut out = String::new();
        let mut it = s.chars();
        while let Some(c) = it.next() {
            if c == '\\' {
                match it.next().unwrap() {
                    'n' => out.push('\n'),
                    '\\' => out.push('\\'),
                    '"' if om => out.push('"'),
                    other => panic!("bad escape \\{other} in {s:?}"),
                }
            } else {
                out.push(c);
            }
        }
        out
    };
    for line in page.split('\n').filter(|l| !l.is_empty()) {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (n, t) = rest.split_once(' ').unwrap();
            types.push((n.to_string(), t.to_string()));
        } else if let Some(rest) = line.strip_prefix("# HELP ") {
            let (n, h) = rest.split_once(' ').unwrap();
            helps.push((n.to_string(), unescape(h)));
        } else if line.starts_with("# ") {
            continue;
        } else {
            let chars: Vec<char> = line.chars().collect();
            let mut i = 0;
            let mut name = String::new();
            while chars[i] != '{' && chars[i] != ' ' {
                name.push(chars[i]);
                i += 1;
            }
            let mut labels = Vec::new();
            if chars[i] == '{' {
                i += 1;
                while chars[i] != '}' {
                    let mut n = String::new();
                    while chars[i] != '=' {
                        n.push(chars[i]);
                        i += 1;
                    }
                    assert_eq!(chars[i + 1], '"', "{line}");
                    i += 2;
                    let mut v = String::new();
                    while chars[i] != '"' {
                        if chars[i] == '\\' {
                            v.push(match chars[i + 1] {
                                'n' => '\n',
                                '\\' => '\\',
                                '"' => '"',
                                other => panic!("bad escape \\{other} in {line:?}"),
                            });
                            i += 2;
                        } else {
                            assert_ne!(chars[i], '\n');
                            v.push(chars[i]);
                            i += 1;
                        }
                    }
                    i += 1;
                    if chars[i] == ',' {
                        i += 1;
                    }
                    labels.push((n, v));
                }
                i += 1;
            }
            assert_eq!(chars[i], ' ', "{line}");
            let value: String = chars[i + 1..].iter().collect();
            samples.push((name, labels, value.parse().unwrap()));
        }
    }
    (types, helps, samples)
}

/// One histogram series of the generated page.
#[derive(Debug, Clone)]
struct Hist {
    values: Vec<String>,
    counts: Vec<u64>,
    sum: f64,
    zero: u64,
    native: Vec<(i32, u64)>,
}

const BOUNDS: [f64; 3] = [1e-06, 0.5, 4.0];

fn label_value() -> impl Strategy<Value = String> {
    prop_oneof![any::<String>(), "[\"\\\\\n\r\t =,{}#é☃𝄞a-z]{0,12}",]
}

fn hist() -> impl Strategy<Value = Hist> {
    (
        proptest::collection::vec(label_value(), 2),
        proptest::collection::vec(0u64..1000, BOUNDS.len() + 1),
        0f64..1e6,
        0u64..10,
        proptest::collection::btree_map(-40i32..40, 1u64..1000, 0..12),
    )
        .prop_map(|(values, counts, sum, zero, native)| Hist {
            values,
            counts,
            sum,
            zero,
            native: native.into_iter().collect(),
        })
}

/// Writes the page: a counter (with `_total`), an untyped-in-OpenMetrics counter
/// (without), and a histogram with native buckets.
fn render(
    format: Format,
    help: &str,
    counters: &[(String, u64)],
    hists: &[Hist],
    limit: usize,
) -> Vec<u8> {
    let names = vec!["a".to_string(), "b_2".to_string()];
    let one = vec!["v".to_string()];
    let mut chunks = Vec::new();
    let mut emit = |c: Vec<u8>| chunks.push(c);
    let mut out = PageWriter::chunked(format, limit, &mut emit);
    for family in ["x_events_total", "x_events"] {
        out.family(family, help, Kind::Counter, &[]);
        for (v, n) in counters {
            out.value(&one, &[v.as_str()], *n as f64);
        }
    }
    out.family("x_latency_seconds", help, Kind::Histogram, &BOUNDS);
    for h in hists {
        let values: Vec<&str> = h.values.iter().map(String::as_str).collect();
        let native = Native {
            schema: 3,
            zero_threshold: 1e-9,
            zero_count: h.zero,
            buckets: &h.native,
        };
        out.histogram(&names, &values, &h.counts, h.sum, Some(native));
    }
    let rest = out.finish();
    chunks.push(rest);
    chunks.concat()
}

fn check_text(
    page: &[u8],
    om: bool,
    help: &str,
    counters: &[(String, u64)],
    hists: &[Hist],
) -> Result<(), TestCaseError> {
    let page = std::str::from_utf8(page).unwrap();
    let (types, helps, samples) = parse_text(page, om);
    let want_types = if om {
        [
            ("x_events", "counter"),
            ("x_events", "unknown"),
            ("x_latency_seconds", "histogram"),
        ]
    } else {
        [
            ("x_events_total", "counter"),
            ("x_events", "counter"),
            ("x_latency_seconds", "histogram"),
        ]
    };
    let types: Vec<(&str, &str)> = types
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    prop_assert_eq!(types, want_types.to_vec());
    prop_assert!(helps.iter().all(|(_, h)| h == help), "{:?}", helps);
    let mut want: Vec<Sample> = Vec::new();
    for family in ["x_events_total", "x_events"] {
        for (v, n) in counters {
            want.push((family.into(), vec![("v".into(), v.clone())], *n as f64));
        }
    }
    for h in hists {
        let labels = vec![
            ("a".to_string(), h.values[0].clone()),
            ("b_2".to_string(), h.values[1].clone()),
        ];
        let mut cumulative = 0;
        for (i, c) in h.counts.iter().enumerate() {
            cumulative += c;
            let mut l = labels.clone();
            l.push((
                "le".into(),
                BOUNDS.get(i).map_or("+Inf".into(), |&b| format_float(b)),
            ));
            want.push(("x_latency_seconds_bucket".into(), l, cumulative as f64));
        }
        want.push(("x_latency_seconds_sum".into(), labels.clone(), h.sum));
        want.push(("x_latency_seconds_count".into(), labels, cumulative as f64));
    }
    prop_assert_eq!(samples, want);
    if om {
        prop_assert!(page.ends_with("# EOF\n"));
        prop_assert!(page.contains("\n# UNIT x_latency_seconds seconds\n"));
    }
    Ok(())
}

fn check_protobuf(
    page: &[u8],
    help: &str,
    counters: &[(String, u64)],
    hists: &[Hist],
) -> Result<(), TestCaseError> {
    let families = decode_protobuf(page);
    // Messages of one family (a large family is split) read as one.
    let mut merged: Vec<pb::MetricFamily> = Vec::new();
    for f in families {
        match merged.last_mut() {
            Some(last) if last.name == f.name => last.metric.extend(f.metric),
            _ => merged.push(f),
        }
    }
    let names: Vec<(&str, i32)> = merged.iter().map(|f| (f.name(), f.r#type())).collect();
    prop_assert_eq!(
        names,
        vec![
            ("x_events_total", 0),
            ("x_events", 0),
            ("x_latency_seconds", 4)
        ]
    );
    prop_assert!(merged.iter().all(|f| f.help() == help));
    for f in &merged[..2] {
        let got: Vec<(String, f64)> = f
            .metric
            .iter()
            .map(|m| {
                (
                    m.label[0].value().to_string(),
                    m.counter.as_ref().unwrap().value(),
                )
            })
            .collect();
        let want: Vec<(String, f64)> = counters
            .iter()
            .map(|(v, n)| (v.clone(), *n as f64))
            .collect();
        prop_assert_eq!(got, want);
    }
    prop_assert_eq!(merged[2].metric.len(), hists.len());
    for (m, h) in merged[2].metric.iter().zip(hists) {
        let labels: Vec<(&str, &str)> = m.label.iter().map(|l| (l.name(), l.value())).collect();
        prop_assert_eq!(
            labels,
            vec![("a", h.values[0].as_str()), ("b_2", h.values[1].as_str())]
        );
        let p = m.histogram.as_ref().unwrap();
        let count = h.zero + h.native.iter().map(|b| b.1).sum::<u64>();
        prop_assert_eq!(p.sample_count(), count);
        prop_assert_eq!(p.sample_sum(), h.sum);
        let mut cumulative = 0;
        let classic: Vec<(f64, u64)> = BOUNDS
            .iter()
            .zip(&h.counts)
            .map(|(&b, c)| {
                cumulative += c;
                (b, cumulative.min(count))
            })
            .collect();
        let got: Vec<(f64, u64)> = p
            .bucket
            .iter()
            .map(|b| (b.upper_bound(), b.cumulative_count()))
            .collect();
        prop_assert_eq!(got, classic);
        prop_assert_eq!(
            (p.schema(), p.zero_threshold(), p.zero_count()),
            (3, 1e-9, h.zero)
        );
        // Spans and deltas back to (index, count).
        let mut buckets = Vec::new();
        let (mut index, mut count, mut deltas) = (0, 0i64, p.positive_delta.iter());
        for (i, s) in p.positive_span.iter().enumerate() {
            index += s.offset() + i32::from(i > 0);
            for j in 0..s.length() {
                count += deltas.next().unwrap();
                buckets.push((index + j as i32, count as u64));
            }
            index += s.length() as i32 - 1;
        }
        prop_assert_eq!(buckets, h.native.clone());
    }
    Ok(())
}

proptest! {
    #[test]
    fn every_format_reads_back(
        help in label_value(),
        counters in proptest::collection::vec((label_value(), 0u64..1 << 50), 1..6),
        hists in proptest::collection::vec(hist(), 1..6),
        limit in prop_oneof![Just(usize::MAX), 1usize..400],
    ) {
        check_text(&render(Format::Text, &help, &counters, &hists, limit), false, &help, &counters, &hists)?;
        check_text(&render(Format::OpenMetrics, &help, &counters, &hists, limit), true, &help, &counters, &hists)?;
        check_protobuf(&render(Format::Protobuf, &help, &counters, &hists, limit), &help, &counters, &hists)?;
    }
}

#[test]
fn facade_pages_are_replayed_in_each_format() {
    let page = "# HELP up_total Things, \\\\ and \\n\n# TYPE up_total counter\nup_total{k=\"a\\\"b\"} 3\n\n# TYPE g gauge\ng 1.5\nstray{x=\"1\"} 2\n";
    let mut out = PageWriter::buffer(Format::OpenMetrics);
    out.push_text(page);
    let om = String::from_utf8(out.finish()).unwrap();
    assert_eq!(
        om,
        "# HELP up Things, \\\\ and \\n\n# TYPE up counter\nup_total{k=\"a\\\"b\"} 3\n# HELP g \n# TYPE g gauge\ng 1.5\n# HELP stray \n# TYPE stray unknown\nstray{x=\"1\"} 2\n# EOF\n"
    );
    let mut out = PageWriter::buffer(Format::Protobuf);
    out.push_text(page);
    let families = decode_protobuf(&out.finish());
    assert_eq!(families.len(), 3);
    assert_eq!(families[0].help(), "Things, \\ and \n");
    assert_eq!(families[0].metric[0].label[0].value(), "a\"b");
    assert_eq!(families[1].metric[0].gauge.as_ref().unwrap().value(), 1.5);
    assert_eq!(families[2].r#type(), 3);
}
