//! XEP-0401 §3: the two ad-hoc commands that make invitations. `adhoc.rs`
//! routes them here; this file decides what each makes and writes the
//! `urn:xmpp:invite#invitation` result form.

use waxwing_core::hooks::Cx;
use waxwing_core::invites::{CreateError, Created, NewInvite};
use waxwing_proto::jid::Jid;
use waxwing_proto::ns;
use waxwing_proto::stanza::{Condition, StanzaError};
use waxwing_proto::xml::Element;
use waxwing_store::InviteKind;

/// `urn:xmpp:invite#invite`: a contact invitation from the requester.
pub const INVITE: &str = "urn:xmpp:invite#invite";
/// `urn:xmpp:invite#create-account`: an account invitation (admins).
pub const CREATE_ACCOUNT: &str = "urn:xmpp:invite#create-account";
/// The result form's `FORM_TYPE`.
const INVITATION: &str = "urn:xmpp:invite#invitation";

/// Whether `requester` may run the contact invitation command: a local
/// account, from one of its own sessions, while invitations are on.
pub fn may_invite(cx: &Cx, requester: &Jid) -> bool {
    cx.config().invites.enabled
        && requester.local().is_some()
        && cx.is_local_host(requester.domain())
        && cx
            .origin()
            .is_some_and(|s| s.jid.bare() == requester.bare())
}

/// Runs `urn:xmpp:invite#invite`: answers at once (XEP-0401 §3.1) with a
/// contact invitation that also lets the invitee register here when the
/// requester is an admin or `[invites] users_can_invite_accounts` is on.
pub async fn invite(cx: &Cx, requester: &Jid) -> Result<Element, StanzaError> {
    let creator = requester.to_bare();
    let may_register = cx.is_admin(&creator) || cx.config().invites.users_can_invite_accounts;
    let kind = if may_register && cx.invites().host_has_internal_accounts(creator.domain()) {
        InviteKind::RosterAndRegister
    } else {
        InviteKind::Roster
    };
    let created = cx
        .invites()
        .create(NewInvite {
            host: creator.domain().to_string(),
            kind,
            creator: Some(creator),
            username: None,
            valid_for: None,
            max_uses: 1,
        })
        .await
        .map_err(refused)?;
    Ok(invitation_form(&created))
}

/// Runs `urn:xmpp:invite#create-account` with the submitted `username`
/// (optional) and `roster-subscription` (whether the new account becomes
/// the admin's contact).
pub async fn create_account(
    cx: &Cx,
    requester: &Jid,
    username: Option<&str>,
    roster_subscription: bool,
) -> Result<Element, StanzaError> {
    let creator = requester.to_bare();
    let created = cx
        .invites()
        .create(NewInvite {
            host: creator.domain().to_string(),
            kind: if roster_subscription {
                InviteKind::RosterAndRegister
            } else {
                InviteKind::Register
            },
            creator: Some(creator),
            username: username
                .map(str::trim)
                .filter(|u| !u.is_empty())
                .map(str::to_string),
            valid_for: None,
            max_uses: 1,
        })
        .await
        .map_err(refused)?;
    Ok(invitation_form(&created))
}

/// The input form of `create-account`.
pub fn create_account_form(title: &str) -> Element {
    let field = |kind: &str, var: &str, label: &str| {
        Element::new("field", ns::DATA_FORMS)
            .with_attr("type", kind)
            .with_attr("var", var)
            .with_attr("label", label)
    };
    Element::new("x", ns::DATA_FORMS)
        .with_attr("type", "form")
        .with_child(Element::new("title", ns::DATA_FORMS).with_text(title))
        .with_child(
            field("hidden", "FORM_TYPE", "")
                .with_child(Element::new("value", ns::DATA_FORMS).with_text(CREATE_ACCOUNT)),
        )
        .with_child(field(
            "text-single",
            "username",
            "Username of the new account (empty: the invitee chooses)",
        ))
        .with_child(
            field(
                "boolean",
                "roster-subscription",
                "Add the new account to my contacts",
            )
            .with_child(Element::new("value", ns::DATA_FORMS).with_text("0")),
        )
}

/// XEP-0401 §3.1 example 3: `uri`, `landing-url`, `expire`.
fn invitation_form(created: &Created) -> Element {
    let value_field = |var: &str, label: &str, value: &str| {
        Element::new("field", ns::DATA_FORMS)
            .with_attr(
                "type",
                if var == "FORM_TYPE" {
                    "hidden"
                } else {
                    "text-single"
                },
            )
            .with_attr("var", var)
            .with_attr("label", label)
            .with_child(Element::new("value", ns::DATA_FORMS).with_text(value))
    };
    let expires = waxwing_core::time::xep0082(
        std::time::UNIX_EPOCH
            + std::time::Duration::from_secs(created.invite.expires_at.max(0) as u64),
    );
    let mut x = Element::new("x", ns::DATA_FORMS)
        .with_attr("type", "result")
        .with_child(value_field("FORM_TYPE", "", INVITATION))
        .with_child(value_field("uri", "Invitation URI", &created.uri));
    if let Some(url) = &created.landing_url {
        x.push_child(value_field("landing-url", "Invitation web page", url));
    }
    x.push_child(value_field("expire", "Valid until", &expires));
    x
}

fn refused(e: CreateError) -> StanzaError {
    match e {
        CreateError::Disabled => {
            StanzaError::cancel(Condition::NotAllowed).with_text(e.to_string())
        }
        CreateError::TooMany(_) => {
            StanzaError::wait(Condition::ResourceConstraint).with_text(e.to_string())
        }
        CreateError::UsernameTaken(_) => {
            StanzaError::cancel(Condition::Conflict).with_text(e.to_string())
        }
        CreateError::BadUsername(_) => {
            StanzaError::modify(Condition::JidMalformed).with_text(e.to_string())
        }
        CreateError::BadHost(_) | CreateError::NoCreator | CreateError::BadUses => {
            StanzaError::cancel(Condition::NotAllowed).with_text(e.to_string())
        }
        CreateError::Store(e) => crate::internal(e),
    }
}
