//! Prometheus text exposition of the event-stream families.
//!
//! Floats are written the way the Go client writes them (`strconv` 'g', shortest), so
//! bucket bounds read `1e-06`, `1.6e-05`, `0.000128`, `67.108864` as users know them.

use std::fmt::Write;

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

/// Where exposition text goes: a buffer handed on in chunks of about `limit` bytes, so
/// a scrape of many series never holds the whole page in memory.
pub struct Sink<'a> {
    buf: String,
    limit: usize,
    emit: Option<&'a mut dyn FnMut(String)>,
}

impl<'a> Sink<'a> {
    /// A sink that passes on chunks of at least `limit` bytes to `emit`.
    pub fn chunked(limit: usize, emit: &'a mut dyn FnMut(String)) -> Self {
        Self {
            buf: String::with_capacity(limit + 4096),
            limit,
            emit: Some(emit),
        }
    }

    /// A sink that keeps everything (tests, small pages).
    pub fn buffer() -> Self {
        Self {
            buf: String::new(),
            limit: usize::MAX,
            emit: None,
        }
    }

    pub(crate) fn buf(&mut self) -> &mut String {
        &mut self.buf
    }

    /// Hands on the buffer if it is over the limit (called between series).
    pub(crate) fn series_done(&mut self) {
        if self.buf.len() >= self.limit {
            if let Some(emit) = &mut self.emit {
                emit(std::mem::take(&mut self.buf));
            }
        }
    }

    /// Appends text written elsewhere (self-metrics).
    pub fn push_str(&mut self, text: &str) {
        self.buf.push_str(text);
        self.series_done();
    }

    /// What is left in the buffer.
    pub fn finish(self) -> String {
        self.buf
    }
}

/// Escapes a label value (`\`, `"` and newline).
pub(crate) fn escape_into(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// Writes `{a="x",b="y"` (no closing brace, so `le` can follow).
fn open_labels(out: &mut String, names: &[String], values: &[&str]) {
    out.push('{');
    for (i, (n, v)) in names.iter().zip(values).enumerate() {
        if i > 0 {
            out.push(',');
        }
        let _ = write!(out, "{n}=\"");
        escape_into(out, v);
        out.push('"');
    }
}

/// Writes `# HELP` and `# TYPE`.
pub(crate) fn header(out: &mut String, name: &str, help: &str, kind: &str) {
    let help = help.replace('\\', "\\\\").replace('\n', "\\n");
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// Writes one sample.
pub(crate) fn sample(out: &mut String, name: &str, names: &[String], values: &[&str], value: &str) {
    out.push_str(name);
    if !names.is_empty() {
        open_labels(out, names, values);
        out.push('}');
    }
    let _ = writeln!(out, " {value}");
}

/// Writes one histogram series: cumulative buckets (`counts` has one more entry than
/// `bounds`, for `+Inf`), `_sum` and `_count`.
pub(crate) fn histogram(
    out: &mut String,
    name: &str,
    names: &[String],
    values: &[&str],
    bounds: &[String],
    counts: &[u64],
    sum: f64,
) {
    let mut cumulative = 0u64;
    for (i, c) in counts.iter().enumerate() {
        cumulative += c;
        let le = bounds.get(i).map_or("+Inf", String::as_str);
        let _ = write!(out, "{name}_bucket");
        open_labels(out, names, values);
        let sep = if names.is_empty() { "" } else { "," };
        let _ = writeln!(out, "{sep}le=\"{le}\"}} {cumulative}");
    }
    sample(
        out,
        &format!("{name}_sum"),
        names,
        values,
        &format_float(sum),
    );
    sample(
        out,
        &format!("{name}_count"),
        names,
        values,
        &cumulative.to_string(),
    );
}

#[cfg(test)]
mod tests {
    use super::format_float;

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
}
