//! What the randomized fault runs share: a seedable random number generator,
//! so that a run's choices (which fault, on whom, for how long) replay from
//! its seed, and the two environment knobs every such run reads.
//!
//! - `BERTH_SEED`: replays a run's choices (timing still varies, so a replay
//!   is likely, not certain, to meet the same interleaving);
//! - `BERTH_FAULT_SECONDS`: how long the nemesis injects faults.

use std::time::Duration;

/// xorshift64*: small, seedable, good enough to pick faults and keys.
/// The state must never be 0 (it would stay 0): seed with an odd number, or
/// use [`Rng::new`], which makes sure of it.
#[derive(Debug, Clone)]
pub struct Rng(pub u64);

impl Rng {
    /// A generator for `seed`, any value: the seed is mixed first
    /// (splitmix64's finalizer), so that seeds 2 and 3 give different runs
    /// and 0 a valid state.
    pub fn new(seed: u64) -> Rng {
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        Rng((z ^ (z >> 31)) | 1)
    }

    /// An independent stream number `stream` of `seed`, so that concurrent
    /// actors of one run each draw their own sequence, and adding an actor
    /// does not change what the others choose.
    pub fn derived(seed: u64, stream: u64) -> Rng {
        Rng::new(seed.wrapping_add(stream.wrapping_mul(0x9E37_79B9_7F4A_7C15)))
    }

    /// The next number. (Not an `Iterator`: the stream never ends, and
    /// `below` is what callers want.)
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in `0..n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// A duration between `min_ms` and `max_ms` milliseconds (inclusive).
    pub fn millis(&mut self, min_ms: u64, max_ms: u64) -> Duration {
        Duration::from_millis(min_ms + self.below(max_ms.saturating_sub(min_ms) + 1))
    }
}

/// `BERTH_SEED` if set, else a new seed from the clock. The caller prints
/// it, so that a failing run can be replayed.
pub fn seed_from_env() -> u64 {
    std::env::var("BERTH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
                | 1
        })
}

/// `BERTH_FAULT_SECONDS` if set, else `default`: how long faults go on.
pub fn seconds_from_env(default: u64) -> u64 {
    std::env::var("BERTH_FAULT_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_replays_its_choices_and_streams_differ() {
        let draw = |mut rng: Rng| (0..8).map(|_| rng.below(1000)).collect::<Vec<_>>();
        assert_eq!(draw(Rng::new(42)), draw(Rng::new(42)));
        assert_ne!(draw(Rng::new(2)), draw(Rng::new(3)));
        assert_ne!(draw(Rng::derived(42, 1)), draw(Rng::derived(42, 2)));
        // 0 is not a dead state.
        assert!(draw(Rng::new(0)).iter().any(|v| *v != 0));
        let mut rng = Rng::new(7);
        for _ in 0..100 {
            let d = rng.millis(500, 1500);
            assert!((500..=1500).contains(&(d.as_millis() as u64)));
        }
    }
}
