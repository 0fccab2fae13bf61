//! The client-side request budget: one token bucket per EC2 action, shared by every build of
//! the process (`bake build -j 20 …`), so bake paces itself below EC2's own throttling instead
//! of bursting into `RequestLimitExceeded` and burning its retries.
//!
//! EC2 throttles per account and region with a token bucket per API action, sized by the
//! action's category ("Request throttling" in the EC2 API reference: "each API is evaluated
//! individually"). The budget mirrors those buckets with a smaller burst and 80 % of the
//! category's refill rate, leaving headroom for other clients of the account and for
//! requests that reach EC2 closer together than they left here.
//!
//! It sits in front of the wire as a wrapper around the SDK's HTTP client, so every call site
//! and every SDK retry attempt is covered without touching them: a request first reserves a
//! token of its action and waits until that token is due (callers queue in arrival order).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_sdk_ec2::config::{HttpClient, RuntimeComponents, SharedHttpClient};
use aws_smithy_runtime_api::client::http::{
    HttpConnector, HttpConnectorFuture, HttpConnectorSettings, SharedHttpConnector,
};
use aws_smithy_runtime_api::client::orchestrator::HttpRequest;

/// EC2's action classes, as far as their buckets differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// RunInstances has a small bucket of its own (EC2: 5, refilled 2/s).
    RunInstances,
    /// CreateTags (EC2: 100, 10/s).
    CreateTags,
    /// Describe*/Get*/List* (EC2: 100, 20/s).
    NonMutating,
    /// Every other action (EC2: 50, 5/s).
    Mutating,
}

impl Class {
    pub fn of(action: &str) -> Class {
        match action {
            "RunInstances" => Class::RunInstances,
            "CreateTags" => Class::CreateTags,
            a if a.starts_with("Describe") || a.starts_with("Get") || a.starts_with("List") => {
                Class::NonMutating
            }
            _ => Class::Mutating,
        }
    }

    /// (burst, refill per second) of bake's bucket for the class.
    fn shape(self) -> (f64, f64) {
        match self {
            // 4 of EC2's 5: `-j N` spends this burst at the start of every parallel run, and
            // each token withheld delays a whole build by 1/1.6 s.
            Class::RunInstances => (4.0, 1.6),
            Class::CreateTags => (50.0, 8.0),
            Class::NonMutating => (50.0, 16.0),
            Class::Mutating => (25.0, 4.0),
        }
    }
}

/// A token bucket that hands out reservations: taking a token never fails, it says how long
/// to wait until the token is due, so concurrent callers are served in order.
#[derive(Debug, Clone)]
pub struct Bucket {
    capacity: f64,
    rate: f64,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    pub fn new(capacity: f64, rate: f64, now: Instant) -> Bucket {
        Bucket {
            capacity,
            rate,
            tokens: capacity,
            at: now,
        }
    }

    /// Takes one token at `now`; returns how long the caller must wait before using it.
    pub fn reserve(&mut self, now: Instant) -> Duration {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.at = self.at.max(now);
        self.tokens = (self.tokens + elapsed * self.rate).min(self.capacity);
        self.tokens -= 1.0;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate)
        }
    }
}

/// The buckets of one process, one per EC2 action, each shaped by the action's [`Class`]:
/// EC2 evaluates "each API individually" (a `DescribeInstances` burst does not throttle
/// `DescribeImages`, nor `ImportKeyPair` `CreateSecurityGroup`). One bucket per class made 20
/// builds at once share 4 mutating calls a second between a dozen actions: measured on the
/// hostile lab, `bake build -j 20` spent a minute of its cleanup and 16 s of its prepare
/// queueing here while EC2's (and the lab's) buckets had room.
#[derive(Debug, Default)]
pub struct RateBudget {
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl RateBudget {
    pub fn new() -> RateBudget {
        RateBudget::default()
    }

    /// Reserves a token for `action` at `now`: the wait before sending it. An action's bucket
    /// starts full on its first request.
    pub fn reserve_at(&self, action: &str, now: Instant) -> Duration {
        let mut buckets = self.buckets.lock().unwrap();
        if !buckets.contains_key(action) {
            let (cap, rate) = Class::of(action).shape();
            buckets.insert(action.to_string(), Bucket::new(cap, rate, now));
        }
        buckets.get_mut(action).expect("inserted").reserve(now)
    }

    /// Waits until a request of `action` may go out.
    pub async fn acquire(&self, action: &str) {
        let wait = self.reserve_at(action, Instant::now());
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

/// The EC2 action of a query-protocol request body (`Action=RunInstances&Version=…`).
pub fn action_of(body: &[u8]) -> Option<&str> {
    let body = std::str::from_utf8(body).ok()?;
    body.split('&').find_map(|kv| kv.strip_prefix("Action="))
}

/// An HTTP client that waits for the budget before handing each request to `inner`.
#[derive(Debug, Clone)]
pub struct Budgeted {
    inner: SharedHttpClient,
    budget: Arc<RateBudget>,
}

impl Budgeted {
    pub fn new(inner: SharedHttpClient, budget: Arc<RateBudget>) -> Budgeted {
        Budgeted { inner, budget }
    }
}

impl HttpClient for Budgeted {
    fn http_connector(
        &self,
        settings: &HttpConnectorSettings,
        components: &RuntimeComponents,
    ) -> SharedHttpConnector {
        SharedHttpConnector::new(BudgetedConnector {
            inner: self.inner.http_connector(settings, components),
            budget: self.budget.clone(),
        })
    }
}

#[derive(Debug)]
struct BudgetedConnector {
    inner: SharedHttpConnector,
    budget: Arc<RateBudget>,
}

impl HttpConnector for BudgetedConnector {
    fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
        let action = request
            .body()
            .bytes()
            .and_then(action_of)
            .map(str::to_string);
        let (inner, budget) = (self.inner.clone(), self.budget.clone());
        HttpConnectorFuture::new(async move {
            if let Some(a) = action {
                budget.acquire(&a).await;
            }
            inner.call(request).await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_is_free_then_tokens_come_at_the_refill_rate() {
        let t0 = Instant::now();
        let mut b = Bucket::new(2.0, 2.0, t0);
        assert_eq!(b.reserve(t0), Duration::ZERO);
        assert_eq!(b.reserve(t0), Duration::ZERO);
        // Queued callers wait one refill interval more each.
        assert_eq!(b.reserve(t0), Duration::from_millis(500));
        assert_eq!(b.reserve(t0), Duration::from_millis(1000));
        // Debt is paid off by time; the bucket refills only up to its capacity.
        let later = t0 + Duration::from_secs(60);
        assert_eq!(b.reserve(later), Duration::ZERO);
        assert_eq!(b.reserve(later), Duration::ZERO);
        assert_eq!(b.reserve(later), Duration::from_millis(500));
    }

    #[test]
    fn a_clock_running_backwards_never_adds_tokens() {
        let t0 = Instant::now() + Duration::from_secs(10);
        let mut b = Bucket::new(1.0, 1.0, t0);
        assert_eq!(b.reserve(t0), Duration::ZERO);
        let earlier = t0 - Duration::from_secs(5);
        assert_eq!(b.reserve(earlier), Duration::from_secs(1));
    }

    #[test]
    fn classes_follow_ec2s_buckets_and_each_action_has_its_own() {
        assert_eq!(Class::of("RunInstances"), Class::RunInstances);
        assert_eq!(Class::of("CreateTags"), Class::CreateTags);
        assert_eq!(Class::of("DescribeInstances"), Class::NonMutating);
        assert_eq!(Class::of("GetConsoleOutput"), Class::NonMutating);
        assert_eq!(Class::of("TerminateInstances"), Class::Mutating);
        let budget = RateBudget::new();
        let t0 = Instant::now();
        // RunInstances' small burst runs out while describes are still free.
        let runs: Vec<Duration> = (0..6)
            .map(|_| budget.reserve_at("RunInstances", t0))
            .collect();
        assert_eq!(runs[..4], [Duration::ZERO; 4]);
        assert!(runs[4] > Duration::ZERO && runs[5] > runs[4], "{runs:?}");
        assert_eq!(budget.reserve_at("DescribeInstances", t0), Duration::ZERO);
        // Actions of one class do not share a bucket, as on EC2: 25 ImportKeyPair calls use up
        // its burst, CreateSecurityGroup still has all of its own.
        for _ in 0..25 {
            assert_eq!(budget.reserve_at("ImportKeyPair", t0), Duration::ZERO);
        }
        assert!(budget.reserve_at("ImportKeyPair", t0) > Duration::ZERO);
        assert_eq!(budget.reserve_at("CreateSecurityGroup", t0), Duration::ZERO);
        assert_eq!(budget.reserve_at("TerminateInstances", t0), Duration::ZERO);
    }

    #[test]
    fn action_is_read_from_the_query_body() {
        assert_eq!(
            action_of(b"Action=RunInstances&Version=2016-11-15&MinCount=1"),
            Some("RunInstances")
        );
        assert_eq!(
            action_of(b"Version=2016-11-15&Action=CreateTags"),
            Some("CreateTags")
        );
        assert_eq!(action_of(b"{\"json\": true}"), None);
    }
}
