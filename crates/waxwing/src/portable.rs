//! `waxwing export` and `waxwing import`: accounts and their data in the
//! XEP-0227 portable format (`urn:xmpp:pie:0`), which Prosody and ejabberd
//! also read and write.
//!
//! Per user: SCRAM secrets (`urn:xmpp:pie:0#scram`, never a password: we
//! do not have one), the roster (`jabber:iq:roster`), the vCard
//! (`vcard-temp`), private XML (`jabber:iq:private`), offline messages and
//! PEP nodes with their configuration and items (the pubsub#owner
//! `<configure/>` form and pubsub `<items/>`). Server-internal records
//! (FAST tokens, push registrations, the avatar hash, which is derived from
//! the vCard) stay out: they are credentials or caches, not user data.
//!
//! Like `waxwing user`, both work straight on the database.

use std::path::Path;

use anyhow::{Context, bail};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use waxwing_core::{Config, credentials};
use waxwing_proto::jid::{BareJid, Jid};
use waxwing_proto::ns;
use waxwing_proto::xml::{Element, Framer, Limits, StreamEvent, parse_stanza};
use waxwing_store::{PubSubItem, RosterItem, StoreError, StoredSecret, Stores, Subscription};

pub const NS_PIE: &str = "urn:xmpp:pie:0";
pub const NS_SCRAM: &str = "urn:xmpp:pie:0#scram";
const NS_ROSTER: &str = "jabber:iq:roster";
const NS_PRIVATE: &str = "jabber:iq:private";
const NS_VCARD: &str = "vcard-temp";
const NS_PUBSUB: &str = "http://jabber.org/protocol/pubsub";
const NS_PUBSUB_OWNER: &str = "http://jabber.org/protocol/pubsub#owner";
/// The private-XML key of the vCard (see `waxwing_modules::avatar`).
const VCARD_KEY: &str = "vcard-temp";

/// Which accounts an export covers.
pub enum Selection {
    All,
    Users(Vec<BareJid>),
}

/// The whole document for `selection`, grouped by host.
pub async fn export(
    config: &Config,
    stores: &Stores,
    selection: Selection,
) -> anyhow::Result<String> {
    let users = match selection {
        Selection::All => stores.accounts.list(None).await?,
        Selection::Users(users) => {
            for u in &users {
                if !stores.accounts.exists(u).await? {
                    bail!("{u} does not exist");
                }
            }
            users
        }
    };
    let mut root = Element::new("server-data", NS_PIE);
    for host in &config.hosts {
        let mine: Vec<_> = users.iter().filter(|u| u.domain() == host).collect();
        if mine.is_empty() {
            continue;
        }
        let mut h = Element::new("host", NS_PIE).with_attr("jid", host.as_str());
        for user in mine {
            h.push_child(export_user(stores, user).await?);
        }
        root.push_child(h);
    }
    Ok(format!(
        "<?xml version='1.0' encoding='UTF-8'?>\n{}\n",
        root.to_xml()
    ))
}

async fn export_user(stores: &Stores, user: &BareJid) -> anyhow::Result<Element> {
    let mut u = Element::new("user", NS_PIE).with_attr("name", user.local().unwrap_or_default());
    for s in stores.accounts.secrets(user).await?.unwrap_or_default() {
        // XEP-0227 has SCRAM credentials only; a DIGEST-MD5 secret is
        // re-made from the password on the importing server, if at all.
        if !s.mechanism.starts_with("SCRAM-") {
            continue;
        }
        u.push_child(
            Element::new("scram-credentials", NS_SCRAM)
                .with_attr("mechanism", s.mechanism.as_str())
                .with_child(
                    Element::new("iter-count", NS_SCRAM).with_text(s.iterations.to_string()),
                )
                .with_child(Element::new("salt", NS_SCRAM).with_text(B64.encode(&s.salt)))
                .with_child(
                    Element::new("server-key", NS_SCRAM).with_text(B64.encode(&s.server_key)),
                )
                .with_child(
                    Element::new("stored-key", NS_SCRAM).with_text(B64.encode(&s.stored_key)),
                ),
        );
    }

    let mut roster = Element::new("query", NS_ROSTER);
    for item in stores.roster.items(user).await? {
        if !item.in_roster {
            continue;
        }
        let mut el = Element::new("item", NS_ROSTER)
            .with_attr("jid", item.contact.to_string())
            .with_attr("subscription", item.subscription.as_str());
        if let Some(name) = &item.name {
            el.set_attr("name", name.as_str());
        }
        if item.ask {
            el.set_attr("ask", "subscribe");
        }
        if item.approved {
            el.set_attr("approved", "true");
        }
        for g in &item.groups {
            el.push_child(Element::new("group", NS_ROSTER).with_text(g.as_str()));
        }
        roster.push_child(el);
    }
    if roster.has_children() {
        u.push_child(roster);
    }

    let mut private = Element::new("query", NS_PRIVATE);
    for key in stores.private_xml.keys(user).await? {
        let Some(xml) = stores.private_xml.get(user, &key).await? else {
            continue;
        };
        let is_client_key = key.starts_with('{');
        if key != VCARD_KEY && !is_client_key {
            continue; // server-internal (FAST tokens, push, avatar hash)
        }
        let el = parse_stanza(&xml, ns::CLIENT)
            .map_err(|e| anyhow::anyhow!("stored {key} of {user} is not XML: {e:?}"))?;
        if key == VCARD_KEY {
            u.push_child(el);
        } else {
            private.push_child(el);
        }
    }
    if private.has_children() {
        u.push_child(private);
    }

    let offline = stores.offline.list(user).await?;
    if !offline.is_empty() {
        let mut box_ = Element::new("offline-messages", NS_PIE);
        for m in offline {
            match parse_stanza(&m.stanza, ns::CLIENT) {
                Ok(el) => box_.push_child(el),
                Err(e) => {
                    tracing::warn!(%user, error = ?e, "skipping an unreadable offline message")
                }
            }
        }
        u.push_child(box_);
    }

    let nodes = stores.pubsub.nodes(user).await?;
    if !nodes.is_empty() {
        let mut owner = Element::new("pubsub", NS_PUBSUB_OWNER);
        let mut items_el = Element::new("pubsub", NS_PUBSUB);
        for node in nodes {
            let mut configure =
                Element::new("configure", NS_PUBSUB_OWNER).with_attr("node", node.as_str());
            if let Some(form) = stores.pubsub.node_config(user, &node).await?
                && let Ok(x) = parse_stanza(&form, ns::CLIENT)
            {
                configure.push_child(x);
            }
            owner.push_child(configure);
            let mut items = Element::new("items", NS_PUBSUB).with_attr("node", node.as_str());
            // Oldest first, so that an import publishing in document order
            // recreates the same order.
            for item in stores.pubsub.items(user, &node).await?.into_iter().rev() {
                let mut el = Element::new("item", NS_PUBSUB)
                    .with_attr("id", item.id.as_str())
                    .with_attr("publisher", item.publisher.to_string());
                match parse_stanza(&item.payload, ns::CLIENT) {
                    Ok(p) => el.push_child(p),
                    Err(e) => {
                        tracing::warn!(%user, %node, error = ?e, "skipping an unreadable item");
                        continue;
                    }
                }
                items.push_child(el);
            }
            items_el.push_child(items);
        }
        u.push_child(owner);
        u.push_child(items_el);
    }
    Ok(u)
}

/// Parses a whole XEP-0227 document (an XML declaration is allowed; DTDs,
/// entities and comments are refused like on the wire).
pub fn parse_document(text: &str) -> anyhow::Result<Element> {
    let mut body = text.trim_start_matches('\u{feff}').trim_start();
    if body.starts_with("<?xml") {
        let end = body.find("?>").context("unterminated XML declaration")?;
        body = &body[end + 2..];
    }
    let header = format!(
        "<stream:stream xmlns='{NS_PIE}' xmlns:stream='{}'>",
        ns::STREAM
    );
    let limits = Limits {
        max_stanza_bytes: header.len() + body.len() + 1,
        max_depth: 64,
        ..Limits::default()
    };
    let mut framer = Framer::new(limits, NS_PIE);
    framer.feed(header.as_bytes());
    framer.feed(body.as_bytes());
    let bad = |e| anyhow::anyhow!("not a well-formed XEP-0227 document: {e:?}");
    match framer.next_event().map_err(bad)? {
        Some(StreamEvent::Open(_)) => {}
        _ => bail!("not a well-formed XEP-0227 document"),
    }
    match framer.next_event().map_err(bad)? {
        Some(StreamEvent::Stanza(el)) if el.is("server-data", NS_PIE) => Ok(el),
        Some(StreamEvent::Stanza(el)) => bail!(
            "expected <server-data xmlns='{NS_PIE}'/>, found <{}/>",
            el.name
        ),
        _ => bail!("not a complete XEP-0227 document"),
    }
}

/// What an import did.
#[derive(Debug, Default)]
pub struct Imported {
    pub users: Vec<BareJid>,
    /// Accounts left alone because they exist, or could not be read.
    pub skipped: Vec<(String, String)>,
}

/// Imports every user of `doc` whose host this server serves. Existing
/// accounts are skipped (and reported), never merged into.
pub async fn import(config: &Config, stores: &Stores, doc: &Element) -> anyhow::Result<Imported> {
    let mut out = Imported::default();
    for host in doc.children().filter(|c| c.is("host", NS_PIE)) {
        let domain = host.attr("jid").unwrap_or_default();
        for user in host.children().filter(|c| c.is("user", NS_PIE)) {
            let name = user.attr("name").unwrap_or_default();
            let label = format!("{name}@{domain}");
            if !config.is_local_host(domain) {
                out.skipped
                    .push((label, "not one of this server's hosts".into()));
                continue;
            }
            let jid = match BareJid::new(Some(name), domain) {
                Ok(j) => j,
                Err(_) => {
                    out.skipped.push((label, "not a valid JID".into()));
                    continue;
                }
            };
            match import_user(config, stores, &jid, user).await {
                Ok(()) => out.users.push(jid),
                Err(e) => out.skipped.push((label, format!("{e:#}"))),
            }
        }
    }
    Ok(out)
}

fn scram_secret(el: &Element) -> anyhow::Result<StoredSecret> {
    let text = |name: &str| -> anyhow::Result<String> {
        Ok(el
            .child(name, NS_SCRAM)
            .with_context(|| format!("scram-credentials without <{name}/>"))?
            .text()
            .trim()
            .to_string())
    };
    let mechanism = el
        .attr("mechanism")
        .context("scram-credentials without a mechanism")?;
    if !matches!(mechanism, "SCRAM-SHA-1" | "SCRAM-SHA-256") {
        bail!("unsupported SCRAM mechanism {mechanism}");
    }
    let b64 = |name: &str| -> anyhow::Result<Vec<u8>> {
        B64.decode(text(name)?)
            .with_context(|| format!("<{name}/> is not base64"))
    };
    Ok(StoredSecret {
        mechanism: mechanism.to_string(),
        salt: b64("salt")?,
        iterations: text("iter-count")?.parse().context("bad <iter-count/>")?,
        stored_key: b64("stored-key")?,
        server_key: b64("server-key")?,
    })
}

async fn import_user(
    config: &Config,
    stores: &Stores,
    jid: &BareJid,
    user: &Element,
) -> anyhow::Result<()> {
    let mut secrets = Vec::new();
    for s in user
        .children()
        .filter(|c| c.is("scram-credentials", NS_SCRAM))
    {
        secrets.push(scram_secret(s)?);
    }
    if secrets.is_empty() {
        // XEP-0227 also allows a plaintext password attribute (Prosody
        // writes one for plaintext storage); we keep only its SCRAM secrets.
        let Some(pw) = user.attr("password") else {
            bail!("neither SCRAM credentials nor a password");
        };
        secrets = credentials::make_secrets(pw, config.scram_iterations)
            .and_then(|s| credentials::with_digest(config, jid, pw, s))
            .map_err(|e| anyhow::anyhow!("cannot derive SCRAM secrets: {e:?}"))?;
    }
    match stores.accounts.create(jid, &secrets).await {
        Ok(()) => {}
        Err(StoreError::AlreadyExists) => bail!("the account already exists"),
        Err(e) => return Err(e.into()),
    }

    for query in user.children().filter(|c| c.is("query", NS_ROSTER)) {
        for item in query.children().filter(|c| c.is("item", NS_ROSTER)) {
            let Some(contact) = item.attr("jid").and_then(|j| BareJid::parse(j).ok()) else {
                continue;
            };
            let mut r = RosterItem::new(contact);
            r.name = item.attr("name").map(str::to_string);
            r.subscription = item
                .attr("subscription")
                .and_then(Subscription::parse)
                .unwrap_or_default();
            r.ask = item.attr("ask") == Some("subscribe");
            r.approved = matches!(item.attr("approved"), Some("true" | "1"));
            r.groups = item
                .children()
                .filter(|g| g.is("group", NS_ROSTER))
                .map(|g| g.text())
                .collect();
            stores.roster.put(jid, &r).await?;
        }
    }
    if let Some(vcard) = user.child("vCard", NS_VCARD) {
        stores
            .private_xml
            .set(jid, VCARD_KEY, &vcard.to_xml())
            .await?;
    }
    for query in user.children().filter(|c| c.is("query", NS_PRIVATE)) {
        for el in query.children() {
            let key = format!("{{{}}}{}", el.ns, el.name);
            stores.private_xml.set(jid, &key, &el.to_xml()).await?;
        }
    }
    if let Some(offline) = user.child("offline-messages", NS_PIE) {
        for m in offline.children().filter(|c| c.is("message", ns::CLIENT)) {
            stores.offline.push(jid, &m.to_xml(), u32::MAX).await?;
        }
    }
    let mut configs = std::collections::HashMap::new();
    for owner in user.children().filter(|c| c.is("pubsub", NS_PUBSUB_OWNER)) {
        for c in owner
            .children()
            .filter(|c| c.is("configure", NS_PUBSUB_OWNER))
        {
            if let Some(node) = c.attr("node") {
                let form = c.child("x", "jabber:x:data").map(Element::to_xml);
                configs.insert(node.to_string(), form);
            }
        }
    }
    for ps in user.children().filter(|c| c.is("pubsub", NS_PUBSUB)) {
        for items in ps.children().filter(|c| c.is("items", NS_PUBSUB)) {
            let Some(node) = items.attr("node") else {
                continue;
            };
            let form = configs.remove(node).flatten();
            create_node(stores, jid, node, form.as_deref()).await?;
            for item in items.children().filter(|c| c.is("item", NS_PUBSUB)) {
                let Some(payload) = item.first_child() else {
                    continue;
                };
                let publisher = item
                    .attr("publisher")
                    .and_then(|p| Jid::parse(p).ok())
                    .unwrap_or_else(|| Jid::from(jid.clone()));
                let stored = PubSubItem {
                    id: item
                        .attr("id")
                        .map_or_else(waxwing_core::random_id, str::to_string),
                    publisher,
                    payload: payload.to_xml(),
                };
                stores.pubsub.publish(jid, node, &stored, None).await?;
            }
        }
    }
    // Nodes configured but without items.
    for (node, form) in configs {
        create_node(stores, jid, &node, form.as_deref()).await?;
    }
    Ok(())
}

async fn create_node(
    stores: &Stores,
    jid: &BareJid,
    node: &str,
    form: Option<&str>,
) -> anyhow::Result<()> {
    // An empty form means "the defaults" to the pubsub module, which fills
    // in every field it lacks when it reads the node.
    let empty = "<x xmlns='jabber:x:data' type='submit'/>";
    match stores
        .pubsub
        .create_node(jid, node, form.unwrap_or(empty))
        .await
    {
        Ok(()) | Err(StoreError::AlreadyExists) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Reads `path`, imports it, and reports.
pub async fn import_file(
    config: &Config,
    stores: &Stores,
    path: &Path,
) -> anyhow::Result<Imported> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let doc = parse_document(&text)?;
    import(config, stores, &doc).await
}
