//! RSS/Atom into PubSub: feeds polled over HTTP(S) and republished on
//! nodes of the `pubsub.<host>` services, one Atom entry (XEP-0277 style)
//! per new feed entry.
//!
//! Feeds come from `[[pubsub.feeds]]` and from the administrators' ad-hoc
//! commands (`adhoc.rs`); both are rows of the store's feed table, which
//! also keeps each feed's HTTP validators and the item ids it already
//! published. An item id is a hash of the entry's id (RSS `guid`, Atom
//! `id`; feed-rs derives one from link and title when there is none), so
//! an entry is published once, also across restarts.
//!
//! One tokio task per feed, started on [`Event::Started`](waxwing_core::hooks::Event)
//! and ended by the server's shutdown token. Polling is bounded: a
//! server-wide semaphore limits concurrent fetches, every request has a
//! timeout and a body size limit, intervals have a configured minimum, and
//! a failing feed backs off exponentially (capped).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use waxwing_core::config::{FeedConfig, PubSubConfig};
use waxwing_core::hooks::Cx;
use waxwing_proto::jid::{BareJid, Jid};
use waxwing_proto::xml::Element;
use waxwing_store::{FeedKey, PubSubAffiliation, PubSubItem, StoreError, StoredFeed};

use super::config::NodeConfig;
use super::{Kind, Svc};
use crate::caps::Caps;

/// The Atom namespace (RFC 4287).
pub const NS_ATOM: &str = "http://www.w3.org/2005/Atom";

/// Seen item ids kept per feed at least (more when a feed carries more
/// entries): enough that an entry dropped from the node is never taken
/// for new while the feed still lists it.
const SEEN_KEEP: u64 = 1024;

/// Longest text kept of an entry's title, summary or content; feed
/// entries are notifications, not archives.
const MAX_TEXT: usize = 32 * 1024;

/// Most links, authors kept per entry.
const MAX_LINKS: usize = 16;

/// Why one poll of a feed failed.
#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    #[error("HTTP: {0}")]
    Http(#[from] reqwest::Error),
    #[error("HTTP status {0}")]
    Status(u16),
    #[error("the document exceeds {0} bytes")]
    TooLarge(u64),
    #[error("not a feed: {0}")]
    Parse(String),
    #[error("storage: {0}")]
    Store(#[from] StoreError),
    #[error("publishing: {0}")]
    Publish(String),
}

/// A feed as the poller runs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedSpec {
    pub key: FeedKey,
    pub interval: Duration,
    /// The last successful fetch's validators, if known.
    pub validators: Validators,
}

/// HTTP validators making the next fetch conditional.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Validators {
    pub etag: Option<String>,
    pub last_modified: Option<String>,
}

/// Whether the configured feed `c` is the stored feed `key`.
fn is_key(c: &FeedConfig, key: &FeedKey) -> bool {
    c.service == key.service.domain() && c.node == key.node && c.url == key.url
}

/// The feeds of every service, and their tasks.
pub struct Feeds {
    config: PubSubConfig,
    caps: Arc<Caps>,
    limit: Arc<Semaphore>,
    client: OnceLock<reqwest::Client>,
    /// Running pollers; a std mutex never held across an `.await`.
    running: Mutex<HashMap<FeedKey, CancellationToken>>,
}

impl Feeds {
    pub fn new(config: PubSubConfig, caps: Arc<Caps>) -> Self {
        Feeds {
            limit: Arc::new(Semaphore::new(config.feed_concurrency)),
            config,
            caps,
            client: OnceLock::new(),
            running: Mutex::new(HashMap::new()),
        }
    }

    pub fn min_interval(&self) -> Duration {
        self.config.feed_min_interval
    }

    /// Records the configured feeds, forgets configured feeds no longer
    /// listed, and starts a poller for every stored feed.
    pub async fn start(self: &Arc<Self>, cx: &Cx) {
        let configured = cx.config().pubsub.feeds.clone();
        self.record(cx, &configured).await;
        let p = &cx.stores().pubsub;
        let stored = match p.feeds().await {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "reading the feed list failed; no feed is polled");
                return;
            }
        };
        for f in stored {
            if !f.admin && !configured.iter().any(|c| is_key(c, &f.key)) {
                tracing::info!(url = %f.key.url, node = %f.key.node, "feed no longer configured, forgotten");
                if let Err(e) = p.remove_feed(&f.key).await {
                    tracing::error!(error = %e, "forgetting a feed failed");
                }
                continue;
            }
            self.spawn_stored(cx, f);
        }
    }

    /// A reload changed `[[pubsub.feeds]]` from `previous`: feeds no longer
    /// listed stop and are forgotten (unless an administrator added them
    /// too), new or changed ones are recorded and start, the others go on
    /// polling undisturbed.
    pub async fn reconfigure(self: &Arc<Self>, cx: &Cx, previous: &[FeedConfig]) {
        let configured = cx.config().pubsub.feeds.clone();
        if configured == previous {
            return;
        }
        let changed: Vec<FeedConfig> = configured
            .iter()
            .filter(|c| !previous.contains(c))
            .cloned()
            .collect();
        self.record(cx, &changed).await;
        let p = &cx.stores().pubsub;
        let stored = match p.feeds().await {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "reading the feed list failed; feeds not reloaded");
                return;
            }
        };
        for f in stored {
            let listed = configured.iter().any(|c| is_key(c, &f.key));
            let was_listed = previous.iter().any(|c| is_key(c, &f.key));
            if !listed && was_listed && !f.admin {
                if let Some(token) = self.lock().remove(&f.key) {
                    token.cancel();
                }
                tracing::info!(url = %f.key.url, node = %f.key.node, "feed no longer configured, stopped");
                if let Err(e) = p.remove_feed(&f.key).await {
                    tracing::error!(error = %e, "forgetting a feed failed");
                }
            } else if changed.iter().any(|c| is_key(c, &f.key)) {
                tracing::info!(url = %f.key.url, node = %f.key.node, "configured feed (re)started");
                self.spawn_stored(cx, f);
            }
        }
    }

    /// Stores `feeds` as configured ones.
    async fn record(&self, cx: &Cx, feeds: &[FeedConfig]) {
        let p = &cx.stores().pubsub;
        for f in feeds {
            let Ok(service) = BareJid::domain_only(&f.service) else {
                continue;
            };
            let key = FeedKey {
                service,
                node: f.node.clone(),
                url: f.url.clone(),
            };
            if let Err(e) = p.save_feed(&key, f.interval.as_secs(), false).await {
                tracing::error!(error = %e, url = %f.url, "recording a configured feed failed");
            }
        }
    }

    /// Starts (or restarts) the poller of a stored feed, with its validators.
    fn spawn_stored(self: &Arc<Self>, cx: &Cx, f: StoredFeed) {
        let interval = Duration::from_secs(f.interval_secs).max(self.config.feed_min_interval);
        self.spawn(
            cx,
            FeedSpec {
                key: f.key,
                interval,
                validators: Validators {
                    etag: f.etag,
                    last_modified: f.last_modified,
                },
            },
        );
    }

    /// Adds (or changes the interval of) a feed for an administrator, and
    /// starts polling it now.
    pub async fn add(self: &Arc<Self>, cx: &Cx, mut spec: FeedSpec) -> Result<(), StoreError> {
        let p = &cx.stores().pubsub;
        p.save_feed(&spec.key, spec.interval.as_secs(), true)
            .await?;
        // A feed added again (a new interval) keeps its validators.
        if let Some(f) = p.feeds().await?.into_iter().find(|f| f.key == spec.key) {
            spec.validators = Validators {
                etag: f.etag,
                last_modified: f.last_modified,
            };
        }
        tracing::info!(url = %spec.key.url, node = %spec.key.node, service = %spec.key.service, "feed added");
        self.spawn(cx, spec);
        Ok(())
    }

    /// Stops and forgets a feed; false if there was none.
    pub async fn remove(&self, cx: &Cx, key: &FeedKey) -> Result<bool, StoreError> {
        if let Some(token) = self.lock().remove(key) {
            token.cancel();
        }
        let removed = cx.stores().pubsub.remove_feed(key).await?;
        if removed {
            tracing::info!(url = %key.url, node = %key.node, "feed removed");
        }
        Ok(removed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<FeedKey, CancellationToken>> {
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn client(&self) -> Result<&reqwest::Client, FeedError> {
        if let Some(c) = self.client.get() {
            return Ok(c);
        }
        let c = http_client(&self.config)?;
        Ok(self.client.get_or_init(|| c))
    }

    fn spawn(self: &Arc<Self>, cx: &Cx, spec: FeedSpec) {
        let token = cx.shutdown_token();
        if let Some(old) = self.lock().insert(spec.key.clone(), token.clone()) {
            old.cancel();
        }
        let me = self.clone();
        let cx = cx.clone();
        cx.clone().spawn_background(async move {
            me.run(&cx, &spec, &token).await;
        });
    }

    /// The poll loop of one feed, until cancelled.
    async fn run(&self, cx: &Cx, spec: &FeedSpec, cancel: &CancellationToken) {
        let mut failures: u32 = 0;
        let mut delay = Duration::ZERO;
        let mut validators = spec.validators.clone();
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(delay) => {}
            }
            let permit = tokio::select! {
                _ = cancel.cancelled() => return,
                p = self.limit.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => return,
                },
            };
            // Fetching is abandoned on shutdown; publishing what was
            // fetched is not, so that an entry is never published without
            // being marked seen.
            let fetched = tokio::select! {
                _ = cancel.cancelled() => return,
                r = self.fetch(&spec.key, &validators) => r,
            };
            let result = match fetched {
                Ok(Some(doc)) => {
                    let r = self.publish_new(cx, &spec.key, &doc).await;
                    if r.is_ok() {
                        validators = doc.validators;
                    }
                    r
                }
                Ok(None) => Ok(0),
                Err(e) => Err(e),
            };
            drop(permit);
            match result {
                Ok(n) => {
                    if failures > 0 {
                        tracing::info!(url = %spec.key.url, "feed recovered");
                    }
                    failures = 0;
                    delay = spec.interval;
                    if n > 0 {
                        tracing::info!(url = %spec.key.url, node = %spec.key.node, entries = n, "feed entries published");
                    } else {
                        tracing::debug!(url = %spec.key.url, "feed has nothing new");
                    }
                }
                Err(e) => {
                    failures = failures.saturating_add(1);
                    delay = backoff(spec.interval, failures, self.config.feed_max_backoff);
                    tracing::warn!(
                        url = %spec.key.url,
                        error = %e,
                        failures,
                        retry_in_secs = delay.as_secs(),
                        "polling a feed failed"
                    );
                }
            }
        }
    }

    /// One conditional GET; `None` when the feed did not change.
    async fn fetch(
        &self,
        key: &FeedKey,
        stored: &Validators,
    ) -> Result<Option<Fetched>, FeedError> {
        let mut req = self.client()?.get(&key.url);
        if let Some(etag) = &stored.etag {
            req = req.header(reqwest::header::IF_NONE_MATCH, etag);
        }
        if let Some(lm) = &stored.last_modified {
            req = req.header(reqwest::header::IF_MODIFIED_SINCE, lm);
        }
        let mut resp = req.send().await?;
        let status = resp.status();
        if status == reqwest::StatusCode::NOT_MODIFIED {
            return Ok(None);
        }
        if !status.is_success() {
            return Err(FeedError::Status(status.as_u16()));
        }
        let max = self.config.feed_max_bytes;
        if resp.content_length().is_some_and(|n| n > max) {
            return Err(FeedError::TooLarge(max));
        }
        let header = |name: reqwest::header::HeaderName| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let etag = header(reqwest::header::ETAG);
        let last_modified = header(reqwest::header::LAST_MODIFIED);
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await? {
            if (body.len() + chunk.len()) as u64 > max {
                return Err(FeedError::TooLarge(max));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(Some(Fetched {
            body,
            validators: Validators {
                etag,
                last_modified,
            },
        }))
    }

    /// Publishes the entries not seen before, oldest first; returns how
    /// many. Validators are saved only once every new entry is in.
    async fn publish_new(&self, cx: &Cx, key: &FeedKey, doc: &Fetched) -> Result<usize, FeedError> {
        let entries = parse(&doc.body, &key.url)?;
        let ids: Vec<String> = entries.iter().map(|(id, _)| id.clone()).collect();
        let p = &cx.stores().pubsub;
        let seen = p.feed_seen(key, &ids).await?;
        let keep = SEEN_KEEP.max(2 * entries.len() as u64);
        let svc = Svc {
            cx,
            kind: Kind::Service,
            jid: key.service.clone(),
            caps: &self.caps,
            extensions: &super::extension::NONE,
            deferred: Default::default(),
        };
        // The node exists from the first successful poll on, entries or not.
        let cfg = self.node_config(cx, &svc, key).await?;
        let mut published = 0;
        for (id, entry) in entries {
            if seen.contains(&id) {
                continue;
            }
            let item = PubSubItem {
                id: id.clone(),
                publisher: Jid::from(key.service.clone()),
                payload: entry.to_xml(),
            };
            svc.store_and_notify(&key.node, &cfg, &item, &entry)
                .await
                .map_err(|e| FeedError::Publish(format!("{:?}", e.condition)))?;
            p.mark_feed_seen(key, &id, keep).await?;
            published += 1;
        }
        p.set_feed_validators(
            key,
            doc.validators.etag.as_deref(),
            doc.validators.last_modified.as_deref(),
        )
        .await?;
        Ok(published)
    }

    /// The node's configuration, creating the node (open access, owned by
    /// the administrators of its host) when it is missing.
    async fn node_config(
        &self,
        cx: &Cx,
        svc: &Svc<'_>,
        key: &FeedKey,
    ) -> Result<NodeConfig, FeedError> {
        if let Ok(cfg) = svc.config(&key.node).await {
            return Ok(cfg);
        }
        let mut cfg = NodeConfig::service();
        cfg.title = format!("Feed {}", key.url);
        let p = &cx.stores().pubsub;
        match p
            .create_node(&key.service, &key.node, &cfg.to_stored())
            .await
        {
            Ok(()) => {
                let host = key.service.domain().strip_prefix("pubsub.").unwrap_or("");
                for admin in cx.config().admins.iter().filter(|a| a.domain() == host) {
                    p.set_affiliation(
                        &key.service,
                        &key.node,
                        admin,
                        Some(PubSubAffiliation::Owner),
                    )
                    .await?;
                }
                tracing::info!(node = %key.node, service = %key.service, "feed node created");
                Ok(cfg)
            }
            Err(StoreError::AlreadyExists) => svc
                .config(&key.node)
                .await
                .map_err(|e| FeedError::Publish(format!("{:?}", e.condition))),
            Err(e) => Err(e.into()),
        }
    }
}

/// A fetched document with its validators.
#[derive(Debug)]
struct Fetched {
    body: Vec<u8>,
    validators: Validators,
}

/// The client every feed shares: rustls with the *ring* provider and the
/// system's roots, HTTP/1.1, bounded redirects, the configured timeout.
fn http_client(config: &PubSubConfig) -> Result<reqwest::Client, FeedError> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for e in &native.errors {
        tracing::debug!(error = %e, "loading a system root certificate");
    }
    roots.add_parsable_certificates(native.certs);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| FeedError::Publish(format!("TLS setup: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .timeout(config.feed_timeout)
        .connect_timeout(config.feed_timeout.min(Duration::from_secs(10)))
        .redirect(reqwest::redirect::Policy::limited(5))
        .user_agent(concat!(
            "waxwing/",
            env!("CARGO_PKG_VERSION"),
            " (feed poller)"
        ))
        .build()?)
}

/// The wait after `failures` consecutive failures: twice the interval per
/// failure, capped.
pub fn backoff(interval: Duration, failures: u32, cap: Duration) -> Duration {
    let factor = 1u32.checked_shl(failures.min(20)).unwrap_or(u32::MAX);
    interval.saturating_mul(factor).min(cap.max(interval))
}

/// The stable item id of an entry id: hex SHA-256, 128 bits of it.
pub fn item_id(entry_id: &str) -> String {
    let digest = Sha256::digest(entry_id.as_bytes());
    digest[..16].iter().map(|b| format!("{b:02x}")).collect()
}

/// Parses an RSS or Atom document into `(item id, Atom entry)`, oldest
/// first. Entries without a source id get one from their link and title
/// (never a random one, which would republish them on every poll).
pub fn parse(body: &[u8], url: &str) -> Result<Vec<(String, Element)>, FeedError> {
    let parser = feed_rs::parser::Builder::new()
        .base_uri(Some(url))
        .id_generator(|links, title, uri| {
            let mut h = Sha256::new();
            for l in links {
                h.update(l.href.as_bytes());
                h.update([0]);
            }
            if let Some(t) = title {
                h.update(t.content.as_bytes());
            }
            h.update([0]);
            h.update(uri.unwrap_or("").as_bytes());
            let d = h.finalize();
            let hex: String = d[..16].iter().map(|b| format!("{b:02x}")).collect();
            format!("urn:waxwing:feed-entry:{hex}")
        })
        .build();
    let feed = parser
        .parse(body)
        .map_err(|e| FeedError::Parse(e.to_string()))?;
    let mut entries = feed.entries;
    // Feeds list newest first; dates, when every entry has one, decide.
    entries.reverse();
    if entries.iter().all(|e| e.published.or(e.updated).is_some()) {
        entries.sort_by_key(|e| e.published.or(e.updated));
    }
    let mut out: Vec<(String, Element)> = Vec::with_capacity(entries.len());
    for e in &entries {
        let id = item_id(&e.id);
        // A feed listing the same entry twice publishes it once.
        if out.iter().any(|(i, _)| *i == id) {
            continue;
        }
        out.push((id, atom_entry(e)));
    }
    Ok(out)
}

/// XML 1.0 allows no control characters but tab, newline and return.
fn clean(s: &str) -> String {
    let mut out: String = s
        .chars()
        .filter(|c| {
            matches!(c, '\t' | '\n' | '\r') || (*c >= ' ' && *c != '\u{FFFE}' && *c != '\u{FFFF}')
        })
        .collect();
    if out.len() > MAX_TEXT {
        let mut cut = MAX_TEXT;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
    }
    out
}

fn text_type(media: &str) -> &'static str {
    if media.contains("html") {
        "html"
    } else {
        "text"
    }
}

fn atom_text(name: &str, t: &feed_rs::model::Text) -> Element {
    Element::new(name, NS_ATOM)
        .with_attr("type", text_type(t.content_type.as_str()))
        .with_text(clean(&t.content))
}

fn timestamp(t: &feed_rs::model::Entry, published: bool) -> Option<String> {
    let at = if published {
        t.published
    } else {
        t.updated.or(t.published)
    };
    at.map(|d| d.format("%Y-%m-%dT%H:%M:%SZ").to_string())
}

/// One entry as an Atom `<entry/>` (RFC 4287, as XEP-0277 uses it).
pub fn atom_entry(e: &feed_rs::model::Entry) -> Element {
    let mut entry = Element::new("entry", NS_ATOM);
    match &e.title {
        Some(t) => entry.push_child(atom_text("title", t)),
        None => entry.push_child(Element::new("title", NS_ATOM).with_text("")),
    }
    entry.push_child(Element::new("id", NS_ATOM).with_text(clean(&e.id)));
    for l in e.links.iter().take(MAX_LINKS) {
        let mut link = Element::new("link", NS_ATOM)
            .with_attr("rel", l.rel.as_deref().unwrap_or("alternate"))
            .with_attr("href", clean(&l.href));
        if let Some(t) = &l.media_type {
            link.set_attr("type", clean(t));
        }
        if let Some(t) = &l.title {
            link.set_attr("title", clean(t));
        }
        entry.push_child(link);
    }
    if let Some(p) = timestamp(e, true) {
        entry.push_child(Element::new("published", NS_ATOM).with_text(p));
    }
    if let Some(u) = timestamp(e, false) {
        entry.push_child(Element::new("updated", NS_ATOM).with_text(u));
    }
    for a in e.authors.iter().take(MAX_LINKS) {
        let mut author = Element::new("author", NS_ATOM);
        author.push_child(
            Element::new("name", NS_ATOM).with_text(clean(a.name.as_deref().unwrap_or(""))),
        );
        if let Some(u) = &a.uri {
            author.push_child(Element::new("uri", NS_ATOM).with_text(clean(u)));
        }
        if let Some(m) = &a.email {
            author.push_child(Element::new("email", NS_ATOM).with_text(clean(m)));
        }
        entry.push_child(author);
    }
    if let Some(s) = &e.summary {
        entry.push_child(atom_text("summary", s));
    }
    if let Some(c) = &e.content {
        let mut content =
            Element::new("content", NS_ATOM).with_attr("type", text_type(c.content_type.as_ref()));
        if let Some(body) = &c.body {
            content = content.with_text(clean(body));
        } else if let Some(src) = &c.src {
            content.set_attr("src", clean(&src.href));
        }
        entry.push_child(content);
    }
    entry
}

#[cfg(test)]
mod tests {
    use super::*;

    const RSS: &str = r#"<?xml version="1.0"?>
<rss version="2.0"><channel><title>T</title><link>http://x.example/</link>
<description>d</description>
<item><title>Second</title><link>http://x.example/2</link><guid>urn:x:2</guid>
<pubDate>Tue, 02 Jan 2030 10:00:00 GMT</pubDate><description>two &amp; more</description>
<author>a@x.example (Ann)</author></item>
<item><title>First</title><link>http://x.example/1</link><guid>urn:x:1</guid>
<pubDate>Mon, 01 Jan 2030 10:00:00 GMT</pubDate><description>one</description></item>
</channel></rss>"#;

    const ATOM: &str = r#"<?xml version="1.0" encoding="utf-8"?>
<feed xmlns="http://www.w3.org/2005/Atom"><title>A</title><id>urn:feed</id>
<updated>2030-01-01T00:00:00Z</updated>
<entry><title type="html">&lt;b&gt;Hi&lt;/b&gt;</title><id>urn:a:1</id>
<link href="http://y.example/1"/><updated>2030-01-03T00:00:00Z</updated>
<author><name>Bo</name><uri>http://y.example/bo</uri></author>
<content type="html">&lt;p&gt;body&lt;/p&gt;</content></entry>
</feed>"#;

    fn child_text(e: &Element, name: &str) -> String {
        e.child(name, NS_ATOM).map(|c| c.text()).unwrap_or_default()
    }

    #[test]
    fn rss_items_become_atom_entries_oldest_first() {
        let entries = parse(RSS.as_bytes(), "http://x.example/rss").unwrap();
        assert_eq!(entries.len(), 2);
        let (id1, first) = &entries[0];
        let (id2, second) = &entries[1];
        assert_eq!(*id1, item_id("urn:x:1"));
        assert_eq!(*id2, item_id("urn:x:2"));
        assert_eq!(child_text(first, "title"), "First");
        assert_eq!(child_text(first, "id"), "urn:x:1");
        assert_eq!(child_text(second, "published"), "2030-01-02T10:00:00Z");
        assert_eq!(child_text(second, "updated"), "2030-01-02T10:00:00Z");
        assert!(second.to_xml().contains("two &amp; more"));
        let link = second.child("link", NS_ATOM).unwrap();
        assert_eq!(link.attr("href"), Some("http://x.example/2"));
        assert_eq!(link.attr("rel"), Some("alternate"));
        assert!(second.child("author", NS_ATOM).is_some());
    }

    #[test]
    fn atom_entries_keep_html_types_and_authors() {
        let entries = parse(ATOM.as_bytes(), "http://y.example/atom").unwrap();
        let (id, e) = &entries[0];
        assert_eq!(*id, item_id("urn:a:1"));
        let title = e.child("title", NS_ATOM).unwrap();
        assert_eq!(title.attr("type"), Some("html"));
        assert_eq!(title.text(), "<b>Hi</b>");
        let content = e.child("content", NS_ATOM).unwrap();
        assert_eq!(content.attr("type"), Some("html"));
        assert_eq!(content.text(), "<p>body</p>");
        let author = e.child("author", NS_ATOM).unwrap();
        assert_eq!(child_text(author, "name"), "Bo");
        assert_eq!(child_text(e, "updated"), "2030-01-03T00:00:00Z");
    }

    #[test]
    fn entries_without_guid_get_a_stable_id() {
        let doc = r#"<rss version="2.0"><channel><title>T</title><link>http://x/</link>
<description>d</description><item><title>No guid</title><link>http://x/a</link></item>
</channel></rss>"#;
        let a = parse(doc.as_bytes(), "http://x/rss").unwrap();
        let b = parse(doc.as_bytes(), "http://x/rss").unwrap();
        assert_eq!(a.len(), 1);
        assert_eq!(a[0].0, b[0].0);
    }

    #[test]
    fn garbage_is_a_parse_error() {
        assert!(matches!(
            parse(b"<html><body>nope</body></html>", "http://x/"),
            Err(FeedError::Parse(_))
        ));
    }

    #[test]
    fn control_characters_and_long_texts_are_cleaned() {
        assert_eq!(clean("a\u{1}b\tc"), "ab\tc");
        let long = "é".repeat(MAX_TEXT);
        let c = clean(&long);
        assert!(c.len() <= MAX_TEXT && c.is_char_boundary(c.len()));
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let i = Duration::from_secs(10);
        let cap = Duration::from_secs(100);
        assert_eq!(backoff(i, 1, cap), Duration::from_secs(20));
        assert_eq!(backoff(i, 2, cap), Duration::from_secs(40));
        assert_eq!(backoff(i, 5, cap), cap);
        assert_eq!(backoff(i, 500, cap), cap);
        // A cap below the interval never shortens it.
        assert_eq!(backoff(i, 3, Duration::from_secs(1)), i);
    }

    /// A one-shot HTTP responder on loopback: answers each connection with
    /// `response` and records the request heads it read.
    async fn http_stub(
        response: Vec<u8>,
    ) -> (String, Arc<Mutex<Vec<String>>>, tokio::task::JoinHandle<()>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/feed", listener.local_addr().unwrap());
        let heads = Arc::new(Mutex::new(Vec::new()));
        let seen = heads.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut sock, _)) = listener.accept().await else {
                    return;
                };
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match sock.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                seen.lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&head).to_lowercase());
                let _ = sock.write_all(&response).await;
                let _ = sock.shutdown().await;
            }
        });
        (url, heads, task)
    }

    fn feeds(max_bytes: u64) -> Feeds {
        let config = PubSubConfig {
            feed_min_interval: Duration::from_secs(1),
            feed_concurrency: 1,
            feed_timeout: Duration::from_secs(5),
            feed_max_bytes: max_bytes,
            feed_max_backoff: Duration::from_secs(60),
            max_items_per_reply: 256,
            feeds: Vec::new(),
            max_pep_nodes: 256,
        };
        Feeds::new(config, Arc::new(Caps::default()))
    }

    fn key(url: &str) -> FeedKey {
        FeedKey {
            service: BareJid::domain_only("pubsub.localhost").unwrap(),
            node: "n".into(),
            url: url.into(),
        }
    }

    #[tokio::test]
    async fn fetch_is_conditional_and_reads_validators() {
        let body = RSS.as_bytes();
        let mut resp = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nETag: \"v1\"\r\n\
             Last-Modified: Mon, 01 Jan 2030 00:00:00 GMT\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .into_bytes();
        resp.extend_from_slice(body);
        let (url, heads, task) = http_stub(resp).await;
        let f = feeds(1 << 20);
        let got = f
            .fetch(&key(&url), &Validators::default())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got.body, body);
        assert_eq!(got.validators.etag.as_deref(), Some("\"v1\""));
        assert_eq!(
            got.validators.last_modified.as_deref(),
            Some("Mon, 01 Jan 2030 00:00:00 GMT")
        );
        f.fetch(&key(&url), &got.validators).await.unwrap();
        let heads = heads.lock().unwrap().clone();
        assert!(!heads[0].contains("if-none-match"), "{}", heads[0]);
        assert!(heads[1].contains("if-none-match: \"v1\""), "{}", heads[1]);
        assert!(
            heads[1].contains("if-modified-since: mon, 01 jan 2030 00:00:00 gmt"),
            "{}",
            heads[1]
        );
        task.abort();
    }

    #[tokio::test]
    async fn not_modified_is_nothing_new() {
        let (url, _, task) =
            http_stub(b"HTTP/1.1 304 Not Modified\r\nConnection: close\r\n\r\n".to_vec()).await;
        let v = Validators {
            etag: Some("\"v1\"".into()),
            last_modified: None,
        };
        assert!(feeds(1024).fetch(&key(&url), &v).await.unwrap().is_none());
        task.abort();
    }

    #[tokio::test]
    async fn oversized_documents_and_errors_are_refused() {
        // Announced too large.
        let (url, _, task) = http_stub(
            b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\nConnection: close\r\n\r\n".to_vec(),
        )
        .await;
        let e = feeds(1000).fetch(&key(&url), &Validators::default()).await;
        assert!(matches!(e, Err(FeedError::TooLarge(1000))), "{e:?}");
        task.abort();
        // Too large as it streams, without a length.
        let mut resp = b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n".to_vec();
        resp.extend(std::iter::repeat_n(b'x', 5000));
        let (url, _, task) = http_stub(resp).await;
        let e = feeds(1000).fetch(&key(&url), &Validators::default()).await;
        assert!(matches!(e, Err(FeedError::TooLarge(1000))), "{e:?}");
        task.abort();
        let (url, _, task) = http_stub(
            b"HTTP/1.1 503 Busy\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_vec(),
        )
        .await;
        let e = feeds(1000).fetch(&key(&url), &Validators::default()).await;
        assert!(matches!(e, Err(FeedError::Status(503))), "{e:?}");
        task.abort();
    }
}
