//! XEP-0388 Extensible SASL Profile with XEP-0386 Bind 2: authenticate,
//! bind and enable stream management (or resume) in one round trip.

use sha2::{Digest, Sha256};
use waxwing_proto::ns;
use waxwing_proto::xml::Element;

use super::link::Outgoing;
use super::{Conn, End, InlineSm, Negotiated};
use crate::random_id;
use crate::session::SessionFlag;
use crate::stream::csi;
use crate::stream::sm::{self, SmState};

/// `urn:xmpp:sasl:2`
pub const NS: &str = "urn:xmpp:sasl:2";
/// `urn:xmpp:bind:0`
pub const BIND2: &str = "urn:xmpp:bind:0";
/// XEP-0280, enabled inline by Bind2.
const CARBONS: &str = "urn:xmpp:carbons:2";

/// What a successful SASL2 authentication led to.
pub(super) enum Outcome {
    /// Authenticated but not bound: stream features follow, no restart.
    Authenticated,
    /// Bound (Bind2) or resumed inline: negotiation is over.
    Ready(Negotiated),
}

/// The `<authentication/>` stream feature.
pub(super) fn feature(
    mechanisms: &[&str],
    cb: waxwing_proto::sasl::ChannelBindingTypes,
    fast: bool,
) -> Element {
    let mut auth = Element::new("authentication", NS);
    for m in mechanisms {
        auth.push_child(Element::new("mechanism", NS).with_text(*m));
    }
    let mut bind_inline = Element::new("inline", BIND2);
    for var in [sm::NS, CARBONS, csi::NS] {
        bind_inline.push_child(Element::new("feature", BIND2).with_attr("var", var));
    }
    let mut inline = Element::new("inline", NS)
        .with_child(Element::new("bind", BIND2).with_child(bind_inline))
        .with_child(Element::new("sm", sm::NS));
    if fast {
        inline.push_child(super::fast::feature(cb));
    }
    auth.push_child(inline);
    auth
}

/// XEP-0386 §3: a resource from the client's tag plus a suffix that is
/// stable for one client installation (its user-agent id), so that a
/// reconnecting client replaces its own stale session instead of piling up.
fn resource_for(tag: Option<&str>, agent_id: Option<&str>) -> String {
    let suffix = match agent_id {
        Some(id) => {
            let digest = Sha256::digest(id.as_bytes());
            digest[..6]
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        }
        None => random_id(),
    };
    match tag.map(str::trim).filter(|t| !t.is_empty()) {
        Some(tag) => format!("{tag}.{suffix}"),
        None => suffix,
    }
}

impl Conn {
    pub(super) async fn sasl2_authenticate(
        &mut self,
        auth: &Element,
    ) -> Result<Option<Outcome>, End> {
        self.neg.sasl2 = true;
        self.neg.fast_rotate = false;
        let result = self.authenticate(auth).await;
        self.neg.sasl2 = false;
        let Some(additional) = result? else {
            return Ok(None);
        };
        let user = self.neg.user.clone().expect("authenticated");
        let mut success = Element::new("success", NS);
        if let Some(data) = additional {
            success.push_child(
                Element::new("additional-data", NS)
                    .with_text(waxwing_proto::sasl::encode_payload(&data)),
            );
        }
        // XEP-0484: a token on request, or when the one just used is due for rotation.
        let agent_id = auth
            .child("user-agent", NS)
            .and_then(|ua| ua.attr("id"))
            .map(str::to_string);
        let requested = auth
            .child("request-token", super::fast::NS)
            .and_then(|r| r.attr("mechanism"))
            .map(str::to_string);
        let rotation = self
            .neg
            .fast_rotate
            .then(|| auth.attr("mechanism").unwrap_or_default().to_string());
        if let (Some(agent), Some(mech)) = (agent_id.as_deref(), requested.or(rotation))
            && let Some(token) = self.issue_token(&user, agent, &mech).await
        {
            success.push_child(token);
        }
        // Inline resumption first (XEP-0198 §5 via XEP-0388): it replaces binding.
        let mut resume_failed = None;
        if let Some(resume) = auth.child("resume", sm::NS) {
            let previd = resume.attr("previd");
            let slot = previd.and_then(|id| self.server.resumption.take(id, &user));
            // Cluster mode: the session may be on another node.
            if slot.is_none()
                && let (Some(id), Some(h)) = (previd, sm::parse_h(resume))
                && let Some(a) = crate::cluster::handoff::ask(&self.server.clone(), id, &user).await
            {
                success.push_child(
                    Element::new("authorization-identifier", NS)
                        .with_text(a.handle.jid.to_string()),
                );
                return Ok(Some(Outcome::Ready(Negotiated::Arrived(
                    Box::new(a),
                    h,
                    Some(success),
                ))));
            }
            match (slot, sm::parse_h(resume)) {
                (Some((tx, jid)), Some(h)) => {
                    success.push_child(
                        Element::new("authorization-identifier", NS).with_text(jid.to_string()),
                    );
                    return Ok(Some(Outcome::Ready(Negotiated::Resume(
                        tx,
                        h,
                        Some(success),
                    ))));
                }
                _ => resume_failed = Some(sm::failed("item-not-found")),
            }
        }
        let Some(bind) = auth.child("bind", BIND2) else {
            success.push_child(
                Element::new("authorization-identifier", NS).with_text(user.to_string()),
            );
            if let Some(f) = resume_failed {
                success.push_child(f);
            }
            self.send(&success).await?;
            return Ok(Some(Outcome::Authenticated));
        };
        let agent_id = auth.child("user-agent", NS).and_then(|ua| ua.attr("id"));
        let tag = bind.child("tag", BIND2).map(|t| t.text());
        let resource = resource_for(tag.as_deref(), agent_id);
        let (handle, rx) = match self.bind_resource(resource).await {
            Ok(bound) => bound,
            Err(e) => {
                // The account is authenticated but cannot bind: say why and close.
                tracing::info!(error = ?e.condition, "bind2 failed");
                self.neg.sasl2 = true;
                self.sasl_failure("aborted").await?;
                self.neg.sasl2 = false;
                return Err(End::Closed);
            }
        };
        success.push_child(
            Element::new("authorization-identifier", NS).with_text(handle.jid.to_string()),
        );
        let mut bound = Element::new("bound", BIND2);
        if let Some(f) = resume_failed {
            bound.push_child(f);
        }
        let mut inline_sm = None;
        if let Some(enable) = bind.child("enable", sm::NS) {
            let resume = matches!(enable.attr("resume"), Some("true" | "1"));
            let id = random_id();
            let mut enabled = Element::new("enabled", sm::NS).with_attr("id", id.as_str());
            let mut takeover = None;
            if resume {
                enabled.set_attr("resume", "true");
                enabled.set_attr("max", self.config.resume_timeout.as_secs().to_string());
                if let Some(at) = self.server.cluster.as_ref().and_then(|c| c.advertise()) {
                    // XEP-0198 §5: resume at the node that holds the session.
                    enabled.set_attr("location", at);
                }
                takeover = Some(self.server.resumption.insert(
                    id.clone(),
                    handle.jid.clone(),
                    handle.id,
                ));
            }
            bound.push_child(enabled);
            inline_sm = Some(InlineSm {
                state: SmState::new(id, resume),
                takeover,
            });
        }
        if bind.child("enable", CARBONS).is_some() {
            handle.set_flag(SessionFlag::Carbons, true);
        }
        if bind.child("inactive", csi::NS).is_some() {
            handle.set_flag(SessionFlag::Inactive, true);
        }
        success.push_child(bound);
        // XEP-0386 §3: features follow; nothing is left to negotiate.
        let mut out = Outgoing::default();
        self.encode(&success, &mut out);
        self.encode(&Element::new("features", ns::STREAM), &mut out);
        self.write(out).await?;
        Ok(Some(Outcome::Ready(Negotiated::Bound(
            handle, rx, inline_sm,
        ))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resources_are_stable_per_installation() {
        let a = resource_for(Some("Conversations"), Some("4d3c"));
        assert_eq!(a, resource_for(Some("Conversations"), Some("4d3c")));
        assert!(a.starts_with("Conversations."));
        assert_ne!(a, resource_for(Some("Conversations"), Some("other")));
        assert_ne!(resource_for(None, None), resource_for(None, None));
    }
}
