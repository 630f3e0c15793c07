//! One BOSH session's state machine (XEP-0124 §7–§15, XEP-0206 §5).
//!
//! Requests are *received* in any order, *processed* in `rid` order (their
//! payloads go to the XMPP session in that order) and *answered* in `rid`
//! order. A processed request is *held* until there is something to send,
//! its `wait` runs out, or the client sends more than `hold` requests.
//! Every answer is kept for a while under its `rid`, so a client whose
//! connection broke can ask again and get the same body.
//!
//! Memory is bounded per session: at most `requests` requests wait for an
//! earlier `rid`, at most `hold + 1` are held, at most `requests` answers
//! are kept, and outgoing payloads stop being accepted (the caller waits)
//! past [`Policy::max_outgoing_bytes`].

use super::body::{Request, render, serialize_payload, terminate_body, xmpp_ns_decls};
use super::{BindingCondition, VERSION};
use crate::ns;
use crate::stanza::{StreamCondition, StreamError};
use crate::xml::Element;
use sha1::{Digest, Sha1};
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Identifies one HTTP request to the caller, which keeps the connection
/// and answers it when told to. Unique per caller, never reused.
pub type Token = u64;

/// What the server allows; a client's `wait` and `hold` are clamped to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    /// Longest a request is held before an empty answer.
    pub max_wait: Duration,
    /// Most requests held at once; `requests` is one more.
    pub max_hold: u64,
    /// Longest the client may have no request with us.
    pub inactivity: Duration,
    /// Shortest interval between two empty polls.
    pub polling: Duration,
    /// Longest pause a client may ask for; zero offers none.
    pub max_pause: Duration,
    /// Serialized payloads waiting for a request, past which
    /// [`Session::push`] reports the session full.
    pub max_outgoing_bytes: usize,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            max_wait: Duration::from_secs(60),
            max_hold: 1,
            inactivity: Duration::from_secs(30),
            polling: Duration::from_secs(2),
            max_pause: Duration::from_secs(120),
            max_outgoing_bytes: 256 * 1024,
        }
    }
}

/// An HTTP answer: status (200 but for legacy clients' errors) and body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub body: Arc<str>,
}

impl Response {
    fn ok(body: impl Into<Arc<str>>) -> Self {
        Response {
            status: 200,
            body: body.into(),
        }
    }

    /// `<body type='terminate' condition='…'/>`.
    pub fn terminate(condition: BindingCondition) -> Self {
        Response::ok(terminate_body(Some(condition), &[]))
    }

    /// `remote-stream-error` carrying an RFC 6120 stream error.
    pub fn stream_error(err: &StreamError) -> Self {
        Response::ok(terminate_body(
            Some(BindingCondition::RemoteStreamError),
            &[serialize_payload(&err.to_element())],
        ))
    }

    fn empty() -> Self {
        Response::ok(render(&[], &[]))
    }

    /// The recoverable `type='error'` (XEP-0124 §17.3): the client repeats
    /// its unanswered requests.
    pub fn recoverable() -> Self {
        Response::ok(render(&[("type", "error".to_owned())], &[]))
    }
}

/// How a session ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Closed {
    /// The client sent `type='terminate'`.
    ClientTerminated,
    /// No request within the inactivity period (XEP-0124 §12).
    Inactive,
    /// The session broke a rule; the client was told this condition.
    Error(BindingCondition),
    /// The XMPP session closed it ([`Session::close`]).
    ServerClosed,
}

/// What the caller must do, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Answer the HTTP request `token` with `response`.
    Respond { token: Token, response: Response },
    /// The XMPP stream opens (`restart: false`, at session creation) or
    /// restarts after SASL (XEP-0206 §5). No stream header travels: these
    /// are its attributes.
    StreamStart {
        restart: bool,
        to: Option<String>,
        from: Option<String>,
        lang: Option<String>,
    },
    /// A payload for the XMPP session, in `rid` order.
    Payload(Element),
    /// The session is over: the XMPP session is gone or must end now.
    /// Every request it held has been answered (this comes last).
    Closed(Closed),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Open,
    /// The XMPP side closed and no request was held: the next request gets
    /// `final_body`, or the inactivity period ends it quietly.
    Closing,
    Closed,
}

#[derive(Debug)]
struct Held {
    rid: u64,
    token: Token,
    deadline: Instant,
}

#[derive(Debug)]
struct Waiting {
    token: Token,
    req: Request,
    arrived: Instant,
}

#[derive(Debug)]
struct Sent {
    rid: u64,
    body: Arc<str>,
    empty: bool,
    resends: u8,
}

/// A repeated `rid` is answered from the cache at most this many times;
/// more is a client working around the polling limit (XEP-0124 §14.3).
const MAX_RESENDS: u8 = 3;

/// One BOSH session.
#[derive(Debug)]
pub struct Session {
    sid: String,
    state: State,
    /// Negotiated at creation.
    wait: Duration,
    hold: u64,
    requests: u64,
    inactivity: Duration,
    polling: Duration,
    max_pause: Duration,
    max_outgoing_bytes: usize,
    /// The client sent no `ver`: errors are also HTTP statuses.
    legacy: bool,
    ver: (u32, u32),
    /// The XMPP stream's id and our domain, for the creation answer.
    authid: Option<String>,
    from: Option<String>,
    creation_rid: u64,
    creation_answered: bool,
    /// XEP-0124 §15: the SHA-1 of the next `key`, lower-case hex.
    next_key_hash: Option<String>,
    /// The `rid` to process next.
    next_rid: u64,
    /// Received, not processed: `rid >= next_rid`, waiting for a gap.
    waiting: BTreeMap<u64, Waiting>,
    /// Processed, not answered, in `rid` order.
    held: VecDeque<Held>,
    /// Answers kept for resending, in `rid` order.
    sent: VecDeque<Sent>,
    /// Serialized payloads for the next answer.
    outgoing: Vec<String>,
    outgoing_bytes: usize,
    /// When the last answer went out, for the inactivity period.
    last_answer: Instant,
    /// A pause in force until the next request (XEP-0124 §12).
    paused: Option<Duration>,
    /// When the last new request arrived and whether it was empty.
    last_new: Option<(Instant, u64, bool)>,
    final_body: Option<Arc<str>>,
    actions: VecDeque<Action>,
}

impl Session {
    /// Creates a session from its creation request (which has no `sid`;
    /// the caller checked `to` names a host it serves). The request is
    /// held; its answer carries the session attributes and goes out with
    /// the first stream features. `sid` must be unpredictable.
    pub fn new(sid: String, policy: &Policy, req: Request, token: Token, now: Instant) -> Self {
        let asked_wait = req.wait.map(Duration::from_secs).unwrap_or(policy.max_wait);
        let wait = asked_wait.min(policy.max_wait);
        let hold = req.hold.unwrap_or(1).min(policy.max_hold);
        // hold or wait 0: a polling client (XEP-0124 §11), which needs a
        // longer inactivity period than its polling interval.
        let polling_session = hold == 0 || wait.is_zero();
        let inactivity = if polling_session {
            policy.inactivity + policy.polling
        } else {
            policy.inactivity
        };
        let ver = match req.ver {
            Some(v) if v < VERSION => v,
            _ => VERSION,
        };
        let mut s = Session {
            sid,
            state: State::Open,
            wait,
            hold,
            requests: hold + 1,
            inactivity,
            polling: policy.polling,
            max_pause: policy.max_pause,
            max_outgoing_bytes: policy.max_outgoing_bytes,
            legacy: req.ver.is_none(),
            ver,
            authid: None,
            from: None,
            creation_rid: req.rid,
            creation_answered: false,
            next_key_hash: req.newkey.as_deref().map(str::to_ascii_lowercase),
            next_rid: req.rid + 1,
            waiting: BTreeMap::new(),
            held: VecDeque::new(),
            sent: VecDeque::new(),
            outgoing: Vec::new(),
            outgoing_bytes: 0,
            last_answer: now,
            paused: None,
            last_new: Some((now, req.rid, true)),
            final_body: None,
            actions: VecDeque::new(),
        };
        s.actions.push_back(Action::StreamStart {
            restart: false,
            to: req.to,
            from: req.from,
            lang: req.lang,
        });
        s.held.push_back(Held {
            rid: req.rid,
            token,
            deadline: now + wait,
        });
        s
    }

    pub fn sid(&self) -> &str {
        &self.sid
    }

    /// The negotiated `wait`.
    pub fn wait(&self) -> Duration {
        self.wait
    }

    /// The negotiated `hold`.
    pub fn hold(&self) -> u64 {
        self.hold
    }

    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    /// Whether payloads waiting for a request reached the limit; the caller
    /// should wait (for an answer to go out) before pushing more.
    pub fn is_full(&self) -> bool {
        self.outgoing_bytes >= self.max_outgoing_bytes
    }

    /// Requests held or waiting for an earlier `rid`.
    pub fn open_requests(&self) -> usize {
        self.held.len() + self.waiting.len()
    }

    /// The XMPP stream's id (sent as `authid`) and the domain it serves
    /// (`from`), known once the XMPP side opened its stream.
    pub fn set_stream_info(&mut self, id: &str, from: &str) {
        self.authid = Some(id.to_owned());
        self.from = Some(from.to_owned());
    }

    /// Queues an element for the client; an answer goes out now if a
    /// request is held. Returns [`Session::is_full`] afterwards. Elements
    /// pushed after the session closed are dropped.
    pub fn push(&mut self, el: &Element, now: Instant) -> bool {
        self.push_xml(serialize_payload(el), now)
    }

    /// [`Session::push`] for an element already serialized with
    /// [`serialize_payload`].
    pub fn push_xml(&mut self, xml: String, now: Instant) -> bool {
        if self.state == State::Open {
            self.outgoing_bytes += xml.len();
            self.outgoing.push(xml);
            self.flush(now);
        }
        self.is_full()
    }

    /// Whether the session still carries a stream (not closing or closed).
    pub fn is_open(&self) -> bool {
        self.state == State::Open
    }

    /// The XMPP side ends the session, with the stream error it sends if
    /// any (serialized with [`serialize_payload`]). Queued payloads go out
    /// first, in the same answer (XEP-0206 §7).
    pub fn close(&mut self, error: Option<String>, now: Instant) {
        if self.state != State::Open {
            return;
        }
        let mut payloads = std::mem::take(&mut self.outgoing);
        self.outgoing_bytes = 0;
        let condition = error.map(|e| {
            payloads.push(e);
            BindingCondition::RemoteStreamError
        });
        let body: Arc<str> = terminate_body(condition, &payloads).into();
        if let Some(front) = self.held.pop_front() {
            self.respond(front.token, Response::ok(body));
            self.answer_rest(Response::empty());
            self.finish(Closed::ServerClosed);
        } else {
            self.state = State::Closing;
            self.final_body = Some(body);
            // Requests waiting for an earlier rid get the end now; the
            // missing one will get the final body.
            self.answer_rest(Response::terminate(BindingCondition::OtherRequest));
            self.last_answer = self.last_answer.max(now);
        }
    }

    /// Takes a request that named this session's `sid`.
    pub fn handle(&mut self, token: Token, req: Request, now: Instant) {
        match self.state {
            State::Closed => {
                self.respond(token, Response::terminate(BindingCondition::ItemNotFound));
                return;
            }
            State::Closing => {
                let body = self
                    .final_body
                    .take()
                    .unwrap_or_else(|| Response::empty().body);
                self.respond(token, Response::ok(body));
                self.finish(Closed::ServerClosed);
                return;
            }
            State::Open => {}
        }
        self.paused = None;
        let rid = req.rid;
        if rid < self.next_rid {
            self.repeated(token, rid, now);
        } else if let Some(w) = self.waiting.get_mut(&rid) {
            // The same request again while it waits for an earlier one:
            // the old connection gets the recoverable error and this one
            // takes its place (XEP-0124 §14.3).
            let old = std::mem::replace(&mut w.token, token);
            self.respond(old, Response::recoverable());
        } else if rid >= self.next_rid + self.requests {
            self.fail(token, BindingCondition::ItemNotFound);
        } else {
            self.arrive(token, req, now);
        }
        self.flush(now);
    }

    /// A `rid` already processed: still held, or answered and kept, or gone.
    fn repeated(&mut self, token: Token, rid: u64, now: Instant) {
        if let Some(h) = self.held.iter_mut().find(|h| h.rid == rid) {
            let old = std::mem::replace(&mut h.token, token);
            h.deadline = now + self.wait;
            self.respond(old, Response::recoverable());
            return;
        }
        let cached = self.sent.iter_mut().find(|s| s.rid == rid).map(|s| {
            s.resends += 1;
            (s.resends, s.body.clone())
        });
        match cached {
            Some((n, _)) if n > MAX_RESENDS => self.fail(token, BindingCondition::PolicyViolation),
            Some((_, body)) => self.respond(token, Response::ok(body)),
            None => self.fail(token, BindingCondition::ItemNotFound),
        }
    }

    /// A new request inside the window.
    fn arrive(&mut self, token: Token, req: Request, now: Instant) {
        let special = req.pause.is_some() || req.terminate;
        let empty = req.payloads.is_empty() && !special && !req.restart;
        // XEP-0124 §11: more simultaneous requests than `requests` (one
        // more to pause or terminate) is overactivity.
        let open = self.open_requests() as u64 + 1;
        let allowed = self.requests + u64::from(special);
        if open > allowed {
            return self.fail(token, BindingCondition::PolicyViolation);
        }
        if empty && self.polls_too_often(now, open) {
            return self.fail(token, BindingCondition::PolicyViolation);
        }
        self.last_new = Some((now, req.rid, empty));
        self.waiting.insert(
            req.rid,
            Waiting {
                token,
                req,
                arrived: now,
            },
        );
        while let Some(w) = self.waiting.remove(&self.next_rid) {
            self.next_rid += 1;
            self.process(w.token, w.req, now);
            if self.state != State::Open {
                return;
            }
        }
    }

    /// XEP-0124 §11 and §12: an empty request sooner than `polling` after
    /// the previous one, either filling every allowed slot or (in a
    /// polling session) right after an empty poll that got nothing.
    fn polls_too_often(&self, now: Instant, open: u64) -> bool {
        let Some((at, prev_rid, prev_empty)) = self.last_new else {
            return false;
        };
        if now.saturating_duration_since(at) >= self.polling {
            return false;
        }
        if self.hold == 0 {
            let answered_empty = self.sent.iter().any(|s| s.rid == prev_rid && s.empty);
            prev_empty && answered_empty
        } else {
            open == self.requests
        }
    }

    /// Processes a request in `rid` order.
    fn process(&mut self, token: Token, req: Request, now: Instant) {
        if !self.check_key(&req) {
            return self.fail(token, BindingCondition::ItemNotFound);
        }
        if let Some(ack) = req.ack {
            // The client has every answer up to `ack`: no need to keep them.
            self.sent.retain(|s| s.rid > ack);
        }
        if req.restart {
            // XEP-0206 §5: payloads in a restart request are ignored.
            self.actions.push_back(Action::StreamStart {
                restart: true,
                to: req.to,
                from: req.from,
                lang: req.lang,
            });
        } else {
            for el in req.payloads {
                if matches!(el.name.as_str(), "message" | "presence" | "iq") && el.ns != ns::CLIENT
                {
                    let err = StreamError::new(StreamCondition::InvalidNamespace)
                        .with_text(format!("<{}/> must be in {}", el.name, ns::CLIENT));
                    self.respond(token, Response::stream_error(&err));
                    return self.end_with(BindingCondition::RemoteStreamError);
                }
                self.actions.push_back(Action::Payload(el));
            }
        }
        if req.terminate {
            return self.client_terminates(token);
        }
        if let Some(pause) = req.pause.filter(|_| !self.max_pause.is_zero()) {
            // XEP-0124 §12: answer everything now, the pause answer
            // without payloads and not kept for resending.
            while let Some(front) = self.held.pop_front() {
                self.answer(front, now);
            }
            self.respond(token, Response::empty());
            self.last_answer = now;
            self.paused = Some(Duration::from_secs(pause).min(self.max_pause));
            return;
        }
        self.held.push_back(Held {
            rid: req.rid,
            token,
            deadline: now + self.wait,
        });
    }

    fn check_key(&mut self, req: &Request) -> bool {
        let Some(expected) = self.next_key_hash.take() else {
            return true;
        };
        let Some(key) = req.key.as_deref() else {
            return false;
        };
        let hash = hex(&Sha1::digest(key.to_ascii_lowercase().as_bytes()));
        if hash != expected {
            return false;
        }
        self.next_key_hash = Some(req.newkey.as_deref().unwrap_or(key).to_ascii_lowercase());
        true
    }

    fn client_terminates(&mut self, token: Token) {
        // XEP-0124 §13: the oldest connection gets the terminate body,
        // every other one (this one included, unless it is the oldest) an
        // empty body.
        let mut tokens: Vec<Token> = self.held.drain(..).map(|h| h.token).collect();
        tokens.push(token);
        let mut first = true;
        for t in tokens {
            let r = if first {
                Response::ok(terminate_body(None, &[]))
            } else {
                Response::empty()
            };
            first = false;
            self.respond(t, r);
        }
        self.answer_rest(Response::terminate(BindingCondition::OtherRequest));
        self.finish(Closed::ClientTerminated);
    }

    /// Ends the session over a rule the request `token` broke.
    fn fail(&mut self, token: Token, condition: BindingCondition) {
        let mut r = Response::terminate(condition);
        if self.legacy {
            r.status = condition.legacy_status();
        }
        self.respond(token, r);
        self.end_with(condition);
    }

    fn end_with(&mut self, condition: BindingCondition) {
        self.answer_rest(Response::terminate(BindingCondition::OtherRequest));
        self.finish(Closed::Error(condition));
    }

    /// Answers every held and waiting request with `r`.
    fn answer_rest(&mut self, r: Response) {
        let tokens: Vec<Token> = self
            .held
            .drain(..)
            .map(|h| h.token)
            .chain(
                std::mem::take(&mut self.waiting)
                    .into_values()
                    .map(|w| w.token),
            )
            .collect();
        for t in tokens {
            self.respond(t, r.clone());
        }
    }

    fn finish(&mut self, why: Closed) {
        self.state = State::Closed;
        self.outgoing = Vec::new();
        self.outgoing_bytes = 0;
        self.sent = VecDeque::new();
        self.final_body = None;
        self.actions.push_back(Action::Closed(why));
    }

    /// Answers held requests that must be answered now: with payloads, past
    /// their deadline, or beyond `hold`.
    fn flush(&mut self, now: Instant) {
        while self.state == State::Open {
            let due = self.held.iter().any(|h| h.deadline <= now);
            let over = self.held.len() as u64 > self.hold;
            if self.held.is_empty() || !(due || over || !self.outgoing.is_empty()) {
                break;
            }
            let front = self.held.pop_front().expect("checked non-empty");
            self.answer(front, now);
        }
    }

    /// Answers a held request with whatever is queued.
    fn answer(&mut self, held: Held, now: Instant) {
        let payloads = std::mem::take(&mut self.outgoing);
        self.outgoing_bytes = 0;
        let mut attrs: Vec<(&str, String)> = Vec::new();
        let creation = !self.creation_answered;
        if creation {
            debug_assert_eq!(held.rid, self.creation_rid);
            self.creation_answered = true;
            attrs.extend(self.creation_attrs());
        } else {
            // XEP-0124 §9.1: the highest rid received with all below it,
            // left out when it is the rid being answered.
            let mut ack = self.next_rid - 1;
            while self.waiting.contains_key(&(ack + 1)) {
                ack += 1;
            }
            if ack != held.rid {
                attrs.push(("ack", ack.to_string()));
            }
            if !payloads.is_empty() {
                attrs.extend(xmpp_ns_decls());
            }
        }
        let empty = payloads.is_empty();
        let body: Arc<str> = render(&attrs, &payloads).into();
        self.sent.push_back(Sent {
            rid: held.rid,
            body: body.clone(),
            empty,
            resends: 0,
        });
        while self.sent.len() as u64 > self.requests {
            self.sent.pop_front();
        }
        self.last_answer = now;
        self.respond(held.token, Response::ok(body));
    }

    /// XEP-0124 §7.1 and XEP-0206 §3: the session creation answer.
    fn creation_attrs(&self) -> Vec<(&'static str, String)> {
        let mut a = vec![
            ("sid", self.sid.clone()),
            ("wait", self.wait.as_secs().to_string()),
            ("requests", self.requests.to_string()),
            ("hold", self.hold.to_string()),
            ("inactivity", self.inactivity.as_secs().to_string()),
            ("polling", self.polling.as_secs().to_string()),
            ("ver", format!("{}.{}", self.ver.0, self.ver.1)),
            ("ack", self.creation_rid.to_string()),
        ];
        if !self.max_pause.is_zero() {
            a.push(("maxpause", self.max_pause.as_secs().to_string()));
        }
        if let Some(from) = &self.from {
            a.push(("from", from.clone()));
        }
        if let Some(id) = &self.authid {
            a.push(("authid", id.clone()));
        }
        a.push(("xmpp:version", "1.0".to_owned()));
        a.push(("xmpp:restartlogic", "true".to_owned()));
        a.extend(xmpp_ns_decls());
        a
    }

    fn respond(&mut self, token: Token, response: Response) {
        self.actions.push_back(Action::Respond { token, response });
    }

    /// The next thing to do; call until `None` after every input.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// When [`Session::handle_timeout`] must next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            State::Closed => None,
            State::Closing => Some(self.last_answer + self.inactivity),
            State::Open => {
                if let Some(d) = self.held.iter().map(|h| h.deadline).min() {
                    Some(d)
                } else if let Some(w) = self.waiting.values().map(|w| w.arrived).min() {
                    // A gap in the rids that is never filled must not keep
                    // the session (and the requests after it) forever.
                    Some(w + self.wait.max(self.inactivity))
                } else {
                    Some(self.last_answer + self.paused.unwrap_or(self.inactivity))
                }
            }
        }
    }

    /// Runs what is due at `now`: empty answers after `wait`, the end of an
    /// inactive session.
    pub fn handle_timeout(&mut self, now: Instant) {
        let Some(due) = self.poll_timeout() else {
            return;
        };
        if due > now {
            return;
        }
        match self.state {
            State::Closed => {}
            State::Closing => self.finish(Closed::Inactive),
            State::Open if !self.held.is_empty() => self.flush(now),
            State::Open if !self.waiting.is_empty() => {
                self.answer_rest(Response::terminate(BindingCondition::ItemNotFound));
                self.finish(Closed::Error(BindingCondition::ItemNotFound));
            }
            State::Open => self.finish(Closed::Inactive),
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

#[cfg(test)]
pub(super) fn hex_for_test(bytes: &[u8]) -> String {
    hex(bytes)
}
