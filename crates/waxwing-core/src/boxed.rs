//! Boxing a future without building it on the stack first.
//!
//! `Box::pin(fut)` evaluates `fut` before it allocates, so the future is
//! built in a stack slot of its full size and then copied whole into the
//! heap: a `memcpy` of every byte of the state machine (every state it
//! may ever be in, not just the arguments it starts with). The c2s
//! session boxes the handling of every stanza it reads, a future of
//! several kilobytes, so that copy was paid per stanza (about 3 % of the
//! server's CPU on a saturated 1:1 chat, issue #21). Here the slot is
//! allocated first and the future made straight into it: only the
//! arguments are written.

use std::future::Future;
use std::pin::Pin;

/// `Box::pin(make())`, with the future built in its heap slot.
#[inline(always)]
pub(crate) fn boxed_in_place<F: Future>(make: impl FnOnce() -> F) -> Pin<Box<F>> {
    let slot = Box::new_uninit();
    Box::into_pin(Box::write(slot, make()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_boxed_future_runs_as_it_would_unboxed() {
        let mut seen = Vec::new();
        let out = boxed_in_place(|| async {
            seen.push(1);
            tokio::task::yield_now().await;
            seen.push(2);
            7
        })
        .await;
        assert_eq!(out, 7);
        assert_eq!(seen, [1, 2]);
    }
}
