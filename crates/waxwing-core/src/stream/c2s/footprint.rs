//! What one idle client connection costs in memory, part by part: a
//! regression guard for the per-session footprint (issue #21, target 4).
//! Run with `--nocapture` to see the sizes.

use std::mem::size_of;

use super::link::{ClientTransport, Link};
use super::{Conn, Session, serve_link};
use crate::queue::Outbox;
use crate::session::SessionHandle;

/// The size of what `f` returns, without calling it (a future's size is
/// its type's, whatever the lifetimes it borrows for).
fn returned_size<A, R>(_: impl FnOnce(A) -> R) -> usize {
    size_of::<R>()
}

fn returned_size5<A, B, C, D, E, R>(_: impl FnOnce(A, B, C, D, E) -> R) -> usize {
    size_of::<R>()
}

#[test]
fn per_connection_sizes() {
    let sizes = [
        ("serve_link future (the task)", returned_size5(serve_link)),
        (
            "run_bound future",
            returned_size(|(c, s, rx): (&'static mut Conn, &'static mut Session, &'static mut Outbox)| {
                c.run_bound(s, rx)
            }),
        ),
        (
            "run_session future",
            returned_size(|(c, s, rx): (&'static mut Conn, &'static mut Session, &'static mut Outbox)| {
                c.run_session(s, rx)
            }),
        ),
        (
            "wait_for_resumption future",
            returned_size(|(c, s): (&'static mut Conn, &'static mut Session)| {
                c.wait_for_resumption(s)
            }),
        ),
        (
            "Link::receive future",
            returned_size(|l: &'static mut Link| l.receive()),
        ),
        ("Conn", size_of::<Conn>()),
        ("Session", size_of::<Session>()),
        ("Outbox", size_of::<Outbox>()),
        ("Link", size_of::<Link>()),
        ("Framer", size_of::<waxwing_proto::xml::Framer>()),
        (
            "TlsStream<TcpStream> (boxed)",
            size_of::<tokio_rustls::server::TlsStream<tokio::net::TcpStream>>(),
        ),
        ("SessionHandle (in its Arc)", size_of::<SessionHandle>()),
    ];
    for (what, bytes) in sizes {
        println!("{what}: {bytes} bytes");
    }
}
