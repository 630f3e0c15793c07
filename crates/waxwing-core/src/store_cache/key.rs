//! The account cache's map keys, compact and looked up without allocating.
//!
//! A [`BareJid`] is two heap strings, and each of the cache's three maps
//! kept its own copy of the account's (the private-XML map a third string
//! for the fragment's name): seven small allocations per cached account,
//! and every lookup cloned a `BareJid` (the private-XML one also the
//! name) just to ask. Here an account is one string, `local@domain`,
//! and a lookup borrows the caller's `BareJid` as a `dyn` view of the
//! same parts (the usual way to look a compound key up by parts through
//! [`Borrow`]): a key and the view of the same account hash and compare
//! alike because both do so through their parts.

use std::borrow::{Borrow, Cow};
use std::hash::{Hash, Hasher};

use waxwing_proto::jid::BareJid;

/// An account as its parts: the localpart (if any) and the domain.
pub(super) trait AccountParts {
    fn parts(&self) -> (Option<&str>, &str);
}

impl AccountParts for BareJid {
    fn parts(&self) -> (Option<&str>, &str) {
        (self.local(), self.domain())
    }
}

/// An account in one allocation: `local@domain` (or `domain`), and where
/// the domain starts (0 without a localpart), so no separator inside
/// either part can make two accounts alike.
pub(super) struct AccountKey {
    text: Box<str>,
    domain_at: usize,
}

impl AccountKey {
    pub(super) fn new(jid: &BareJid) -> Self {
        let (local, domain) = jid.parts();
        match local {
            Some(local) => AccountKey {
                text: format!("{local}@{domain}").into_boxed_str(),
                domain_at: local.len() + 1,
            },
            None => AccountKey {
                text: domain.into(),
                domain_at: 0,
            },
        }
    }
}

impl AccountParts for AccountKey {
    fn parts(&self) -> (Option<&str>, &str) {
        let domain = &self.text[self.domain_at..];
        match self.domain_at {
            0 => (None, domain),
            at => (Some(&self.text[..at - 1]), domain),
        }
    }
}

/// The lookup-by-parts idiom for one key type: the stored key and every
/// borrowed view of it (`dyn $parts`) hash and compare through `parts()`,
/// which is what lets a map of `$key` be asked with a view.
macro_rules! looked_up_by_parts {
    ($parts:ident, $key:ty) => {
        impl Hash for dyn $parts + '_ {
            fn hash<H: Hasher>(&self, state: &mut H) {
                self.parts().hash(state);
            }
        }

        impl PartialEq for dyn $parts + '_ {
            fn eq(&self, other: &Self) -> bool {
                self.parts() == other.parts()
            }
        }

        impl Eq for dyn $parts + '_ {}

        impl Hash for $key {
            fn hash<H: Hasher>(&self, state: &mut H) {
                (self as &dyn $parts).hash(state);
            }
        }

        impl PartialEq for $key {
            fn eq(&self, other: &Self) -> bool {
                self.parts() == other.parts()
            }
        }

        impl Eq for $key {}

        impl<'a> Borrow<dyn $parts + 'a> for $key {
            fn borrow(&self) -> &(dyn $parts + 'a) {
                self
            }
        }
    };
}

looked_up_by_parts!(AccountParts, AccountKey);

/// A private-XML fragment as its parts: the owner's and the key's.
pub(super) trait FragmentParts {
    fn parts(&self) -> ((Option<&str>, &str), &str);
}

/// A fragment to look up: the caller's owner and key, borrowed.
pub(super) struct FragmentRef<'a>(pub &'a BareJid, pub &'a str);

impl FragmentParts for FragmentRef<'_> {
    fn parts(&self) -> ((Option<&str>, &str), &str) {
        (self.0.parts(), self.1)
    }
}

/// A fragment in the map: its owner, and its key, which for the one
/// every login reads ([`super::AVATAR_HASH_KEY`]) is no allocation at all.
pub(super) struct FragmentKey {
    owner: AccountKey,
    name: Cow<'static, str>,
}

impl FragmentKey {
    pub(super) fn new(owner: &BareJid, name: &str) -> Self {
        let name = if name == super::AVATAR_HASH_KEY {
            Cow::Borrowed(super::AVATAR_HASH_KEY)
        } else {
            Cow::Owned(name.to_string())
        };
        FragmentKey {
            owner: AccountKey::new(owner),
            name,
        }
    }
}

impl FragmentParts for FragmentKey {
    fn parts(&self) -> ((Option<&str>, &str), &str) {
        (self.owner.parts(), &self.name)
    }
}

looked_up_by_parts!(FragmentParts, FragmentKey);

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn jid(s: &str) -> BareJid {
        BareJid::parse(s).unwrap()
    }

    #[test]
    fn a_key_is_found_by_the_jid_it_was_made_from_and_by_no_other() {
        let jids = [
            "alice@example.org",
            "example.org",
            "bob@example.org",
            "alice@example.com",
        ];
        let map: HashMap<AccountKey, usize> = jids
            .iter()
            .enumerate()
            .map(|(i, j)| (AccountKey::new(&jid(j)), i))
            .collect();
        for (i, j) in jids.iter().enumerate() {
            assert_eq!(map.get(&jid(j) as &dyn AccountParts), Some(&i), "{j}");
        }
        assert_eq!(
            map.get(&jid("carol@example.org") as &dyn AccountParts),
            None
        );
        // The parts come back exactly.
        let key = AccountKey::new(&jid("alice@example.org"));
        assert_eq!(key.parts(), (Some("alice"), "example.org"));
        assert_eq!(
            AccountKey::new(&jid("example.org")).parts(),
            (None, "example.org")
        );
    }

    #[test]
    fn fragments_are_found_by_owner_and_name() {
        let alice = jid("alice@example.org");
        let bob = jid("bob@example.org");
        let mut map = HashMap::new();
        map.insert(FragmentKey::new(&alice, super::super::AVATAR_HASH_KEY), 1);
        map.insert(FragmentKey::new(&alice, "storage:bookmarks"), 2);
        map.insert(FragmentKey::new(&bob, super::super::AVATAR_HASH_KEY), 3);
        let find = |owner, name| map.get(&FragmentRef(owner, name) as &dyn FragmentParts);
        assert_eq!(find(&alice, super::super::AVATAR_HASH_KEY), Some(&1));
        assert_eq!(find(&alice, "storage:bookmarks"), Some(&2));
        assert_eq!(find(&bob, super::super::AVATAR_HASH_KEY), Some(&3));
        assert_eq!(find(&bob, "storage:bookmarks"), None);
        // The avatar hash's key is the static string, not a copy.
        let key = FragmentKey::new(&alice, super::super::AVATAR_HASH_KEY);
        assert!(matches!(key.name, Cow::Borrowed(_)));
    }
}
