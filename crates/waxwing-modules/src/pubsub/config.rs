//! Node configuration (XEP-0060 §8.2) as a typed struct, its XEP-0004 form,
//! and publish-options preconditions (XEP-0060 §7.1.5, XEP-0223).

use waxwing_proto::ns;
use waxwing_proto::stanza::{Condition, StanzaError};
use waxwing_proto::xml::Element;

use super::{NS_ERRORS, NS_NODE_CONFIG, NS_PUBLISH_OPTIONS};

/// Upper bound on stored items per node, whatever a client asks for
/// (`max` included): a node is not a file store.
pub const MAX_ITEMS_LIMIT: u64 = 1024;

/// Items kept when the creator does not say.
pub const DEFAULT_MAX_ITEMS: u64 = 256;

/// Who may subscribe and retrieve items (XEP-0060 §4.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessModel {
    Open,
    Presence,
    Roster,
    Authorize,
    Whitelist,
}

impl AccessModel {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::Presence => "presence",
            Self::Roster => "roster",
            Self::Authorize => "authorize",
            Self::Whitelist => "whitelist",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "open" => Self::Open,
            "presence" => Self::Presence,
            "roster" => Self::Roster,
            "authorize" => Self::Authorize,
            "whitelist" => Self::Whitelist,
            _ => return None,
        })
    }
}

/// Who may publish (XEP-0060 `pubsub#publish_model`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublishModel {
    Publishers,
    Subscribers,
    Open,
}

impl PublishModel {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Publishers => "publishers",
            Self::Subscribers => "subscribers",
            Self::Open => "open",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "publishers" => Self::Publishers,
            "subscribers" => Self::Subscribers,
            "open" => Self::Open,
            _ => return None,
        })
    }
}

/// A node holds items (leaf) or other nodes (collection, XEP-0248).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeType {
    Leaf,
    Collection,
}

impl NodeType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Leaf => "leaf",
            Self::Collection => "collection",
        }
    }
}

/// One node's configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeConfig {
    /// Fixed at creation.
    pub node_type: NodeType,
    /// The collection this node belongs to (`pubsub#collection`), if any.
    pub collection: Option<String>,
    pub access_model: AccessModel,
    pub publish_model: PublishModel,
    /// `None` means `max` (bounded by [`MAX_ITEMS_LIMIT`]).
    pub max_items: Option<u64>,
    pub persist_items: bool,
    pub deliver_payloads: bool,
    pub notify_retract: bool,
    pub notify_delete: bool,
    /// `never`, `on_sub` or `on_sub_and_presence`.
    pub send_last_published_item: String,
    pub roster_groups_allowed: Vec<String>,
    pub title: String,
}

impl NodeConfig {
    /// PEP defaults (XEP-0163 §4): presence access.
    pub fn pep() -> Self {
        NodeConfig {
            node_type: NodeType::Leaf,
            collection: None,
            access_model: AccessModel::Presence,
            publish_model: PublishModel::Publishers,
            max_items: Some(DEFAULT_MAX_ITEMS),
            persist_items: true,
            deliver_payloads: true,
            notify_retract: true,
            notify_delete: true,
            send_last_published_item: "on_sub_and_presence".into(),
            roster_groups_allowed: Vec::new(),
            title: String::new(),
        }
    }

    /// `pubsub.<host>` defaults: open access.
    pub fn service() -> Self {
        NodeConfig {
            access_model: AccessModel::Open,
            send_last_published_item: "on_sub".into(),
            ..Self::pep()
        }
    }

    /// The number of items the store keeps.
    pub fn item_limit(&self) -> u64 {
        if !self.persist_items {
            // Transient nodes still remember the last item, for
            // last-published-item delivery.
            return 1;
        }
        self.max_items
            .unwrap_or(MAX_ITEMS_LIMIT)
            .min(MAX_ITEMS_LIMIT)
    }

    fn value(&self, var: &str) -> Option<Vec<String>> {
        let b = |v: bool| vec![if v { "1" } else { "0" }.to_string()];
        Some(match var {
            "pubsub#access_model" => vec![self.access_model.as_str().into()],
            "pubsub#publish_model" => vec![self.publish_model.as_str().into()],
            "pubsub#max_items" => vec![
                self.max_items
                    .map_or_else(|| "max".to_string(), |n| n.to_string()),
            ],
            "pubsub#persist_items" => b(self.persist_items),
            "pubsub#deliver_payloads" => b(self.deliver_payloads),
            "pubsub#notify_retract" => b(self.notify_retract),
            "pubsub#notify_delete" => b(self.notify_delete),
            "pubsub#send_last_published_item" => vec![self.send_last_published_item.clone()],
            "pubsub#roster_groups_allowed" => self.roster_groups_allowed.clone(),
            "pubsub#title" => vec![self.title.clone()],
            "pubsub#node_type" => vec![self.node_type.as_str().into()],
            "pubsub#collection" => self.collection.iter().cloned().collect(),
            _ => return None,
        })
    }

    const FIELDS: &[(&str, &str)] = &[
        ("pubsub#access_model", "list-single"),
        ("pubsub#publish_model", "list-single"),
        ("pubsub#max_items", "text-single"),
        ("pubsub#persist_items", "boolean"),
        ("pubsub#deliver_payloads", "boolean"),
        ("pubsub#notify_retract", "boolean"),
        ("pubsub#notify_delete", "boolean"),
        ("pubsub#send_last_published_item", "list-single"),
        ("pubsub#roster_groups_allowed", "list-multi"),
        ("pubsub#title", "text-single"),
        ("pubsub#node_type", "list-single"),
        ("pubsub#collection", "text-single"),
    ];

    /// The configuration as a data form of `form_type` (`form` for owners,
    /// `submit` for storage).
    pub fn to_form(&self, form_type: &str) -> Element {
        let mut x = Element::new("x", ns::DATA_FORMS).with_attr("type", form_type);
        x.push_child(
            Element::new("field", ns::DATA_FORMS)
                .with_attr("var", "FORM_TYPE")
                .with_attr("type", "hidden")
                .with_child(Element::new("value", ns::DATA_FORMS).with_text(NS_NODE_CONFIG)),
        );
        for (var, ty) in Self::FIELDS {
            let mut f = Element::new("field", ns::DATA_FORMS).with_attr("var", *var);
            if form_type == "form" {
                f.set_attr("type", *ty);
            }
            for v in self.value(var).unwrap_or_default() {
                f.push_child(Element::new("value", ns::DATA_FORMS).with_text(v));
            }
            x.push_child(f);
        }
        x
    }

    /// Applies a submitted form. Unknown fields are ignored (clients send
    /// fields of other servers' extensions); bad values are `not-acceptable`.
    pub fn apply_form(&mut self, x: &Element) -> Result<(), StanzaError> {
        if x.attr("type") == Some("cancel") {
            return Ok(());
        }
        for (var, values) in fields(x) {
            let first = values.first().map(String::as_str).unwrap_or("");
            let bad = || {
                StanzaError::modify(Condition::NotAcceptable)
                    .with_text(format!("bad value for {var}"))
            };
            match var.as_str() {
                "pubsub#access_model" => {
                    self.access_model = AccessModel::parse(first).ok_or_else(bad)?
                }
                "pubsub#publish_model" => {
                    self.publish_model = PublishModel::parse(first).ok_or_else(bad)?
                }
                "pubsub#max_items" => {
                    self.max_items = if first == "max" {
                        None
                    } else {
                        Some(first.parse().map_err(|_| bad())?)
                    }
                }
                "pubsub#persist_items" => self.persist_items = boolean(first).ok_or_else(bad)?,
                "pubsub#deliver_payloads" => {
                    self.deliver_payloads = boolean(first).ok_or_else(bad)?
                }
                "pubsub#notify_retract" => self.notify_retract = boolean(first).ok_or_else(bad)?,
                "pubsub#notify_delete" => self.notify_delete = boolean(first).ok_or_else(bad)?,
                "pubsub#send_last_published_item" => {
                    if !matches!(first, "never" | "on_sub" | "on_sub_and_presence") {
                        return Err(bad());
                    }
                    self.send_last_published_item = first.into();
                }
                "pubsub#roster_groups_allowed" => self.roster_groups_allowed = values,
                "pubsub#title" => self.title = first.into(),
                "pubsub#node_type" => {
                    self.node_type = match first {
                        "leaf" => NodeType::Leaf,
                        "collection" => NodeType::Collection,
                        _ => return Err(bad()),
                    }
                }
                "pubsub#collection" => {
                    self.collection = values.into_iter().find(|v| !v.is_empty());
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// XEP-0060 §7.1.5: every field of publish-options must equal the
    /// node's value; otherwise `conflict` + `precondition-not-met`.
    pub fn check_preconditions(&self, options: &Element) -> Result<(), StanzaError> {
        for (var, values) in fields(options) {
            let matches = match self.value(&var) {
                Some(current)
                    if var.ends_with("persist_items")
                        || var.ends_with("deliver_payloads")
                        || var.ends_with("notify_retract")
                        || var.ends_with("notify_delete") =>
                {
                    values.first().and_then(|v| boolean(v))
                        == current.first().and_then(|v| boolean(v))
                }
                Some(current) => current == values,
                None => false,
            };
            if !matches {
                return Err(precondition_not_met(&var));
            }
        }
        Ok(())
    }

    /// Stored form: parse it back, falling back to `default` for fields it lacks.
    pub fn from_stored(xml: &str, default: NodeConfig) -> NodeConfig {
        let mut cfg = default;
        match waxwing_proto::xml::parse_stanza(xml, ns::CLIENT) {
            Ok(x) => {
                if cfg.apply_form(&x).is_err() {
                    tracing::error!("stored pubsub node configuration is invalid");
                }
            }
            Err(_) => tracing::error!("stored pubsub node configuration is not XML"),
        }
        cfg
    }

    /// The form stored for this configuration.
    pub fn to_stored(&self) -> String {
        self.to_form("submit").to_xml()
    }
}

/// `conflict` with XEP-0060's `<precondition-not-met/>`.
pub fn precondition_not_met(var: &str) -> StanzaError {
    StanzaError::cancel(Condition::Conflict)
        .with_text(format!("node configuration does not match {var}"))
        .with_app(Element::new("precondition-not-met", NS_ERRORS))
}

fn boolean(s: &str) -> Option<bool> {
    match s {
        "1" | "true" => Some(true),
        "0" | "false" => Some(false),
        _ => None,
    }
}

/// `(var, values)` of a form's fields, FORM_TYPE excluded.
pub fn fields(x: &Element) -> Vec<(String, Vec<String>)> {
    x.children()
        .filter(|f| f.name == "field")
        .filter_map(|f| {
            let var = f.attr("var")?;
            if var == "FORM_TYPE" {
                return None;
            }
            let values = f
                .children()
                .filter(|v| v.name == "value")
                .map(|v| v.text())
                .collect();
            Some((var.to_string(), values))
        })
        .collect()
}

/// The form inside `<publish-options/>` or `<configure/>`, if any, checked
/// for its FORM_TYPE.
pub fn inner_form(parent: &Element, form_type: &str) -> Result<Option<Element>, StanzaError> {
    let Some(x) = parent.child("x", ns::DATA_FORMS) else {
        return Ok(None);
    };
    let ft = x
        .children()
        .find(|f| f.name == "field" && f.attr("var") == Some("FORM_TYPE"))
        .and_then(|f| f.children().find(|v| v.name == "value"))
        .map(|v| v.text());
    if ft.as_deref().is_some_and(|t| t != form_type) {
        return Err(StanzaError::modify(Condition::BadRequest).with_text("wrong FORM_TYPE"));
    }
    Ok(Some(x.clone()))
}

/// A form's FORM_TYPE value, if it has one.
pub fn form_type(x: &Element) -> Option<String> {
    x.children()
        .find(|f| f.name == "field" && f.attr("var") == Some("FORM_TYPE"))
        .and_then(|f| f.children().find(|v| v.name == "value"))
        .map(|v| v.text())
}

/// FORM_TYPE of publish-options.
pub const PUBLISH_OPTIONS_FORM: &str = NS_PUBLISH_OPTIONS;

#[cfg(test)]
mod tests {
    use super::*;

    fn form(pairs: &[(&str, &str)]) -> Element {
        let mut x = Element::new("x", ns::DATA_FORMS).with_attr("type", "submit");
        for (k, v) in pairs {
            x.push_child(
                Element::new("field", ns::DATA_FORMS)
                    .with_attr("var", *k)
                    .with_child(Element::new("value", ns::DATA_FORMS).with_text(*v)),
            );
        }
        x
    }

    #[test]
    fn stored_form_round_trips() {
        let mut c = NodeConfig::pep();
        c.apply_form(&form(&[
            ("pubsub#access_model", "open"),
            ("pubsub#max_items", "max"),
            ("pubsub#persist_items", "false"),
        ]))
        .unwrap();
        assert_eq!(c.access_model, AccessModel::Open);
        assert_eq!(c.max_items, None);
        c.apply_form(&form(&[
            ("pubsub#node_type", "collection"),
            ("pubsub#collection", "parent"),
        ]))
        .unwrap();
        assert_eq!(c.node_type, NodeType::Collection);
        assert_eq!(c.collection.as_deref(), Some("parent"));
        assert!(!c.persist_items);
        assert_eq!(
            NodeConfig::from_stored(&c.to_stored(), NodeConfig::service()),
            c
        );
    }

    #[test]
    fn bad_values_are_not_acceptable() {
        let mut c = NodeConfig::pep();
        for (k, v) in [
            ("pubsub#access_model", "everyone"),
            ("pubsub#max_items", "-1"),
            ("pubsub#persist_items", "yes"),
        ] {
            let e = c.apply_form(&form(&[(k, v)])).unwrap_err();
            assert_eq!(e.condition, Condition::NotAcceptable, "{k}");
        }
        assert_eq!(c, NodeConfig::pep());
    }

    #[test]
    fn preconditions_compare_normalised_values() {
        let mut c = NodeConfig::pep();
        c.apply_form(&form(&[("pubsub#access_model", "open")]))
            .unwrap();
        c.check_preconditions(&form(&[
            ("pubsub#access_model", "open"),
            ("pubsub#persist_items", "true"),
        ]))
        .unwrap();
        let e = c
            .check_preconditions(&form(&[("pubsub#access_model", "whitelist")]))
            .unwrap_err();
        assert_eq!(e.condition, Condition::Conflict);
        assert_eq!(e.app.unwrap().name, "precondition-not-met");
        // A field we do not know cannot be met.
        assert!(
            c.check_preconditions(&form(&[("pubsub#bogus", "1")]))
                .is_err()
        );
    }

    #[test]
    fn item_limit_is_bounded() {
        let mut c = NodeConfig::service();
        c.max_items = None;
        assert_eq!(c.item_limit(), MAX_ITEMS_LIMIT);
        c.max_items = Some(1);
        assert_eq!(c.item_limit(), 1);
        c.persist_items = false;
        c.max_items = Some(50);
        assert_eq!(c.item_limit(), 1);
    }
}
