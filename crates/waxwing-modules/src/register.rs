//! XEP-0077: In-Band Registration.
//!
//! One handler serves two audiences, told apart by [`Iq::authenticated`]:
//!
//! - before SASL, someone without an account asks for the form and creates
//!   an account, only while `[registration] open` is true;
//! - after SASL, a user reads its registration, changes its password
//!   (XEP-0077 §3.3) or deletes its account (§3.2). These work whether or
//!   not registration is open: they only touch the sender's own account.
//!
//! Before SASL, a stream that presented an invitation token (XEP-0445
//! `<preauth/>`, checked in the core's negotiation) creates its account
//! through `waxwing_core::invites` whether or not registration is open;
//! without a token, a username reserved by a pending invitation is taken.
//!
//! Data forms (XEP-0077 §5 extensibility) are not offered; the fixed
//! `<username/>` + `<password/>` fields are what every client implements.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use waxwing_core::config::SourceConfig;
use waxwing_core::credentials;
use waxwing_core::hooks::{
    Cx, Iq, IqHandler, IqResult, IqTarget, Module, RegisterError, Registrar,
};
use waxwing_core::invites::{PreAuth, RedeemError, unix_now};
use waxwing_proto::jid::BareJid;
use waxwing_proto::ns;
use waxwing_proto::sasl::SaslError;
use waxwing_proto::stanza::{Condition, StanzaError};
use waxwing_proto::xml::Element;
use waxwing_store::{StoreError, StoredSecret};

/// The in-band registration module.
pub struct Register;

/// Shown in the registration form.
const INSTRUCTIONS: &str = "Choose a username and password to register with this server.";

impl Module for Register {
    fn name(&self) -> &'static str {
        "register"
    }

    fn register(self: Arc<Self>, reg: &mut Registrar) -> Result<(), RegisterError> {
        // Advertised even when sign-up is closed: password change and
        // account removal work for every user.
        reg.server_feature(ns::REGISTER);
        reg.iq(IqTarget::Server, ns::REGISTER, self)?;
        Ok(())
    }
}

#[async_trait]
impl IqHandler for Register {
    async fn handle_iq(&self, cx: &Cx, iq: Iq) -> IqResult {
        let request = parse_request(&iq.payload, iq.is_set)?;
        let answer = if iq.authenticated {
            on_account_request(cx, request).await
        } else {
            // Before SASL, `to` (and `from`) is the host the stream was opened to.
            let host = iq.to.as_ref().unwrap_or(&iq.from).domain();
            match &iq.preauth {
                Some(preauth) => return on_invited_signup(cx, host, preauth, request).await,
                None => on_signup_request(cx, host, request).await,
            }
        };
        Ok(answer?)
    }
}

/// Before authentication: the form, or a new account.
async fn on_signup_request(
    cx: &Cx,
    host: &str,
    request: Request,
) -> Result<Option<Element>, IbrError> {
    if !cx.config().registration_open {
        return Err(IbrError::Closed);
    }
    // Guests and directory accounts are not created here.
    if !has_internal_accounts(cx, host) {
        return Err(IbrError::Closed);
    }
    let (username, password) = match request {
        Request::Get => return Ok(Some(form())),
        Request::Remove => return Err(IbrError::AuthenticateFirst),
        Request::Incomplete => return Err(IbrError::MissingFields),
        Request::Credentials { username, password } => (username, password),
    };
    let user = prepare_username(&username, host).ok_or(IbrError::BadUsername)?;
    // XEP-0077 §3.1: a taken username is a <conflict/>, whatever the
    // password; checking the password first would answer "too short" and
    // let the client pick another one for a name it can never have. Also
    // before deriving secrets, so a taken name costs no PBKDF2; `create`
    // below still catches a concurrent registration.
    if cx.stores().accounts.exists(&user).await? {
        return Err(IbrError::Taken);
    }
    // XEP-0401 §5.2: a name an invitation is for is kept for its invitee.
    if cx
        .stores()
        .invites
        .username_reserved(host, user.local().unwrap_or_default(), unix_now())
        .await?
    {
        return Err(IbrError::Taken);
    }
    check_password(&password, cx.config().min_password_length)?;
    let secrets = derive_secrets(password.clone(), cx.config().scram_iterations).await?;
    let secrets = credentials::with_digest(&cx.config(), &user, &password, secrets)
        .map_err(|_| IbrError::BadPassword)?;
    match cx.stores().accounts.create(&user, &secrets).await {
        Ok(()) => {}
        Err(StoreError::AlreadyExists) => return Err(IbrError::Taken),
        Err(e) => return Err(e.into()),
    }
    // `create` is durable once it returns, so the success reply is honest.
    tracing::info!(%user, "account registered in-band");
    Ok(None)
}

/// Before authentication, with an accepted invitation token (XEP-0445).
async fn on_invited_signup(cx: &Cx, host: &str, preauth: &PreAuth, request: Request) -> IqResult {
    let (username, password) = match request {
        Request::Get => return Ok(Some(form())),
        Request::Remove => return Err(IbrError::AuthenticateFirst.into()),
        Request::Incomplete => return Err(IbrError::MissingFields.into()),
        Request::Credentials { username, password } => (username, password),
    };
    match cx
        .invites()
        .register_account(host, preauth, &username, password)
        .await
    {
        Ok(_) => Ok(None),
        Err(e) => Err(redeem_error(e)),
    }
}

fn redeem_error(e: RedeemError) -> StanzaError {
    use Condition::*;
    let text = e.to_string();
    match e {
        RedeemError::Refused(_) | RedeemError::NotInternal => {
            StanzaError::cancel(NotAllowed).with_text(text)
        }
        RedeemError::WrongUsername(_)
        | RedeemError::BadUsername
        | RedeemError::WeakPassword { .. }
        | RedeemError::BadPassword => StanzaError::modify(NotAcceptable).with_text(text),
        RedeemError::Taken => StanzaError::cancel(Conflict),
        RedeemError::Throttled => StanzaError::wait(PolicyViolation).with_text(text),
        RedeemError::Store(e) => crate::internal(e),
        RedeemError::Internal(e) => {
            tracing::error!(error = %e, "register: invited sign-up failed");
            StanzaError::wait(InternalServerError)
        }
    }
}

/// After authentication: the sender's own registration.
async fn on_account_request(cx: &Cx, request: Request) -> Result<Option<Element>, IbrError> {
    // Only a local client session speaks for an account. An IQ to the
    // server that came some other way (a module, later s2s) may carry a
    // local `from` it cannot prove, and removal is irreversible.
    let user = cx
        .origin()
        .map(|s| s.jid.bare().clone())
        .ok_or(IbrError::NotFromClient)?;
    match request {
        Request::Get => Ok(Some(registered(&user))),
        Request::Remove => match cx.delete_account(&user).await {
            Ok(()) => {
                tracing::info!(%user, "account removed in-band");
                Ok(None)
            }
            Err(StoreError::NotFound) => Err(IbrError::NoAccount),
            Err(e) => Err(e.into()),
        },
        Request::Incomplete => Err(IbrError::IncompleteChange),
        Request::Credentials { username, password } => {
            // XEP-0077 §3.3: the username names the account; it must be ours.
            if prepare_username(&username, user.domain()).as_ref() != Some(&user) {
                return Err(IbrError::NotYours);
            }
            // A guest given a password would outlive its session; a
            // directory's password is changed in the directory.
            if !has_internal_accounts(cx, user.domain()) {
                return Err(IbrError::ManagedElsewhere);
            }
            check_password(&password, cx.config().min_password_length)?;
            let secrets = derive_secrets(password.clone(), cx.config().scram_iterations).await?;
            let secrets = credentials::with_digest(&cx.config(), &user, &password, secrets)
                .map_err(|_| IbrError::BadPassword)?;
            match cx.stores().accounts.set_secrets(&user, &secrets).await {
                Ok(()) => {
                    tracing::info!(%user, "password changed in-band");
                    cx.reset_sessions(&user, cx.origin().map(|o| &o.jid));
                    Ok(None)
                }
                Err(StoreError::NotFound) => Err(IbrError::NoAccount),
                Err(e) => Err(e.into()),
            }
        }
    }
}

/// Whether `host`'s passwords live in our account store (`source = "internal"`).
fn has_internal_accounts(cx: &Cx, host: &str) -> bool {
    cx.config()
        .auth
        .host(host)
        .is_some_and(|h| h.source == SourceConfig::Internal)
}

/// Derives the SCRAM secrets on the blocking pool: PBKDF2 at a real
/// iteration count is milliseconds of CPU per hash, long enough to stall
/// every other stream sharing the async worker.
async fn derive_secrets(password: String, iterations: u32) -> Result<Vec<StoredSecret>, IbrError> {
    let joined =
        tokio::task::spawn_blocking(move || credentials::make_secrets(&password, iterations)).await;
    match joined {
        Ok(Ok(secrets)) => Ok(secrets),
        Ok(Err(SaslError::InvalidPassword)) => Err(IbrError::BadPassword),
        Ok(Err(e)) => Err(IbrError::Internal(e.to_string())),
        Err(e) => Err(IbrError::Internal(e.to_string())),
    }
}

/// What a `jabber:iq:register` request asks for.
#[derive(PartialEq, Eq)]
enum Request {
    /// `get`: the form, or the current registration.
    Get,
    /// `set` with `<remove/>`: delete the account.
    Remove,
    /// `set` with both `<username/>` and `<password/>`.
    Credentials { username: String, password: String },
    /// `set` with neither `<remove/>` nor both fields (e.g. a data form).
    Incomplete,
}

/// The password stays out of logs and test failure output.
impl fmt::Debug for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Request::Get => f.write_str("Get"),
            Request::Remove => f.write_str("Remove"),
            Request::Incomplete => f.write_str("Incomplete"),
            Request::Credentials { username, .. } => f
                .debug_struct("Credentials")
                .field("username", username)
                .field("password", &format_args!("<redacted>"))
                .finish(),
        }
    }
}

/// Reads `<query xmlns='jabber:iq:register'>…</query>`.
fn parse_request(payload: &Element, is_set: bool) -> Result<Request, StanzaError> {
    if !payload.is("query", ns::REGISTER) {
        return Err(StanzaError::modify(Condition::BadRequest));
    }
    if !is_set {
        return Ok(Request::Get);
    }
    if payload.child("remove", ns::REGISTER).is_some() {
        // XEP-0077 §3.2: `<remove/>` MUST be the only child, so that a
        // confused client cannot delete an account while meaning to edit it.
        if payload.children().count() != 1 {
            return Err(StanzaError::modify(Condition::BadRequest)
                .with_text("<remove/> must be the only child of <query/>"));
        }
        return Ok(Request::Remove);
    }
    let field = |name| payload.child(name, ns::REGISTER).map(Element::text);
    Ok(match (field("username"), field("password")) {
        (Some(username), Some(password)) => Request::Credentials { username, password },
        _ => Request::Incomplete,
    })
}

/// The account `username@host`, if `username` is a valid localpart.
fn prepare_username(username: &str, host: &str) -> Option<BareJid> {
    if username.is_empty() {
        return None;
    }
    BareJid::new(Some(username), host).ok()
}

/// Counted in characters, as `waxwing user add` counts them. An empty
/// password is refused whatever the setting: XEP-0077 §3.3 forbids
/// changing a password to a null value.
fn check_password(password: &str, min: usize) -> Result<(), IbrError> {
    let min = min.max(1);
    if password.chars().count() < min {
        return Err(IbrError::WeakPassword { min });
    }
    Ok(())
}

/// XEP-0077 §3.1 example 2: the registration form.
fn form() -> Element {
    Element::new("query", ns::REGISTER)
        .with_child(Element::new("instructions", ns::REGISTER).with_text(INSTRUCTIONS))
        .with_child(Element::new("username", ns::REGISTER))
        .with_child(Element::new("password", ns::REGISTER))
}

/// XEP-0077 §3.1 example 5: already registered. The password is not
/// echoed: we don't have it, only its SCRAM secrets.
fn registered(user: &BareJid) -> Element {
    Element::new("query", ns::REGISTER)
        .with_child(Element::new("registered", ns::REGISTER))
        .with_child(
            Element::new("username", ns::REGISTER).with_text(user.local().unwrap_or_default()),
        )
}

/// Why a registration request failed; mapped to the wire in one place below.
#[derive(Debug)]
enum IbrError {
    /// Sign-up is closed by configuration.
    Closed,
    /// `<remove/>` before authenticating.
    AuthenticateFirst,
    /// A sign-up without both fields.
    MissingFields,
    /// A password change without both fields.
    IncompleteChange,
    /// Not a valid localpart.
    BadUsername,
    /// Shorter than `[registration] min_password_length`.
    WeakPassword { min: usize },
    /// Fails PRECIS OpaqueString (e.g. control characters).
    BadPassword,
    /// The account already exists.
    Taken,
    /// A password change naming another account.
    NotYours,
    /// The account is gone (deleted concurrently).
    NoAccount,
    /// An authenticated request that did not come from a local client session.
    NotFromClient,
    /// The host's accounts are anonymous or checked by an external source.
    ManagedElsewhere,
    /// Storage failed.
    Store(StoreError),
    /// Secret derivation failed in a way the client cannot fix.
    Internal(String),
}

impl From<StoreError> for IbrError {
    fn from(e: StoreError) -> Self {
        IbrError::Store(e)
    }
}

impl From<IbrError> for StanzaError {
    fn from(e: IbrError) -> Self {
        use Condition::*;
        match e {
            IbrError::Closed => StanzaError::cancel(NotAllowed).with_text("registration is closed"),
            // RFC 6120 §8.3.3.13: not-authorized means "authenticate first".
            IbrError::AuthenticateFirst => StanzaError::auth(NotAuthorized),
            // XEP-0077 §3.1 example 8.
            IbrError::MissingFields => StanzaError::modify(NotAcceptable)
                .with_text("a username and a password are required"),
            // XEP-0077 §3.3: "does not contain complete information".
            IbrError::IncompleteChange => {
                StanzaError::modify(BadRequest).with_text("a username and a password are required")
            }
            IbrError::BadUsername => {
                StanzaError::modify(NotAcceptable).with_text("invalid username")
            }
            IbrError::WeakPassword { min } => StanzaError::modify(NotAcceptable)
                .with_text(format!("the password must have at least {min} characters")),
            IbrError::BadPassword => StanzaError::modify(NotAcceptable)
                .with_text("the password contains characters that are not allowed"),
            IbrError::Taken => StanzaError::cancel(Conflict),
            IbrError::NotYours => {
                StanzaError::modify(BadRequest).with_text("the username is not yours")
            }
            IbrError::NoAccount => StanzaError::auth(RegistrationRequired),
            IbrError::NotFromClient => StanzaError::auth(Forbidden),
            IbrError::ManagedElsewhere => StanzaError::cancel(NotAllowed)
                .with_text("passwords on this host are not managed by this server"),
            IbrError::Store(e) => crate::internal(e),
            IbrError::Internal(e) => {
                tracing::error!(error = %e, "register: deriving secrets failed");
                StanzaError::wait(InternalServerError)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query() -> Element {
        Element::new("query", ns::REGISTER)
    }

    fn field(name: &str, text: &str) -> Element {
        Element::new(name, ns::REGISTER).with_text(text)
    }

    #[test]
    fn parses_get_whatever_its_content() {
        assert_eq!(parse_request(&query(), false).unwrap(), Request::Get);
        let with_junk = query().with_child(field("username", "x"));
        assert_eq!(parse_request(&with_junk, false).unwrap(), Request::Get);
    }

    #[test]
    fn parses_credentials() {
        let q = query()
            .with_child(field("username", "juliet"))
            .with_child(field("password", "R0m30!"));
        assert_eq!(
            parse_request(&q, true).unwrap(),
            Request::Credentials {
                username: "juliet".into(),
                password: "R0m30!".into()
            }
        );
    }

    #[test]
    fn missing_field_or_form_is_incomplete() {
        let q = query().with_child(field("username", "juliet"));
        assert_eq!(parse_request(&q, true).unwrap(), Request::Incomplete);
        let form =
            query().with_child(Element::new("x", ns::DATA_FORMS).with_attr("type", "submit"));
        assert_eq!(parse_request(&form, true).unwrap(), Request::Incomplete);
        assert_eq!(parse_request(&query(), true).unwrap(), Request::Incomplete);
    }

    #[test]
    fn remove_must_be_alone() {
        let q = query().with_child(Element::new("remove", ns::REGISTER));
        assert_eq!(parse_request(&q, true).unwrap(), Request::Remove);
        let q = q.with_child(field("username", "juliet"));
        assert_eq!(
            parse_request(&q, true).unwrap_err().condition,
            Condition::BadRequest
        );
    }

    #[test]
    fn wrong_payload_is_bad_request() {
        let err = parse_request(&Element::new("register", ns::REGISTER), true).unwrap_err();
        assert_eq!(err.condition, Condition::BadRequest);
    }

    #[test]
    fn debug_hides_password() {
        let r = Request::Credentials {
            username: "juliet".into(),
            password: "s3cret-pw".into(),
        };
        let text = format!("{r:?}");
        assert!(
            text.contains("juliet") && !text.contains("s3cret-pw"),
            "{text}"
        );
    }

    #[test]
    fn usernames_are_prepared() {
        let jid = prepare_username("Juliet", "example.com").unwrap();
        assert_eq!(jid.to_string(), "juliet@example.com");
        assert_eq!(prepare_username("", "example.com"), None);
        assert_eq!(prepare_username("a@b", "example.com"), None);
        assert_eq!(prepare_username("a/b", "example.com"), None);
        assert_eq!(prepare_username("with space", "example.com"), None);
    }

    #[test]
    fn password_length_is_in_characters_and_never_zero() {
        assert!(check_password("ääää", 4).is_ok());
        assert!(matches!(
            check_password("äää", 4),
            Err(IbrError::WeakPassword { min: 4 })
        ));
        assert!(matches!(
            check_password("", 0),
            Err(IbrError::WeakPassword { min: 1 })
        ));
        assert!(check_password("x", 0).is_ok());
    }

    #[test]
    fn errors_map_to_xep_0077_conditions() {
        let cases = [
            (IbrError::Closed, Condition::NotAllowed, "cancel"),
            (
                IbrError::AuthenticateFirst,
                Condition::NotAuthorized,
                "auth",
            ),
            (IbrError::MissingFields, Condition::NotAcceptable, "modify"),
            (IbrError::IncompleteChange, Condition::BadRequest, "modify"),
            (IbrError::BadUsername, Condition::NotAcceptable, "modify"),
            (
                IbrError::WeakPassword { min: 8 },
                Condition::NotAcceptable,
                "modify",
            ),
            (IbrError::BadPassword, Condition::NotAcceptable, "modify"),
            (IbrError::Taken, Condition::Conflict, "cancel"),
            (IbrError::NotYours, Condition::BadRequest, "modify"),
            (IbrError::NoAccount, Condition::RegistrationRequired, "auth"),
            (IbrError::NotFromClient, Condition::Forbidden, "auth"),
            (
                IbrError::Store(StoreError::Backend("down".into())),
                Condition::InternalServerError,
                "wait",
            ),
            (
                IbrError::Internal("x".into()),
                Condition::InternalServerError,
                "wait",
            ),
        ];
        for (e, cond, kind) in cases {
            let se = StanzaError::from(e);
            assert_eq!((se.condition, se.kind.as_str()), (cond, kind));
        }
    }

    #[test]
    fn store_detail_never_reaches_the_wire() {
        let se = StanzaError::from(IbrError::Store(StoreError::Backend("SELECT secret".into())));
        assert_eq!(se.text, None);
    }

    #[test]
    fn weak_password_says_how_long() {
        let se = StanzaError::from(IbrError::WeakPassword { min: 8 });
        assert_eq!(
            se.text.as_deref(),
            Some("the password must have at least 8 characters")
        );
    }

    #[test]
    fn form_and_registered_payloads() {
        assert_eq!(
            form().to_xml(),
            format!(
                "<query xmlns='jabber:iq:register'><instructions>{INSTRUCTIONS}</instructions>\
                 <username/><password/></query>"
            )
        );
        let user = BareJid::parse("juliet@example.com").unwrap();
        assert_eq!(
            registered(&user).to_xml(),
            "<query xmlns='jabber:iq:register'><registered/><username>juliet</username></query>"
        );
    }

    #[tokio::test]
    async fn secrets_verify_and_bad_passwords_are_refused() {
        let secrets = derive_secrets("correct horse".into(), 1).await.unwrap();
        assert!(credentials::verify(&secrets, "correct horse"));
        assert!(!credentials::verify(&secrets, "wrong horse"));
        assert!(matches!(
            derive_secrets("bell\u{7}".into(), 1).await,
            Err(IbrError::BadPassword)
        ));
    }
}
