//! What the enrich stage hands on: a batch of records with each record's pod. The
//! aggregate workers and the event tap read the same value, so a record's pod labels on
//! `/metrics` and in `/events` cannot disagree.

use std::sync::Arc;

use ingest::Batch;

use crate::PodLabels;

/// A record's place in [`Attributed::index`] while it waits for its pod's metadata:
/// it is handed on again, attributed, later.
pub const HELD: u32 = u32::MAX;

/// A batch with each record's pod.
pub struct Attributed {
    /// The records, as ingest read them.
    pub batch: Batch,
    /// Distinct label sets of the batch.
    pub pods: Vec<Arc<PodLabels>>,
    /// Per record, its index into `pods`, or [`HELD`].
    pub index: Vec<u32>,
}

impl Attributed {
    /// Each record that is not held, with its pod.
    pub fn records(&self) -> impl Iterator<Item = (&[u8], &Arc<PodLabels>)> {
        self.records_where(|_| true)
    }

    /// Each record that is not held and whose pod `keep` accepts (asked once per pod
    /// of the batch, not per record), with its pod.
    pub fn records_where(
        &self,
        keep: impl Fn(&PodLabels) -> bool,
    ) -> impl Iterator<Item = (&[u8], &Arc<PodLabels>)> {
        // One lookup per record: held records' index (`HELD`) is out of range.
        let kept: Vec<Option<&Arc<PodLabels>>> =
            self.pods.iter().map(|p| keep(p).then_some(p)).collect();
        self.batch
            .records()
            .zip(&self.index)
            .filter_map(move |(record, &i)| Some((record, kept.get(i as usize).copied()??)))
    }
}
