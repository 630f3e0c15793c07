//! Roles and affiliations (XEP-0045 §5) and who may change which.

use waxwing_proto::stanza::{Condition, StanzaError};

/// A temporary position in the room, lost on leaving (XEP-0045 §5.1).
/// Ordered by privilege.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    None,
    Visitor,
    Participant,
    Moderator,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::None => "none",
            Role::Visitor => "visitor",
            Role::Participant => "participant",
            Role::Moderator => "moderator",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "none" => Role::None,
            "visitor" => Role::Visitor,
            "participant" => Role::Participant,
            "moderator" => Role::Moderator,
            _ => return None,
        })
    }
}

/// A long-lived relation to the room (XEP-0045 §5.2). Ordered by privilege.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Affiliation {
    Outcast,
    None,
    Member,
    Admin,
    Owner,
}

impl Affiliation {
    pub fn as_str(self) -> &'static str {
        match self {
            Affiliation::Outcast => "outcast",
            Affiliation::None => "none",
            Affiliation::Member => "member",
            Affiliation::Admin => "admin",
            Affiliation::Owner => "owner",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "outcast" => Affiliation::Outcast,
            "none" => Affiliation::None,
            "member" => Affiliation::Member,
            "admin" => Affiliation::Admin,
            "owner" => Affiliation::Owner,
            _ => return None,
        })
    }

    pub fn to_store(self) -> Option<waxwing_store::Affiliation> {
        use waxwing_store::Affiliation as S;
        Some(match self {
            Affiliation::Outcast => S::Outcast,
            Affiliation::None => return None,
            Affiliation::Member => S::Member,
            Affiliation::Admin => S::Admin,
            Affiliation::Owner => S::Owner,
        })
    }

    pub fn from_store(a: waxwing_store::Affiliation) -> Self {
        use waxwing_store::Affiliation as S;
        match a {
            S::Outcast => Affiliation::Outcast,
            S::Member => Affiliation::Member,
            S::Admin => Affiliation::Admin,
            S::Owner => Affiliation::Owner,
        }
    }

    /// The role an occupant gets on entering (XEP-0045 §5.1.2), `None` for outcasts.
    pub fn default_role(self, moderated: bool) -> Role {
        match self {
            Affiliation::Owner | Affiliation::Admin => Role::Moderator,
            Affiliation::Member => Role::Participant,
            Affiliation::None if moderated => Role::Visitor,
            Affiliation::None => Role::Participant,
            Affiliation::Outcast => Role::None,
        }
    }
}

fn not_allowed() -> StanzaError {
    StanzaError::cancel(Condition::NotAllowed)
}

/// May `actor` (its role and affiliation) change an occupant whose
/// affiliation is `target` from role `from` to role `to`? (XEP-0045 §8.2–8.6,
/// §9.6–9.7)
pub fn may_change_role(
    actor_role: Role,
    actor_aff: Affiliation,
    target_aff: Affiliation,
    from: Role,
    to: Role,
) -> Result<(), StanzaError> {
    if actor_role != Role::Moderator {
        return Err(StanzaError::auth(Condition::Forbidden));
    }
    // Granting or revoking moderator status is for admins and owners.
    if (to == Role::Moderator || from == Role::Moderator) && actor_aff < Affiliation::Admin {
        return Err(StanzaError::auth(Condition::Forbidden));
    }
    // Nobody may kick or silence an admin or owner, nor someone ranked
    // above them (§8.2: "not-allowed").
    if to < Role::Participant && target_aff >= Affiliation::Admin {
        return Err(not_allowed());
    }
    if target_aff > actor_aff {
        return Err(not_allowed());
    }
    Ok(())
}

/// May `actor` change `target`'s affiliation from `from` to `to`?
/// Admins handle outcast/none/member for people below admin; owners do
/// everything (§9.1–9.5, §10.3–10.7).
pub fn may_change_affiliation(
    actor: Affiliation,
    from: Affiliation,
    to: Affiliation,
) -> Result<(), StanzaError> {
    match actor {
        Affiliation::Owner => Ok(()),
        Affiliation::Admin if from < Affiliation::Admin && to < Affiliation::Admin => Ok(()),
        Affiliation::Admin => Err(not_allowed()),
        _ => Err(StanzaError::auth(Condition::Forbidden)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Affiliation as A;

    #[test]
    fn default_roles() {
        assert_eq!(A::Owner.default_role(false), Role::Moderator);
        assert_eq!(A::Admin.default_role(true), Role::Moderator);
        assert_eq!(A::Member.default_role(true), Role::Participant);
        assert_eq!(A::None.default_role(false), Role::Participant);
        assert_eq!(A::None.default_role(true), Role::Visitor);
        assert_eq!(A::Outcast.default_role(false), Role::None);
    }

    #[test]
    fn moderators_kick_and_silence_but_not_admins() {
        let m = Role::Moderator;
        assert!(may_change_role(m, A::None, A::None, Role::Participant, Role::None).is_ok());
        assert!(may_change_role(m, A::Member, A::Member, Role::Participant, Role::Visitor).is_ok());
        let e = may_change_role(m, A::Owner, A::Admin, Role::Moderator, Role::None).unwrap_err();
        assert_eq!(e.condition, Condition::NotAllowed);
        let e = may_change_role(m, A::Admin, A::Owner, Role::Moderator, Role::Visitor).unwrap_err();
        assert_eq!(e.condition, Condition::NotAllowed);
        // Participants cannot do any of it.
        let e = may_change_role(
            Role::Participant,
            A::Member,
            A::None,
            Role::Participant,
            Role::None,
        )
        .unwrap_err();
        assert_eq!(e.condition, Condition::Forbidden);
    }

    #[test]
    fn only_admins_grant_moderator() {
        let m = Role::Moderator;
        // A moderator by role only (none affiliation) cannot make moderators.
        let e =
            may_change_role(m, A::None, A::None, Role::Participant, Role::Moderator).unwrap_err();
        assert_eq!(e.condition, Condition::Forbidden);
        assert!(may_change_role(m, A::Admin, A::None, Role::Participant, Role::Moderator).is_ok());
        assert!(
            may_change_role(m, A::Admin, A::Member, Role::Moderator, Role::Participant).is_ok()
        );
    }

    #[test]
    fn affiliation_changes() {
        assert!(may_change_affiliation(A::Owner, A::Admin, A::Outcast).is_ok());
        assert!(may_change_affiliation(A::Owner, A::None, A::Owner).is_ok());
        assert!(may_change_affiliation(A::Admin, A::None, A::Outcast).is_ok());
        assert!(may_change_affiliation(A::Admin, A::Member, A::None).is_ok());
        assert_eq!(
            may_change_affiliation(A::Admin, A::Admin, A::None)
                .unwrap_err()
                .condition,
            Condition::NotAllowed
        );
        assert_eq!(
            may_change_affiliation(A::Admin, A::None, A::Admin)
                .unwrap_err()
                .condition,
            Condition::NotAllowed
        );
        assert_eq!(
            may_change_affiliation(A::Member, A::None, A::Member)
                .unwrap_err()
                .condition,
            Condition::Forbidden
        );
    }
}
