//! XEP-0433: Extended Channel Search, answered by the MUC service itself
//! over its own public rooms.
//!
//! Stateless, as the XEP requires: a page cursor is the address of a room,
//! and results are ordered by a total order (occupants descending, then
//! address), so re-submitting the same form with `<after/>` continues
//! where the last page stopped. Sans-IO: the service hands in a snapshot
//! of its listed rooms.

use waxwing_proto::ns;
use waxwing_proto::payload::rsm;
use waxwing_proto::stanza::{Condition, StanzaError};
use waxwing_proto::xml::Element;

use super::form::{Form, Submitted};

/// The search payload (`<search/>`, `<result/>`).
pub const NS: &str = "urn:xmpp:channel-search:0:search";
/// The form's FORM_TYPE.
pub const NS_PARAMS: &str = "urn:xmpp:channel-search:0:search-params";
/// Application error conditions.
pub const NS_ERROR: &str = "urn:xmpp:channel-search:0:error";
/// Sort by occupants, most first.
pub const KEY_NUSERS: &str = "{urn:xmpp:channel-search:0:order}nusers";
/// Sort by address.
pub const KEY_ADDRESS: &str = "{urn:xmpp:channel-search:0:order}address";
/// Our extension field (Clark notation, XEP-0433 §6.1.1): only rooms whose
/// `muc#roomconfig_lang` starts with this language tag.
pub const FIELD_LANGUAGE: &str = "{urn:xmpp:waxwing:channel-search:0}language";

/// Page size without `<max/>`, and the most sent whatever the client asks.
const DEFAULT_PAGE: usize = 50;
const MAX_PAGE: usize = 100;
/// Shorter keywords match nearly everything and are refused (§3.2.3.2).
const MIN_TERM: usize = 2;

/// What the directory knows of one public room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listing {
    pub address: String,
    pub name: String,
    pub description: String,
    pub language: String,
    pub nusers: usize,
    /// Joinable without membership or password.
    pub is_open: bool,
    /// `semi-anonymous` or `non-anonymous` (§6.2).
    pub anonymity: &'static str,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SortKey {
    Nusers,
    Address,
}

/// A parsed search request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    /// Lower-cased keywords, all of which must match; empty with `all`.
    pub terms: Vec<String>,
    pub in_name: bool,
    pub in_description: bool,
    pub in_address: bool,
    pub min_users: usize,
    pub language: Option<String>,
    /// False when `types` excludes XEP-0045 rooms: nothing matches.
    pub muc: bool,
    pub key: SortKey,
    /// The RSM request (`max` already clamped to [`MAX_PAGE`]).
    pub page: rsm::Request,
}

fn app_error(base: StanzaError, condition: &str) -> StanzaError {
    base.with_app(Element::new(condition, NS_ERROR))
}

/// The form template with every supported field at its default (§4).
pub fn form() -> Element {
    let mut f = Form::new("form", NS_PARAMS);
    f.field("q", Some("text-single"), Some("Search for"), &[]);
    f.boolean("all", "Return all entries (ignore search terms)", false);
    f.boolean("sinname", "Search in name", true);
    f.boolean("sindescription", "Search in description", true);
    f.boolean("sinaddress", "Search in address", true);
    f.field(
        "min_users",
        Some("text-single"),
        Some("Minimum number of users"),
        &["0"],
    );
    f.field(
        FIELD_LANGUAGE,
        Some("text-single"),
        Some("Language of discussion"),
        &[],
    );
    f.list(
        "types",
        "list-multi",
        "Service types",
        &["xep-0045"],
        &[("xep-0045", "XEP-0045 Multi User Chats")],
    );
    f.list(
        "key",
        "list-single",
        "Sort results by",
        &[KEY_NUSERS],
        &[
            (KEY_NUSERS, "Number of online users"),
            (KEY_ADDRESS, "Address"),
        ],
    );
    Element::new("search", NS).with_child(f.into_element())
}

/// Parses a submitted `<search/>` (§3.2.3).
pub fn parse(search: &Element) -> Result<Query, StanzaError> {
    let bad = |t: &str| StanzaError::modify(Condition::BadRequest).with_text(t);
    let x = search
        .child("x", ns::DATA_FORMS)
        .ok_or_else(|| app_error(bad("a search form is required"), "no-search-conditions"))?;
    let s = Submitted::parse(x);
    if s.form_type.as_deref().is_some_and(|t| t != NS_PARAMS) {
        return Err(bad(
            "FORM_TYPE must be urn:xmpp:channel-search:0:search-params",
        ));
    }
    let flag = |var: &str, default: bool| {
        s.boolean(var)
            .map(|v| v.unwrap_or(default))
            .map_err(|_| bad("not a boolean"))
    };
    let all = flag("all", false)?;
    let q = s.single("q").map(str::trim).filter(|q| !q.is_empty());
    let terms: Vec<String> = match (all, q) {
        (true, Some(_)) => {
            return Err(StanzaError::modify(Condition::BadRequest)
                .with_text("Cannot both return all results and search by keywords.")
                .with_app(
                    Element::new("conflicting-fields", NS_ERROR)
                        .with_child(Element::new("var", NS_ERROR).with_text("all"))
                        .with_child(Element::new("var", NS_ERROR).with_text("q")),
                ));
        }
        (false, None) => {
            return Err(app_error(
                bad("give search terms in 'q' or set 'all'"),
                "no-search-conditions",
            ));
        }
        (true, None) => Vec::new(),
        (false, Some(q)) => {
            let terms: Vec<String> = q
                .split_whitespace()
                .filter(|t| t.chars().count() >= MIN_TERM)
                .map(str::to_lowercase)
                .collect();
            if terms.is_empty() {
                return Err(app_error(
                    bad("Search terms must have at least two characters."),
                    "invalid-search-terms",
                ));
            }
            terms
        }
    };
    let min_users = match s
        .single("min_users")
        .map(str::trim)
        .filter(|v| !v.is_empty())
    {
        None => 0,
        Some(v) => v.parse().map_err(|_| bad("min_users is not a number"))?,
    };
    let key = match s.single("key") {
        None | Some(KEY_NUSERS) => SortKey::Nusers,
        Some(KEY_ADDRESS) => SortKey::Address,
        Some(_) => {
            return Err(app_error(
                StanzaError::modify(Condition::FeatureNotImplemented),
                "invalid-sort-key",
            ));
        }
    };
    let muc = s
        .multi("types")
        .is_none_or(|t| t.is_empty() || t.iter().any(|t| t == "xep-0045"));
    let page = rsm::Request::from_parent(search, MAX_PAGE)?.unwrap_or_default();
    if page.index.is_some() {
        return Err(StanzaError::cancel(Condition::FeatureNotImplemented)
            .with_text("paging by index is not supported; use after/before"));
    }
    Ok(Query {
        terms,
        in_name: flag("sinname", true)?,
        in_description: flag("sindescription", true)?,
        in_address: flag("sinaddress", true)?,
        min_users,
        language: s
            .single(FIELD_LANGUAGE)
            .map(|l| l.trim().to_lowercase())
            .filter(|l| !l.is_empty()),
        muc,
        key,
        page,
    })
}

fn matches(l: &Listing, q: &Query) -> bool {
    if !q.muc || l.nusers < q.min_users {
        return false;
    }
    if let Some(lang) = &q.language {
        let have = l.language.to_lowercase();
        // `en` matches `en-GB`; `en-GB` does not match `en`.
        if !(have == *lang || have.starts_with(&format!("{lang}-"))) {
            return false;
        }
    }
    let hay: Vec<String> = [
        (q.in_name, &l.name),
        (q.in_description, &l.description),
        (q.in_address, &l.address),
    ]
    .into_iter()
    .filter(|(on, _)| *on)
    .map(|(_, s)| s.to_lowercase())
    .collect();
    q.terms.iter().all(|t| hay.iter().any(|h| h.contains(t)))
}

/// Runs the query over `rooms` and builds the `<result/>` page.
pub fn search(mut rooms: Vec<Listing>, q: &Query) -> Result<Element, StanzaError> {
    rooms.retain(|l| matches(l, q));
    match q.key {
        SortKey::Address => rooms.sort_by(|a, b| a.address.cmp(&b.address)),
        SortKey::Nusers => {
            rooms.sort_by(|a, b| b.nusers.cmp(&a.nusers).then(a.address.cmp(&b.address)))
        }
    }
    let count = rooms.len();
    let window = q.page.window(count, DEFAULT_PAGE, |cursor| {
        rooms.iter().position(|l| l.address == cursor)
    })?;
    let start = window.start;
    let page = &rooms[window];
    let mut result = Element::new("result", NS);
    for l in page {
        let mut item = Element::new("item", NS).with_attr("address", l.address.clone());
        let mut text = |name: &str, v: &str| {
            if !v.is_empty() {
                item.push_child(Element::new(name, NS).with_text(v));
            }
        };
        text("name", &l.name);
        text("description", &l.description);
        text("language", &l.language);
        text("nusers", &l.nusers.to_string());
        text("service-type", "xep-0045");
        text("is-open", if l.is_open { "true" } else { "false" });
        text("anonymity-mode", l.anonymity);
        result.push_child(item);
    }
    let set = rsm::reply(
        page.first()
            .map(|f| (f.address.as_str(), Some(start as u64))),
        page.last().map(|l| l.address.as_str()),
        Some(count as u64),
    );
    Ok(result.with_child(set))
}

#[cfg(test)]
mod tests {
    use super::*;
    use waxwing_proto::payload::rsm::NS as NS_RSM;
    use waxwing_proto::xml::parse_stanza;

    fn listing(address: &str, name: &str, description: &str, lang: &str, n: usize) -> Listing {
        Listing {
            address: address.into(),
            name: name.into(),
            description: description.into(),
            language: lang.into(),
            nusers: n,
            is_open: true,
            anonymity: "semi-anonymous",
        }
    }

    fn rooms() -> Vec<Listing> {
        vec![
            listing("coven@c", "The Coven", "Cauldron talk", "en", 3),
            listing(
                "heath@c",
                "Blasted Heath",
                "Thunder, lightning, rain",
                "en-GB",
                10,
            ),
            listing(
                "castle@c",
                "Castle",
                "Dunsinane hill, cauldron-free",
                "de",
                0,
            ),
        ]
    }

    fn query(fields: &str, rsm: &str) -> Result<Query, StanzaError> {
        let xml = format!(
            "<iq xmlns='jabber:client'><search xmlns='{NS}'>{rsm}\
             <x xmlns='jabber:x:data' type='submit'>\
             <field var='FORM_TYPE'><value>{NS_PARAMS}</value></field>{fields}</x></search></iq>"
        );
        parse(
            parse_stanza(&xml, ns::CLIENT)
                .unwrap()
                .first_child()
                .unwrap(),
        )
    }

    fn addresses(r: &Element) -> Vec<String> {
        r.children()
            .filter(|c| c.name == "item")
            .map(|c| c.attr("address").unwrap().to_string())
            .collect()
    }

    #[test]
    fn keyword_language_and_order() {
        let q = query("<field var='q'><value>CAULDRON</value></field>", "").unwrap();
        assert_eq!(
            addresses(&search(rooms(), &q).unwrap()),
            ["coven@c", "castle@c"]
        );
        let q = query(
            "<field var='q'><value>cauldron</value></field>\
             <field var='sindescription'><value>false</value></field>",
            "",
        )
        .unwrap();
        assert_eq!(
            addresses(&search(rooms(), &q).unwrap()),
            Vec::<String>::new()
        );
        let all = "<field var='all'><value>true</value></field>";
        let q = query(all, "").unwrap();
        assert_eq!(
            addresses(&search(rooms(), &q).unwrap()),
            ["heath@c", "coven@c", "castle@c"]
        );
        let q = query(
            &format!("{all}<field var='key'><value>{KEY_ADDRESS}</value></field>"),
            "",
        )
        .unwrap();
        assert_eq!(
            addresses(&search(rooms(), &q).unwrap()),
            ["castle@c", "coven@c", "heath@c"]
        );
        let q = query(
            &format!("{all}<field var='{FIELD_LANGUAGE}'><value>en</value></field>"),
            "",
        )
        .unwrap();
        assert_eq!(
            addresses(&search(rooms(), &q).unwrap()),
            ["heath@c", "coven@c"]
        );
        let q = query(
            &format!("{all}<field var='min_users'><value>1</value></field>"),
            "",
        )
        .unwrap();
        assert_eq!(
            addresses(&search(rooms(), &q).unwrap()),
            ["heath@c", "coven@c"]
        );
    }

    #[test]
    fn pages_continue_after_the_cursor() {
        let all = "<field var='all'><value>true</value></field>";
        let q = query(all, &format!("<set xmlns='{NS_RSM}'><max>2</max></set>")).unwrap();
        let r = search(rooms(), &q).unwrap();
        assert_eq!(addresses(&r), ["heath@c", "coven@c"]);
        let set = r.child("set", NS_RSM).unwrap();
        assert_eq!(set.child("count", NS_RSM).unwrap().text(), "3");
        let last = set.child("last", NS_RSM).unwrap().text();
        let q = query(
            all,
            &format!("<set xmlns='{NS_RSM}'><max>2</max><after>{last}</after></set>"),
        )
        .unwrap();
        assert_eq!(addresses(&search(rooms(), &q).unwrap()), ["castle@c"]);
    }

    #[test]
    fn bad_requests_name_their_condition() {
        let app = |e: StanzaError| {
            e.to_element()
                .children()
                .find(|c| c.ns == NS_ERROR)
                .map(|c| c.name.clone())
        };
        assert_eq!(
            app(query("", "").unwrap_err()).as_deref(),
            Some("no-search-conditions")
        );
        assert_eq!(
            app(query(
                "<field var='all'><value>1</value></field><field var='q'><value>x</value></field>",
                ""
            )
            .unwrap_err())
            .as_deref(),
            Some("conflicting-fields")
        );
        assert_eq!(
            app(query("<field var='q'><value>a</value></field>", "").unwrap_err()).as_deref(),
            Some("invalid-search-terms")
        );
        assert_eq!(
            app(query(
                "<field var='all'><value>1</value></field><field var='key'><value>x</value></field>",
                ""
            )
            .unwrap_err())
            .as_deref(),
            Some("invalid-sort-key")
        );
    }
}
