//! Stream errors (RFC 6120 §4.9) and stanza errors (RFC 6120 §8.3).

use std::fmt;

use crate::ns;
use crate::xml::Element;

/// A defined stream error condition (RFC 6120 §4.9.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StreamCondition {
    BadFormat,
    BadNamespacePrefix,
    Conflict,
    ConnectionTimeout,
    HostGone,
    HostUnknown,
    ImproperAddressing,
    InternalServerError,
    InvalidFrom,
    InvalidNamespace,
    InvalidXml,
    NotAuthorized,
    NotWellFormed,
    PolicyViolation,
    RemoteConnectionFailed,
    Reset,
    ResourceConstraint,
    RestrictedXml,
    SeeOtherHost,
    SystemShutdown,
    UndefinedCondition,
    UnsupportedEncoding,
    UnsupportedFeature,
    UnsupportedStanzaType,
    UnsupportedVersion,
}

impl StreamCondition {
    /// Every condition, for tests and exhaustive tables.
    pub const ALL: [StreamCondition; 25] = [
        Self::BadFormat,
        Self::BadNamespacePrefix,
        Self::Conflict,
        Self::ConnectionTimeout,
        Self::HostGone,
        Self::HostUnknown,
        Self::ImproperAddressing,
        Self::InternalServerError,
        Self::InvalidFrom,
        Self::InvalidNamespace,
        Self::InvalidXml,
        Self::NotAuthorized,
        Self::NotWellFormed,
        Self::PolicyViolation,
        Self::RemoteConnectionFailed,
        Self::Reset,
        Self::ResourceConstraint,
        Self::RestrictedXml,
        Self::SeeOtherHost,
        Self::SystemShutdown,
        Self::UndefinedCondition,
        Self::UnsupportedEncoding,
        Self::UnsupportedFeature,
        Self::UnsupportedStanzaType,
        Self::UnsupportedVersion,
    ];

    /// The element name used on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BadFormat => "bad-format",
            Self::BadNamespacePrefix => "bad-namespace-prefix",
            Self::Conflict => "conflict",
            Self::ConnectionTimeout => "connection-timeout",
            Self::HostGone => "host-gone",
            Self::HostUnknown => "host-unknown",
            Self::ImproperAddressing => "improper-addressing",
            Self::InternalServerError => "internal-server-error",
            Self::InvalidFrom => "invalid-from",
            Self::InvalidNamespace => "invalid-namespace",
            Self::InvalidXml => "invalid-xml",
            Self::NotAuthorized => "not-authorized",
            Self::NotWellFormed => "not-well-formed",
            Self::PolicyViolation => "policy-violation",
            Self::RemoteConnectionFailed => "remote-connection-failed",
            Self::Reset => "reset",
            Self::ResourceConstraint => "resource-constraint",
            Self::RestrictedXml => "restricted-xml",
            Self::SeeOtherHost => "see-other-host",
            Self::SystemShutdown => "system-shutdown",
            Self::UndefinedCondition => "undefined-condition",
            Self::UnsupportedEncoding => "unsupported-encoding",
            Self::UnsupportedFeature => "unsupported-feature",
            Self::UnsupportedStanzaType => "unsupported-stanza-type",
            Self::UnsupportedVersion => "unsupported-version",
        }
    }

    /// Parses a wire name; `None` for anything not in RFC 6120.
    pub fn from_name(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

impl fmt::Display for StreamCondition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A stream-level error: fatal, sent as `<stream:error>` before closing.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("stream error {condition}{}", text.as_ref().map(|t| format!(": {t}")).unwrap_or_default())]
pub struct StreamError {
    pub condition: StreamCondition,
    /// Human-readable detail for the peer's logs; never localized.
    pub text: Option<String>,
}

impl StreamError {
    pub fn new(condition: StreamCondition) -> Self {
        StreamError {
            condition,
            text: None,
        }
    }

    #[must_use]
    pub fn with_text(mut self, text: impl Into<String>) -> Self {
        self.text = Some(text.into());
        self
    }

    /// `<stream:error><cond xmlns=…streams/><text xmlns=…streams>…</text></stream:error>`.
    /// For `see-other-host` the text is the other host, which RFC 6120
    /// §4.9.3.19 puts inside the condition element.
    pub fn to_element(&self) -> Element {
        let mut cond = Element::new(self.condition.as_str(), ns::STREAMS_ERRORS);
        if self.condition == StreamCondition::SeeOtherHost
            && let Some(host) = &self.text
        {
            cond = cond.with_text(host.clone());
            return Element::new("error", ns::STREAM).with_child(cond);
        }
        let mut el = Element::new("error", ns::STREAM).with_child(cond);
        if let Some(text) = &self.text {
            el.push_child(Element::new("text", ns::STREAMS_ERRORS).with_text(text.clone()));
        }
        el
    }

    /// Reads a `<stream:error>`; unknown conditions become
    /// `undefined-condition` because the stream is over either way.
    pub fn from_element(el: &Element) -> Option<Self> {
        if !el.is("error", ns::STREAM) {
            return None;
        }
        let mut condition = None;
        let mut text = None;
        for c in el.children().filter(|c| c.ns == ns::STREAMS_ERRORS) {
            if c.name == "text" {
                text = Some(c.text());
            } else if condition.is_none() {
                let cond = StreamCondition::from_name(&c.name)
                    .unwrap_or(StreamCondition::UndefinedCondition);
                // RFC 6120 §4.9.3.19: the other host is the element's text.
                if cond == StreamCondition::SeeOtherHost && !c.text().is_empty() {
                    text = text.or_else(|| Some(c.text()));
                }
                condition = Some(cond);
            }
        }
        Some(StreamError {
            condition: condition?,
            text,
        })
    }
}

/// The `type` of a stanza error: what the sender should do next (RFC 6120 §8.3.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorType {
    Auth,
    Cancel,
    Continue,
    Modify,
    Wait,
}

impl ErrorType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auth => "auth",
            Self::Cancel => "cancel",
            Self::Continue => "continue",
            Self::Modify => "modify",
            Self::Wait => "wait",
        }
    }

    pub fn from_name(s: &str) -> Option<Self> {
        Some(match s {
            "auth" => Self::Auth,
            "cancel" => Self::Cancel,
            "continue" => Self::Continue,
            "modify" => Self::Modify,
            "wait" => Self::Wait,
            _ => return None,
        })
    }
}

impl fmt::Display for ErrorType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A defined stanza error condition (RFC 6120 §8.3.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Condition {
    BadRequest,
    Conflict,
    FeatureNotImplemented,
    Forbidden,
    Gone,
    InternalServerError,
    ItemNotFound,
    JidMalformed,
    NotAcceptable,
    NotAllowed,
    NotAuthorized,
    PolicyViolation,
    RecipientUnavailable,
    Redirect,
    RegistrationRequired,
    RemoteServerNotFound,
    RemoteServerTimeout,
    ResourceConstraint,
    ServiceUnavailable,
    SubscriptionRequired,
    UndefinedCondition,
    UnexpectedRequest,
}

impl Condition {
    /// Every condition, for tests and exhaustive tables.
    pub const ALL: [Condition; 22] = [
        Self::BadRequest,
        Self::Conflict,
        Self::FeatureNotImplemented,
        Self::Forbidden,
        Self::Gone,
        Self::InternalServerError,
        Self::ItemNotFound,
        Self::JidMalformed,
        Self::NotAcceptable,
        Self::NotAllowed,
        Self::NotAuthorized,
        Self::PolicyViolation,
        Self::RecipientUnavailable,
        Self::Redirect,
        Self::RegistrationRequired,
        Self::RemoteServerNotFound,
        Self::RemoteServerTimeout,
        Self::ResourceConstraint,
        Self::ServiceUnavailable,
        Self::SubscriptionRequired,
        Self::UndefinedCondition,
        Self::UnexpectedRequest,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::BadRequest => "bad-request",
            Self::Conflict => "conflict",
            Self::FeatureNotImplemented => "feature-not-implemented",
            Self::Forbidden => "forbidden",
            Self::Gone => "gone",
            Self::InternalServerError => "internal-server-error",
            Self::ItemNotFound => "item-not-found",
            Self::JidMalformed => "jid-malformed",
            Self::NotAcceptable => "not-acceptable",
            Self::NotAllowed => "not-allowed",
            Self::NotAuthorized => "not-authorized",
            Self::PolicyViolation => "policy-violation",
            Self::RecipientUnavailable => "recipient-unavailable",
            Self::Redirect => "redirect",
            Self::RegistrationRequired => "registration-required",
            Self::RemoteServerNotFound => "remote-server-not-found",
            Self::RemoteServerTimeout => "remote-server-timeout",
            Self::ResourceConstraint => "resource-constraint",
            Self::ServiceUnavailable => "service-unavailable",
            Self::SubscriptionRequired => "subscription-required",
            Self::UndefinedCondition => "undefined-condition",
            Self::UnexpectedRequest => "unexpected-request",
        }
    }

    pub fn from_name(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == s)
    }

    /// The type used in the condition's example in RFC 6120 §8.3.3. Where
    /// the RFC says "typically X or Y" we take the example's choice so the
    /// table can be checked against one place.
    pub fn default_type(self) -> ErrorType {
        use ErrorType::*;
        match self {
            Self::BadRequest => Modify,
            Self::Conflict => Cancel,
            Self::FeatureNotImplemented => Cancel,
            Self::Forbidden => Auth,
            Self::Gone => Cancel,
            Self::InternalServerError => Cancel,
            Self::ItemNotFound => Cancel,
            Self::JidMalformed => Modify,
            Self::NotAcceptable => Modify,
            Self::NotAllowed => Cancel,
            Self::NotAuthorized => Auth,
            Self::PolicyViolation => Modify,
            Self::RecipientUnavailable => Wait,
            Self::Redirect => Modify,
            Self::RegistrationRequired => Auth,
            Self::RemoteServerNotFound => Cancel,
            Self::RemoteServerTimeout => Wait,
            Self::ResourceConstraint => Wait,
            Self::ServiceUnavailable => Cancel,
            Self::SubscriptionRequired => Auth,
            Self::UndefinedCondition => Modify,
            Self::UnexpectedRequest => Wait,
        }
    }
}

impl fmt::Display for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An `<error/>` child of a stanza (RFC 6120 §8.3).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{kind} {condition}{}", text.as_ref().map(|t| format!(": {t}")).unwrap_or_default())]
pub struct StanzaError {
    pub kind: ErrorType,
    pub condition: Condition,
    pub text: Option<String>,
    /// An application-specific condition (RFC 6120 §8.3.4), such as
    /// XEP-0060's `<precondition-not-met/>`. Boxed: most errors have none,
    /// and `Result<_, StanzaError>` should stay small.
    pub app: Option<Box<Element>>,
}

impl StanzaError {
    /// `condition` with its [`Condition::default_type`].
    pub fn new(condition: Condition) -> Self {
        Self::typed(condition.default_type(), condition)
    }

    pub fn modify(condition: Condition) -> Self {
        Self::typed(ErrorType::Modify, condition)
    }

    pub fn cancel(condition: Condition) -> Self {
        Self::typed(ErrorType::Cancel, condition)
    }

    pub fn wait(condition: Condition) -> Self {
        Self::typed(ErrorType::Wait, condition)
    }

    pub fn auth(condition: Condition) -> Self {
        Self::typed(ErrorType::Auth, condition)
    }

    fn typed(kind: ErrorType, condition: Condition) -> Self {
        StanzaError {
            kind,
            condition,
            text: None,
            app: None,
        }
    }

    /// Adds an application-specific condition element.
    #[must_use]
    pub fn with_app(mut self, app: Element) -> Self {
        self.app = Some(Box::new(app));
        self
    }

    #[must_use]
    pub fn with_text(mut self, text: impl Into<String>) -> Self {
        self.text = Some(text.into());
        self
    }

    /// `<error type='…'><cond xmlns=…stanzas/><text xmlns=…stanzas>…</text></error>`
    /// in `jabber:client`; [`error_reply`] re-homes it for s2s stanzas.
    pub fn to_element(&self) -> Element {
        let mut el = Element::new("error", ns::CLIENT)
            .with_attr("type", self.kind.as_str())
            .with_child(Element::new(self.condition.as_str(), ns::STANZAS));
        if let Some(text) = &self.text {
            el.push_child(Element::new("text", ns::STANZAS).with_text(text.clone()));
        }
        if let Some(app) = &self.app {
            el.push_child(Element::clone(app));
        }
        el
    }

    /// Reads an `<error/>` element (in any content namespace, since the same
    /// shape arrives over c2s and s2s). A missing or unknown `type` falls
    /// back to the condition's default and an unknown condition to
    /// `undefined-condition`, because a bounced stanza is more useful to
    /// route than to drop; no condition element at all is `None`.
    pub fn from_element(el: &Element) -> Option<Self> {
        if el.name != "error" {
            return None;
        }
        let mut condition = None;
        let mut text = None;
        let app = el
            .children()
            .find(|c| c.ns != ns::STANZAS)
            .cloned()
            .map(Box::new);
        for c in el.children().filter(|c| c.ns == ns::STANZAS) {
            if c.name == "text" {
                text = Some(c.text());
            } else if condition.is_none() {
                condition =
                    Some(Condition::from_name(&c.name).unwrap_or(Condition::UndefinedCondition));
            }
        }
        let condition = condition?;
        let kind = el
            .attr("type")
            .and_then(ErrorType::from_name)
            .unwrap_or_else(|| condition.default_type());
        Some(StanzaError {
            kind,
            condition,
            text,
            app,
        })
    }
}

/// The error bounce for `stanza` (RFC 6120 §8.3.1): addresses swapped,
/// `type='error'`, original children kept, `<error/>` appended.
///
/// `None` when the stanza is itself an error or an IQ result: answering
/// those could make two entities bounce errors at each other forever.
pub fn error_reply(stanza: &Element, err: &StanzaError) -> Option<Element> {
    match stanza.attr("type") {
        Some("error") => return None,
        Some("result") if stanza.name == "iq" => return None,
        _ => {}
    }
    let mut reply = stanza.clone();
    let to = reply.remove_attr("to");
    let from = reply.remove_attr("from");
    if let Some(from) = from {
        reply.set_attr("to", from);
    }
    if let Some(to) = to {
        reply.set_attr("from", to);
    }
    reply.set_attr("type", "error");
    if reply.name == "iq" {
        // RFC 6120 §8.3.1 lets us echo the request; we don't for IQs, whose
        // payloads can carry credentials (XEP-0077) that must not travel
        // back or land in stanza logs.
        reply.children.clear();
    }
    let mut error = err.to_element();
    // Same namespace as the stanza, so it serializes without an xmlns
    // whether this is a jabber:client or a jabber:server stream.
    error.ns = stanza.ns.clone();
    reply.push_child(error);
    Some(reply)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_condition_names_round_trip() {
        for c in StreamCondition::ALL {
            assert_eq!(StreamCondition::from_name(c.as_str()), Some(c));
        }
        assert_eq!(StreamCondition::from_name("nope"), None);
    }

    #[test]
    fn stream_error_element_round_trip() {
        for c in StreamCondition::ALL {
            for text in [None, Some("why")] {
                let e = StreamError {
                    condition: c,
                    text: text.map(str::to_owned),
                };
                assert_eq!(StreamError::from_element(&e.to_element()), Some(e));
            }
        }
    }

    #[test]
    fn see_other_host_carries_the_host_inside_the_condition() {
        let e = StreamError::new(StreamCondition::SeeOtherHost).with_text("[2001:db8::1]:9090");
        assert_eq!(
            e.to_element().to_xml(),
            "<error xmlns='http://etherx.jabber.org/streams'>\
             <see-other-host xmlns='urn:ietf:params:xml:ns:xmpp-streams'>[2001:db8::1]:9090</see-other-host>\
             </error>"
        );
        assert_eq!(StreamError::from_element(&e.to_element()), Some(e));
    }

    #[test]
    fn stream_error_wire_form() {
        let e = StreamError::new(StreamCondition::PolicyViolation).with_text("too big");
        assert_eq!(
            e.to_element().to_xml(),
            "<error xmlns='http://etherx.jabber.org/streams'>\
             <policy-violation xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>\
             <text xmlns='urn:ietf:params:xml:ns:xmpp-streams'>too big</text></error>"
        );
        assert_eq!(e.to_string(), "stream error policy-violation: too big");
        assert_eq!(
            StreamError::new(StreamCondition::Reset).to_string(),
            "stream error reset"
        );
    }

    #[test]
    fn stream_error_from_foreign_element() {
        assert_eq!(
            StreamError::from_element(&Element::new("error", ns::CLIENT)),
            None
        );
        let odd = Element::new("error", ns::STREAM)
            .with_child(Element::new("made-up", ns::STREAMS_ERRORS));
        assert_eq!(
            StreamError::from_element(&odd).unwrap().condition,
            StreamCondition::UndefinedCondition
        );
        // <text> alone is not a condition.
        let text_only = Element::new("error", ns::STREAM)
            .with_child(Element::new("text", ns::STREAMS_ERRORS).with_text("x"));
        assert_eq!(StreamError::from_element(&text_only), None);
    }

    #[test]
    fn stanza_condition_names_round_trip() {
        for c in Condition::ALL {
            assert_eq!(Condition::from_name(c.as_str()), Some(c));
        }
        for t in [
            ErrorType::Auth,
            ErrorType::Cancel,
            ErrorType::Continue,
            ErrorType::Modify,
            ErrorType::Wait,
        ] {
            assert_eq!(ErrorType::from_name(t.as_str()), Some(t));
        }
    }

    #[test]
    fn default_types_follow_rfc_examples() {
        assert_eq!(Condition::BadRequest.default_type(), ErrorType::Modify);
        assert_eq!(Condition::Forbidden.default_type(), ErrorType::Auth);
        assert_eq!(
            Condition::ServiceUnavailable.default_type(),
            ErrorType::Cancel
        );
        assert_eq!(
            Condition::RemoteServerTimeout.default_type(),
            ErrorType::Wait
        );
        assert_eq!(
            StanzaError::new(Condition::ItemNotFound).kind,
            ErrorType::Cancel
        );
        assert_eq!(
            StanzaError::wait(Condition::ItemNotFound).kind,
            ErrorType::Wait
        );
        assert_eq!(StanzaError::modify(Condition::Gone).kind, ErrorType::Modify);
        assert_eq!(
            StanzaError::cancel(Condition::Forbidden).kind,
            ErrorType::Cancel
        );
        assert_eq!(StanzaError::auth(Condition::Conflict).kind, ErrorType::Auth);
    }

    #[test]
    fn stanza_error_element_round_trip() {
        for c in Condition::ALL {
            for text in [None, Some("detail")] {
                let e = StanzaError {
                    kind: ErrorType::Continue,
                    condition: c,
                    text: text.map(str::to_owned),
                    app: None,
                };
                assert_eq!(StanzaError::from_element(&e.to_element()), Some(e));
            }
        }
    }

    #[test]
    fn stanza_error_wire_form() {
        let e = StanzaError::new(Condition::ServiceUnavailable).with_text("nobody home");
        assert_eq!(
            e.to_element().to_xml_in(ns::CLIENT),
            "<error type='cancel'><service-unavailable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>\
             <text xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'>nobody home</text></error>"
        );
        assert_eq!(e.to_string(), "cancel service-unavailable: nobody home");
    }

    #[test]
    fn stanza_error_lenient_parsing() {
        let no_type =
            Element::new("error", ns::SERVER).with_child(Element::new("forbidden", ns::STANZAS));
        let e = StanzaError::from_element(&no_type).unwrap();
        assert_eq!(
            (e.kind, e.condition),
            (ErrorType::Auth, Condition::Forbidden)
        );
        let unknown = Element::new("error", ns::CLIENT)
            .with_attr("type", "bogus")
            .with_child(Element::new("made-up", ns::STANZAS));
        assert_eq!(
            StanzaError::from_element(&unknown).unwrap().condition,
            Condition::UndefinedCondition
        );
        let empty = Element::new("error", ns::CLIENT).with_attr("type", "cancel");
        assert_eq!(StanzaError::from_element(&empty), None);
        assert_eq!(
            StanzaError::from_element(&Element::new("message", ns::CLIENT)),
            None
        );
    }

    #[test]
    fn error_reply_swaps_addresses_and_keeps_children() {
        let msg = Element::new("message", ns::CLIENT)
            .with_attr("from", "romeo@example.net/orchard")
            .with_attr("to", "juliet@example.com")
            .with_attr("id", "m1")
            .with_attr("type", "chat")
            .with_child(Element::new("body", ns::CLIENT).with_text("hi"));
        let err = StanzaError::new(Condition::ServiceUnavailable);
        let reply = error_reply(&msg, &err).unwrap();
        assert_eq!(reply.attr("to"), Some("romeo@example.net/orchard"));
        assert_eq!(reply.attr("from"), Some("juliet@example.com"));
        assert_eq!(reply.attr("id"), Some("m1"));
        assert_eq!(reply.attr("type"), Some("error"));
        assert_eq!(reply.child("body", ns::CLIENT).unwrap().text(), "hi");
        let e = reply.child("error", ns::CLIENT).unwrap();
        assert_eq!(StanzaError::from_element(e), Some(err.clone()));
        // Addressless stanzas (from the client's own stream) stay addressless.
        let bare = Element::new("iq", ns::CLIENT)
            .with_attr("type", "get")
            .with_attr("id", "i");
        let r = error_reply(&bare, &err).unwrap();
        assert_eq!((r.attr("to"), r.attr("from")), (None, None));
    }

    #[test]
    fn error_reply_uses_stanza_namespace() {
        let iq = Element::new("iq", ns::SERVER)
            .with_attr("type", "set")
            .with_attr("id", "1");
        let r = error_reply(&iq, &StanzaError::new(Condition::BadRequest)).unwrap();
        assert_eq!(
            r.to_xml_in(ns::SERVER),
            "<iq type='error' id='1'><error type='modify'>\
             <bad-request xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>"
        );
    }

    #[test]
    fn no_error_reply_to_errors_or_results() {
        let err = StanzaError::new(Condition::BadRequest);
        for (name, ty) in [
            ("message", "error"),
            ("presence", "error"),
            ("iq", "error"),
            ("iq", "result"),
        ] {
            let s = Element::new(name, ns::CLIENT).with_attr("type", ty);
            assert_eq!(error_reply(&s, &err), None, "{name} type={ty}");
        }
        // A message of type 'result' is not a thing, but not an IQ result either.
        let odd = Element::new("message", ns::CLIENT).with_attr("type", "result");
        assert!(error_reply(&odd, &err).is_some());
    }
}
