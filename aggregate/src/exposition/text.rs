//! The text formats: Prometheus 0.0.4 and OpenMetrics 1.0.0, which differ in family
//! names of counters, `# UNIT`, the escaping of help and the closing `# EOF`.
//!
//! Floats are written the way the Go client writes them (`strconv` 'g', shortest), so
//! bucket bounds read `1e-06`, `1.6e-05`, `0.000128`, `67.108864` as users know them;
//! OpenMetrics `le` values too, so a series keeps its name when Prometheus switches
//! from text to OpenMetrics (the Go client's OpenMetrics `le="1.0"` does not).

use std::io::Write;

use super::{Format, Kind, PageWriter};

/// Formats a float as Go's `strconv.FormatFloat(f, 'g', -1, 64)`.
pub fn format_float(f: f64) -> String {
    if f.is_nan() {
        return "NaN".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "+Inf" } else { "-Inf" }.into();
    }
    if f == 0.0 {
        return "0".into();
    }
    // Rust's {:e} gives the shortest round-trip digits, e.g. "1.6e-5".
    let sci = format!("{f:e}");
    let (mantissa, exp) = sci.split_once('e').unwrap();
    let exp: i32 = exp.parse().unwrap();
    // strconv's shortest 'g' uses %e below 1e-4 and from 1e6 (precision 6) on.
    if (-4..6).contains(&exp) {
        return format!("{f}");
    }
    format!(
        "{mantissa}e{}{:02}",
        if exp < 0 { '-' } else { '+' },
        exp.abs()
    )
}

/// Units OpenMetrics names in `# UNIT` when a family's name ends with them.
const UNITS: [&str; 3] = ["seconds", "bytes", "ratio"];

/// Escapes `\`, newline and (`quote`) `"`.
fn escape(out: &mut Vec<u8>, s: &str, quote: bool) {
    for c in s.bytes() {
        match c {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'"' if quote => out.extend_from_slice(b"\\\""),
            c => out.push(c),
        }
    }
}

/// Writes `# HELP`, `# TYPE` (and `# UNIT` in OpenMetrics).
pub(super) fn header(out: &mut Vec<u8>, format: Format, name: &str, help: &str, kind: Kind) {
    let om = format == Format::OpenMetrics;
    // OpenMetrics names a counter's family without `_total`, which its samples must
    // carry; a counter named otherwise is served as `unknown`, keeping its name.
    let (family, kind) = match (om, kind) {
        (true, Kind::Counter) => match name.strip_suffix("_total") {
            Some(family) => (family, "counter"),
            None => (name, "unknown"),
        },
        (true, Kind::Untyped) => (name, "unknown"),
        (false, Kind::Untyped) => (name, "untyped"),
        (_, Kind::Counter) => (name, "counter"),
        (_, Kind::Gauge) => (name, "gauge"),
        (_, Kind::Histogram) => (name, "histogram"),
    };
    out.extend_from_slice(b"# HELP ");
    out.extend_from_slice(family.as_bytes());
    out.push(b' ');
    escape(out, help, om);
    let _ = writeln!(out, "\n# TYPE {family} {kind}");
    if om {
        if let Some(unit) = UNITS
            .iter()
            .find(|u| family.strip_suffix(*u).is_some_and(|f| f.ends_with('_')))
        {
            let _ = writeln!(out, "# UNIT {family} {unit}");
        }
    }
}

/// Writes one sample line; `le` is a bucket's bound.
pub(super) fn sample(
    out: &mut Vec<u8>,
    name: &str,
    names: &[String],
    values: &[&str],
    le: Option<&str>,
    value: &str,
) {
    out.extend_from_slice(name.as_bytes());
    if !names.is_empty() || le.is_some() {
        out.push(b'{');
        for (i, (n, v)) in names.iter().zip(values).enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(n.as_bytes());
            out.extend_from_slice(b"=\"");
            escape(out, v, true);
            out.push(b'"');
        }
        if let Some(le) = le {
            if !names.is_empty() {
                out.push(b',');
            }
            out.extend_from_slice(b"le=\"");
            out.extend_from_slice(le.as_bytes());
            out.push(b'"');
        }
        out.push(b'}');
    }
    out.push(b' ');
    out.extend_from_slice(value.as_bytes());
    out.push(b'\n');
}

/// Undoes [`escape`].
fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some(c) => out.push(c),
            None => out.push('\\'),
        }
    }
    out
}

/// Splits `a="x",b="y"` (the text between the braces) into names and unescaped values.
fn labels(s: &str) -> Option<(Vec<String>, Vec<String>)> {
    let (mut names, mut values) = (Vec::new(), Vec::new());
    let mut rest = s.trim_start_matches(',');
    while !rest.is_empty() {
        let (name, after) = rest.split_once("=\"")?;
        // The value ends at the first quote not escaped by a backslash.
        let mut end = None;
        let mut escaped = false;
        for (i, c) in after.char_indices() {
            match c {
                '\\' if !escaped => escaped = true,
                '"' if !escaped => {
                    end = Some(i);
                    break;
                }
                _ => escaped = false,
            }
        }
        let end = end?;
        names.push(name.trim().to_string());
        values.push(unescape(&after[..end]));
        rest = after[end + 1..].trim_start_matches(',');
    }
    Some((names, values))
}

/// Writes a page of text 0.0.4 (the `metrics` facade's counters and gauges) into
/// `sink` in its format. A sample whose family was not declared gets an untyped one.
pub(super) fn replay(page: &str, sink: &mut PageWriter) {
    let mut help = (String::new(), String::new());
    for line in page.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, text) = rest.split_once(' ').unwrap_or((rest, ""));
            help = (name.to_string(), unescape(text));
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, ""));
            let kind = match kind {
                "counter" => Kind::Counter,
                "gauge" => Kind::Gauge,
                _ => Kind::Untyped,
            };
            let text = if help.0 == name { help.1.as_str() } else { "" };
            sink.family(name, text, kind, &[]);
            continue;
        }
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (series, value) = match line.rsplit_once(' ') {
            Some((s, v)) => (s, v.parse::<f64>().unwrap_or(f64::NAN)),
            None => continue,
        };
        let (name, (names, values)) = match series.split_once('{') {
            Some((name, rest)) => match labels(rest.strip_suffix('}').unwrap_or(rest)) {
                Some(l) => (name, l),
                None => continue,
            },
            None => (series, Default::default()),
        };
        if sink.open.kind.is_none() || sink.open.name != name {
            sink.family(name, "", Kind::Untyped, &[]);
        }
        let values: Vec<&str> = values.iter().map(String::as_str).collect();
        sink.value(&names, &values, value);
    }
}
