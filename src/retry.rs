//! The one poll/retry helper: exponential backoff with a ceiling and full jitter, bounded by a
//! deadline. Every wait in bake (instance state, SSH coming up, image available, snapshot still
//! in use, refresh progress) goes through [`poll`], so tuning the cadence happens in one place.

use std::future::Future;
use std::time::{Duration, Instant};

/// How often to look, and for how long.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    /// Delay before the second attempt.
    pub initial: Duration,
    /// Ceiling on the delay between attempts. Keeps state changes noticed within `max` of
    /// happening without hammering the API.
    pub max: Duration,
    /// Growth factor between attempts.
    pub factor: f64,
    /// Give up after this long.
    pub timeout: Duration,
}

impl Backoff {
    /// AWS state polling: quick first looks (the lab and fast paths answer at once), then
    /// settle at one call every two seconds.
    pub const AWS: Backoff = Backoff {
        initial: Duration::from_millis(100),
        max: Duration::from_secs(2),
        factor: 1.6,
        timeout: Duration::from_secs(30 * 60),
    };

    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    pub fn with_max(mut self, max: Duration) -> Self {
        self.max = max;
        self
    }

    /// The delay after `attempt` (0-based) failures, before jitter.
    pub fn delay(&self, attempt: u32) -> Duration {
        self.delay_throttled(attempt, 0)
    }

    /// The delay when the service has been throttling us `level` times in a row: the ceiling
    /// doubles with each level (up to 32x), so sustained throttling really slows us down
    /// instead of polling at the ceiling regardless.
    pub fn delay_throttled(&self, attempt: u32, level: u32) -> Duration {
        let exp = self.factor.powi((attempt + level).min(64) as i32);
        let d = self.initial.as_secs_f64() * exp;
        let ceiling = self.max.as_secs_f64() * f64::from(1u32 << level.min(5));
        Duration::from_secs_f64(d.min(ceiling))
    }
}

/// What one attempt says.
#[derive(Debug)]
pub enum Poll<T, E> {
    /// Done: stop polling with this value.
    Ready(T),
    /// Not yet; look again. The string says what we are waiting for (shown in progress).
    Pending(String),
    /// Throttled by the service: look again, but back off harder.
    Throttled,
    /// A permanent failure: stop now.
    Fail(E),
}

impl<T, E> Poll<T, E> {
    /// The same answer with the failure turned into another error type.
    pub fn map_err<F>(self, f: impl FnOnce(E) -> F) -> Poll<T, F> {
        match self {
            Poll::Ready(v) => Poll::Ready(v),
            Poll::Pending(why) => Poll::Pending(why),
            Poll::Throttled => Poll::Throttled,
            Poll::Fail(e) => Poll::Fail(f(e)),
        }
    }
}

/// An error that can say the service is throttling us. The one rule "throttling means look
/// again, harder; anything else is decided by the caller" lives in [`Poll::from_err`] and
/// [`Poll::unless_throttled`].
pub trait Throttle {
    fn is_throttling(&self) -> bool;
}

impl<T, E: Throttle> Poll<T, E> {
    /// A failed attempt: throttling is [`Poll::Throttled`], anything else fails the poll.
    pub fn from_err(e: E) -> Self {
        Self::unless_throttled(e, Poll::Fail)
    }

    /// A failed attempt: throttling is [`Poll::Throttled`], anything else is what `other`
    /// makes of it (often [`Poll::Pending`] for errors known to pass).
    pub fn unless_throttled(e: E, other: impl FnOnce(E) -> Self) -> Self {
        if e.is_throttling() {
            Poll::Throttled
        } else {
            other(e)
        }
    }

    /// An attempt's result: `Ok` is ready, errors as in [`Poll::from_err`].
    pub fn from_result(r: Result<T, E>) -> Self {
        match r {
            Ok(v) => Poll::Ready(v),
            Err(e) => Self::from_err(e),
        }
    }
}

/// Why polling ended without a value.
#[derive(Debug, thiserror::Error)]
pub enum PollError<E> {
    #[error("timed out after {elapsed:?}: {last}")]
    Timeout { elapsed: Duration, last: String },
    #[error(transparent)]
    Failed(E),
}

/// Calls `attempt` until it is `Ready` or `Fail`s, sleeping with jittered exponential backoff
/// between attempts, up to `backoff.timeout`.
pub async fn poll<T, E, F, Fut>(backoff: Backoff, mut attempt: F) -> Result<T, PollError<E>>
where
    F: FnMut(u32) -> Fut,
    Fut: Future<Output = Poll<T, E>>,
{
    let start = Instant::now();
    let mut n: u32 = 0;
    // Consecutive throttling raises the ceiling; every answer that is not throttled lowers it
    // again, so we return to the normal cadence once the service is happy.
    let mut throttle: u32 = 0;
    loop {
        let last = match attempt(n).await {
            Poll::Ready(v) => return Ok(v),
            Poll::Fail(e) => return Err(PollError::Failed(e)),
            Poll::Pending(why) => {
                throttle = throttle.saturating_sub(1);
                why
            }
            Poll::Throttled => {
                throttle = (throttle + 1).min(5);
                "throttled by the service".to_string()
            }
        };
        let elapsed = start.elapsed();
        if elapsed >= backoff.timeout {
            return Err(PollError::Timeout { elapsed, last });
        }
        let base = backoff.delay_throttled(n, throttle);
        // Full jitter over the upper half keeps concurrent builds from polling in lockstep
        // while never dropping below half the nominal delay.
        let jitter: f64 = 0.5 + rand::random::<f64>() * 0.5;
        let mut sleep = base.mul_f64(jitter);
        let left = backoff.timeout - elapsed;
        if sleep > left {
            sleep = left;
        }
        tokio::time::sleep(sleep).await;
        n += 1;
    }
}

/// One try of an action the recipe lets run again (a step's or a test's `retries`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attempt {
    /// 1-based.
    pub n: u32,
    /// How many tries there are in all.
    pub of: u32,
}

impl Attempt {
    /// `name`, with "(attempt n/of)" when there is more than one try.
    pub fn label(&self, name: &str) -> String {
        if self.of > 1 {
            format!("{name} (attempt {}/{})", self.n, self.of)
        } else {
            name.to_string()
        }
    }
}

/// What one try says.
#[derive(Debug)]
pub enum Tried<T, E> {
    /// It worked: stop with this value.
    Done(T),
    /// It failed: try again if tries are left, else this is the answer.
    Failed(E),
    /// It failed in a way another try cannot mend: stop now.
    Fatal(E),
}

/// Runs `attempt` up to `tries` times (at least once), waiting with the AWS backoff between
/// tries: the first `Done`, a `Fatal` at once, or the last `Failed`. The action is an async
/// closure so it can hold the communicator mutably across its awaits.
pub async fn retry_times<T, E>(
    tries: u32,
    mut attempt: impl AsyncFnMut(Attempt) -> Tried<T, E>,
) -> Result<T, E> {
    let of = tries.max(1);
    let mut n = 1;
    loop {
        match attempt(Attempt { n, of }).await {
            Tried::Done(v) => return Ok(v),
            Tried::Fatal(e) => return Err(e),
            Tried::Failed(e) if n >= of => return Err(e),
            Tried::Failed(_) => {}
        }
        tokio::time::sleep(Backoff::AWS.delay(n)).await;
        n += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delay_grows_to_ceiling() {
        let b = Backoff::AWS;
        assert_eq!(b.delay(0), Duration::from_millis(100));
        assert!(b.delay(1) > b.delay(0));
        assert_eq!(b.delay(30), Duration::from_secs(2));
    }

    #[test]
    fn throttling_raises_the_ceiling_and_recovers() {
        let b = Backoff::AWS;
        assert_eq!(b.delay_throttled(30, 0), Duration::from_secs(2));
        assert_eq!(b.delay_throttled(30, 1), Duration::from_secs(4));
        assert_eq!(b.delay_throttled(30, 5), Duration::from_secs(64));
        assert_eq!(b.delay_throttled(30, 9), Duration::from_secs(64));
        assert!(b.delay_throttled(0, 2) > b.delay(0));
    }

    #[tokio::test]
    async fn poll_returns_ready_after_pending() {
        let b = Backoff {
            initial: Duration::from_millis(1),
            max: Duration::from_millis(2),
            factor: 2.0,
            timeout: Duration::from_secs(5),
        };
        let r: Result<u32, PollError<()>> = poll(b, |n| async move {
            if n < 3 {
                Poll::Pending(format!("attempt {n}"))
            } else {
                Poll::Ready(n)
            }
        })
        .await;
        assert_eq!(r.unwrap(), 3);
    }

    #[tokio::test]
    async fn poll_times_out_with_last_reason() {
        let b = Backoff {
            initial: Duration::from_millis(1),
            max: Duration::from_millis(5),
            factor: 2.0,
            timeout: Duration::from_millis(30),
        };
        let r: Result<(), PollError<()>> =
            poll(b, |_| async { Poll::Pending("still pending".into()) }).await;
        match r {
            Err(PollError::Timeout { last, .. }) => assert_eq!(last, "still pending"),
            other => panic!("expected timeout, got {other:?}"),
        }
    }

    struct Fake(bool);
    impl Throttle for Fake {
        fn is_throttling(&self) -> bool {
            self.0
        }
    }

    #[test]
    fn throttling_is_looked_at_again_and_the_rest_is_the_callers_call() {
        assert!(matches!(
            Poll::<(), _>::from_err(Fake(true)),
            Poll::Throttled
        ));
        assert!(matches!(
            Poll::<(), _>::from_err(Fake(false)),
            Poll::Fail(_)
        ));
        let pending = |_| Poll::<(), Fake>::Pending("soon".into());
        assert!(matches!(
            Poll::unless_throttled(Fake(true), pending),
            Poll::Throttled
        ));
        assert!(matches!(
            Poll::unless_throttled(Fake(false), pending),
            Poll::Pending(_)
        ));
        assert!(matches!(
            Poll::<u8, Fake>::from_result(Ok(1)),
            Poll::Ready(1)
        ));
    }

    #[tokio::test]
    async fn poll_stops_on_fail() {
        let b = Backoff::AWS;
        let r: Result<(), PollError<&str>> = poll(b, |_| async { Poll::Fail("boom") }).await;
        assert!(matches!(r, Err(PollError::Failed("boom"))));
    }

    #[tokio::test]
    async fn retry_times_stops_at_done_fatal_or_the_last_try() {
        let mut seen = Vec::new();
        let r: Result<u32, &str> = retry_times(3, async |a: Attempt| {
            seen.push(a.label("step"));
            if a.n < 2 {
                Tried::Failed("no")
            } else {
                Tried::Done(a.n)
            }
        })
        .await;
        assert_eq!(r, Ok(2));
        assert_eq!(seen, ["step (attempt 1/3)", "step (attempt 2/3)"]);

        let mut tries = 0;
        let r: Result<(), &str> = retry_times(3, async |_| {
            tries += 1;
            Tried::Fatal("broken")
        })
        .await;
        assert_eq!((r, tries), (Err("broken"), 1));

        let r: Result<(), u32> = retry_times(2, async |a: Attempt| Tried::Failed(a.n)).await;
        assert_eq!(r, Err(2));
        assert_eq!(Attempt { n: 1, of: 1 }.label("t"), "t");
        let r: Result<(), u32> = retry_times(0, async |a: Attempt| Tried::Failed(a.of)).await;
        assert_eq!(r, Err(1));
    }
}
