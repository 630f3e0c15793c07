//! XEP-0114 external component streams (`jabber:component:accept`).
//!
//! One task per connection: the component opens a stream to its domain,
//! we answer with a stream id, it proves the shared secret with
//! `<handshake>hex(SHA-1(id ‖ secret))</handshake>` (compared in constant
//! time), and from then on:
//! - stanzas it sends are routed as if they came from a peer server for
//!   that domain: `from` must be in the component's domain (else
//!   `invalid-from`; a missing `from` is the domain itself, as Prosody
//!   does), `to` is required (else `improper-addressing`);
//! - stanzas routed to its domain are written from a bounded queue
//!   (`component.rs`), each write under `write_timeout`.
//!
//! Limits are a client's: `max_stanza_bytes`, the per-connection read
//! token bucket, `outbound_queue`, and the whole handshake under
//! `auth_timeout`. There is no TLS (XEP-0114 has none): the listener is on
//! loopback by default and SECURITY.md says so.

use std::net::SocketAddr;
use std::sync::Arc;

use sha1::{Digest, Sha1};
use subtle::ConstantTimeEq;
use tokio::net::TcpStream;
use tracing::Instrument;
use waxwing_proto::jid::{BareJid, Jid};
use waxwing_proto::ns;
use waxwing_proto::stanza::{self, Condition, StanzaError, StreamCondition, StreamError};
use waxwing_proto::xml::{Element, Limits, StreamEvent, StreamHeader};

use crate::abuse::TokenBucket;
use crate::queue::{Outbox, outbound};
use crate::random_id;
use crate::router::Server;
use crate::s2s::renamespace;
use crate::s2s::wire::{READ_CHUNK, ReadError, Wire};

/// Stanzas written in one batch.
const WRITE_BATCH: usize = 64;

fn stream_error(c: StreamCondition, text: &str) -> StreamError {
    StreamError::new(c).with_text(text)
}

fn read_error(e: ReadError) -> Option<StreamError> {
    match e {
        ReadError::Gone => None,
        ReadError::Stream(e) => Some(e),
    }
}

/// The handshake digest of XEP-0114 §3: lower-case hex of SHA-1(id ‖ secret).
pub(crate) fn handshake_digest(stream_id: &str, secret: &str) -> String {
    let mut h = Sha1::new();
    h.update(stream_id.as_bytes());
    h.update(secret.as_bytes());
    hex::encode(h.finalize())
}

/// Whether `offered` (as the component sent it) proves `secret`.
fn handshake_ok(stream_id: &str, secret: &str, offered: &str) -> bool {
    let expected = handshake_digest(stream_id, secret);
    let offered = offered.trim().to_ascii_lowercase();
    expected.as_bytes().ct_eq(offered.as_bytes()).into()
}

/// Runs one component connection to completion.
pub(crate) async fn serve(server: Arc<Server>, tcp: TcpStream, peer: SocketAddr) {
    let span = tracing::info_span!("component", %peer, domain = tracing::field::Empty);
    async move {
        let c = server.live();
        let limits = Limits {
            max_stanza_bytes: c.max_stanza_bytes_before_auth,
            max_depth: c.max_depth,
            max_attrs: c.max_attributes,
        };
        let mut wire = Wire::with_ns(tcp, limits, ns::COMPONENT);
        let deadline = tokio::time::Instant::now() + c.auth_timeout;
        let domain = match tokio::time::timeout_at(deadline, handshake(&server, &mut wire)).await {
            Ok(Ok(domain)) => domain,
            Ok(Err(Some(e))) => return finish(&mut wire, Some(e)).await,
            Ok(Err(None)) => return,
            Err(_) => {
                let e = stream_error(StreamCondition::ConnectionTimeout, "no handshake in time");
                return finish(&mut wire, Some(e)).await;
            }
        };
        tracing::Span::current().record("domain", domain.as_str());
        wire.framer.set_limits(Limits {
            max_stanza_bytes: c.max_stanza_bytes,
            ..limits
        });
        let (queue, mut outbox) = outbound(c.outbound_queue, c.outbound_burst);
        let Some(attached) = server.components.attach(&domain, queue) else {
            return; // the domain was validated by the handshake
        };
        tracing::info!("component connected");
        let end = session(&server, &mut wire, &domain, &mut outbox, &attached.replaced).await;
        server.components.detach(&domain, attached.id);
        tracing::info!(reason = ?end.as_ref().map(|e| e.condition.as_str()), "component disconnected");
        // What was queued for this stream goes back to the router: to the
        // stream that replaced it, or bounced as service-unavailable.
        outbox.close();
        let mut left = Vec::new();
        outbox.drain_untracked(&mut left);
        for s in left {
            server.clone().route(s).await;
        }
        finish(&mut wire, end).await;
    }
    .instrument(span)
    .await
}

/// Reads the stream header and the handshake; the authenticated domain,
/// or why not (`None`: the peer went away).
async fn handshake(server: &Server, wire: &mut Wire) -> Result<String, Option<StreamError>> {
    let header = match wire.next_event().await.map_err(read_error)? {
        StreamEvent::Open(h) => h,
        _ => {
            return Err(Some(stream_error(
                StreamCondition::NotWellFormed,
                "no stream header",
            )));
        }
    };
    let stream_id = random_id();
    let domain = configured_domain(server, &header);
    // The header goes out whatever the outcome, so that a stream error
    // has a stream to go in.
    let from = domain.as_deref().unwrap_or_else(|| &server.config.hosts[0]);
    let head = format!(
        "<?xml version='1.0'?><stream:stream xmlns='{}' xmlns:stream='{}' from='{}' id='{}'>",
        ns::COMPONENT,
        ns::STREAM,
        from,
        stream_id
    );
    wire.write(&head).await.map_err(|_| None)?;
    let Some(domain) = domain else {
        return Err(Some(stream_error(
            StreamCondition::HostUnknown,
            "no component is configured for that domain",
        )));
    };
    let offered = match wire.next_event().await.map_err(read_error)? {
        StreamEvent::Stanza(el) if el.name == "handshake" => el.text(),
        StreamEvent::Close => return Err(None),
        _ => {
            return Err(Some(stream_error(
                StreamCondition::NotAuthorized,
                "the handshake comes first",
            )));
        }
    };
    let secret = &server
        .components
        .config(&domain)
        .expect("configured_domain checked it")
        .secret;
    if !handshake_ok(&stream_id, secret, &offered) {
        tracing::warn!(%domain, "component handshake failed");
        return Err(Some(stream_error(
            StreamCondition::NotAuthorized,
            "handshake failed",
        )));
    }
    wire.write("<handshake/>").await.map_err(|_| None)?;
    Ok(domain)
}

/// The header's `to`, prepared, if it names a configured component.
fn configured_domain(server: &Server, h: &StreamHeader) -> Option<String> {
    let to = BareJid::domain_only(h.to.as_deref()?).ok()?;
    let d = to.domain();
    server.components.contains(d).then(|| d.to_string())
}

/// The authenticated stream's loop; `None` when the peer went away.
async fn session(
    server: &Arc<Server>,
    wire: &mut Wire,
    domain: &str,
    outbox: &mut Outbox,
    replaced: &tokio_util::sync::CancellationToken,
) -> Option<StreamError> {
    let c = server.live();
    let mut bucket = TokenBucket::new(c.read_rate_bytes, c.read_burst_bytes);
    let mut buf = [0u8; READ_CHUNK];
    let shutdown = server.shutdown.clone();
    loop {
        loop {
            match wire.framer.next_event() {
                Ok(Some(StreamEvent::Stanza(el))) => {
                    if let Err(e) = admit(server, domain, el, wire).await {
                        return Some(e);
                    }
                }
                Ok(Some(StreamEvent::Close)) => return None,
                Ok(Some(StreamEvent::Open(_))) => {
                    return Some(stream_error(
                        StreamCondition::InvalidXml,
                        "a second stream header",
                    ));
                }
                Ok(None) => break,
                Err(e) => return Some(e),
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => {
                return Some(stream_error(StreamCondition::SystemShutdown, "the server is shutting down"));
            }
            _ = replaced.cancelled() => {
                return Some(stream_error(StreamCondition::Conflict, "replaced by a new connection"));
            }
            Some(mut batch) = outbox.recv() => {
                while batch.len() < WRITE_BATCH && outbox.try_recv_into(&mut batch) {}
                let mut out = String::new();
                for mut el in batch {
                    renamespace(&mut el, ns::CLIENT, ns::COMPONENT);
                    el.write_to(&mut out, ns::COMPONENT);
                }
                match tokio::time::timeout(c.write_timeout, wire.write(&out)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => return None,
                    Err(_) => {
                        return Some(stream_error(StreamCondition::ConnectionTimeout, "write timed out"));
                    }
                }
            }
            r = wire.read_some(&mut buf) => match r {
                Ok(n) => {
                    let wait = bucket.take(n, std::time::Instant::now());
                    if !wait.is_zero() {
                        tokio::time::sleep(wait).await;
                    }
                }
                Err(e) => return read_error(e),
            },
        }
    }
}

/// Checks the addresses of a stanza from the component and routes it.
async fn admit(
    server: &Arc<Server>,
    domain: &str,
    mut el: Element,
    wire: &mut Wire,
) -> Result<(), StreamError> {
    renamespace(&mut el, ns::COMPONENT, ns::CLIENT);
    if stanza::kind(&el).is_none() {
        return Err(stream_error(
            StreamCondition::UnsupportedStanzaType,
            "only message, presence and iq",
        ));
    }
    match el.attr("from").map(Jid::parse) {
        None => el.set_attr("from", domain),
        Some(Ok(f)) if f.domain() == domain => {}
        Some(_) => {
            return Err(stream_error(
                StreamCondition::InvalidFrom,
                "'from' must be in the component's domain",
            ));
        }
    }
    match el.attr("to").map(Jid::parse) {
        None => {
            return Err(stream_error(
                StreamCondition::ImproperAddressing,
                "stanza without 'to'",
            ));
        }
        Some(Err(_)) => {
            let err = StanzaError::modify(Condition::JidMalformed);
            if let Some(mut reply) = stanza::error_reply(&el, &err) {
                reply.remove_attr("from");
                renamespace(&mut reply, ns::CLIENT, ns::COMPONENT);
                let _ = wire.send(&reply).await;
            }
            return Ok(());
        }
        Some(Ok(_)) => {}
    }
    server.clone().handle_from_peer(el).await;
    Ok(())
}

async fn finish(wire: &mut Wire, error: Option<StreamError>) {
    match error {
        Some(e) => {
            tracing::debug!(condition = e.condition.as_str(), text = ?e.text, "component stream error");
            wire.close(Some(&e)).await;
        }
        None => wire.close(None).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handshake_digest_is_xep_0114_example() {
        // Computed independently: python3 hashlib.sha1(b"3BF96D32secret").
        assert_eq!(
            handshake_digest("3BF96D32", "secret"),
            "b09ea9b3b7f586be8a08d0a3dd7466f110aeb136"
        );
        assert!(handshake_ok(
            "id",
            "s3cret",
            &handshake_digest("id", "s3cret")
        ));
        assert!(handshake_ok(
            "id",
            "s3cret",
            &handshake_digest("id", "s3cret").to_uppercase()
        ));
        assert!(!handshake_ok(
            "id",
            "s3cret",
            &handshake_digest("id", "other")
        ));
        assert!(!handshake_ok("id", "s3cret", ""));
    }
}
