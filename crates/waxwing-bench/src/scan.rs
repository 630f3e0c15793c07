//! Byte-level XML stream splitting, shared by the load generator and the
//! floor server.
//!
//! Not a parser: it finds where each top-level element ends by counting
//! tags, honouring quotes, CDATA, comments and processing instructions. That
//! is all a router needs (the floor) and all a load generator needs to read
//! replies cheaply; a full parser on the generator side would make the
//! generator, not the server, the bottleneck sooner. For the same reason
//! every search is `memchr`'s: on two cores the generator and the server
//! share the machine, and a generator that spends more per message than the
//! floor leaves the floor unsaturated.

use memchr::{memchr, memchr3, memmem};

/// One item of an XMPP stream.
#[derive(Debug, PartialEq, Eq)]
pub enum Item {
    /// `<stream:stream …>`: the bytes of the opening tag.
    Open(usize),
    /// A complete depth-1 element: its length in bytes from the start.
    Stanza(usize),
    /// `</stream:stream>`.
    Close,
    /// Whitespace, `<?xml …?>`, stray text: skip this many bytes.
    Skip(usize),
}

/// Looks at the start of `buf` and returns the next item with the number of
/// bytes it spans, or `None` when more bytes are needed.
pub fn next_item(buf: &[u8]) -> Option<(Item, usize)> {
    let first = memchr(b'<', buf);
    match first {
        None => {
            return if buf.is_empty() {
                None
            } else {
                Some((Item::Skip(buf.len()), buf.len()))
            };
        }
        Some(0) => {}
        Some(n) => return Some((Item::Skip(n), n)),
    }
    let rest = &buf[1..];
    match rest.first()? {
        b'?' => {
            let end = find(buf, b"?>")? + 2;
            Some((Item::Skip(end), end))
        }
        b'/' => {
            let end = memchr(b'>', buf)? + 1;
            Some((Item::Close, end))
        }
        _ => {
            let (tag_end, self_closing) = tag_end(buf, 0)?;
            let name = tag_name(buf);
            if !self_closing
                && (name == b"stream:stream" || name.ends_with(b":stream") || name == b"stream")
            {
                return Some((Item::Open(tag_end), tag_end));
            }
            if self_closing {
                return Some((Item::Stanza(tag_end), tag_end));
            }
            let end = element_end(buf, tag_end)?;
            Some((Item::Stanza(end), end))
        }
    }
}

/// Scans from `pos` (just after a start tag) to the end of the element.
fn element_end(buf: &[u8], mut pos: usize) -> Option<usize> {
    let mut depth = 1usize;
    loop {
        let lt = pos + memchr(b'<', &buf[pos..])?;
        let next = *buf.get(lt + 1)?;
        match next {
            b'/' => {
                let gt = lt + memchr(b'>', &buf[lt..])?;
                depth -= 1;
                pos = gt + 1;
                if depth == 0 {
                    return Some(pos);
                }
            }
            b'!' => {
                if buf[lt..].starts_with(b"<![CDATA[") {
                    pos = lt + find(&buf[lt..], b"]]>")? + 3;
                } else if buf[lt..].starts_with(b"<!--") {
                    pos = lt + find(&buf[lt..], b"-->")? + 3;
                } else if buf.len() < lt + 9 {
                    return None;
                } else {
                    pos = lt + 2;
                }
            }
            b'?' => pos = lt + find(&buf[lt..], b"?>")? + 2,
            _ => {
                let (end, self_closing) = tag_end(buf, lt)?;
                if !self_closing {
                    depth += 1;
                }
                pos = end;
            }
        }
    }
}

/// End (exclusive) of the tag starting at `start`, and whether it is `/>`.
fn tag_end(buf: &[u8], start: usize) -> Option<(usize, bool)> {
    let mut pos = start;
    loop {
        let at = pos + memchr3(b'"', b'\'', b'>', &buf[pos..])?;
        match buf[at] {
            b'>' => return Some((at + 1, at > start && buf[at - 1] == b'/')),
            quote => pos = at + 1 + memchr(quote, &buf[at + 1..])? + 1,
        }
    }
}

/// The qualified name of the first tag in `el`.
pub fn tag_name(el: &[u8]) -> &[u8] {
    let body = &el[1.min(el.len())..];
    let end = body
        .iter()
        .position(|&b| b.is_ascii_whitespace() || b == b'/' || b == b'>')
        .unwrap_or(body.len());
    &body[..end]
}

/// Value of attribute `name` on the first tag of `el` (entities not decoded).
pub fn attr<'a>(el: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    let (end, _) = tag_end(el, 0)?;
    let tag = &el[..end];
    let mut i = 1 + tag_name(tag).len();
    loop {
        while i < tag.len() && tag[i].is_ascii_whitespace() {
            i += 1;
        }
        if i >= tag.len() || tag[i] == b'/' || tag[i] == b'>' {
            return None;
        }
        let name_start = i;
        while i < tag.len() && tag[i] != b'=' && !tag[i].is_ascii_whitespace() {
            i += 1;
        }
        let key = &tag[name_start..i];
        while i < tag.len() && (tag[i] == b'=' || tag[i].is_ascii_whitespace()) {
            i += 1;
        }
        let q = *tag.get(i)?;
        if q != b'"' && q != b'\'' {
            return None;
        }
        let vstart = i + 1;
        let vlen = tag[vstart..].iter().position(|&b| b == q)?;
        if key == name {
            return Some(&tag[vstart..vstart + vlen]);
        }
        i = vstart + vlen + 1;
    }
}

/// Text of the first `<name>…</name>` (or `<name attr…>…`) inside `el`.
pub fn child_text<'a>(el: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    // From tag opening to tag opening: a stanza has a handful, and building
    // a substring searcher for each call would cost more than the search.
    for lt in memchr::memchr_iter(b'<', el) {
        let Some(rest) = el[lt + 1..].strip_prefix(name) else {
            continue;
        };
        let after = *rest.first()?;
        if after == b'/' {
            return Some(&[]);
        }
        if after != b'>' && !after.is_ascii_whitespace() {
            continue;
        }
        let (end, self_closing) = tag_end(el, lt)?;
        if self_closing {
            return Some(&[]);
        }
        let close = memchr(b'<', &el[end..])?;
        return Some(&el[end..end + close]);
    }
    None
}

/// Every text of `<name>…</name>` inside `el`.
pub fn all_child_texts<'a>(mut el: &'a [u8], name: &[u8]) -> Vec<&'a [u8]> {
    let mut out = Vec::new();
    while let Some(t) = child_text(el, name) {
        out.push(t);
        let off = t.as_ptr() as usize - el.as_ptr() as usize + t.len();
        el = &el[off..];
    }
    out
}

/// Position of `needle` in `hay`.
pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() {
        return None;
    }
    memmem::find(hay, needle)
}

pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    find(hay, needle).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_a_stream() {
        let s = b"<?xml version='1.0'?><stream:stream to='a' xmlns='jabber:client'>\n<message to='b'><body>x &lt; y</body><x a='>'/></message><presence/></stream:stream>";
        let mut buf = &s[..];
        let mut items = Vec::new();
        while let Some((it, n)) = next_item(buf) {
            items.push((it, buf[..n].to_vec()));
            buf = &buf[n..];
        }
        assert!(matches!(items[0].0, Item::Skip(_)));
        assert!(matches!(items[1].0, Item::Open(_)));
        assert_eq!(
            items[3].1,
            b"<message to='b'><body>x &lt; y</body><x a='>'/></message>"
        );
        assert_eq!(items[4].1, b"<presence/>");
        assert_eq!(items[5].0, Item::Close);
    }

    #[test]
    fn partial_needs_more() {
        assert_eq!(next_item(b"<message to='b'><body>x</bo"), None);
        assert_eq!(next_item(b"<message to='b"), None);
        assert_eq!(next_item(b"<message to='b>"), None);
        assert_eq!(next_item(b"<message to='b'"), None);
    }

    #[test]
    fn quotes_hide_tag_ends_and_the_other_quote() {
        let m = b"<a x='\"/>' y=\"'>\"/><b/>";
        assert_eq!(next_item(m), Some((Item::Stanza(19), 19)));
        assert_eq!(next_item(b"<a x='/'>t</a>"), Some((Item::Stanza(14), 14)));
        assert_eq!(find(b"bench body", b"body"), Some(6));
        assert_eq!(find(b"abc", b""), None);
    }

    #[test]
    fn attrs_and_text() {
        let m = b"<message xml:lang='en' to=\"u1@d/r\" type='chat'><body>t=5</body></message>";
        assert_eq!(attr(m, b"to"), Some(&b"u1@d/r"[..]));
        assert_eq!(attr(m, b"lang"), None);
        assert_eq!(child_text(m, b"body"), Some(&b"t=5"[..]));
        assert_eq!(
            child_text(b"<m><bodyx>a</bodyx><body/></m>", b"body"),
            Some(&b""[..])
        );
        assert_eq!(
            child_text(b"<m><bodyx>a</bodyx><body a='1'>b</body></m>", b"body"),
            Some(&b"b"[..])
        );
        assert_eq!(child_text(b"<m body='x'/>", b"body"), None);
        let f = b"<stream:features><mechanisms xmlns='x'><mechanism>PLAIN</mechanism><mechanism>SCRAM-SHA-1</mechanism></mechanisms></stream:features>";
        assert_eq!(
            all_child_texts(f, b"mechanism"),
            vec![&b"PLAIN"[..], &b"SCRAM-SHA-1"[..]]
        );
    }
}
