//! A room's configuration and its `muc#roomconfig` form (XEP-0045 §10.2, §15.5.3).
//!
//! The same form is what an owner fills in and what the database stores
//! (`MucStore` keeps it opaque), so one parser serves both.

use waxwing_proto::stanza::{Condition, StanzaError};
use waxwing_proto::xml::Element;

use super::form::{Form, Submitted};
use super::roles::Role;

pub const FORM_TYPE: &str = "http://jabber.org/protocol/muc#roomconfig";
/// Not a registered field: the per-room salt of occupant ids (XEP-0421),
/// kept in the stored form so ids stay stable across restarts. Never shown.
const SALT_FIELD: &str = "x-waxwing#occupant_id_salt";

/// Who may see occupants' real JIDs (`muc#roomconfig_whois`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Whois {
    /// Semi-anonymous.
    Moderators,
    /// Non-anonymous.
    Anyone,
}

/// Who may send private messages (`muc#roomconfig_allowpm`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AllowPm {
    Anyone,
    Participants,
    Moderators,
    Nobody,
}

impl AllowPm {
    fn as_str(self) -> &'static str {
        match self {
            AllowPm::Anyone => "anyone",
            AllowPm::Participants => "participants",
            AllowPm::Moderators => "moderators",
            AllowPm::Nobody => "none",
        }
    }

    /// Whether an occupant with `role` may send one.
    pub fn allows(self, role: Role) -> bool {
        match self {
            AllowPm::Anyone => role >= Role::Visitor,
            AllowPm::Participants => role >= Role::Participant,
            AllowPm::Moderators => role >= Role::Moderator,
            AllowPm::Nobody => false,
        }
    }
}

/// Every `muc#roomconfig` option we honour.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomConfig {
    pub name: String,
    pub description: String,
    pub lang: String,
    pub persistent: bool,
    pub public: bool,
    pub members_only: bool,
    /// `Some` makes the room password-protected.
    pub password: Option<String>,
    pub moderated: bool,
    /// `None`: the service-wide cap.
    pub max_users: Option<usize>,
    pub whois: Whois,
    /// Participants (not only moderators) may change the subject.
    pub change_subject: bool,
    /// Messages of history kept and sent on join (`muc#maxhistoryfetch`).
    pub history_length: usize,
    pub allow_pm: AllowPm,
    /// Participants may invite (in members-only rooms, this also grants membership).
    pub allow_invites: bool,
    /// The room's messages go to its archive (XEP-0313 on the room).
    pub logging: bool,
    /// Roles whose presence is broadcast.
    pub presence_broadcast: Vec<Role>,
    /// Roles that may retrieve the member list.
    pub get_member_list: Vec<Role>,
    /// Occupants may ask moderators for voice (XEP-0045 §7.13).
    pub voice_requests: bool,
    pub occupant_id_salt: String,
}

impl RoomConfig {
    /// Defaults for a new room: temporary, public, open, unmoderated,
    /// semi-anonymous (the XEP-0045 §10.1.3 example, and what Prosody does).
    pub fn new(history_length: usize, salt: String) -> Self {
        RoomConfig {
            name: String::new(),
            description: String::new(),
            lang: String::new(),
            persistent: false,
            public: true,
            members_only: false,
            password: None,
            moderated: false,
            max_users: None,
            whois: Whois::Moderators,
            change_subject: false,
            history_length,
            allow_pm: AllowPm::Anyone,
            allow_invites: false,
            logging: false,
            presence_broadcast: vec![Role::Moderator, Role::Participant, Role::Visitor],
            get_member_list: vec![Role::Moderator, Role::Participant],
            voice_requests: true,
            occupant_id_salt: salt,
        }
    }

    /// The form for an owner (`type='form'`) or for storage (`type='submit'`).
    /// Owner and admin lists are added by the room, which knows them.
    pub fn to_form(&self, ty: &str, max_history: usize, for_storage: bool) -> Form {
        let mut f = Form::new(ty, FORM_TYPE);
        if !for_storage {
            f = f.title("Room configuration");
        }
        let text = |f: &mut Form, var: &str, label: &str, v: &str| {
            let vals: &[&str] = if v.is_empty() { &[] } else { &[v] };
            f.field(var, Some("text-single"), Some(label), vals);
        };
        text(&mut f, "muc#roomconfig_roomname", "Room name", &self.name);
        text(
            &mut f,
            "muc#roomconfig_roomdesc",
            "Description",
            &self.description,
        );
        text(
            &mut f,
            "muc#roomconfig_lang",
            "Language of discussion",
            &self.lang,
        );
        f.boolean(
            "muc#roomconfig_persistentroom",
            "Make room persistent",
            self.persistent,
        );
        f.boolean(
            "muc#roomconfig_publicroom",
            "List room publicly",
            self.public,
        );
        f.boolean(
            "muc#roomconfig_membersonly",
            "Members only",
            self.members_only,
        );
        f.boolean(
            "muc#roomconfig_passwordprotectedroom",
            "Password required to enter",
            self.password.is_some(),
        );
        let pw: Vec<&str> = self.password.as_deref().into_iter().collect();
        f.field(
            "muc#roomconfig_roomsecret",
            Some("text-private"),
            Some("Password"),
            &pw,
        );
        f.boolean(
            "muc#roomconfig_moderatedroom",
            "Moderated (visitors have no voice)",
            self.moderated,
        );
        let max = self.max_users.map(|n| n.to_string());
        f.list(
            "muc#roomconfig_maxusers",
            "list-single",
            "Maximum number of occupants",
            &[max.as_deref().unwrap_or("none")],
            &[
                ("10", "10"),
                ("20", "20"),
                ("50", "50"),
                ("100", "100"),
                ("none", "No limit"),
            ],
        );
        f.list(
            "muc#roomconfig_whois",
            "list-single",
            "Who may discover real JIDs",
            &[match self.whois {
                Whois::Moderators => "moderators",
                Whois::Anyone => "anyone",
            }],
            &[("moderators", "Moderators only"), ("anyone", "Anyone")],
        );
        f.boolean(
            "muc#roomconfig_changesubject",
            "Allow occupants to change the subject",
            self.change_subject,
        );
        let hist = self.history_length.to_string();
        f.field(
            "muc#maxhistoryfetch",
            Some("text-single"),
            Some(&format!(
                "Messages of history sent on join (at most {max_history})"
            )),
            &[&hist],
        );
        f.list(
            "muc#roomconfig_allowpm",
            "list-single",
            "Who may send private messages",
            &[self.allow_pm.as_str()],
            &[
                ("anyone", "Anyone"),
                ("participants", "Anyone with voice"),
                ("moderators", "Moderators only"),
                ("none", "Nobody"),
            ],
        );
        f.boolean(
            "muc#roomconfig_allowinvites",
            "Allow occupants to invite others",
            self.allow_invites,
        );
        f.boolean(
            "muc#roomconfig_enablelogging",
            "Archive messages",
            self.logging,
        );
        let roles = [
            ("moderator", "Moderator"),
            ("participant", "Participant"),
            ("visitor", "Visitor"),
        ];
        let names = |rs: &[Role]| rs.iter().map(|r| r.as_str()).collect::<Vec<_>>();
        f.list(
            "muc#roomconfig_presencebroadcast",
            "list-multi",
            "Roles whose presence is broadcast",
            &names(&self.presence_broadcast),
            &roles,
        );
        f.list(
            "muc#roomconfig_getmemberlist",
            "list-multi",
            "Roles that may retrieve the member list",
            &names(&self.get_member_list),
            &roles,
        );
        f.boolean(
            "muc#roomconfig_allowvoicerequests",
            "Allow voice requests",
            self.voice_requests,
        );
        if for_storage {
            f.field(SALT_FIELD, Some("hidden"), None, &[&self.occupant_id_salt]);
        }
        f
    }

    /// Applies a submitted form: fields that are absent keep their value
    /// (XEP-0045 §10.2 lets clients send only what changed). Invalid values
    /// are `not-acceptable` and change nothing.
    pub fn apply(&self, s: &Submitted, max_history: usize) -> Result<RoomConfig, StanzaError> {
        let bad = |what: &str| {
            StanzaError::modify(Condition::NotAcceptable).with_text(format!("invalid {what}"))
        };
        if s.form_type.as_deref().is_some_and(|t| t != FORM_TYPE) {
            return Err(bad("FORM_TYPE"));
        }
        let mut c = self.clone();
        let flag = |var: &str, slot: &mut bool| -> Result<(), StanzaError> {
            if let Some(v) = s.boolean(var).map_err(|_| bad(var))? {
                *slot = v;
            }
            Ok(())
        };
        let text = |var: &str, slot: &mut String| {
            if let Some(v) = s.values.get(var) {
                *slot = v.first().cloned().unwrap_or_default();
            }
        };
        text("muc#roomconfig_roomname", &mut c.name);
        text("muc#roomconfig_roomdesc", &mut c.description);
        text("muc#roomconfig_lang", &mut c.lang);
        flag("muc#roomconfig_persistentroom", &mut c.persistent)?;
        flag("muc#roomconfig_publicroom", &mut c.public)?;
        flag("muc#roomconfig_membersonly", &mut c.members_only)?;
        flag("muc#roomconfig_moderatedroom", &mut c.moderated)?;
        flag("muc#roomconfig_changesubject", &mut c.change_subject)?;
        flag("muc#roomconfig_allowinvites", &mut c.allow_invites)?;
        flag("muc#roomconfig_enablelogging", &mut c.logging)?;
        flag("muc#roomconfig_allowvoicerequests", &mut c.voice_requests)?;
        let mut protected = c.password.is_some();
        flag("muc#roomconfig_passwordprotectedroom", &mut protected)?;
        let mut secret = c.password.clone().unwrap_or_default();
        text("muc#roomconfig_roomsecret", &mut secret);
        c.password = if protected
            || (!secret.is_empty() && s.boolean("muc#roomconfig_passwordprotectedroom") == Ok(None))
        {
            if secret.is_empty() {
                return Err(bad(
                    "muc#roomconfig_roomsecret (a protected room needs a password)",
                ));
            }
            Some(secret)
        } else {
            None
        };
        if let Some(v) = s.single("muc#roomconfig_maxusers") {
            c.max_users = match v {
                "none" | "" | "0" => None,
                n => Some(n.parse().map_err(|_| bad("muc#roomconfig_maxusers"))?),
            };
        }
        if let Some(v) = s.single("muc#roomconfig_whois") {
            c.whois = match v {
                "moderators" => Whois::Moderators,
                "anyone" => Whois::Anyone,
                _ => return Err(bad("muc#roomconfig_whois")),
            };
        }
        // Prosody's historylength is the same knob under another name.
        for var in ["muc#maxhistoryfetch", "muc#roomconfig_historylength"] {
            if let Some(v) = s.single(var) {
                let n: usize = v.trim().parse().map_err(|_| bad(var))?;
                c.history_length = n.min(max_history);
            }
        }
        if let Some(v) = s.single("muc#roomconfig_allowpm") {
            c.allow_pm = match v {
                "anyone" => AllowPm::Anyone,
                "participants" => AllowPm::Participants,
                "moderators" => AllowPm::Moderators,
                "none" => AllowPm::Nobody,
                _ => return Err(bad("muc#roomconfig_allowpm")),
            };
        }
        let roles = |var: &str| -> Result<Option<Vec<Role>>, StanzaError> {
            let Some(vs) = s.multi(var) else {
                return Ok(None);
            };
            vs.iter()
                .map(|v| match Role::parse(v) {
                    Some(r) if r != Role::None => Ok(r),
                    _ => Err(bad(var)),
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Some)
        };
        if let Some(r) = roles("muc#roomconfig_presencebroadcast")? {
            c.presence_broadcast = r;
        }
        if let Some(r) = roles("muc#roomconfig_getmemberlist")? {
            c.get_member_list = r;
        }
        if let Some(salt) = s.single(SALT_FIELD) {
            c.occupant_id_salt = salt.to_string();
        }
        Ok(c)
    }

    /// Reads a stored configuration.
    pub fn from_stored(xml: &str, max_history: usize) -> Result<RoomConfig, String> {
        let el = waxwing_proto::xml::parse_stanza(xml, waxwing_proto::ns::DATA_FORMS)
            .map_err(|e| format!("stored room config is not XML: {e}"))?;
        let s = Submitted::parse(&el);
        RoomConfig::new(max_history, String::new())
            .apply(&s, max_history)
            .map_err(|e| format!("stored room config: {e}"))
    }

    /// The stored form.
    pub fn to_stored(&self, max_history: usize) -> String {
        self.to_form("submit", max_history, true)
            .into_element()
            .to_xml()
    }

    /// The effective occupant cap.
    pub fn max_users(&self, service_cap: usize) -> usize {
        self.max_users.map_or(service_cap, |n| n.min(service_cap))
    }
}

/// Parses a submitted owner form element.
pub fn parse_submission(x: &Element) -> Submitted {
    Submitted::parse(x)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn submit(fields: &[(&str, &[&str])]) -> Submitted {
        let mut f = Form::new("submit", FORM_TYPE);
        for (var, vals) in fields {
            f.field(var, None, None, vals);
        }
        Submitted::parse(&f.into_element())
    }

    #[test]
    fn defaults_round_trip_through_storage() {
        let c = RoomConfig::new(20, "salt".into());
        let back = RoomConfig::from_stored(&c.to_stored(50), 50).unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn every_option_round_trips() {
        let mut c = RoomConfig::new(20, "s".into());
        c.name = "A Dark Cave".into();
        c.description = "The place for all good witches!".into();
        c.lang = "en".into();
        c.persistent = true;
        c.public = false;
        c.members_only = true;
        c.password = Some("cauldronburn".into());
        c.moderated = true;
        c.max_users = Some(30);
        c.whois = Whois::Anyone;
        c.change_subject = true;
        c.allow_pm = AllowPm::Moderators;
        c.allow_invites = true;
        c.logging = true;
        c.presence_broadcast = vec![Role::Moderator];
        c.get_member_list = vec![];
        c.voice_requests = false;
        let back = RoomConfig::from_stored(&c.to_stored(50), 50).unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn partial_submission_keeps_other_fields() {
        let c = RoomConfig::new(20, "s".into());
        let n = c
            .apply(&submit(&[("muc#roomconfig_roomname", &["Coven"])]), 50)
            .unwrap();
        assert_eq!(n.name, "Coven");
        assert_eq!(n.history_length, 20);
        assert!(n.public);
    }

    #[test]
    fn history_length_is_capped_by_the_service() {
        let c = RoomConfig::new(20, "s".into());
        let n = c
            .apply(&submit(&[("muc#maxhistoryfetch", &["500"])]), 50)
            .unwrap();
        assert_eq!(n.history_length, 50);
    }

    #[test]
    fn password_protection_needs_a_secret() {
        let c = RoomConfig::new(20, "s".into());
        let e = c
            .apply(
                &submit(&[("muc#roomconfig_passwordprotectedroom", &["1"])]),
                50,
            )
            .unwrap_err();
        assert_eq!(e.condition, Condition::NotAcceptable);
        let n = c
            .apply(
                &submit(&[
                    ("muc#roomconfig_passwordprotectedroom", &["1"]),
                    ("muc#roomconfig_roomsecret", &["pw"]),
                ]),
                50,
            )
            .unwrap();
        assert_eq!(n.password.as_deref(), Some("pw"));
        let off = n
            .apply(
                &submit(&[("muc#roomconfig_passwordprotectedroom", &["0"])]),
                50,
            )
            .unwrap();
        assert_eq!(off.password, None);
    }

    #[test]
    fn bad_values_are_refused() {
        let c = RoomConfig::new(20, "s".into());
        for (var, v) in [
            ("muc#roomconfig_persistentroom", "maybe"),
            ("muc#roomconfig_whois", "none"),
            ("muc#roomconfig_maxusers", "many"),
            ("muc#roomconfig_allowpm", "everyone"),
            ("muc#roomconfig_presencebroadcast", "owner"),
        ] {
            let e = c.apply(&submit(&[(var, &[v])]), 50).unwrap_err();
            assert_eq!(e.condition, Condition::NotAcceptable, "{var}");
        }
        let mut f = Form::new("submit", "urn:other");
        f.field("muc#roomconfig_roomname", None, None, &["x"]);
        assert!(c.apply(&Submitted::parse(&f.into_element()), 50).is_err());
    }
}
