//! What an unauthenticated s2s peer may cost us, counted by its address.
//!
//! A remote server proves nothing about a domain until dialback or its
//! certificate does, so everything before authentication is charged to the
//! connection's address, never to the domain it claims: incoming
//! connections per address, dialback verifications in flight (each one is
//! a connection we open to the claimed domain's server) per address and
//! server-wide, and failed dialbacks per address. A peer that sends junk
//! keys claiming `victim.example` thus throttles itself, not the victim.
//!
//! Every table is bounded: rotating addresses cannot grow memory.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::abuse::{ConnectionCounter, ConnectionPermit, FailureTable};
use crate::config::S2sConfig;

/// Failed dialbacks are counted per address over this window (starting at
/// its first failure): long enough that a junk-key flood stays refused,
/// short enough that a server behind a shared address recovers soon.
pub const FAILURE_WINDOW: Duration = Duration::from_secs(600);
/// Addresses with failures kept at most (and as many penalized ones): the
/// table forgets the least recently failing address first, never a live
/// penalty while an expired one can go (`abuse::FailureTable`).
const MAX_TRACKED: usize = 100_000;

/// Why a dialback request is not verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Busy {
    /// The address failed dialback `max_failed_dialbacks_per_ip` times.
    FailedTooOften,
    /// The address has `max_verifications_per_ip` verifications in flight.
    AddressBusy,
    /// The server has `max_verifications` verifications in flight.
    ServerBusy,
}

/// Held while one verification is in flight; dropping it frees the slots.
pub struct VerificationPermit {
    _address: ConnectionPermit,
    _server: OwnedSemaphorePermit,
}

/// The per-address limits of incoming s2s streams, owned by the `S2sManager`.
pub struct InboundLimits {
    max_incoming_per_ip: u32,
    max_verifications_per_ip: u32,
    connections: Arc<ConnectionCounter>,
    verifying: Arc<ConnectionCounter>,
    server_wide: Arc<Semaphore>,
    /// Failed dialbacks per address in `FAILURE_WINDOW`.
    failures: FailureTable<IpAddr>,
    /// Verifications started since start (for tests and status).
    started: AtomicUsize,
}

impl InboundLimits {
    pub fn new(c: &S2sConfig) -> Self {
        InboundLimits {
            max_incoming_per_ip: c.max_incoming_per_ip,
            max_verifications_per_ip: c.max_verifications_per_ip,
            connections: Arc::new(ConnectionCounter::default()),
            verifying: Arc::new(ConnectionCounter::default()),
            server_wide: Arc::new(Semaphore::new(c.max_verifications)),
            failures: FailureTable::new(c.max_failed_dialbacks_per_ip, FAILURE_WINDOW, MAX_TRACKED),
            started: AtomicUsize::new(0),
        }
    }

    /// A slot for one incoming connection from `ip`, held for its life;
    /// `None` past `max_incoming_per_ip`.
    pub fn connection(&self, ip: IpAddr) -> Option<ConnectionPermit> {
        self.connections.try_acquire(ip, self.max_incoming_per_ip)
    }

    /// Incoming connections open from `ip`.
    pub fn connections_from(&self, ip: IpAddr) -> u32 {
        self.connections.open_from(ip)
    }

    /// Whether `ip` may have one more dialback key verified at `now`; the
    /// permit is held until the authoritative server answered.
    pub fn verification_at(&self, ip: IpAddr, now: Instant) -> Result<VerificationPermit, Busy> {
        if self.failures.blocked(&ip, now) {
            return Err(Busy::FailedTooOften);
        }
        let address = self
            .verifying
            .try_acquire(ip, self.max_verifications_per_ip)
            .ok_or(Busy::AddressBusy)?;
        let server = self
            .server_wide
            .clone()
            .try_acquire_owned()
            .map_err(|_| Busy::ServerBusy)?;
        self.started.fetch_add(1, Ordering::Relaxed);
        Ok(VerificationPermit {
            _address: address,
            _server: server,
        })
    }

    pub fn verification(&self, ip: IpAddr) -> Result<VerificationPermit, Busy> {
        self.verification_at(ip, Instant::now())
    }

    /// Charges a failed dialback (a key refused, or one that could not be
    /// verified) to the address that presented it.
    pub fn record_failure_at(&self, ip: IpAddr, now: Instant) {
        self.failures.record(&ip, now);
    }

    pub fn record_failure(&self, ip: IpAddr) {
        self.record_failure_at(ip, Instant::now());
    }

    /// Dialback verifications started since start.
    pub fn verifications_started(&self) -> usize {
        self.started.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(extra: &str) -> InboundLimits {
        let c = crate::config::Config::parse(&format!("[s2s]\n{extra}")).unwrap();
        InboundLimits::new(&c.s2s)
    }

    #[test]
    fn incoming_connections_are_counted_per_address() {
        let l = limits("max_incoming_per_ip = 2\n");
        let (a, b): (IpAddr, IpAddr) = ("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap());
        let first = l.connection(a).unwrap();
        let _second = l.connection(a).unwrap();
        assert!(l.connection(a).is_none());
        assert!(
            l.connection(b).is_some(),
            "another address has its own count"
        );
        drop(first);
        assert_eq!(l.connections_from(a), 1);
        assert!(l.connection(a).is_some());
    }

    #[test]
    fn verifications_in_flight_are_bounded_per_address_and_server_wide() {
        let l = limits("max_verifications = 3\nmax_verifications_per_ip = 2\n");
        let ip = |n: u8| IpAddr::from([192, 0, 2, n]);
        let a1 = l.verification(ip(1)).unwrap();
        let _a2 = l.verification(ip(1)).unwrap();
        assert_eq!(l.verification(ip(1)).err(), Some(Busy::AddressBusy));
        let _b1 = l.verification(ip(2)).unwrap();
        assert_eq!(l.verification(ip(3)).err(), Some(Busy::ServerBusy));
        // A refusal by the server-wide limit holds no per-address slot.
        drop(a1);
        assert!(l.verification(ip(3)).is_ok());
        assert_eq!(l.verifications_started(), 4);
    }

    #[test]
    fn failed_dialbacks_refuse_the_address_for_the_window() {
        let l = limits("max_failed_dialbacks_per_ip = 3\n");
        let (bad, good) = (IpAddr::from([192, 0, 2, 1]), IpAddr::from([192, 0, 2, 2]));
        let t = Instant::now();
        for _ in 0..2 {
            l.record_failure_at(bad, t);
        }
        assert!(l.verification_at(bad, t).is_ok());
        l.record_failure_at(bad, t);
        assert_eq!(l.verification_at(bad, t).err(), Some(Busy::FailedTooOften));
        assert!(l.verification_at(good, t).is_ok());
        let later = t + FAILURE_WINDOW;
        assert!(l.verification_at(bad, later).is_ok(), "the window ends");
        l.record_failure_at(bad, later);
        assert!(
            l.verification_at(bad, later).is_ok(),
            "a new window starts at one"
        );
    }
}
