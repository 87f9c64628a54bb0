//! Retrying transient faults: capped exponential backoff with jitter, within a time budget, each retry
//! logged with its cause. Whether a fault is transient is the caller's decision.

use std::error::Error;
use std::future::Future;
use std::time::{Duration, Instant};

const FIRST_DELAY: Duration = Duration::from_millis(500);
const MAX_DELAY: Duration = Duration::from_secs(8);

/// The delay before retry number `attempt` (1-based): doubling from 0.5 s, capped at 8 s, then
/// "equal jitter": half fixed, half random, so parallel images don't retry in lockstep.
pub(crate) fn delay(attempt: u32, random: f64) -> Duration {
    let exponential = FIRST_DELAY.saturating_mul(2u32.saturating_pow(attempt.saturating_sub(1)));
    let capped = exponential.min(MAX_DELAY);
    capped / 2 + capped.mul_f64(random.clamp(0.0, 1.0) / 2.0)
}

/// A number in [0, 1) that differs between calls and processes; good enough for jitter.
fn random_fraction() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    (hasher.finish() >> 11) as f64 / (1u64 << 53) as f64
}

/// Runs `operation` until it succeeds, fails permanently, or the next retry would end after `budget`.
pub(crate) async fn with_backoff<T, E, F, Fut>(
    image: &str,
    what: &str,
    budget: Duration,
    is_transient: impl Fn(&E) -> bool,
    mut operation: F,
) -> Result<T, E>
where
    E: Error,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let started = Instant::now();
    let mut attempt = 0;
    loop {
        match operation().await {
            Ok(value) => return Ok(value),
            Err(err) if is_transient(&err) => {
                attempt += 1;
                let pause = delay(attempt, random_fraction());
                if started.elapsed() + pause > budget {
                    tracing::warn!(
                        image,
                        "{what}: giving up after {attempt} attempts in {:.0} s",
                        started.elapsed().as_secs_f64()
                    );
                    return Err(err);
                }
                tracing::warn!(
                    image,
                    "{what} failed ({}); retrying in {:.1} s (attempt {})",
                    crate::output::with_causes(&err),
                    pause.as_secs_f64(),
                    attempt + 1
                );
                tokio::time::sleep(pause).await;
            }
            Err(err) => return Err(err),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[derive(Debug, PartialEq, thiserror::Error)]
    #[error("{0}")]
    struct Fault(&'static str);

    #[test]
    fn delays_double_up_to_the_cap_with_bounded_jitter() {
        assert_eq!(delay(1, 0.0), Duration::from_millis(250));
        assert_eq!(delay(1, 1.0), Duration::from_millis(500));
        assert_eq!(delay(2, 1.0), Duration::from_secs(1));
        assert_eq!(delay(4, 1.0), Duration::from_secs(4));
        assert_eq!(delay(5, 1.0), Duration::from_secs(8));
        assert_eq!(delay(60, 1.0), Duration::from_secs(8));
        assert_eq!(delay(60, 0.0), Duration::from_secs(4));
        for _ in 0..100 {
            let r = random_fraction();
            assert!((0.0..1.0).contains(&r), "{r}");
        }
    }

    #[tokio::test]
    async fn transient_faults_are_retried_and_permanent_ones_are_not() {
        let calls = AtomicU32::new(0);
        let result = with_backoff(
            "web",
            "push",
            Duration::from_secs(10),
            |e: &Fault| e.0 == "refused",
            || {
                let n = calls.fetch_add(1, Ordering::SeqCst);
                async move { if n < 2 { Err(Fault("refused")) } else { Ok(n) } }
            },
        )
        .await;
        assert_eq!(result, Ok(2));

        let calls = AtomicU32::new(0);
        let result: Result<u32, Fault> = with_backoff(
            "web",
            "push",
            Duration::from_secs(10),
            |e: &Fault| e.0 == "refused",
            || {
                calls.fetch_add(1, Ordering::SeqCst);
                async { Err(Fault("denied")) }
            },
        )
        .await;
        assert_eq!(result, Err(Fault("denied")));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn the_budget_ends_the_retries() {
        let calls = AtomicU32::new(0);
        let started = Instant::now();
        let result: Result<(), Fault> = with_backoff(
            "web",
            "push",
            Duration::from_millis(900),
            |_: &Fault| true,
            || {
                calls.fetch_add(1, Ordering::SeqCst);
                async { Err(Fault("refused")) }
            },
        )
        .await;
        assert!(result.is_err());
        assert!(started.elapsed() < Duration::from_millis(900));
        assert!(calls.load(Ordering::SeqCst) >= 2);
    }
}
