//! The bound session, written once for every transport: reads stanzas
//! and stamps them, writes what its queue holds (held back under XEP-0352
//! CSI, counted and kept until acknowledged under XEP-0198), and survives
//! a broken connection as a detached, resumable session that a new
//! connection over any transport can take over.

use std::ops::Range;
use std::sync::Arc;

use waxwing_proto::jid::Jid;
use waxwing_proto::ns;
use waxwing_proto::stanza::{self, StreamCondition};
use waxwing_proto::xml::{CompactString, Element, StreamEvent};

use super::link::{ClientTransport, Outgoing};
use super::{Conn, End, Outcome, Resumption, Session, Takeover, read_failed, stream_error};
use crate::queue::{Out, Outbox, Receipt};
use crate::random_id;
use crate::session::{SessionFlag, SessionHandle};
use crate::stream::csi;
use crate::stream::sm::{self, SmState};

/// Stanzas written in one batch when a queue has a backlog.
const WRITE_BATCH: usize = 64;
/// How long a bound session must send nothing before its framer's parser
/// and buffers are released. Releasing after every read would rebuild the
/// parser for nearly every stanza of a busy session; an idle session, the
/// common case, releases once. Short, so that a wave of logins does not
/// hold every parser at once (the allocator keeps that high-water mark).
const FRAMER_RELEASE_AFTER: std::time::Duration = std::time::Duration::from_millis(100);

/// Stanzas kept as trees, for the write path.
pub(super) fn trees(stanzas: Vec<Element>) -> Vec<Out> {
    stanzas.into_iter().map(Out::Tree).collect()
}

impl Conn {
    /// The session loop, across connection losses and resumptions, until
    /// the session ends.
    pub(super) async fn run_bound(&mut self, session: &mut Session, rx: &mut Outbox) -> End {
        loop {
            let outcome = self.run_session(session, rx).await;
            // Boxed: what follows a connection's end (a takeover, the wait
            // for resumption) is rare and brief next to the idle life in
            // `run_session`, and inline its state would size every
            // session's task.
            if let Some(end) = Box::pin(self.after_connection(session, rx, outcome)).await {
                return end;
            }
        }
    }

    /// What follows `run_session`: `Some(end)` ends the session, `None`
    /// goes on over the connection that resumed it.
    async fn after_connection(
        &mut self,
        session: &mut Session,
        rx: &mut Outbox,
        outcome: Outcome,
    ) -> Option<End> {
        match outcome {
            Outcome::Takeover(t) => self.take_over(session, rx, t).await,
            Outcome::End(End::Gone) if session.resumable() => {
                let handle = session.handle.clone();
                tracing::info!(jid = %handle.jid, "connection lost; session kept for resumption");
                handle.set_flag(SessionFlag::Detached, true);
                let resumed = self.wait_for_resumption(session).await;
                handle.set_flag(SessionFlag::Detached, false);
                match resumed {
                    Some(t) => self.take_over(session, rx, t).await,
                    None => Some(End::Gone),
                }
            }
            Outcome::End(end) => Some(end),
        }
    }

    /// The bound session: read stanzas, write queued ones, until the end.
    pub(super) async fn run_session(&mut self, session: &mut Session, rx: &mut Outbox) -> Outcome {
        let shutdown = self.server.shutdown.clone();
        let handle = session.handle.clone();
        let idle_timeout = self.config.idle_timeout;
        let stanza_timeout = self.config.stanza_timeout;
        let mut last_read = tokio::time::Instant::now();
        // Set while a stanza is incomplete: a client trickling one stanza
        // forever (slowloris) must not hold the session.
        let mut stanza_started: Option<tokio::time::Instant> = None;
        // The framer holds its parser and buffers (about 2 KiB) while the
        // client is sending; they go once it has been quiet for a moment.
        let mut framer_held = true;
        // The futures every turn of the loop waits on live across turns: a
        // busy session turns once per read or write, and registering with
        // the timer wheel and the cancellation tokens' waiter lists (each
        // behind a lock, the shutdown token's shared by every session) and
        // deregistering again on each turn cost more than the turn itself.
        // The timer is moved only to an earlier point; when it fires before
        // the point now due, it is moved there and the turn goes on.
        let mut closed = std::pin::pin!(handle.closed().cancelled());
        let mut shutting_down = std::pin::pin!(shutdown.cancelled());
        let mut timer = std::pin::pin!(tokio::time::sleep_until(last_read + FRAMER_RELEASE_AFTER));
        loop {
            loop {
                match self.link.next_event() {
                    Ok(Some(StreamEvent::Stanza(el))) => {
                        // Boxed (see `serve_connection`): the hook chain's state
                        // is the largest a session ever holds, and only for
                        // the time one stanza takes. Built in its box, not
                        // copied there whole (`boxed.rs`).
                        let handled =
                            crate::boxed::boxed_in_place(|| self.handle_element(session, el));
                        if let Err(end) = handled.await {
                            return Outcome::End(end);
                        }
                    }
                    Ok(Some(StreamEvent::Close)) => return Outcome::End(End::Closed),
                    Ok(Some(StreamEvent::Open(_))) => {
                        return Outcome::End(stream_error(
                            StreamCondition::BadFormat,
                            "stream header inside the stream",
                        ));
                    }
                    Ok(None) => break,
                    Err(e) => return Outcome::End(End::Error(e)),
                }
            }
            if let Err(end) = self.charge_partial() {
                return Outcome::End(end);
            }
            if self.link.buffered() == 0 {
                stanza_started = None;
            } else if stanza_started.is_none() {
                stanza_started = Some(last_read);
            }
            let deadline = match stanza_started {
                Some(t) => (t + stanza_timeout).min(last_read + idle_timeout),
                None => last_read + idle_timeout,
            };
            // One timer for both: the release point comes first unless the
            // framer is already released or a stanza is half-read.
            let release_at = last_read + FRAMER_RELEASE_AFTER;
            let releasing = framer_held && stanza_started.is_none() && release_at < deadline;
            let wake = if releasing { release_at } else { deadline };
            if timer.is_elapsed() || timer.deadline() > wake {
                timer.as_mut().reset(wake);
            }
            let takeover = async {
                match session.takeover.as_mut() {
                    Some(rx) => rx.await.ok(),
                    None => std::future::pending().await,
                }
            };
            let mut batch: Vec<Out> = Vec::new();
            tokio::select! {
                biased;
                _ = &mut closed => {
                    // What was queued before the close (e.g. the reply to an
                    // account removal) is flushed by the caller, then the reason.
                    return Outcome::End(handle.take_close_reason().map_or(End::Closed, End::Error));
                }
                _ = &mut shutting_down => {
                    return Outcome::End(stream_error(StreamCondition::SystemShutdown, "the server is shutting down"));
                }
                Some(t) = takeover => return Outcome::Takeover(t),
                // A burst may be larger than a batch: it goes out whole.
                true = rx.recv_up_to(&mut batch, WRITE_BATCH) => {
                    let receipts = rx.take_receipts();
                    let write = Box::pin(self.deliver(session, batch, receipts));
                    tokio::select! {
                        r = write => if let Err(end) = r { return Outcome::End(end); },
                        _ = &mut closed => {
                            return Outcome::End(handle.take_close_reason().map_or(End::Closed, End::Error));
                        }
                    }
                }
                r = self.link.receive() => match r {
                    Ok(0) => return Outcome::End(End::Gone),
                    Err(e) => return Outcome::End(read_failed(e)),
                    Ok(n) => {
                        last_read = tokio::time::Instant::now();
                        framer_held = true;
                        self.pace(n).await;
                    }
                },
                _ = &mut timer => {
                    if tokio::time::Instant::now() < wake {
                        // Set for an earlier point that has passed since.
                        timer.as_mut().reset(wake);
                        continue;
                    }
                    if releasing {
                        self.link.release_idle_buffers();
                        // What it remembers is for a busy client too.
                        self.memo.forget();
                        framer_held = false;
                        continue;
                    }
                    let text = if stanza_started.is_some_and(|t| t + stanza_timeout <= deadline) {
                        "a stanza took too long to arrive"
                    } else {
                        "no data for too long"
                    };
                    return Outcome::End(stream_error(StreamCondition::ConnectionTimeout, text));
                }
            }
        }
    }

    /// Writes queued stanzas: held back while the client is inactive (CSI),
    /// counted and kept until acknowledged (SM), in one write.
    pub(super) async fn deliver(
        &mut self,
        session: &mut Session,
        batch: Vec<Out>,
        receipts: Vec<(Range<usize>, Receipt)>,
    ) -> Result<(), End> {
        if !receipts.is_empty() {
            // Tracked stanzas are never held back: their receipt says the
            // client has them. What was held goes first, to keep the order.
            let mut now = trees(session.held.take());
            let shift = now.len();
            now.extend(batch);
            let receipts = receipts
                .into_iter()
                .map(|(r, receipt)| (r.start + shift..r.end + shift, receipt))
                .collect();
            return self.write_stanzas(session, now, receipts).await;
        }
        let inactive = session.handle.flag(SessionFlag::Inactive);
        if !inactive && session.held.is_empty() {
            // The common case: an active client, nothing held back.
            return self.write_stanzas(session, batch, Vec::new()).await;
        }
        let mut now = Vec::with_capacity(batch.len());
        for out in batch {
            // Held stanzas wait as trees (CSI inspects and replaces them).
            let el = out.into_element();
            if inactive && !csi::is_urgent(&el) {
                now.extend(session.held.hold(el).into_iter().map(Out::Tree));
            } else {
                // Anything held goes first, so the client sees stanzas in order.
                now.extend(session.held.take().into_iter().map(Out::Tree));
                now.push(Out::Tree(el));
            }
        }
        self.write_stanzas(session, now, Vec::new()).await
    }

    /// Writes `stanzas` in one write. A receipt (for the stanzas in its
    /// range) resolves once they are written, or under stream management
    /// once the client acknowledges them; an `<r/>` then goes with them.
    /// A fan-out's shared stanza is written from its shared bytes; stream
    /// management keeps a tree of it.
    pub(super) async fn write_stanzas(
        &mut self,
        session: &mut Session,
        stanzas: Vec<Out>,
        receipts: Vec<(Range<usize>, Receipt)>,
    ) -> Result<(), End> {
        if stanzas.is_empty() {
            for (_, receipt) in receipts {
                let _ = receipt.send(());
            }
            return Ok(());
        }
        let mut out = Outgoing::for_stanzas(stanzas.len());
        let mut ask = false;
        let base = session.sm.as_ref().map_or(0, |sm| sm.sent_out);
        // Counted per run of one stanza name (a batch is usually all messages).
        let mut run: (&'static str, u64) = ("", 0);
        for el in stanzas {
            let kind = crate::metrics::stanza_kind(el.name());
            if kind != run.0 {
                self.server.metrics.stanzas_out(run.0, "c2s", run.1);
                run = (kind, 0);
            }
            run.1 += 1;
            match &el {
                Out::Tree(tree) => self.encode(tree, &mut out),
                Out::Addressed(a) => self.link.encode_addressed(a, &mut out),
            }
            if let Some(sm) = session.sm.as_mut() {
                ask |= sm.on_sent(el.into_element());
            }
        }
        self.server.metrics.stanzas_out(run.0, "c2s", run.1);
        let mut receipts = receipts;
        if let Some(sm) = session.sm.as_mut() {
            for (range, receipt) in receipts.drain(..) {
                if range.is_empty() {
                    let _ = receipt.send(());
                    continue;
                }
                let first = base.wrapping_add(range.start as u32 + 1);
                let last = base.wrapping_add(range.end as u32);
                sm.track(first, last, receipt);
                ask = true;
            }
        }
        if let Some(sm) = &session.sm {
            // What may be queued (bursts included) may also be in flight.
            let limit = self.config.outbound_queue + self.config.outbound_burst;
            if sm.unacked.len() > limit {
                return Err(stream_error(
                    StreamCondition::PolicyViolation,
                    "too many unacknowledged stanzas",
                ));
            }
            if ask {
                self.encode(&sm::request(), &mut out);
            }
        }
        self.write(out).await?;
        // Without stream management, written is all we can know.
        for (_, receipt) in receipts {
            let _ = receipt.send(());
        }
        Ok(())
    }

    /// Stream-management and CSI nonzas, then stanzas.
    pub(super) async fn handle_element(
        &mut self,
        session: &mut Session,
        el: Element,
    ) -> Result<(), End> {
        if el.ns == sm::NS {
            return self.handle_sm(session, el).await;
        }
        if el.ns == csi::NS {
            match el.name.as_str() {
                "inactive" => session.handle.set_flag(SessionFlag::Inactive, true),
                "active" => {
                    session.handle.set_flag(SessionFlag::Inactive, false);
                    let held = trees(session.held.take());
                    self.write_stanzas(session, held, Vec::new()).await?;
                }
                _ => {
                    return Err(stream_error(
                        StreamCondition::UnsupportedStanzaType,
                        "unknown CSI element",
                    ));
                }
            }
            return Ok(());
        }
        let handle = session.handle.clone();
        self.handle_stanza(&handle, el).await?;
        if let Some(sm) = session.sm.as_mut() {
            sm.on_handled();
        }
        Ok(())
    }

    pub(super) async fn handle_sm(
        &mut self,
        session: &mut Session,
        el: Element,
    ) -> Result<(), End> {
        match el.name.as_str() {
            "enable" => {
                if session.sm.is_some() {
                    return self.send(&sm::failed("unexpected-request")).await;
                }
                let resume = matches!(el.attr("resume"), Some("true" | "1"));
                let id = random_id();
                let mut enabled = Element::new("enabled", sm::NS).with_attr("id", id.as_str());
                if resume {
                    let max = self.config.resume_timeout.as_secs();
                    enabled.set_attr("resume", "true");
                    enabled.set_attr("max", max.to_string());
                    if let Some(at) = self.server.cluster.as_ref().and_then(|c| c.advertise()) {
                        // XEP-0198 §5: resume at the node that holds the session.
                        enabled.set_attr("location", at);
                    }
                    let handle = &session.handle;
                    session.takeover = Some(self.server.resumption.insert(
                        id.clone(),
                        handle.jid.clone(),
                        handle.id,
                    ));
                }
                session.sm = Some(SmState::new(id, resume));
                self.send(&enabled).await
            }
            "r" => match &session.sm {
                Some(sm) => self.send(&sm::ack(sm.handled_in)).await,
                None => Err(stream_error(
                    StreamCondition::UnsupportedStanzaType,
                    "stream management is not enabled",
                )),
            },
            "a" => match (session.sm.as_mut(), sm::parse_h(&el)) {
                (Some(sm), Some(h)) => sm.on_ack(h).map_err(End::Error),
                _ => Err(stream_error(
                    StreamCondition::UnsupportedStanzaType,
                    "unexpected ack",
                )),
            },
            "resume" => self.send(&sm::failed("unexpected-request")).await,
            _ => Err(stream_error(
                StreamCondition::UnsupportedStanzaType,
                "unknown stream management element",
            )),
        }
    }

    /// Waits, detached, for a client to resume this session (XEP-0198 §5).
    pub(super) async fn wait_for_resumption(&mut self, session: &mut Session) -> Option<Takeover> {
        let rx = session.takeover.as_mut()?;
        let timeout = self.config.resume_timeout;
        tokio::select! {
            t = rx => t.ok(),
            _ = tokio::time::sleep(timeout) => None,
            _ = session.handle.closed().cancelled() => None,
            _ = self.server.shutdown.cancelled() => None,
        }
    }

    /// A resumption of this session: over a new connection here, or on
    /// another node (`handoff.rs`, which may end the session here).
    async fn take_over(
        &mut self,
        session: &mut Session,
        rx: &mut Outbox,
        t: Takeover,
    ) -> Option<End> {
        match t {
            Takeover::Here(r) => {
                Box::pin(self.adopt(session, r)).await;
                None
            }
            Takeover::Elsewhere(ask) => Box::pin(self.hand_off(session, rx, ask)).await,
        }
    }

    /// Continues the session over the resuming connection: acknowledges,
    /// retransmits what the client missed, and reopens the resumption slot.
    pub(super) async fn adopt(&mut self, session: &mut Session, takeover: Resumption) {
        let new = *takeover.conn;
        // The new connection may be over another transport: the session
        // goes on over whatever it brought.
        self.link = new.link;
        self.peer = new.peer;
        self.bucket = new.bucket;
        self.partial = new.partial;
        self._permit = new._permit;
        self.header_sent = true;
        self.unsent = new.unsent;
        let handle = session.handle.clone();
        let Some(sm) = session.sm.as_mut() else {
            return;
        };
        if sm.on_ack(takeover.h).is_err() {
            tracing::debug!("resumption with an impossible h; retransmitting everything");
        }
        let resumed = Element::new("resumed", sm::NS)
            .with_attr("h", sm.handled_in.to_string())
            .with_attr("previd", sm.id.as_str());
        let mut out = Outgoing::default();
        match takeover.success {
            Some(mut success) => {
                success.push_child(resumed);
                self.link.encode(&success, &mut out);
                self.link
                    .encode(&Element::new("features", ns::STREAM), &mut out);
            }
            None => self.link.encode(&resumed, &mut out),
        }
        for el in &sm.unacked {
            self.link.encode(el, &mut out);
        }
        let id = sm.id.clone();
        session.takeover = Some(
            self.server
                .resumption
                .insert(id, handle.jid.clone(), handle.id),
        );
        tracing::info!(jid = %handle.jid, peer = %self.peer, "session resumed");
        // A failed write shows up as EOF on the next read.
        let _ = self.write(out).await;
    }

    pub(super) async fn handle_stanza(
        &mut self,
        handle: &Arc<SessionHandle>,
        mut el: Element,
    ) -> Result<(), End> {
        let Some(kind) = stanza::kind(&el) else {
            return Err(stream_error(
                StreamCondition::UnsupportedStanzaType,
                "not a message, presence or iq",
            ));
        };
        // RFC 6120 §8.1.2.1: stamp `from`; a client may only claim itself.
        let from = self.memo.stamped_from(handle);
        if let Some(claimed) = el.attr("from") {
            let ok = match Jid::parse(claimed) {
                Ok(Jid::Full(f)) => f == handle.jid,
                Ok(Jid::Bare(b)) => &b == handle.jid.bare(),
                Err(_) => false,
            };
            if !ok {
                return Err(stream_error(
                    StreamCondition::InvalidFrom,
                    "'from' does not match the session",
                ));
            }
            el.set_attr("from", from);
        } else {
            // Known absent: appended without looking for it again.
            el.attrs.push((CompactString::const_new("from"), from));
        }
        if let Some(lang) = &self.lang
            && el.attr("xml:lang").is_none()
        {
            // Straight from the `str`: a short tag is stored inline, with
            // no `String` made and freed per stanza. Known absent, as above.
            let lang = CompactString::from(&**lang);
            el.attrs.push((CompactString::const_new("xml:lang"), lang));
        }
        // Legacy session establishment (RFC 3921 §3): answered, does nothing.
        if el.name == "iq"
            && el.child("session", ns::SESSION).is_some()
            && el
                .attr("to")
                .is_none_or(|t| self.host.as_deref() == Some(t))
        {
            let mut reply = stanza::iq_result(&el);
            reply.remove_attr("from");
            reply.remove_attr("to");
            return self.send(&reply).await;
        }
        // Isolated: a panic fails this stanza, not the session.
        self.server
            .handle_from_client(handle, el, kind, &mut self.memo)
            .await;
        Ok(())
    }
}
