//! XEP-0484 FAST: token authentication in one round trip, with the HT-*
//! SASL mechanisms (draft-schmaus-kitten-sasl-ht): the client proves it
//! holds a token with HMAC(token, "Initiator" ‖ channel-binding data).
//!
//! Tokens are stored per account and client installation (the SASL2
//! user-agent id) in two slots, `current` and `new`, as XEP-0484 §4.4
//! suggests, so a rotation the client never received does not lock it out.
//! The token is the HMAC key and must therefore be kept as is; it is random
//! (32 bytes), bound to one mechanism and one client, and expires. It is also
//! bound to the account's credentials (a tag of its SCRAM secrets, which
//! change with every password change), so setting a new password, by any
//! path (in-band, an admin command, `waxwing user passwd`), revokes every
//! token issued before it.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use waxwing_proto::jid::BareJid;
use waxwing_proto::sasl::{ChannelBindingData, ChannelBindingTypes, SaslError};
use waxwing_proto::xml::{Element, parse_stanza};
use waxwing_store::StoredSecret;

use super::link::ClientTransport;
use super::{Conn, End};

/// `urn:xmpp:fast:0`
pub const NS: &str = "urn:xmpp:fast:0";
/// How long a token lives; rotated when less than half is left.
const LIFETIME: Duration = Duration::from_secs(14 * 24 * 3600);

/// The HT mechanisms we offer, with the channel binding each uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Ht {
    None,
    /// tls-server-end-point
    Endp,
    /// tls-exporter
    Expr,
}

impl Ht {
    pub(super) fn name(self) -> &'static str {
        match self {
            Ht::None => "HT-SHA-256-NONE",
            Ht::Endp => "HT-SHA-256-ENDP",
            Ht::Expr => "HT-SHA-256-EXPR",
        }
    }

    fn from_name(name: &str) -> Option<Ht> {
        [Ht::None, Ht::Endp, Ht::Expr]
            .into_iter()
            .find(|m| m.name() == name)
    }

    fn cb_data(self, cb: &ChannelBindingData) -> Option<Vec<u8>> {
        match self {
            Ht::None => Some(Vec::new()),
            Ht::Endp => cb.tls_server_end_point.clone(),
            Ht::Expr => cb.tls_exporter.clone(),
        }
    }
}

/// Mechanisms available on this connection.
pub(super) fn offered(cb: ChannelBindingTypes) -> Vec<Ht> {
    [Ht::Expr, Ht::Endp, Ht::None]
        .into_iter()
        .filter(|m| match m {
            Ht::None => true,
            Ht::Endp => cb.tls_server_end_point,
            Ht::Expr => cb.tls_exporter,
        })
        .collect()
}

/// The `<fast/>` SASL2 inline feature.
pub(super) fn feature(cb: ChannelBindingTypes) -> Element {
    let mut f = Element::new("fast", NS);
    for m in offered(cb) {
        f.push_child(Element::new("mechanism", NS).with_text(m.name()));
    }
    f
}

fn hmac(token: &[u8], label: &[u8], cb: &[u8]) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(token).expect("HMAC takes any key length");
    mac.update(label);
    mac.update(cb);
    mac
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

/// One stored token.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Token {
    secret: String,
    mechanism: String,
    expires: u64,
    /// [`credentials_tag`] of the account when the token was issued.
    credentials: String,
}

/// The two slots of one client installation.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Slots {
    current: Option<Token>,
    new: Option<Token>,
}

impl Slots {
    fn to_xml(&self) -> String {
        let mut el = Element::new("tokens", NS);
        for (slot, t) in [("current", &self.current), ("new", &self.new)] {
            if let Some(t) = t {
                el.push_child(
                    Element::new("token", NS)
                        .with_attr("slot", slot)
                        .with_attr("mechanism", t.mechanism.as_str())
                        .with_attr("expires", t.expires.to_string())
                        .with_attr("credentials", t.credentials.as_str())
                        .with_attr("secret", t.secret.as_str()),
                );
            }
        }
        el.to_xml()
    }

    fn parse(xml: &str) -> Slots {
        let Ok(el) = parse_stanza(xml, waxwing_proto::ns::CLIENT) else {
            return Slots::default();
        };
        let mut slots = Slots::default();
        for t in el.children() {
            let token = (|| {
                Some(Token {
                    secret: t.attr("secret")?.to_string(),
                    mechanism: t.attr("mechanism")?.to_string(),
                    expires: t.attr("expires")?.parse().ok()?,
                    // A token stored before tokens were bound to the
                    // credentials has none, and matches no account.
                    credentials: t.attr("credentials").unwrap_or_default().to_string(),
                })
            })();
            match t.attr("slot") {
                Some("current") => slots.current = token,
                Some("new") => slots.new = token,
                _ => {}
            }
        }
        slots
    }
}

/// Store key: hashed so that the agent id (a client-chosen string) cannot
/// collide with other keys or be long.
fn key(agent_id: &str) -> String {
    let d = Sha256::digest(agent_id.as_bytes());
    format!(
        "fast:{}",
        d.iter()
            .take(16)
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    )
}

/// A short tag of the account's SCRAM secrets. Every password change draws
/// a new salt, so the tag changes with it; the tag reveals nothing usable
/// (it is a hash of hashes of the password).
fn credentials_tag(secrets: &[StoredSecret]) -> String {
    let mut d = Sha256::new();
    d.update(b"waxwing FAST credentials\0");
    for s in secrets {
        for part in [s.mechanism.as_bytes(), &s.salt, &s.stored_key] {
            d.update((part.len() as u64).to_be_bytes());
            d.update(part);
        }
    }
    hex::encode(&d.finalize()[..16])
}

impl Conn {
    /// Whether this stream may use FAST at all (`Authenticator::fast_allowed`).
    fn fast_allowed(&self) -> bool {
        crate::auth::Authenticator::fast_allowed(
            &self.server.config,
            self.host.as_deref().unwrap_or_default(),
            &self.mechanisms_offered(),
        )
    }

    /// The account's current [`credentials_tag`]; `None` when it has no
    /// secrets (no such account), `Err` when the store failed.
    async fn current_credentials(&self, user: &BareJid) -> Result<Option<String>, ()> {
        match self.server.stores.accounts.secrets(user).await {
            Ok(Some(secrets)) if !secrets.is_empty() => Ok(Some(credentials_tag(&secrets))),
            Ok(_) => Ok(None),
            Err(e) => {
                tracing::error!(error = %e, "credentials lookup for FAST failed");
                Err(())
            }
        }
    }

    /// Verifies an HT-* initial response against the client's tokens.
    pub(super) async fn fast_exchange(
        &mut self,
        auth: &Element,
    ) -> Result<Result<(BareJid, Option<Vec<u8>>), SaslError>, End> {
        let Some(mech) = auth.attr("mechanism").and_then(Ht::from_name) else {
            return Ok(Err(SaslError::InvalidMechanism));
        };
        if !self.fast_allowed() {
            return Ok(Err(SaslError::InvalidMechanism));
        }
        let Some(cb) = mech.cb_data(self.link.channel_binding()) else {
            return Ok(Err(SaslError::InvalidMechanism));
        };
        let Some(agent) = auth
            .child("user-agent", super::sasl2::NS)
            .and_then(|u| u.attr("id"))
            .map(str::to_string)
        else {
            return Ok(Err(SaslError::MalformedRequest));
        };
        let text = auth
            .child("initial-response", super::sasl2::NS)
            .map(|r| r.text())
            .unwrap_or_default();
        let Ok(data) = waxwing_proto::sasl::decode_payload(&text) else {
            return Ok(Err(SaslError::IncorrectEncoding));
        };
        let Some(nul) = data.iter().position(|b| *b == 0) else {
            return Ok(Err(SaslError::MalformedRequest));
        };
        let (name, proof) = (&data[..nul], &data[nul + 1..]);
        let host = self.host.clone().unwrap_or_default();
        let Some(user) = std::str::from_utf8(name)
            .ok()
            .and_then(|n| BareJid::new(Some(n), &host).ok())
        else {
            return Ok(Err(SaslError::NotAuthorized));
        };
        self.neg.attempted = Some(user.clone());
        let stores = self.server.stores.clone();
        let k = key(&agent);
        let mut slots = match stores.private_xml.get(&user, &k).await {
            Ok(Some(xml)) => Slots::parse(&xml),
            Ok(None) => Slots::default(),
            Err(e) => {
                tracing::error!(error = %e, "FAST token lookup failed");
                return Ok(Err(SaslError::TemporaryAuthFailure));
            }
        };
        let Ok(credentials) = self.current_credentials(&user).await else {
            return Ok(Err(SaslError::TemporaryAuthFailure));
        };
        let Some(credentials) = credentials else {
            return Ok(Err(SaslError::NotAuthorized));
        };
        let now = now_secs();
        let matches = |t: &Option<Token>| {
            t.as_ref().is_some_and(|t| {
                t.mechanism == mech.name()
                    && t.credentials == credentials
                    && t.expires > now
                    && hmac(t.secret.as_bytes(), b"Initiator", &cb)
                        .verify_slice(proof)
                        .is_ok()
            })
        };
        let used = if matches(&slots.new) {
            // XEP-0484 §4.4: the new token is in use; it becomes current.
            slots.current = slots.new.take();
            slots.current.clone()
        } else if matches(&slots.current) {
            slots.current.clone()
        } else {
            return Ok(Err(SaslError::NotAuthorized));
        };
        let used = used.expect("matched a token");
        let invalidate = auth
            .child("fast", NS)
            .is_some_and(|f| matches!(f.attr("invalidate"), Some("true" | "1")));
        if invalidate {
            slots = Slots::default();
        }
        if let Err(e) = stores.private_xml.set(&user, &k, &slots.to_xml()).await {
            tracing::error!(error = %e, "FAST token update failed");
            return Ok(Err(SaslError::TemporaryAuthFailure));
        }
        let rotate = !invalidate && used.expires.saturating_sub(now) < LIFETIME.as_secs() / 2;
        self.neg.fast_rotate = rotate;
        let additional = hmac(used.secret.as_bytes(), b"Responder", &cb)
            .finalize()
            .into_bytes()
            .to_vec();
        Ok(Ok((user, Some(additional))))
    }

    /// Issues a token for `mechanism` to the client `agent`, into the `new` slot.
    pub(super) async fn issue_token(
        &mut self,
        user: &BareJid,
        agent: &str,
        mechanism: &str,
    ) -> Option<Element> {
        Ht::from_name(mechanism)?;
        if !self.fast_allowed() {
            return None;
        }
        let credentials = self.current_credentials(user).await.ok()??;
        let stores = self.server.stores.clone();
        let k = key(agent);
        let mut slots = match stores.private_xml.get(user, &k).await {
            Ok(Some(xml)) => Slots::parse(&xml),
            Ok(None) => Slots::default(),
            Err(_) => return None,
        };
        let secret = format!("{}{}", crate::random_id(), crate::random_id());
        let expires = now_secs() + LIFETIME.as_secs();
        slots.new = Some(Token {
            secret: secret.clone(),
            mechanism: mechanism.to_string(),
            expires,
            credentials,
        });
        stores
            .private_xml
            .set(user, &k, &slots.to_xml())
            .await
            .ok()?;
        let expiry = crate::time::xep0082(UNIX_EPOCH + Duration::from_secs(expires));
        Some(
            Element::new("token", NS)
                .with_attr("expiry", expiry)
                .with_attr("token", secret),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_round_trip() {
        let s = Slots {
            current: Some(Token {
                secret: "abc".into(),
                mechanism: "HT-SHA-256-NONE".into(),
                expires: 42,
                credentials: "00ff".into(),
            }),
            new: None,
        };
        assert_eq!(Slots::parse(&s.to_xml()), s);
        assert_eq!(Slots::parse("not xml"), Slots::default());
    }

    #[test]
    fn ht_proof_depends_on_token_and_binding() {
        let a = hmac(b"token", b"Initiator", b"").finalize().into_bytes();
        let b = hmac(b"token", b"Initiator", b"cb").finalize().into_bytes();
        let c = hmac(b"other", b"Initiator", b"").finalize().into_bytes();
        assert_ne!(a, b);
        assert_ne!(a, c);
        assert!(hmac(b"token", b"Initiator", b"").verify_slice(&a).is_ok());
    }

    #[test]
    fn the_credentials_tag_follows_the_secrets() {
        let secret = |salt: &[u8]| StoredSecret {
            mechanism: "SCRAM-SHA-256".into(),
            salt: salt.to_vec(),
            iterations: 4096,
            stored_key: vec![1; 32],
            server_key: vec![2; 32],
        };
        let a = credentials_tag(&[secret(b"salt one")]);
        assert_eq!(a, credentials_tag(&[secret(b"salt one")]));
        assert_ne!(a, credentials_tag(&[secret(b"salt two")]));
        assert_eq!(a.len(), 32);
    }

    #[test]
    fn keys_do_not_look_like_private_storage_keys() {
        assert!(key("anything").starts_with("fast:"));
        assert!(!key("x").starts_with('{'));
    }
}
