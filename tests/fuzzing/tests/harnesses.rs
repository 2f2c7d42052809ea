//! Every fuzz harness under `cargo test`: over each file of its seed corpus
//! (`fuzz/corpus/<harness>/`, grown by the campaigns), over random mutations of those
//! seeds, and over random bytes. A panic anywhere fails the test with the input.

use std::path::{Path, PathBuf};

use proptest::prelude::*;

fn corpus(name: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(name);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files.iter().map(|f| std::fs::read(f).unwrap()).collect()
}

#[test]
fn every_harness_has_seeds_and_takes_them() {
    for (name, harness) in fuzzing::HARNESSES {
        let seeds = corpus(name);
        assert!(!seeds.is_empty(), "fuzz/corpus/{name} has no seeds");
        for seed in &seeds {
            harness(seed);
        }
    }
}

/// Seeds with bytes flipped, cut or spliced: close to valid input, where parsers
/// have the most branches.
fn mutated(seeds: Vec<Vec<u8>>) -> impl Strategy<Value = Vec<u8>> {
    (
        0..seeds.len(),
        proptest::collection::vec((any::<usize>(), any::<u8>()), 0..8),
        any::<usize>(),
    )
        .prop_map(move |(i, flips, cut)| {
            let mut s = seeds[i].clone();
            for (at, b) in flips {
                if !s.is_empty() {
                    let n = s.len();
                    s[at % n] = b;
                }
            }
            if !s.is_empty() && cut % 4 == 0 {
                s.truncate(cut % s.len());
            }
            s
        })
}

/// A harness and a mutated seed of its corpus.
fn seeded() -> impl Strategy<Value = (usize, Vec<u8>)> {
    (0..fuzzing::HARNESSES.len())
        .prop_flat_map(|w| (Just(w), mutated(corpus(fuzzing::HARNESSES[w].0))))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn harnesses_take_random_bytes(which in 0..fuzzing::HARNESSES.len(), data in proptest::collection::vec(any::<u8>(), 0..512)) {
        (fuzzing::HARNESSES[which].1)(&data);
    }

    #[test]
    fn harnesses_take_mutated_seeds((which, data) in seeded()) {
        (fuzzing::HARNESSES[which].1)(&data);
    }
}
