//! Publish-subscribe nodes (XEP-0060), shared by the `pubsub.<host>`
//! services and by PEP (XEP-0163): nodes keyed by `(service, node)` where the
//! service is an account's bare JID or a service domain.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use async_trait::async_trait;
use waxwing_proto::jid::{BareJid, Jid};

use crate::StoreError;

/// A node's affiliation of an entity (XEP-0060 §4.1); `none` is the
/// absence of a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PubSubAffiliation {
    /// Full control of the node.
    Owner,
    /// May publish and retract.
    Publisher,
    /// May publish, may not retrieve.
    PublishOnly,
    /// May subscribe and retrieve (whitelist nodes).
    Member,
    /// Banned.
    Outcast,
}

impl PubSubAffiliation {
    /// The XEP-0060 spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Owner => "owner",
            Self::Publisher => "publisher",
            Self::PublishOnly => "publish-only",
            Self::Member => "member",
            Self::Outcast => "outcast",
        }
    }

    /// Parses the XEP-0060 spelling; `none` and unknown words are `None`.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "owner" => Self::Owner,
            "publisher" => Self::Publisher,
            "publish-only" => Self::PublishOnly,
            "member" => Self::Member,
            "outcast" => Self::Outcast,
            _ => return None,
        })
    }
}

/// A subscription's state (XEP-0060 §4.2); `none` is the absence of a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SubscriptionState {
    /// Receives notifications.
    Subscribed,
    /// Waiting for an owner's approval (authorize access model).
    Pending,
}

impl SubscriptionState {
    /// The XEP-0060 spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Subscribed => "subscribed",
            Self::Pending => "pending",
        }
    }

    /// Parses the XEP-0060 spelling.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "subscribed" => Some(Self::Subscribed),
            "pending" => Some(Self::Pending),
            _ => None,
        }
    }
}

/// One published item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PubSubItem {
    /// Unique within its node.
    pub id: String,
    /// Who published it (full or bare JID).
    pub publisher: Jid,
    /// The serialized payload element (opaque to the store).
    pub payload: String,
}

/// Which feed: a feed URL republished on one node of one service.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FeedKey {
    /// The pubsub service (a service domain).
    pub service: BareJid,
    /// The node the entries are published on.
    pub node: String,
    /// The feed's URL.
    pub url: String,
}

/// A feed subscription with the state of its last successful fetch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredFeed {
    /// Which feed.
    pub key: FeedKey,
    /// Seconds between polls.
    pub interval_secs: u64,
    /// Added by an administrator's command (true) or by the configuration.
    pub admin: bool,
    /// The `ETag` of the last successful fetch.
    pub etag: Option<String>,
    /// The `Last-Modified` of the last successful fetch.
    pub last_modified: Option<String>,
}

/// Nodes, items, affiliations and subscriptions.
#[async_trait]
pub trait PubSubStore: Send + Sync {
    /// Creates a node with its serialized configuration; `AlreadyExists` if present.
    async fn create_node(
        &self,
        service: &BareJid,
        node: &str,
        config: &str,
    ) -> Result<(), StoreError>;

    /// The node's serialized configuration, if the node exists.
    async fn node_config(
        &self,
        service: &BareJid,
        node: &str,
    ) -> Result<Option<String>, StoreError>;

    /// Replaces the configuration; `NotFound` if the node is missing.
    async fn set_node_config(
        &self,
        service: &BareJid,
        node: &str,
        config: &str,
    ) -> Result<(), StoreError>;

    /// Deletes the node with its items, affiliations and subscriptions;
    /// `NotFound` if missing.
    async fn delete_node(&self, service: &BareJid, node: &str) -> Result<(), StoreError>;

    /// The service's node names, sorted.
    async fn nodes(&self, service: &BareJid) -> Result<Vec<String>, StoreError>;

    /// Stores `item` as the newest (replacing an item with the same id),
    /// then keeps only the newest `max_items`. Returns the ids dropped by
    /// that limit. `NotFound` if the node is missing.
    async fn publish(
        &self,
        service: &BareJid,
        node: &str,
        item: &PubSubItem,
        max_items: Option<u64>,
    ) -> Result<Vec<String>, StoreError>;

    /// Removes one item; false if it was not there.
    async fn retract(&self, service: &BareJid, node: &str, id: &str) -> Result<bool, StoreError>;

    /// Every item, newest first.
    async fn items(&self, service: &BareJid, node: &str) -> Result<Vec<PubSubItem>, StoreError>;

    /// Removes every item of the node.
    async fn purge(&self, service: &BareJid, node: &str) -> Result<(), StoreError>;

    /// Sets (or with `None`, removes) an affiliation.
    async fn set_affiliation(
        &self,
        service: &BareJid,
        node: &str,
        jid: &BareJid,
        affiliation: Option<PubSubAffiliation>,
    ) -> Result<(), StoreError>;

    /// Every affiliation other than `none`, sorted by JID.
    async fn affiliations(
        &self,
        service: &BareJid,
        node: &str,
    ) -> Result<Vec<(BareJid, PubSubAffiliation)>, StoreError>;

    /// Sets (or with `None`, removes) a subscription.
    async fn set_subscription(
        &self,
        service: &BareJid,
        node: &str,
        jid: &Jid,
        state: Option<SubscriptionState>,
    ) -> Result<(), StoreError>;

    /// Every subscription, sorted by JID.
    async fn subscriptions(
        &self,
        service: &BareJid,
        node: &str,
    ) -> Result<Vec<(Jid, SubscriptionState)>, StoreError>;

    /// A subscription's options (XEP-0060 §6.3) as stored: `''` for the
    /// defaults, `None` if `jid` has no subscription.
    async fn subscription_options(
        &self,
        service: &BareJid,
        node: &str,
        jid: &Jid,
    ) -> Result<Option<String>, StoreError>;

    /// Replaces a subscription's options; `NotFound` if there is no such
    /// subscription. Changing the subscription's state keeps them; removing
    /// it removes them.
    async fn set_subscription_options(
        &self,
        service: &BareJid,
        node: &str,
        jid: &Jid,
        options: &str,
    ) -> Result<(), StoreError>;

    /// Every subscription with its options, sorted by JID.
    async fn subscriptions_with_options(
        &self,
        service: &BareJid,
        node: &str,
    ) -> Result<Vec<(Jid, SubscriptionState, String)>, StoreError>;

    /// Removes every node of a service (a deleted account's PEP nodes).
    async fn remove_service(&self, service: &BareJid) -> Result<(), StoreError>;

    /// Every feed subscription, sorted by key.
    async fn feeds(&self) -> Result<Vec<StoredFeed>, StoreError>;

    /// Adds a feed subscription or updates its interval and origin, keeping
    /// its validators and seen entries.
    async fn save_feed(
        &self,
        key: &FeedKey,
        interval_secs: u64,
        admin: bool,
    ) -> Result<(), StoreError>;

    /// Removes a feed subscription and its seen entries; false if absent.
    async fn remove_feed(&self, key: &FeedKey) -> Result<bool, StoreError>;

    /// Records the validators of a successful fetch; `NotFound` if the
    /// feed is not stored.
    async fn set_feed_validators(
        &self,
        key: &FeedKey,
        etag: Option<&str>,
        last_modified: Option<&str>,
    ) -> Result<(), StoreError>;

    /// Which of `item_ids` were already marked seen for this feed.
    async fn feed_seen(
        &self,
        key: &FeedKey,
        item_ids: &[String],
    ) -> Result<Vec<String>, StoreError>;

    /// Marks `item_id` seen (again: it becomes the newest), then keeps only
    /// the newest `keep` seen ids of the feed. `NotFound` if the feed is
    /// not stored.
    async fn mark_feed_seen(
        &self,
        key: &FeedKey,
        item_id: &str,
        keep: u64,
    ) -> Result<(), StoreError>;
}

#[derive(Default)]
struct MemoryNode {
    config: String,
    /// Oldest first.
    items: Vec<PubSubItem>,
    affiliations: BTreeMap<String, (BareJid, PubSubAffiliation)>,
    subscriptions: BTreeMap<String, (Jid, SubscriptionState)>,
    sub_options: BTreeMap<String, String>,
}

#[derive(Default)]
struct MemoryFeed {
    interval_secs: u64,
    admin: bool,
    etag: Option<String>,
    last_modified: Option<String>,
    /// Oldest first.
    seen: Vec<String>,
}

/// In-memory nodes for tests.
#[derive(Default)]
pub(crate) struct MemoryPubSub {
    data: Mutex<HashMap<BareJid, BTreeMap<String, MemoryNode>>>,
    feeds: Mutex<BTreeMap<FeedKey, MemoryFeed>>,
}

impl MemoryPubSub {
    fn with_node<T>(
        &self,
        service: &BareJid,
        node: &str,
        f: impl FnOnce(&mut MemoryNode) -> T,
    ) -> Result<T, StoreError> {
        let mut data = self.data.lock().unwrap_or_else(|e| e.into_inner());
        let n = data
            .get_mut(service)
            .and_then(|s| s.get_mut(node))
            .ok_or(StoreError::NotFound)?;
        Ok(f(n))
    }
}

#[async_trait]
impl PubSubStore for MemoryPubSub {
    async fn create_node(
        &self,
        service: &BareJid,
        node: &str,
        config: &str,
    ) -> Result<(), StoreError> {
        let mut data = self.data.lock().unwrap_or_else(|e| e.into_inner());
        let nodes = data.entry(service.clone()).or_default();
        if nodes.contains_key(node) {
            return Err(StoreError::AlreadyExists);
        }
        nodes.insert(
            node.to_owned(),
            MemoryNode {
                config: config.to_owned(),
                ..Default::default()
            },
        );
        Ok(())
    }

    async fn node_config(
        &self,
        service: &BareJid,
        node: &str,
    ) -> Result<Option<String>, StoreError> {
        match self.with_node(service, node, |n| n.config.clone()) {
            Ok(c) => Ok(Some(c)),
            Err(StoreError::NotFound) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn set_node_config(
        &self,
        service: &BareJid,
        node: &str,
        config: &str,
    ) -> Result<(), StoreError> {
        self.with_node(service, node, |n| n.config = config.to_owned())
    }

    async fn delete_node(&self, service: &BareJid, node: &str) -> Result<(), StoreError> {
        let mut data = self.data.lock().unwrap_or_else(|e| e.into_inner());
        data.get_mut(service)
            .and_then(|s| s.remove(node))
            .map(|_| ())
            .ok_or(StoreError::NotFound)
    }

    async fn nodes(&self, service: &BareJid) -> Result<Vec<String>, StoreError> {
        let data = self.data.lock().unwrap_or_else(|e| e.into_inner());
        Ok(data
            .get(service)
            .map(|s| s.keys().cloned().collect())
            .unwrap_or_default())
    }

    async fn publish(
        &self,
        service: &BareJid,
        node: &str,
        item: &PubSubItem,
        max_items: Option<u64>,
    ) -> Result<Vec<String>, StoreError> {
        self.with_node(service, node, |n| {
            n.items.retain(|i| i.id != item.id);
            n.items.push(item.clone());
            let mut dropped = Vec::new();
            if let Some(max) = max_items {
                let max = usize::try_from(max).unwrap_or(usize::MAX);
                while n.items.len() > max {
                    dropped.push(n.items.remove(0).id);
                }
            }
            dropped
        })
    }

    async fn retract(&self, service: &BareJid, node: &str, id: &str) -> Result<bool, StoreError> {
        self.with_node(service, node, |n| {
            let before = n.items.len();
            n.items.retain(|i| i.id != id);
            n.items.len() != before
        })
    }

    async fn items(&self, service: &BareJid, node: &str) -> Result<Vec<PubSubItem>, StoreError> {
        self.with_node(service, node, |n| n.items.iter().rev().cloned().collect())
    }

    async fn purge(&self, service: &BareJid, node: &str) -> Result<(), StoreError> {
        self.with_node(service, node, |n| n.items.clear())
    }

    async fn set_affiliation(
        &self,
        service: &BareJid,
        node: &str,
        jid: &BareJid,
        affiliation: Option<PubSubAffiliation>,
    ) -> Result<(), StoreError> {
        self.with_node(service, node, |n| match affiliation {
            Some(a) => {
                n.affiliations.insert(jid.to_string(), (jid.clone(), a));
            }
            None => {
                n.affiliations.remove(&jid.to_string());
            }
        })
    }

    async fn affiliations(
        &self,
        service: &BareJid,
        node: &str,
    ) -> Result<Vec<(BareJid, PubSubAffiliation)>, StoreError> {
        self.with_node(service, node, |n| {
            n.affiliations.values().cloned().collect()
        })
    }

    async fn set_subscription(
        &self,
        service: &BareJid,
        node: &str,
        jid: &Jid,
        state: Option<SubscriptionState>,
    ) -> Result<(), StoreError> {
        self.with_node(service, node, |n| match state {
            Some(s) => {
                n.subscriptions.insert(jid.to_string(), (jid.clone(), s));
            }
            None => {
                n.subscriptions.remove(&jid.to_string());
                n.sub_options.remove(&jid.to_string());
            }
        })
    }

    async fn subscription_options(
        &self,
        service: &BareJid,
        node: &str,
        jid: &Jid,
    ) -> Result<Option<String>, StoreError> {
        self.with_node(service, node, |n| {
            let key = jid.to_string();
            n.subscriptions
                .contains_key(&key)
                .then(|| n.sub_options.get(&key).cloned().unwrap_or_default())
        })
    }

    async fn set_subscription_options(
        &self,
        service: &BareJid,
        node: &str,
        jid: &Jid,
        options: &str,
    ) -> Result<(), StoreError> {
        self.with_node(service, node, |n| {
            let key = jid.to_string();
            if !n.subscriptions.contains_key(&key) {
                return Err(StoreError::NotFound);
            }
            n.sub_options.insert(key, options.to_owned());
            Ok(())
        })?
    }

    async fn subscriptions_with_options(
        &self,
        service: &BareJid,
        node: &str,
    ) -> Result<Vec<(Jid, SubscriptionState, String)>, StoreError> {
        self.with_node(service, node, |n| {
            n.subscriptions
                .iter()
                .map(|(k, (j, s))| {
                    (
                        j.clone(),
                        *s,
                        n.sub_options.get(k).cloned().unwrap_or_default(),
                    )
                })
                .collect()
        })
    }

    async fn subscriptions(
        &self,
        service: &BareJid,
        node: &str,
    ) -> Result<Vec<(Jid, SubscriptionState)>, StoreError> {
        self.with_node(service, node, |n| {
            n.subscriptions.values().cloned().collect()
        })
    }

    async fn remove_service(&self, service: &BareJid) -> Result<(), StoreError> {
        self.data
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(service);
        Ok(())
    }

    async fn feeds(&self) -> Result<Vec<StoredFeed>, StoreError> {
        let feeds = self.feeds.lock().unwrap_or_else(|e| e.into_inner());
        Ok(feeds
            .iter()
            .map(|(k, f)| StoredFeed {
                key: k.clone(),
                interval_secs: f.interval_secs,
                admin: f.admin,
                etag: f.etag.clone(),
                last_modified: f.last_modified.clone(),
            })
            .collect())
    }

    async fn save_feed(
        &self,
        key: &FeedKey,
        interval_secs: u64,
        admin: bool,
    ) -> Result<(), StoreError> {
        let mut feeds = self.feeds.lock().unwrap_or_else(|e| e.into_inner());
        let f = feeds.entry(key.clone()).or_default();
        f.interval_secs = interval_secs;
        f.admin = admin;
        Ok(())
    }

    async fn remove_feed(&self, key: &FeedKey) -> Result<bool, StoreError> {
        let mut feeds = self.feeds.lock().unwrap_or_else(|e| e.into_inner());
        Ok(feeds.remove(key).is_some())
    }

    async fn set_feed_validators(
        &self,
        key: &FeedKey,
        etag: Option<&str>,
        last_modified: Option<&str>,
    ) -> Result<(), StoreError> {
        let mut feeds = self.feeds.lock().unwrap_or_else(|e| e.into_inner());
        let f = feeds.get_mut(key).ok_or(StoreError::NotFound)?;
        f.etag = etag.map(str::to_owned);
        f.last_modified = last_modified.map(str::to_owned);
        Ok(())
    }

    async fn feed_seen(
        &self,
        key: &FeedKey,
        item_ids: &[String],
    ) -> Result<Vec<String>, StoreError> {
        let feeds = self.feeds.lock().unwrap_or_else(|e| e.into_inner());
        let Some(f) = feeds.get(key) else {
            return Ok(Vec::new());
        };
        Ok(item_ids
            .iter()
            .filter(|id| f.seen.contains(id))
            .cloned()
            .collect())
    }

    async fn mark_feed_seen(
        &self,
        key: &FeedKey,
        item_id: &str,
        keep: u64,
    ) -> Result<(), StoreError> {
        let mut feeds = self.feeds.lock().unwrap_or_else(|e| e.into_inner());
        let f = feeds.get_mut(key).ok_or(StoreError::NotFound)?;
        f.seen.retain(|s| s != item_id);
        f.seen.push(item_id.to_owned());
        let keep = usize::try_from(keep).unwrap_or(usize::MAX);
        if f.seen.len() > keep {
            let excess = f.seen.len() - keep;
            f.seen.drain(..excess);
        }
        Ok(())
    }
}
