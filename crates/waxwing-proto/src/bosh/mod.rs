//! XEP-0124 BOSH and XEP-0206 XMPP over BOSH, sans-IO.
//!
//! [`body`] reads request wrappers and writes response wrappers;
//! [`Session`] is one BOSH session's state machine: request ids and their
//! window, held requests, `wait`/`inactivity`/`polling`/`pause`, acks,
//! resending lost responses, restarts and termination. It takes parsed
//! requests, outgoing elements and the time, and returns [`Action`]s: the
//! HTTP layer answers requests, the XMPP session machinery takes payloads
//! and stream (re)starts. Nothing here reads a clock or does I/O.

pub mod body;
mod session;

pub use body::{MAX_RID, ParseError, Request, parse_request, serialize_payload};
pub use session::{Action, Closed, Policy, Response, Session, Token};

/// XEP-0124's namespace, the `<body/>` wrapper's.
pub const HTTPBIND: &str = "http://jabber.org/protocol/httpbind";
/// XEP-0206's namespace for the `xmpp:` attributes.
pub const XBOSH: &str = "urn:xmpp:xbosh";
/// The BOSH version implemented (XEP-0124 1.11).
pub const VERSION: (u32, u32) = (1, 11);

/// XEP-0124 §17.2 terminal binding conditions (the ones a server sends).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BindingCondition {
    BadRequest,
    HostUnknown,
    ImproperAddressing,
    InternalServerError,
    ItemNotFound,
    OtherRequest,
    PolicyViolation,
    RemoteConnectionFailed,
    RemoteStreamError,
    SystemShutdown,
    UndefinedCondition,
}

impl BindingCondition {
    pub fn as_str(self) -> &'static str {
        match self {
            BindingCondition::BadRequest => "bad-request",
            BindingCondition::HostUnknown => "host-unknown",
            BindingCondition::ImproperAddressing => "improper-addressing",
            BindingCondition::InternalServerError => "internal-server-error",
            BindingCondition::ItemNotFound => "item-not-found",
            BindingCondition::OtherRequest => "other-request",
            BindingCondition::PolicyViolation => "policy-violation",
            BindingCondition::RemoteConnectionFailed => "remote-connection-failed",
            BindingCondition::RemoteStreamError => "remote-stream-error",
            BindingCondition::SystemShutdown => "system-shutdown",
            BindingCondition::UndefinedCondition => "undefined-condition",
        }
    }

    /// The deprecated HTTP status a legacy client (one that sent no `ver`)
    /// expects instead (XEP-0124 §17.1); 200 where there is none.
    pub fn legacy_status(self) -> u16 {
        match self {
            BindingCondition::BadRequest => 400,
            BindingCondition::PolicyViolation => 403,
            BindingCondition::ItemNotFound => 404,
            _ => 200,
        }
    }
}

/// The answer to a request that matches no session (unknown or expired
/// `sid`): `item-not-found`, terminal (XEP-0124 §17.2).
pub fn unknown_session() -> Response {
    Response::terminate(BindingCondition::ItemNotFound)
}

/// The answer to a body that could not be read; no session is touched,
/// since whoever sent it may not own the session it names.
pub fn unreadable(e: &ParseError) -> Response {
    match e {
        ParseError::Binding(_) => Response::terminate(BindingCondition::BadRequest),
        ParseError::Xml(err) => Response::stream_error(err),
    }
}

#[cfg(test)]
mod tests;
