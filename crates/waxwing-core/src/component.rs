//! XEP-0114 external components as the router sees them: one slot per
//! configured component domain, holding the queue of its live stream, if
//! any. The stream itself is `stream/component.rs`.
//!
//! Every stanza to the component's domain (or any JID under it) goes to
//! that queue. While the component is disconnected, or its queue is full,
//! the stanza bounces (`service-unavailable`, `resource-constraint`), like a
//! service that is not there, rather than waiting: the router never awaits a
//! peer. A component that connects again replaces its old stream, which
//! ends with `conflict`.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio_util::sync::CancellationToken;
use waxwing_proto::stanza::{Condition, StanzaError};
use waxwing_proto::xml::Element;

use crate::config::ext::ComponentConfig;
use crate::queue::{Outq, Refused};

/// The live stream of a component.
struct Live {
    id: u64,
    queue: Outq,
    /// Cancelled when a newer stream of the same component takes over.
    replaced: CancellationToken,
}

struct Slot {
    config: ComponentConfig,
    live: Mutex<Option<Live>>,
}

/// The configured components, by domain.
#[derive(Default)]
pub(crate) struct Components {
    slots: HashMap<String, Slot>,
    next_id: AtomicU64,
}

/// What became of a stanza offered to a component.
pub(crate) enum Offer {
    Queued,
    /// Not queued; answer the sender with this error.
    Bounce(Element, StanzaError),
}

/// A stream's claim on its component's slot, from [`Components::attach`].
pub(crate) struct Attached {
    pub id: u64,
    pub replaced: CancellationToken,
}

impl Components {
    pub(crate) fn new(configs: &[ComponentConfig]) -> Self {
        let slots = configs
            .iter()
            .map(|c| {
                (
                    c.domain.clone(),
                    Slot {
                        config: c.clone(),
                        live: Mutex::new(None),
                    },
                )
            })
            .collect();
        Components {
            slots,
            next_id: AtomicU64::new(1),
        }
    }

    pub(crate) fn contains(&self, domain: &str) -> bool {
        self.slots.contains_key(domain)
    }

    pub(crate) fn config(&self, domain: &str) -> Option<&ComponentConfig> {
        self.slots.get(domain).map(|s| &s.config)
    }

    /// Domains and disco names of every configured component.
    pub(crate) fn names(&self) -> impl Iterator<Item = (&str, &str)> {
        self.slots
            .iter()
            .map(|(d, s)| (d.as_str(), s.config.name.as_str()))
    }

    /// Whether a stream of `domain` is authenticated right now.
    #[cfg(test)]
    pub(crate) fn is_connected(&self, domain: &str) -> bool {
        self.slots
            .get(domain)
            .is_some_and(|s| lock(&s.live).as_ref().is_some_and(|l| !l.queue.is_closed()))
    }

    /// Queues `stanza` for the component serving `domain`.
    pub(crate) fn offer(&self, domain: &str, stanza: Element) -> Offer {
        let queue = self
            .slots
            .get(domain)
            .and_then(|s| lock(&s.live).as_ref().map(|l| l.queue.clone()));
        let Some(queue) = queue else {
            return Offer::Bounce(stanza, unavailable());
        };
        match queue.push(stanza) {
            Ok(()) => Offer::Queued,
            Err(Refused::Full(mut v)) => Offer::Bounce(
                v.remove(0),
                StanzaError::wait(Condition::ResourceConstraint)
                    .with_text("the component is not keeping up"),
            ),
            Err(Refused::Closed(mut v)) => Offer::Bounce(v.remove(0), unavailable()),
        }
    }

    /// Makes `queue` the route to `domain`'s component; a stream that held
    /// it before sees its `replaced` token cancelled.
    pub(crate) fn attach(&self, domain: &str, queue: Outq) -> Option<Attached> {
        let slot = self.slots.get(domain)?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let replaced = CancellationToken::new();
        let old = lock(&slot.live).replace(Live {
            id,
            queue,
            replaced: replaced.clone(),
        });
        if let Some(old) = old {
            old.replaced.cancel();
        }
        Some(Attached { id, replaced })
    }

    /// Forgets stream `id` as `domain`'s route, unless a newer one took over.
    pub(crate) fn detach(&self, domain: &str, id: u64) {
        if let Some(slot) = self.slots.get(domain) {
            let mut live = lock(&slot.live);
            if live.as_ref().is_some_and(|l| l.id == id) {
                *live = None;
            }
        }
    }
}

fn unavailable() -> StanzaError {
    StanzaError::cancel(Condition::ServiceUnavailable)
        .with_text("the component serving this domain is not connected")
}

/// Poison-tolerant: nothing under this lock can leave the slot half-changed.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::outbound;

    fn table() -> Components {
        Components::new(&[ComponentConfig {
            domain: "gw.example".into(),
            secret: "0123456789abcdef".into(),
            name: "Gateway".into(),
        }])
    }

    fn msg() -> Element {
        Element::new("message", waxwing_proto::ns::CLIENT).with_attr("to", "gw.example")
    }

    #[test]
    fn disconnected_component_bounces_service_unavailable() {
        let t = table();
        match t.offer("gw.example", msg()) {
            Offer::Bounce(_, e) => assert_eq!(e.condition, Condition::ServiceUnavailable),
            Offer::Queued => panic!("queued with nobody connected"),
        }
    }

    #[test]
    fn a_new_stream_replaces_the_old_and_the_old_cannot_detach_it() {
        let t = table();
        let (q1, _rx1) = outbound(4, 4);
        let first = t.attach("gw.example", q1).unwrap();
        let (q2, mut rx2) = outbound(4, 4);
        let second = t.attach("gw.example", q2).unwrap();
        assert!(first.replaced.is_cancelled());
        assert!(!second.replaced.is_cancelled());
        t.detach("gw.example", first.id);
        assert!(t.is_connected("gw.example"));
        assert!(matches!(t.offer("gw.example", msg()), Offer::Queued));
        assert!(rx2.try_recv().is_some());
        t.detach("gw.example", second.id);
        assert!(!t.is_connected("gw.example"));
    }

    #[test]
    fn a_full_queue_bounces_resource_constraint() {
        let t = table();
        let (q, _rx) = outbound(1, 1);
        t.attach("gw.example", q).unwrap();
        assert!(matches!(t.offer("gw.example", msg()), Offer::Queued));
        match t.offer("gw.example", msg()) {
            Offer::Bounce(_, e) => assert_eq!(e.condition, Condition::ResourceConstraint),
            Offer::Queued => panic!("a full queue took more"),
        }
    }
}
