//! `[invites]`: invitations (XEP-0401 ad-hoc commands, XEP-0379 roster
//! pre-authentication, XEP-0445 pre-authenticated registration, the
//! landing page). Ranges are checked in `check_numbers`.

use std::time::Duration;

use super::raw;

/// `[invites]`, validated.
#[derive(Debug, Clone)]
pub struct InvitesConfig {
    /// Whether invitations can be made (ad-hoc commands) and redeemed.
    /// The admin API and CLI can make them whatever this says only while
    /// it is on; redemption refuses every token while it is off.
    pub enabled: bool,
    /// How long a new invitation stays valid unless its maker chooses less.
    pub expiry: Duration,
    /// Whether users' contact invitations carry `ibr=y` (the invitee may
    /// create an account here). Admins' invitations always may.
    pub users_can_invite_accounts: bool,
    /// Unexpired, unused invitations one account may hold at once.
    pub max_pending_per_user: u32,
}

pub(super) fn invites_config(i: &raw::Invites) -> InvitesConfig {
    InvitesConfig {
        enabled: i.enabled,
        expiry: Duration::from_secs(i.expiry_secs),
        users_can_invite_accounts: i.users_can_invite_accounts,
        max_pending_per_user: i.max_pending_per_user,
    }
}
