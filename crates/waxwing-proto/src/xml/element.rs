//! A small owned XML tree for stanzas.
//!
//! We keep our own type instead of minidom so that the tree has exactly the
//! shape the framer produces (namespace per element, no prefixes) and so
//! serialization can omit the stream's default namespace, which is what
//! makes `<message>` come out without `xmlns='jabber:client'` on the wire.
//!
//! Attribute keys are strings in one of three forms:
//! - `local` for unnamespaced attributes (almost all of XMPP);
//! - `xml:local` for the XML namespace (`xml:lang`), because the `xml`
//!   prefix is bound by definition and needs no declaration;
//! - `{uri}local` for any other namespace (Clark notation).
//!
//! Names, namespaces, attribute keys and values are [`CompactString`]s:
//! up to 24 bytes inline, or a `&'static str` (the namespaces the server
//! knows, see [`crate::ns::intern`]), so a stanza's element tree costs an
//! allocation for each text, attribute list and child list, not one per
//! string. They deref to `str` and compare with `&str`.

use std::fmt;
use std::ops::{Deref, DerefMut};
use std::sync::{Arc, OnceLock};

use compact_str::CompactString;

use crate::ns;

/// An XML element with its namespace resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Element {
    /// Local name, without prefix.
    pub name: CompactString,
    /// Namespace name (URI); empty for "no namespace".
    pub ns: CompactString,
    /// Attributes in insertion order; see the module docs for key syntax.
    pub attrs: Vec<(CompactString, CompactString)>,
    /// Child elements and text, in document order.
    pub children: Children,
}

/// The children of an element, shared copy-on-write, and parsed on demand
/// when they came from the wire.
///
/// Fan-out clones one stanza per recipient (a room's occupants, a node's
/// subscribers, a user's resources) and changes only the top-level `to`.
/// With shared children such a clone copies the name and attributes, not
/// the payload, and the payload is serialized once: the first copy written
/// caches the children's XML and the others reuse it. Any mutable access
/// (through `DerefMut`) unshares and drops the cache, so sharing is never
/// visible.
///
/// Most messages are routed, not read: the framer keeps a message's
/// content as the validated bytes it arrived as (see
/// [`Children::from_raw`]), which are the serialized cache from the start,
/// plus the qualified names of the direct child elements. Reading the
/// nodes (through `Deref`, `PartialEq`, `Debug`) parses those bytes once;
/// [`Element::has_child`] and [`Element::child_names`] answer from the
/// names without parsing, and writing the element back into the same
/// default namespace copies the bytes.
///
/// No children is `None`, not an empty allocation: most elements of a
/// stanza are leaves (`<active/>`, `<request/>`, `<origin-id/>`), and the
/// framer builds one per element of every stanza.
#[derive(Clone, Default)]
pub struct Children(Option<Arc<ChildNodes>>);

#[derive(Default)]
struct ChildNodes {
    /// The nodes; unset until first read when the children came as raw
    /// content (then `raw` is set).
    nodes: OnceLock<Vec<Node>>,
    /// Raw content (see [`Children::from_raw`]) and the default namespace
    /// it is valid in, until the first mutable access. A plain field, set
    /// when the children are made: a `OnceLock` set then would cost its
    /// synchronisation for every message routed.
    raw: Option<(CompactString, String)>,
    /// The serialized nodes and the default namespace (the parent's
    /// content namespace) they are valid in, cached by the first write
    /// of shared nodes.
    xml: OnceLock<(CompactString, String)>,
    /// For raw content, until the first mutable access: the name and
    /// namespace of each direct child element, in document order.
    names: Option<ChildNames>,
}

/// The name and namespace of each direct child element of raw content.
/// Most messages have one (a body), held here without a list allocated
/// for it (the framer reuses the list it collects names in).
#[derive(Clone)]
pub(crate) enum ChildNames {
    One([(CompactString, CompactString); 1]),
    Many(Vec<(CompactString, CompactString)>),
}

impl ChildNames {
    /// The names collected in `names`, which is left empty (and keeps its
    /// capacity when they are one).
    pub(crate) fn take_from(names: &mut Vec<(CompactString, CompactString)>) -> Self {
        match names.len() {
            1 => ChildNames::One([names.pop().expect("one name")]),
            _ => ChildNames::Many(std::mem::take(names)),
        }
    }

    fn as_slice(&self) -> &[(CompactString, CompactString)] {
        match self {
            ChildNames::One(one) => one,
            ChildNames::Many(many) => many,
        }
    }

    fn push(&mut self, name: (CompactString, CompactString)) {
        match self {
            ChildNames::One([first]) => {
                let first = std::mem::take(first);
                *self = ChildNames::Many(vec![first, name]);
            }
            ChildNames::Many(many) => many.push(name),
        }
    }
}

impl Clone for ChildNodes {
    /// A copy to change (see `Arc::make_mut`): of the nodes if they were
    /// parsed (the copy is no longer written as the old bytes), else of
    /// the raw content, which [`Children::push_element`] appends to.
    fn clone(&self) -> Self {
        match self.nodes.get() {
            Some(nodes) => ChildNodes {
                nodes: OnceLock::from(nodes.clone()),
                raw: None,
                xml: OnceLock::new(),
                names: None,
            },
            None => ChildNodes {
                nodes: OnceLock::new(),
                raw: self.raw.clone(),
                xml: self.xml.clone(),
                names: self.names.clone(),
            },
        }
    }
}

impl ChildNodes {
    /// The nodes, parsed from the raw content on first use.
    fn nodes(&self) -> &Vec<Node> {
        self.nodes.get_or_init(|| match &self.raw {
            Some((content_ns, raw)) => parse_content(raw, content_ns),
            // Made empty to be filled (`DerefMut`).
            None => Vec::new(),
        })
    }
}

/// How many times raw content has been parsed into nodes (see
/// [`Children`]); for tests that check a path reads only names.
static RAW_PARSES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// The number of raw contents parsed into nodes since the process started.
pub fn raw_content_parses() -> u64 {
    RAW_PARSES.load(std::sync::atomic::Ordering::Relaxed)
}

/// Parses content the framer validated in a context whose default
/// namespace was `content_ns` and which uses no prefix declared outside
/// it, so wrapping it in an element of that namespace is all the context
/// it needs. The limits were enforced when it arrived, and the bytes are
/// the same, so the wrapper's parse cannot fail.
fn parse_content(raw: &str, content_ns: &str) -> Vec<Node> {
    RAW_PARSES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut wrapped = String::with_capacity(raw.len() + content_ns.len() + 20);
    wrapped.push_str("<c xmlns='");
    escape_attr(&mut wrapped, content_ns);
    wrapped.push_str("'>");
    wrapped.push_str(raw);
    wrapped.push_str("</c>");
    match crate::xml::parse_fragment(&wrapped) {
        Ok(el) => match el.children.0 {
            Some(inner) => Arc::try_unwrap(inner)
                .map(|c| c.nodes.into_inner().unwrap_or_default())
                .unwrap_or_else(|shared| shared.nodes().clone()),
            None => Vec::new(),
        },
        Err(e) => {
            debug_assert!(false, "validated content failed to parse: {e:?}");
            Vec::new()
        }
    }
}

/// What an element without children derefs to.
static NO_NODES: Vec<Node> = Vec::new();

impl Deref for Children {
    type Target = Vec<Node>;
    fn deref(&self) -> &Vec<Node> {
        match &self.0 {
            Some(inner) => inner.nodes(),
            None => &NO_NODES,
        }
    }
}

impl DerefMut for Children {
    fn deref_mut(&mut self) -> &mut Vec<Node> {
        if let Some(inner) = &self.0 {
            // Parsed before unsharing, so a shared payload is parsed once
            // and the copy clones nodes, not raw bytes.
            inner.nodes();
        }
        let inner = Arc::make_mut(self.0.get_or_insert_with(Arc::default));
        inner.nodes();
        inner.raw = None;
        inner.xml.take();
        inner.names = None;
        inner.nodes.get_mut().expect("parsed above")
    }
}

impl<'a> IntoIterator for &'a Children {
    type Item = &'a Node;
    type IntoIter = std::slice::Iter<'a, Node>;
    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

impl<'a> IntoIterator for &'a mut Children {
    type Item = &'a mut Node;
    type IntoIter = std::slice::IterMut<'a, Node>;
    fn into_iter(self) -> Self::IntoIter {
        match self.0 {
            // Iterating over nothing needs no allocation to unshare.
            None => [].iter_mut(),
            Some(_) => self.deref_mut().iter_mut(),
        }
    }
}

impl From<Vec<Node>> for Children {
    fn from(nodes: Vec<Node>) -> Self {
        if nodes.is_empty() {
            return Children(None);
        }
        Children(Some(Arc::new(ChildNodes {
            nodes: OnceLock::from(nodes),
            raw: None,
            xml: OnceLock::new(),
            names: None,
        })))
    }
}

impl PartialEq for Children {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl Eq for Children {}

impl fmt::Debug for Children {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        (**self).fmt(f)
    }
}

impl Children {
    /// Children kept as `raw`, the content of an element exactly as it
    /// arrived, to be parsed when first read. The caller (the framer)
    /// vouches that `raw` is well-formed content that passed every check
    /// and limit, in which unprefixed elements without `xmlns` are in
    /// `content_ns`, that it uses no namespace prefix declared outside it
    /// (only `xml:`), and that `names` are its direct child elements.
    pub(crate) fn from_raw(raw: String, content_ns: CompactString, names: ChildNames) -> Self {
        if raw.is_empty() {
            return Children(None);
        }
        Children(Some(Arc::new(ChildNodes {
            nodes: OnceLock::new(),
            raw: Some((content_ns, raw)),
            xml: OnceLock::new(),
            names: Some(names),
        })))
    }

    /// Whether there are no nodes at all (no element, no text); answered
    /// without parsing raw content, which is never empty.
    pub fn is_empty(&self) -> bool {
        match &self.0 {
            None => true,
            Some(inner) => match inner.nodes.get() {
                Some(nodes) => nodes.is_empty(),
                None => false,
            },
        }
    }

    /// Whether the raw content has not been parsed (yet): for tests and
    /// for checking that a path reads child names only.
    pub fn is_unparsed(&self) -> bool {
        self.0.as_ref().is_some_and(|i| i.nodes.get().is_none())
    }

    /// Appends `child`. Raw content that was not parsed stays raw, with the
    /// child's XML appended: a stamp added to every routed message (an
    /// archive's `stanza-id`, an offline `delay`) does not parse it.
    fn push_element(&mut self, child: Element) {
        if let Some(inner) = &mut self.0
            && inner.names.is_some()
            && inner.nodes.get().is_none()
        {
            let inner = Arc::make_mut(inner);
            if let (Some((content_ns, raw)), Some(names)) = (&mut inner.raw, &mut inner.names) {
                child.write_to(raw, content_ns);
                names.push((child.name, child.ns));
                return;
            }
        }
        self.push(Node::Element(child));
    }

    /// Appends a child element given as its XML (see
    /// [`Element::push_child_xml`]) if the content is still raw, and says
    /// whether it did; anything else is left as it was.
    fn push_raw_xml(&mut self, name: &str, ns: &str, xml: &str) -> bool {
        if let Some(inner) = &mut self.0
            && inner.names.is_some()
            && inner.nodes.get().is_none()
        {
            let inner = Arc::make_mut(inner);
            if let (Some((_, raw)), Some(names)) = (&mut inner.raw, &mut inner.names) {
                raw.push_str(xml);
                names.push((CompactString::new(name), crate::ns::intern(ns)));
                return true;
            }
        }
        false
    }

    /// The length of the children as written, if known without writing
    /// them (raw or cached); else 0.
    fn written_len_hint(&self) -> usize {
        let Some(inner) = &self.0 else {
            return 0;
        };
        [inner.raw.as_ref(), inner.xml.get()]
            .into_iter()
            .flatten()
            .map(|(_, xml)| xml.len())
            .next()
            .unwrap_or(0)
    }

    /// The recorded names of raw content, if still valid.
    fn names(&self) -> Option<&[(CompactString, CompactString)]> {
        self.0.as_ref()?.names.as_ref().map(ChildNames::as_slice)
    }

    /// Writes the nodes as the content of an element in `parent_ns`; see
    /// the type's docs for when the result is cached.
    fn write_to(&self, out: &mut String, parent_ns: &str) {
        let Some(inner) = &self.0 else {
            return;
        };
        for (ns, xml) in [inner.raw.as_ref(), inner.xml.get()].into_iter().flatten() {
            if ns == parent_ns {
                out.push_str(xml);
                return;
            }
        }
        if Arc::strong_count(inner) == 1 {
            // Not shared: nobody else will write these nodes.
            write_nodes(inner.nodes(), out, parent_ns);
            return;
        }
        let mut xml = String::new();
        write_nodes(inner.nodes(), &mut xml, parent_ns);
        out.push_str(&xml);
        let _ = inner.xml.set((ns::intern(parent_ns), xml));
    }
}

/// Appends text `s` (not empty) to `nodes`, merged with a text node at the
/// end (see [`Element::push_text`]).
pub(crate) fn push_text_node(nodes: &mut Vec<Node>, s: String) {
    match nodes.last_mut() {
        Some(Node::Text(t)) => {
            // Grown by an eighth, not doubled: text that arrives in many
            // chunks (a stanza trickled in) then costs about its own
            // size, not up to twice it, while it is being received.
            if t.capacity() - t.len() < s.len() {
                t.reserve_exact(s.len().max(t.len() / 8));
            }
            t.push_str(&s)
        }
        _ => nodes.push(Node::Text(s)),
    }
}

fn write_nodes(nodes: &[Node], out: &mut String, parent_ns: &str) {
    for n in nodes {
        match n {
            Node::Element(e) => e.write_to(out, parent_ns),
            Node::Text(t) => escape_text(out, t),
        }
    }
}

/// A child of an [`Element`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Node {
    /// A child element.
    Element(Element),
    /// Character data, already unescaped.
    Text(String),
}

impl Element {
    /// An empty element `name` in namespace `ns`.
    pub fn new(name: impl Into<CompactString>, ns: impl Into<CompactString>) -> Self {
        Element {
            name: name.into(),
            ns: ns.into(),
            attrs: Vec::new(),
            children: Children::default(),
        }
    }

    /// Builder form of [`Element::set_attr`].
    #[must_use]
    pub fn with_attr(mut self, k: impl Into<CompactString>, v: impl Into<CompactString>) -> Self {
        self.set_attr(k, v);
        self
    }

    /// Builder form of [`Element::push_child`].
    #[must_use]
    pub fn with_child(mut self, child: Element) -> Self {
        self.push_child(child);
        self
    }

    /// Appends a text node.
    #[must_use]
    pub fn with_text(mut self, s: impl Into<String>) -> Self {
        self.push_text(s);
        self
    }

    /// The value of attribute `k` (see module docs for key syntax).
    ///
    /// Inlined: nearly every caller names the attribute with a literal, and
    /// inlined the comparison with it is a length check and one integer
    /// compare instead of a call to `memcmp` per attribute (the message
    /// path asks for about eight attributes per message, issue #21).
    #[inline]
    pub fn attr(&self, k: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(key, _)| key.as_str() == k)
            .map(|(_, v)| v.as_str())
    }

    /// Replaces the value of `k`, or appends it if absent.
    pub fn set_attr(&mut self, k: impl Into<CompactString>, v: impl Into<CompactString>) {
        let k = k.into();
        let v = v.into();
        match self.attrs.iter_mut().find(|(key, _)| *key == k) {
            Some((_, old)) => *old = v,
            None => self.attrs.push((k, v)),
        }
    }

    /// Removes `k` and returns its value, if it was present.
    pub fn remove_attr(&mut self, k: &str) -> Option<CompactString> {
        let i = self.attrs.iter().position(|(key, _)| key.as_str() == k)?;
        Some(self.attrs.remove(i).1)
    }

    /// Whether this element is `{ns}name`.
    pub fn is(&self, name: &str, ns: &str) -> bool {
        self.name == name && self.ns == ns
    }

    /// Whether there is a child element `{ns}name`. Unlike
    /// `child(name, ns).is_some()` this does not parse raw content (see
    /// [`Children`]): the checks every routed message goes through (hints,
    /// chat states, receipts, carbons, archiving, CSI, push) should use it.
    ///
    /// Inlined like [`Element::attr`]: callers name the child with
    /// literals, and inlined each comparison with them is a length check
    /// and a compare of a few bytes rather than a call and two `memcmp`s.
    #[inline]
    pub fn has_child(&self, name: &str, ns: &str) -> bool {
        match self.children.names() {
            Some(names) => names.iter().any(|(n, s)| n == name && s == ns),
            None => self.child(name, ns).is_some(),
        }
    }

    /// The name and namespace of each child element, in document order,
    /// without parsing raw content (see [`Children`]).
    pub fn child_names(&self) -> impl Iterator<Item = (&str, &str)> {
        let (names, nodes): (&[(CompactString, CompactString)], &[Node]) =
            match self.children.names() {
                Some(names) => (names, &[]),
                None => (&[], &self.children),
            };
        names
            .iter()
            .map(|(n, s)| (n.as_str(), s.as_str()))
            .chain(nodes.iter().filter_map(|n| match n {
                Node::Element(e) => Some((e.name.as_str(), e.ns.as_str())),
                Node::Text(_) => None,
            }))
    }

    /// The first child element `{ns}name`.
    pub fn child(&self, name: &str, ns: &str) -> Option<&Element> {
        self.children().find(|c| c.is(name, ns))
    }

    /// The first child element `{ns}name`, mutably.
    pub fn child_mut(&mut self, name: &str, ns: &str) -> Option<&mut Element> {
        self.children_mut().find(|c| c.is(name, ns))
    }

    /// Child elements, skipping text.
    pub fn children(&self) -> impl Iterator<Item = &Element> {
        self.children.iter().filter_map(|n| match n {
            Node::Element(e) => Some(e),
            Node::Text(_) => None,
        })
    }

    /// Child elements, skipping text, mutably.
    pub fn children_mut(&mut self) -> impl Iterator<Item = &mut Element> {
        self.children.iter_mut().filter_map(|n| match n {
            Node::Element(e) => Some(e),
            Node::Text(_) => None,
        })
    }

    /// The first child element, whatever its name (an IQ's payload).
    pub fn first_child(&self) -> Option<&Element> {
        self.children().next()
    }

    /// Appends a child element.
    pub fn push_child(&mut self, child: Element) {
        self.children.push_element(child);
    }

    /// Appends the child element `xml`, named `name` in `ns`: what
    /// [`Element::write_to`] writes for it under a parent of another
    /// namespace, so it declares its own. For a child serialized once and
    /// pushed into many stanzas (a room occupant's `<occupant-id/>`), or
    /// written from a template (a room's `<stanza-id/>`): raw content (see
    /// [`Children`]) takes the bytes as they are, where
    /// [`Element::push_child`] would build the child and write it. Other
    /// children parse `xml` into a tree (whose attributes, as any parsed
    /// element's, are then in the parser's order).
    ///
    /// # Panics
    /// If `xml` is not one well-formed element (a caller's bug: it is never
    /// input), when it is parsed; debug builds check every call.
    pub fn push_child_xml(&mut self, name: &str, ns: &str, xml: &str) {
        #[cfg(debug_assertions)]
        {
            let child = super::parse_fragment(xml).expect("push_child_xml: one element");
            debug_assert!(
                child.is(name, ns) && ns != self.ns,
                "{xml} is not {name} in {ns}"
            );
        }
        if self.children.push_raw_xml(name, ns, xml) {
            return;
        }
        let child = super::parse_fragment(xml).expect("push_child_xml: one element");
        self.children.push_element(child);
    }

    /// Appends text, merging with a preceding text node so that the tree
    /// does not depend on how the parser happened to split character data.
    pub fn push_text(&mut self, s: impl Into<String>) {
        let s = s.into();
        if s.is_empty() {
            return;
        }
        push_text_node(&mut self.children, s);
    }

    /// Removes every child element for which `pred` returns true; text is kept.
    ///
    /// When nothing matches the children are left untouched, still shared
    /// and with their serialization cached: hooks that strip what a sender
    /// may not claim (MAM's `stanza-id`) run on every copy of a fan-out and
    /// almost never find anything, so they must not unshare the payload.
    pub fn remove_children(&mut self, mut pred: impl FnMut(&Element) -> bool) {
        let Some(first) = self
            .children
            .iter()
            .position(|n| matches!(n, Node::Element(e) if pred(e)))
        else {
            return;
        };
        let mut i = 0;
        self.children.retain(|n| {
            let keep = i < first
                || match n {
                    Node::Element(e) => i != first && !pred(e),
                    Node::Text(_) => true,
                };
            i += 1;
            keep
        });
    }

    /// Concatenation of the direct text children (not descendants).
    pub fn text(&self) -> String {
        let mut out = String::new();
        for n in &self.children {
            if let Node::Text(t) = n {
                out.push_str(t);
            }
        }
        out
    }

    /// Whether there is at least one child element.
    pub fn has_children(&self) -> bool {
        self.child_names().next().is_some()
    }

    /// Serializes this element, declaring `xmlns` only when it differs
    /// from the namespace in scope (`parent_ns`).
    pub fn write_to(&self, out: &mut String, parent_ns: &str) {
        self.write_start_tag_open(out, parent_ns);
        self.write_attrs_and_content(out, &self.name, &self.ns);
    }

    /// Writes what [`Element::write_to`] writes, cut after the attributes:
    /// `<name xmlns='…' k='v'…` to `head`, and `/>` or `>…</name>` to
    /// `tail`. For a stanza written to many recipients with one attribute
    /// of its own each (`to`), between the two parts.
    pub fn write_split(&self, head: &mut String, tail: &mut String, parent_ns: &str) {
        head.reserve(
            self.name.len()
                + self.ns.len()
                + 10
                + self
                    .attrs
                    .iter()
                    .map(|(k, v)| k.len() + v.len() + 4)
                    .sum::<usize>(),
        );
        self.write_start_tag_open(head, parent_ns);
        self.write_attrs(head);
        tail.reserve(self.children.written_len_hint() + 2 * self.name.len() + 5);
        self.write_content(tail, &self.name, &self.ns);
    }

    /// `<name`, and `xmlns` if `parent_ns` is not the element's.
    fn write_start_tag_open(&self, out: &mut String, parent_ns: &str) {
        match self.name.as_str() {
            // The stanza nearly every write is, from a constant (see
            // `write_common_attr_opening`).
            "message" => out.push_str("<message"),
            name => {
                out.push('<');
                out.push_str(name);
            }
        }
        if self.ns != parent_ns {
            out.push_str(" xmlns='");
            escape_attr(out, &self.ns);
            out.push('\'');
        }
    }

    /// Serializes as a child of a stream whose default namespace is
    /// `stream_ns`, with the element's own namespace bound to `prefix`
    /// (declared on the element): `<db:result xmlns:db='…'>`. Children stay
    /// in the default namespace unless they declare their own. For
    /// namespaces some peers match by the literal prefixed name rather
    /// than by namespace (ejabberd's dialback `db:result`/`db:verify`).
    pub fn to_xml_prefixed(&self, prefix: &str, stream_ns: &str) -> String {
        let tag = format!("{prefix}:{}", self.name);
        let mut out = String::new();
        out.push('<');
        out.push_str(&tag);
        out.push_str(&format!(" xmlns:{prefix}='"));
        escape_attr(&mut out, &self.ns);
        out.push('\'');
        self.write_attrs_and_content(&mut out, &tag, stream_ns);
        out
    }

    /// The attributes, then `/>` or `>`, the children in `content_ns` and
    /// the end tag `</tag>`.
    fn write_attrs_and_content(&self, out: &mut String, tag: &str, content_ns: &str) {
        self.write_attrs(out);
        self.write_content(out, tag, content_ns);
    }

    /// The attributes, each with a space before it.
    fn write_attrs(&self, out: &mut String) {
        // Prefixes are generated per element rather than hoisted to the
        // root: namespaced attributes are rare in XMPP, and local
        // declarations keep every subtree self-contained when it is cut
        // out and re-sent elsewhere.
        let mut prefixes: Vec<&str> = Vec::new();
        for (k, v) in &self.attrs {
            if write_common_attr_opening(out, k) {
                escape_attr(out, v);
                out.push('\'');
                continue;
            }
            out.push(' ');
            match split_clark(k) {
                Some((uri, local)) => {
                    let i = match prefixes.iter().position(|p| *p == uri) {
                        Some(i) => i,
                        None => {
                            prefixes.push(uri);
                            out.push_str(&format!("xmlns:ns{}='", prefixes.len() - 1));
                            escape_attr(out, uri);
                            out.push_str("' ");
                            prefixes.len() - 1
                        }
                    };
                    out.push_str(&format!("ns{i}:{local}"));
                }
                None => out.push_str(k),
            }
            out.push_str("='");
            escape_attr(out, v);
            out.push('\'');
        }
    }

    /// `/>`, or `>`, the children in `content_ns` and the end tag `</tag>`.
    fn write_content(&self, out: &mut String, tag: &str, content_ns: &str) {
        if self.children.is_empty() {
            out.push_str("/>");
            return;
        }
        out.push('>');
        self.children.write_to(out, content_ns);
        match tag {
            "message" => out.push_str("</message>"),
            tag => {
                out.push_str("</");
                out.push_str(tag);
                out.push('>');
            }
        }
    }

    /// Serializes as a standalone document fragment (no namespace in scope).
    pub fn to_xml(&self) -> String {
        self.to_xml_in("")
    }

    /// Serializes as a child of a stream whose default namespace is
    /// `stream_ns`, so a `jabber:client` stanza gets no `xmlns`.
    pub fn to_xml_in(&self, stream_ns: &str) -> String {
        let mut out = String::new();
        self.write_to(&mut out, stream_ns);
        out
    }
}

impl fmt::Display for Element {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_xml())
    }
}

/// Builds the attribute key for `{ns}local` as described in the module docs.
pub(crate) fn attr_key(ns: &str, local: &str) -> CompactString {
    if ns.is_empty() {
        return CompactString::new(local);
    }
    let mut key;
    if ns == ns::XML {
        key = CompactString::with_capacity(4 + local.len());
        key.push_str("xml:");
    } else {
        key = CompactString::with_capacity(2 + ns.len() + local.len());
        key.push('{');
        key.push_str(ns);
        key.push('}');
    }
    key.push_str(local);
    key
}

/// Writes ` k='` for the attributes nearly every stanza has, each from
/// one constant (a copy of known length, which takes no call to `memcpy`
/// as a copy of the key does); false for any other key.
fn write_common_attr_opening(out: &mut String, k: &str) -> bool {
    match k {
        "to" => out.push_str(" to='"),
        "from" => out.push_str(" from='"),
        "type" => out.push_str(" type='"),
        "id" => out.push_str(" id='"),
        "xml:lang" => out.push_str(" xml:lang='"),
        _ => return false,
    }
    true
}

/// Splits a `{uri}local` key; `None` for plain and `xml:` keys, which are
/// written verbatim.
fn split_clark(k: &str) -> Option<(&str, &str)> {
    let rest = k.strip_prefix('{')?;
    rest.split_once('}')
}

fn escape_text(out: &mut String, s: &str) {
    escape_with(out, s, &TEXT_ESCAPED);
}

/// Appends `s` escaped for an attribute value in either quote style: the
/// one escaping every writer of attributes uses (elements, BOSH bodies,
/// stream headers).
pub fn escape_attr(out: &mut String, s: &str) {
    escape_with(out, s, &ATTR_ESCAPED);
}

/// Whether [`escape_text`] replaces a byte: the markup characters, and a
/// literal CR, which the receiving parser would fold into LF.
const fn text_escaped(b: u8) -> bool {
    matches!(b, b'&' | b'<' | b'>' | b'\r')
}

/// Whether [`escape_attr`] replaces a byte: also both quotes, and the
/// whitespace controls that attribute-value normalization would turn into
/// spaces (references survive it).
const fn attr_escaped(b: u8) -> bool {
    text_escaped(b) || matches!(b, b'\'' | b'"' | b'\t' | b'\n')
}

/// The table of `attr_escaped` (for attributes) or `text_escaped`.
const fn table(attr: bool) -> [bool; 256] {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        t[i] = if attr {
            attr_escaped(b)
        } else {
            text_escaped(b)
        };
        i += 1;
    }
    t
}

static TEXT_ESCAPED: [bool; 256] = table(false);
static ATTR_ESCAPED: [bool; 256] = table(true);

/// The reference written for an escaped byte.
fn reference(b: u8) -> &'static str {
    match b {
        b'&' => "&amp;",
        b'<' => "&lt;",
        b'>' => "&gt;",
        b'\'' => "&apos;",
        b'"' => "&quot;",
        b'\t' => "&#9;",
        b'\n' => "&#10;",
        _ => "&#13;",
    }
}

/// Copies `s` to `out` in runs between the bytes `escaped` marks, each
/// replaced by its reference. Every byte escaped is ASCII, so runs always
/// end on character boundaries; most values have nothing to escape and are
/// copied in one go.
#[inline]
fn escape_with(out: &mut String, s: &str, escaped: &[bool; 256]) {
    let bytes = s.as_bytes();
    let mut run = 0;
    while let Some(n) = next_escaped(&bytes[run..], escaped) {
        let at = run + n;
        out.push_str(&s[run..at]);
        out.push_str(reference(bytes[at]));
        run = at + 1;
    }
    out.push_str(&s[run..]);
}

/// Bytes [`next_escaped`] clears at a time.
const LANES: usize = 16;

/// The first byte of `bytes` that `escaped` marks.
///
/// Every stanza written goes through here once per attribute value (a
/// chat message's `to`, `from`, `id`, `type`), and a table lookup per
/// byte was about half the cost of writing the message. So values of
/// [`LANES`] bytes or more are cleared a chunk at a time with
/// [`may_need_escaping`], which the compiler turns into a few vector
/// compares; only a chunk it does not clear (rare: `#` and control
/// characters besides the escaped ones) is searched byte by byte. The
/// last chunk overlaps the one before instead of leaving a short tail.
fn next_escaped(bytes: &[u8], escaped: &[bool; 256]) -> Option<usize> {
    let in_chunk = |chunk: &[u8]| chunk.iter().position(|&b| escaped[usize::from(b)]);
    let Some(last) = bytes.len().checked_sub(LANES) else {
        return in_chunk(bytes);
    };
    let mut at = 0;
    loop {
        let start = at.min(last);
        let chunk: &[u8; LANES] = bytes[start..start + LANES].try_into().expect("LANES bytes");
        if may_need_escaping(chunk)
            && let Some(n) = in_chunk(chunk)
        {
            // Bytes before `at` in an overlapping last chunk were cleared
            // already: a byte found there would have been found then.
            return Some(start + n);
        }
        if start == last {
            return None;
        }
        at = start + LANES;
    }
}

/// Whether any byte of `chunk` might be one either kind of escaping
/// replaces: a superset test (every control character, `"#&'` and
/// `<>`) written without branches, so that it vectorizes.
fn may_need_escaping(chunk: &[u8; LANES]) -> bool {
    let hits = chunk.iter().fold(0u8, |hits, &b| {
        // With bits 0 and 2 set, `"` `#` `&` `'` (and nothing else) are
        // `'`; with bit 1 set, `<` and `>` are `>`.
        hits | u8::from(b < 0x20) | u8::from((b | 0x05) == b'\'') | u8::from((b | 0x02) == b'>')
    });
    hits != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Element {
        Element::new("message", ns::CLIENT)
            .with_attr("type", "groupchat")
            .with_child(Element::new("body", ns::CLIENT).with_text("hi <there> & all"))
            .with_child(Element::new("occupant-id", "urn:xmpp:occupant-id:0").with_attr("id", "x"))
    }

    #[test]
    fn clones_share_children_and_serialize_identically() {
        let m = sample();
        let fresh = m.to_xml_in(ns::CLIENT);
        let copies: Vec<Element> = (0..3)
            .map(|i| {
                let mut c = m.clone();
                c.set_attr("to", format!("u{i}@example.org/r"));
                c
            })
            .collect();
        for (i, c) in copies.iter().enumerate() {
            let xml = c.to_xml_in(ns::CLIENT);
            let mut expected = m.clone();
            expected.set_attr("to", format!("u{i}@example.org/r"));
            // Serialized from an unshared deep copy, for comparison.
            let unshared = Element {
                children: expected.children.to_vec().into(),
                ..expected
            };
            assert_eq!(xml, unshared.to_xml_in(ns::CLIENT));
        }
        // The cache is per parent namespace: a different one is not reused.
        let mut inner = Element::new("forwarded", "urn:xmpp:forward:0");
        inner.push_child(copies[1].clone());
        let unshared_inner = Element::new("forwarded", "urn:xmpp:forward:0").with_child(Element {
            children: copies[1].children.to_vec().into(),
            ..copies[1].clone()
        });
        assert_eq!(
            inner.to_xml_in(ns::SERVER),
            unshared_inner.to_xml_in(ns::SERVER)
        );
        assert!(
            inner
                .to_xml_in(ns::SERVER)
                .contains("<message xmlns='jabber:client'"),
            "a different parent namespace is serialized anew"
        );
        assert_eq!(m.to_xml_in(ns::CLIENT), fresh);
    }

    #[test]
    fn mutating_a_clone_unshares_and_drops_the_cache() {
        let m = sample();
        let mut c = m.clone();
        let _ = c.to_xml_in(ns::CLIENT); // fills the shared cache
        c.child_mut("body", ns::CLIENT)
            .unwrap()
            .push_text(" edited");
        c.remove_children(|e| e.name == "occupant-id");
        let xml = c.to_xml_in(ns::CLIENT);
        assert!(xml.contains("all edited</body>"), "{xml}");
        assert!(!xml.contains("occupant-id"), "{xml}");
        let orig = m.to_xml_in(ns::CLIENT);
        assert!(
            orig.contains("all</body>") && orig.contains("occupant-id"),
            "{orig}"
        );
        assert_eq!(
            m.child("body", ns::CLIENT).unwrap().text(),
            "hi <there> & all"
        );
    }

    #[test]
    fn removing_nothing_keeps_the_payload_shared() {
        let m = sample();
        let mut c = m.clone();
        c.remove_children(|e| e.name == "no-such-child");
        assert!(
            Arc::ptr_eq(
                m.children.0.as_ref().unwrap(),
                c.children.0.as_ref().unwrap()
            ),
            "still shared"
        );
        let mut d = Element::new("x", "")
            .with_child(Element::new("a", ""))
            .with_text("t")
            .with_child(Element::new("b", ""))
            .with_child(Element::new("a", ""))
            .with_child(Element::new("c", ""));
        let mut asked = 0;
        d.remove_children(|e| {
            asked += 1;
            e.name == "a"
        });
        assert_eq!(asked, 4, "each child element is asked once");
        assert_eq!(d.to_xml(), "<x>t<b/><c/></x>");
    }

    fn msg() -> Element {
        Element::new("message", ns::CLIENT)
            .with_attr("to", "juliet@example.com")
            .with_attr("type", "chat")
            .with_child(Element::new("body", ns::CLIENT).with_text("hi"))
    }

    #[test]
    fn builder_and_accessors() {
        let mut m = msg();
        assert!(m.is("message", ns::CLIENT));
        assert!(!m.is("message", ns::SERVER));
        assert_eq!(m.attr("to"), Some("juliet@example.com"));
        assert_eq!(m.attr("from"), None);
        m.set_attr("type", "normal");
        assert_eq!(m.attr("type"), Some("normal"));
        assert_eq!(m.attrs.len(), 2, "set_attr replaces, not appends");
        assert_eq!(m.remove_attr("type").as_deref(), Some("normal"));
        assert_eq!(m.remove_attr("type"), None);
        assert_eq!(m.child("body", ns::CLIENT).unwrap().text(), "hi");
        assert!(m.child("body", "").is_none());
        assert_eq!(m.first_child().unwrap().name, "body");
        assert!(m.has_children());
        m.child_mut("body", ns::CLIENT).unwrap().push_text(" there");
        assert_eq!(m.child("body", ns::CLIENT).unwrap().text(), "hi there");
        for c in m.children_mut() {
            c.set_attr("xml:lang", "en");
        }
        assert_eq!(m.first_child().unwrap().attr("xml:lang"), Some("en"));
        m.remove_children(|c| c.name == "body");
        assert!(!m.has_children());
    }

    #[test]
    fn text_ignores_grandchildren_and_merges_adjacent() {
        let mut e = Element::new("a", "")
            .with_text("x")
            .with_child(Element::new("b", "").with_text("no"))
            .with_text("y");
        e.push_text("z");
        assert_eq!(e.text(), "xyz");
        assert_eq!(e.children.len(), 3, "y and z share a node");
        e.push_text("");
        assert_eq!(e.children.len(), 3);
    }

    #[test]
    fn serializes_with_default_namespace_elided() {
        let m = msg();
        assert_eq!(
            m.to_xml(),
            "<message xmlns='jabber:client' to='juliet@example.com' type='chat'><body>hi</body></message>"
        );
        assert_eq!(
            m.to_xml_in(ns::CLIENT),
            "<message to='juliet@example.com' type='chat'><body>hi</body></message>"
        );
        assert_eq!(m.to_string(), m.to_xml());
    }

    #[test]
    fn child_in_other_or_empty_namespace_declares_it() {
        let iq = Element::new("iq", ns::CLIENT)
            .with_child(Element::new("ping", ns::PING))
            .with_child(Element::new("x", ""));
        assert_eq!(
            iq.to_xml_in(ns::CLIENT),
            "<iq><ping xmlns='urn:xmpp:ping'/><x xmlns=''/></iq>"
        );
    }

    #[test]
    fn prefixed_element_declares_its_prefix_and_keeps_children_in_the_stream_namespace() {
        let r = Element::new("result", "jabber:server:dialback")
            .with_attr("from", "a.example")
            .with_child(
                Element::new("error", ns::SERVER)
                    .with_child(Element::new("item-not-found", ns::STANZAS)),
            );
        assert_eq!(
            r.to_xml_prefixed("db", ns::SERVER),
            "<db:result xmlns:db='jabber:server:dialback' from='a.example'><error>\
             <item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></db:result>"
        );
        let v = Element::new("verify", "jabber:server:dialback").with_text("k&y");
        assert_eq!(
            v.to_xml_prefixed("db", ns::SERVER),
            "<db:verify xmlns:db='jabber:server:dialback'>k&amp;y</db:verify>"
        );
        let empty = Element::new("verify", "jabber:server:dialback").with_attr("type", "valid");
        assert_eq!(
            empty.to_xml_prefixed("db", ns::SERVER),
            "<db:verify xmlns:db='jabber:server:dialback' type='valid'/>"
        );
        // It reads back as the same element.
        let back =
            crate::xml::parse_stanza(&r.to_xml_prefixed("db", ns::SERVER), ns::SERVER).unwrap();
        assert!(back.is("result", "jabber:server:dialback"));
        assert!(back.child("error", ns::SERVER).is_some());
    }

    #[test]
    fn escapes_text_and_attributes() {
        let e = Element::new("a", "")
            .with_attr("v", "<&'\">\t\n\r")
            .with_text("<&>'\"\r");
        assert_eq!(
            e.to_xml(),
            "<a v='&lt;&amp;&apos;&quot;&gt;&#9;&#10;&#13;'>&lt;&amp;&gt;'\"&#13;</a>"
        );
    }

    #[test]
    fn common_attributes_are_written_like_any_other() {
        // The keys written from constants, then others beside them.
        let e = Element::new("message", "jabber:client")
            .with_attr("to", "a@b/<'r'>")
            .with_attr("from", "c@d")
            .with_attr("type", "chat")
            .with_attr("id", "&1")
            .with_attr("xml:lang", "en")
            .with_attr("{urn:x}to", "x")
            .with_attr("tox", "y")
            .with_attr("t", "z");
        assert_eq!(
            e.to_xml_in("jabber:client"),
            "<message to='a@b/&lt;&apos;r&apos;&gt;' from='c@d' type='chat' id='&amp;1' \
             xml:lang='en' xmlns:ns0='urn:x' ns0:to='x' tox='y' t='z'/>"
        );
    }

    /// The byte-by-byte definition that `escape_with`'s chunked search
    /// must match.
    fn escape_naive(s: &str, escaped: &[bool; 256]) -> String {
        let mut out = String::new();
        for c in s.chars() {
            match u8::try_from(c) {
                Ok(b) if escaped[usize::from(b)] => out.push_str(reference(b)),
                _ => out.push(c),
            }
        }
        out
    }

    #[test]
    fn chunked_escaping_matches_the_byte_by_byte_definition() {
        // Every byte the fast check must not miss, the ones it flags but
        // that need no escaping (`#`, other controls), its neighbours, and
        // multi-byte characters; at every position of values shorter than,
        // as long as, and spanning several chunks (the overlapping last one
        // included), alone and after an earlier escaped byte.
        let specials = [
            "&", "<", ">", "'", "\"", "\t", "\n", "\r", "#", "%", "=", "?", "\u{1}", "\u{1f}", " ",
            "\u{7f}", "é", "☺", "𝄞",
        ];
        for len in 0..=3 * LANES + 1 {
            for at in 0..=len {
                for special in specials {
                    for prefix in ["", "&"] {
                        let s = format!(
                            "{prefix}{}{special}{}",
                            "a".repeat(at),
                            "b".repeat(len - at)
                        );
                        for table in [&TEXT_ESCAPED, &ATTR_ESCAPED] {
                            let mut out = String::new();
                            escape_with(&mut out, &s, table);
                            assert_eq!(out, escape_naive(&s, table), "{s:?}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn escaped_values_read_back_as_written() {
        let tricky = [
            "",
            "plain",
            "]]>",
            "a]]>b]]",
            "<&>\"'",
            "&amp; is not unescaped twice",
            "tab\there, lf\nthere, crlf\r\n, cr\r",
            "non-ASCII: é ☺ 𝄞, and & after it",
            "a value longer than twenty-four bytes, so stored on the heap <&>",
            "&&&&<<<<>>>>''''\"\"\"\"",
        ];
        for t in tricky {
            let el = Element::new("message", ns::CLIENT)
                .with_attr("id", t)
                .with_attr("xml:lang", "en")
                .with_attr("{urn:example:x}flag", t)
                .with_child(Element::new("body", ns::CLIENT).with_text(t))
                .with_child(
                    Element::new("x", "urn:example:x")
                        .with_attr("v", t)
                        .with_text(t),
                );
            for stream_ns in ["", ns::CLIENT] {
                let xml = el.to_xml_in(stream_ns);
                let back = crate::xml::parse_stanza(&xml, ns::CLIENT)
                    .unwrap_or_else(|e| panic!("{xml}: {e:?}"));
                assert_eq!(back.attr("id"), Some(t), "{xml}");
                assert_eq!(back.attr("{urn:example:x}flag"), Some(t), "{xml}");
                assert_eq!(back.attr("xml:lang"), Some("en"), "{xml}");
                assert_eq!(back.child("body", ns::CLIENT).unwrap().text(), t, "{xml}");
                let x = back.child("x", "urn:example:x").unwrap();
                assert_eq!((x.attr("v"), x.text().as_str()), (Some(t), t), "{xml}");
            }
        }
    }

    #[test]
    fn namespaced_attributes_get_generated_prefixes() {
        let e = Element::new("a", "urn:a")
            .with_attr("xml:lang", "en")
            .with_attr("{urn:x}one", "1")
            .with_attr("plain", "p")
            .with_attr("{urn:x}two", "2")
            .with_attr("{urn:y}three", "3");
        assert_eq!(
            e.to_xml(),
            "<a xmlns='urn:a' xml:lang='en' xmlns:ns0='urn:x' ns0:one='1' plain='p' \
             ns0:two='2' xmlns:ns1='urn:y' ns1:three='3'/>"
        );
    }

    #[test]
    fn attr_keys() {
        assert_eq!(attr_key("", "to"), "to");
        assert_eq!(attr_key(ns::XML, "lang"), "xml:lang");
        assert_eq!(attr_key("urn:x", "a"), "{urn:x}a");
        assert_eq!(split_clark("{urn:x}a"), Some(("urn:x", "a")));
        assert_eq!(split_clark("xml:lang"), None);
    }
}
