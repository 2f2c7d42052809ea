//! Drains one BPF ring buffer (or perf event array) into batches.
//!
//! Ring buffers are drained on readiness and on a short timer: programs submit
//! without waking the reader until enough data waits (see `output.bpf.h`), so the
//! timer bounds latency on a quiet ring. A batched ring's samples each hold a batch of
//! records in the ring's own framing; on a second, longer timer the reader writes out
//! what CPUs staged (see `staging.rs`) and drains. Perf event arrays (kernels before 5.8, or
//! configs that use them) are drained on the timer only: aya's perf buffers ask for a
//! wakeup once half full (see `perf.rs`), so the timer bounds latency there too.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Arc,
    },
    time::Duration,
};

use aya::maps::MapData;
use crossbeam_channel::{Sender, TrySendError};
use tokio::{io::unix::AsyncFd, sync::watch};

use crate::{
    batch::{BatchBuilder, Records},
    perf::PerfBuffers,
    Batch, IngestError, RingConsumer, Staging,
};

/// Counters of one reader, read by the exposition.
#[derive(Debug, Default)]
pub struct RingStats {
    /// Records read.
    pub records: AtomicU64,
    /// Ring samples read: one a record, but one a batch of records in a batched ring.
    pub samples: AtomicU64,
    /// Batches handed downstream.
    pub batches: AtomicU64,
    /// Records lost because the downstream queue was full.
    pub queue_dropped: AtomicU64,
    /// Records the kernel reported lost (perf buffers full).
    pub kernel_lost: AtomicU64,
    /// Times a batched ring's staging could not be flushed (the error is logged).
    pub flush_errors: AtomicU64,
    /// The fullest the ring (or a CPU's perf buffer) was when a drain began, in
    /// millionths, since [`RingStats::take_fill_peak`] last read it.
    fill_peak_ppm: AtomicU64,
}

impl RingStats {
    /// The ring was `fill` (0..=1) full before a drain. Drains begin where the fill
    /// peaks, since it only grows between them.
    fn note_fill(&self, fill: f64) {
        self.fill_peak_ppm.fetch_max((fill * 1e6) as u64, Relaxed);
    }

    /// The highest fill (0..=1) since the last call, which starts a new period.
    pub fn take_fill_peak(&self) -> f64 {
        self.fill_peak_ppm.swap(0, Relaxed) as f64 / 1e6
    }
}

/// A ring or perf buffers, registered with the reader's runtime when it starts.
enum Source {
    Ring(RingConsumer),
    Perf(PerfBuffers),
}

/// A batched ring's staging and how often to flush it.
struct Flush {
    staging: Staging,
    interval: Duration,
}

enum Polled {
    Ring(AsyncFd<RingConsumer>),
    Perf(AsyncFd<PerfBuffers>),
}

/// Reads one ring and sends its records downstream in batches.
pub struct RingReader {
    name: String,
    source: Source,
    builder: BatchBuilder,
    drain_interval: Duration,
    flush: Option<Flush>,
    stats: Arc<RingStats>,
}

impl RingReader {
    /// Wraps `ring`; records go out tagged with `stream`, in batches of about
    /// `batch_bytes`. Needs no runtime: the reader registers for polling in [`Self::run`],
    /// so readers can be made before any thread starts (and capabilities drop).
    pub fn new(
        name: &str,
        ring: RingConsumer,
        stream: u32,
        batch_bytes: usize,
        drain_interval: Duration,
    ) -> Self {
        Self::with_source(
            name,
            Source::Ring(ring),
            stream,
            batch_bytes,
            drain_interval,
        )
    }

    /// Opens a perf event array's buffer on every online CPU, `pages` pages each, with
    /// batched wakeups.
    ///
    /// # Errors
    /// A buffer cannot be opened (memory lock limits, CPU list unreadable).
    pub fn perf(
        name: &str,
        array: MapData,
        pages: usize,
        stream: u32,
        batch_bytes: usize,
        drain_interval: Duration,
    ) -> Result<Self, IngestError> {
        let buffers = PerfBuffers::open(array, pages).map_err(|source| IngestError::Poll {
            ring: name.into(),
            source,
        })?;
        Ok(Self::with_source(
            name,
            Source::Perf(buffers),
            stream,
            batch_bytes,
            drain_interval,
        ))
    }

    fn with_source(
        name: &str,
        source: Source,
        stream: u32,
        batch_bytes: usize,
        drain_interval: Duration,
    ) -> Self {
        Self {
            name: name.into(),
            source,
            builder: BatchBuilder::new(stream, batch_bytes),
            drain_interval,
            flush: None,
            stats: Arc::default(),
        }
    }

    /// Reads a batched ring (`StreamMap::Batched`): each sample a batch of records,
    /// and what CPUs staged written out every `flush_interval`.
    pub fn batched(
        name: &str,
        ring: RingConsumer,
        staging: Staging,
        stream: u32,
        batch_bytes: usize,
        (drain_interval, flush_interval): (Duration, Duration),
    ) -> Self {
        let mut reader = Self::new(name, ring, stream, batch_bytes, drain_interval);
        reader.flush = Some(Flush {
            staging,
            interval: flush_interval,
        });
        reader
    }

    /// The reader's counters.
    pub fn stats(&self) -> Arc<RingStats> {
        self.stats.clone()
    }

    /// Reads until `shutdown` changes, then drains once more and returns.
    pub async fn run(mut self, tx: Sender<Batch>, mut shutdown: watch::Receiver<bool>) {
        // SAFETY: the consumer owns its map descriptor (PerfBuffers its epoll fd) and
        // keeps it open, unreplaced, for as long as the AsyncFd owns it.
        let registered = match self.source {
            Source::Ring(ring) => unsafe { AsyncFd::register(ring) }
                .map(Polled::Ring)
                .map_err(std::io::Error::from),
            Source::Perf(buffers) => unsafe { AsyncFd::register(buffers) }
                .map(Polled::Perf)
                .map_err(std::io::Error::from),
        };
        let mut source = match registered {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(ring = %self.name, error = %e, "cannot poll the ring; it is not read");
                return;
            }
        };
        let mut tick = tokio::time::interval(self.drain_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut flush = self.flush.take();
        let batched = flush.is_some();
        // (A ring without staging never polls this timer.)
        let mut flush_tick = tokio::time::interval(
            flush
                .as_ref()
                .map_or(Duration::from_secs(3600), |f| f.interval),
        );
        flush_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            match &mut source {
                Polled::Ring(ring) => tokio::select! {
                    ready = ring.readable_mut() => match ready {
                        Ok(mut guard) => {
                            drain_ring(guard.get_inner_mut(), batched, &mut self.builder, &tx, &self.stats);
                            guard.clear_ready();
                        }
                        Err(e) => {
                            tracing::error!(ring = %self.name, error = %e, "ring poll failed; timer drain only");
                            tick.tick().await;
                        }
                    },
                    _ = tick.tick() => drain_ring(ring.get_mut(), batched, &mut self.builder, &tx, &self.stats),
                    _ = flush_tick.tick(), if batched => {
                        flush_staged(&mut flush, &self.name, &self.stats);
                        drain_ring(ring.get_mut(), batched, &mut self.builder, &tx, &self.stats);
                    }
                    _ = shutdown.changed() => break,
                },
                Polled::Perf(buffers) => tokio::select! {
                    ready = buffers.readable_mut() => match ready {
                        Ok(mut guard) => {
                            guard.get_inner().clear_ready();
                            guard.clear_ready();
                            drain_perf(guard.get_inner_mut(), &mut self.builder, &tx, &self.stats);
                        }
                        Err(e) => {
                            tracing::error!(ring = %self.name, error = %e, "perf poll failed; timer drain only");
                            tick.tick().await;
                        }
                    },
                    _ = tick.tick() => drain_perf(buffers.get_mut(), &mut self.builder, &tx, &self.stats),
                    _ = shutdown.changed() => break,
                },
            }
        }
        match &mut source {
            Polled::Ring(ring) => {
                flush_staged(&mut flush, &self.name, &self.stats);
                drain_ring(ring.get_mut(), batched, &mut self.builder, &tx, &self.stats);
            }
            Polled::Perf(buffers) => {
                drain_perf(buffers.get_mut(), &mut self.builder, &tx, &self.stats)
            }
        }
    }
}

/// Writes out what the CPUs staged for a batched ring (errors counted; the first logged).
fn flush_staged(flush: &mut Option<Flush>, ring: &str, stats: &RingStats) {
    let Some(flush) = flush else {
        return;
    };
    if let Err(e) = flush.staging.flush() {
        if stats.flush_errors.fetch_add(1, Relaxed) == 0 {
            tracing::error!(ring, error = %e, "cannot flush the ring's staged records; they wait for a full batch");
        }
    }
}

/// Copies every ready record into batches (one copy per run of records; in a batched
/// ring one per sample, each a batch already) and sends them; full queues count drops.
fn drain_ring(
    ring: &mut RingConsumer,
    batched: bool,
    builder: &mut BatchBuilder,
    tx: &Sender<Batch>,
    stats: &RingStats,
) {
    stats.note_fill(ring.fill());
    let (mut records, mut samples) = (0u64, 0u64);
    loop {
        let (mut staged, mut batches) = (0u64, 0u64);
        let n = ring.drain(builder.room().max(64), |run, count| {
            let mut push = |framed: &[u8], count: u32| {
                builder.push_framed(framed, count);
                if builder.is_full() {
                    send(builder.take(), tx, stats);
                }
            };
            if batched {
                for sample in Records::new(run) {
                    let count = Records::new(sample).count() as u32;
                    staged += u64::from(count);
                    batches += 1;
                    push(sample, count);
                }
            } else {
                push(run, count);
            }
        });
        if n == 0 {
            break;
        }
        (records, samples) = if batched {
            (records + staged, samples + batches)
        } else {
            (records + n, samples + n)
        };
    }
    stats.samples.fetch_add(samples, Relaxed);
    finish(records, builder, tx, stats);
}

/// Drains every CPU's perf buffer (the consumer position moves once per buffer).
fn drain_perf(
    buffers: &mut PerfBuffers,
    builder: &mut BatchBuilder,
    tx: &Sender<Batch>,
    stats: &RingStats,
) {
    stats.note_fill(buffers.fill());
    let records = buffers.drain(
        |head, tail| {
            builder.push_split(head, tail);
            if builder.is_full() {
                send(builder.take(), tx, stats);
            }
        },
        |lost| {
            stats.kernel_lost.fetch_add(lost, Relaxed);
        },
    );
    stats.samples.fetch_add(records, Relaxed);
    finish(records, builder, tx, stats);
}

fn finish(records: u64, builder: &mut BatchBuilder, tx: &Sender<Batch>, stats: &RingStats) {
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
