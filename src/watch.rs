//! Changes in config directories, from inotify: any entry created, removed, renamed
//! or written. Watching the directory, not a file, sees a ConfigMap update, which
//! swaps the `..data` link the files point through.

use std::{
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::PathBuf,
    time::Duration,
};

use tokio::io::unix::AsyncFd;

/// An inotify instance watching some directories.
pub struct Changes {
    fd: AsyncFd<OwnedFd>,
}

impl Changes {
    /// Watches `dirs`.
    pub fn new(dirs: &[PathBuf]) -> std::io::Result<Self> {
        // SAFETY: inotify_init1 returns a new descriptor or -1.
        let raw = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        if raw < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `raw` is a descriptor we own from here on.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let mask = libc::IN_CREATE
            | libc::IN_DELETE
            | libc::IN_MOVED_TO
            | libc::IN_MOVED_FROM
            | libc::IN_CLOSE_WRITE
            | libc::IN_ATTRIB;
        for dir in dirs {
            let path = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes())
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
            // SAFETY: a valid descriptor and a NUL-terminated path.
            if unsafe { libc::inotify_add_watch(fd.as_raw_fd(), path.as_ptr(), mask) } < 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        // SAFETY: the descriptor is owned by the AsyncFd and stays open with it.
        let fd = unsafe { AsyncFd::register(fd)? };
        Ok(Self { fd })
    }

    /// Waits for a change, then for the directories to settle (a ConfigMap update is a
    /// few renames), and returns.
    pub async fn next(&mut self) {
        self.drain().await;
        // More events within the settle time belong to the same update.
        while tokio::time::timeout(Duration::from_millis(200), self.drain())
            .await
            .is_ok()
        {}
    }

    /// Waits until events are there and reads them all (their content does not
    /// matter: any change means read the configs again).
    async fn drain(&mut self) {
        let mut buf = [0u8; 4096];
        loop {
            let Ok(mut ready) = self.fd.readable().await else {
                return std::future::pending().await;
            };
            // SAFETY: reads into a buffer of the given length.
            let n = unsafe {
                libc::read(
                    self.fd.get_ref().as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                )
            };
            if n > 0 {
                return;
            }
            ready.clear_ready();
        }
    }
}
