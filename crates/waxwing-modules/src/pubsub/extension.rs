//! The engine's extension point: features built on PEP (XEP-0402 bookmarks
//! mirrored to private XML, XEP-0398 avatar → vCard) implement
//! [`Extension`] and are handed to the engine when the module list is
//! built (`PubSub::extend`). The engine calls them and never names them,
//! so the arrows run one way: bookmarks, avatar and vCard depend on
//! PubSub, PubSub on none of them.

use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use waxwing_core::hooks::Cx;
use waxwing_proto::jid::BareJid;

/// Something that reacts to PEP changes.
#[async_trait]
pub trait Extension: Send + Sync {
    /// disco#info features of every account this extension adds.
    fn account_features(&self) -> &'static [&'static str] {
        &[]
    }

    /// A PEP node of `owner` changed: an item was published or retracted,
    /// or the node was purged or deleted. Called after the change is
    /// stored and before the reply to the publisher.
    async fn pep_changed(&self, cx: &Cx, owner: &BareJid, node: &str);
}

/// The extensions of one engine, shared by its PEP handler and by modules
/// that publish to PEP themselves.
#[derive(Default)]
pub struct Extensions(RwLock<Vec<Arc<dyn Extension>>>);

/// No extensions: for engines that are not PEP (the `pubsub.<host>`
/// services) and read-only paths.
pub static NONE: Extensions = Extensions(RwLock::new(Vec::new()));

impl Extensions {
    /// Adds one; done while the module list is built, before serving.
    pub fn add(&self, e: Arc<dyn Extension>) {
        self.0.write().unwrap_or_else(|p| p.into_inner()).push(e);
    }

    /// The extensions, in the order they were added.
    pub fn all(&self) -> Vec<Arc<dyn Extension>> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}
