//! Stream negotiation, written once for every transport: the stream
//! header, the features, STARTTLS and compression (TCP only), the SASL and
//! SASL2 entry points, in-band registration before authentication,
//! resource binding and XEP-0198 resumption.

use std::sync::Arc;

use waxwing_proto::jid::{BareJid, FullJid, Jid};
use waxwing_proto::sasl;
use waxwing_proto::stanza::{self, Condition, StanzaError, StreamCondition, StreamError};
use waxwing_proto::xml::{Element, StreamEvent, StreamHeader};
use waxwing_proto::{lang, ns};

use super::features::FeatureKey;
use super::link::{ClientTransport, Outgoing, StreamOpen};
use super::{Conn, End, Negotiated, iq_request, sasl2, stream_error};
use crate::hooks::{Cx, Event, Iq, IqKind, IqTarget};
use crate::invites;
use crate::queue::Outbox;
use crate::random_id;
use crate::router::call_iq_handler;
use crate::session::SessionHandle;
use crate::stream::sm;

impl Conn {
    /// Reads the client's stream header and answers with ours (RFC 6120 §4.2).
    pub(super) async fn open_stream(&mut self) -> Result<(), End> {
        let header = match self.next_event().await? {
            StreamEvent::Open(h) => h,
            _ => {
                return Err(stream_error(
                    StreamCondition::BadFormat,
                    "expected a stream header",
                ));
            }
        };
        let host = self.check_header(&header);
        let from = match &host {
            Ok(h) => h.clone(),
            Err(_) => self.server.config.hosts[0].clone(),
        };
        let id = random_id();
        // RFC 6120 §4.7.4: the client's language where we have texts in it.
        // Only a well-formed tag is kept, so nothing else reaches the header.
        let lang = header.lang.filter(|l| lang::is_well_formed(l));
        let mut head = Outgoing::default();
        self.link.encode_open(
            &StreamOpen {
                id: &id,
                from: &from,
                lang: Some(lang::reply_language(lang.as_deref())),
            },
            &mut head,
        );
        self.lang = lang.map(String::into_boxed_str);
        self.header_sent = true;
        self.unsent = head; // goes out with the features, or the error
        let host = host?;
        if self.host.as_deref().is_some_and(|h| h != host) {
            return Err(stream_error(
                StreamCondition::HostUnknown,
                "the host changed on stream restart",
            ));
        }
        self.host = Some(host.into());
        Ok(())
    }

    pub(super) fn check_header(&self, header: &StreamHeader) -> Result<String, End> {
        let Some(to) = header.to.as_deref() else {
            return Err(stream_error(
                StreamCondition::HostUnknown,
                "the stream header has no 'to'",
            ));
        };
        let host = BareJid::domain_only(to)
            .map_err(|_| stream_error(StreamCondition::HostUnknown, "'to' is not a domain"))?
            .domain()
            .to_string();
        if !self.server.config.is_local_host(&host) {
            return Err(stream_error(
                StreamCondition::HostUnknown,
                "this server does not serve that host",
            ));
        }
        // A drained cluster node sends newcomers elsewhere.
        if let Some(err) = self.server.cluster.as_ref().and_then(|c| c.draining()) {
            return Err(End::Error(err));
        }
        // RFC 6120 §4.7.5: a missing version means pre-1.0, which has no
        // features and no SASL; a higher major version is answered with ours.
        match header
            .version
            .as_deref()
            .and_then(|v| v.split('.').next()?.parse::<u32>().ok())
        {
            Some(major) if major >= 1 => Ok(host),
            _ => Err(stream_error(
                StreamCondition::UnsupportedVersion,
                "version 1.0 is required",
            )),
        }
    }

    /// Negotiates until a resource is bound.
    pub(super) async fn negotiate(&mut self) -> Result<Negotiated, End> {
        // SASL2 authenticates without a stream restart (XEP-0388 §2.6).
        let mut restart = true;
        loop {
            if restart {
                self.open_stream().await?;
            }
            restart = true;
            let tls = self.link.is_secure();
            let sasl_allowed = tls || !self.server.config.require_encryption;
            self.send_features().await?;

            loop {
                let el = self.next_element().await?;
                if self.neg.user.is_none() {
                    if el.is("starttls", ns::TLS) && self.can_starttls() {
                        self.starttls().await?;
                        break;
                    }
                    if el.is("auth", ns::SASL) {
                        if !sasl_allowed {
                            self.sasl_failure("encryption-required").await?;
                            continue;
                        }
                        if let Some(additional) = self.authenticate(&el).await? {
                            let success = Element::new("success", ns::SASL).with_text(
                                additional
                                    .map(|d| sasl::encode_payload(&d))
                                    .unwrap_or_default(),
                            );
                            self.send(&success).await?;
                            self.link.restart();
                            break;
                        }
                        continue;
                    }
                    if el.is("authenticate", sasl2::NS) {
                        if !tls {
                            // XEP-0388 §5: SASL2 only over TLS.
                            self.neg.sasl2 = true;
                            self.sasl_failure("encryption-required").await?;
                            self.neg.sasl2 = false;
                            continue;
                        }
                        match self.sasl2_authenticate(&el).await? {
                            None => continue,
                            Some(sasl2::Outcome::Ready(negotiated)) => return Ok(negotiated),
                            Some(sasl2::Outcome::Authenticated) => {
                                restart = false;
                                break;
                            }
                        }
                    }
                    if el.is("iq", ns::CLIENT) && sasl_allowed && is_register_iq(&el) {
                        self.pre_auth_register(el).await?;
                        continue;
                    }
                    if el.is("iq", ns::CLIENT) && sasl_allowed && is_preauth_iq(&el) {
                        self.preauth(el).await?;
                        continue;
                    }
                    return Err(stream_error(
                        StreamCondition::NotAuthorized,
                        "authenticate first",
                    ));
                }
                if el.is("compress", COMPRESS_NS) {
                    if self.compress(&el).await? {
                        break;
                    }
                    continue;
                }
                if el.is("iq", ns::CLIENT) && el.child("bind", ns::BIND).is_some() {
                    if let Some((handle, rx)) = self.bind(&el).await? {
                        return Ok(Negotiated::Bound(handle, rx, None));
                    }
                    continue;
                }
                if el.is("resume", sm::NS) {
                    let user = self.neg.user.clone().expect("authenticated");
                    let previd = el.attr("previd");
                    let slot = previd
                        .and_then(|id| self.server.resumption.take(id, &user))
                        .map(|(tx, _)| tx);
                    match (slot, sm::parse_h(&el)) {
                        (Some(slot), Some(h)) => return Ok(Negotiated::Resume(slot, h, None)),
                        // Cluster mode: the session may be on another node.
                        (None, Some(h)) if let Some(id) = previd => {
                            let server = self.server.clone();
                            if let Some(a) = crate::cluster::handoff::ask(&server, id, &user).await
                            {
                                return Ok(Negotiated::Arrived(Box::new(a), h, None));
                            }
                        }
                        _ => {}
                    }
                    self.send(&sm::failed("item-not-found")).await?;
                    continue;
                }
                return Err(stream_error(
                    StreamCondition::NotAuthorized,
                    "bind a resource first",
                ));
            }
        }
    }

    /// Whether STARTTLS may be offered: only on plain TCP.
    pub(super) fn can_starttls(&self) -> bool {
        self.link.tcp().is_some_and(|t| t.can_starttls())
    }

    /// Whether XEP-0138 compression may be offered: TCP only, once.
    pub(super) fn can_compress(&self) -> bool {
        self.server.config.compression_enabled
            && self.link.tcp().is_some_and(|t| !t.is_compressed())
    }

    /// What the stream features depend on, for where negotiation stands
    /// (`features.rs` builds them from this alone).
    pub(super) fn feature_key(&self) -> FeatureKey {
        let authenticated = self.neg.user.is_some();
        let tls = self.link.is_secure();
        let cb = self.link.channel_binding_types();
        let sasl_allowed = tls || !self.server.config.require_encryption;
        FeatureKey {
            transport: self.link.transport(),
            authenticated,
            tls,
            starttls: !authenticated && self.can_starttls(),
            compress: authenticated && self.can_compress(),
            cb_exporter: cb.tls_exporter,
            cb_end_point: cb.tls_server_end_point,
            mechanisms: if !authenticated && sasl_allowed {
                self.mechanisms_offered()
            } else {
                Vec::new()
            },
            host: if authenticated {
                None
            } else {
                self.host.as_deref().map(Box::from)
            },
        }
    }

    /// Sends the stream features for where negotiation stands, after the
    /// stream header held in `unsent`: serialized once per distinct
    /// [`FeatureKey`] and copied from the server's cache.
    async fn send_features(&mut self) -> Result<(), End> {
        let server = self.server.clone();
        let link = &self.link;
        let features = server
            .c2s_features
            .get(&server, self.feature_key(), |el, out| link.encode(el, out));
        let mut out = std::mem::take(&mut self.unsent);
        out.extend_from(&features);
        self.write(out).await
    }

    /// XEP-0138: `<compress/>` after authentication. True when the stream
    /// is now compressed (and restarts).
    pub(super) async fn compress(&mut self, el: &Element) -> Result<bool, End> {
        let failure = |condition: &str| {
            Element::new("failure", COMPRESS_NS).with_child(Element::new(condition, COMPRESS_NS))
        };
        if !self.can_compress() {
            self.send(&failure("setup-failed")).await?;
            return Ok(false);
        }
        let method = el.child("method", COMPRESS_NS).map(|m| m.text());
        if method.as_deref().map(str::trim) != Some("zlib") {
            self.send(&failure("unsupported-method")).await?;
            return Ok(false);
        }
        // As with STARTTLS: nothing may be pipelined across the switch.
        if self.link.buffered() > 0 {
            return Err(stream_error(
                StreamCondition::PolicyViolation,
                "data after <compress/>",
            ));
        }
        self.send(&Element::new("compressed", COMPRESS_NS)).await?;
        let max_ratio = self.server.config.compression_max_ratio;
        match self.link.tcp_mut().map(|t| t.compress(max_ratio)) {
            Some(Ok(())) => Ok(true),
            _ => Err(End::Gone),
        }
    }

    pub(super) async fn starttls(&mut self) -> Result<(), End> {
        // Bytes pipelined after <starttls/> would be processed as if they
        // came over TLS (CVE-2011-0411 class): refuse them.
        if self.link.buffered() > 0 {
            return Err(stream_error(
                StreamCondition::PolicyViolation,
                "data after <starttls/>",
            ));
        }
        self.send(&Element::new("proceed", ns::TLS)).await?;
        let tls = self.server.tls.clone();
        let Some(tcp) = self.link.tcp_mut() else {
            return Err(End::Gone);
        };
        if let Err(e) = tcp.upgrade(&tls).await {
            tracing::debug!(error = %e, "STARTTLS handshake failed");
            return Err(End::Gone);
        }
        self.header_sent = false;
        Ok(())
    }

    pub(super) async fn pre_auth_register(&mut self, el: Element) -> Result<(), End> {
        let host = self.host.clone().unwrap_or_default();
        let reply = match iq_request(&el) {
            Err(err) => stanza::error_reply(&el, &err),
            Ok((kind, payload)) => {
                let server = self.server.clone();
                let creates = creates_account(kind, &payload);
                match server.registry.iq.get(IqTarget::Server, kind, ns::REGISTER) {
                    None => stanza::error_reply(
                        &el,
                        &StanzaError::cancel(Condition::ServiceUnavailable),
                    ),
                    Some(_) if creates && !self.reserve_registration() => stanza::error_reply(
                        &el,
                        &StanzaError::wait(Condition::PolicyViolation)
                            .with_text("too many registrations; try again later"),
                    ),
                    Some((module, handler)) => {
                        let host_jid = Jid::parse(&host).map_err(|_| End::Closed)?;
                        let iq = Iq {
                            from: host_jid.clone(),
                            to: Some(host_jid),
                            id: el.attr("id").unwrap_or_default().to_string(),
                            is_set: kind == IqKind::Set,
                            payload,
                            stanza: el.clone(),
                            authenticated: false,
                            preauth: self.neg.preauth.clone(),
                        };
                        let cx = Cx::new(self.server.clone(), None);
                        let answer = call_iq_handler(module, handler.as_ref(), &cx, iq).await;
                        if creates && answer.is_err() {
                            // No account was created: the slot goes back.
                            self.neg.registrations -= 1;
                            self.server.registrations.release(self.peer.ip());
                        }
                        match answer {
                            Ok(result) => {
                                let mut r = stanza::iq_result(&el);
                                r.remove_attr("to");
                                if let Some(p) = result {
                                    r.push_child(p);
                                }
                                Some(r)
                            }
                            Err(err) => stanza::error_reply(&el, &err),
                        }
                    }
                }
            }
        };
        if let Some(mut reply) = reply {
            reply.remove_attr("to");
            self.send(&reply).await?;
        }
        Ok(())
    }

    /// XEP-0445 §4: `<iq type='set'><preauth xmlns='urn:xmpp:pars:0'
    /// token='…'/></iq>` before authenticating. An accepted token is kept
    /// for this stream's registration; a refused one is `item-not-found`,
    /// and a stream that keeps guessing is closed.
    pub(super) async fn preauth(&mut self, el: Element) -> Result<(), End> {
        let host = self.host.clone().unwrap_or_default();
        let token = el
            .first_child()
            .and_then(|p| p.attr("token"))
            .unwrap_or_default()
            .to_string();
        let reply = if el.attr("type") != Some("set") {
            stanza::error_reply(&el, &StanzaError::modify(Condition::BadRequest))
        } else {
            match invites::Invites::new(self.server.clone())
                .check_registration(&host, &token)
                .await
            {
                Ok(preauth) => {
                    tracing::debug!(peer = %self.peer, "invitation token accepted");
                    self.neg.preauth = Some(preauth);
                    Some(stanza::iq_result(&el))
                }
                Err(e) => {
                    if let invites::CheckError::Store(e) = &e {
                        tracing::error!(error = %e, "checking an invitation failed");
                    }
                    self.neg.preauth_failures += 1;
                    if self.neg.preauth_failures > MAX_PREAUTH_FAILURES {
                        tracing::info!(peer = %self.peer, "too many invalid invitation tokens");
                        return Err(stream_error(
                            StreamCondition::PolicyViolation,
                            "too many invalid invitation tokens",
                        ));
                    }
                    stanza::error_reply(
                        &el,
                        &StanzaError::cancel(Condition::ItemNotFound)
                            .with_text("The provided token is invalid or expired"),
                    )
                }
            }
        };
        if let Some(mut reply) = reply {
            reply.remove_attr("to");
            self.send(&reply).await?;
        }
        Ok(())
    }

    /// Takes a registration slot for this stream and its address prefix
    /// (`[registration] max_per_stream`, `max_per_address`).
    pub(super) fn reserve_registration(&mut self) -> bool {
        if self.neg.registrations >= self.server.config.registration_max_per_stream
            || !self.server.registrations.try_reserve(self.peer.ip())
        {
            tracing::info!(peer = %self.peer, "in-band registration refused: limit reached");
            return false;
        }
        self.neg.registrations += 1;
        true
    }

    /// Resource binding (RFC 6120 §7). Ok(None) when the client got an error and may retry.
    pub(super) async fn bind(
        &mut self,
        iq: &Element,
    ) -> Result<Option<(Arc<SessionHandle>, Outbox)>, End> {
        let requested = iq
            .child("bind", ns::BIND)
            .and_then(|b| b.child("resource", ns::BIND))
            .map(|r| r.text())
            .filter(|r| !r.trim().is_empty());
        let bound = if iq.attr("type") != Some("set") {
            Err(StanzaError::modify(Condition::BadRequest))
        } else {
            self.bind_resource(requested.unwrap_or_else(|| format!("waxwing-{}", random_id())))
                .await
        };
        match bound {
            Ok((handle, rx)) => {
                let mut reply = stanza::iq_result(iq);
                reply.remove_attr("to");
                reply.remove_attr("from");
                reply.push_child(
                    Element::new("bind", ns::BIND).with_child(
                        Element::new("jid", ns::BIND).with_text(handle.jid.to_string()),
                    ),
                );
                self.send(&reply).await?;
                Ok(Some((handle, rx)))
            }
            Err(err) => {
                if let Some(r) = stanza::error_reply(iq, &err) {
                    self.send(&r).await?;
                }
                Ok(None)
            }
        }
    }

    /// Binds `resource` for the authenticated user (RFC 6120 §7, XEP-0386).
    pub(super) async fn bind_resource(
        &mut self,
        resource: String,
    ) -> Result<(Arc<SessionHandle>, Outbox), StanzaError> {
        let user = self
            .neg
            .user
            .clone()
            .expect("bind only after authentication");
        let full = FullJid::new(user.clone(), &resource).map_err(|_| {
            StanzaError::modify(Condition::BadRequest).with_text("invalid resource")
        })?;
        let sessions = &self.server.sessions;
        let replacing = sessions.get(&full).is_some();
        if !replacing && sessions.resource_count(&user) >= self.config.max_resources {
            return Err(
                StanzaError::wait(Condition::ResourceConstraint).with_text("too many resources")
            );
        }
        let (handle, rx) =
            SessionHandle::new(full, self.config.outbound_queue, self.config.outbound_burst);
        handle.set_transport(self.link.transport());
        if let Some(old) = sessions.bind(handle.clone()) {
            // RFC 6120 §7.7.2.2: the newer session wins; the old one gets <conflict/>.
            old.close(
                StreamError::new(StreamCondition::Conflict)
                    .with_text("replaced by a new connection"),
            );
        }
        self.server
            .clone()
            .emit(Some(handle.clone()), Event::SessionBound(handle.clone()))
            .await;
        Ok((handle, rx))
    }
}

const COMPRESS_NS: &str = "http://jabber.org/protocol/compress";

/// The XEP-0138 stream feature: zlib only.
/// An IQ set that asks for a new account (not a form request, nor `<remove/>`).
fn creates_account(kind: IqKind, payload: &Element) -> bool {
    kind == IqKind::Set && payload.child("username", ns::REGISTER).is_some()
}

/// Invitation tokens a stream may get wrong before it is closed.
const MAX_PREAUTH_FAILURES: u32 = 3;

fn is_preauth_iq(el: &Element) -> bool {
    el.first_child()
        .is_some_and(|c| c.is("preauth", invites::NS_PARS))
}

fn is_register_iq(el: &Element) -> bool {
    el.first_child()
        .is_some_and(|c| c.is("query", ns::REGISTER))
}
