//! Bounded outbound queues, for client sessions and s2s domain pairs.
//!
//! A queue holds `capacity` entries and is never waited on by senders: a
//! full queue is the reader's problem (a session is closed, an s2s stanza
//! bounced). An entry is one stanza or a *burst*: stanzas that must go out
//! together and in order (a group chat join: every occupant's presence,
//! the history, the subject), which may be more than the capacity. What
//! waits inside bursts has its own bound, `burst_limit` stanzas.

use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::{mpsc, oneshot};
use waxwing_proto::xml::Element;

/// One entry of an outbound queue, boxed whole: tokio's channel allocates
/// its slots in blocks of 32 up front, and a pointer-sized slot keeps that
/// block at about 300 bytes on every (mostly idle) session, where inline
/// elements would take 2 KiB and a two-variant enum of boxes 800 bytes.
/// Still one allocation per stanza, as when only the element was boxed.
pub(crate) type Queued = Box<Entry>;

#[derive(Debug)]
pub(crate) enum Entry {
    One(Element),
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

/// The sending end of a bounded outbound queue (a client session's or an
/// s2s domain pair's): `capacity` entries, where a burst is one entry and
/// at most `burst_limit` stanzas may wait inside bursts.
#[derive(Debug, Clone)]
pub(crate) struct Outq {
    tx: mpsc::Sender<Queued>,
    in_bursts: Arc<AtomicUsize>,
    burst_limit: usize,
}

/// Makes an outbound queue.
pub(crate) fn outbound(capacity: usize, burst_limit: usize) -> (Outq, Outbox) {
    let (tx, rx) = mpsc::channel(capacity);
    let in_bursts = Arc::new(AtomicUsize::new(0));
    (
        Outq {
            tx,
            in_bursts: in_bursts.clone(),
            burst_limit,
        },
        Outbox {
            rx,
            in_bursts,
            receipts: Vec::new(),
        },
    )
}

impl Outq {
    pub(crate) fn push(&self, stanza: Element) -> Result<(), Refused> {
        self.tx
            .try_send(Box::new(Entry::One(stanza)))
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(q) => Refused::Full((*q).into_vec()),
                mpsc::error::TrySendError::Closed(q) => Refused::Closed((*q).into_vec()),
            })
    }

    pub(crate) fn push_burst(&self, stanzas: Vec<Element>) -> Result<(), Refused> {
        let n = stanzas.len();
        if n <= 1 {
            return match stanzas.into_iter().next() {
                Some(s) => self.push(s),
                None => Ok(()),
            };
        }
        self.push_counted(Entry::Burst(stanzas), n)
    }

    /// Like a burst, charged to the same allowance, with a receipt.
    pub(crate) fn push_tracked(
        &self,
        stanzas: Vec<Element>,
        receipt: Receipt,
    ) -> Result<(), Refused> {
        let n = stanzas.len();
        self.push_counted(Entry::Tracked(stanzas, receipt), n)
    }

    fn push_counted(&self, entry: Entry, n: usize) -> Result<(), Refused> {
        let before = self.in_bursts.fetch_add(n, Ordering::Relaxed);
        if before + n > self.burst_limit {
            self.in_bursts.fetch_sub(n, Ordering::Relaxed);
            return Err(Refused::Full(entry.into_vec()));
        }
        self.tx.try_send(Box::new(entry)).map_err(|e| {
            self.in_bursts.fetch_sub(n, Ordering::Relaxed);
            match e {
                mpsc::error::TrySendError::Full(q) => Refused::Full((*q).into_vec()),
                mpsc::error::TrySendError::Closed(q) => Refused::Closed((*q).into_vec()),
            }
        })
    }

    /// Entries waiting (a burst counts once); for `/metrics`.
    pub(crate) fn depth(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }

    /// The reading end is gone.
    pub(crate) fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }

    pub(crate) fn same_channel(&self, other: &Outq) -> bool {
        self.tx.same_channel(&other.tx)
    }
}

impl Entry {
    fn into_vec(self) -> Vec<Element> {
        match self {
            Entry::One(el) => vec![el],
            Entry::Burst(v) | Entry::Tracked(v, _) => v,
        }
    }
}

/// The receiving end of an outbound queue, read by the connection's task.
#[derive(Debug)]
pub(crate) struct Outbox {
    rx: mpsc::Receiver<Queued>,
    in_bursts: Arc<AtomicUsize>,
    /// Receipts of tracked entries taken since the last
    /// [`Outbox::take_receipts`], with where their stanzas went in the batch.
    receipts: Vec<(Range<usize>, Receipt)>,
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
    /// closed and empty. Cancel-safe like [`Outbox::recv`]; no allocation
    /// per entry, which matters on the delivery hot path.
    pub(crate) async fn recv_into(&mut self, batch: &mut Vec<Element>) -> bool {
        match self.rx.recv().await {
            Some(q) => {
                self.unpack_into(*q, batch);
                true
            }
            None => false,
        }
    }

    /// Appends the next entry's stanzas to `batch` if one is waiting.
    pub(crate) fn try_recv_into(&mut self, batch: &mut Vec<Element>) -> bool {
        match self.rx.try_recv() {
            Ok(q) => {
                self.unpack_into(*q, batch);
                true
            }
            Err(_) => false,
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
    pub(crate) fn drain_untracked(&mut self, out: &mut Vec<Element>) {
        while let Ok(q) = self.rx.try_recv() {
            match *q {
                Entry::Tracked(v, _) => {
                    self.in_bursts.fetch_sub(v.len(), Ordering::Relaxed);
                }
                q => self.unpack_into(q, out),
            }
        }
    }

    /// No more entries are accepted; those queued can still be taken.
    pub(crate) fn close(&mut self) {
        self.rx.close();
    }

    fn unpack_into(&mut self, q: Entry, batch: &mut Vec<Element>) {
        match q {
            Entry::One(el) => batch.push(el),
            Entry::Burst(v) => {
                self.in_bursts.fetch_sub(v.len(), Ordering::Relaxed);
                batch.extend(v);
            }
            Entry::Tracked(v, receipt) => {
                self.in_bursts.fetch_sub(v.len(), Ordering::Relaxed);
                let start = batch.len();
                batch.extend(v);
                self.receipts.push((start..batch.len(), receipt));
            }
        }
    }
}
