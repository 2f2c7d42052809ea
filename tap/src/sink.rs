//! The file sink (the original project's "sink mode"): selected configs' events, and
//! tables' non-zero entries at each scrape, as JSON lines in hourly-rotated gzip files,
//! oldest removed first beyond a byte budget. Each second's lines end a gzip member, so
//! files are always whole (`zcat` works on the current hour's file).

use std::{
    fs::{self, File, OpenOptions},
    io::Write,
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use bytes::Bytes;
use crossbeam_channel::{Receiver, RecvTimeoutError};
use flate2::{write::GzEncoder, Compression};

use crate::time::hour_stamp;

/// The file sink's input: chosen configs' events (subscribed on the tap) and their
/// tables' non-zero series, written at each scrape.
pub struct SinkFeed {
    configs: Vec<String>,
    tx: crossbeam_channel::Sender<Bytes>,
    cluster: Option<String>,
}

impl SinkFeed {
    /// Subscribes a [`FileSink`] in `dir` to `configs`' events on `tap` and starts its
    /// thread; at most `queue` lines wait (more are dropped, as the tap drops).
    ///
    /// # Errors
    /// The directory cannot be created, or the thread cannot start.
    pub fn start(
        tap: &crate::Tap,
        dir: &Path,
        max_bytes: u64,
        configs: Vec<String>,
        queue: usize,
        cluster: Option<String>,
    ) -> std::io::Result<Self> {
        let (tx, rx) = crossbeam_channel::bounded(queue.max(1));
        for name in &configs {
            if tap.streams().iter().any(|s| &s.program == name) {
                let filter = crate::Filter {
                    config: Some(name.clone()),
                    ..Default::default()
                };
                tap.subscribe_channel(filter, tx.clone());
            }
        }
        let file = FileSink::new(dir, max_bytes)?;
        std::thread::Builder::new()
            .name("sink".into())
            .spawn(move || file.run(rx))?;
        Ok(Self {
            configs,
            tx,
            cluster,
        })
    }

    /// Whether `config`'s tables go to the sink.
    pub fn wants(&self, config: &str) -> bool {
        self.configs.iter().any(|c| c == config)
    }

    /// Writes a table's non-zero series to the sink as JSON lines.
    pub fn write_table(
        &self,
        config: &str,
        node: &str,
        t: &aggregate::TablePlan,
        rows: &aggregate::Rows,
    ) {
        let time = crate::rfc3339_nanos(std::time::SystemTime::now());
        for e in t.entries(rows).filter(|e| {
            e.value != 0
                || e.histogram
                    .as_ref()
                    .is_some_and(|h| h.1.iter().any(|&c| c != 0))
        }) {
            let labels: serde_json::Map<String, serde_json::Value> = e
                .labels
                .iter()
                .map(|(k, v)| (k.to_string(), (*v).into()))
                .collect();
            let mut line = serde_json::json!({ "time": time, "config": config, "metric": t.name(), "node": node, "labels": labels });
            if let Some(c) = &self.cluster {
                line["cluster"] = c.as_str().into();
            }
            match &e.histogram {
                Some((bounds, counts, sum)) => {
                    line["buckets"] = serde_json::json!(bounds
                        .iter()
                        .map(|b| aggregate::format_float(*b))
                        .chain(["+Inf".into()])
                        .zip(counts)
                        .collect::<Vec<_>>());
                    line["sum"] = (*sum).into();
                    line["count"] = counts.iter().sum::<u64>().into();
                }
                None => line["value"] = e.value.into(),
            }
            let mut bytes = serde_json::to_vec(&line).expect("JSON of strings and numbers");
            bytes.push(b'\n');
            let _ = self.tx.try_send(Bytes::from(bytes));
        }
    }
}

/// Writes lines into `<dir>/events-<YYYYMMDDHH>.jsonl.gz`.
pub struct FileSink {
    dir: PathBuf,
    max_bytes: u64,
    current: Option<(String, GzEncoder<File>)>,
}

impl FileSink {
    /// A sink in `dir` (created if missing) keeping at most `max_bytes` of files.
    ///
    /// # Errors
    /// The directory cannot be created.
    pub fn new(dir: &Path, max_bytes: u64) -> std::io::Result<Self> {
        fs::create_dir_all(dir)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            max_bytes,
            current: None,
        })
    }

    /// Writes lines from `rx` until every sender is gone, flushing every second.
    pub fn run(mut self, rx: Receiver<Bytes>) {
        loop {
            match rx.recv_timeout(Duration::from_secs(1)) {
                Ok(line) => {
                    if let Err(e) = self.write(&line, SystemTime::now()) {
                        tracing::error!(dir = %self.dir.display(), "event sink: {e}");
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    if let Err(e) = self.seal() {
                        tracing::error!(dir = %self.dir.display(), "event sink: {e}");
                    }
                }
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        let _ = self.seal();
    }

    /// Completes the gzip member written so far, so the file is whole and readable
    /// (`zcat`) while the hour goes on; the next line starts a new member.
    pub fn seal(&mut self) -> std::io::Result<()> {
        if let Some((_, gz)) = self.current.take() {
            gz.finish()?;
        }
        Ok(())
    }

    /// Appends one line, rotating at the hour (a new gzip member when a file for the
    /// hour already exists) and pruning old files.
    ///
    /// # Errors
    /// A file cannot be opened or written.
    pub fn write(&mut self, line: &[u8], now: SystemTime) -> std::io::Result<()> {
        let hour = hour_stamp(now);
        if self.current.as_ref().is_none_or(|(h, _)| *h != hour) {
            self.seal()?;
            let path = self.dir.join(format!("events-{hour}.jsonl.gz"));
            let file = OpenOptions::new().create(true).append(true).open(path)?;
            self.current = Some((hour.clone(), GzEncoder::new(file, Compression::default())));
            self.prune(&hour)?;
        }
        self.current.as_mut().unwrap().1.write_all(line)
    }

    /// Removes the oldest files (never the current one) while the total exceeds the budget.
    fn prune(&self, hour: &str) -> std::io::Result<()> {
        let mut files: Vec<(String, u64)> = fs::read_dir(&self.dir)?
            .filter_map(|e| {
                let e = e.ok()?;
                let name = e.file_name().into_string().ok()?;
                (name.starts_with("events-") && name.ends_with(".jsonl.gz"))
                    .then(|| (name, e.metadata().map_or(0, |m| m.len())))
            })
            .collect();
        files.sort();
        let mut total: u64 = files.iter().map(|f| f.1).sum();
        let current = format!("events-{hour}.jsonl.gz");
        for (name, size) in files {
            if total <= self.max_bytes || name == current {
                break;
            }
            fs::remove_file(self.dir.join(&name))?;
            total -= size;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::{io::Read, time::UNIX_EPOCH};

    use flate2::read::MultiGzDecoder;

    use super::*;

    fn read(path: &Path) -> String {
        let mut s = String::new();
        MultiGzDecoder::new(File::open(path).unwrap())
            .read_to_string(&mut s)
            .unwrap();
        s
    }

    #[test]
    fn rotates_hourly_appends_and_prunes_oldest() {
        let dir = std::env::temp_dir().join(format!("sink-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let hour = |h: u64| UNIX_EPOCH + Duration::from_secs(1_795_731_040 + h * 3600);
        let mut sink = FileSink::new(&dir, 1 << 20).unwrap();
        sink.write(b"{\"a\":1}\n", hour(0)).unwrap();
        sink.write(b"{\"a\":2}\n", hour(0)).unwrap();
        sink.write(b"{\"b\":1}\n", hour(1)).unwrap();
        drop(sink);
        // A restart appends a gzip member to the current hour's file.
        let mut sink = FileSink::new(&dir, 1 << 20).unwrap();
        sink.write(b"{\"b\":2}\n", hour(1)).unwrap();
        sink.seal().unwrap();
        assert_eq!(
            read(&dir.join("events-2026112622.jsonl.gz")),
            "{\"a\":1}\n{\"a\":2}\n"
        );
        assert_eq!(
            read(&dir.join("events-2026112623.jsonl.gz")),
            "{\"b\":1}\n{\"b\":2}\n"
        );

        // A tiny budget keeps only the newest file.
        let mut sink = FileSink::new(&dir, 1).unwrap();
        sink.write(b"{\"c\":1}\n", hour(2)).unwrap();
        let mut names: Vec<String> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, vec!["events-2026112700.jsonl.gz".to_string()]);
        fs::remove_dir_all(&dir).unwrap();
    }
}
