//! Subscription options (XEP-0060 §6.3): the `pubsub#subscribe_options`
//! form of one subscription, stored as an opaque submit form.
//!
//! Honoured in delivery: `pubsub#deliver` (no notifications while off),
//! `pubsub#show-values` (only to resources whose presence `<show/>` is
//! listed; `online` is no `<show/>`), and for collections
//! `pubsub#subscription_type` (`items` gets the items of the leaves below;
//! `nodes` gets no item notifications) and `pubsub#subscription_depth`
//! (`1`: direct children only, `all`: any depth). `pubsub#include_body` is
//! accepted and kept; digests are not offered (`pubsub#digest` must stay off).

use waxwing_proto::ns;
use waxwing_proto::stanza::{Condition, StanzaError};
use waxwing_proto::xml::Element;

use super::config::fields;

/// FORM_TYPE of subscription options.
pub const NS_SUBSCRIBE_OPTIONS: &str = "http://jabber.org/protocol/pubsub#subscribe_options";

/// The presence values `pubsub#show-values` may list.
pub const SHOW_VALUES: [&str; 5] = ["away", "chat", "dnd", "online", "xa"];

/// What a collection subscription delivers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubscriptionType {
    Items,
    Nodes,
}

/// How deep below a collection a subscription reaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Depth {
    One,
    All,
}

/// One subscription's options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubOptions {
    pub deliver: bool,
    pub include_body: bool,
    /// Empty: whatever the presence (and none needed).
    pub show_values: Vec<String>,
    pub subscription_type: SubscriptionType,
    pub depth: Depth,
}

impl Default for SubOptions {
    fn default() -> Self {
        SubOptions {
            deliver: true,
            include_body: false,
            show_values: Vec::new(),
            subscription_type: SubscriptionType::Items,
            depth: Depth::One,
        }
    }
}

fn boolean(s: &str) -> Option<bool> {
    match s {
        "1" | "true" => Some(true),
        "0" | "false" => Some(false),
        _ => None,
    }
}

impl SubOptions {
    /// Parses what the store holds; `''` and unreadable forms are the defaults.
    pub fn from_stored(stored: &str) -> Self {
        let mut o = SubOptions::default();
        if stored.is_empty() {
            return o;
        }
        match waxwing_proto::xml::parse_stanza(stored, ns::CLIENT) {
            Ok(x) => {
                if o.apply_form(&x).is_err() {
                    tracing::error!("stored subscription options are invalid");
                }
            }
            Err(_) => tracing::error!("stored subscription options are not XML"),
        }
        o
    }

    /// What the store keeps.
    pub fn to_stored(&self) -> String {
        if *self == SubOptions::default() {
            return String::new();
        }
        self.to_form("submit").to_xml()
    }

    /// Would a resource whose presence shows `show` (`None`: available
    /// without `<show/>`) get notifications?
    pub fn accepts_show(&self, show: Option<&str>) -> bool {
        self.show_values.is_empty()
            || self
                .show_values
                .iter()
                .any(|v| v == show.unwrap_or("online"))
    }

    /// Applies a submitted form; unknown fields are ignored, bad values
    /// are `not-acceptable`.
    pub fn apply_form(&mut self, x: &Element) -> Result<(), StanzaError> {
        if x.attr("type") == Some("cancel") {
            return Ok(());
        }
        let mut next = self.clone();
        for (var, values) in fields(x) {
            let first = values.first().map(String::as_str).unwrap_or("");
            let bad = || {
                StanzaError::modify(Condition::NotAcceptable)
                    .with_text(format!("bad value for {var}"))
            };
            match var.as_str() {
                "pubsub#deliver" => next.deliver = boolean(first).ok_or_else(bad)?,
                "pubsub#include_body" => next.include_body = boolean(first).ok_or_else(bad)?,
                "pubsub#digest" if boolean(first).ok_or_else(bad)? => {
                    return Err(StanzaError::modify(Condition::NotAcceptable)
                        .with_text("digests are not supported"));
                }
                "pubsub#show-values" => {
                    if values.iter().any(|v| !SHOW_VALUES.contains(&v.as_str())) {
                        return Err(bad());
                    }
                    next.show_values = values;
                }
                "pubsub#subscription_type" => {
                    next.subscription_type = match first {
                        "items" => SubscriptionType::Items,
                        "nodes" => SubscriptionType::Nodes,
                        _ => return Err(bad()),
                    }
                }
                "pubsub#subscription_depth" => {
                    next.depth = match first {
                        "1" => Depth::One,
                        "all" => Depth::All,
                        _ => return Err(bad()),
                    }
                }
                _ => {}
            }
        }
        *self = next;
        Ok(())
    }

    /// The options as a form (`form` with field types and choices, or `submit`).
    pub fn to_form(&self, form_type: &str) -> Element {
        let is_form = form_type == "form";
        let mut x = Element::new("x", ns::DATA_FORMS).with_attr("type", form_type);
        let field = |var: &str, ty: &str, label: &str, values: Vec<String>, options: &[&str]| {
            let mut f = Element::new("field", ns::DATA_FORMS).with_attr("var", var);
            if is_form {
                f.set_attr("type", ty);
                if !label.is_empty() {
                    f.set_attr("label", label);
                }
                for o in options {
                    f.push_child(
                        Element::new("option", ns::DATA_FORMS)
                            .with_child(Element::new("value", ns::DATA_FORMS).with_text(*o)),
                    );
                }
            }
            for v in values {
                f.push_child(Element::new("value", ns::DATA_FORMS).with_text(v));
            }
            f
        };
        let b = |v: bool| vec![if v { "1" } else { "0" }.to_string()];
        x.push_child(field(
            "FORM_TYPE",
            "hidden",
            "",
            vec![NS_SUBSCRIBE_OPTIONS.into()],
            &[],
        ));
        x.push_child(field(
            "pubsub#deliver",
            "boolean",
            "Enable delivery?",
            b(self.deliver),
            &[],
        ));
        x.push_child(field(
            "pubsub#include_body",
            "boolean",
            "Receive message body in addition to payload?",
            b(self.include_body),
            &[],
        ));
        x.push_child(field(
            "pubsub#show-values",
            "list-multi",
            "Select the presence types which are allowed to receive event notifications",
            self.show_values.clone(),
            &SHOW_VALUES,
        ));
        x.push_child(field(
            "pubsub#subscription_type",
            "list-single",
            "Receive items or node notifications (collections)",
            vec![
                match self.subscription_type {
                    SubscriptionType::Items => "items",
                    SubscriptionType::Nodes => "nodes",
                }
                .into(),
            ],
            &["items", "nodes"],
        ));
        x.push_child(field(
            "pubsub#subscription_depth",
            "list-single",
            "How far below a collection to reach",
            vec![
                match self.depth {
                    Depth::One => "1",
                    Depth::All => "all",
                }
                .into(),
            ],
            &["1", "all"],
        ));
        x
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(pairs: &[(&str, &[&str])]) -> Element {
        let mut x = Element::new("x", ns::DATA_FORMS).with_attr("type", "submit");
        for (k, vs) in pairs {
            let mut f = Element::new("field", ns::DATA_FORMS).with_attr("var", *k);
            for v in *vs {
                f.push_child(Element::new("value", ns::DATA_FORMS).with_text(*v));
            }
            x.push_child(f);
        }
        x
    }

    #[test]
    fn options_round_trip_through_the_store() {
        let mut o = SubOptions::default();
        assert_eq!(o.to_stored(), "");
        o.apply_form(&form(&[
            ("pubsub#deliver", &["false"]),
            ("pubsub#show-values", &["chat", "online"]),
            ("pubsub#subscription_depth", &["all"]),
        ]))
        .unwrap();
        assert!(!o.deliver);
        assert_eq!(o.depth, Depth::All);
        assert_eq!(SubOptions::from_stored(&o.to_stored()), o);
        assert_eq!(SubOptions::from_stored(""), SubOptions::default());
    }

    #[test]
    fn bad_values_change_nothing() {
        let mut o = SubOptions::default();
        for (k, v) in [
            ("pubsub#show-values", "sleeping"),
            ("pubsub#deliver", "maybe"),
            ("pubsub#digest", "1"),
            ("pubsub#subscription_type", "all"),
        ] {
            let e = o
                .apply_form(&form(&[("pubsub#deliver", &["0"]), (k, &[v])]))
                .unwrap_err();
            assert_eq!(e.condition, Condition::NotAcceptable, "{k}");
        }
        assert_eq!(o, SubOptions::default());
    }

    #[test]
    fn show_values_filter_presence() {
        let mut o = SubOptions::default();
        assert!(o.accepts_show(Some("dnd")));
        o.show_values = vec!["online".into(), "chat".into()];
        assert!(o.accepts_show(None));
        assert!(o.accepts_show(Some("chat")));
        assert!(!o.accepts_show(Some("away")));
    }
}
