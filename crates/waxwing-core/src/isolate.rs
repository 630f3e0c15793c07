//! Panic isolation: a bug in one module fails the one stanza it was
//! handling (answered with `internal-server-error`) or the one event
//! handler call, never the stream that carried the stanza, the room it was
//! for, or the server.
//!
//! One mechanism for every caller: [`isolated`] runs a future under
//! `catch_unwind`. The router wraps every handler it calls (IQ handlers,
//! stanza hooks, domain services, event handlers, stream features), and the
//! streams (c2s and both s2s directions) wrap their entry into the router,
//! so that a bug in the router itself also fails only one stanza.
//!
//! What a panicking handler held is released by the unwinding: an async
//! mutex guard (a room's archive order, the per-account roster lock) is
//! dropped, so the next stanza gets the lock. A std mutex is poisoned
//! instead; every std lock a module's code can panic under is taken
//! poison-tolerant (`unwrap_or_else(PoisonError::into_inner)`), so the next
//! stanza finds the state as the panic left it rather than a room or a
//! session refusing everything from then on. The state may be half-updated;
//! that is the price of not taking the whole server down for one bug.

use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;

use futures_util::FutureExt;
use waxwing_proto::xml::Element;

/// A handler panicked; the panic was logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Panicked;

/// Runs `fut`, turning a panic inside it into [`Panicked`] and an error
/// log naming `what` (the module, or the part of the server).
///
/// A plain function returning the wrapped future, not an `async fn`: an
/// `async fn` keeps its argument in its own state and moves it into the
/// `catch_unwind` wrapper when first polled, a `memcpy` of the whole
/// wrapped future (several kilobytes for the router's entry, paid for
/// every stanza a client sends, issue #21). Here it is moved only where
/// the caller builds it.
pub(crate) fn isolated<F: Future>(
    what: &str,
    fut: F,
) -> impl Future<Output = Result<F::Output, Panicked>> {
    // AssertUnwindSafe: whatever the future borrowed may be left
    // half-updated; see the module documentation for why that is accepted.
    AssertUnwindSafe(fut).catch_unwind().map(move |out| {
        out.map_err(|payload| {
            log(what, payload);
            Panicked
        })
    })
}

/// [`isolated`] for synchronous handlers (stream features).
pub(crate) fn isolated_sync<T>(what: &str, f: impl FnOnce() -> T) -> Result<T, Panicked> {
    std::panic::catch_unwind(AssertUnwindSafe(f)).map_err(|payload| {
        log(what, payload);
        Panicked
    })
}

fn log(what: &str, payload: Box<dyn Any + Send>) {
    let message = payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)");
    tracing::error!(handler = what, panic = message, "a handler panicked");
}

/// A stanza's envelope (name, namespace, attributes): enough to answer it
/// with an error once the stanza itself was handed over. Cloning only the
/// envelope keeps the common path cheap.
pub(crate) fn envelope(el: &Element) -> Element {
    Element {
        name: el.name.clone(),
        ns: el.ns.clone(),
        attrs: el.attrs.clone(),
        children: Default::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panic_becomes_panicked_and_a_value_passes() {
        assert_eq!(isolated("t", async { 7 }).await, Ok(7));
        let r: Result<(), _> = isolated("t", async { panic!("boom") }).await;
        assert_eq!(r, Err(Panicked));
        assert_eq!(isolated_sync("t", || 1), Ok(1));
        assert_eq!(
            isolated_sync("t", || -> u8 { panic!("{}", String::from("x")) }),
            Err(Panicked)
        );
    }

    #[tokio::test]
    async fn an_async_lock_held_by_the_panicking_handler_is_free_again() {
        let lock = tokio::sync::Mutex::new(0u32);
        let r = isolated("t", async {
            let mut g = lock.lock().await;
            *g += 1;
            tokio::task::yield_now().await;
            panic!("inside the lock");
        })
        .await;
        assert_eq!(r, Err::<(), _>(Panicked));
        let g = tokio::time::timeout(std::time::Duration::from_secs(5), lock.lock())
            .await
            .expect("the lock is not held by the dead handler");
        assert_eq!(*g, 1);
    }

    #[test]
    fn envelope_keeps_attributes_only() {
        let el = Element::new("message", "jabber:client")
            .with_attr("to", "a@b")
            .with_child(Element::new("body", "jabber:client").with_text("hi"));
        let e = envelope(&el);
        assert_eq!(e.attr("to"), Some("a@b"));
        assert_eq!(e.children().count(), 0);
    }
}
