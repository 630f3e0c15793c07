//! The validating XML tokenizer for the inside of a stream.
//!
//! The [`Framer`](super::Framer) hands everything after the stream header
//! to this tokenizer (the prolog and the header itself still go through
//! rxml: they are parsed once per stream, not once per stanza). It turns
//! bytes into start tags with resolved namespaces, end tags and text, and
//! is exactly as strict as rxml 0.14, which it replaced on the hot path:
//! the `framer_diff` fuzz target and `tokenizer_tests` feed the same bytes,
//! split anywhere, to both and require the same events and the same error
//! class. It checks:
//! - UTF-8 validity and the XML 1.0 `Char` production (C0 controls except
//!   tab, LF and CR; U+FFFE and U+FFFF), in text, CDATA and attribute
//!   values; character references must name a `Char` too;
//! - the `Name`/`NCName` productions (an ASCII table, `rxml_validation` for
//!   anything else), at most one colon, and matching end tags;
//! - end-of-line handling (CR LF and lone CR become LF in text) and
//!   attribute-value normalisation (tab, LF and CR LF become a space);
//! - the five predefined entities and decimal/hex character references of
//!   at most 8 digits; any other reference is restricted XML (RFC 6120
//!   §11.1), like comments, processing instructions and `<!DOCTYPE`;
//! - `]]>` outside CDATA, `<` inside attribute values, duplicate attributes
//!   after namespace resolution, undeclared prefixes and the rules for the
//!   `xml` and `xmlns` prefixes;
//! - a name, and a decoded attribute value, longer than the token limit is
//!   a policy violation (longer text is only split).
//!
//! It mirrors rxml where rxml deviates from XML 1.0, so that it is neither
//! laxer nor stricter (see the module's tests for each):
//! - a CR inside an attribute value not followed by LF, CR, tab, a
//!   reference, `<` or the closing quote is refused, and before the quote
//!   or a reference it is dropped (XML 1.0 §3.3.3 would make it a space);
//! - a `]` run broken by a CR inside CDATA keeps that CR as it is;
//! - a repeated `xmlns` default declaration on one element is not a
//!   duplicate attribute (the last one wins).
//!
//! Sans-IO and incremental: [`Tokenizer::next`] takes whatever bytes have
//! arrived and keeps a partial token (a name, a value, a reference, a
//! split UTF-8 sequence) in small scratch buffers, so where the input is
//! split changes nothing. Text is handed out in pieces (at `<`, before a
//! reference, at the end of the input), where rxml hands it out, so that
//! the framer's view of whitespace between stanzas is the same too; inside
//! a stanza, where the framer joins the pieces, text runs on through
//! references (checked at each as if handed out there).

use compact_str::CompactString;

use crate::ns;
use crate::stanza::{StreamCondition, StreamError};
use crate::xml::element::{ChildNames, Element, attr_key};
use crate::xml::framer::{Limits, check_limits};
use crate::xml::prefixes::PrefixDecls;

/// The namespace the `xml` prefix is bound to by definition.
const XML_NS: &str = ns::XML;
/// The same, as the namespace of an element.
static XML_NS_NAME: CompactString = CompactString::const_new(XML_NS);
/// No namespace.
static NO_NS: CompactString = CompactString::const_new("");

/// Longest entity name or character reference body, as in rxml.
const MAX_REFERENCE: usize = 8;

/// Attributes the c2s stream stamps on a stanza after it is parsed (`from`,
/// and `xml:lang` when the stream declared one): a stanza's attribute list
/// is made with room for them, so stamping does not grow (reallocate) it,
/// which cost about 240 instructions per chat message.
const STAMPED_ATTRIBUTES: usize = 2;

/// What the tokenizer found.
#[derive(Debug)]
pub(super) enum Token {
    /// A start tag; `empty` for `<x/>`, whose end follows implicitly.
    Start { element: Element, empty: bool },
    /// A start tag inside content the framer keeps as bytes (see
    /// `validate_only`), checked as thoroughly as any other: only its
    /// name, namespace and number of attributes come out, which is all
    /// [`Tokenizer::next`] records or limits (see `Kept`).
    Checked {
        name: CompactString,
        ns: CompactString,
        attrs: usize,
        empty: bool,
    },
    /// An end tag (or the end of an empty element's start tag).
    End,
    /// A piece of character data and the absolute input offsets it covers.
    Text { text: String, start: u64, end: u64 },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RefKind {
    Entity,
    Decimal,
    Hex,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum St {
    /// Character data.
    Text,
    /// After a CR in text (or in CDATA).
    Cr { cdata: bool },
    /// After one or two `]` in text (or in CDATA).
    Bracket { cdata: bool, n: u8 },
    /// Inside `&…;`; returns to text, or to the value quoted by `quote`.
    Ref { quote: Option<u8>, kind: RefKind },
    /// After `<`.
    Lt,
    /// After `<?` and `n` bytes of `xml`.
    Pi(u8),
    /// After `<!`.
    Bang,
    /// After `<!-`.
    CommentStart,
    /// After `<![` and `n` bytes of `CDATA[`.
    CdataStart(u8),
    /// Inside a CDATA section.
    Cdata,
    /// Reading a start tag's name.
    StartName,
    /// Reading an end tag's name.
    EndName,
    /// After an end tag's name.
    EndAfter,
    /// Inside a start tag, where an attribute or the end may come; a
    /// space is `required` before an attribute (right after a value).
    TagBlank { required: bool },
    /// Reading an attribute name.
    AttrName,
    /// After an attribute name, before (`seen` false) or after the `=`.
    AttrEq { seen: bool },
    /// Inside an attribute value; `cr` after a CR.
    AttrValue { quote: u8, cr: bool },
    /// After the `/` of `<x/`.
    EmptyClose,
}

/// An attribute [`Tokenizer::fast_tag`] found: where its qualified name
/// and its value are in the tag.
#[derive(Clone, Debug)]
struct FastAttr {
    name: std::ops::Range<usize>,
    colon: Option<usize>,
    value: std::ops::Range<usize>,
}

/// What [`Tokenizer::fast_tag`] read.
enum FastTag {
    /// A start tag, with its attributes if they are resolved already
    /// (see [`Tokenizer::plain_attrs`]).
    Start {
        empty: bool,
        resolved: Option<Resolved>,
    },
    End,
}

/// What becomes of a start tag's attributes once resolved: the element's
/// list, or in `validate_only` mode only their count.
#[derive(Debug)]
enum Resolved {
    Built(Vec<(CompactString, CompactString)>),
    Checked(usize),
}

/// Content the framer keeps as bytes, read in `validate_only` mode: its
/// tokens are not handed out (the framer would only note them), so the
/// limits on its start tags are enforced here and its direct children's
/// names recorded; only the end tag that closes it comes out.
#[derive(Debug, Default)]
struct Kept {
    /// The framer's limits.
    limits: Limits,
    /// Elements open around the content, its parent included.
    outer: usize,
    /// Elements open inside the content.
    open: u32,
    /// The name and namespace of each direct child element.
    names: Vec<(CompactString, CompactString)>,
}

/// One namespace scope: what an element declared.
#[derive(Debug)]
struct Scope {
    /// `xmlns='…'` on this element (interned: elements in it share it).
    default: Option<CompactString>,
    /// Length of `decls` before this element's prefix declarations.
    decls_from: usize,
    /// Length of `names` before this element's qualified name.
    name_from: usize,
}

/// A prefixed or unprefixed attribute waiting for its namespace.
#[derive(Debug)]
struct RawAttr {
    qname: CompactString,
    colon: Option<usize>,
    value: CompactString,
}

/// See the module docs.
#[derive(Debug)]
pub(super) struct Tokenizer {
    state: St,
    /// Longest name or attribute value (decoded), and the size at which
    /// text is handed out in pieces.
    token_limit: usize,
    /// Absolute offset of the next input byte.
    at: u64,
    /// Where the next text piece starts (rxml's token metrics).
    text_from: u64,
    /// Text (or CDATA content) read but not yet handed out.
    text: Vec<u8>,
    /// How much of `text` is known to be valid (see `text_delimiter`).
    text_checked: usize,
    /// The name being read.
    name: Vec<u8>,
    /// The attribute value being read, decoded.
    value: Vec<u8>,
    /// The reference being read (without `&`, `#`, `x`).
    reference: Vec<u8>,
    /// The start tag being read.
    tag_qname: String,
    tag_colon: Option<usize>,
    tag_default: Option<CompactString>,
    /// Where the start tag's own prefix declarations begin in `decls`.
    tag_decls_from: usize,
    tag_attrs: Vec<RawAttr>,
    /// Scratch of [`Tokenizer::fast_tag`].
    fast_attrs: Vec<FastAttr>,
    attr_qname: CompactString,
    attr_colon: Option<usize>,
    /// The name or value being read is where the grammar allows none.
    /// rxml's lexer reads such a token to its end before its parser
    /// refuses it, so an error inside it (an undeclared entity, a name
    /// over the limit) is what is reported; this does the same.
    doomed: bool,
    /// Prefix declarations in scope, the start tag's own included
    /// (namespaces interned).
    decls: PrefixDecls,
    /// Qualified names of the open elements, concatenated.
    names: String,
    /// One per open element, the stream's root first.
    scopes: Vec<Scope>,
    /// Start tags so far whose element or attribute names use a prefix
    /// other than `xml` (wrapping): the framer keeps content as bytes only
    /// where this did not change (see `Framer`).
    prefixed: u32,
    /// The framer keeps the bytes of what is read now (a message's
    /// content), so nothing is built from them: every byte and every
    /// rule is checked as in full mode, but text is made empty,
    /// attribute values are not copied, start tags are made
    /// [`Token::Checked`], and [`Tokenizer::next`] hands out none of them
    /// (see `Kept`).
    validate_only: bool,
    /// What the framer needs of the content read in `validate_only` mode.
    kept: Kept,
    /// Scratch for the attribute keys of a start tag read in
    /// `validate_only` mode, which are checked for duplicates and then
    /// dropped: kept to keep its capacity.
    checked_keys: Vec<(CompactString, CompactString)>,
}

type Res<T> = Result<T, StreamError>;

fn nwf(text: &'static str) -> StreamError {
    StreamError::new(StreamCondition::NotWellFormed).with_text(text)
}

fn restricted(text: &'static str) -> StreamError {
    StreamError::new(StreamCondition::RestrictedXml).with_text(text)
}

fn bad_prefix(text: &'static str) -> StreamError {
    StreamError::new(StreamCondition::BadNamespacePrefix).with_text(text)
}

fn too_long() -> StreamError {
    StreamError::new(StreamCondition::PolicyViolation).with_text("long name or reference")
}

/// A 256-entry table of a byte predicate, for the fast loops.
macro_rules! table {
    ($f:expr) => {{
        let mut t = [false; 256];
        let mut i = 0;
        while i < 256 {
            t[i] = $f(i as u8);
            i += 1;
        }
        t
    }};
}

const fn name_byte(b: u8) -> bool {
    matches!(b, b':' | b'-' | b'.' | b'_' | b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9') || b >= 0x80
}

const fn text_byte(b: u8) -> bool {
    !(b == b'\r' || b == b'&' || b == b'<' || b == b']' || b < 0x09 || (b > 0x0a && b < 0x20))
}

const fn cdata_byte(b: u8) -> bool {
    !(b == b'\r' || b == b']' || b < 0x09 || (b > 0x0a && b < 0x20))
}

const fn value_byte(b: u8) -> bool {
    !(b < 0x20 || b == b'&' || b == b'<' || b == b'\'' || b == b'"')
}

const fn ascii_value_byte(b: u8) -> bool {
    b < 0x80 && value_byte(b)
}

const fn ascii_text_byte(b: u8) -> bool {
    b < 0x80 && text_byte(b)
}

/// Bytes that may be part of a name (rxml's `maybe_name`): ASCII name
/// characters and any non-ASCII byte, which the name check judges.
static NAME_BYTE: [bool; 256] = table!(name_byte);

/// Bytes that continue a run of character data.
static TEXT_BYTE: [bool; 256] = table!(text_byte);

/// Bytes that continue a run of CDATA content.
static CDATA_BYTE: [bool; 256] = table!(cdata_byte);

/// How many bytes at the start of `input`, at most `room`, are plain bytes
/// of `table` (the bytes a state copies as they are); the fast path of
/// every state that collects a run (text, CDATA, names, attribute values).
fn plain_run(input: &[u8], room: usize, table: &[bool; 256]) -> usize {
    let input = &input[..input.len().min(room)];
    // Eight bytes a step with one branch (a body is mostly plain bytes),
    // then byte by byte from the block that holds the end.
    let (blocks, _) = input.as_chunks::<8>();
    let mut from = 0;
    for b in blocks {
        if !b.iter().fold(true, |ok, &c| ok & table[c as usize]) {
            break;
        }
        from += 8;
    }
    from + input[from..]
        .iter()
        .position(|&c| !table[c as usize])
        .unwrap_or(input.len() - from)
}

/// Bytes that continue a run of an attribute value (either quote ends it
/// too; the caller checks which).
static VALUE_BYTE: [bool; 256] = table!(value_byte);

/// The ASCII bytes of `VALUE_BYTE`: a run of them needs no UTF-8 or
/// `Char` check after it (see [`Tokenizer::fast_tag`]).
static ASCII_VALUE_BYTE: [bool; 256] = table!(ascii_value_byte);

/// The ASCII bytes of `TEXT_BYTE` (see `ASCII_VALUE_BYTE`).
static ASCII_TEXT_BYTE: [bool; 256] = table!(ascii_text_byte);

fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

fn is_nonchar_byte(b: u8) -> bool {
    b <= 0x08 || b == 0x0b || b == 0x0c || (0x0e..=0x1f).contains(&b)
}

/// The rest of the XML 1.0 `Char` check for UTF-8 text, values and names
/// whose bytes were read through the tables above, which already refuse
/// every C0 control but tab, LF and CR: U+FFFE and U+FFFF (`EF BF BE`,
/// `EF BF BF`).
fn check_chars(s: &[u8]) -> Res<()> {
    debug_assert!(
        !s.iter()
            .any(|&b| b < 0x20 && !matches!(b, b'\t' | b'\n' | b'\r')),
        "controls are refused as they are read"
    );
    if s.is_ascii() {
        return Ok(());
    }
    let mut rest = s;
    while let Some(p) = rest.iter().position(|&b| b == 0xef) {
        if let [0xbf, 0xbe | 0xbf, ..] = rest[p + 1..] {
            return Err(nwf("invalid character U+FFFE or U+FFFF"));
        }
        rest = &rest[p + 1..];
    }
    Ok(())
}

/// Checks an XML name with at most one colon whose sides are NCNames;
/// returns the colon's position.
fn check_qname(bytes: &[u8]) -> Res<Option<usize>> {
    if let Some(r) = ascii_qname(bytes) {
        return r;
    }
    let s = std::str::from_utf8(bytes).map_err(|_| nwf("invalid UTF-8 in a name"))?;
    let mut parts = s.splitn(3, ':');
    let first = parts.next().unwrap_or("");
    let second = parts.next();
    if parts.next().is_some() {
        return Err(nwf("more than one colon in a name"));
    }
    check_ncname(first)?;
    if let Some(local) = second {
        check_ncname(local)?;
        return Ok(Some(first.len()));
    }
    Ok(None)
}

/// `check_qname` for an all-ASCII name in one pass; `None` for a name
/// with other bytes.
fn ascii_qname(bytes: &[u8]) -> Option<Res<Option<usize>>> {
    let mut colon = None;
    let mut part_start = true;
    for (i, &c) in bytes.iter().enumerate() {
        let ok = match c {
            b'a'..=b'z' | b'A'..=b'Z' | b'_' => true,
            b'0'..=b'9' | b'-' | b'.' => !part_start,
            b':' if colon.is_none() && !part_start => {
                colon = Some(i);
                part_start = true;
                continue;
            }
            0x80.. => return None,
            _ => false,
        };
        if !ok {
            return Some(Err(nwf("invalid name")));
        }
        part_start = false;
    }
    if part_start {
        return Some(Err(nwf("empty name or name part")));
    }
    Some(Ok(colon))
}

/// The all-ASCII qualified name at the start of `input`, up to the first
/// byte that cannot be part of a name, checked in the same pass: its
/// length and its colon. `None` for a name `ascii_qname` would not accept
/// (or would leave to the full check), one longer than `limit`, or one
/// that runs to the end of `input`: the state machine judges those.
fn ascii_qname_at(input: &[u8], limit: usize) -> Option<(usize, Option<usize>)> {
    let mut colon = None;
    let mut part_start = true;
    for (i, &c) in input.iter().enumerate() {
        // One table load a byte (see `QNAME_CLASS`) instead of a chain of
        // range tests, names being read at every start tag; and a letter,
        // the commonest byte by far, tested first on its own (a `match`
        // alone becomes an indirect jump per byte).
        let class = QNAME_CLASS[c as usize];
        if class == QNameClass::Start {
            part_start = false;
            continue;
        }
        match class {
            QNameClass::Inner if !part_start => {}
            QNameClass::Colon if colon.is_none() && !part_start => {
                colon = Some(i);
                part_start = true;
            }
            QNameClass::End => return (!part_start && i <= limit).then_some((i, colon)),
            // (A letter was taken above.) A name byte `ascii_qname` would
            // refuse here or leave to the full check (non-ASCII).
            QNameClass::Start | QNameClass::Inner | QNameClass::Colon | QNameClass::Other => {
                return None;
            }
        }
    }
    None
}

/// What a byte is to [`ascii_qname_at`].
#[derive(Clone, Copy, PartialEq, Eq)]
enum QNameClass {
    /// May start a name part (and continue one): ASCII letters and `_`.
    Start,
    /// May only continue a name part: ASCII digits, `-` and `.`.
    Inner,
    /// `:`.
    Colon,
    /// Any other byte that may be part of a name (see `NAME_BYTE`): the
    /// non-ASCII ones.
    Other,
    /// Cannot be part of a name: the name ends before it.
    End,
}

const fn qname_class(b: u8) -> QNameClass {
    match b {
        b'a'..=b'z' | b'A'..=b'Z' | b'_' => QNameClass::Start,
        b'0'..=b'9' | b'-' | b'.' => QNameClass::Inner,
        b':' => QNameClass::Colon,
        _ if name_byte(b) => QNameClass::Other,
        _ => QNameClass::End,
    }
}

static QNAME_CLASS: [QNameClass; 256] = {
    let mut t = [QNameClass::End; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = qname_class(i as u8);
        i += 1;
    }
    t
};

fn check_ncname(s: &str) -> Res<()> {
    let b = s.as_bytes();
    let Some(&first) = b.first() else {
        return Err(nwf("empty name or name part"));
    };
    if b.is_ascii() {
        let start_ok = first.is_ascii_alphabetic() || first == b'_';
        let rest_ok = b[1..]
            .iter()
            .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-' | b'.'));
        if start_ok && rest_ok {
            return Ok(());
        }
        return Err(nwf("invalid name"));
    }
    rxml_validation::validate_ncname(s).map_err(|_| nwf("invalid name"))
}

impl Tokenizer {
    /// A tokenizer positioned right after the stream header `header` (the
    /// raw `<stream:stream …>` start tag, which rxml has already checked),
    /// at absolute input offset `at`.
    pub(super) fn new(token_limit: usize, header: &[u8], at: u64) -> Self {
        let mut t = Tokenizer {
            state: St::Lt,
            token_limit,
            at: 0,
            text_from: 0,
            text: Vec::new(),
            text_checked: 0,
            name: Vec::new(),
            value: Vec::new(),
            reference: Vec::new(),
            tag_qname: String::new(),
            tag_colon: None,
            tag_default: None,
            tag_decls_from: 0,
            tag_attrs: Vec::new(),
            fast_attrs: Vec::new(),
            attr_qname: CompactString::default(),
            attr_colon: None,
            doomed: false,
            decls: PrefixDecls::default(),
            names: String::new(),
            scopes: Vec::new(),
            prefixed: 0,
            validate_only: false,
            kept: Kept::default(),
            checked_keys: Vec::new(),
        };
        // Reads the header with the same code as any start tag, for its
        // namespace declarations; it skips the `<`.
        let tag = header.strip_prefix(b"<").unwrap_or(header);
        let mut input = tag;
        let opened = t.next(&mut input);
        debug_assert!(
            matches!(opened, Ok(Some(Token::Start { empty: false, .. }))) && input.is_empty(),
            "the stored header reopens the stream: {opened:?}"
        );
        t.state = St::Text;
        t.at = at;
        t.text_from = at;
        t
    }

    /// Releases scratch capacity while idle.
    pub(super) fn shrink(&mut self) {
        for v in [&mut self.text, &mut self.name, &mut self.value] {
            if v.is_empty() {
                *v = Vec::new();
            }
        }
        self.tag_attrs.shrink_to_fit();
        self.decls.shrink();
        self.fast_attrs = Vec::new();
        self.checked_keys = Vec::new();
        self.kept.names = Vec::new();
    }

    /// The next token, consuming from `input`; `Ok(None)` when all of it is
    /// consumed and more is needed. After an error the tokenizer must not
    /// be used again (the framer is poisoned).
    pub(super) fn next(&mut self, input: &mut &[u8]) -> Res<Option<Token>> {
        if !self.validate_only {
            return self.next_token(input);
        }
        // Kept content: on to its end tag (see `Kept`). After the token
        // that passes the framer's size limit there is no input left (it
        // shows the tokenizer one byte past it), so the framer still
        // checks the size after that token, before any other.
        loop {
            let Some(token) = self.next_token(input)? else {
                return Ok(None);
            };
            let kept = &mut self.kept;
            match token {
                Token::Checked {
                    name,
                    ns,
                    attrs,
                    empty,
                } => {
                    let depth = kept.outer + kept.open as usize + 1;
                    check_limits(&kept.limits, attrs, depth)?;
                    if kept.open == 0 {
                        kept.names.push((name, ns));
                    }
                    if !empty {
                        kept.open += 1;
                    }
                }
                Token::Text { .. } => {}
                Token::End if kept.open > 0 => kept.open -= 1,
                Token::End | Token::Start { .. } => return Ok(Some(token)),
            }
        }
    }

    /// Content from here on is kept as bytes by the framer, inside `outer`
    /// open elements, under `limits`: it is only validated (see
    /// `validate_only` and `Kept`).
    pub(super) fn keep_content(&mut self, limits: Limits, outer: usize) {
        self.validate_only = true;
        self.kept.limits = limits;
        self.kept.outer = outer;
        self.kept.open = 0;
    }

    /// The limits changed while content is being kept.
    pub(super) fn set_kept_limits(&mut self, limits: Limits) {
        self.kept.limits = limits;
    }

    /// The kept content ended (its parent's end tag came out): back to
    /// handing out every token. Returns the direct children's names.
    pub(super) fn end_kept(&mut self) -> ChildNames {
        self.validate_only = false;
        ChildNames::take_from(&mut self.kept.names)
    }

    /// Elements open inside kept content.
    pub(super) fn kept_open(&self) -> u32 {
        match self.validate_only {
            true => self.kept.open,
            false => 0,
        }
    }

    /// [`Tokenizer::next`] one token at a time.
    fn next_token(&mut self, input: &mut &[u8]) -> Res<Option<Token>> {
        loop {
            let Some(&b) = input.first() else {
                return self.at_end();
            };
            match self.state {
                St::Text => {
                    if self.text.len() > self.token_limit {
                        if let Some(t) = self.flush_partial(false)? {
                            return Ok(Some(t));
                        }
                        continue;
                    }
                    if b == b'<' && self.text.is_empty() {
                        // A tag right after a tag: no text between them.
                        self.text_from = self.at;
                        self.advance(input, 1);
                        self.state = St::Lt;
                        continue;
                    }
                    // The fast path: a run of plain character data.
                    let room = self.token_limit.saturating_sub(self.text.len());
                    let run = plain_run(input, room, &TEXT_BYTE);
                    if self.text.is_empty()
                        && run > 0
                        && input.get(run) == Some(&b'<')
                        && let Some(t) = self.whole_text(input, run)
                    {
                        return Ok(Some(t));
                    }
                    if run > 0 {
                        self.text.extend_from_slice(&input[..run]);
                        self.advance(input, run);
                        continue;
                    }
                    if room == 0 && TEXT_BYTE[b as usize] {
                        // rxml hands out text at its token limit.
                        if let Some(t) = self.flush_partial(false)? {
                            return Ok(Some(t));
                        }
                        continue;
                    }
                    self.advance(input, 1);
                    if let Some(t) = self.text_delimiter(b)? {
                        return Ok(Some(t));
                    }
                }
                St::Cr { cdata } => {
                    self.advance(input, 1);
                    match b {
                        b'\n' => {
                            self.text.push(b'\n');
                            self.state = if cdata { St::Cdata } else { St::Text };
                        }
                        b'\r' => self.text.push(b'\n'),
                        _ => {
                            self.text.push(b'\n');
                            if cdata {
                                self.state = St::Cdata;
                                self.cdata_byte(b)?;
                            } else {
                                self.state = St::Text;
                                if let Some(t) = self.resume_text(b)? {
                                    return Ok(Some(t));
                                }
                            }
                        }
                    }
                }
                St::Bracket { cdata, n } => {
                    self.advance(input, 1);
                    if let Some(t) = self.bracket(cdata, n, b)? {
                        return Ok(Some(t));
                    }
                }
                St::Ref { quote, kind } => {
                    if let Some(t) = self.reference_step(input, quote, kind)? {
                        return Ok(Some(t));
                    }
                }
                St::Lt => {
                    if let Some((n, tag)) = self.fast_tag(input) {
                        if let FastTag::Start {
                            empty,
                            resolved: Some(Resolved::Checked(attrs)),
                        } = tag
                            && let Some(rest) = self.checked_leaf(&input[n..], empty, attrs)
                        {
                            self.advance(input, n + rest);
                            self.text_from = self.at;
                            self.state = St::Text;
                            if input.first() == Some(&b'<') {
                                // The next tag right after, as `St::Text`
                                // takes it, without a turn of the loop.
                                self.advance(input, 1);
                                self.state = St::Lt;
                            }
                            continue;
                        }
                        self.advance(input, n);
                        return match tag {
                            FastTag::Start { empty, resolved } => {
                                self.finish_tag(empty, resolved).map(Some)
                            }
                            FastTag::End => Ok(Some(self.end_tag())),
                        };
                    }
                    self.advance(input, 1);
                    match b {
                        b'?' => self.state = St::Pi(0),
                        b'!' => self.state = St::Bang,
                        b'/' => {
                            self.name.clear();
                            self.state = St::EndName;
                        }
                        _ if NAME_BYTE[b as usize] => {
                            self.name.clear();
                            self.name.push(b);
                            self.state = St::StartName;
                        }
                        _ => return Err(nwf("unexpected byte after '<'")),
                    }
                }
                St::Pi(n) => {
                    self.advance(input, 1);
                    if b != b"xml"[n as usize] || n == 2 {
                        return Err(restricted("processing instructions"));
                    }
                    self.state = St::Pi(n + 1);
                }
                St::Bang => {
                    self.advance(input, 1);
                    match b {
                        b'-' => self.state = St::CommentStart,
                        b'[' => self.state = St::CdataStart(0),
                        // `<!DOCTYPE`, `<!ENTITY` …: the DTD constructs
                        // RFC 6120 §11.1 calls restricted.
                        _ if b.is_ascii_alphabetic() => {
                            return Err(restricted("markup declarations"));
                        }
                        _ => return Err(nwf("malformed cdata or comment section start")),
                    }
                }
                St::CommentStart => {
                    self.advance(input, 1);
                    if b == b'-' {
                        return Err(restricted("comments"));
                    }
                    return Err(nwf("malformed comment start"));
                }
                St::CdataStart(n) => {
                    self.advance(input, 1);
                    if b != b"CDATA["[n as usize] {
                        return Err(nwf("malformed cdata section start"));
                    }
                    if n == 5 {
                        // rxml's text metrics restart at the `<`.
                        self.text_from = self.at - 9;
                        self.state = St::Cdata;
                    } else {
                        self.state = St::CdataStart(n + 1);
                    }
                }
                St::Cdata => {
                    if self.text.len() > self.token_limit {
                        if let Some(t) = self.flush_partial(false)? {
                            return Ok(Some(t));
                        }
                        continue;
                    }
                    let room = self.token_limit.saturating_sub(self.text.len());
                    let run = plain_run(input, room, &CDATA_BYTE);
                    if run > 0 {
                        self.text.extend_from_slice(&input[..run]);
                        self.advance(input, run);
                        continue;
                    }
                    if room == 0 && CDATA_BYTE[b as usize] {
                        if let Some(t) = self.flush_partial(false)? {
                            return Ok(Some(t));
                        }
                        continue;
                    }
                    self.advance(input, 1);
                    match b {
                        b']' => self.state = St::Bracket { cdata: true, n: 1 },
                        b'\r' => self.state = St::Cr { cdata: true },
                        _ => return Err(nwf("invalid character in a CDATA section")),
                    }
                }
                St::StartName | St::EndName | St::AttrName => {
                    let room = self.token_limit.saturating_sub(self.name.len());
                    let run = plain_run(input, room, &NAME_BYTE);
                    if run > 0 {
                        self.name.extend_from_slice(&input[..run]);
                        self.advance(input, run);
                        continue;
                    }
                    if room == 0 && NAME_BYTE[b as usize] {
                        return Err(too_long());
                    }
                    self.advance(input, 1);
                    if let Some(t) = self.name_end(b)? {
                        return Ok(Some(t));
                    }
                }
                St::EndAfter => {
                    self.advance(input, 1);
                    match b {
                        _ if is_space(b) => {}
                        b'>' => return Ok(Some(self.end_tag())),
                        _ => self.doom(b)?,
                    }
                }
                St::TagBlank { required } => {
                    self.advance(input, 1);
                    match b {
                        _ if is_space(b) => self.state = St::TagBlank { required: false },
                        b'>' => return self.finish_tag(false, None).map(Some),
                        b'/' => self.state = St::EmptyClose,
                        _ if NAME_BYTE[b as usize] => {
                            if required {
                                return Err(nwf("space required before attribute names"));
                            }
                            self.name.clear();
                            self.name.push(b);
                            self.state = St::AttrName;
                        }
                        _ => self.doom(b)?,
                    }
                }
                St::AttrEq { seen } => {
                    self.advance(input, 1);
                    match b {
                        _ if is_space(b) => {}
                        b'=' if !seen => self.state = St::AttrEq { seen: true },
                        b'\'' | b'"' if seen => {
                            self.value.clear();
                            self.state = St::AttrValue {
                                quote: b,
                                cr: false,
                            };
                        }
                        _ => self.doom(b)?,
                    }
                }
                St::AttrValue { quote, cr } => {
                    if !cr {
                        // rxml checks the limit whenever it reads on in a
                        // value (a reference may have passed it).
                        if self.value.len() > self.token_limit {
                            return Err(too_long());
                        }
                        let room = self.token_limit - self.value.len();
                        let run = plain_run(input, room, &VALUE_BYTE);
                        if run > 0 {
                            self.value.extend_from_slice(&input[..run]);
                            self.advance(input, run);
                            continue;
                        }
                        let other_quote = (b == b'\'' || b == b'"') && b != quote;
                        if room == 0 && (VALUE_BYTE[b as usize] || other_quote) {
                            return Err(too_long());
                        }
                        if other_quote {
                            // The other quote is an ordinary character.
                            self.value.push(b);
                            self.advance(input, 1);
                            continue;
                        }
                    }
                    self.advance(input, 1);
                    if cr && b == b'\r' {
                        self.value.push(b' ');
                        continue;
                    }
                    self.state = St::AttrValue { quote, cr: false };
                    match b {
                        b'<' => return Err(nwf("'<' in an attribute value")),
                        b'&' => {
                            self.reference.clear();
                            self.state = St::Ref {
                                quote: Some(quote),
                                kind: RefKind::Entity,
                            };
                        }
                        b'\t' | b'\n' => self.value.push(b' '),
                        b'\r' => self.state = St::AttrValue { quote, cr: true },
                        _ if b == quote && self.doomed => {
                            return Err(nwf("unexpected attribute value"));
                        }
                        _ if b == quote => self.end_value()?,
                        // After a CR even ordinary characters land here:
                        // rxml refuses them (see the module docs).
                        _ => return Err(nwf("invalid character in an attribute value")),
                    }
                }
                St::EmptyClose => {
                    self.advance(input, 1);
                    if b != b'>' {
                        return Err(nwf("expected '>' after '/'"));
                    }
                    return self.finish_tag(true, None).map(Some);
                }
            }
        }
    }

    fn advance(&mut self, input: &mut &[u8], n: usize) {
        *input = &input[n..];
        self.at += n as u64;
    }

    /// All input is consumed: text read so far is handed out, as rxml does
    /// when a read ends in plain character data.
    fn at_end(&mut self) -> Res<Option<Token>> {
        if self.state == St::Text && !self.text.is_empty() {
            return self.flush_partial(true);
        }
        Ok(None)
    }

    /// A whole text piece of `run` bytes in `input`, followed by `<`:
    /// handed out without going through the scratch buffer. `None` (and
    /// nothing consumed) when it is not valid, for the ordinary path to
    /// refuse it.
    fn whole_text(&mut self, input: &mut &[u8], run: usize) -> Option<Token> {
        let raw = &input[..run];
        let text = match self.validate_only {
            // Nothing is built from kept content, and ASCII text is valid
            // as it is (the run has no control but tab and LF).
            true if raw.is_ascii() => String::new(),
            _ => {
                let text = std::str::from_utf8(raw).ok()?;
                check_chars(raw).ok()?;
                self.owned(text)
            }
        };
        self.advance(input, run + 1);
        let start = self.text_from;
        let end = self.at - 1;
        self.text_from = end;
        self.state = St::Lt;
        Some(Token::Text { text, start, end })
    }

    /// A byte that ended a run of text.
    fn text_delimiter(&mut self, b: u8) -> Res<Option<Token>> {
        match b {
            b'<' => {
                let t = self.flush_complete(1)?;
                self.state = St::Lt;
                Ok(t)
            }
            b'&' if self.scopes.len() > 1 => {
                // Inside a stanza the framer joins text pieces anyway, so
                // the text goes on through the reference instead of being
                // handed out before it (one string, not one per
                // reference). What rxml would check when handing it out
                // here is checked here all the same.
                let unchecked = &self.text[self.text_checked..];
                // ASCII text (controls are refused as they are read) is
                // valid as it is.
                if !unchecked.is_ascii() {
                    std::str::from_utf8(unchecked).map_err(|_| nwf("invalid UTF-8 in text"))?;
                    check_chars(unchecked)?;
                }
                self.reference.clear();
                self.state = St::Ref {
                    quote: None,
                    kind: RefKind::Entity,
                };
                Ok(None)
            }
            b'&' => {
                let t = self.flush_complete(1)?;
                self.reference.clear();
                self.state = St::Ref {
                    quote: None,
                    kind: RefKind::Entity,
                };
                Ok(t)
            }
            b']' => {
                self.state = St::Bracket { cdata: false, n: 1 };
                Ok(None)
            }
            b'\r' => {
                self.state = St::Cr { cdata: false };
                Ok(None)
            }
            _ => Err(nwf("invalid character in text")),
        }
    }

    /// A byte in text after a CR or a broken `]]`, which rxml does not
    /// treat as the start of a run.
    fn resume_text(&mut self, b: u8) -> Res<Option<Token>> {
        if TEXT_BYTE[b as usize] {
            self.text.push(b);
            return Ok(None);
        }
        self.text_delimiter(b)
    }

    fn cdata_byte(&mut self, b: u8) -> Res<()> {
        match b {
            b']' => self.state = St::Bracket { cdata: true, n: 1 },
            _ if is_nonchar_byte(b) => return Err(nwf("invalid character in a CDATA section")),
            _ => self.text.push(b),
        }
        Ok(())
    }

    /// After `n` `]`: `]]>` ends CDATA and is refused in text.
    fn bracket(&mut self, cdata: bool, n: u8, b: u8) -> Res<Option<Token>> {
        if (n == 1 && b == b']') || (n == 2 && b == b'>') {
            if n == 1 {
                self.state = St::Bracket { cdata, n: 2 };
                return Ok(None);
            }
            if !cdata {
                return Err(nwf("unescaped ']]>' forbidden in text"));
            }
            self.state = St::Text;
            return self.flush_complete(0);
        }
        if b == b']' {
            // `]]]…`: one more `]` of content, and rxml hands the text out.
            self.text.push(b']');
            return self.flush_partial(false);
        }
        self.text.extend_from_slice(&b"]]"[..n as usize]);
        if cdata {
            if is_nonchar_byte(b) {
                return Err(nwf("invalid character in a CDATA section"));
            }
            // Even a CR, unnormalised (see the module docs).
            self.text.push(b);
            self.state = St::Cdata;
            return self.flush_partial(false);
        }
        self.state = St::Text;
        self.resume_text(b)
    }

    fn reference_step(
        &mut self,
        input: &mut &[u8],
        quote: Option<u8>,
        kind: RefKind,
    ) -> Res<Option<Token>> {
        if kind == RefKind::Entity && self.reference.is_empty() {
            // The common case: a whole predefined entity in the input.
            let whole: Option<(usize, &[u8])> = match input {
                [b'a', b'm', b'p', b';', ..] => Some((4, b"&")),
                [b'l', b't', b';', ..] => Some((3, b"<")),
                [b'g', b't', b';', ..] => Some((3, b">")),
                [b'a', b'p', b'o', b's', b';', ..] => Some((5, b"'")),
                [b'q', b'u', b'o', b't', b';', ..] => Some((5, b"\"")),
                _ => None,
            };
            if let Some((n, expanded)) = whole {
                self.advance(input, n);
                self.expanded(quote, expanded);
                return Ok(None);
            }
        }
        let selects = |c: u8| match kind {
            RefKind::Entity => NAME_BYTE[c as usize],
            RefKind::Decimal => c.is_ascii_digit(),
            RefKind::Hex => c.is_ascii_hexdigit(),
        };
        while let Some(&c) = input.first() {
            if !selects(c) {
                break;
            }
            if self.reference.len() == MAX_REFERENCE {
                return Err(restricted("undeclared entity"));
            }
            self.reference.push(c);
            self.advance(input, 1);
        }
        let Some(&b) = input.first() else {
            return Ok(None);
        };
        self.advance(input, 1);
        let empty = self.reference.is_empty();
        match (b, kind) {
            (b'#', RefKind::Entity) if empty => {
                self.state = St::Ref {
                    quote,
                    kind: RefKind::Decimal,
                };
                return Ok(None);
            }
            (b'x', RefKind::Decimal) if empty => {
                self.state = St::Ref {
                    quote,
                    kind: RefKind::Hex,
                };
                return Ok(None);
            }
            (b';', _) if empty => return Err(nwf("empty reference")),
            (b';', _) => {}
            _ => return Err(nwf("unexpected byte in a reference")),
        }
        let mut buf = [0u8; 4];
        let expanded: &[u8] = match kind {
            RefKind::Entity => match self.reference.as_slice() {
                b"amp" => b"&",
                b"lt" => b"<",
                b"gt" => b">",
                b"apos" => b"'",
                b"quot" => b"\"",
                _ => return Err(restricted("undeclared entity")),
            },
            RefKind::Decimal | RefKind::Hex => {
                let radix = if kind == RefKind::Hex { 16 } else { 10 };
                let digits = std::str::from_utf8(&self.reference).unwrap_or("");
                let ch = u32::from_str_radix(digits, radix)
                    .ok()
                    .and_then(char::from_u32)
                    .filter(|&c| is_xml_char(c))
                    .ok_or_else(|| nwf("character reference to an invalid character"))?;
                ch.encode_utf8(&mut buf).as_bytes()
            }
        };
        self.expanded(quote, expanded);
        Ok(None)
    }

    /// What a reference expanded to, into the value quoted by `quote` or
    /// into text.
    fn expanded(&mut self, quote: Option<u8>, expanded: &[u8]) {
        match quote {
            Some(q) => {
                self.value.extend_from_slice(expanded);
                self.state = St::AttrValue {
                    quote: q,
                    cr: false,
                };
            }
            None => {
                // Checked up to the `&` (or handed out), and a reference
                // expands to a valid character.
                self.text.extend_from_slice(expanded);
                self.text_checked = self.text.len();
                self.state = St::Text;
            }
        }
    }

    /// A byte that ended a name.
    fn name_end(&mut self, b: u8) -> Res<Option<Token>> {
        let st = self.state;
        // rxml's lexer refuses a byte that has no meaning in any tag
        // before the name is judged; the grammar comes after it.
        if !is_lexable_in_tag(b) || self.doomed {
            return Err(nwf("unexpected byte in a tag"));
        }
        match st {
            St::StartName => {
                let colon = check_qname(&self.name)?;
                self.tag_qname.clear();
                self.tag_qname
                    .push_str(std::str::from_utf8(&self.name).unwrap_or_default());
                self.tag_colon = colon;
                self.tag_default = None;
                self.tag_decls_from = self.decls.len();
                self.tag_attrs.clear();
                match b {
                    _ if is_space(b) => self.state = St::TagBlank { required: false },
                    b'>' => return self.finish_tag(false, None).map(Some),
                    b'/' => self.state = St::EmptyClose,
                    _ => self.doom(b)?,
                }
            }
            St::EndName => {
                if matches!(b, b'/' | b'?') {
                    return Err(nwf("unexpected byte in an end tag"));
                }
                let open = self
                    .scopes
                    .last()
                    .map_or("", |sc| &self.names[sc.name_from..]);
                // The open element's name was checked when it started; any
                // other name is refused (as invalid or as a mismatch, both
                // not-well-formed).
                if open.as_bytes() != self.name.as_slice() {
                    return Err(nwf("end tag does not match the start tag"));
                }
                match b {
                    _ if is_space(b) => self.state = St::EndAfter,
                    b'>' => return Ok(Some(self.end_tag())),
                    _ => self.doom(b)?,
                }
            }
            _ => {
                let colon = check_qname(&self.name)?;
                let qname = std::str::from_utf8(&self.name).unwrap_or_default();
                if qname == "xmlns:xmlns" {
                    return Err(bad_prefix("the xmlns prefix must not be declared"));
                }
                self.attr_qname.clear();
                self.attr_qname.push_str(qname);
                self.attr_colon = colon;
                match b {
                    _ if is_space(b) => self.state = St::AttrEq { seen: false },
                    b'=' => self.state = St::AttrEq { seen: true },
                    _ => self.doom(b)?,
                }
            }
        }
        Ok(None)
    }

    /// The common case after a `<`: a whole, simple, valid
    /// start or end tag in `input`, read in one pass. `None` for anything
    /// else (not all there, a reference, a CR, non-ASCII names, any error),
    /// which the state machine then reads from the same byte, so that
    /// errors and their order stay exactly its own. Returns the bytes to
    /// consume and what to finish once they are.
    fn fast_tag(&mut self, input: &[u8]) -> Option<(usize, FastTag)> {
        let limit = self.token_limit;
        if input.first() == Some(&b'/') {
            let open = &self.names[self.scopes.last()?.name_from..];
            let end = 1 + open.len();
            if input.get(1..end)? != open.as_bytes() || *input.get(end)? != b'>' {
                return None;
            }
            return Some((end + 1, FastTag::End));
        }
        let (name, tag_colon) = ascii_qname_at(input, limit)?;
        // Where the attributes are, made strings once the whole tag is
        // known to be UTF-8: one check for the tag, not one per name and
        // value.
        self.fast_attrs.clear();
        let mut i = name;
        let mut spaced = true;
        // Whether a value has a non-ASCII byte (names and the rest of the
        // tag are ASCII here).
        let mut non_ascii = false;
        let (len, empty) = loop {
            let c = *input.get(i)?;
            match c {
                b'>' => break (i + 1, false),
                b'/' if *input.get(i + 1)? == b'>' => {
                    break (i + 2, true);
                }
                _ if is_space(c) => {
                    i += 1;
                    spaced = true;
                }
                _ if spaced && (c.is_ascii_alphabetic() || c == b'_') => {
                    let (len, colon) = ascii_qname_at(&input[i..], limit)?;
                    let end = i + len;
                    if &input[i..end] == b"xmlns:xmlns" || *input.get(end)? != b'=' {
                        return None;
                    }
                    let quote = *input.get(end + 1)?;
                    if quote != b'\'' && quote != b'"' {
                        return None;
                    }
                    let from = end + 2;
                    // Plain bytes in runs (see `plain_run`); the other
                    // quote is an ordinary character, anything else that
                    // is not plain (a reference, `<`, a control) is left
                    // to the state machine. The runs are of ASCII bytes,
                    // the rule: a non-ASCII byte ends one and is noted, so
                    // that an ASCII tag skips the character check below.
                    let value = input.get(from..)?;
                    let mut n = 0;
                    loop {
                        n += plain_run(&value[n..], usize::MAX, &ASCII_VALUE_BYTE);
                        let c = *value.get(n)?;
                        if c == quote {
                            break;
                        }
                        if c >= 0x80 {
                            non_ascii = true;
                        } else if c != b'\'' && c != b'"' {
                            return None;
                        }
                        n += 1;
                    }
                    if n > limit {
                        return None;
                    }
                    self.fast_attrs.push(FastAttr {
                        name: i..end,
                        colon,
                        value: from..from + n,
                    });
                    i = from + n + 1;
                    spaced = false;
                }
                _ => return None,
            }
        };
        // Names are ASCII, so this checks the values' characters; in an
        // ASCII tag, they are valid as they are (the runs hold no control).
        let text = std::str::from_utf8(&input[..len]).ok()?;
        if non_ascii {
            check_chars(text.as_bytes()).ok()?;
        }
        self.tag_qname.clear();
        self.tag_qname.push_str(&text[..name]);
        self.tag_colon = tag_colon;
        self.tag_default = None;
        self.tag_decls_from = self.decls.len();
        self.tag_attrs.clear();
        if self.fast_attrs.len() <= INSERTION_SORTED
            && self.fast_attrs.iter().all(|a| a.colon.is_none())
        {
            let resolved = Some(self.plain_attrs(text)?);
            return Some((len, FastTag::Start { empty, resolved }));
        }
        for k in 0..self.fast_attrs.len() {
            let FastAttr { name, colon, value } = self.fast_attrs[k].clone();
            let qname = CompactString::new(&text[name]);
            let value = &text[value];
            if colon.is_none() && qname != "xmlns" {
                // An unprefixed attribute, the usual kind: no checks wait.
                let value = self.kept_value(value);
                self.tag_attrs.push(RawAttr {
                    qname,
                    colon,
                    value,
                });
            } else if self.add_attribute(qname, colon, value).is_err() {
                // Read again by the state machine: nothing of it stays.
                self.decls.truncate(self.tag_decls_from);
                return None;
            }
        }
        Some((
            len,
            FastTag::Start {
                empty,
                resolved: None,
            },
        ))
    }

    /// The attributes [`Tokenizer::fast_tag`] found in `tag`, when none has
    /// a prefix (a stanza's `to`, `type`, `id`; a payload's `xmlns`):
    /// resolved at once, since an unprefixed name is its own key and only
    /// a default declaration needs a check, and built straight into the
    /// element's list in rxml's order (in `validate_only` mode only
    /// counted), without the intermediate list the general case needs
    /// while prefixes may still be declared. `None` for a duplicate or a
    /// declaration of the XML namespace, which the state machine refuses.
    fn plain_attrs(&mut self, tag: &str) -> Option<Resolved> {
        let bytes = tag.as_bytes();
        let name_of = |a: &FastAttr| &bytes[a.name.clone()];
        if self.validate_only {
            let mut declared = 0;
            for a in &self.fast_attrs {
                if name_of(a) == b"xmlns" {
                    self.tag_default = Some(declared_default(&tag[a.value.clone()])?);
                    declared += 1;
                }
            }
            let attrs = &self.fast_attrs;
            let duplicate = (1..attrs.len()).any(|i| {
                let name = name_of(&attrs[i]);
                name != b"xmlns" && attrs[..i].iter().any(|a| name_of(a) == name)
            });
            return (!duplicate).then_some(Resolved::Checked(attrs.len() - declared));
        }
        // A stanza (the root's child) gets `from` stamped on its way in,
        // and `xml:lang` when the stream has one (real clients declare
        // it): room for both now saves growing the list then. An `xmlns`
        // (rare on a stanza) leaves a slot unused: counting them first
        // would cost a pass over the attributes.
        let spare = STAMPED_ATTRIBUTES * usize::from(self.scopes.len() == 1);
        let mut built: Vec<(CompactString, CompactString)> =
            Vec::with_capacity(self.fast_attrs.len() + spare);
        for a in &self.fast_attrs {
            let name = name_of(a);
            if name == b"xmlns" {
                self.tag_default = Some(declared_default(&tag[a.value.clone()])?);
                continue;
            }
            // Sorted by insertion, which finds a duplicate with the
            // comparisons the sorting does anyway (see `sort_unique`);
            // plain keys are ordered by their bytes (see `attr_order`).
            let mut at = built.len();
            while at > 0 {
                match short_cmp(built[at - 1].0.as_bytes(), name) {
                    std::cmp::Ordering::Less => break,
                    std::cmp::Ordering::Equal => return None,
                    std::cmp::Ordering::Greater => at -= 1,
                }
            }
            let key = plain_key(&tag[a.name.clone()]);
            built.insert(at, (key, CompactString::new(&tag[a.value.clone()])));
        }
        Some(Resolved::Built(built))
    }

    /// Kept content's commonest element, a leaf: `<active xmlns='…'/>`,
    /// or `<body>` with plain text and its end tag, all in `rest` (what
    /// follows the start tag [`Tokenizer::fast_tag`] just read, with
    /// `attrs` attributes and no prefix). Its start tag and end tag are
    /// noted at once, as [`Tokenizer::next`] would note the tokens (the
    /// same limits, the same name recorded), without a scope opened and
    /// closed or a token made for each. Returns the bytes of `rest` it
    /// covers; `None` (and nothing changed) for anything else, an element
    /// over a limit included, which the ordinary path then reads and
    /// refuses exactly as before.
    fn checked_leaf(&mut self, rest: &[u8], empty: bool, attrs: usize) -> Option<usize> {
        if self.tag_colon.is_some() {
            return None;
        }
        let kept = &self.kept;
        let depth = kept.outer + kept.open as usize + 1;
        check_limits(&kept.limits, attrs, depth).ok()?;
        let len = match empty {
            true => 0,
            false => {
                // The text as `whole_text` takes it, then the end tag as
                // `fast_tag` takes it. ASCII text (no control but tab and
                // LF) is valid as it is: a run of it that stops at a
                // non-ASCII byte goes on, and the whole is checked.
                let mut run = plain_run(rest, self.token_limit, &ASCII_TEXT_BYTE);
                if rest.get(run).is_some_and(|&b| b >= 0x80) {
                    run += plain_run(&rest[run..], self.token_limit - run, &TEXT_BYTE);
                    let text = &rest[..run];
                    std::str::from_utf8(text).ok()?;
                    check_chars(text).ok()?;
                }
                let name = self.tag_qname.as_bytes();
                let end = rest.get(run..run + 3 + name.len())?;
                let [b'<', b'/', end_name @ .., b'>'] = end else {
                    return None;
                };
                if end_name != name {
                    return None;
                }
                run + end.len()
            }
        };
        let ns = match self.tag_default.take() {
            Some(declared) => declared,
            None => self.default_ns().clone(),
        };
        if self.kept.open == 0 {
            let name = CompactString::new(&self.tag_qname);
            self.kept.names.push((name, ns));
        }
        Some(len)
    }

    /// `b` starts a token the grammar does not allow here: a quote or a
    /// name is read to its end first (see `doomed`), anything else is
    /// refused at once.
    fn doom(&mut self, b: u8) -> Res<()> {
        match b {
            b'\'' | b'"' => {
                self.value.clear();
                self.state = St::AttrValue {
                    quote: b,
                    cr: false,
                };
            }
            _ if NAME_BYTE[b as usize] => {
                self.name.clear();
                self.name.push(b);
                self.state = St::AttrName;
            }
            _ => return Err(nwf("unexpected byte in a tag")),
        }
        self.doomed = true;
        Ok(())
    }

    /// The closing quote of an attribute value.
    fn end_value(&mut self) -> Res<()> {
        // Out of `self` while add_attribute (which copies it into the
        // attribute) runs, and back afterwards to keep its capacity.
        let scratch = std::mem::take(&mut self.value);
        let r = self.end_value_from(&scratch);
        self.value = scratch;
        r
    }

    fn end_value_from(&mut self, raw: &[u8]) -> Res<()> {
        let value =
            std::str::from_utf8(raw).map_err(|_| nwf("invalid UTF-8 in an attribute value"))?;
        check_chars(value.as_bytes())?;
        self.state = St::TagBlank { required: true };
        let qname = std::mem::take(&mut self.attr_qname);
        self.add_attribute(qname, self.attr_colon, value)
    }

    /// A complete attribute: a namespace declaration is checked and noted,
    /// anything else waits for the end of the tag.
    fn add_attribute(
        &mut self,
        qname: CompactString,
        colon: Option<usize>,
        value: &str,
    ) -> Res<()> {
        let (prefix, local) = match colon {
            Some(c) => (Some(&qname[..c]), &qname[c + 1..]),
            None => (None, &qname[..]),
        };
        match prefix {
            Some("xmlns") => {
                if local == "xml" {
                    if value != XML_NS {
                        return Err(bad_prefix("the xml prefix is reserved"));
                    }
                } else if value == XML_NS {
                    return Err(bad_prefix("the XML namespace is reserved"));
                }
                if value.is_empty() {
                    return Err(nwf("a prefix must not be undeclared"));
                }
                if self.decls.declared_since(self.tag_decls_from, local) {
                    return Err(nwf("duplicate attribute"));
                }
                self.decls
                    .push(CompactString::new(local), ns::intern(value));
            }
            None if local == "xmlns" => {
                if value == XML_NS {
                    return Err(bad_prefix("the XML namespace is reserved"));
                }
                self.tag_default = Some(ns::intern(value));
            }
            _ => {
                let value = self.kept_value(value);
                self.tag_attrs.push(RawAttr {
                    qname,
                    colon,
                    value,
                });
            }
        }
        Ok(())
    }

    /// An attribute's value (checked) as the attribute keeps it: not
    /// at all in `validate_only` mode.
    fn kept_value(&self, value: &str) -> CompactString {
        match self.validate_only {
            true => CompactString::default(),
            false => CompactString::new(value),
        }
    }

    /// The `>` of a start tag: namespaces are resolved (unless the fast
    /// path `resolved` the attributes already) and the element built (in
    /// `validate_only` mode, only checked).
    fn finish_tag(&mut self, empty: bool, resolved: Option<Resolved>) -> Res<Token> {
        self.text_from = self.at;
        self.state = St::Text;
        let name_from = self.names.len();
        self.names.push_str(&self.tag_qname);
        self.scopes.push(Scope {
            default: self.tag_default.take(),
            decls_from: self.tag_decls_from,
            name_from,
        });
        let attrs = match resolved {
            Some(resolved) => resolved,
            None if self.validate_only => Resolved::Checked(self.check_attributes()?),
            None => {
                // A stanza (the root's child): room for what is stamped
                // on it (see `STAMPED_ATTRIBUTES`).
                let spare = STAMPED_ATTRIBUTES * usize::from(self.scopes.len() == 2);
                let mut attrs = Vec::with_capacity(self.tag_attrs.len() + spare);
                self.resolve_attributes(&mut attrs)?;
                Resolved::Built(attrs)
            }
        };
        if self.tag_colon.is_some() {
            self.prefixed = self.prefixed.wrapping_add(1);
        }
        let (ns, local) = match self.tag_colon {
            Some(c) => (
                lookup_prefix(&self.decls, &self.tag_qname[..c])
                    .ok_or_else(|| bad_prefix("undeclared namespace prefix"))?,
                &self.tag_qname[c + 1..],
            ),
            None => (
                self.scopes
                    .iter()
                    .rev()
                    .find_map(|s| s.default.as_ref())
                    .unwrap_or(&NO_NS),
                &self.tag_qname[..],
            ),
        };
        let token = match attrs {
            Resolved::Built(attrs) => {
                // Built with its list, rather than given it after: the
                // empty one it would replace is dropped by a call.
                let element = Element {
                    name: CompactString::new(local),
                    ns: ns.clone(),
                    attrs,
                    children: Default::default(),
                };
                Token::Start { element, empty }
            }
            Resolved::Checked(attrs) => Token::Checked {
                name: CompactString::new(local),
                ns: ns.clone(),
                attrs,
                empty,
            },
        };
        if empty {
            self.pop_scope();
        }
        Ok(token)
    }

    /// See the field: compared before and after some content.
    pub(super) fn prefixed(&self) -> u32 {
        self.prefixed
    }

    /// Text as handed out (see `validate_only`).
    fn owned(&self, text: &str) -> String {
        match self.validate_only {
            true => String::new(),
            false => text.to_owned(),
        }
    }

    /// The default namespace in scope inside the innermost open element
    /// (what its unprefixed children without `xmlns` are in).
    pub(super) fn default_ns(&self) -> &CompactString {
        self.scopes
            .iter()
            .rev()
            .find_map(|s| s.default.as_ref())
            .unwrap_or(&NO_NS)
    }

    /// What [`Tokenizer::resolve_attributes`] checks, for a tag whose
    /// attributes are then dropped (`validate_only`): how many there are.
    fn check_attributes(&mut self) -> Res<usize> {
        let n = self.tag_attrs.len();
        if n <= INSERTION_SORTED && self.tag_attrs.iter().all(|a| a.colon.is_none()) {
            // The usual kind: unprefixed names are their own keys, and
            // none can be undeclared, so a duplicate is the only error.
            let attrs = &self.tag_attrs;
            let duplicate = (1..n).any(|i| attrs[..i].iter().any(|a| a.qname == attrs[i].qname));
            self.tag_attrs.clear();
            return match duplicate {
                true => Err(nwf("duplicate attribute")),
                false => Ok(n),
            };
        }
        // Resolved and checked all the same, in a scratch list that
        // keeps its capacity.
        let mut keys = std::mem::take(&mut self.checked_keys);
        let resolved = self.resolve_attributes(&mut keys);
        let count = keys.len();
        keys.clear();
        self.checked_keys = keys;
        resolved.map(|()| count)
    }

    /// The tag's attributes with their namespaces resolved, into `attrs`
    /// (empty) in rxml's order (by namespace, then local name). Errors
    /// come in rxml's order too: a duplicate among the attributes before
    /// the first undeclared prefix, then that prefix.
    fn resolve_attributes(&mut self, attrs: &mut Vec<(CompactString, CompactString)>) -> Res<()> {
        let mut undeclared = false;
        for a in self.tag_attrs.drain(..) {
            let key = match a.colon {
                None => a.qname,
                Some(c) => match lookup_prefix(&self.decls, &a.qname[..c]) {
                    Some(ns) => {
                        if &a.qname[..c] != "xml" {
                            self.prefixed = self.prefixed.wrapping_add(1);
                        }
                        attr_key(ns, &a.qname[c + 1..])
                    }
                    None => {
                        undeclared = true;
                        break;
                    }
                },
            };
            attrs.push((key, a.value));
        }
        if !sort_unique(attrs) {
            return Err(nwf("duplicate attribute"));
        }
        if undeclared {
            return Err(bad_prefix("undeclared namespace prefix"));
        }
        Ok(())
    }

    fn end_tag(&mut self) -> Token {
        self.text_from = self.at;
        self.state = St::Text;
        self.pop_scope();
        Token::End
    }

    #[inline]
    fn pop_scope(&mut self) {
        if let Some(s) = self.scopes.pop() {
            self.decls.truncate(s.decls_from);
            self.names.truncate(s.name_from);
        }
    }

    /// Hands out all buffered text, which must be valid; `back` bytes just
    /// consumed (the `<` or `&`) are not part of it.
    fn flush_complete(&mut self, back: u64) -> Res<Option<Token>> {
        let end = self.at - back;
        if self.text.is_empty() {
            self.text_from = end;
            return Ok(None);
        }
        let s = std::str::from_utf8(&self.text).map_err(|_| nwf("invalid UTF-8 in text"))?;
        check_chars(s.as_bytes())?;
        let text = self.owned(s);
        self.text.clear();
        self.text_checked = 0;
        let start = self.text_from;
        self.text_from = end;
        Ok(Some(Token::Text { text, start, end }))
    }

    /// Hands out the valid UTF-8 prefix of the buffered text and keeps a
    /// split character for later; `lenient` at the end of a read, where a
    /// short invalid tail may be a character still arriving.
    fn flush_partial(&mut self, lenient: bool) -> Res<Option<Token>> {
        if self.text.is_empty() {
            return Ok(None);
        }
        let valid = match std::str::from_utf8(&self.text) {
            Ok(_) => self.text.len(),
            Err(e) => e.valid_up_to(),
        };
        if valid == 0 {
            if lenient && self.text.len() < 4 {
                return Ok(None);
            }
            return Err(nwf("invalid UTF-8 in text"));
        }
        check_chars(&self.text[..valid])?;
        let text = match self.validate_only {
            true => String::new(),
            false => String::from_utf8(self.text[..valid].to_vec()).unwrap_or_default(),
        };
        self.text.drain(..valid);
        self.text_checked = 0;
        let start = self.text_from;
        self.text_from = self.at;
        Ok(Some(Token::Text {
            text,
            start,
            end: self.at,
        }))
    }
}

/// An unprefixed attribute's name as its key (see `element`'s module
/// docs). The names every stanza has are copied from a constant, which
/// takes no call to `memcpy` as a copy of the name does.
fn plain_key(name: &str) -> CompactString {
    const TO: CompactString = CompactString::const_new("to");
    const FROM: CompactString = CompactString::const_new("from");
    const TYPE: CompactString = CompactString::const_new("type");
    const ID: CompactString = CompactString::const_new("id");
    match name {
        "to" => TO,
        "from" => FROM,
        "type" => TYPE,
        "id" => ID,
        _ => CompactString::new(name),
    }
}

/// Bytes rxml's lexer accepts somewhere in a tag (after a name).
fn is_lexable_in_tag(b: u8) -> bool {
    is_space(b) || matches!(b, b'"' | b'\'' | b'=' | b'>' | b'?' | b'/') || NAME_BYTE[b as usize]
}

fn is_xml_char(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{d7ff}' | '\u{e000}'..='\u{fffd}' | '\u{10000}'..)
}

/// The (namespace, local name) an attribute key stands for (see
/// `element`'s module docs), which is what rxml orders attributes by.
fn key_order(key: &str) -> (&str, &str) {
    if let Some(clark) = key.strip_prefix('{') {
        // A local name has no `}`; a namespace name may.
        return clark.rsplit_once('}').unwrap_or(("", clark));
    }
    match key.strip_prefix("xml:") {
        Some(local) => (XML_NS, local),
        None => ("", key),
    }
}

/// Attribute lists up to this long are sorted by insertion, which finds a
/// duplicate with the comparisons the sorting does anyway (stanzas carry
/// one to five attributes); longer ones are sorted in O(n log n) and then
/// checked for neighbours that are equal, so that a tag with thousands of
/// attributes (before the framer's count limit refuses it) costs no
/// quadratic number of comparisons or moves.
const INSERTION_SORTED: usize = 12;

/// Sorts attributes into rxml's order; `false` if two keys are equal.
fn sort_unique(attrs: &mut [(CompactString, CompactString)]) -> bool {
    if attrs.len() > INSERTION_SORTED {
        attrs.sort_unstable_by(|a, b| attr_order(&a.0, &b.0));
        return !attrs.windows(2).any(|w| w[0].0 == w[1].0);
    }
    for i in 1..attrs.len() {
        let mut at = i;
        while at > 0 {
            match attr_order(&attrs[at - 1].0, &attrs[at].0) {
                std::cmp::Ordering::Less => break,
                std::cmp::Ordering::Equal => return false,
                std::cmp::Ordering::Greater => attrs.swap(at - 1, at),
            }
            at -= 1;
        }
    }
    true
}

/// rxml's attribute order, [`key_order`], without splitting plain keys:
/// those (no namespace) come first, ordered by name. A plain key has no
/// colon (its name is an NCName), a namespaced one is `xml:…` or `{…`.
fn attr_order(a: &str, b: &str) -> std::cmp::Ordering {
    use std::cmp::Ordering;
    let namespaced = |k: &str| matches!(k.as_bytes(), [b'{', ..] | [_, _, _, b':', ..]);
    match (namespaced(a), namespaced(b)) {
        (false, false) => short_cmp(a.as_bytes(), b.as_bytes()),
        (false, true) => Ordering::Less,
        (true, false) => Ordering::Greater,
        (true, true) => key_order(a).cmp(&key_order(b)),
    }
}

/// The namespace an `xmlns='…'` with `value` declares, interned; `None`
/// for the XML namespace, which the state machine refuses. The last
/// declaration on an element wins (see the module docs).
fn declared_default(value: &str) -> Option<CompactString> {
    (value != XML_NS).then(|| ns::intern(value))
}

/// Byte order of two short strings, which usually differ in their first
/// byte: a loop is cheaper there than a call to `memcmp`.
fn short_cmp(a: &[u8], b: &[u8]) -> std::cmp::Ordering {
    match a.iter().zip(b).find(|(x, y)| x != y) {
        Some((x, y)) => x.cmp(y),
        None => a.len().cmp(&b.len()),
    }
}

fn lookup_prefix<'a>(decls: &'a PrefixDecls, prefix: &str) -> Option<&'a CompactString> {
    if prefix == "xml" {
        return Some(&XML_NS_NAME);
    }
    decls.lookup(prefix)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every string over a small alphabet up to `len` bytes long.
    fn strings(alphabet: &[u8], len: usize) -> Vec<Vec<u8>> {
        let mut all = vec![Vec::new()];
        let mut last = vec![Vec::new()];
        for _ in 0..len {
            last = last
                .iter()
                .flat_map(|s: &Vec<u8>| {
                    alphabet.iter().map(move |&c| {
                        let mut s = s.clone();
                        s.push(c);
                        s
                    })
                })
                .collect();
            all.extend(last.iter().cloned());
        }
        all
    }

    #[test]
    fn plain_run_is_the_first_delimiter_within_room() {
        // Runs across the eight-byte blocks, delimiters in each position.
        for len in 0..26 {
            for at in 0..=len {
                let mut input = vec![b'a'; len];
                if at < len {
                    input[at] = b'<';
                }
                for room in [0, 1, 7, 8, 9, 16, 17, 100] {
                    let want = at.min(room).min(len);
                    assert_eq!(
                        plain_run(&input, room, &TEXT_BYTE),
                        want,
                        "{len} {at} {room}"
                    );
                }
            }
        }
        // Non-ASCII bytes are plain in text (UTF-8 is checked later).
        assert_eq!(plain_run("é€😀x\n<".as_bytes(), 99, &TEXT_BYTE), 11);
        assert_eq!(plain_run(b"abcdefgh\x01", 99, &TEXT_BYTE), 8);
    }

    #[test]
    fn attr_order_is_rxml_order() {
        // Keys as `attr_key` writes them: plain, `xml:`, `{ns}local`.
        let keys = [
            "a",
            "b",
            "id",
            "to",
            "type",
            "x",
            "xa",
            "xm",
            "xmlx",
            "xml:a",
            "xml:lang",
            "{urn:a}b",
            "{urn:x}a",
            "{x}y",
            "{urn:a}}b",
            "{a}a",
        ];
        for a in keys {
            for b in keys {
                let want = key_order(a).cmp(&key_order(b));
                assert_eq!(attr_order(a, b), want, "{a} {b}");
            }
        }
    }

    #[test]
    fn ascii_qname_at_agrees_with_the_name_rules() {
        // Every short candidate, ended by `=` (or by nothing), against the
        // two-pass form the tokenizer used before.
        for name in strings(b"a1:-.\xc3_", 4) {
            for (end, limit) in [(&b"="[..], 16), (b"=", 2), (b"", 16)] {
                let mut input = name.clone();
                input.extend_from_slice(end);
                let n = input.iter().position(|&c| !NAME_BYTE[c as usize]);
                let two_pass = n
                    .filter(|&n| n <= limit)
                    .and_then(|n| Some((n, ascii_qname(&input[..n])?.ok()?)));
                assert_eq!(
                    ascii_qname_at(&input, limit),
                    two_pass,
                    "{:?} {limit}",
                    String::from_utf8_lossy(&input)
                );
            }
        }
    }
}
