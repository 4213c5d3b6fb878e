//! One request's walk over its route's upstream groups: which endpoint the next attempt goes
//! to, whether a failed attempt may be repeated, and what each attempt's outcome tells the
//! endpoint's circuit breaker and the group's retry budget.
//!
//! The proxy phases only report what happened (a peer is wanted, a connection failed, an error
//! before the response headers, response headers arrived); every decision is here, as methods
//! over plain values and a monotonic `now` ([`crate::clock::mono_nanos`]), so the policy is
//! unit-tested on a virtual clock without Pingora.
//!
//! The rules (the pools guide in the docs tells them to users):
//! - failover: the first group, from the current one on, with attempts left and a usable
//!   endpoint (healthy, circuit closed or probing, not yet tried) serves; when none has, the
//!   last group is tried anyway (a request is better sent than refused outright);
//! - a connection that failed reached nobody: it is retried whatever the method, outside the
//!   retry budget, while attempts are left;
//! - an attempt that failed after reaching the upstream (reset, timeout before headers, a
//!   status in `retry.on`) is repeated only for a request that may be repeated (idempotent or
//!   the route allows writes, body still in Pingora's retry buffer), while attempts, the
//!   deadline and the group's retry budget allow; a timed-out attempt only on an endpoint not
//!   yet tried, as nginx's `proxy_next_upstream timeout`;
//! - a 429 or 503 with `Retry-After` holds the endpoint that long (announced overload, not a
//!   failure); a status in `retry.on` counts as a failure; anything else is a success.

use super::UpstreamGroup;
use crate::observe::metrics;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// How one attempt ended, the `outcome` label of `tollgate_upstream_requests_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Response headers arrived (whatever the status).
    Success,
    /// Answered with a status the group retries, and retried.
    Retried,
    /// Connected, then failed before the response headers.
    Error,
    /// The connection could not be made.
    ConnectError,
    /// Connect or read timed out.
    Timeout,
}

impl Outcome {
    fn label(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Retried => "retried",
            Outcome::Error => "error",
            Outcome::ConnectError => "connect_error",
            Outcome::Timeout => "timeout",
        }
    }
}

/// What the proxy knows about an error that ended an attempt before its response headers.
#[derive(Debug, Clone, Copy)]
pub struct AttemptError {
    /// The request may be sent again: idempotent (or the route allows writes) and its body
    /// still fits Pingora's retry buffer.
    pub repeatable: bool,
    /// The error came from the upstream side (not the client).
    pub upstream_side: bool,
    /// It was a read timeout.
    pub timed_out: bool,
}

/// The upstream side of one request: attempts made, endpoints tried, the attempt under way.
#[derive(Debug, Default)]
pub struct Attempts {
    /// Endpoints tried, in order: (index of the group in the route's list, endpoint index).
    tried: Vec<(usize, usize)>,
    /// The group of the current (last) attempt.
    group: Option<Arc<UpstreamGroup>>,
    /// When the request started (monotonic nanoseconds), for the retry deadline.
    started: u64,
    /// When the attempt under way started; `None` once it is accounted for.
    in_progress: Option<u64>,
    /// Time to response headers of the attempt that answered.
    ttfb: Option<Duration>,
}

impl Attempts {
    /// No attempt yet, for a request that started at `started` (monotonic nanoseconds).
    pub fn new(started: u64) -> Self {
        Attempts {
            started,
            ..Attempts::default()
        }
    }

    /// Attempts made so far.
    pub fn count(&self) -> u32 {
        self.tried.len() as u32
    }

    /// The group of the current attempt.
    pub fn group(&self) -> Option<&Arc<UpstreamGroup>> {
        self.group.as_ref()
    }

    /// Label of the endpoint the last attempt went to.
    pub fn endpoint_label(&self) -> Option<&Arc<str>> {
        let (group, &(_, i)) = (self.group.as_ref()?, self.tried.last()?);
        Some(&group.endpoints[i].label)
    }

    /// Time to response headers of the attempt that answered.
    pub fn ttfb(&self) -> Option<Duration> {
        self.ttfb
    }

    /// An attempt connected and has not been accounted for yet (no headers, no error seen).
    pub fn in_progress(&self) -> bool {
        self.in_progress.is_some()
    }

    /// The endpoints of group `gi` this request has tried.
    fn tried_in(&self, gi: usize) -> Vec<usize> {
        self.tried
            .iter()
            .filter(|(g, _)| *g == gi)
            .map(|&(_, e)| e)
            .collect()
    }

    /// Walk `groups` from the current one on, skipping those out of attempts, and return the
    /// first `(group index, endpoint index)` that `choose(group, balance key, tried)` finds.
    fn first_group_with(
        &self,
        groups: &[Arc<UpstreamGroup>],
        key: &impl Fn(&UpstreamGroup) -> Vec<u8>,
        choose: impl Fn(&UpstreamGroup, &[u8], &[usize]) -> Option<usize>,
    ) -> Option<(usize, usize)> {
        let start = self.tried.last().map_or(0, |&(g, _)| g);
        groups
            .iter()
            .enumerate()
            .skip(start)
            .find_map(|(gi, group)| {
                let tried = self.tried_in(gi);
                if tried.len() >= group.attempts as usize {
                    return None;
                }
                choose(group, &key(group), &tried).map(|i| (gi, i))
            })
    }

    /// Start the next attempt over `groups` (the route's, in failover order) at `now`: pick
    /// the endpoint and return its group and index. `key` gives the balance key a group
    /// hashes (called only for the groups looked at). An attempt still in progress failed
    /// before its response headers (Pingora asks for a peer again to retry it): it is
    /// accounted as an error first.
    pub fn start_next(
        &mut self,
        groups: &[Arc<UpstreamGroup>],
        key: impl Fn(&UpstreamGroup) -> Vec<u8>,
        now: u64,
    ) -> (Arc<UpstreamGroup>, usize) {
        if self.in_progress.is_some() {
            self.failed(now);
            self.finish(Outcome::Error);
        }
        let (gi, i) = self
            .first_group_with(groups, &key, |g, k, tried| g.select_usable(k, tried, now))
            .unwrap_or_else(|| {
                let gi = groups.len() - 1;
                let group = &groups[gi];
                (gi, group.select(&key(group), &self.tried_in(gi), now))
            });
        let group = groups[gi].clone();
        if self.tried.is_empty() {
            group.budget.deposit();
        } else {
            metrics::UPSTREAM_RETRIES_TOTAL
                .with_label_values(&[&group.name])
                .inc();
        }
        self.tried.push((gi, i));
        self.in_progress = Some(now);
        self.group = Some(group.clone());
        (group, i)
    }

    /// Whether the route's `groups` have attempts left, before the current group's deadline.
    pub fn attempts_left(&self, groups: &[Arc<UpstreamGroup>], now: u64) -> bool {
        let total: u32 = groups.iter().map(|g| g.attempts).sum();
        let before_deadline = self
            .group
            .as_ref()
            .and_then(|g| g.deadline)
            .is_none_or(|d| now.saturating_sub(self.started) < crate::clock::nanos(d));
        self.count() < total.max(1) && before_deadline
    }

    /// Whether another endpoint would be found now (asking takes no half-open probe).
    fn another_endpoint_usable(
        &self,
        groups: &[Arc<UpstreamGroup>],
        key: &impl Fn(&UpstreamGroup) -> Vec<u8>,
        now: u64,
    ) -> bool {
        self.first_group_with(groups, key, |g, k, tried| {
            g.has_usable(k, tried, now).then_some(0)
        })
        .is_some()
    }

    /// Take a retry from the current group's budget.
    fn budget_allows(&self, now: u64) -> bool {
        self.group
            .as_ref()
            .is_some_and(|g| g.budget.try_withdraw(now))
    }

    /// The connection of the current attempt failed (`timed_out`: the connect timed out):
    /// account for it and say whether another endpoint may take the request. Nothing reached
    /// the upstream, so any method may, outside the retry budget (it costs the upstreams
    /// nothing).
    pub fn connect_failed(
        &mut self,
        groups: &[Arc<UpstreamGroup>],
        timed_out: bool,
        now: u64,
    ) -> bool {
        self.finish(if timed_out {
            Outcome::Timeout
        } else {
            Outcome::ConnectError
        });
        self.failed(now);
        self.attempts_left(groups, now)
    }

    /// An error ended the current attempt before its response headers: may the request be
    /// retried (on another endpoint)? `None`: this policy has no say (the error came after
    /// the attempt, or from the client), Pingora's own reuse rule decides.
    pub fn retry_after_error(
        &self,
        groups: &[Arc<UpstreamGroup>],
        key: impl Fn(&UpstreamGroup) -> Vec<u8>,
        e: AttemptError,
        now: u64,
    ) -> Option<bool> {
        if !e.repeatable {
            return Some(false);
        }
        let before_headers = self.in_progress.is_some();
        if before_headers
            && e.upstream_side
            && self.attempts_left(groups, now)
            && (!e.timed_out || self.another_endpoint_usable(groups, &key, now))
        {
            return Some(self.budget_allows(now));
        }
        None
    }

    /// Response headers with `status` arrived for the current attempt: is it one the group
    /// retries, with attempts and budget left, for a request that may be repeated
    /// (`repeatable`)? When it is, the answer is accounted for (breaker, `retried`) and the
    /// caller makes Pingora try again.
    pub fn retry_on_status(
        &mut self,
        groups: &[Arc<UpstreamGroup>],
        status: u16,
        retry_after: Option<Duration>,
        repeatable: bool,
        now: u64,
    ) -> bool {
        let retryable = self
            .group
            .as_ref()
            .is_some_and(|g| g.retry_on.contains(&status));
        if !retryable || !self.attempts_left(groups, now) || !repeatable || !self.budget_allows(now)
        {
            return false;
        }
        self.record_answer(status, retry_after, now);
        self.finish(Outcome::Retried);
        true
    }

    /// Response headers with `status` arrived and go to the client: account for the attempt
    /// (time to first byte, success, the breaker) and return the time to first byte.
    pub fn answered(
        &mut self,
        status: u16,
        retry_after: Option<Duration>,
        now: u64,
    ) -> Option<Duration> {
        if let (Some(since), Some(group)) = (self.in_progress, &self.group) {
            let ttfb = Duration::from_nanos(now.saturating_sub(since));
            self.ttfb = Some(ttfb);
            metrics::upstream_duration()
                .with_label_values(&[&group.name])
                .observe(ttfb.as_secs_f64());
        }
        self.finish(Outcome::Success);
        self.record_answer(status, retry_after, now);
        self.ttfb
    }

    /// The request ended with an attempt still in progress (no response headers): the
    /// upstream's fault unless `client_fault` (the client went away first).
    pub fn ended_unanswered(&mut self, client_fault: bool, timed_out: bool, now: u64) {
        if self.in_progress.is_none() || client_fault {
            return;
        }
        self.finish(if timed_out {
            Outcome::Timeout
        } else {
            Outcome::Error
        });
        self.failed(now);
    }

    /// Tell the current endpoint's breaker how its answer went (see the module rules).
    fn record_answer(&self, status: u16, retry_after: Option<Duration>, now: u64) {
        let (Some(group), Some(&(_, i))) = (&self.group, self.tried.last()) else {
            return;
        };
        let b = &group.endpoints[i].breaker;
        let cool = (status == 429 || status == 503)
            .then_some(retry_after)
            .flatten();
        if let Some(wait) = cool {
            b.hold(now.saturating_add(crate::clock::nanos(wait)));
            set_circuit_gauge(group, i, true);
        } else if group.retry_on.contains(&status) {
            self.failed(now);
        } else if b.success() {
            set_circuit_gauge(group, i, false);
        }
    }

    /// The endpoint of the current attempt failed (connection error, timeout, reset).
    fn failed(&self, now: u64) {
        let (Some(group), Some(&(_, i))) = (&self.group, self.tried.last()) else {
            return;
        };
        if group.endpoints[i].breaker.failure(now) {
            set_circuit_gauge(group, i, true);
            tracing::warn!(
                "upstream {} endpoint {}: circuit open after repeated failures",
                group.name,
                group.endpoints[i].label
            );
        }
    }

    /// Count the current attempt's outcome and close it.
    fn finish(&mut self, outcome: Outcome) {
        self.in_progress = None;
        if let (Some(group), Some(endpoint)) = (&self.group, self.endpoint_label()) {
            metrics::UPSTREAM_REQUESTS_TOTAL
                .with_label_values(&[&group.name, endpoint, outcome.label()])
                .inc();
        }
    }
}

fn set_circuit_gauge(group: &UpstreamGroup, i: usize, open: bool) {
    metrics::UPSTREAM_CIRCUIT_OPEN
        .with_label_values(&[&group.name, &group.endpoints[i].label])
        .set(i64::from(open));
}

/// `Retry-After` as a wait: delta-seconds or an HTTP date measured from `wall_now` (the one
/// place the wall clock enters: the date is a calendar time), capped at an hour. Once turned
/// into a wait, the hold runs on the monotonic clock.
pub fn retry_after(value: Option<&str>, wall_now: SystemTime) -> Option<Duration> {
    let v = value?.trim();
    let wait = match v.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => httpdate::parse_http_date(v)
            .ok()?
            .duration_since(wall_now)
            .unwrap_or_default(),
    };
    (!wait.is_zero()).then_some(wait.min(Duration::from_secs(3600)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::breaker::State;
    use crate::upstream::budget::RetryBudget;
    use crate::upstream::{test_endpoints, Balance, HashOn};

    const S: u64 = 1_000_000_000;
    /// A virtual monotonic clock reading, well away from 0.
    const T0: u64 = 100 * S;

    fn group(name: &str, n: u16, attempts: u32, port: u16) -> Arc<UpstreamGroup> {
        let (backoff, max_backoff) = (Duration::from_secs(10), Duration::from_secs(60));
        let endpoints = test_endpoints(n, port, 2, backoff, max_backoff);
        Arc::new(
            UpstreamGroup::new(
                name.into(),
                endpoints,
                Balance::RoundRobin,
                HashOn::Tenant,
                attempts,
            )
            .with_retry(
                Some(Duration::from_secs(5)),
                vec![502, 503, 504],
                RetryBudget::new(0.0, 1),
            ),
        )
    }

    fn circuit_state(group: &UpstreamGroup, i: usize, now: u64) -> State {
        group.endpoints[i].breaker.state(now)
    }

    fn no_key(_: &UpstreamGroup) -> Vec<u8> {
        Vec::new()
    }

    const REPEATABLE: AttemptError = AttemptError {
        repeatable: true,
        upstream_side: true,
        timed_out: false,
    };

    #[test]
    fn failed_connections_fail_over_to_the_next_group_once_the_first_is_spent() {
        let groups = [group("primary", 2, 2, 4000), group("backup", 1, 1, 4100)];
        let mut a = Attempts::new(T0);
        let (g1, i1) = a.start_next(&groups, no_key, T0);
        assert!(a.connect_failed(&groups, false, T0));
        let (g2, i2) = a.start_next(&groups, no_key, T0);
        assert_eq!((&*g1.name, &*g2.name), ("primary", "primary"));
        assert_ne!(i1, i2, "a second attempt goes to the other endpoint");
        assert!(a.connect_failed(&groups, false, T0));
        let (g3, _) = a.start_next(&groups, no_key, T0);
        assert_eq!(&*g3.name, "backup");
        assert_eq!(a.count(), 3);
        assert!(
            !a.connect_failed(&groups, false, T0),
            "3 of 3 attempts used"
        );
    }

    #[test]
    fn non_repeatable_requests_are_never_retried_after_reaching_the_upstream() {
        let groups = [group("app", 2, 3, 4200)];
        let mut a = Attempts::new(T0);
        a.start_next(&groups, no_key, T0);
        let e = AttemptError {
            repeatable: false,
            ..REPEATABLE
        };
        assert_eq!(a.retry_after_error(&groups, no_key, e, T0), Some(false));
        assert!(!a.retry_on_status(&groups, 503, None, false, T0));
    }

    #[test]
    fn the_budget_bounds_retries_and_refills_with_time() {
        // ratio 0, min 1/s: the bucket starts with 10 s worth (10 retries).
        let groups = [group("app", 2, 100, 4300)];
        let mut a = Attempts::new(T0);
        a.start_next(&groups, no_key, T0);
        let allowed = (0..20)
            .filter(|_| a.retry_after_error(&groups, no_key, REPEATABLE, T0) == Some(true))
            .count();
        assert_eq!(allowed, 10);
        // Two seconds later two more tokens have trickled in.
        let later = (0..5)
            .filter(|_| a.retry_after_error(&groups, no_key, REPEATABLE, T0 + 2 * S) == Some(true))
            .count();
        assert_eq!(later, 2);
    }

    #[test]
    fn a_timed_out_attempt_is_repeated_only_elsewhere() {
        let groups = [group("app", 1, 3, 4400)];
        let mut a = Attempts::new(T0);
        a.start_next(&groups, no_key, T0);
        let e = AttemptError {
            timed_out: true,
            ..REPEATABLE
        };
        assert_eq!(
            a.retry_after_error(&groups, no_key, e, T0),
            None,
            "the only endpoint is tried: no retry of this policy's"
        );
        let two = [group("app", 2, 3, 4450)];
        let mut b = Attempts::new(T0);
        b.start_next(&two, no_key, T0);
        assert_eq!(b.retry_after_error(&two, no_key, e, T0), Some(true));
    }

    #[test]
    fn no_new_attempt_after_the_deadline() {
        let groups = [group("app", 2, 3, 4500)];
        let mut a = Attempts::new(T0);
        a.start_next(&groups, no_key, T0);
        assert!(a.attempts_left(&groups, T0 + 4 * S));
        assert!(!a.attempts_left(&groups, T0 + 5 * S), "deadline 5 s");
    }

    #[test]
    fn retry_after_holds_the_endpoint_and_other_statuses_count_as_failures() {
        let groups = [group("app", 1, 1, 4600)];
        let mut a = Attempts::new(T0);
        a.start_next(&groups, no_key, T0);
        a.answered(429, Some(Duration::from_secs(30)), T0);
        assert_eq!(circuit_state(&groups[0], 0, T0 + 29 * S), State::Open);
        assert_eq!(circuit_state(&groups[0], 0, T0 + 30 * S), State::HalfOpen);
        // 502 twice (failures: 2) opens the circuit; a 200 then closes it.
        let mut b = Attempts::new(T0 + 40 * S);
        b.start_next(&groups, no_key, T0 + 40 * S);
        b.answered(502, None, T0 + 40 * S);
        b.answered(502, None, T0 + 40 * S);
        assert_eq!(circuit_state(&groups[0], 0, T0 + 41 * S), State::Open);
        b.answered(200, None, T0 + 51 * S);
        assert_eq!(circuit_state(&groups[0], 0, T0 + 51 * S), State::Closed);
    }

    #[test]
    fn time_to_first_byte_is_measured_on_the_attempt_that_answered() {
        let groups = [group("app", 1, 1, 4700)];
        let mut a = Attempts::new(T0);
        a.start_next(&groups, no_key, T0);
        assert!(a.in_progress());
        let ttfb = a.answered(200, None, T0 + S / 4);
        assert_eq!(ttfb, Some(Duration::from_millis(250)));
        assert!(!a.in_progress());
    }

    /// Breakers and holds run on the monotonic clock: the wall clock only turns an HTTP-date
    /// `Retry-After` into a wait, once, when it arrives. A wall-clock step afterwards (an hour
    /// back, as a bad NTP sync would do) changes nothing of the hold or of an open circuit.
    #[test]
    fn a_wall_clock_step_does_not_change_breakers_or_holds() {
        let wall = SystemTime::UNIX_EPOCH + Duration::from_secs(1_900_000_000);
        let date = httpdate::fmt_http_date(wall + Duration::from_secs(20));
        let wait = retry_after(Some(&date), wall);
        assert_eq!(wait, Some(Duration::from_secs(20)));
        let groups = [group("app", 2, 1, 4800)];
        let mut a = Attempts::new(T0);
        a.start_next(&groups, no_key, T0);
        a.answered(503, wait, T0);
        // The same answer's date read an hour later on a wall clock stepped back an hour
        // would be a different wait; the hold already set is not: it ends 20 s of monotonic
        // time after it started, whatever the wall clock says now.
        let stepped_back = wall - Duration::from_secs(3600);
        assert_eq!(
            retry_after(Some(&date), stepped_back),
            Some(Duration::from_secs(3600)),
            "a date is read against the wall clock of its arrival only"
        );
        assert_eq!(circuit_state(&groups[0], 0, T0 + 19 * S), State::Open);
        assert_eq!(circuit_state(&groups[0], 0, T0 + 20 * S), State::HalfOpen);
        // An open circuit: two failures, backoff 10 s, on monotonic readings only.
        let mut b = Attempts::new(T0);
        let (_, i) = b.start_next(&groups, no_key, T0);
        assert!(!b.connect_failed(&groups, false, T0), "one attempt allowed");
        b.failed(T0);
        assert_eq!(circuit_state(&groups[0], i, T0 + 9 * S), State::Open);
        assert_eq!(circuit_state(&groups[0], i, T0 + 10 * S), State::HalfOpen);
    }

    #[test]
    fn retry_after_values() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_900_000_000);
        assert_eq!(retry_after(Some("7"), now), Some(Duration::from_secs(7)));
        assert_eq!(retry_after(Some(" 0 "), now), None);
        assert_eq!(
            retry_after(Some("99999"), now),
            Some(Duration::from_secs(3600))
        );
        assert_eq!(retry_after(Some("soon"), now), None);
        assert_eq!(retry_after(None, now), None);
        let past = httpdate::fmt_http_date(now - Duration::from_secs(5));
        assert_eq!(retry_after(Some(&past), now), None);
    }
}
