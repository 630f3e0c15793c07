//! The remote half of the public room directory: a bounded, polite crawler
//! that indexes the public rooms of configured remote MUC services over
//! federation (disco#items of the service, then disco#info of each room).
//!
//! One task per local MUC service, started lazily with a clone of `Cx`.
//! Requests go out through `cx.route` from the service's own domain; the
//! answers come back to the service's `handle_stanza`, which hands them to
//! [`Crawler::deliver`] before any other processing. The pending map is a
//! `std` mutex never held across an `.await`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;
use waxwing_core::hooks::Cx;
use waxwing_proto::ns;
use waxwing_proto::xml::Element;

use super::channel_search::Listing;

/// Each request's answer is awaited at most this long.
const IQ_TIMEOUT: Duration = Duration::from_secs(10);
/// At most ~5 requests a second to a remote service.
const IQ_SPACING: Duration = Duration::from_millis(200);

/// Crawler state shared by a service and its crawl task.
pub struct Crawler {
    /// Our MUC service domain: the `from` of every request.
    domain: String,
    services: Vec<String>,
    interval: Duration,
    max_rooms: usize,
    started: AtomicBool,
    next_id: AtomicU64,
    /// Request id → (the address asked, the waiter).
    pending: Mutex<HashMap<String, (String, oneshot::Sender<Element>)>>,
    /// The last successful crawl of each remote service.
    listings: Mutex<HashMap<String, Vec<Listing>>>,
}

impl Crawler {
    pub fn new(domain: &str, services: Vec<String>, interval: Duration, max_rooms: usize) -> Self {
        Crawler {
            domain: domain.to_string(),
            services,
            interval,
            max_rooms,
            started: AtomicBool::new(false),
            next_id: AtomicU64::new(0),
            pending: Mutex::new(HashMap::new()),
            listings: Mutex::new(HashMap::new()),
        }
    }

    /// Starts the crawl task once, if there is anything to crawl.
    pub fn start(self: &Arc<Self>, cx: &Cx) {
        if self.services.is_empty() || self.started.swap(true, Ordering::AcqRel) {
            return;
        }
        let me = self.clone();
        let cx = cx.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(me.interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                for service in &me.services {
                    me.crawl(&cx, service).await;
                }
            }
        });
    }

    /// Hands an IQ result or error to the request waiting for it. Returns
    /// the stanza back when nobody waits for it.
    pub fn deliver(&self, stanza: Element) -> Option<Element> {
        if stanza.name != "iq" || !matches!(stanza.attr("type"), Some("result" | "error")) {
            return Some(stanza);
        }
        let Some(id) = stanza.attr("id") else {
            return Some(stanza);
        };
        if stanza.attr("to") != Some(self.domain.as_str()) {
            return Some(stanza);
        }
        let from = stanza.attr("from").unwrap_or_default();
        let waiter = {
            let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            match pending.get(id) {
                Some((asked, _)) if asked == from => pending.remove(id),
                _ => None,
            }
        };
        match waiter {
            Some((_, tx)) => {
                let _ = tx.send(stanza);
                None
            }
            None => Some(stanza),
        }
    }

    /// Remote listings of every crawled service.
    pub fn listings(&self) -> Vec<Listing> {
        self.listings
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .flatten()
            .cloned()
            .collect()
    }

    /// Sends a disco query and awaits its result payload (`None` on error
    /// or timeout).
    async fn disco(&self, cx: &Cx, to: &str, query_ns: &str) -> Option<Element> {
        let id = format!("crawl-{}", self.next_id.fetch_add(1, Ordering::Relaxed));
        let (tx, rx) = oneshot::channel();
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.clone(), (to.to_string(), tx));
        let iq = Element::new("iq", ns::CLIENT)
            .with_attr("type", "get")
            .with_attr("from", self.domain.clone())
            .with_attr("to", to)
            .with_attr("id", id.clone())
            .with_child(Element::new("query", query_ns));
        cx.route(iq).await;
        let answer = tokio::time::timeout(IQ_TIMEOUT, rx).await;
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
        let reply = answer.ok()?.ok()?;
        if reply.attr("type") != Some("result") {
            return None;
        }
        reply.child("query", query_ns).cloned()
    }

    async fn crawl(&self, cx: &Cx, service: &str) {
        let Some(items) = self.disco(cx, service, ns::DISCO_ITEMS).await else {
            tracing::info!(service, "crawl: disco#items failed, keeping old listings");
            return;
        };
        let rooms: Vec<String> = items
            .children()
            .filter(|i| i.is("item", ns::DISCO_ITEMS))
            .filter_map(|i| i.attr("jid"))
            .filter(|j| j.contains('@'))
            .take(self.max_rooms)
            .map(str::to_string)
            .collect();
        let mut found = Vec::new();
        for room in rooms {
            tokio::time::sleep(IQ_SPACING).await;
            if let Some(info) = self.disco(cx, &room, ns::DISCO_INFO).await {
                found.extend(listing(&room, &info));
            }
        }
        tracing::info!(service, rooms = found.len(), "crawl: indexed");
        self.listings
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(service.to_string(), found);
    }
}

/// A room's listing from its disco#info, if it is public.
pub fn listing(address: &str, info: &Element) -> Option<Listing> {
    let features: Vec<&str> = info
        .children()
        .filter(|f| f.is("feature", ns::DISCO_INFO))
        .filter_map(|f| f.attr("var"))
        .collect();
    let has = |f: &str| features.contains(&f);
    if !has("muc_public") || has("muc_hidden") {
        return None;
    }
    let identity_name = info
        .children()
        .find(|i| i.is("identity", ns::DISCO_INFO))
        .and_then(|i| i.attr("name"))
        .unwrap_or_default()
        .to_string();
    let mut fields: HashMap<String, String> = HashMap::new();
    if let Some(x) = info.children().find(|x| x.is("x", ns::DATA_FORMS)) {
        for f in x.children().filter(|f| f.name == "field") {
            if let (Some(var), Some(v)) = (f.attr("var"), f.children().find(|v| v.name == "value"))
            {
                fields.insert(var.to_string(), v.text());
            }
        }
    }
    let field = |k: &str| fields.get(k).cloned().unwrap_or_default();
    let name = if identity_name.is_empty() {
        address.split('@').next().unwrap_or_default().to_string()
    } else {
        identity_name
    };
    Some(Listing {
        address: address.to_string(),
        name,
        description: field("muc#roominfo_description"),
        language: field("muc#roominfo_lang"),
        nusers: field("muc#roominfo_occupants").trim().parse().unwrap_or(0),
        is_open: !has("muc_membersonly") && !has("muc_passwordprotected"),
        anonymity: if has("muc_nonanonymous") {
            "non-anonymous"
        } else {
            "semi-anonymous"
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(features: &[&str], fields: &[(&str, &str)]) -> Element {
        let mut q = Element::new("query", ns::DISCO_INFO).with_child(
            Element::new("identity", ns::DISCO_INFO)
                .with_attr("category", "conference")
                .with_attr("type", "text")
                .with_attr("name", "The Lounge"),
        );
        for f in features {
            q.push_child(Element::new("feature", ns::DISCO_INFO).with_attr("var", *f));
        }
        let mut x = Element::new("x", ns::DATA_FORMS).with_attr("type", "result");
        for (var, v) in fields {
            x.push_child(
                Element::new("field", ns::DATA_FORMS)
                    .with_attr("var", *var)
                    .with_child(Element::new("value", ns::DATA_FORMS).with_text(*v)),
            );
        }
        q.with_child(x)
    }

    #[test]
    fn public_rooms_are_listed_from_their_roominfo() {
        let l = listing(
            "lounge@conference.b.example",
            &info(
                &[
                    "muc_public",
                    "muc_open",
                    "muc_unsecured",
                    "muc_nonanonymous",
                ],
                &[
                    ("muc#roominfo_description", "Talk"),
                    ("muc#roominfo_lang", "en"),
                    ("muc#roominfo_occupants", "7"),
                ],
            ),
        )
        .unwrap();
        assert_eq!(l.name, "The Lounge");
        assert_eq!(l.description, "Talk");
        assert_eq!(l.language, "en");
        assert_eq!(l.nusers, 7);
        assert!(l.is_open);
        assert_eq!(l.anonymity, "non-anonymous");
        let l = listing(
            "x@c.b.example",
            &info(&["muc_public", "muc_membersonly"], &[]),
        )
        .unwrap();
        assert!(!l.is_open);
        assert_eq!(l.nusers, 0);
        assert!(listing("x@c.b.example", &info(&["muc_hidden"], &[])).is_none());
        assert!(listing("x@c.b.example", &info(&["muc_public", "muc_hidden"], &[])).is_none());
    }

    #[test]
    fn only_expected_answers_are_delivered() {
        let c = Crawler::new("conference.a.example", vec![], Duration::from_secs(1), 10);
        let (tx, mut rx) = oneshot::channel();
        c.pending
            .lock()
            .unwrap()
            .insert("crawl-0".into(), ("conference.b.example".into(), tx));
        let answer = |from: &str, to: &str| {
            Element::new("iq", ns::CLIENT)
                .with_attr("type", "result")
                .with_attr("id", "crawl-0")
                .with_attr("from", from)
                .with_attr("to", to)
        };
        // From someone else, or to a room: not the crawler's.
        assert!(
            c.deliver(answer("evil.example", "conference.a.example"))
                .is_some()
        );
        assert!(
            c.deliver(answer("conference.b.example", "r@conference.a.example"))
                .is_some()
        );
        assert!(rx.try_recv().is_err());
        assert!(
            c.deliver(answer("conference.b.example", "conference.a.example"))
                .is_none()
        );
        assert!(rx.try_recv().is_ok());
        assert!(c.pending.lock().unwrap().is_empty());
    }
}
