//! Exposition of metric families in the format a scraper negotiated: Prometheus text
//! 0.0.4, OpenMetrics text 1.0.0, or delimited protobuf (the only one that carries
//! native histograms).
//!
//! Families are written series by series into a [`PageWriter`], which hands on chunks of
//! about a set size, so a scrape of many series never holds the whole page.

mod protobuf;
mod text;

pub use text::format_float;

/// A wire format of `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `text/plain; version=0.0.4`.
    Text,
    /// `application/openmetrics-text; version=1.0.0`.
    OpenMetrics,
    /// Length-delimited `io.prometheus.client.MetricFamily` messages.
    Protobuf,
}

impl Format {
    /// The format an `Accept` header asks for most (highest `q`, the earlier of equal
    /// ones); text 0.0.4 when it names none of ours, as the Go client answers.
    pub fn negotiate(accept: &str) -> Self {
        let mut best: Option<(f64, Format)> = None;
        for range in accept.split(',') {
            let mut parts = range.split(';').map(str::trim);
            let media = parts.next().unwrap_or("").to_ascii_lowercase();
            let mut q = 1.0;
            let (mut proto, mut encoding, mut version) = (None, None, None);
            for p in parts {
                let Some((k, v)) = p.split_once('=') else {
                    continue;
                };
                let v = v.trim().trim_matches('"');
                match k.trim().to_ascii_lowercase().as_str() {
                    "q" => q = v.parse().unwrap_or(0.0),
                    "proto" => proto = Some(v.to_string()),
                    "encoding" => encoding = Some(v.to_ascii_lowercase()),
                    "version" => version = Some(v.to_string()),
                    _ => {}
                }
            }
            let format = match media.as_str() {
                "application/vnd.google.protobuf"
                    if proto.as_deref() == Some("io.prometheus.client.MetricFamily")
                        && encoding.as_deref() == Some("delimited") =>
                {
                    Format::Protobuf
                }
                "application/openmetrics-text"
                    if matches!(version.as_deref(), None | Some("1.0.0" | "0.0.1")) =>
                {
                    Format::OpenMetrics
                }
                "text/plain" if matches!(version.as_deref(), None | Some("0.0.4")) => Format::Text,
                "text/*" | "*/*" => Format::Text,
                _ => continue,
            };
            if q > 0.0 && best.is_none_or(|(b, _)| q > b) {
                best = Some((q, format));
            }
        }
        best.map_or(Format::Text, |(_, f)| f)
    }

    /// The `Content-Type` of a page in this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Text => "text/plain; version=0.0.4; charset=utf-8",
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Format::Protobuf => {
                "application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=delimited"
            }
        }
    }
}

/// The type of a family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up (reset at restart).
    Counter,
    /// Goes up and down.
    Gauge,
    /// Not said.
    Untyped,
    /// Buckets, sum and count.
    Histogram,
}

/// A series' native buckets as served: ascending non-empty (index, count) at `schema`.
#[derive(Debug, Clone, Copy)]
pub struct Native<'a> {
    /// Schema of the bucket indexes.
    pub schema: i32,
    /// Upper bound of the zero bucket.
    pub zero_threshold: f64,
    /// Events in the zero bucket.
    pub zero_count: u64,
    /// Non-empty buckets.
    pub buckets: &'a [(i32, u64)],
}

/// The family being written.
#[derive(Debug, Default)]
struct Open {
    name: String,
    help: String,
    kind: Option<Kind>,
    bounds: Vec<f64>,
    /// Text formats: `le` values, and the sample names of histograms.
    le: Vec<String>,
    suffixed: [String; 3],
}

/// Where exposition goes: a buffer handed on in chunks of about `limit` bytes.
pub struct PageWriter<'a> {
    format: Format,
    buf: Vec<u8>,
    limit: usize,
    emit: Option<&'a mut dyn FnMut(Vec<u8>)>,
    open: Open,
    proto: protobuf::Family,
}

impl<'a> PageWriter<'a> {
    /// A writer in `format` that passes on chunks of at least `limit` bytes to `emit`.
    pub fn chunked(format: Format, limit: usize, emit: &'a mut dyn FnMut(Vec<u8>)) -> Self {
        Self {
            format,
            buf: Vec::with_capacity(limit.saturating_add(4096).min(1 << 20)),
            limit,
            emit: Some(emit),
            open: Open::default(),
            proto: protobuf::Family::default(),
        }
    }

    /// A sink that keeps everything (tests, small pages).
    pub fn buffer(format: Format) -> Self {
        Self {
            format,
            buf: Vec::new(),
            limit: usize::MAX,
            emit: None,
            open: Open::default(),
            proto: protobuf::Family::default(),
        }
    }

    /// Whether native buckets are served (only the protobuf format carries them), so
    /// callers skip reading them otherwise.
    pub fn native(&self) -> bool {
        self.format == Format::Protobuf
    }

    /// Starts family `name`; `bounds` are a histogram's classic bucket bounds (without
    /// `+Inf`). Closes the family before it.
    pub fn family(&mut self, name: &str, help: &str, kind: Kind, bounds: &[f64]) {
        self.close();
        let o = &mut self.open;
        o.name.clear();
        o.name.push_str(name);
        o.help.clear();
        o.help.push_str(help);
        o.kind = Some(kind);
        o.bounds.clear();
        o.bounds.extend_from_slice(bounds);
        if self.format == Format::Protobuf {
            return;
        }
        o.le.clear();
        o.le.extend(bounds.iter().map(|&b| format_float(b)));
        o.le.push("+Inf".into());
        for (s, suffix) in o.suffixed.iter_mut().zip(["_bucket", "_sum", "_count"]) {
            s.clear();
            s.push_str(name);
            s.push_str(suffix);
        }
        text::header(&mut self.buf, self.format, name, help, kind);
    }

    /// One counter, gauge or untyped sample of the open family.
    pub fn value(&mut self, names: &[String], values: &[&str], value: f64) {
        let kind = self.open.kind.unwrap_or(Kind::Untyped);
        match self.format {
            Format::Protobuf => self.proto.value(kind, names, values, value),
            _ => text::sample(
                &mut self.buf,
                &self.open.name,
                names,
                values,
                None,
                &format_float(value),
            ),
        }
        self.series_done();
    }

    /// One histogram of the open family: `counts` per classic bucket (`+Inf` last, not
    /// cumulative), the sum, and native buckets if the series has them.
    pub fn histogram(
        &mut self,
        names: &[String],
        values: &[&str],
        counts: &[u64],
        sum: f64,
        native: Option<Native>,
    ) {
        match self.format {
            Format::Protobuf => {
                self.proto
                    .histogram(names, values, &self.open.bounds, counts, sum, native)
            }
            _ => {
                let o = &self.open;
                let mut cumulative = 0u64;
                for (c, le) in counts.iter().zip(&o.le) {
                    cumulative += c;
                    text::sample(
                        &mut self.buf,
                        &o.suffixed[0],
                        names,
                        values,
                        Some(le),
                        &cumulative.to_string(),
                    );
                }
                text::sample(
                    &mut self.buf,
                    &o.suffixed[1],
                    names,
                    values,
                    None,
                    &format_float(sum),
                );
                text::sample(
                    &mut self.buf,
                    &o.suffixed[2],
                    names,
                    values,
                    None,
                    &cumulative.to_string(),
                );
            }
        }
        self.series_done();
    }

    /// Appends a page of text 0.0.4 written elsewhere (the `metrics` facade's), in
    /// this sink's format.
    pub fn push_text(&mut self, page: &str) {
        self.close();
        if self.format == Format::Text {
            self.buf.extend_from_slice(page.as_bytes());
            self.series_done();
            return;
        }
        text::replay(page, self);
    }

    /// Ends the page; returns what is left in the buffer.
    pub fn finish(mut self) -> Vec<u8> {
        self.close();
        if self.format == Format::OpenMetrics {
            self.buf.extend_from_slice(b"# EOF\n");
        }
        self.buf
    }

    fn close(&mut self) {
        if self.format == Format::Protobuf {
            if let Some(kind) = self.open.kind {
                self.proto
                    .write(&mut self.buf, &self.open.name, &self.open.help, kind);
            }
        }
        self.open.kind = None;
    }

    /// Hands on the buffer if it is over the limit (called between series).
    fn series_done(&mut self) {
        if self.format == Format::Protobuf && self.proto.len() >= self.limit {
            // A family of many series goes out as several messages of the same name,
            // which parsers merge, so no family is held whole.
            if let Some(kind) = self.open.kind {
                self.proto
                    .write(&mut self.buf, &self.open.name, &self.open.help, kind);
            }
        }
        if self.buf.len() >= self.limit {
            if let Some(emit) = &mut self.emit {
                emit(std::mem::take(&mut self.buf));
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests;
