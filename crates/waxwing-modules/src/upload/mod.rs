//! XEP-0363 HTTP File Upload on `upload.<host>`: slot requests over XMPP
//! (this file), signed URLs (`token.rs`), files on disk with quota and
//! expiry (`store.rs`), and the PUT/GET routes of the HTTP listener
//! (`http.rs`). Only accounts of our hosts get slots.

mod http;
mod store;
pub mod token;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use waxwing_core::Config;
use waxwing_core::config::UploadConfig;
use waxwing_core::hooks::{
    Cx, DomainService, Event, EventHandler, Module, RegisterError, Registrar,
};
use waxwing_proto::jid::Jid;
use waxwing_proto::ns;
use waxwing_proto::stanza::{self, Condition, StanzaError};
use waxwing_proto::xml::Element;

pub const NS: &str = "urn:xmpp:http:upload:0";

/// How often expired files are removed.
const CLEANUP_EVERY: Duration = Duration::from_secs(3600);

/// Longest file name accepted, in bytes.
const MAX_FILENAME: usize = 255;

/// The module: one service per host.
pub struct Upload {
    state: Arc<UploadState>,
}

/// Shared by the XMPP service and the HTTP routes.
pub(crate) struct UploadState {
    pub(crate) config: UploadConfig,
    key_file: PathBuf,
    key: OnceLock<[u8; 32]>,
    /// Bytes being uploaded right now, per owner directory.
    in_flight: Mutex<HashMap<String, u64>>,
}

impl UploadState {
    /// The URL-signing key, read (or created) on first use.
    pub(crate) fn key(&self) -> Option<[u8; 32]> {
        if let Some(k) = self.key.get() {
            return Some(*k);
        }
        match waxwing_core::credentials::load_or_create_key(&self.key_file) {
            Ok(k) => Some(*self.key.get_or_init(|| k)),
            Err(e) => {
                tracing::error!(path = %self.key_file.display(), error = %e, "cannot load the upload key");
                None
            }
        }
    }

    /// Bytes of `owner`'s live files plus those being uploaded.
    async fn used(&self, owner: &str) -> u64 {
        let root = self.config.dir.clone();
        let retention = self.config.retention;
        let o = owner.to_string();
        let on_disk = tokio::task::spawn_blocking(move || {
            store::used_bytes(&root, &o, retention, store::now_secs())
        })
        .await
        .unwrap_or(u64::MAX);
        let flying = self
            .in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(owner)
            .copied()
            .unwrap_or(0);
        on_disk.saturating_add(flying)
    }

    /// Reserves `size` bytes of `owner`'s quota for an upload in progress.
    /// Two uploads racing may both pass the disk count, but not both the
    /// reservation: it is checked and taken under one lock.
    pub(crate) async fn reserve(self: &Arc<Self>, owner: &str, size: u64) -> Option<Reservation> {
        let root = self.config.dir.clone();
        let retention = self.config.retention;
        let o = owner.to_string();
        let on_disk = tokio::task::spawn_blocking(move || {
            store::used_bytes(&root, &o, retention, store::now_secs())
        })
        .await
        .ok()?;
        let mut flying = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        let entry = flying.entry(owner.to_string()).or_default();
        if on_disk.saturating_add(*entry).saturating_add(size) > self.config.quota_bytes {
            if *entry == 0 {
                flying.remove(owner);
            }
            return None;
        }
        *entry += size;
        Some(Reservation {
            state: self.clone(),
            owner: owner.to_string(),
            size,
        })
    }
}

/// Bytes of an upload in progress; given back when dropped.
pub(crate) struct Reservation {
    state: Arc<UploadState>,
    owner: String,
    size: u64,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let mut flying = self
            .state
            .in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(n) = flying.get_mut(&self.owner) {
            *n = n.saturating_sub(self.size);
            if *n == 0 {
                flying.remove(&self.owner);
            }
        }
    }
}

impl Upload {
    pub fn new(config: &Config) -> Self {
        Upload {
            state: Arc::new(UploadState {
                config: config.upload.clone(),
                key_file: config.data_dir.join("upload.key"),
                key: OnceLock::new(),
                in_flight: Mutex::new(HashMap::new()),
            }),
        }
    }
}

impl Module for Upload {
    fn name(&self) -> &'static str {
        "upload"
    }

    fn register(self: Arc<Self>, reg: &mut Registrar) -> Result<(), RegisterError> {
        for domain in &self.state.config.domains {
            let host = domain
                .split_once('.')
                .map(|(_, h)| h.to_string())
                .unwrap_or_default();
            reg.service(
                domain,
                Arc::new(UploadService {
                    host,
                    state: self.state.clone(),
                }),
            )?;
        }
        reg.http_routes_unlimited(http::routes(self.state.clone()));
        reg.on_events(self);
        Ok(())
    }
}

#[async_trait]
impl EventHandler for Upload {
    async fn on_event(&self, cx: &Cx, event: &Event) {
        match event {
            Event::Started => {
                let state = self.state.clone();
                let stop = cx.shutdown_token();
                cx.spawn_background(async move {
                    loop {
                        let root = state.config.dir.clone();
                        let (retention, stale) =
                            (state.config.retention, state.config.slot_timeout);
                        match tokio::task::spawn_blocking(move || {
                            store::cleanup(&root, retention, stale, store::now_secs())
                        })
                        .await
                        {
                            Ok(Ok(n)) if n > 0 => {
                                tracing::info!(removed = n, "expired uploads removed")
                            }
                            Ok(Err(e)) => tracing::warn!(error = %e, "upload cleanup failed"),
                            _ => {}
                        }
                        tokio::select! {
                            _ = stop.cancelled() => return,
                            _ = tokio::time::sleep(CLEANUP_EVERY) => {}
                        }
                    }
                });
            }
            Event::UserDeleted(user) => {
                let dir = self
                    .state
                    .config
                    .dir
                    .join(token::owner_dir(&user.to_string()));
                if let Err(e) = tokio::fs::remove_dir_all(&dir).await
                    && e.kind() != std::io::ErrorKind::NotFound
                {
                    tracing::warn!(%user, error = %e, "cannot remove a deleted account's uploads");
                }
            }
            _ => {}
        }
    }
}

/// `upload.<host>`.
struct UploadService {
    host: String,
    state: Arc<UploadState>,
}

#[async_trait]
impl DomainService for UploadService {
    async fn handle_stanza(&self, cx: &Cx, stanza: Element) {
        if stanza.name != "iq" {
            if stanza.name == "message" {
                cx.bounce(&stanza, StanzaError::cancel(Condition::ServiceUnavailable))
                    .await;
            }
            return;
        }
        if !matches!(stanza.attr("type"), Some("get" | "set")) {
            return;
        }
        match self.handle_iq(cx, &stanza).await {
            Ok(payload) => {
                let mut reply = stanza::iq_result(&stanza);
                reply.push_child(payload);
                cx.route(reply).await;
            }
            Err(e) => cx.bounce(&stanza, e).await,
        }
    }

    fn name(&self) -> &str {
        "HTTP File Upload"
    }
}

impl UploadService {
    async fn handle_iq(&self, cx: &Cx, iq: &Element) -> Result<Element, StanzaError> {
        let to_service = iq
            .attr("to")
            .and_then(|t| Jid::parse(t).ok())
            .is_some_and(|t| t.local().is_none() && t.resource().is_none());
        let payload = iq
            .first_child()
            .ok_or_else(|| StanzaError::modify(Condition::BadRequest))?;
        if !to_service {
            return Err(StanzaError::cancel(Condition::ServiceUnavailable));
        }
        let get = iq.attr("type") == Some("get");
        if get
            && payload.is("query", ns::DISCO_INFO)
            && payload.attr("node").is_none_or(str::is_empty)
        {
            return Ok(self.disco_info());
        }
        if get && payload.is("query", ns::DISCO_ITEMS) {
            return Ok(Element::new("query", ns::DISCO_ITEMS));
        }
        if get && payload.is("request", NS) {
            return self.slot(cx, iq, payload).await;
        }
        Err(StanzaError::cancel(Condition::ServiceUnavailable))
    }

    /// XEP-0363 §2 with the XEP-0128 form announcing `max-file-size`.
    fn disco_info(&self) -> Element {
        let field = |var: &str, value: &str, hidden: bool| {
            let mut f = Element::new("field", ns::DATA_FORMS)
                .with_attr("var", var)
                .with_child(Element::new("value", ns::DATA_FORMS).with_text(value));
            if hidden {
                f.set_attr("type", "hidden");
            }
            f
        };
        Element::new("query", ns::DISCO_INFO)
            .with_child(
                Element::new("identity", ns::DISCO_INFO)
                    .with_attr("category", "store")
                    .with_attr("type", "file")
                    .with_attr("name", "HTTP File Upload"),
            )
            .with_child(Element::new("feature", ns::DISCO_INFO).with_attr("var", ns::DISCO_INFO))
            .with_child(Element::new("feature", ns::DISCO_INFO).with_attr("var", NS))
            .with_child(
                Element::new("x", ns::DATA_FORMS)
                    .with_attr("type", "result")
                    .with_child(field("FORM_TYPE", NS, true))
                    .with_child(field(
                        "max-file-size",
                        &self.state.config.max_file_bytes.to_string(),
                        false,
                    )),
            )
    }

    async fn slot(&self, cx: &Cx, iq: &Element, req: &Element) -> Result<Element, StanzaError> {
        let from = iq
            .attr("from")
            .and_then(|f| Jid::parse(f).ok())
            .ok_or_else(|| StanzaError::modify(Condition::BadRequest))?;
        // Slots are for our own accounts: the quota and the files are theirs.
        if from.local().is_none() || !cx.is_local_host(from.domain()) {
            return Err(StanzaError::cancel(Condition::Forbidden)
                .with_text("only accounts of this server may upload here"));
        }
        let bad = |why: &str| StanzaError::modify(Condition::BadRequest).with_text(why);
        let filename = req.attr("filename").unwrap_or("");
        if filename.is_empty()
            || filename.len() > MAX_FILENAME
            || filename == "."
            || filename == ".."
            || filename
                .chars()
                .any(|c| c.is_control() || c == '/' || c == '\\')
        {
            return Err(bad(
                "the file name must be 1-255 bytes without slashes or control characters",
            ));
        }
        let size: u64 = req
            .attr("size")
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad("size must be a number of bytes"))?;
        if size == 0 {
            return Err(StanzaError::modify(Condition::NotAcceptable)
                .with_text("empty files are not stored"));
        }
        let max = self.state.config.max_file_bytes;
        if size > max {
            // XEP-0363 §4.1.
            return Err(StanzaError::modify(Condition::NotAcceptable)
                .with_text(format!("the file is larger than {max} bytes"))
                .with_app(
                    Element::new("file-too-large", NS)
                        .with_child(Element::new("max-file-size", NS).with_text(max.to_string())),
                ));
        }
        let content_type = req.attr("content-type").unwrap_or("").trim();
        if !content_type.is_empty() && !is_media_type(content_type) {
            return Err(bad("content-type must be a media type such as image/jpeg"));
        }
        let bare = from.to_bare().to_string();
        let owner = token::owner_dir(&bare);
        if self.state.used(&owner).await.saturating_add(size) > self.state.config.quota_bytes {
            return Err(StanzaError::wait(Condition::ResourceConstraint)
                .with_text("your upload quota is used up; older files expire in time"));
        }
        let key = self
            .state
            .key()
            .ok_or_else(|| StanzaError::wait(Condition::InternalServerError))?;
        let base = cx
            .http_base_url(&self.host)
            .ok_or_else(|| StanzaError::cancel(Condition::ServiceUnavailable))?;
        let slot = token::Slot {
            owner,
            id: waxwing_core::random_id(),
            filename: filename.to_string(),
            size,
            content_type: content_type.to_string(),
            expires: store::now_secs() + self.state.config.slot_timeout.as_secs(),
        };
        let get_url = format!(
            "{base}/upload/{}/{}/{}",
            slot.owner,
            slot.id,
            percent_encode(&slot.filename)
        );
        let put_url = format!(
            "{get_url}?size={}&type={}&exp={}&sig={}",
            slot.size,
            percent_encode(&slot.content_type),
            slot.expires,
            token::sign(&key, &slot)
        );
        Ok(Element::new("slot", NS)
            .with_child(
                Element::new("put", NS)
                    .with_attr("url", put_url)
                    .with_child(
                        Element::new("header", NS)
                            .with_attr("name", "Authorization")
                            .with_text(token::authorization(&key, &slot.owner, &slot.id)),
                    ),
            )
            .with_child(Element::new("get", NS).with_attr("url", get_url)))
    }
}

/// `type/subtype` with RFC 6838 token characters (parameters allowed).
fn is_media_type(ct: &str) -> bool {
    let essence = ct.split(';').next().unwrap_or("").trim();
    let token = |s: &str| {
        !s.is_empty()
            && s.len() <= 127
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
    };
    ct.len() <= 255
        && ct.bytes().all(|b| (0x20..0x7f).contains(&b))
        && essence
            .split_once('/')
            .is_some_and(|(t, s)| token(t) && token(s))
}

/// Random ids and owner hashes: what a path segment of ours looks like.
pub(crate) fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
pub(crate) fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_types_and_encoding() {
        assert!(is_media_type("image/jpeg"));
        assert!(is_media_type("text/plain; charset=utf-8"));
        assert!(!is_media_type("image"));
        assert!(!is_media_type("image/jpeg\r\nx: y"));
        assert!(!is_media_type("a b/c"));
        assert_eq!(percent_encode("my cat é.jpg"), "my%20cat%20%C3%A9.jpg");
        assert!(is_token("aZ09-_"));
        assert!(!is_token(".."));
    }
}
