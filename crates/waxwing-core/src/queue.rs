//! Bounded outbound queues, for client sessions and s2s domain pairs.
//!
//! A queue holds `capacity` entries and is never waited on by senders: a
//! full queue is the reader's problem (a session is closed, an s2s stanza
//! bounced). An entry is one stanza or a *burst*: stanzas that must go out
//! together and in order (a group chat join: every occupant's presence,
//! the history, the subject), which may be more than the capacity. What
//! waits inside bursts has its own bound, `burst_limit` stanzas.
//!
//! The queue is a `VecDeque` under a mutex, not a tokio channel: it exists
//! once per client session, mostly idle, and tokio's bounded channel costs
//! about 850 bytes per queue even when empty (two cache-line-padded fields,
//! an eagerly allocated block of 32 slots, a separate counter), where this
//! one costs one small allocation and no ring while it is empty. Every
//! operation is a short critical section that never awaits; the reader's
//! waker is woken after the lock is released.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Poll, Waker};

use tokio::sync::oneshot;
use waxwing_proto::xml::Element;

use crate::shared_stanza::Addressed;

/// One entry of an outbound queue, held in the ring itself. An entry is not
/// boxed: a box per stanza was an allocation on the sender's thread freed on
/// the reader's, per message and per fan-out copy, and those cross-thread
/// frees were about a tenth of a MUC delivery's CPU. Instead the ring exists
/// only while it holds something: it is freed whenever the reader empties it
/// (see [`pop`]), so an idle session holds no ring at all, and a busy one
/// allocates one ring per batch rather than one box per stanza.
pub(crate) type Queued = Entry;

#[derive(Debug)]
pub(crate) enum Entry {
    One(Element),
    /// A fan-out's shared stanza for this recipient (see `shared_stanza`).
    Addressed(Addressed),
    /// Stanzas that go out together and in this order; see
    /// [`crate::session::SessionHandle::send_burst`].
    Burst(Vec<Element>),
    /// A burst whose delivery someone waits for; see
    /// [`crate::session::SessionHandle::send_tracked`].
    Tracked(Vec<Element>, Receipt),
}

/// Resolved once the client has a tracked entry's stanzas; dropped unsent
/// if it never gets them.
pub(crate) type Receipt = oneshot::Sender<()>;

/// Why a stanza (or burst) was not queued; the stanzas come back.
#[derive(Debug)]
pub(crate) enum Refused {
    /// The queue, or its burst allowance, is full.
    Full(Vec<Element>),
    /// Nobody reads the queue any more.
    Closed(Vec<Element>),
}

/// Ring capacity (in entries) reserved when an empty queue gets an entry:
/// a busy session's batch then rarely regrows it, and the ring is freed
/// again once the reader has emptied it.
const FIRST_CAPACITY: usize = 8;

/// What both ends share.
#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    /// `state.closed`, readable without the lock: the router asks whether
    /// a session is closing for every message it routes to it, and the
    /// lock is the one the session's task takes to empty its queue.
    /// Written only under the lock, with `state.closed`.
    closed: AtomicBool,
    capacity: usize,
    burst_limit: usize,
}

#[derive(Debug)]
struct State {
    entries: VecDeque<Queued>,
    /// Stanzas waiting inside bursts and tracked entries.
    in_bursts: usize,
    /// Live [`Outq`] clones; at zero the reader sees the end of the queue.
    senders: usize,
    /// The reader closed the queue or is gone: nothing more is accepted.
    closed: bool,
    /// The reader waiting for an entry.
    waker: Option<Waker>,
}

impl Shared {
    /// Closes the queue; `state` is this queue's, locked.
    fn close(&self, state: &mut State) {
        state.closed = true;
        self.closed.store(true, Ordering::Release);
    }

    /// Never held across an await, and nothing panics while holding it.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The sending end of a bounded outbound queue (a client session's or an
/// s2s domain pair's): `capacity` entries, where a burst is one entry and
/// at most `burst_limit` stanzas may wait inside bursts.
#[derive(Debug)]
pub(crate) struct Outq {
    shared: Arc<Shared>,
}

/// Makes an outbound queue.
pub(crate) fn outbound(capacity: usize, burst_limit: usize) -> (Outq, Outbox) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            entries: VecDeque::new(),
            in_bursts: 0,
            senders: 1,
            closed: false,
            waker: None,
        }),
        closed: AtomicBool::new(false),
        capacity: capacity.max(1),
        burst_limit,
    });
    (
        Outq {
            shared: shared.clone(),
        },
        Outbox {
            shared,
            receipts: Vec::new(),
        },
    )
}

impl Clone for Outq {
    fn clone(&self) -> Self {
        self.shared.lock().senders += 1;
        Outq {
            shared: self.shared.clone(),
        }
    }
}

impl Drop for Outq {
    fn drop(&mut self) {
        let waker = {
            let mut state = self.shared.lock();
            state.senders -= 1;
            if state.senders == 0 {
                state.waker.take()
            } else {
                None
            }
        };
        if let Some(w) = waker {
            w.wake();
        }
    }
}

impl Outq {
    pub(crate) fn push(&self, stanza: Element) -> Result<(), Refused> {
        self.enqueue(Entry::One(stanza), 0).map_err(refused)
    }

    /// Queues a fan-out's shared stanza, charged like a stanza (refused, it
    /// comes back as a tree: what happens next needs one).
    pub(crate) fn push_addressed(&self, stanza: Addressed) -> Result<(), Refused> {
        self.enqueue(Entry::Addressed(stanza), 0).map_err(refused)
    }

    pub(crate) fn push_burst(&self, stanzas: Vec<Element>) -> Result<(), Refused> {
        let n = stanzas.len();
        if n <= 1 {
            return match stanzas.into_iter().next() {
                Some(s) => self.push(s),
                None => Ok(()),
            };
        }
        self.enqueue(Entry::Burst(stanzas), n).map_err(refused)
    }

    /// Like a burst, charged to the same allowance, with a receipt.
    pub(crate) fn push_tracked(
        &self,
        stanzas: Vec<Element>,
        receipt: Receipt,
    ) -> Result<(), Refused> {
        let n = stanzas.len();
        self.enqueue(Entry::Tracked(stanzas, receipt), n)
            .map_err(refused)
    }

    /// Queues `entry`, charging `in_burst` stanzas to the burst allowance;
    /// refused, it comes back with the reason (`true`: closed).
    fn enqueue(&self, entry: Entry, in_burst: usize) -> Result<(), (bool, Entry)> {
        let shared = &*self.shared;
        let waker = {
            let mut state = shared.lock();
            if state.closed {
                drop(state);
                return Err((true, entry));
            }
            if state.entries.len() >= shared.capacity
                || state.in_bursts + in_burst > shared.burst_limit
            {
                drop(state);
                return Err((false, entry));
            }
            state.in_bursts += in_burst;
            if state.entries.capacity() == 0 {
                state.entries.reserve(FIRST_CAPACITY);
            }
            state.entries.push_back(entry);
            state.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
        Ok(())
    }

    /// Entries waiting (a burst counts once); for `/metrics`.
    pub(crate) fn depth(&self) -> usize {
        self.shared.lock().entries.len()
    }

    /// The reading end is gone (or closed).
    pub(crate) fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::Acquire)
    }

    pub(crate) fn same_channel(&self, other: &Outq) -> bool {
        Arc::ptr_eq(&self.shared, &other.shared)
    }
}

/// A refused entry's stanzas, with the reason.
fn refused((closed, entry): (bool, Entry)) -> Refused {
    let v = entry.into_vec();
    if closed {
        Refused::Closed(v)
    } else {
        Refused::Full(v)
    }
}

impl Entry {
    fn into_vec(self) -> Vec<Element> {
        match self {
            Entry::One(el) => vec![el],
            Entry::Addressed(a) => vec![a.into_element()],
            Entry::Burst(v) | Entry::Tracked(v, _) => v,
        }
    }
}

/// A stanza of a batch taken from a queue by a client session: a tree, or
/// a fan-out's shared stanza, written without one (see `shared_stanza`).
#[derive(Debug)]
pub(crate) enum Out {
    Tree(Element),
    Addressed(Addressed),
}

impl Out {
    pub(crate) fn name(&self) -> &str {
        match self {
            Out::Tree(el) => &el.name,
            Out::Addressed(a) => a.name(),
        }
    }

    pub(crate) fn into_element(self) -> Element {
        match self {
            Out::Tree(el) => el,
            Out::Addressed(a) => a.into_element(),
        }
    }
}

/// What a batch taken from a queue holds: [`Out`] keeps shared stanzas as
/// they are; [`Element`] (s2s, offline storage) makes each a tree.
pub(crate) trait Taken: Sized {
    fn tree(el: Element) -> Self;
    fn addressed(a: Addressed) -> Self;
}

impl Taken for Element {
    fn tree(el: Element) -> Self {
        el
    }
    fn addressed(a: Addressed) -> Self {
        a.into_element()
    }
}

impl Taken for Out {
    fn tree(el: Element) -> Self {
        Out::Tree(el)
    }
    fn addressed(a: Addressed) -> Self {
        Out::Addressed(a)
    }
}

/// The receiving end of an outbound queue, read by the connection's task.
#[derive(Debug)]
pub(crate) struct Outbox {
    shared: Arc<Shared>,
    /// Receipts of tracked entries taken since the last
    /// [`Outbox::take_receipts`], with where their stanzas went in the batch.
    receipts: Vec<(Range<usize>, Receipt)>,
}

impl Drop for Outbox {
    /// Like a dropped channel receiver: senders are refused from now on,
    /// and what was queued is dropped (receipts unsent).
    fn drop(&mut self) {
        let entries = {
            let mut state = self.shared.lock();
            self.shared.close(&mut state);
            state.in_bursts = 0;
            std::mem::take(&mut state.entries)
        };
        drop(entries);
    }
}

impl Outbox {
    /// The next entry's stanzas. Cancel-safe: nothing is awaited after the
    /// entry is taken.
    pub(crate) async fn recv(&mut self) -> Option<Vec<Element>> {
        let mut v = Vec::new();
        self.recv_into(&mut v).await.then_some(v)
    }

    pub(crate) fn try_recv(&mut self) -> Option<Vec<Element>> {
        let mut v = Vec::new();
        self.try_recv_into(&mut v).then_some(v)
    }

    /// Appends the next entry's stanzas to `batch`; false when the queue is
    /// closed (or every sender gone) and empty. Cancel-safe like
    /// [`Outbox::recv`]; no allocation per entry, which matters on the
    /// delivery hot path.
    pub(crate) async fn recv_into<T: Taken>(&mut self, batch: &mut Vec<T>) -> bool {
        self.recv_up_to(batch, 0).await
    }

    /// Like [`Outbox::recv_into`], then goes on taking entries while `batch`
    /// holds fewer than `max` stanzas, all under one lock (a reader that
    /// locked once per entry contended with the senders once per stanza).
    /// An entry is never split: a burst may take `batch` past `max`.
    pub(crate) async fn recv_up_to<T: Taken>(&mut self, batch: &mut Vec<T>, max: usize) -> bool {
        poll_fn(|cx| {
            let mut state = self.shared.lock();
            if let Some(q) = pop(&mut state) {
                unpack(&mut self.receipts, q, batch);
                // Sized once rather than regrown entry by entry under the lock.
                batch.reserve(state.entries.len().min(max.saturating_sub(batch.len())));
                while batch.len() < max {
                    match pop(&mut state) {
                        Some(q) => unpack(&mut self.receipts, q, batch),
                        None => break,
                    }
                }
                let emptied = take_emptied_ring(&mut state);
                drop(state);
                drop(emptied);
                return Poll::Ready(true);
            }
            if state.closed || state.senders == 0 {
                return Poll::Ready(false);
            }
            match &mut state.waker {
                Some(w) if w.will_wake(cx.waker()) => {}
                slot => *slot = Some(cx.waker().clone()),
            }
            Poll::Pending
        })
        .await
    }

    /// Appends the next entry's stanzas to `batch` if one is waiting.
    pub(crate) fn try_recv_into<T: Taken>(&mut self, batch: &mut Vec<T>) -> bool {
        let mut state = self.shared.lock();
        let q = pop(&mut state);
        let emptied = take_emptied_ring(&mut state);
        drop(state);
        drop(emptied);
        match q {
            Some(q) => {
                self.unpack_into(q, batch);
                true
            }
            None => false,
        }
    }

    /// The receipts of tracked entries appended since the last call, each
    /// with the range its stanzas took in the batch they were appended to.
    pub(crate) fn take_receipts(&mut self) -> Vec<(Range<usize>, Receipt)> {
        std::mem::take(&mut self.receipts)
    }

    /// Appends every waiting entry's stanzas to `out`, except tracked
    /// entries: those are dropped, their receipts unsent, because whoever
    /// tracks them still has them (a session ending with offline messages
    /// still queued must not store them a second time).
    pub(crate) fn drain_untracked<T: Taken>(&mut self, out: &mut Vec<T>) {
        let entries = {
            let mut state = self.shared.lock();
            state.in_bursts = 0;
            std::mem::take(&mut state.entries)
        };
        for q in entries {
            match q {
                Entry::Tracked(..) => {}
                q => self.unpack_into(q, out),
            }
        }
    }

    /// No more entries are accepted; those queued can still be taken.
    pub(crate) fn close(&mut self) {
        self.shared.close(&mut self.shared.lock());
    }

    /// The burst allowance was charged when the entry was queued and is
    /// given back when it is taken (in [`pop`]).
    fn unpack_into<T: Taken>(&mut self, q: Entry, batch: &mut Vec<T>) {
        unpack(&mut self.receipts, q, batch);
    }
}

/// [`Outbox::unpack_into`], borrowing only the receipts (the caller may
/// hold the queue's lock).
fn unpack<T: Taken>(receipts: &mut Vec<(Range<usize>, Receipt)>, q: Entry, batch: &mut Vec<T>) {
    match q {
        Entry::One(el) => batch.push(T::tree(el)),
        Entry::Addressed(a) => batch.push(T::addressed(a)),
        Entry::Burst(v) => batch.extend(v.into_iter().map(T::tree)),
        Entry::Tracked(v, receipt) => {
            let start = batch.len();
            batch.extend(v.into_iter().map(T::tree));
            receipts.push((start..batch.len(), receipt));
        }
    }
}

/// Takes the oldest entry and gives back its burst allowance.
fn pop(state: &mut State) -> Option<Queued> {
    let q = state.entries.pop_front()?;
    if let Entry::Burst(v) | Entry::Tracked(v, _) = &q {
        state.in_bursts -= v.len();
    }
    Some(q)
}

/// An emptied ring, taken out so the caller frees it after unlocking: an
/// idle session keeps no ring (entries are held inline, so even a small
/// ring is several hundred bytes).
fn take_emptied_ring(state: &mut State) -> Option<VecDeque<Queued>> {
    (state.entries.is_empty() && state.entries.capacity() > 0)
        .then(|| std::mem::take(&mut state.entries))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(i: usize) -> Element {
        Element::new("message", "jabber:client").with_attr("id", i.to_string())
    }

    fn ids(v: &[Element]) -> Vec<String> {
        v.iter()
            .map(|m| m.attr("id").unwrap().to_string())
            .collect()
    }

    #[tokio::test]
    async fn a_waiting_reader_is_woken_by_a_push() {
        let (tx, mut rx) = outbound(4, 4);
        let reader = tokio::spawn(async move { rx.recv().await });
        tokio::task::yield_now().await;
        tx.push(msg(7)).unwrap();
        let got = reader.await.unwrap().unwrap();
        assert_eq!(ids(&got), ["7"]);
    }

    #[tokio::test]
    async fn the_reader_sees_the_end_once_every_sender_is_gone() {
        let (tx, mut rx) = outbound(4, 4);
        let tx2 = tx.clone();
        tx.push(msg(1)).unwrap();
        drop(tx);
        tx2.push(msg(2)).unwrap();
        let reader = tokio::spawn(async move {
            let mut all = Vec::new();
            while let Some(v) = rx.recv().await {
                all.extend(v);
            }
            all
        });
        tokio::task::yield_now().await;
        drop(tx2);
        assert_eq!(ids(&reader.await.unwrap()), ["1", "2"]);
    }

    #[tokio::test]
    async fn a_closed_queue_refuses_but_still_hands_out_what_it_holds() {
        let (tx, mut rx) = outbound(4, 4);
        tx.push(msg(1)).unwrap();
        rx.close();
        assert!(tx.is_closed());
        assert!(matches!(tx.push(msg(2)), Err(Refused::Closed(v)) if ids(&v) == ["2"]));
        assert_eq!(ids(&rx.recv().await.unwrap()), ["1"]);
        // Closed and empty: the end, although a sender is alive.
        assert!(rx.recv().await.is_none());
    }

    #[test]
    fn a_dropped_reader_refuses_senders() {
        let (tx, rx) = outbound(4, 4);
        tx.push(msg(1)).unwrap();
        drop(rx);
        assert!(tx.is_closed());
        assert!(matches!(tx.push(msg(2)), Err(Refused::Closed(_))));
        assert_eq!(tx.depth(), 0);
    }

    #[test]
    fn capacity_counts_entries_and_the_allowance_comes_back() {
        let (tx, mut rx) = outbound(2, 5);
        tx.push(msg(0)).unwrap();
        tx.push_burst((1..=5).map(msg).collect()).unwrap();
        assert_eq!(tx.depth(), 2);
        assert!(matches!(tx.push(msg(9)), Err(Refused::Full(_))));
        assert_eq!(ids(&rx.try_recv().unwrap()), ["0"]);
        // One slot free, but the burst allowance is still taken.
        assert!(matches!(
            tx.push_burst((6..=7).map(msg).collect()),
            Err(Refused::Full(v)) if v.len() == 2
        ));
        assert_eq!(rx.try_recv().unwrap().len(), 5);
        tx.push_burst((6..=10).map(msg).collect()).unwrap();
        let mut out = Vec::new();
        rx.drain_untracked(&mut out);
        assert_eq!(ids(&out), ["6", "7", "8", "9", "10"]);
        tx.push_burst((11..=15).map(msg).collect()).unwrap();
    }

    #[test]
    fn tracked_entries_carry_their_receipt_and_are_not_drained() {
        let (tx, mut rx) = outbound(4, 10);
        let (receipt, mut done) = oneshot::channel();
        tx.push(msg(0)).unwrap();
        tx.push_tracked(vec![msg(1), msg(2)], receipt).unwrap();
        let mut batch: Vec<Element> = Vec::new();
        assert!(rx.try_recv_into(&mut batch));
        assert!(rx.try_recv_into(&mut batch));
        let receipts = rx.take_receipts();
        assert_eq!(receipts.len(), 1);
        assert_eq!(receipts[0].0, 1..3);
        receipts.into_iter().for_each(|(_, r)| r.send(()).unwrap());
        assert!(done.try_recv().is_ok());

        let (receipt, mut dropped) = oneshot::channel();
        tx.push_tracked(vec![msg(3)], receipt).unwrap();
        tx.push(msg(4)).unwrap();
        let mut out = Vec::new();
        rx.drain_untracked(&mut out);
        assert_eq!(ids(&out), ["4"]);
        assert!(dropped.try_recv().is_err());
        assert!(rx.take_receipts().is_empty());
    }

    #[test]
    fn a_shared_stanza_stays_shared_for_a_session_and_becomes_a_tree_elsewhere() {
        use crate::shared_stanza::SharedStanza;
        use waxwing_proto::jid::FullJid;
        let shared = SharedStanza::new(msg(5).with_attr("from", "room@conference.example.com/n"));
        let to = |r: &str| Addressed {
            stanza: shared.clone(),
            to: FullJid::parse(&format!("juliet@example.com/{r}")).unwrap(),
        };
        let (tx, mut rx) = outbound(2, 0);
        tx.push_addressed(to("a")).unwrap();
        tx.push(msg(6)).unwrap();
        // Full: refused, and back as the tree the router goes on with.
        match tx.push_addressed(to("b")) {
            Err(Refused::Full(v)) => {
                assert_eq!(v.len(), 1);
                assert_eq!(v[0].attr("to"), Some("juliet@example.com/b"));
                assert_eq!(v[0].attr("id"), Some("5"));
            }
            other => panic!("not refused: {other:?}"),
        }
        let mut batch: Vec<Out> = Vec::new();
        assert!(rx.try_recv_into(&mut batch));
        assert!(rx.try_recv_into(&mut batch));
        assert!(matches!(&batch[0], Out::Addressed(a) if a.to.resource() == "a"));
        assert!(matches!(&batch[1], Out::Tree(el) if el.attr("id") == Some("6")));
        // Taken as trees (s2s, offline storage): addressed, payload shared.
        tx.push_addressed(to("c")).unwrap();
        let mut trees: Vec<Element> = Vec::new();
        rx.drain_untracked(&mut trees);
        assert_eq!(trees.len(), 1);
        assert_eq!(trees[0].attr("to"), Some("juliet@example.com/c"));
        assert_eq!(trees[0].attr("from"), Some("room@conference.example.com/n"));
    }

    #[test]
    fn an_emptied_queue_keeps_no_ring() {
        let (tx, mut rx) = outbound(1000, 0);
        assert_eq!(rx.shared.lock().entries.capacity(), 0);
        for i in 0..100 {
            tx.push(msg(i)).unwrap();
        }
        while rx.try_recv().is_some() {}
        assert_eq!(rx.shared.lock().entries.capacity(), 0);
        // A single stanza, taken by a batch: the ring goes with it too.
        tx.push(msg(100)).unwrap();
        assert!(rx.shared.lock().entries.capacity() > 0);
        let mut batch: Vec<Element> = Vec::new();
        assert!(rx.try_recv_into(&mut batch));
        assert_eq!(rx.shared.lock().entries.capacity(), 0);
    }

    #[tokio::test]
    async fn a_batch_takes_whole_entries_up_to_its_size_in_order() {
        let (tx, mut rx) = outbound(100, 100);
        for i in 0..5 {
            tx.push(msg(i)).unwrap();
        }
        tx.push_burst((5..9).map(msg).collect()).unwrap();
        tx.push(msg(9)).unwrap();
        // Three stanzas wanted: the three single ones.
        let mut batch: Vec<Element> = Vec::new();
        assert!(rx.recv_up_to(&mut batch, 3).await);
        assert_eq!(ids(&batch), ["0", "1", "2"]);
        // Five wanted: two singles, then the burst whole (past five).
        let mut batch: Vec<Element> = Vec::new();
        assert!(rx.recv_up_to(&mut batch, 5).await);
        assert_eq!(ids(&batch), ["3", "4", "5", "6", "7", "8"]);
        // The allowance came back with the burst: another fits.
        assert_eq!(rx.shared.lock().in_bursts, 0);
        let mut batch: Vec<Element> = Vec::new();
        assert!(rx.recv_up_to(&mut batch, 64).await);
        assert_eq!(ids(&batch), ["9"]);
        assert_eq!(rx.shared.lock().entries.capacity(), 0);
        // Tracked entries keep their receipts' ranges within the batch.
        let (receipt, _answer) = oneshot::channel();
        tx.push(msg(10)).unwrap();
        tx.push_tracked(vec![msg(11), msg(12)], receipt).unwrap();
        let mut batch: Vec<Element> = Vec::new();
        assert!(rx.recv_up_to(&mut batch, 64).await);
        assert_eq!(ids(&batch), ["10", "11", "12"]);
        let receipts = rx.take_receipts();
        assert_eq!(receipts.len(), 1);
        assert_eq!(receipts[0].0, 1..3);
        // Every sender gone and nothing left: the end.
        drop(tx);
        let mut batch: Vec<Element> = Vec::new();
        assert!(!rx.recv_up_to(&mut batch, 64).await);
        assert!(batch.is_empty());
    }
}
