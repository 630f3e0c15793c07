//! XEP-0059: Result Set Management — the one `<set/>` parser, the paging
//! arithmetic over an ordered list, and the `<set/>` of a reply. PubSub
//! items, MAM (user and room archives) and MUC channel search all page
//! through it.
//!
//! Every number a peer sends is parsed saturating and `max` is clamped to
//! the caller's page limit, so `<max>18446744073709551615</max>` is simply
//! "as many as you allow", and no window arithmetic can overflow.

use std::ops::Range;

use crate::stanza::{Condition, StanzaError};
use crate::xml::Element;

pub const NS: &str = "http://jabber.org/protocol/rsm";

/// A parsed request `<set/>`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Request {
    /// `<max/>`, at most the limit given to [`Request::parse`].
    pub max: Option<usize>,
    /// `<after/>`: never empty.
    pub after: Option<String>,
    /// `<before/>`; `Some("")` asks for the last page.
    pub before: Option<String>,
    /// `<index/>`.
    pub index: Option<usize>,
}

/// Why a `<set/>` is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RsmError {
    #[error("<{0}/> is not a non-negative integer")]
    NotANumber(&'static str),
    #[error("<after/> needs an id")]
    EmptyAfter,
    /// `<after/>` or `<before/>` names no item of the set (XEP-0059 §2.6).
    #[error("no item has the id of <after/> or <before/>")]
    UnknownCursor,
}

impl From<RsmError> for StanzaError {
    fn from(e: RsmError) -> Self {
        match e {
            RsmError::UnknownCursor => StanzaError::cancel(Condition::ItemNotFound),
            e => StanzaError::modify(Condition::BadRequest).with_text(e.to_string()),
        }
    }
}

impl Request {
    /// The `<set/>` child of `parent`, if any, parsed with [`Request::parse`].
    pub fn from_parent(parent: &Element, limit: usize) -> Result<Option<Request>, RsmError> {
        parent
            .child("set", NS)
            .map(|set| Request::parse(set, limit))
            .transpose()
    }

    /// Parses `<set xmlns='http://jabber.org/protocol/rsm'/>`. `max` is
    /// clamped to `limit`; a repeated element counts once (the first).
    pub fn parse(set: &Element, limit: usize) -> Result<Request, RsmError> {
        let text = |name: &str| set.child(name, NS).map(|e| e.text().trim().to_string());
        let max = text("max")
            .map(|m| number(&m, "max"))
            .transpose()?
            .map(|m| m.min(limit));
        let index = text("index").map(|i| number(&i, "index")).transpose()?;
        let after = text("after");
        if after.as_deref() == Some("") {
            return Err(RsmError::EmptyAfter);
        }
        Ok(Request {
            max,
            after,
            before: text("before"),
            index,
        })
    }

    /// The page of an ordered list of `len` items: `after` the item at
    /// `position(after)`, or ending `before` one (the last page for an empty
    /// `<before/>`), or from `index`, or from the start; at most `max`
    /// items, `default_max` when the request does not say. `position`
    /// finds a cursor id's place in the list.
    pub fn window(
        &self,
        len: usize,
        default_max: usize,
        position: impl Fn(&str) -> Option<usize>,
    ) -> Result<Range<usize>, RsmError> {
        let max = self.max.unwrap_or(default_max);
        let find = |id: &str| {
            position(id)
                .filter(|&p| p < len)
                .ok_or(RsmError::UnknownCursor)
        };
        Ok(if let Some(after) = &self.after {
            let start = find(after)? + 1;
            start..start.saturating_add(max).min(len)
        } else if let Some(before) = &self.before {
            let end = if before.is_empty() {
                len
            } else {
                find(before)?
            };
            end.saturating_sub(max)..end
        } else {
            let start = self.index.unwrap_or(0).min(len);
            start..start.saturating_add(max).min(len)
        })
    }
}

/// A non-negative integer, saturating: a number too large for `usize` is
/// `usize::MAX`, which every caller then clamps.
fn number(s: &str, name: &'static str) -> Result<usize, RsmError> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(RsmError::NotANumber(name));
    }
    Ok(s.parse().unwrap_or(usize::MAX))
}

/// The `<set/>` of a reply: `<first index=…/>` and `<last/>` when the page
/// has items, and `<count/>` of the whole result set when known.
pub fn reply(
    first: Option<(&str, Option<u64>)>,
    last: Option<&str>,
    count: Option<u64>,
) -> Element {
    let mut set = Element::new("set", NS);
    if let (Some((first, index)), Some(last)) = (first, last) {
        let mut f = Element::new("first", NS).with_text(first);
        if let Some(i) = index {
            f.set_attr("index", i.to_string());
        }
        set.push_child(f);
        set.push_child(Element::new("last", NS).with_text(last));
    }
    if let Some(count) = count {
        set.push_child(Element::new("count", NS).with_text(count.to_string()));
    }
    set
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn set(children: &[(&str, &str)]) -> Element {
        let mut set = Element::new("set", NS);
        for (k, v) in children {
            set.push_child(Element::new(*k, NS).with_text(*v));
        }
        set
    }

    const IDS: [&str; 5] = ["5", "4", "3", "2", "1"];

    fn page(children: &[(&str, &str)]) -> Result<Vec<&'static str>, RsmError> {
        let r = Request::parse(&set(children), 100)?;
        let w = r.window(IDS.len(), 100, |id| IDS.iter().position(|i| *i == id))?;
        Ok(IDS[w].to_vec())
    }

    #[test]
    fn pages_forward_backward_and_by_index() {
        assert_eq!(page(&[("max", "2")]).unwrap(), ["5", "4"]);
        assert_eq!(page(&[("max", "2"), ("after", "4")]).unwrap(), ["3", "2"]);
        assert_eq!(
            page(&[("max", "2"), ("after", "1")]).unwrap(),
            [] as [&str; 0]
        );
        assert_eq!(page(&[("max", "2"), ("before", "")]).unwrap(), ["2", "1"]);
        assert_eq!(page(&[("max", "2"), ("before", "3")]).unwrap(), ["5", "4"]);
        assert_eq!(page(&[("max", "2"), ("index", "3")]).unwrap(), ["2", "1"]);
        assert_eq!(page(&[("index", "9")]).unwrap(), [] as [&str; 0]);
        assert_eq!(page(&[("max", "0")]).unwrap(), [] as [&str; 0]);
        assert_eq!(page(&[]).unwrap(), IDS);
    }

    #[test]
    fn refusals() {
        assert_eq!(page(&[("after", "nope")]), Err(RsmError::UnknownCursor));
        assert_eq!(page(&[("before", "nope")]), Err(RsmError::UnknownCursor));
        assert_eq!(page(&[("after", "")]), Err(RsmError::EmptyAfter));
        assert_eq!(page(&[("max", "-1")]), Err(RsmError::NotANumber("max")));
        assert_eq!(page(&[("max", "")]), Err(RsmError::NotANumber("max")));
        assert_eq!(page(&[("index", "x")]), Err(RsmError::NotANumber("index")));
        let e = StanzaError::from(RsmError::UnknownCursor);
        assert_eq!(e.condition, Condition::ItemNotFound);
        let e = StanzaError::from(RsmError::EmptyAfter);
        assert_eq!(e.condition, Condition::BadRequest);
    }

    /// Issue 14: a `max` of u64::MAX with `after` or `index` overflowed the
    /// PubSub window arithmetic (a panic in the handler).
    #[test]
    fn huge_numbers_saturate_and_clamp() {
        let huge = "18446744073709551615";
        let huger = "99999999999999999999999999";
        assert_eq!(
            page(&[("max", huge), ("after", "4")]).unwrap(),
            ["3", "2", "1"]
        );
        assert_eq!(
            page(&[("max", huge), ("index", huge)]).unwrap(),
            [] as [&str; 0]
        );
        assert_eq!(
            page(&[("max", huger), ("index", "1")]).unwrap(),
            ["4", "3", "2", "1"]
        );
        let r = Request::parse(&set(&[("max", huger)]), 7).unwrap();
        assert_eq!(r.max, Some(7));
        // Even an unclamped request cannot overflow the window.
        let r = Request {
            max: Some(usize::MAX),
            index: Some(usize::MAX - 1),
            ..Request::default()
        };
        assert_eq!(
            r.window(usize::MAX, 1, |_| None).unwrap(),
            usize::MAX - 1..usize::MAX
        );
    }

    #[test]
    fn reply_set() {
        let s = reply(Some(("a", Some(3))), Some("b"), Some(10));
        assert_eq!(s.child("first", NS).unwrap().attr("index"), Some("3"));
        assert_eq!(s.child("first", NS).unwrap().text(), "a");
        assert_eq!(s.child("last", NS).unwrap().text(), "b");
        assert_eq!(s.child("count", NS).unwrap().text(), "10");
        let empty = reply(None, None, Some(0));
        assert!(empty.child("first", NS).is_none());
    }

    proptest! {
        #[test]
        fn window_is_always_within_the_list(
            len in 0usize..50,
            max in proptest::option::of(any::<usize>()),
            index in proptest::option::of(any::<usize>()),
            cursor in proptest::option::of(0usize..60),
            after in any::<bool>(),
            default_max in any::<usize>(),
        ) {
            let id = cursor.map(|c| c.to_string());
            let r = Request {
                max,
                index,
                after: id.clone().filter(|_| after),
                before: id.filter(|_| !after),
            };
            if let Ok(w) = r.window(len, default_max, |id| id.parse().ok()) {
                prop_assert!(w.start <= w.end && w.end <= len);
                prop_assert!(w.end - w.start <= max.unwrap_or(default_max));
            }
        }

        #[test]
        fn parse_never_panics(max in "\\PC*", index in "\\PC*", after in "\\PC*") {
            let s = set(&[("max", &max), ("index", &index), ("after", &after)]);
            let _ = Request::parse(&s, 100);
        }
    }
}
