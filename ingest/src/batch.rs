//! Batches: many ring records copied back to back into one buffer.
//!
//! Framing is `[u32 length][record][padding to 8]`, so records of any size travel in
//! one allocation per batch and stay 8-byte aligned for the decoders.

use bytes::{Bytes, BytesMut};

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

impl<'a> Iterator for Records<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        let head = self.rest.get(..4)?;
        let len = u32::from_le_bytes(head.try_into().unwrap()) as usize;
        let record = self.rest.get(4..4 + len)?;
        let framed = (4 + len).next_multiple_of(8);
        self.rest = self.rest.get(framed..).unwrap_or(&[]);
        Some(record)
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
        let framed = (4 + len).next_multiple_of(8);
        let start = self.buf.len();
        // One resize zero-fills the slot (padding included), then the parts go in.
        self.buf.resize(start + framed, 0);
        let slot = &mut self.buf[start..];
        slot[..4].copy_from_slice(&(len as u32).to_le_bytes());
        slot[4..4 + head.len()].copy_from_slice(head);
        slot[4 + head.len()..4 + len].copy_from_slice(tail);
        self.len += 1;
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
    use super::BatchBuilder;

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
