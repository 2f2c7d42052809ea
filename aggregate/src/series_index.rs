//! A worker's map from series key to the position of its slot: open addressing over
//! groups of buckets, so the group a key will need can be asked for (prefetched)
//! records before it is searched, which a general-purpose map does not offer.

use crate::{prefetch::prefetch, registry::SeriesKey};

/// Keys in the order they were added (a key's position is its slot's in the worker's
/// list), and groups of buckets that point at them.
pub(crate) struct SeriesIndex {
    groups: Box<[Group]>,
    keys: Vec<SeriesKey>,
}

/// Eight buckets in one cache line: each a tag (32 bits of the key's hash, never 0; 0
/// is empty) and a key position. A search compares all eight tags at once, so it
/// rarely takes a branch that depends on the data (a bucket-by-bucket probe
/// mispredicted about one search in two).
#[derive(Clone, Copy, Default)]
#[repr(C, align(64))]
struct Group {
    tags: [u32; 8],
    at: [u32; 8],
}

impl Group {
    /// One bit per bucket whose tag is `tag`.
    #[inline(always)]
    fn matches(&self, tag: u32) -> u32 {
        #[cfg(target_arch = "x86_64")]
        {
            use core::arch::x86_64::*;
            // Eight compares in two, packed to one byte mask (the compiler's own
            // vectorizing of `matches_each` shuffled lanes: 43 more instructions per
            // event at 1,000 series).
            // SAFETY: SSE2 is part of x86_64; `tags` is 32 bytes, 64-byte aligned
            // (the group's alignment).
            unsafe {
                let t = _mm_set1_epi32(tag as i32);
                let p = self.tags.as_ptr().cast::<__m128i>();
                let (lo, hi) = (_mm_load_si128(p), _mm_load_si128(p.add(1)));
                let eq = _mm_packs_epi32(_mm_cmpeq_epi32(lo, t), _mm_cmpeq_epi32(hi, t));
                _mm_movemask_epi8(_mm_packs_epi16(eq, _mm_setzero_si128())) as u32
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        self.matches_each(tag)
    }

    /// The same, one bucket at a time (other architectures; tests compare the two).
    #[cfg(any(test, not(target_arch = "x86_64")))]
    fn matches_each(&self, tag: u32) -> u32 {
        let mut bits = 0;
        for (i, &t) in self.tags.iter().enumerate() {
            bits |= u32::from(t == tag) << i;
        }
        bits
    }
}

/// Groups of a new index (a power of two).
const FIRST: usize = 8;

impl Default for SeriesIndex {
    fn default() -> Self {
        Self {
            groups: vec![Group::default(); FIRST].into_boxed_slice(),
            keys: Vec::new(),
        }
    }
}

/// The group a search for `hash` starts at, and the tag it looks for: both from the
/// high half (a product's low bits depend only on its factors' low bits).
#[inline(always)]
fn home(hash: u64, groups: usize) -> (usize, u32) {
    (
        (hash >> 32) as usize & (groups - 1),
        (hash >> 32) as u32 | 1,
    )
}

impl SeriesIndex {
    /// How many keys it holds.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.keys.len()
    }

    /// The key at `at` (as `get` or `insert` returned it).
    #[inline]
    pub(crate) fn key(&self, at: u32) -> &SeriesKey {
        &self.keys[at as usize]
    }

    /// Where `key`, whose hash is `hash` (from [`hash`]), was added, if it was.
    #[inline(always)]
    pub(crate) fn get(&self, hash: u64, key: &SeriesKey) -> Option<u32> {
        let (mut g, tag) = home(hash, self.groups.len());
        loop {
            let group = &self.groups[g];
            let mut hits = group.matches(tag);
            while hits != 0 {
                let at = group.at[hits.trailing_zeros() as usize];
                if self.keys[at as usize] == *key {
                    return Some(at);
                }
                hits &= hits - 1;
            }
            // Keys are only added, never removed: one that overflowed this group
            // found it full.
            if group.matches(0) != 0 {
                return None;
            }
            g = (g + 1) & (self.groups.len() - 1);
        }
    }

    /// Adds `key` (not yet present), returning its position: the next one.
    pub(crate) fn insert(&mut self, hash: u64, key: SeriesKey) -> u32 {
        // At most half the buckets full: few groups overflow.
        if 2 * (self.keys.len() + 1) > 8 * self.groups.len() {
            self.grow();
        }
        let at = self.keys.len() as u32;
        self.keys.push(key);
        self.place(hash, at);
        at
    }

    /// Asks for the group a search for `hash` starts at, without waiting for it.
    #[inline(always)]
    pub(crate) fn prefetch_group(&self, hash: u64) {
        prefetch(&self.groups[home(hash, self.groups.len()).0]);
    }

    /// Asks for the key a search for `hash` will compare first, if any (its group
    /// should have been asked for earlier, or this waits for it).
    #[inline(always)]
    pub(crate) fn prefetch_key(&self, hash: u64) {
        let (g, tag) = home(hash, self.groups.len());
        let group = &self.groups[g];
        let hits = group.matches(tag);
        if hits != 0 {
            if let Some(k) = self
                .keys
                .get(group.at[hits.trailing_zeros() as usize] as usize)
            {
                prefetch(k);
            }
        }
    }

    fn place(&mut self, hash: u64, at: u32) {
        let (mut g, tag) = home(hash, self.groups.len());
        loop {
            let group = &mut self.groups[g];
            let free = group.matches(0);
            if free != 0 {
                let b = free.trailing_zeros() as usize;
                (group.tags[b], group.at[b]) = (tag, at);
                return;
            }
            g = (g + 1) & (self.groups.len() - 1);
        }
    }

    #[cold]
    fn grow(&mut self) {
        self.groups = vec![Group::default(); self.groups.len() * 2].into_boxed_slice();
        for at in 0..self.keys.len() {
            self.place(hash(&self.keys[at]), at as u32);
        }
    }
}

/// A key's hash: its words folded by multiply-and-rotate, then mixed so that both
/// halves (bucket and tag) depend on every byte.
#[inline]
pub(crate) fn hash(key: &SeriesKey) -> u64 {
    const K: u64 = 0xf135_7aea_2e62_a9c5;
    let mut h = u64::from(key.pod) << 8 | u64::from(key.len);
    for w in 0..usize::from(key.len).div_ceil(8) {
        h = (h.rotate_left(32) ^ key.word(w)).wrapping_mul(K);
    }
    h.wrapping_mul(K)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(pod: u32, bytes: &[u8]) -> SeriesKey {
        let mut k = SeriesKey {
            pod,
            len: bytes.len() as u8,
            ..SeriesKey::default()
        };
        k.bytes[..bytes.len()].copy_from_slice(bytes);
        k
    }

    #[test]
    fn finds_what_it_holds_across_growth_and_nothing_else() {
        let mut index = SeriesIndex::default();
        for i in 0..10_000u32 {
            let k = key(i % 7, &i.to_ne_bytes());
            assert_eq!(index.get(hash(&k), &k), None);
            assert_eq!(index.insert(hash(&k), k), i);
        }
        for i in 0..10_000u32 {
            let k = key(i % 7, &i.to_ne_bytes());
            assert_eq!(index.get(hash(&k), &k), Some(i));
            assert_eq!(index.key(i), &k);
            // The same bytes under another pod, or one byte longer, are other keys.
            let other = key(i % 7 + 1, &i.to_ne_bytes());
            assert_eq!(index.get(hash(&other), &other), None);
            let longer = key(i % 7, &[&i.to_ne_bytes()[..], &[0]].concat());
            assert_eq!(index.get(hash(&longer), &longer), None);
        }
        assert_eq!(index.len(), 10_000);
    }

    proptest! {
        #[test]
        fn groups_match_as_one_bucket_at_a_time_does(tags in proptest::array::uniform8(0u32..4), tag in 0u32..4) {
            let group = Group { tags, at: [0; 8] };
            prop_assert_eq!(group.matches(tag), group.matches_each(tag));
        }

        #[test]
        fn agrees_with_a_hash_map(ops in proptest::collection::vec((0u32..4, proptest::collection::vec(0u8..4, 0..12)), 1..400)) {
            let mut index = SeriesIndex::default();
            let mut reference = std::collections::HashMap::new();
            for (pod, bytes) in ops {
                let k = key(pod, &bytes);
                let found = index.get(hash(&k), &k);
                prop_assert_eq!(found, reference.get(&(pod, bytes.clone())).copied());
                if found.is_none() {
                    let at = index.insert(hash(&k), k);
                    reference.insert((pod, bytes), at);
                }
            }
        }
    }
}
