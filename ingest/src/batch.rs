//! Batches: many ring records copied back to back into one buffer.
//!
//! The framing is the BPF ring buffer's own: an 8-byte header whose first native u32
//! is the length (bit 30 marks a discarded record, skipped on reading), then the record,
//! padded to 8 bytes. A reader copies a whole run of committed ring data with one
//! `memcpy`; perf buffer records get the same header. One allocation per batch.

use bytes::{Bytes, BytesMut};

/// Header bytes before each record.
pub(crate) const HEADER: usize = 8;
/// Header bit: the record is still being written (never copied into a batch).
pub(crate) const BUSY: u32 = 1 << 31;
/// Header bit: the program discarded the record.
pub(crate) const DISCARD: u32 = 1 << 30;

/// Records drained from one ring in one pass.
#[derive(Debug, Clone)]
pub struct Batch {
    /// Index of the ring (stream) the records came from, as registered by the caller.
    pub stream: u32,
    /// Number of records framed in `data`.
    pub len: u32,
    data: Bytes,
}

impl Batch {
    /// Iterates over the records.
    pub fn records(&self) -> Records<'_> {
        Records { rest: &self.data }
    }
}

/// Iterator over a batch's records.
pub struct Records<'a> {
    rest: &'a [u8],
}

impl<'a> Records<'a> {
    /// The records of framed data (a batch's, or a ring run's).
    pub fn new(framed: &'a [u8]) -> Self {
        Self { rest: framed }
    }
}

impl<'a> Iterator for Records<'a> {
    type Item = &'a [u8];

    #[inline]
    fn next(&mut self) -> Option<&'a [u8]> {
        loop {
            let head = u32::from_ne_bytes(*self.rest.first_chunk()?);
            let len = (head & !(BUSY | DISCARD)) as usize;
            let record = self.rest.get(HEADER..HEADER + len)?;
            // The last record's padding may be missing; `& !7` is what `next_multiple_of`
            // is for a power of two, without its overflow checks (this runs per record).
            self.rest = self.rest.get((HEADER + len + 7) & !7..).unwrap_or(&[]);
            if head & DISCARD == 0 {
                return Some(record);
            }
        }
    }
}

/// Builds batches (readers use it; so do replay benchmarks). One allocation per batch.
pub struct BatchBuilder {
    stream: u32,
    len: u32,
    buf: BytesMut,
    capacity: usize,
}

impl BatchBuilder {
    /// A builder of batches for `stream` of about `capacity` bytes.
    pub fn new(stream: u32, capacity: usize) -> Self {
        Self {
            stream,
            len: 0,
            buf: BytesMut::with_capacity(capacity),
            capacity,
        }
    }

    /// Appends one record (the u32 length prefix keeps 8-byte framing with 4 spare bytes).
    pub fn push(&mut self, record: &[u8]) {
        self.push_split(record, &[]);
    }

    /// Appends one record that arrives in two pieces (wrapped around a perf buffer).
    pub fn push_split(&mut self, head: &[u8], tail: &[u8]) {
        let len = head.len() + tail.len();
        let start = self.buf.len();
        // One resize zero-fills the slot (header and padding included).
        self.buf
            .resize(start + (HEADER + len).next_multiple_of(8), 0);
        let slot = &mut self.buf[start..];
        slot[..4].copy_from_slice(&(len as u32).to_ne_bytes());
        slot[HEADER..HEADER + head.len()].copy_from_slice(head);
        slot[HEADER + head.len()..HEADER + len].copy_from_slice(tail);
        self.len += 1;
    }

    /// Appends a run of ring buffer data (headers included) holding `records`
    /// records that are not discarded.
    pub(crate) fn push_framed(&mut self, run: &[u8], records: u32) {
        self.buf.extend_from_slice(run);
        self.len += records;
    }

    /// Bytes left before the batch is full.
    pub(crate) fn room(&self) -> usize {
        self.capacity.saturating_sub(self.buf.len())
    }

    /// Whether the batch reached its capacity.
    pub fn is_full(&self) -> bool {
        self.buf.len() >= self.capacity
    }

    /// Whether no record was pushed since the last take.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Takes the records so far as a batch, starting a fresh buffer.
    pub fn take(&mut self) -> Batch {
        let data = std::mem::replace(&mut self.buf, BytesMut::with_capacity(self.capacity));
        let len = std::mem::take(&mut self.len);
        Batch {
            stream: self.stream,
            len,
            data: data.freeze(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{BatchBuilder, DISCARD};

    #[test]
    fn ring_runs_keep_their_framing_and_skip_discarded_records() {
        // Two records as the kernel lays them out: 5 bytes kept, 3 bytes discarded.
        let mut run = Vec::new();
        run.extend(5u32.to_ne_bytes());
        run.extend([0; 4]);
        run.extend(b"hello\0\0\0");
        run.extend((3u32 | DISCARD).to_ne_bytes());
        run.extend([0; 4]);
        run.extend(b"bye\0\0\0\0\0");
        let mut b = BatchBuilder::new(1, 1024);
        b.push_framed(&run, 1);
        b.push(b"after");
        let batch = b.take();
        assert_eq!(batch.len, 2);
        assert_eq!(
            batch.records().collect::<Vec<_>>(),
            vec![&b"hello"[..], &b"after"[..]]
        );
    }

    #[test]
    fn records_round_trip_with_any_length() {
        let mut b = BatchBuilder::new(3, 64);
        let records: Vec<Vec<u8>> = (0..20u8).map(|n| (0..n).collect()).collect();
        for r in &records {
            let (head, tail) = r.split_at(r.len() / 2);
            b.push_split(head, tail);
        }
        assert!(b.is_full());
        let batch = b.take();
        assert!(b.is_empty());
        assert_eq!((batch.stream, batch.len), (3, 20));
        let got: Vec<&[u8]> = batch.records().collect();
        assert_eq!(got, records.iter().map(|r| &r[..]).collect::<Vec<_>>());
    }
}
