//! The runtime remote metadata sources run on: set up on the caller's thread's behalf
//! before capabilities are dropped, driven by a thread of its own only afterwards.

use std::future::Future;

/// A current-thread tokio runtime, idle until [`Background::run`].
pub(crate) struct Background(Option<tokio::runtime::Runtime>);

impl Drop for Background {
    /// Without blocking: a source that failed to connect is dropped inside the
    /// exporter's own runtime, where a blocking shutdown panics.
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

impl Background {
    fn rt(&self) -> &tokio::runtime::Runtime {
        self.0.as_ref().expect("present until dropped")
    }
}

impl Background {
    pub(crate) fn new() -> std::io::Result<Self> {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map(|rt| Self(Some(rt)))
    }

    /// Runs `f` to completion on a helper thread that is joined before returning: the
    /// caller may be inside a runtime already, and no thread may outlive the call (the
    /// exporter drops capabilities later, and threads started before would keep them).
    pub(crate) fn block_on<F: Future + Send>(&self, f: F) -> Option<F::Output>
    where
        F::Output: Send,
    {
        std::thread::scope(|s| s.spawn(|| self.rt().block_on(f)).join().ok())
    }

    /// Drives `f` (and what earlier calls spawned) on a thread named `name`, forever.
    pub(crate) fn run(self, name: &str, f: impl Future<Output = ()> + Send + 'static) {
        let spawned = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || self.rt().block_on(f));
        if let Err(e) = spawned {
            tracing::error!("cannot start the {name} thread: {e}");
        }
    }
}
