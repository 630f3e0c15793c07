//! XEP-0050: Ad-Hoc Commands, serving the XEP-0133 Service Administration
//! commands that fit this server: add user, delete user, change user
//! password, list online users, announce to online users, and the
//! registered/online user counts. Three more, in the same style under
//! [`FEDERATION`], manage federation abuse defences: block a remote domain,
//! unblock it, and list every remote domain's reputation (spam reports,
//! bounces, failed dialbacks, rate-limit hits, decayed score, standing).
//!
//! Only accounts listed in `admins` see or run them, and only from one of
//! their own client sessions; everyone else gets an empty command list and
//! `forbidden`. Commands that need input answer a first `execute` with a
//! form and a session id (XEP-0050 §3.4); the submitted form completes them.
//! A form submitted with the first `execute` completes at once.
//!
//! Listing online users walks the account list and asks for each one's
//! sessions: `Cx` has no "all sessions" call, and an admin command may be
//! O(accounts).
//!
//! The two XEP-0401 invitation commands are served here too (the work is
//! in `invite/commands.rs`): `urn:xmpp:invite#invite` for every local user,
//! `urn:xmpp:invite#create-account` for admins.
//!
//! Three feed commands (also under [`FEDERATION`]'s `urn:waxwing:admin`
//! prefix) add, remove and list the RSS/Atom feeds republished on nodes of
//! the `pubsub.<host>` services (`pubsub/feeds.rs`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use std::time::Duration;
use waxwing_core::credentials;
use waxwing_core::hooks::{
    Cx, Iq, IqHandler, IqResult, IqTarget, Module, RegisterError, Registrar,
};
use waxwing_core::s2s::reputation::Standing;
use waxwing_proto::jid::{BareJid, Jid};
use waxwing_proto::ns;
use waxwing_proto::stanza::{Condition, StanzaError};
use waxwing_proto::xml::Element;

use waxwing_core::config::DEFAULT_FEED_INTERVAL;
use waxwing_store::{FeedKey, StoreError};

use crate::invite::commands as invite;
use crate::pubsub::feeds::{FeedSpec, Feeds};
use crate::{internal, stanza_id};

/// XEP-0050 namespace, also the disco node listing the commands.
pub const COMMANDS: &str = "http://jabber.org/protocol/commands";
/// XEP-0133 `FORM_TYPE`.
const ADMIN: &str = "http://jabber.org/protocol/admin";
/// Node prefix of our own federation commands (XEP-0133 has none for this).
pub const FEDERATION: &str = "urn:waxwing:admin";
/// Pending multi-stage executions kept at most; beyond that the oldest
/// are forgotten (the admin restarts the command).
const MAX_PENDING: usize = 256;

/// The XEP-0133 commands we serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Command {
    AddUser,
    DeleteUser,
    ChangePassword,
    OnlineUsersList,
    Announce,
    RegisteredUsersNum,
    OnlineUsersNum,
    BlockDomain,
    UnblockDomain,
    DomainReputation,
    AddFeed,
    RemoveFeed,
    ListFeeds,
    Invite,
    CreateAccount,
}

impl Command {
    const ALL: [Command; 15] = [
        Command::AddUser,
        Command::DeleteUser,
        Command::ChangePassword,
        Command::OnlineUsersList,
        Command::Announce,
        Command::RegisteredUsersNum,
        Command::OnlineUsersNum,
        Command::BlockDomain,
        Command::UnblockDomain,
        Command::DomainReputation,
        Command::AddFeed,
        Command::RemoveFeed,
        Command::ListFeeds,
        Command::Invite,
        Command::CreateAccount,
    ];

    fn node(self) -> &'static str {
        match self {
            Command::AddUser => "http://jabber.org/protocol/admin#add-user",
            Command::DeleteUser => "http://jabber.org/protocol/admin#delete-user",
            Command::ChangePassword => "http://jabber.org/protocol/admin#change-user-password",
            Command::OnlineUsersList => "http://jabber.org/protocol/admin#get-online-users-list",
            Command::Announce => "http://jabber.org/protocol/admin#announce",
            Command::RegisteredUsersNum => {
                "http://jabber.org/protocol/admin#get-registered-users-num"
            }
            Command::OnlineUsersNum => "http://jabber.org/protocol/admin#get-online-users-num",
            Command::BlockDomain => "urn:waxwing:admin#block-domain",
            Command::UnblockDomain => "urn:waxwing:admin#unblock-domain",
            Command::DomainReputation => "urn:waxwing:admin#domain-reputation",
            Command::AddFeed => "urn:waxwing:admin#add-feed",
            Command::RemoveFeed => "urn:waxwing:admin#remove-feed",
            Command::ListFeeds => "urn:waxwing:admin#list-feeds",
            Command::Invite => invite::INVITE,
            Command::CreateAccount => invite::CREATE_ACCOUNT,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Command::AddUser => "Add a User",
            Command::DeleteUser => "Delete a User",
            Command::ChangePassword => "Change User Password",
            Command::OnlineUsersList => "Get List of Online Users",
            Command::Announce => "Send Announcement to Online Users",
            Command::RegisteredUsersNum => "Get Number of Registered Users",
            Command::OnlineUsersNum => "Get Number of Online Users",
            Command::BlockDomain => "Block a Remote Domain",
            Command::UnblockDomain => "Unblock a Remote Domain",
            Command::DomainReputation => "List Remote Domain Reputation",
            Command::AddFeed => "Republish an RSS/Atom Feed on a PubSub Node",
            Command::RemoveFeed => "Stop Republishing a Feed",
            Command::ListFeeds => "List Republished Feeds",
            Command::Invite => "Invite a contact",
            Command::CreateAccount => "Create an account invitation",
        }
    }

    /// Whether `requester` may see and run it: every command is for
    /// admins, except the contact invitation, which is for every local
    /// user. Both invitation commands need invitations switched on.
    fn allowed(self, cx: &Cx, requester: &Jid) -> bool {
        match self {
            Command::Invite => invite::may_invite(cx, requester),
            Command::CreateAccount => cx.config().invites.enabled && is_admin(cx, requester),
            _ => is_admin(cx, requester),
        }
    }

    fn from_node(node: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.node() == node)
    }

    /// The input form, for commands that take input.
    fn form(self) -> Option<Element> {
        let fields: Vec<Element> = match self {
            Command::CreateAccount => return Some(invite::create_account_form(self.name())),
            Command::AddUser => vec![
                field(
                    "jid-single",
                    "accountjid",
                    "The Jabber ID for the account to be added",
                    true,
                ),
                field(
                    "text-private",
                    "password",
                    "The password for this account",
                    true,
                ),
                field("text-private", "password-verify", "Retype password", true),
            ],
            Command::DeleteUser => vec![field(
                "jid-multi",
                "accountjids",
                "The Jabber ID(s) to delete",
                true,
            )],
            Command::ChangePassword => vec![
                field(
                    "jid-single",
                    "accountjid",
                    "The Jabber ID for this account",
                    true,
                ),
                field(
                    "text-private",
                    "password",
                    "The password for this account",
                    true,
                ),
            ],
            Command::Announce => vec![
                field("text-single", "subject", "Subject", false),
                field("text-multi", "announcement", "Announcement", true),
            ],
            Command::BlockDomain => vec![field(
                "text-single",
                "domain",
                "The remote domain to block",
                true,
            )],
            Command::UnblockDomain => vec![field(
                "text-single",
                "domain",
                "The remote domain to unblock",
                true,
            )],
            Command::AddFeed => vec![
                field("text-single", "url", "The feed's http(s) URL", true),
                field(
                    "text-single",
                    "node",
                    "The node of the pubsub service",
                    true,
                ),
                field(
                    "text-single",
                    "host",
                    "The host whose pubsub service carries the node (default: yours)",
                    false,
                ),
                field(
                    "text-single",
                    "interval",
                    "Seconds between polls (default 900)",
                    false,
                ),
            ],
            Command::RemoveFeed => vec![
                field("text-single", "url", "The feed's URL", true),
                field("text-single", "node", "The node it is published on", true),
                field(
                    "text-single",
                    "host",
                    "The host whose pubsub service carries the node (default: yours)",
                    false,
                ),
            ],
            Command::OnlineUsersList
            | Command::RegisteredUsersNum
            | Command::OnlineUsersNum
            | Command::DomainReputation
            | Command::ListFeeds
            | Command::Invite => {
                return None;
            }
        };
        let mut x = Element::new("x", ns::DATA_FORMS)
            .with_attr("type", "form")
            .with_child(Element::new("title", ns::DATA_FORMS).with_text(self.name()))
            .with_child(hidden_form_type());
        for f in fields {
            x.push_child(f);
        }
        Some(x)
    }
}

fn hidden_form_type() -> Element {
    Element::new("field", ns::DATA_FORMS)
        .with_attr("type", "hidden")
        .with_attr("var", "FORM_TYPE")
        .with_child(Element::new("value", ns::DATA_FORMS).with_text(ADMIN))
}

fn field(kind: &str, var: &str, label: &str, required: bool) -> Element {
    let mut f = Element::new("field", ns::DATA_FORMS)
        .with_attr("type", kind)
        .with_attr("var", var)
        .with_attr("label", label);
    if required {
        f.push_child(Element::new("required", ns::DATA_FORMS));
    }
    f
}

/// The values of each field of a submitted form.
fn submitted_values(x: &Element) -> HashMap<String, Vec<String>> {
    let mut out: HashMap<String, Vec<String>> = HashMap::new();
    for f in x.children().filter(|c| c.is("field", ns::DATA_FORMS)) {
        if let Some(var) = f.attr("var") {
            out.entry(var.to_string()).or_default().extend(
                f.children()
                    .filter(|v| v.is("value", ns::DATA_FORMS))
                    .map(Element::text),
            );
        }
    }
    out
}

/// A submitted form's fields, with typed accessors that fail as `bad-request`.
struct Submitted(HashMap<String, Vec<String>>);

impl Submitted {
    fn all(&self, var: &str) -> &[String] {
        self.0.get(var).map_or(&[], Vec::as_slice)
    }

    fn one(&self, var: &str) -> Result<&str, StanzaError> {
        self.all(var)
            .first()
            .map(String::as_str)
            .filter(|v| !v.is_empty())
            .ok_or_else(|| {
                StanzaError::modify(Condition::BadRequest).with_text(format!("{var} is required"))
            })
    }

    /// A local account's JID.
    fn local_account(cx: &Cx, value: &str) -> Result<BareJid, StanzaError> {
        let jid = BareJid::parse(value.trim())
            .map_err(|_| StanzaError::modify(Condition::JidMalformed))?;
        if jid.local().is_none() || !cx.is_local_host(jid.domain()) {
            return Err(StanzaError::modify(Condition::NotAcceptable)
                .with_text(format!("{jid} is not an account of this server")));
        }
        Ok(jid)
    }
}

/// One stage of an execution awaiting its form.
struct Pending {
    requester: Jid,
    command: Command,
}

/// Ad-hoc commands.
#[derive(Default)]
pub struct AdHoc {
    pending: Mutex<HashMap<String, Pending>>,
    feeds: Option<Arc<Feeds>>,
}

impl AdHoc {
    pub fn new() -> Self {
        Self::default()
    }

    /// Serves the feed commands with this poller.
    pub fn with_feeds(mut self, feeds: Arc<Feeds>) -> Self {
        self.feeds = Some(feeds);
        self
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, HashMap<String, Pending>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Module for AdHoc {
    fn name(&self) -> &'static str {
        "adhoc"
    }

    fn register(self: Arc<Self>, reg: &mut Registrar) -> Result<(), RegisterError> {
        reg.server_feature(COMMANDS);
        reg.iq_set(IqTarget::Server, COMMANDS, self)?;
        Ok(())
    }
}

/// An admin speaking from one of its own client sessions.
fn is_admin(cx: &Cx, requester: &Jid) -> bool {
    cx.origin()
        .is_some_and(|s| s.jid.bare() == requester.bare())
        && cx.is_admin(requester.bare())
}

/// Answers disco for the nodes this module owns; `None` for any other node.
/// Called by `disco.rs` for the server's JID.
pub fn disco_node(cx: &Cx, requester: &Jid, query: &Element) -> Option<IqResult> {
    if !cx.server_features().contains(&COMMANDS) {
        return None;
    }
    let node = query.attr("node")?;
    let items = query.ns == ns::DISCO_ITEMS;
    let host = cx.config().hosts.first().cloned().unwrap_or_default();
    if node == COMMANDS {
        let mut out = Element::new("query", query.ns.clone()).with_attr("node", COMMANDS);
        if items {
            let jid = requester_host(cx, requester).unwrap_or(host);
            for c in Command::ALL
                .into_iter()
                .filter(|c| c.allowed(cx, requester))
            {
                out.push_child(
                    Element::new("item", ns::DISCO_ITEMS)
                        .with_attr("jid", jid.as_str())
                        .with_attr("node", c.node())
                        .with_attr("name", c.name()),
                );
            }
        } else {
            out.push_child(
                Element::new("identity", ns::DISCO_INFO)
                    .with_attr("category", "automation")
                    .with_attr("type", "command-list"),
            );
        }
        return Some(Ok(Some(out)));
    }
    let command = Command::from_node(node)?;
    if !command.allowed(cx, requester) {
        return Some(Err(StanzaError::cancel(Condition::ItemNotFound)));
    }
    let mut out = Element::new("query", query.ns.clone()).with_attr("node", node);
    if !items {
        out.push_child(
            Element::new("identity", ns::DISCO_INFO)
                .with_attr("category", "automation")
                .with_attr("type", "command-node")
                .with_attr("name", command.name()),
        );
        for var in [COMMANDS, ns::DATA_FORMS] {
            out.push_child(Element::new("feature", ns::DISCO_INFO).with_attr("var", var));
        }
    }
    Some(Ok(Some(out)))
}

/// The host the requester's account lives on (commands are run against it).
fn requester_host(cx: &Cx, requester: &Jid) -> Option<String> {
    cx.is_local_host(requester.domain())
        .then(|| requester.domain().to_string())
}

fn response(command: Command, sessionid: &str, status: &str) -> Element {
    Element::new("command", COMMANDS)
        .with_attr("node", command.node())
        .with_attr("sessionid", sessionid)
        .with_attr("status", status)
}

fn note(text: impl Into<String>) -> Element {
    Element::new("note", COMMANDS)
        .with_attr("type", "info")
        .with_text(text)
}

fn result_form(fields: Vec<Element>) -> Element {
    let mut x = Element::new("x", ns::DATA_FORMS)
        .with_attr("type", "result")
        .with_child(hidden_form_type());
    for f in fields {
        x.push_child(f);
    }
    x
}

fn value_field(var: &str, label: &str, kind: &str, values: &[String]) -> Element {
    let mut f = Element::new("field", ns::DATA_FORMS)
        .with_attr("type", kind)
        .with_attr("var", var)
        .with_attr("label", label);
    for v in values {
        f.push_child(Element::new("value", ns::DATA_FORMS).with_text(v.as_str()));
    }
    f
}

#[async_trait]
impl IqHandler for AdHoc {
    async fn handle_iq(&self, cx: &Cx, iq: Iq) -> IqResult {
        let cmd = &iq.payload;
        if cmd.name != "command" {
            return Err(StanzaError::modify(Condition::BadRequest));
        }
        let command = cmd
            .attr("node")
            .and_then(Command::from_node)
            .ok_or_else(|| StanzaError::cancel(Condition::ItemNotFound))?;
        if !command.allowed(cx, &iq.from) {
            return Err(StanzaError::auth(Condition::Forbidden));
        }
        let action = cmd.attr("action").unwrap_or("execute");
        let form = cmd
            .child("x", ns::DATA_FORMS)
            .filter(|x| x.attr("type") == Some("submit"));
        // Continuing a session: it must be ours, for this command.
        let sessionid = match cmd.attr("sessionid") {
            Some(id) => {
                let known = self
                    .pending()
                    .remove(id)
                    .filter(|p| p.requester == iq.from && p.command == command);
                if known.is_none() {
                    return Err(StanzaError::modify(Condition::BadRequest)
                        .with_text("unknown or expired command session"));
                }
                Some(id.to_string())
            }
            None => None,
        };
        let sessionid = sessionid.unwrap_or_else(|| stanza_id("cmd"));
        match action {
            "cancel" => return Ok(Some(response(command, &sessionid, "canceled"))),
            "execute" | "complete" | "next" => {}
            _ => return Err(StanzaError::modify(Condition::BadRequest)),
        }
        match (command.form(), form) {
            // First stage: hand out the form.
            (Some(input), None) => {
                let mut pending = self.pending();
                if pending.len() >= MAX_PENDING {
                    pending.clear();
                }
                pending.insert(
                    sessionid.clone(),
                    Pending {
                        requester: iq.from.clone(),
                        command,
                    },
                );
                drop(pending);
                Ok(Some(
                    response(command, &sessionid, "executing")
                        .with_child(
                            Element::new("actions", COMMANDS)
                                .with_attr("execute", "complete")
                                .with_child(Element::new("complete", COMMANDS)),
                        )
                        .with_child(input),
                ))
            }
            (_, form) => {
                let values = Submitted(form.map(submitted_values).unwrap_or_default());
                let host = requester_host(cx, &iq.from)
                    .or_else(|| cx.config().hosts.first().cloned())
                    .unwrap_or_default();
                let payload = match command {
                    Command::Invite => invite::invite(cx, &iq.from).await?,
                    Command::CreateAccount => {
                        let username = values.all("username").first().map(String::as_str);
                        let roster = values
                            .all("roster-subscription")
                            .first()
                            .is_some_and(|v| v == "1" || v == "true");
                        invite::create_account(cx, &iq.from, username, roster).await?
                    }
                    Command::AddFeed | Command::RemoveFeed | Command::ListFeeds => {
                        let Some(feeds) = &self.feeds else {
                            return Err(StanzaError::cancel(Condition::FeatureNotImplemented));
                        };
                        run_feed(cx, feeds, command, &values, &host).await?
                    }
                    _ => run(cx, command, &values, &host).await?,
                };
                Ok(Some(
                    response(command, &sessionid, "completed").with_child(payload),
                ))
            }
        }
    }
}

/// A remote domain from a submitted form, prepared.
fn remote_domain(cx: &Cx, value: &str) -> Result<String, StanzaError> {
    let d = BareJid::domain_only(value.trim())
        .map(|j| j.domain().to_string())
        .map_err(|_| {
            StanzaError::modify(Condition::JidMalformed)
                .with_text(format!("{value:?} is not a domain"))
        })?;
    if cx.is_local_host(&d) {
        return Err(StanzaError::modify(Condition::NotAcceptable)
            .with_text(format!("{d} is one of this server's domains")));
    }
    Ok(d)
}

/// The reputation table: one `<item/>` per remote domain (XEP-0004 §3.4).
fn reputation_table(cx: &Cx) -> Element {
    const COLUMNS: [(&str, &str); 8] = [
        ("domain", "Domain"),
        ("standing", "Standing"),
        ("score", "Score"),
        ("spam-reports", "Spam reports"),
        ("bounces", "Bounces"),
        ("failed-dialbacks", "Failed dialbacks"),
        ("rate-limit-hits", "Rate-limit hits"),
        ("blocked-by", "Blocked by"),
    ];
    let rows = cx.domain_reputations().into_iter().map(|s| {
        let r = &s.record;
        let blocked_by = match (s.configured_block, r.blocked) {
            (true, _) => "configuration",
            (false, true) => "administrator",
            (false, false) if s.standing == Standing::Blocked => "reputation",
            _ => "",
        };
        vec![
            r.domain.clone(),
            s.standing.as_str().to_string(),
            format!("{:.2}", r.score),
            r.spam_reports.to_string(),
            r.bounces.to_string(),
            r.failed_dialbacks.to_string(),
            r.rate_limit_hits.to_string(),
            blocked_by.to_string(),
        ]
    });
    table_form(&COLUMNS, rows)
}

/// A result form laid out as a table (XEP-0004 §3.4): `<reported/>` names
/// the columns (var, label), then one `<item/>` per row, values in column
/// order.
fn table_form(columns: &[(&str, &str)], rows: impl IntoIterator<Item = Vec<String>>) -> Element {
    let mut reported = Element::new("reported", ns::DATA_FORMS);
    for (var, label) in columns {
        reported.push_child(
            Element::new("field", ns::DATA_FORMS)
                .with_attr("var", *var)
                .with_attr("label", *label),
        );
    }
    let mut x = result_form(vec![reported]);
    for values in rows {
        let mut item = Element::new("item", ns::DATA_FORMS);
        for ((var, _), v) in columns.iter().zip(values) {
            item.push_child(
                Element::new("field", ns::DATA_FORMS)
                    .with_attr("var", *var)
                    .with_child(Element::new("value", ns::DATA_FORMS).with_text(v)),
            );
        }
        x.push_child(item);
    }
    x
}

/// Every account with at least one bound session, sorted: read from the
/// session registry, not by walking every stored account.
fn online_users(cx: &Cx) -> Vec<BareJid> {
    let mut online = cx.online_accounts();
    online.sort();
    online
}

/// The feed a submitted form names.
fn feed_key(cx: &Cx, values: &Submitted, host: &str) -> Result<FeedKey, StanzaError> {
    let url = values.one("url")?.trim();
    let parsed = reqwest::Url::parse(url).map_err(|_| {
        StanzaError::modify(Condition::NotAcceptable).with_text(format!("{url:?} is not a URL"))
    })?;
    if !matches!(parsed.scheme(), "http" | "https") || url.len() > 2048 {
        return Err(StanzaError::modify(Condition::NotAcceptable)
            .with_text("the feed URL must be http:// or https://"));
    }
    let node = values.one("node")?;
    if node.len() > 1024 {
        return Err(StanzaError::modify(Condition::NotAcceptable).with_text("node too long"));
    }
    let host = match values.all("host").first().filter(|h| !h.trim().is_empty()) {
        Some(h) if cx.is_local_host(h.trim()) => h.trim().to_string(),
        Some(h) => {
            return Err(StanzaError::modify(Condition::NotAcceptable)
                .with_text(format!("{h} is not a host of this server")));
        }
        None => host.to_string(),
    };
    let service = BareJid::domain_only(&format!("pubsub.{host}"))
        .map_err(|_| StanzaError::modify(Condition::NotAcceptable))?;
    Ok(FeedKey {
        service,
        node: node.to_string(),
        url: url.to_string(),
    })
}

/// Runs a feed command.
async fn run_feed(
    cx: &Cx,
    feeds: &Arc<Feeds>,
    command: Command,
    values: &Submitted,
    host: &str,
) -> Result<Element, StanzaError> {
    match command {
        Command::AddFeed => {
            let key = feed_key(cx, values, host)?;
            let interval = match values.all("interval").first().map(|v| v.trim()) {
                Some(v) if !v.is_empty() => Duration::from_secs(v.parse().map_err(|_| {
                    StanzaError::modify(Condition::NotAcceptable)
                        .with_text("interval must be a number of seconds")
                })?),
                _ => DEFAULT_FEED_INTERVAL,
            };
            if interval < feeds.min_interval() {
                return Err(
                    StanzaError::modify(Condition::NotAcceptable).with_text(format!(
                        "the interval must be at least {} seconds",
                        feeds.min_interval().as_secs()
                    )),
                );
            }
            feeds
                .add(
                    cx,
                    FeedSpec {
                        key: key.clone(),
                        interval,
                        validators: Default::default(),
                    },
                )
                .await
                .map_err(internal)?;
            Ok(note(format!(
                "{} is republished on node {} of {}",
                key.url, key.node, key.service
            )))
        }
        Command::RemoveFeed => {
            let key = feed_key(cx, values, host)?;
            if feeds.remove(cx, &key).await.map_err(internal)? {
                Ok(note(format!("{} is no longer republished", key.url)))
            } else {
                Err(StanzaError::cancel(Condition::ItemNotFound)
                    .with_text("no such feed on that node"))
            }
        }
        _ => {
            const COLUMNS: [(&str, &str); 5] = [
                ("url", "URL"),
                ("service", "Service"),
                ("node", "Node"),
                ("interval", "Interval (s)"),
                ("origin", "Added by"),
            ];
            let feeds = cx.stores().pubsub.feeds().await.map_err(internal)?;
            let rows = feeds.into_iter().map(|f| {
                vec![
                    f.key.url,
                    f.key.service.to_string(),
                    f.key.node,
                    f.interval_secs.to_string(),
                    if f.admin {
                        "administrator"
                    } else {
                        "configuration"
                    }
                    .to_string(),
                ]
            });
            Ok(table_form(&COLUMNS, rows))
        }
    }
}

/// Runs a command with its submitted values; returns the `<note/>` or result form.
async fn run(
    cx: &Cx,
    command: Command,
    values: &Submitted,
    host: &str,
) -> Result<Element, StanzaError> {
    match command {
        Command::AddUser => {
            let user = Submitted::local_account(cx, values.one("accountjid")?)?;
            let password = values.one("password")?;
            if values
                .all("password-verify")
                .first()
                .is_some_and(|v| v != password)
            {
                return Err(StanzaError::modify(Condition::NotAcceptable)
                    .with_text("the passwords do not match"));
            }
            let secrets = secrets_for(cx, &user, password).await?;
            match cx.stores().accounts.create(&user, &secrets).await {
                Ok(()) => {}
                Err(StoreError::AlreadyExists) => {
                    return Err(StanzaError::cancel(Condition::Conflict)
                        .with_text(format!("{user} already exists")));
                }
                Err(e) => return Err(internal(e)),
            }
            tracing::info!(%user, "account added by an administrator");
            Ok(note(format!("{user} was added")))
        }
        Command::DeleteUser => {
            let jids = values.all("accountjids");
            if jids.is_empty() {
                return Err(
                    StanzaError::modify(Condition::BadRequest).with_text("accountjids is required")
                );
            }
            let users = jids
                .iter()
                .map(|j| Submitted::local_account(cx, j))
                .collect::<Result<Vec<_>, _>>()?;
            let mut missing = Vec::new();
            for user in &users {
                match cx.delete_account(user).await {
                    Ok(()) => tracing::info!(%user, "account deleted by an administrator"),
                    Err(StoreError::NotFound) => missing.push(user.to_string()),
                    Err(e) => return Err(internal(e)),
                }
            }
            Ok(if missing.is_empty() {
                note("deleted")
            } else {
                note(format!("no such account: {}", missing.join(", ")))
            })
        }
        Command::ChangePassword => {
            let user = Submitted::local_account(cx, values.one("accountjid")?)?;
            let secrets = secrets_for(cx, &user, values.one("password")?).await?;
            match cx.stores().accounts.set_secrets(&user, &secrets).await {
                Ok(()) => {
                    tracing::info!(%user, "password changed by an administrator");
                    cx.reset_sessions(&user, None);
                    Ok(note(format!("password of {user} changed")))
                }
                Err(StoreError::NotFound) => Err(StanzaError::cancel(Condition::ItemNotFound)
                    .with_text(format!("no such account: {user}"))),
                Err(e) => Err(internal(e)),
            }
        }
        Command::OnlineUsersList => {
            let users: Vec<String> = online_users(cx).iter().map(ToString::to_string).collect();
            Ok(result_form(vec![value_field(
                "onlineuserjids",
                "The list of all online users",
                "jid-multi",
                &users,
            )]))
        }
        Command::OnlineUsersNum => {
            let n = online_users(cx).len();
            Ok(result_form(vec![value_field(
                "onlineusersnum",
                "The number of online users",
                "text-single",
                &[n.to_string()],
            )]))
        }
        Command::RegisteredUsersNum => {
            let n = cx.stores().accounts.count(None).await.map_err(internal)?;
            Ok(result_form(vec![value_field(
                "registeredusersnum",
                "The number of registered users",
                "text-single",
                &[n.to_string()],
            )]))
        }
        Command::BlockDomain | Command::UnblockDomain => {
            let domain = remote_domain(cx, values.one("domain")?)?;
            let block = command == Command::BlockDomain;
            cx.set_domain_blocked(&domain, block)
                .await
                .map_err(internal)?;
            Ok(note(if block {
                format!("{domain} is blocked")
            } else if cx.config().s2s.blocked_domains.contains(&domain) {
                format!("{domain} is unblocked here, but [s2s] blocked_domains still lists it")
            } else {
                format!("{domain} is unblocked")
            }))
        }
        Command::DomainReputation => Ok(reputation_table(cx)),
        // Served by `run_feed`, which has the poller, and by `invite`.
        Command::AddFeed
        | Command::RemoveFeed
        | Command::ListFeeds
        | Command::Invite
        | Command::CreateAccount => Err(StanzaError::cancel(Condition::FeatureNotImplemented)),
        Command::Announce => {
            let body = values.all("announcement").join("\n");
            if body.trim().is_empty() {
                return Err(StanzaError::modify(Condition::BadRequest)
                    .with_text("announcement is required"));
            }
            let subject = values.all("subject").first().cloned().unwrap_or_default();
            let mut sent = 0usize;
            for user in online_users(cx) {
                for s in cx.sessions_of(&user) {
                    if !s.is_available() {
                        continue;
                    }
                    let mut msg = Element::new("message", ns::CLIENT)
                        .with_attr("from", host)
                        .with_attr("to", s.jid.to_string())
                        .with_attr("type", "headline")
                        .with_attr("id", stanza_id("announce"));
                    if !subject.is_empty() {
                        msg.push_child(
                            Element::new("subject", ns::CLIENT).with_text(subject.as_str()),
                        );
                    }
                    msg.push_child(Element::new("body", ns::CLIENT).with_text(body.as_str()));
                    cx.route(msg).await;
                    sent += 1;
                }
            }
            Ok(note(format!("announcement sent to {sent} sessions")))
        }
    }
}

/// SCRAM secrets for a new password, derived off the async workers.
async fn secrets_for(
    cx: &Cx,
    user: &waxwing_proto::jid::BareJid,
    password: &str,
) -> Result<Vec<waxwing_store::StoredSecret>, StanzaError> {
    let min = cx.config().min_password_length.max(1);
    if password.chars().count() < min {
        return Err(StanzaError::modify(Condition::NotAcceptable)
            .with_text(format!("the password needs at least {min} characters")));
    }
    let owned = password.to_string();
    let iterations = cx.config().scram_iterations;
    match tokio::task::spawn_blocking(move || credentials::make_secrets(&owned, iterations))
        .await
        .map(|r| r.and_then(|s| credentials::with_digest(&cx.config(), user, password, s)))
    {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(_)) => Err(StanzaError::modify(Condition::NotAcceptable)
            .with_text("the password is not acceptable")),
        Err(e) => {
            tracing::error!(error = %e, "deriving SCRAM secrets failed");
            Err(StanzaError::wait(Condition::InternalServerError))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_round_trip() {
        for c in Command::ALL {
            assert_eq!(Command::from_node(c.node()), Some(c));
        }
        assert_eq!(
            Command::from_node("http://jabber.org/protocol/admin#nope"),
            None
        );
    }

    #[test]
    fn forms_carry_the_admin_form_type() {
        let form = Command::AddUser.form().unwrap();
        let fields = submitted_values(&form);
        assert_eq!(fields["FORM_TYPE"], vec![ADMIN.to_string()]);
        assert!(fields.contains_key("accountjid"));
        assert!(fields.contains_key("password-verify"));
        assert!(Command::RegisteredUsersNum.form().is_none());
    }

    #[test]
    fn submitted_forms_are_read() {
        let x = Element::new("x", ns::DATA_FORMS)
            .with_attr("type", "submit")
            .with_child(
                Element::new("field", ns::DATA_FORMS)
                    .with_attr("var", "accountjids")
                    .with_child(Element::new("value", ns::DATA_FORMS).with_text("a@b"))
                    .with_child(Element::new("value", ns::DATA_FORMS).with_text("c@b")),
            )
            .with_child(
                Element::new("field", ns::DATA_FORMS)
                    .with_attr("var", "password")
                    .with_child(Element::new("value", ns::DATA_FORMS)),
            );
        let s = Submitted(submitted_values(&x));
        assert_eq!(s.all("accountjids"), ["a@b", "c@b"]);
        assert_eq!(
            s.one("password").unwrap_err().condition,
            Condition::BadRequest
        );
        assert!(s.one("missing").is_err());
    }
}
