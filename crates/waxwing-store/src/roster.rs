//! Rosters and subscription state (RFC 6121), with roster versioning (RFC 6121 §2.6).

use std::fmt;

use async_trait::async_trait;
use waxwing_proto::jid::BareJid;

use crate::StoreError;

/// The `subscription` attribute of a roster item (RFC 6121 §2.1.2.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Subscription {
    /// Neither side receives the other's presence.
    #[default]
    None,
    /// The owner receives the contact's presence.
    To,
    /// The contact receives the owner's presence.
    From,
    /// Both directions.
    Both,
}

impl Subscription {
    /// The attribute value: `"none"`, `"to"`, `"from"` or `"both"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Subscription::None => "none",
            Subscription::To => "to",
            Subscription::From => "from",
            Subscription::Both => "both",
        }
    }

    /// Parses an attribute value as written by [`Subscription::as_str`].
    /// `"remove"` is a request, not a state, so it is not accepted.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "none" => Some(Subscription::None),
            "to" => Some(Subscription::To),
            "from" => Some(Subscription::From),
            "both" => Some(Subscription::Both),
            _ => None,
        }
    }
}

impl fmt::Display for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The full subscription state of one contact in one user's roster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RosterItem {
    /// The contact's bare JID.
    pub contact: BareJid,
    /// The handle the owner gave the contact.
    pub name: Option<String>,
    /// Groups, in order, without duplicates (a store drops repeats, keeping the first).
    pub groups: Vec<String>,
    /// The subscription state.
    pub subscription: Subscription,
    /// Pending-out: the owner sent `subscribe` and has had no answer yet.
    pub ask: bool,
    /// Pending-in: the contact asked to subscribe to the owner, who has not answered.
    pub pending_in: bool,
    /// The inbound `subscribe` stanza, redelivered at login (RFC 6121 §3.1.3).
    pub pending_in_stanza: Option<String>,
    /// Pre-approval (RFC 6121 §3.4).
    pub approved: bool,
    /// `false`: the row only remembers pending-in or pre-approval state and
    /// is left out of roster gets and pushes.
    pub in_roster: bool,
}

impl RosterItem {
    /// A visible item with no name, no groups, subscription `none` and nothing pending.
    pub fn new(contact: BareJid) -> Self {
        RosterItem {
            contact,
            name: None,
            groups: Vec::new(),
            subscription: Subscription::None,
            ask: false,
            pending_in: false,
            pending_in_stanza: None,
            approved: false,
            in_roster: true,
        }
    }
}

/// Rosters, one per owner, each with a version counter (RFC 6121 §2.6).
///
/// Every write is durable before it returns. Items come back sorted by
/// contact ([`BareJid`]'s `Ord`).
#[async_trait]
pub trait RosterStore: Send + Sync {
    /// All of the owner's rows, including those with `in_roster == false`.
    async fn items(&self, owner: &BareJid) -> Result<Vec<RosterItem>, StoreError>;

    /// The owner's row for `contact`, visible or not.
    async fn get(
        &self,
        owner: &BareJid,
        contact: &BareJid,
    ) -> Result<Option<RosterItem>, StoreError>;

    /// Inserts or replaces the row; bumps and returns the owner's roster
    /// version (monotonic, 0 while the owner never had a visible change)
    /// only when the visible roster changed: the row became or ceased to be
    /// visible, or, while visible, its name, groups, subscription or ask
    /// changed. Otherwise returns the current version. The write and the
    /// bump are one transaction.
    async fn put(&self, owner: &BareJid, item: &RosterItem) -> Result<u64, StoreError>;

    /// Removes the row if present; bumps the version if the row was visible.
    /// Removing a missing row is not an error: it returns the current version.
    async fn remove(&self, owner: &BareJid, contact: &BareJid) -> Result<u64, StoreError>;

    /// The owner's current roster version (0 if it never changed).
    async fn version(&self, owner: &BareJid) -> Result<u64, StoreError>;

    /// Forgets the owner's version counter, which account deletion keeps so
    /// that a recreated account never reuses a version a client cached.
    /// Only for addresses that can never come back (anonymous guests,
    /// whose localparts are random).
    async fn forget_version(&self, owner: &BareJid) -> Result<(), StoreError>;

    /// Every row, in any owner's roster, whose contact is `contact`, with
    /// its owner; sorted by owner. Used when `contact`'s account is deleted.
    async fn owners_of(&self, contact: &BareJid) -> Result<Vec<(BareJid, RosterItem)>, StoreError>;
}

/// Drops repeated groups, keeping the first occurrence and the order.
pub(crate) fn normalize_groups(groups: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(groups.len());
    for g in groups {
        if !out.contains(g) {
            out.push(g.clone());
        }
    }
    out
}

/// Whether replacing `old` with `new` (either may be absent) changes what a
/// roster get or push would show, which is what a version stands for.
/// Both sides must already have normalized groups.
pub(crate) fn visible_change(old: Option<&RosterItem>, new: Option<&RosterItem>) -> bool {
    fn view(i: Option<&RosterItem>) -> Option<(&Option<String>, &[String], Subscription, bool)> {
        i.filter(|i| i.in_roster)
            .map(|i| (&i.name, i.groups.as_slice(), i.subscription, i.ask))
    }
    view(old) != view(new)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(in_roster: bool) -> RosterItem {
        let mut i = RosterItem::new(BareJid::parse("juliet@example.com").unwrap());
        i.in_roster = in_roster;
        i
    }

    #[test]
    fn subscription_round_trips() {
        for s in [
            Subscription::None,
            Subscription::To,
            Subscription::From,
            Subscription::Both,
        ] {
            assert_eq!(Subscription::parse(s.as_str()), Some(s));
        }
        assert_eq!(Subscription::parse("remove"), None);
        assert_eq!(Subscription::parse("Both"), None);
    }

    #[test]
    fn groups_dedup_keeps_first_and_order() {
        let g = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            normalize_groups(&g(&["b", "a", "b", "c", "a"])),
            g(&["b", "a", "c"])
        );
    }

    #[test]
    fn visibility_rules() {
        let visible = item(true);
        let hidden = item(false);
        assert!(visible_change(None, Some(&visible)));
        assert!(!visible_change(None, Some(&hidden)));
        assert!(visible_change(Some(&visible), Some(&hidden)));
        assert!(visible_change(Some(&visible), None));
        assert!(!visible_change(Some(&hidden), None));

        let mut pending = visible.clone();
        pending.pending_in = true;
        pending.pending_in_stanza = Some("<presence type='subscribe'/>".into());
        pending.approved = true;
        assert!(!visible_change(Some(&visible), Some(&pending)));

        let mut renamed_hidden = hidden.clone();
        renamed_hidden.name = Some("J".into());
        assert!(!visible_change(Some(&hidden), Some(&renamed_hidden)));

        for f in [
            |i: &mut RosterItem| i.name = Some("J".into()),
            |i: &mut RosterItem| i.groups = vec!["Friends".into()],
            |i: &mut RosterItem| i.subscription = Subscription::Both,
            |i: &mut RosterItem| i.ask = true,
        ] {
            let mut changed = visible.clone();
            f(&mut changed);
            assert!(visible_change(Some(&visible), Some(&changed)));
        }
    }
}
