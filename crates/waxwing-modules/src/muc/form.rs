//! The little of XEP-0004 (Data Forms) that MUC needs: building forms and
//! reading submitted values.

use std::collections::HashMap;

use waxwing_proto::ns;
use waxwing_proto::xml::Element;

/// A form being built.
pub struct Form(Element);

impl Form {
    /// `<x xmlns='jabber:x:data' type=…>` with its hidden FORM_TYPE.
    pub fn new(ty: &str, form_type: &str) -> Self {
        let mut x = Element::new("x", ns::DATA_FORMS).with_attr("type", ty);
        x.push_child(field("FORM_TYPE", Some("hidden"), None, &[form_type]));
        Form(x)
    }

    pub fn title(mut self, title: &str) -> Self {
        self.0
            .push_child(Element::new("title", ns::DATA_FORMS).with_text(title));
        self
    }

    /// Adds a field; `ty` and `label` are omitted when `None`.
    pub fn field(
        &mut self,
        var: &str,
        ty: Option<&str>,
        label: Option<&str>,
        values: &[&str],
    ) -> &mut Element {
        self.0.push_child(field(var, ty, label, values));
        match self.0.children.last_mut() {
            Some(waxwing_proto::xml::Node::Element(e)) => e,
            _ => unreachable!("just pushed an element"),
        }
    }

    pub fn boolean(&mut self, var: &str, label: &str, v: bool) {
        self.field(
            var,
            Some("boolean"),
            Some(label),
            &[if v { "1" } else { "0" }],
        );
    }

    /// A `list-single`/`list-multi` field with `(value, label)` options.
    pub fn list(
        &mut self,
        var: &str,
        ty: &str,
        label: &str,
        values: &[&str],
        options: &[(&str, &str)],
    ) {
        let f = self.field(var, Some(ty), Some(label), values);
        for (v, l) in options {
            f.push_child(
                Element::new("option", ns::DATA_FORMS)
                    .with_attr("label", *l)
                    .with_child(Element::new("value", ns::DATA_FORMS).with_text(*v)),
            );
        }
    }

    pub fn into_element(self) -> Element {
        self.0
    }
}

fn field(var: &str, ty: Option<&str>, label: Option<&str>, values: &[&str]) -> Element {
    let mut f = Element::new("field", ns::DATA_FORMS).with_attr("var", var);
    if let Some(ty) = ty {
        f.set_attr("type", ty);
    }
    if let Some(label) = label {
        f.set_attr("label", label);
    }
    for v in values {
        f.push_child(Element::new("value", ns::DATA_FORMS).with_text(*v));
    }
    f
}

/// A boolean field held something other than `0`, `1`, `false`, `true`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotBoolean;

/// The values of a submitted form, by `var`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Submitted {
    pub form_type: Option<String>,
    pub values: HashMap<String, Vec<String>>,
}

impl Submitted {
    /// Reads `<x xmlns='jabber:x:data'>` (any type).
    pub fn parse(x: &Element) -> Self {
        let mut out = Submitted::default();
        for f in x.children().filter(|c| c.is("field", ns::DATA_FORMS)) {
            let Some(var) = f.attr("var") else { continue };
            let vals: Vec<String> = f
                .children()
                .filter(|c| c.is("value", ns::DATA_FORMS))
                .map(Element::text)
                .collect();
            if var == "FORM_TYPE" {
                out.form_type = vals.into_iter().next();
            } else {
                out.values.insert(var.to_string(), vals);
            }
        }
        out
    }

    /// The first value of `var`.
    pub fn single(&self, var: &str) -> Option<&str> {
        self.values.get(var)?.first().map(String::as_str)
    }

    pub fn multi(&self, var: &str) -> Option<&[String]> {
        self.values.get(var).map(Vec::as_slice)
    }

    /// XEP-0004 §3.3: `1`/`true` and `0`/`false`; anything else is an error.
    pub fn boolean(&self, var: &str) -> Result<Option<bool>, NotBoolean> {
        match self.single(var) {
            None => Ok(None),
            Some("1" | "true") => Ok(Some(true)),
            Some("0" | "false") => Ok(Some(false)),
            Some(_) => Err(NotBoolean),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_and_reads_back() {
        let mut f = Form::new("submit", "urn:x");
        f.boolean("a", "A?", true);
        f.field("b", None, None, &["x", "y"]);
        let s = Submitted::parse(&f.into_element());
        assert_eq!(s.form_type.as_deref(), Some("urn:x"));
        assert_eq!(s.boolean("a"), Ok(Some(true)));
        assert_eq!(s.multi("b").unwrap(), ["x", "y"]);
        assert_eq!(s.boolean("missing"), Ok(None));
        let mut bad = Form::new("submit", "urn:x");
        bad.field("a", None, None, &["yes"]);
        assert!(Submitted::parse(&bad.into_element()).boolean("a").is_err());
    }
}
