//! Real PostgreSQL and Redis servers for tests, started on loopback ports in
//! temporary directories, never the system's services (`../shared` notes in
//! the repository's TEST-SERVICES).
//!
//! * [`postgres::Cluster::shared`]: one PostgreSQL cluster per test process,
//!   started on first use; each test takes its own database from it
//!   ([`postgres::Cluster::database`]), so tests do not see each other's
//!   rows and the start-up cost (`initdb`, about half a second) is paid once
//!   per process.
//! * [`redis::Redis::start`]: a Redis server per test (it starts in a few
//!   milliseconds), which a test can stop and start again on the same port.
//!
//! A server that cannot be started panics with its own log: a test that
//! needs one fails, it never skips. Every server is run by a small shell
//! supervisor ([`supervise`]) that stops it and deletes its directory when the
//! test process ends, however it ends (even by SIGKILL), so nothing outlives
//! a test run.
#![forbid(unsafe_code)]

pub mod postgres;
pub mod redis;
mod supervise;

pub use supervise::free_port;
