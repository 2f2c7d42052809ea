//! Drains one BPF ring buffer into batches, on readiness and on a short timer.
//!
//! Programs submit without waking the reader until enough data waits (see
//! `output.bpf.h`), so the timer is what bounds latency on a quiet ring.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Arc,
    },
    time::Duration,
};

use aya::maps::{MapData, RingBuf};
use crossbeam_channel::{Sender, TrySendError};
use tokio::{io::unix::AsyncFd, sync::watch};

use crate::{batch::BatchBuilder, Batch, IngestError};

/// Counters of one reader, read by the exposition.
#[derive(Debug, Default)]
pub struct RingStats {
    /// Records read from the ring.
    pub records: AtomicU64,
    /// Batches handed downstream.
    pub batches: AtomicU64,
    /// Records lost because the downstream queue was full.
    pub queue_dropped: AtomicU64,
}

/// Reads one ring and sends its records downstream in batches.
pub struct RingReader {
    name: String,
    ring: AsyncFd<RingBuf<MapData>>,
    builder: BatchBuilder,
    drain_interval: Duration,
    stats: Arc<RingStats>,
}

impl RingReader {
    /// Wraps `ring` for polling; records go out tagged with `stream`, in batches of
    /// about `batch_bytes`.
    ///
    /// # Errors
    /// The ring's descriptor cannot be registered with the tokio reactor (call this
    /// inside a runtime).
    pub fn new(
        name: &str,
        ring: RingBuf<MapData>,
        stream: u32,
        batch_bytes: usize,
        drain_interval: Duration,
    ) -> Result<Self, IngestError> {
        // SAFETY: the RingBuf owns its map descriptor and keeps it open, unreplaced,
        // for as long as the AsyncFd owns the RingBuf.
        let ring = unsafe { AsyncFd::register(ring) }.map_err(|e| IngestError::Poll {
            ring: name.into(),
            source: e.into(),
        })?;
        Ok(Self {
            name: name.into(),
            ring,
            builder: BatchBuilder::new(stream, batch_bytes),
            drain_interval,
            stats: Arc::default(),
        })
    }

    /// The reader's counters.
    pub fn stats(&self) -> Arc<RingStats> {
        self.stats.clone()
    }

    /// Reads until `shutdown` changes, then drains once more and returns.
    pub async fn run(mut self, tx: Sender<Batch>, mut shutdown: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(self.drain_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                ready = self.ring.readable_mut() => match ready {
                    Ok(mut guard) => {
                        drain(guard.get_inner_mut(), &mut self.builder, &tx, &self.stats);
                        guard.clear_ready();
                    }
                    Err(e) => {
                        tracing::error!(ring = %self.name, error = %e, "ring poll failed; timer drain only");
                        tick.tick().await;
                    }
                },
                _ = tick.tick() => drain(self.ring.get_mut(), &mut self.builder, &tx, &self.stats),
                _ = shutdown.changed() => break,
            }
        }
        drain(self.ring.get_mut(), &mut self.builder, &tx, &self.stats);
    }
}

/// Copies every ready record into batches and sends them; full queues count drops.
fn drain(ring: &mut RingBuf<MapData>, builder: &mut BatchBuilder, tx: &Sender<Batch>, stats: &RingStats) {
    let mut records = 0u64;
    while let Some(item) = ring.next() {
        builder.push(&item);
        drop(item);
        records += 1;
        if builder.is_full() {
            send(builder.take(), tx, stats);
        }
    }
    if !builder.is_empty() {
        send(builder.take(), tx, stats);
    }
    stats.records.fetch_add(records, Relaxed);
}

fn send(batch: Batch, tx: &Sender<Batch>, stats: &RingStats) {
    match tx.try_send(batch) {
        Ok(()) => {
            stats.batches.fetch_add(1, Relaxed);
        }
        Err(TrySendError::Full(b) | TrySendError::Disconnected(b)) => {
            stats.queue_dropped.fetch_add(u64::from(b.len), Relaxed);
        }
    }
}
