//! Bounded database calls and a circuit breaker, so that a PostgreSQL server
//! that stops answering costs the server one bounded wait, not a hang.
//!
//! sqlx bounds only the wait for a pooled connection. A statement sent on a
//! connection to a server that froze (a network partition, a stalled host)
//! waits for ever: no timeout, no TCP keepalive, and a server that cannot
//! run cannot enforce its own `statement_timeout`. Every statement of the
//! shared `dml/` files therefore goes through [`Bounded::bounded`]: it fails
//! after [`BOUND`], and a failure that says the server is unreachable (that
//! timeout, an I/O error, the pool giving up) *opens* the breaker. While it
//! is open, calls fail at once instead of each waiting out the bound, so
//! that, say, a message whose archiving fails is delivered without delay
//! rather than after a pile of timeouts (callers decide what a failed call
//! means: MAM delivers unarchived, offline storage bounces with `wait`).
//! After [`COOL_DOWN`] one call is let through as a probe; its success
//! closes the breaker (the pool has reconnected by then), its failure opens
//! it again. A statement that times out while other calls are being
//! answered met a slow query, not an outage, and opens nothing.
//!
//! One breaker per process: `waxwing serve` has one database. (`storage
//! migrate` has two; an unreachable one fails the migration either way.)

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long one statement, with the wait for its connection, may take.
/// Longer than any statement Waxwing issues takes on a healthy server;
/// also sqlx's pool acquire timeout (`ACQUIRE_TIMEOUT`).
pub(crate) const BOUND: Duration = Duration::from_secs(10);

/// How long calls fail at once after the server was found unreachable,
/// before one call probes it again.
pub(crate) const COOL_DOWN: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Calls go through.
    Closed,
    /// The server was unreachable: calls fail at once until `until`.
    Open { until: Instant },
    /// One call is finding out whether the server is back; the others fail.
    Probing,
}

/// What a call may do, decided when it starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Admission {
    Run,
    Probe,
    Refuse,
}

/// How a call ended, as far as the server's health goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// The server answered (with rows, or with an error of its own).
    Answered,
    /// No answer within the bound (or no pooled connection freed up in it):
    /// the server is away, or merely slow with this statement.
    Silent,
    /// The connection failed (refused, reset, TLS, protocol).
    Broken,
}

fn outcome<T>(result: &Result<T, sqlx::Error>) -> Outcome {
    match result {
        Ok(_) => Outcome::Answered,
        Err(sqlx::Error::PoolTimedOut) => Outcome::Silent,
        Err(sqlx::Error::Io(e)) if e.kind() == io::ErrorKind::TimedOut => Outcome::Silent,
        Err(
            sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed
            | sqlx::Error::Protocol(_),
        ) => Outcome::Broken,
        // A constraint violation, a decoding problem: the server is fine.
        Err(_) => Outcome::Answered,
    }
}

#[derive(Debug)]
struct Inner {
    state: State,
    /// When a call last got an answer: a call that timed out while others
    /// were answered met a slow statement (a large deletion), not an outage.
    last_answer: Option<Instant>,
}

#[derive(Debug)]
struct Breaker {
    inner: Mutex<Inner>,
}

static BREAKER: Breaker = Breaker::new();

impl Breaker {
    const fn new() -> Self {
        Breaker {
            inner: Mutex::new(Inner {
                state: State::Closed,
                last_answer: None,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn admit(&self, now: Instant) -> Admission {
        let mut inner = self.lock();
        match inner.state {
            State::Closed => Admission::Run,
            State::Open { until } if now >= until => {
                inner.state = State::Probing;
                Admission::Probe
            }
            State::Open { .. } | State::Probing => Admission::Refuse,
        }
    }

    /// A call admitted at `started` ended at `now`.
    fn finish(&self, admission: Admission, outcome: Outcome, started: Instant, now: Instant) {
        let mut inner = self.lock();
        let slow_only =
            outcome == Outcome::Silent && inner.last_answer.is_some_and(|t| t >= started);
        if outcome == Outcome::Answered || slow_only {
            if outcome == Outcome::Answered {
                inner.last_answer = Some(now);
            } else {
                tracing::warn!(
                    bound_secs = BOUND.as_secs(),
                    "a PostgreSQL statement took longer than the bound and was abandoned"
                );
            }
            if inner.state != State::Closed {
                tracing::info!("PostgreSQL answers again; database calls resume");
            }
            inner.state = State::Closed;
        } else if admission == Admission::Probe || inner.state == State::Closed {
            if inner.state == State::Closed {
                tracing::error!(
                    bound_secs = BOUND.as_secs(),
                    "PostgreSQL is unreachable; database calls fail at once until it answers again"
                );
            }
            inner.state = State::Open {
                until: now + COOL_DOWN,
            };
        }
    }
}

fn refused() -> sqlx::Error {
    sqlx::Error::Io(io::Error::new(
        io::ErrorKind::NotConnected,
        "PostgreSQL is unreachable (no answer recently; retrying)",
    ))
}

fn timed_out() -> sqlx::Error {
    sqlx::Error::Io(io::Error::new(
        io::ErrorKind::TimedOut,
        format!("PostgreSQL did not answer within {} s", BOUND.as_secs()),
    ))
}

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// `.bounded()` on a sqlx call: see the module docs.
pub(crate) trait Bounded<'a, T>:
    Future<Output = Result<T, sqlx::Error>> + Send + 'a
{
    fn bounded(self) -> BoxFuture<'a, Result<T, sqlx::Error>>;
}

impl<'a, T, F> Bounded<'a, T> for F
where
    F: Future<Output = Result<T, sqlx::Error>> + Send + 'a,
    T: 'a,
{
    fn bounded(self) -> BoxFuture<'a, Result<T, sqlx::Error>> {
        Box::pin(run(&BREAKER, BOUND, self))
    }
}

async fn run<T>(
    breaker: &Breaker,
    bound: Duration,
    call: impl Future<Output = Result<T, sqlx::Error>>,
) -> Result<T, sqlx::Error> {
    let started = Instant::now();
    let admission = breaker.admit(started);
    if admission == Admission::Refuse {
        return Err(refused());
    }
    let result = match tokio::time::timeout(bound, call).await {
        Ok(r) => r,
        Err(_) => Err(timed_out()),
    };
    breaker.finish(admission, outcome(&result), started, Instant::now());
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(b: &Breaker) -> State {
        b.lock().state
    }

    #[tokio::test]
    async fn a_silent_server_costs_one_bound_then_calls_fail_at_once() {
        let b = Breaker::new();
        let bound = Duration::from_millis(20);
        let started = Instant::now();
        let r: Result<(), _> = run(&b, bound, std::future::pending()).await;
        assert!(matches!(r, Err(sqlx::Error::Io(e)) if e.kind() == io::ErrorKind::TimedOut));
        assert!(started.elapsed() >= bound);
        // Open: refused without running the call.
        let r = run(&b, bound, async {
            panic!("ran while open") as Result<(), _>
        })
        .await;
        assert!(matches!(r, Err(sqlx::Error::Io(e)) if e.kind() == io::ErrorKind::NotConnected));
    }

    #[test]
    fn one_probe_after_the_cool_down_closes_or_reopens() {
        let b = Breaker::new();
        let t0 = Instant::now();
        assert_eq!(b.admit(t0), Admission::Run);
        b.finish(Admission::Run, Outcome::Broken, t0, t0);
        assert_eq!(b.admit(t0), Admission::Refuse);
        let later = t0 + COOL_DOWN;
        assert_eq!(b.admit(later), Admission::Probe);
        // Only one probe at a time.
        assert_eq!(b.admit(later), Admission::Refuse);
        b.finish(Admission::Probe, Outcome::Silent, later, later);
        assert_eq!(b.admit(later), Admission::Refuse);
        let again = later + COOL_DOWN;
        assert_eq!(b.admit(again), Admission::Probe);
        b.finish(Admission::Probe, Outcome::Answered, again, again);
        assert_eq!(b.admit(again), Admission::Run);
    }

    #[test]
    fn a_slow_statement_while_others_are_answered_does_not_open_it() {
        let b = Breaker::new();
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_secs(1);
        b.finish(Admission::Run, Outcome::Answered, t1, t1);
        // Started at t0, timed out after t1's answer: slow, not away.
        b.finish(Admission::Run, Outcome::Silent, t0, t0 + BOUND);
        assert_eq!(state(&b), State::Closed);
        // Nothing answered since it started: away.
        let t2 = t0 + BOUND;
        b.finish(Admission::Run, Outcome::Silent, t2, t2 + BOUND);
        assert!(matches!(state(&b), State::Open { .. }));
    }

    #[test]
    fn only_connectivity_errors_count() {
        assert_eq!(
            outcome::<()>(&Err(sqlx::Error::RowNotFound)),
            Outcome::Answered
        );
        assert_eq!(
            outcome::<()>(&Err(sqlx::Error::PoolTimedOut)),
            Outcome::Silent
        );
        assert_eq!(outcome::<()>(&Err(timed_out())), Outcome::Silent);
        let refused = sqlx::Error::Io(io::Error::from(io::ErrorKind::ConnectionRefused));
        assert_eq!(outcome::<()>(&Err(refused)), Outcome::Broken);
    }
}
