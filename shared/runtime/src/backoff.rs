//! The waits between attempts, one policy everywhere: doubling from a floor to a ceiling,
//! jittered so that processes retrying against the same server do not retry in step.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};

/// Jittered doubling from `min` to `max`, without a limit on attempts: for `retry` (add
/// `with_total_delay` for a deadline) or for [`Backoff`].
pub fn doubling(min: Duration, max: Duration) -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(min)
        .with_max_delay(max)
        .with_jitter()
        .without_max_times()
}

/// The wait before each next attempt of a loop that cannot be wrapped in a `retry` (it also
/// waits on a shutdown or on work in flight); [`Backoff::reset`] after a success.
pub struct Backoff {
    policy: ExponentialBuilder,
    waits: ExponentialBackoff,
    max: Duration,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Self {
        let policy = doubling(min, max);
        Self {
            waits: policy.build(),
            policy,
            max,
        }
    }

    /// How long to wait before the next attempt.
    pub fn next_wait(&mut self) -> Duration {
        self.waits.next().unwrap_or(self.max)
    }

    /// Back to the shortest wait.
    pub fn reset(&mut self) {
        self.waits = self.policy.build();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_grow_to_the_ceiling_and_start_over_after_a_reset() {
        let (min, max) = (Duration::from_millis(10), Duration::from_millis(80));
        let mut b = Backoff::new(min, max);
        let waits: Vec<Duration> = (0..8).map(|_| b.next_wait()).collect();
        // Jitter adds up to one more wait's worth on top of each step.
        assert!(
            waits.iter().all(|w| *w >= min && *w <= max * 2),
            "{waits:?}"
        );
        assert!(waits[7] >= max, "the ceiling is reached: {waits:?}");
        b.reset();
        assert!(b.next_wait() < min * 2, "a reset starts from the floor");
    }
}
