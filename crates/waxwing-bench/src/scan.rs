//! Byte-level XML stream splitting, shared by the load generator and the
//! floor server.
//!
//! Not a parser: it finds where each top-level element ends by counting
//! tags, honouring quotes, CDATA, comments and processing instructions. That
//! is all a router needs (the floor) and all a load generator needs to read
//! replies cheaply; a full parser on the generator side would make the
//! generator, not the server, the bottleneck sooner.

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
    let first = buf.iter().position(|&b| b == b'<');
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
            let end = buf.iter().position(|&b| b == b'>')? + 1;
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
        let lt = pos + buf[pos..].iter().position(|&b| b == b'<')?;
        let next = *buf.get(lt + 1)?;
        match next {
            b'/' => {
                let gt = lt + buf[lt..].iter().position(|&b| b == b'>')?;
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
    let mut quote = 0u8;
    for (i, &b) in buf[start..].iter().enumerate() {
        if quote != 0 {
            if b == quote {
                quote = 0;
            }
            continue;
        }
        match b {
            b'"' | b'\'' => quote = b,
            b'>' => {
                let abs = start + i;
                return Some((abs + 1, abs > start && buf[abs - 1] == b'/'));
            }
            _ => {}
        }
    }
    None
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
    let mut from = 0;
    loop {
        let at = from + find(&el[from..], name)?;
        from = at + name.len();
        if at == 0 || el[at - 1] != b'<' {
            continue;
        }
        let after = *el.get(at + name.len())?;
        if after == b'/' {
            return Some(&[]);
        }
        if after != b'>' && !after.is_ascii_whitespace() {
            continue;
        }
        let (end, self_closing) = tag_end(el, at - 1)?;
        if self_closing {
            return Some(&[]);
        }
        let close = find(&el[end..], b"</")?;
        return Some(&el[end..end + close]);
    }
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
    if needle.is_empty() || hay.len() < needle.len() {
        return None;
    }
    let first = needle[0];
    let mut i = 0;
    while i + needle.len() <= hay.len() {
        let p = hay[i..=hay.len() - needle.len()]
            .iter()
            .position(|&b| b == first)?;
        let at = i + p;
        if &hay[at..at + needle.len()] == needle {
            return Some(at);
        }
        i = at + 1;
    }
    None
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
    }

    #[test]
    fn attrs_and_text() {
        let m = b"<message xml:lang='en' to=\"u1@d/r\" type='chat'><body>t=5</body></message>";
        assert_eq!(attr(m, b"to"), Some(&b"u1@d/r"[..]));
        assert_eq!(attr(m, b"lang"), None);
        assert_eq!(child_text(m, b"body"), Some(&b"t=5"[..]));
        let f = b"<stream:features><mechanisms xmlns='x'><mechanism>PLAIN</mechanism><mechanism>SCRAM-SHA-1</mechanism></mechanisms></stream:features>";
        assert_eq!(
            all_child_texts(f, b"mechanism"),
            vec![&b"PLAIN"[..], &b"SCRAM-SHA-1"[..]]
        );
    }
}
