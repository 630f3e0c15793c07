//! XEP-0198 resumption across cluster nodes, the sessions' side (what the
//! nodes say to each other is `cluster::handoff`): the node holding the
//! session gives it away ([`hand_away`], [`Conn::hand_off`]); the node the
//! client resumes at carries it on ([`carry_on`]).

use std::sync::Arc;

use waxwing_proto::jid::BareJid;
use waxwing_proto::ns;
use waxwing_proto::xml::Element;

use super::link::{ClientTransport, Outgoing};
use super::{Conn, End, Session, Takeover, run_to_end};
use crate::Server;
use crate::cluster::handoff::{self, Arrived, Ask, MAX_STATE_BYTES, State};
use crate::queue::Outbox;
use crate::stream::csi::Held;
use crate::stream::sm::{self, SmState};

/// Another node asks for a session (from its stream's reader): the session
/// whose stream-management id and account match, if it is here and
/// resumable, is told to move; anything else is answered "not here".
pub(crate) async fn hand_away(server: &Arc<Server>, ask: Ask) {
    let Some(c) = &server.cluster else { return };
    if !c.is_peer_now(&ask.from).await {
        tracing::warn!(node = %ask.from, "cluster: a handoff request from a node not in the cluster ignored");
        return;
    }
    // The same check as a local resumption: the id, and the account it
    // belongs to (a previd is useless to anyone else).
    let taken = BareJid::parse(&ask.user)
        .ok()
        .and_then(|user| server.resumption.take(&ask.id, &user));
    let Some((slot, _)) = taken else {
        handoff::refuse(server, &ask);
        return;
    };
    if let Err(Takeover::Elsewhere(ask)) = slot.send(Takeover::Elsewhere(ask)) {
        // The session ended a moment ago.
        handoff::refuse(server, &ask);
    }
}

impl Conn {
    /// Gives this session to the node that asked (its task, attached or
    /// detached): the state goes first, then the session leaves the
    /// registry and what is queued for it follows it; it does not end
    /// (no unavailable presence, nothing stored offline). `None` when it
    /// stays here after all (the cluster link is full).
    pub(super) async fn hand_off(
        &mut self,
        session: &mut Session,
        rx: &mut Outbox,
        ask: Ask,
    ) -> Option<End> {
        let server = self.server.clone();
        let c = server.cluster.as_ref()?;
        let handle = session.handle.clone();
        let Some(sm) = session.sm.as_ref() else {
            handoff::refuse(&server, &ask);
            return None;
        };
        let state = State::capture(
            &handle,
            &sm.id,
            sm.handled_in,
            sm.sent_out,
            &sm.unacked,
            session.held.stanzas(),
        );
        if state.size() > MAX_STATE_BYTES {
            // It ends here as if nobody had resumed it: what the client
            // has not acknowledged goes to offline storage, and the
            // client, refused, binds anew and finds it there.
            tracing::warn!(jid = %handle.jid, bytes = state.size(), "cluster: session too large to move; ending it");
            handoff::refuse(&server, &ask);
            server.metrics.cluster_handoff("out", false);
            return Some(End::Gone);
        }
        let record = state.record_at(&ask);
        if !handoff::give(&server, &ask, Some(Box::new(state))) {
            tracing::warn!(jid = %handle.jid, "cluster link full: a session stays here instead of moving");
            server.metrics.cluster_handoff("out", false);
            session.takeover = Some(server.resumption.insert(
                sm.id.clone(),
                handle.jid.clone(),
                handle.id,
            ));
            return None;
        }
        let node: Arc<str> = ask.from.as_str().into();
        // Whoever still addresses the old session id (nodes that have not
        // seen the move yet) is forwarded to the new one.
        c.handoffs.moved(handle.id, node.clone(), ask.sid);
        // Stanzas routed here go straight to the new node, without waiting
        // for it to announce the session.
        c.replica.expect(record);
        server.sessions.unbind(&handle);
        rx.close();
        let mut queued = Vec::new();
        rx.drain_untracked(&mut queued);
        if !queued.is_empty()
            && let Err(back) = c
                .replica
                .link()
                .deliver(&node, &handle.jid, ask.sid, queued)
        {
            server
                .clone()
                .store_undelivered(handle.jid.bare(), back)
                .await;
        }
        // Moved, not lost: nothing of it is stored offline here.
        session.sm = None;
        session.held = Held::default();
        session.takeover = None;
        server.metrics.cluster_handoff("out", true);
        tracing::info!(jid = %handle.jid, %node, "session resumed on another node");
        Some(End::Moved)
    }
}

/// Continues a session another node handed over, over the resuming
/// connection, as a local resumption does: `<resumed/>` with our count,
/// what the client had not acknowledged again, then what was held or
/// queued for it, then the session as usual.
pub(super) async fn carry_on(mut conn: Conn, arrived: Arrived, h: u32, success: Option<Element>) {
    let Arrived {
        handle,
        outbox,
        state,
    } = arrived;
    handle.set_transport(conn.link.transport());
    let mut sm = SmState::resumed(
        state.id.clone(),
        state.handled_in,
        state.sent_out,
        state.unacked_elements(),
    );
    if sm.on_ack(h).is_err() {
        tracing::debug!("resumption with an impossible h; retransmitting everything");
    }
    let resumed = Element::new("resumed", sm::NS)
        .with_attr("h", sm.handled_in.to_string())
        .with_attr("previd", sm.id.as_str());
    let mut out = Outgoing::default();
    match success {
        Some(mut success) => {
            success.push_child(resumed);
            conn.link.encode(&success, &mut out);
            conn.link
                .encode(&Element::new("features", ns::STREAM), &mut out);
        }
        None => conn.link.encode(&resumed, &mut out),
    }
    for el in &sm.unacked {
        conn.link.encode(el, &mut out);
    }
    let takeover = conn
        .server
        .resumption
        .insert(state.id.clone(), handle.jid.clone(), handle.id);
    let mut session = Session {
        handle,
        sm: Some(sm),
        held: Held::default(),
        takeover: Some(takeover),
    };
    tracing::info!(jid = %session.handle.jid, peer = %conn.peer, "session resumed from another node");
    // A failed write shows up as EOF on the next read; what is written
    // below is counted as unacknowledged first, so it is not lost either.
    let _ = conn.write(out).await;
    let _ = conn
        .deliver(
            &mut session,
            super::session::trees(state.pending_elements()),
            Vec::new(),
        )
        .await;
    run_to_end(conn, session, outbox).await;
}
