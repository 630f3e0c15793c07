//! The c2s stream features, built once per distinct negotiation state and
//! kept serialized.
//!
//! A login receives features three times (before STARTTLS, before SASL,
//! after SASL), and building each as an element tree and serializing it
//! cost about 20,000 instructions and 50 allocations (session 27's
//! profile). What they say depends only on the server's startup
//! configuration (features never read the reloadable settings), the
//! modules' registered features (fixed once the server runs: see
//! [`StreamFeature`](crate::hooks::StreamFeature)) and a handful of facts
//! about the connection, gathered in a [`FeatureKey`]. [`build`] reads
//! nothing else, so equal keys give equal features: the cache keeps the
//! bytes per key and a connection copies them.
//!
//! The keys are bounded by the configuration (local hosts × transports ×
//! a few flags × the mechanism lists those allow); [`MAX_ENTRIES`] caps
//! the map anyway, and a key beyond it is built as before, uncached.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use waxwing_proto::ns;
use waxwing_proto::sasl::ChannelBindingTypes;
use waxwing_proto::xml::Element;

use super::link::Outgoing;
use super::sasl2;
use crate::router::Server;
use crate::session::Transport;
use crate::stream::csi;
use crate::stream::sm;

/// More distinct keys than a configuration can produce in practice.
const MAX_ENTRIES: usize = 256;

/// Everything about a connection that the features depend on.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) struct FeatureKey {
    /// The framing the bytes are encoded in.
    pub transport: Transport,
    /// Authenticated: the post-SASL set (bind, sm, csi …).
    pub authenticated: bool,
    /// The stream is encrypted.
    pub tls: bool,
    /// STARTTLS may be offered.
    pub starttls: bool,
    /// XEP-0138 compression may be offered (post-SASL only).
    pub compress: bool,
    /// Channel-binding types the stream has (`tls-exporter`,
    /// `tls-server-end-point`).
    pub cb_exporter: bool,
    pub cb_end_point: bool,
    /// The SASL mechanisms offered, in order (pre-SASL only).
    pub mechanisms: Vec<&'static str>,
    /// The stream's host (pre-SASL only: registration, invitations and
    /// FAST depend on the host's account source). Always one of the
    /// configured hosts: a stream to any other host ends at its header.
    pub host: Option<Box<str>>,
}

impl FeatureKey {
    fn cb(&self) -> ChannelBindingTypes {
        ChannelBindingTypes {
            tls_exporter: self.cb_exporter,
            tls_server_end_point: self.cb_end_point,
        }
    }
}

/// Serialized features per key, one per server.
#[derive(Default)]
pub(crate) struct FeatureCache {
    map: Mutex<HashMap<FeatureKey, Arc<Outgoing>>>,
}

impl FeatureCache {
    /// The features for `key`, encoded by `encode` (the connection's
    /// transport: equal for equal `key.transport`) when not cached yet.
    pub(super) fn get(
        &self,
        server: &Arc<Server>,
        key: FeatureKey,
        encode: impl FnOnce(&Element, &mut Outgoing),
    ) -> Arc<Outgoing> {
        if let Some(hit) = self.lock().get(&key) {
            return hit.clone();
        }
        // Built outside the lock: modules' feature callbacks run here.
        let mut out = Outgoing::default();
        encode(&build(server, &key), &mut out);
        let out = Arc::new(out);
        let mut map = self.lock();
        if map.len() < MAX_ENTRIES {
            map.entry(key).or_insert_with(|| out.clone());
        }
        out
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<FeatureKey, Arc<Outgoing>>> {
        // Only whole inserts and lookups happen under the lock.
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The `<stream:features/>` for `key` (RFC 6120 §4.3.2), reading nothing
/// of the connection but `key`.
pub(super) fn build(server: &Arc<Server>, key: &FeatureKey) -> Element {
    let config = &server.config;
    let mut features = Element::new("features", ns::STREAM);
    if key.authenticated {
        features.push_child(Element::new("bind", ns::BIND));
        features.push_child(Element::new("sm", sm::NS));
        features.push_child(Element::new("csi", csi::NS));
        features.push_child(
            Element::new("session", ns::SESSION).with_child(Element::new("optional", ns::SESSION)),
        );
        if key.compress {
            features.push_child(compression_feature());
        }
        for el in server.stream_features() {
            features.push_child(el);
        }
        return features;
    }
    let host = key.host.as_deref().unwrap_or_default();
    if key.starttls {
        let mut starttls = Element::new("starttls", ns::TLS);
        if config.require_encryption {
            starttls.push_child(Element::new("required", ns::TLS));
        }
        features.push_child(starttls);
    }
    let sasl_allowed = key.tls || !config.require_encryption;
    if !sasl_allowed {
        return features;
    }
    let cb = key.cb();
    let mechanisms = &key.mechanisms;
    let mut mechs = Element::new("mechanisms", ns::SASL);
    for m in mechanisms {
        mechs.push_child(Element::new("mechanism", ns::SASL).with_text(*m));
    }
    features.push_child(mechs);
    if cb.any() && mechanisms.iter().any(|m| m.ends_with("-PLUS")) {
        // XEP-0440: tell clients which binding types -PLUS supports.
        let mut types = Element::new("sasl-channel-binding", ns::SASL_CB);
        for (ty, have) in [
            ("tls-exporter", cb.tls_exporter),
            ("tls-server-end-point", cb.tls_server_end_point),
        ] {
            if have {
                types
                    .push_child(Element::new("channel-binding", ns::SASL_CB).with_attr("type", ty));
            }
        }
        features.push_child(types);
    }
    if config.registration_open && !config.auth.is_anonymous(host) {
        features.push_child(Element::new("register", ns::REGISTER_FEATURE));
    }
    if config.invites.enabled
        && crate::invites::Invites::new(server.clone()).host_has_internal_accounts(host)
    {
        // XEP-0445 §3, and the XEP-0401 0.3 feature older clients look for.
        features.push_child(Element::new("register", crate::invites::NS_IBR_TOKEN));
        features.push_child(Element::new("register", crate::invites::NS_INVITE_LEGACY));
    }
    if key.tls {
        let fast = crate::auth::Authenticator::fast_allowed(config, host, mechanisms);
        features.push_child(sasl2::feature(mechanisms, cb, fast));
    }
    features
}

fn compression_feature() -> Element {
    Element::new("compression", "http://jabber.org/features/compress")
        .with_child(Element::new("method", "http://jabber.org/features/compress").with_text("zlib"))
}
