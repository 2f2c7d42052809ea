//! The web config as connections see it: parsed once, and again only when the file or
//! one it names (certificate, key, client CA) changes, which each connection checks by
//! their metadata. A change that does not parse keeps the last good config; the
//! failure is logged and counted once per change.

use std::{
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    sync::Arc,
};

use metrics::counter;
use parking_lot::Mutex;

use crate::web_config::{self, Loaded};

/// The reload counter, by `result`.
pub const RELOADS: &str = "ebpf_exporter_web_config_reloads_total";

/// Identity and version of one file: (device, inode, size, mtime and ctime in ns);
/// `None` when it cannot be read. A file replaced by rename (Kubernetes Secret
/// volumes swap a symlink) has a new inode; one written in place, a new mtime.
type Stamp = Option<(u64, u64, u64, i64, i64)>;

fn stamp(path: &Path) -> Stamp {
    let m = std::fs::metadata(path).ok()?;
    Some((
        m.dev(),
        m.ino(),
        m.size(),
        m.mtime() * 1_000_000_000 + m.mtime_nsec(),
        m.ctime() * 1_000_000_000 + m.ctime_nsec(),
    ))
}

fn stamps(files: &[PathBuf]) -> Vec<Stamp> {
    files.iter().map(|f| stamp(f)).collect()
}

struct State {
    /// The files the last attempt read, and their stamps then.
    files: Vec<PathBuf>,
    stamps: Vec<Stamp>,
    /// The last config that parsed.
    good: Arc<Loaded>,
}

/// `--web.config.file`, kept current.
pub struct WebConfigWatch {
    path: PathBuf,
    state: Mutex<State>,
}

impl WebConfigWatch {
    /// Watches `path`, already parsed as `loaded` (at start-up, where an error stops
    /// the exporter).
    pub fn new(path: PathBuf, loaded: Loaded) -> Self {
        let files = loaded.files.clone();
        // Stamped before any change can be missed: a change between the parse and now
        // costs one extra parse at the next connection, never a stale config.
        let stamps = stamps(&files);
        Self {
            path,
            state: Mutex::new(State {
                files,
                stamps,
                good: Arc::new(loaded),
            }),
        }
    }

    /// The config to serve a new connection with: the last good one, parsed again
    /// first if one of its files changed since the last attempt.
    pub fn current(&self) -> Arc<Loaded> {
        // Both series exist from the first connection on.
        counter!(RELOADS, "result" => "failure").increment(0);
        let mut state = self.state.lock();
        let now = stamps(&state.files);
        if now == state.stamps {
            return state.good.clone();
        }
        match web_config::load(&self.path) {
            Ok(loaded) => {
                // The new config may name other files: stamp those.
                state.files = loaded.files.clone();
                state.stamps = stamps(&state.files);
                state.good = Arc::new(loaded);
                counter!(RELOADS, "result" => "success").increment(1);
                tracing::info!(path = %self.path.display(), "web config changed: reloaded");
            }
            Err(e) => {
                // Not tried again until a file changes again.
                state.stamps = now;
                counter!(RELOADS, "result" => "failure").increment(1);
                tracing::error!(
                    "web config changed but does not load; keeping the last good one: {e:#}"
                );
            }
        }
        state.good.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(path: &Path, users: &str) {
        std::fs::write(path, format!("basic_auth_users:\n{users}")).unwrap();
    }

    #[test]
    fn reloads_on_change_and_keeps_the_last_good_config() {
        let dir = std::env::temp_dir().join(format!("kebpf-webwatch-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("web.yml");
        let hash = bcrypt::hash("pw", 4).unwrap();
        write(&path, &format!("  a: {hash}\n"));
        let watch = WebConfigWatch::new(path.clone(), web_config::load(&path).unwrap());
        let first = watch.current();
        assert!(
            Arc::ptr_eq(&first, &watch.current()),
            "unchanged: not parsed again"
        );

        // A new user (a different size, so the change shows whatever the clock).
        write(&path, &format!("  a: {hash}\n  bb: {hash}\n"));
        let second = watch.current();
        assert_eq!(second.users.len(), 2);
        assert!(Arc::ptr_eq(&second, &watch.current()));

        // Broken: the last good one stays, and is not parsed again per connection.
        std::fs::write(&path, "basic_auth_users: [not, a, map]\n").unwrap();
        assert!(Arc::ptr_eq(&second, &watch.current()));
        assert!(Arc::ptr_eq(&second, &watch.current()));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
