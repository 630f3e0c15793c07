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

    /// Removes every node of a service (a deleted account's PEP nodes).
    async fn remove_service(&self, service: &BareJid) -> Result<(), StoreError>;
}

#[derive(Default)]
struct MemoryNode {
    config: String,
    /// Oldest first.
    items: Vec<PubSubItem>,
    affiliations: BTreeMap<String, (BareJid, PubSubAffiliation)>,
    subscriptions: BTreeMap<String, (Jid, SubscriptionState)>,
}

/// In-memory nodes for tests.
#[derive(Default)]
pub(crate) struct MemoryPubSub {
    data: Mutex<HashMap<BareJid, BTreeMap<String, MemoryNode>>>,
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
            }
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
}
