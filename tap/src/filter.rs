//! Subscriber filters, from `/events` query parameters or `tap` flags.

use aggregate::Stream;

/// What a subscriber wants to see.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Filter {
    /// Only this config (program).
    pub config: Option<String>,
    /// Only this namespace.
    pub namespace: Option<String>,
    /// Only pods matching this glob (`*`, `?`).
    pub pod: Option<String>,
    /// Only this container.
    pub container: Option<String>,
    /// Record fields that must equal a value (as their label shows them, or raw).
    pub fields: Vec<(String, String)>,
    /// Stop after this many events.
    pub limit: Option<u64>,
    /// At most this many events per second; the rest are skipped and counted.
    pub rate: Option<u64>,
}

/// A filter that cannot be applied; the message says what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct FilterError(pub String);

fn percent_decode(s: &str) -> Result<String, FilterError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = s
                    .get(i + 1..i + 3)
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                out.push(hex.ok_or_else(|| FilterError(format!("bad percent-encoding in {s:?}")))?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| FilterError(format!("{s:?} is not UTF-8")))
}

/// `*` matches any run of characters, `?` any one character.
pub(crate) fn glob(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti, mut star, mut mark) = (0, 0, None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

impl Filter {
    /// Parses `key=value&...` and checks it against the streams the tap knows.
    ///
    /// # Errors
    /// Unknown configs or fields, empty or repeated keys, non-numeric `limit`/`rate`.
    pub fn parse(query: &str, streams: &[Stream]) -> Result<Self, FilterError> {
        let mut f = Filter::default();
        let mut seen: Vec<String> = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair
                .split_once('=')
                .ok_or_else(|| FilterError(format!("{pair:?} is not key=value")))?;
            let (k, v) = (percent_decode(k)?, percent_decode(v)?);
            if v.is_empty() {
                return Err(FilterError(format!("{k}: empty value")));
            }
            if seen.contains(&k) {
                return Err(FilterError(format!("{k} is given twice")));
            }
            seen.push(k.clone());
            let number = |v: &str| {
                v.parse::<u64>()
                    .ok()
                    .filter(|&n| n > 0)
                    .ok_or_else(|| FilterError(format!("{k}: {v:?} is not a positive integer")))
            };
            match k.as_str() {
                "config" => f.config = Some(v),
                "namespace" => f.namespace = Some(v),
                "pod" => f.pod = Some(v),
                "container" => f.container = Some(v),
                "limit" => f.limit = Some(number(&v)?),
                "rate" => f.rate = Some(number(&v)?),
                _ => f.fields.push((k, v)),
            }
        }
        let candidates: Vec<&Stream> = match &f.config {
            Some(c) => {
                let s: Vec<&Stream> = streams.iter().filter(|s| &s.program == c).collect();
                if s.is_empty() {
                    let mut known: Vec<&str> = streams.iter().map(|s| s.program.as_str()).collect();
                    known.dedup();
                    return Err(FilterError(format!(
                        "config: no config named {c:?} streams events (known: {})",
                        known.join(", ")
                    )));
                }
                s
            }
            None => streams.iter().collect(),
        };
        for (k, _) in &f.fields {
            if !candidates
                .iter()
                .any(|s| s.plan.fields().iter().any(|fv| &fv.name == k))
            {
                let mut known: Vec<&str> = candidates
                    .iter()
                    .flat_map(|s| s.plan.fields().iter().map(|fv| fv.name.as_str()))
                    .collect();
                known.sort_unstable();
                known.dedup();
                return Err(FilterError(format!(
                    "{k}: not a filter (config, namespace, pod, container, limit, rate) nor a field of {} (fields: {})",
                    f.config.as_deref().unwrap_or("any config"),
                    known.join(", ")
                )));
            }
        }
        Ok(f)
    }

    /// Whether an event's config and pod pass (fields are checked separately).
    pub(crate) fn matches_pod(
        &self,
        config: &str,
        namespace: &str,
        pod: &str,
        container: &str,
    ) -> bool {
        self.config.as_deref().is_none_or(|c| c == config)
            && self.namespace.as_deref().is_none_or(|n| n == namespace)
            && self.pod.as_deref().is_none_or(|p| glob(p, pod))
            && self.container.as_deref().is_none_or(|c| c == container)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob("web-*", "web-6b7f9c-x2v4q"));
        assert!(glob("*-x2v4q", "web-6b7f9c-x2v4q"));
        assert!(glob("w?b*q", "web-6b7f9c-x2v4q"));
        assert!(glob("*", ""));
        assert!(!glob("api-*", "web-1"));
        assert!(!glob("web", "web-1"));
        assert!(glob("a*b*c", "aXXbYYc"));
        assert!(!glob("a*b*c", "aXXbYY"));
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("web-%2A").unwrap(), "web-*");
        assert_eq!(percent_decode("a+b").unwrap(), "a b");
        assert!(percent_decode("%zz").is_err());
        assert!(percent_decode("%f").is_err());
    }
}
