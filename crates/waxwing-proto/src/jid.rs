//! RFC 7622: XMPP addresses (JIDs), prepared and enforced with PRECIS.
//!
//! Every value of [`BareJid`], [`FullJid`] and [`Jid`] holds the canonical
//! form: comparison, hashing and ordering are plain string operations, and
//! `Display` prints exactly what goes on the wire. The only way to build one is
//! through the parsing and preparation functions below.

use std::borrow::Cow;
use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::str::FromStr;
use std::sync::Arc;

use idna::uts46::{AsciiDenyList, DnsLength, Hyphens, Uts46};
use precis_core::profile::PrecisFastInvocation;
use precis_profiles::{OpaqueString, UsernameCaseMapped};

/// RFC 7622 §3.2–3.4: each part is limited to 1023 octets *after* preparation.
const MAX_PART_BYTES: usize = 1023;

/// RFC 1035 §2.3.4, applied to the A-label form, which is what DNS would see.
const MAX_LABEL_BYTES: usize = 63;

/// RFC 7622 §3.3.1: characters PRECIS allows but a localpart must not contain,
/// because they would be ambiguous in an address or in XML.
const FORBIDDEN_LOCAL_CHARS: &[char] = &['"', '&', '\'', '/', ':', '<', '>', '@'];

/// The part of an address an error is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JidPart {
    /// The part before `@`.
    Local,
    /// The server part.
    Domain,
    /// The part after `/`.
    Resource,
}

impl fmt::Display for JidPart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            JidPart::Local => "localpart",
            JidPart::Domain => "domainpart",
            JidPart::Resource => "resourcepart",
        })
    }
}

/// Why a string is not a valid address.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum JidError {
    /// The whole input was empty.
    #[error("empty address")]
    Empty,
    /// A separator was present but the part it introduces (or ends) was empty,
    /// as in `@example.com`, `user@` or `example.com/`.
    #[error("empty {0}")]
    EmptyPart(JidPart),
    /// A part exceeds 1023 octets after preparation.
    #[error("{0} longer than 1023 bytes")]
    TooLong(JidPart),
    /// The localpart fails the UsernameCaseMapped profile or contains a
    /// character RFC 7622 forbids.
    #[error("invalid localpart")]
    InvalidLocal,
    /// The domainpart is neither a valid IDNA domain name nor an IP literal.
    #[error("invalid domainpart")]
    InvalidDomain,
    /// The resourcepart fails the OpaqueString profile.
    #[error("invalid resourcepart")]
    InvalidResource,
    /// A bare address was expected but the input has a resource.
    #[error("unexpected resourcepart")]
    UnexpectedResource,
    /// A full address was expected but the input has no resource.
    #[error("missing resourcepart")]
    MissingResource,
}

/// An address without a resource: `domain` or `local@domain`.
///
/// Field order matters: derived `Ord` sorts by localpart, then domain.
///
/// The parts are shared, not copied, by clones: an address is cloned far
/// more often than it is parsed (every fan-out copy, registry key, routing
/// context), and a clone is then a few reference counts rather than an
/// allocation and a copy per part (freed later, often on another thread).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BareJid {
    local: Option<Part>,
    domain: Part,
}

/// A prepared part of an address, shared by clones (see [`BareJid`]).
type Part = Arc<str>;

/// An address with a resource: `[local@]domain/resource`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FullJid {
    bare: BareJid,
    resource: Part,
}

/// Either kind of address, as found in `to` and `from` attributes.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Jid {
    /// No resource.
    Bare(BareJid),
    /// With a resource.
    Full(FullJid),
}

/// Splits per RFC 7622 §3.1: the resource starts at the first `/`, so it may
/// itself contain `@` and `/`; the localpart ends at the last `@` before that.
fn split(s: &str) -> Result<(Option<&str>, &str, Option<&str>), JidError> {
    if s.is_empty() {
        return Err(JidError::Empty);
    }
    // Plain byte scans: addresses are short, and `split_once` and
    // `rsplit_once` on a `char` cost more in their searchers' setup than
    // the whole scan (the router parses the `to` of every stanza). Both
    // separators are ASCII, so every cut is at a character boundary.
    let bytes = s.as_bytes();
    let (rest, resource) = match bytes.iter().position(|&b| b == b'/') {
        Some(i) => (&s[..i], Some(&s[i + 1..])),
        None => (s, None),
    };
    let (local, domain) = match rest.as_bytes().iter().rposition(|&b| b == b'@') {
        Some(i) => (Some(&rest[..i]), &rest[i + 1..]),
        None => (None, rest),
    };
    Ok((local, domain, resource))
}

/// Applies the UsernameCaseMapped profile and the RFC 7622 extra rules.
///
/// SASL uses this too, so that an authentication identity and the localpart
/// of the resulting JID are prepared identically.
pub(crate) fn prepare_local(local: &str) -> Result<String, JidError> {
    prepared_local(local).map(Cow::into_owned)
}

/// [`prepare_local`], borrowing the input when it is already prepared.
fn prepared_local(local: &str) -> Result<Cow<'_, str>, JidError> {
    if local.is_empty() {
        return Err(JidError::EmptyPart(JidPart::Local));
    }
    // Reject before preparation too: PRECIS work is proportional to input and
    // preparation can only shrink over-long input by a bounded factor.
    if local.len() > 4 * MAX_PART_BYTES {
        return Err(JidError::TooLong(JidPart::Local));
    }
    ascii_local(local).unwrap_or_else(|| precis_local(local).map(Cow::Owned))
}

fn precis_local(local: &str) -> Result<String, JidError> {
    let prepared = UsernameCaseMapped::enforce(local).map_err(|_| JidError::InvalidLocal)?;
    // A prepared part must be stable (RFC 8264 §7), or what we accepted and
    // stored would be refused when read back; see `precis_resource`.
    if UsernameCaseMapped::enforce(prepared.as_ref())
        .ok()
        .as_deref()
        != Some(prepared.as_ref())
    {
        return Err(JidError::InvalidLocal);
    }
    if prepared.len() > MAX_PART_BYTES {
        return Err(JidError::TooLong(JidPart::Local));
    }
    if prepared.contains(FORBIDDEN_LOCAL_CHARS) {
        return Err(JidError::InvalidLocal);
    }
    Ok(prepared.into_owned())
}

fn prepare_resource(resource: &str) -> Result<Cow<'_, str>, JidError> {
    if resource.is_empty() {
        return Err(JidError::EmptyPart(JidPart::Resource));
    }
    if resource.len() > 4 * MAX_PART_BYTES {
        return Err(JidError::TooLong(JidPart::Resource));
    }
    ascii_resource(resource).unwrap_or_else(|| precis_resource(resource).map(Cow::Owned))
}

fn precis_resource(resource: &str) -> Result<String, JidError> {
    let prepared = OpaqueString::enforce(resource).map_err(|_| JidError::InvalidResource)?;
    // A prepared part must be stable (RFC 8264 §7). It is not always: NFC
    // turns U+0387 GREEK ANO TELEIA into U+00B7 MIDDLE DOT, which is then
    // refused outside its Catalan context (found by the `jid` fuzz target).
    if OpaqueString::enforce(prepared.as_ref()).ok().as_deref() != Some(prepared.as_ref()) {
        return Err(JidError::InvalidResource);
    }
    if prepared.len() > MAX_PART_BYTES {
        return Err(JidError::TooLong(JidPart::Resource));
    }
    Ok(prepared.into_owned())
}

/// RFC 7622 §3.2: IP literals, or a domain name in its Unicode form.
///
/// We store U-labels rather than A-labels because RFC 7622 §3.2.2 makes the
/// Unicode form canonical for XMPP; `xn--` input is converted so that both
/// spellings of a domain compare equal.
fn prepare_domain(domain: &str) -> Result<Cow<'_, str>, JidError> {
    // A single trailing dot is the DNS root, meaningless in an address
    // (RFC 7622 §3.2); two would leave an empty label and fail below.
    let domain = domain.strip_suffix('.').unwrap_or(domain);
    if domain.is_empty() {
        return Err(JidError::EmptyPart(JidPart::Domain));
    }
    if domain.len() > 4 * MAX_PART_BYTES {
        return Err(JidError::TooLong(JidPart::Domain));
    }
    if let Some(inner) = domain.strip_prefix('[').and_then(|d| d.strip_suffix(']')) {
        // Re-serialising canonicalises `[0:0::1]` and `[::1]` to one value.
        let addr: Ipv6Addr = inner.parse().map_err(|_| JidError::InvalidDomain)?;
        return Ok(Cow::Owned(format!("[{addr}]")));
    }
    // An IPv4 address ends with a digit; a name rarely does, and is
    // spared the attempt.
    if domain.as_bytes().last().is_some_and(u8::is_ascii_digit)
        && let Ok(addr) = domain.parse::<Ipv4Addr>()
    {
        return Ok(Cow::Owned(addr.to_string()));
    }

    ascii_domain(domain).unwrap_or_else(|| uts46_domain(domain).map(Cow::Owned))
}

fn uts46_domain(domain: &str) -> Result<String, JidError> {
    // STD3 rules keep the domainpart to letters, digits and hyphens (plus any
    // Unicode IDNA allows), which is what RFC 5890 requires of host names.
    // Hyphen placement is not checked: UTS 46 still validates `xn--` labels,
    // and CheckHyphens rejects real-world names such as `r3---sn-abc.example`.
    let uts46 = Uts46::new();
    let ascii = uts46
        .to_ascii(
            domain.as_bytes(),
            AsciiDenyList::STD3,
            Hyphens::Allow,
            DnsLength::Ignore,
        )
        .map_err(|_| JidError::InvalidDomain)?;
    for label in ascii.split('.') {
        if label.is_empty() || label.len() > MAX_LABEL_BYTES {
            return Err(JidError::InvalidDomain);
        }
    }
    let (unicode, result) = uts46.to_unicode(ascii.as_bytes(), AsciiDenyList::STD3, Hyphens::Allow);
    result.map_err(|_| JidError::InvalidDomain)?;
    if unicode.len() > MAX_PART_BYTES {
        return Err(JidError::TooLong(JidPart::Domain));
    }
    // The stored form must prepare to itself, or an address we accepted
    // (and stored, or routed) would be refused when read back. An `xn--`
    // label can decode to a U-label that UTS 46 then refuses (found by the
    // `jid` fuzz target: `xn--xn--bchexn-bn--bche`).
    let again = uts46.to_ascii(
        unicode.as_bytes(),
        AsciiDenyList::STD3,
        Hyphens::Allow,
        DnsLength::Ignore,
    );
    if again.ok().as_deref() != Some(ascii.as_ref()) {
        return Err(JidError::InvalidDomain);
    }
    Ok(unicode.into_owned())
}

// ASCII fast paths. Nearly every address on the wire is plain ASCII, and
// for ASCII the PRECIS and UTS 46 rules reduce to a byte check plus (for
// localparts and domains) lowercasing; the general code paths allocate and
// normalise several times. Each function returns `None` when its input is
// not plain enough, and the caller falls through to the full preparation.
// `tests::ascii_fast_paths_agree_with_precis` checks them against it.

/// UsernameCaseMapped on ASCII: the IdentifierClass allows exactly the
/// printable characters without space (U+0021..U+007E); case mapping is
/// ASCII lowercasing; width mapping and NFC change nothing.
fn ascii_local(local: &str) -> Option<Result<Cow<'_, str>, JidError>> {
    // One pass: nearly every localpart is short, lowercase and plain.
    let mut upper = false;
    let mut forbidden = false;
    for &b in local.as_bytes() {
        if !(0x21..=0x7e).contains(&b) {
            return None;
        }
        upper |= b.is_ascii_uppercase();
        // FORBIDDEN_LOCAL_CHARS, as bytes.
        forbidden |= matches!(b, b'"' | b'&' | b'\'' | b'/' | b':' | b'<' | b'>' | b'@');
    }
    if local.len() > MAX_PART_BYTES {
        return Some(Err(JidError::TooLong(JidPart::Local)));
    }
    if forbidden {
        return Some(Err(JidError::InvalidLocal));
    }
    Some(Ok(if upper {
        Cow::Owned(local.to_ascii_lowercase())
    } else {
        Cow::Borrowed(local)
    }))
}

/// OpaqueString on ASCII: the FreeformClass allows U+0020..U+007E, and the
/// profile maps nothing in that range.
fn ascii_resource(resource: &str) -> Option<Result<Cow<'_, str>, JidError>> {
    if !resource.bytes().all(|b| (0x20..=0x7e).contains(&b)) {
        return None;
    }
    if resource.len() > MAX_PART_BYTES {
        return Some(Err(JidError::TooLong(JidPart::Resource)));
    }
    Some(Ok(Cow::Borrowed(resource)))
}

/// UTS 46 with STD3 rules on an LDH name with no `xn--` label: lowercasing.
/// (IP literals are handled before this is called.)
fn ascii_domain(domain: &str) -> Option<Result<Cow<'_, str>, JidError>> {
    if domain.len() > MAX_PART_BYTES {
        return None;
    }
    // One pass over the bytes: each byte's class from a table, OR-ed
    // together (one load and one OR per byte), labels checked at the dots.
    let bytes = domain.as_bytes();
    let label_ok = |label: &[u8]| {
        !label.is_empty()
            && label.len() <= MAX_LABEL_BYTES
            && !label
                .get(..4)
                .is_some_and(|p| p.eq_ignore_ascii_case(b"xn--"))
    };
    let mut seen = 0u8;
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let class = DOMAIN_BYTES[usize::from(b)];
        if class == DOT {
            if !label_ok(&bytes[start..i]) {
                return None;
            }
            start = i + 1;
        }
        seen |= class;
    }
    if seen & OTHER != 0 || !label_ok(&bytes[start..]) {
        return None;
    }
    Some(Ok(if seen & UPPER != 0 {
        Cow::Owned(domain.to_ascii_lowercase())
    } else {
        Cow::Borrowed(domain)
    }))
}

/// Classes of bytes in [`ascii_domain`] (bits, so that a pass can OR them).
const LDH: u8 = 1;
const UPPER: u8 = 2;
const DOT: u8 = 4;
const OTHER: u8 = 8;

/// [`ascii_domain`]'s class of every byte: lowercase letters, digits and
/// hyphens; uppercase letters; the dot; anything else (not for the fast path).
const DOMAIN_BYTES: [u8; 256] = {
    let mut table = [OTHER; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = if c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-' {
            LDH
        } else if c.is_ascii_uppercase() {
            UPPER
        } else if c == b'.' {
            DOT
        } else {
            OTHER
        };
        b += 1;
    }
    table
};

impl BareJid {
    /// Builds `local@domain` (or `domain` with `None`) from unprepared parts.
    pub fn new(local: Option<&str>, domain: &str) -> Result<Self, JidError> {
        Ok(BareJid {
            local: local
                .map(prepared_local)
                .transpose()?
                .map(|l| Part::from(&*l)),
            domain: Part::from(&*prepare_domain(domain)?),
        })
    }

    /// Builds a server or component address.
    pub fn domain_only(domain: &str) -> Result<Self, JidError> {
        Self::new(None, domain)
    }

    /// Parses `[local@]domain`; an address with a resource is an error.
    pub fn parse(s: &str) -> Result<Self, JidError> {
        match Jid::parse(s)? {
            Jid::Bare(bare) => Ok(bare),
            Jid::Full(_) => Err(JidError::UnexpectedResource),
        }
    }

    /// The prepared localpart, if any.
    pub fn local(&self) -> Option<&str> {
        self.local.as_deref()
    }

    /// The prepared domainpart, in Unicode form.
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// Adds an unprepared resource.
    pub fn with_resource(&self, resource: &str) -> Result<FullJid, JidError> {
        FullJid::new(self.clone(), resource)
    }

    /// True for a bare domain, i.e. a server or component address.
    pub fn is_domain(&self) -> bool {
        self.local.is_none()
    }
}

impl FullJid {
    /// Parses `[local@]domain/resource`; a missing resource is an error.
    pub fn parse(s: &str) -> Result<Self, JidError> {
        match Jid::parse(s)? {
            Jid::Full(full) => Ok(full),
            Jid::Bare(_) => Err(JidError::MissingResource),
        }
    }

    /// Adds an unprepared resource to an already valid bare address.
    pub fn new(bare: BareJid, resource: &str) -> Result<Self, JidError> {
        Ok(FullJid {
            bare,
            resource: Part::from(&*prepare_resource(resource)?),
        })
    }

    /// The address without its resource.
    pub fn bare(&self) -> &BareJid {
        &self.bare
    }

    /// Drops the resource without cloning.
    pub fn into_bare(self) -> BareJid {
        self.bare
    }

    /// The prepared resourcepart.
    pub fn resource(&self) -> &str {
        &self.resource
    }

    /// The prepared localpart, if any.
    pub fn local(&self) -> Option<&str> {
        self.bare.local()
    }

    /// The prepared domainpart, in Unicode form.
    pub fn domain(&self) -> &str {
        self.bare.domain()
    }
}

/// Whether `s` is exactly the canonical text of the address made of these
/// prepared parts, without allocating.
fn written_as(s: &str, local: Option<&str>, domain: &str, resource: Option<&str>) -> bool {
    let mut rest = s;
    if let Some(local) = local {
        match rest.strip_prefix(local).and_then(|r| r.strip_prefix('@')) {
            Some(r) => rest = r,
            None => return false,
        }
    }
    match rest.strip_prefix(domain) {
        Some(r) => rest = r,
        None => return false,
    }
    match resource {
        Some(res) => rest.strip_prefix('/') == Some(res),
        None => rest.is_empty(),
    }
}

impl FullJid {
    /// [`Jid::is_written_as`] for a full address.
    pub fn is_written_as(&self, s: &str) -> bool {
        written_as(s, self.local(), self.domain(), Some(self.resource()))
    }
}

impl Jid {
    /// Whether `s` is exactly this address's canonical text, without
    /// allocating: lets a caller that parsed an attribute check cheaply
    /// whether it has changed since.
    pub fn is_written_as(&self, s: &str) -> bool {
        written_as(s, self.local(), self.domain(), self.resource())
    }

    /// Parses any address.
    pub fn parse(s: &str) -> Result<Self, JidError> {
        let (local, domain, resource) = split(s)?;
        let bare = BareJid::new(local, domain)?;
        match resource {
            Some(resource) => Ok(Jid::Full(FullJid::new(bare, resource)?)),
            None => Ok(Jid::Bare(bare)),
        }
    }

    /// The address without any resource.
    pub fn bare(&self) -> &BareJid {
        match self {
            Jid::Bare(bare) => bare,
            Jid::Full(full) => full.bare(),
        }
    }

    /// An owned copy of [`Jid::bare`].
    pub fn to_bare(&self) -> BareJid {
        self.bare().clone()
    }

    /// The resource, if this is a full address.
    pub fn resource(&self) -> Option<&str> {
        self.as_full().map(FullJid::resource)
    }

    /// The full address, if this is one.
    pub fn as_full(&self) -> Option<&FullJid> {
        match self {
            Jid::Bare(_) => None,
            Jid::Full(full) => Some(full),
        }
    }

    /// The prepared domainpart, in Unicode form.
    pub fn domain(&self) -> &str {
        self.bare().domain()
    }

    /// The prepared localpart, if any.
    pub fn local(&self) -> Option<&str> {
        self.bare().local()
    }
}

impl BareJid {
    /// The address as text. Same as `to_string`, but allocated once at its
    /// exact length instead of grown through `fmt`: the router stamps a
    /// `from` on every stanza a client sends.
    pub fn to_text(&self) -> String {
        let mut out = String::with_capacity(self.text_len());
        self.push_text(&mut out);
        out
    }

    /// `self/resource` as text, allocated once at its length, for a
    /// resource already prepared (a MUC room's occupant nick, say):
    /// [`FullJid::to_text`] without making the address.
    pub fn text_with_resource(&self, resource: &str) -> String {
        let mut out = String::with_capacity(self.text_len() + 1 + resource.len());
        self.push_text(&mut out);
        out.push('/');
        out.push_str(resource);
        out
    }

    fn text_len(&self) -> usize {
        self.local.as_ref().map_or(0, |l| l.len() + 1) + self.domain.len()
    }

    fn push_text(&self, out: &mut String) {
        if let Some(local) = &self.local {
            out.push_str(local);
            out.push('@');
        }
        out.push_str(&self.domain);
    }
}

impl FullJid {
    /// The address as text; see [`BareJid::to_text`].
    pub fn to_text(&self) -> String {
        self.bare.text_with_resource(&self.resource)
    }
}

impl fmt::Display for BareJid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(local) = &self.local {
            write!(f, "{local}@")?;
        }
        f.write_str(&self.domain)
    }
}

impl fmt::Display for FullJid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.bare, self.resource)
    }
}

impl fmt::Display for Jid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Jid::Bare(bare) => bare.fmt(f),
            Jid::Full(full) => full.fmt(f),
        }
    }
}

impl FromStr for BareJid {
    type Err = JidError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl FromStr for FullJid {
    type Err = JidError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl FromStr for Jid {
    type Err = JidError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl From<BareJid> for Jid {
    fn from(bare: BareJid) -> Self {
        Jid::Bare(bare)
    }
}

impl From<FullJid> for Jid {
    fn from(full: FullJid) -> Self {
        Jid::Full(full)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn to_text_is_to_string() {
        for s in [
            "a@b",
            "b",
            "a@b/c",
            "b/c d",
            "\u{e9}l\u{e8}ve@b\u{fc}cher.example/\u{2603}",
        ] {
            match Jid::parse(s).unwrap() {
                Jid::Bare(b) => assert_eq!(b.to_text(), b.to_string()),
                Jid::Full(f) => {
                    assert_eq!(f.to_text(), f.to_string());
                    assert_eq!(f.bare().text_with_resource(f.resource()), f.to_string());
                    assert_eq!(f.bare().to_text(), f.bare().to_string());
                }
            }
        }
    }

    #[test]
    fn a_full_jid_is_written_as_its_canonical_text_only() {
        let Jid::Full(f) = jid("Juliet@Example.com/Balcony") else {
            panic!("a full JID");
        };
        assert!(f.is_written_as("juliet@example.com/Balcony"));
        assert!(!f.is_written_as("Juliet@Example.com/Balcony"));
        assert!(!f.is_written_as("juliet@example.com"));
        assert!(!f.is_written_as("juliet@example.com/Balcony2"));
        let Jid::Full(d) = jid("example.com/r") else {
            panic!("a full JID");
        };
        assert!(d.is_written_as("example.com/r"));
        assert!(!d.is_written_as("x@example.com/r"));
    }

    #[test]
    fn the_ascii_localpart_refuses_exactly_the_forbidden_characters() {
        for b in 0x21u8..=0x7e {
            let s = format!("a{}B", b as char);
            let refused = ascii_local(&s).expect("printable ASCII").is_err();
            assert_eq!(
                refused,
                FORBIDDEN_LOCAL_CHARS.contains(&(b as char)),
                "{s:?}"
            );
        }
        assert_eq!(ascii_local("AbC").unwrap().unwrap(), "abc");
        assert_eq!(ascii_domain("Ex-1.ORG").unwrap().unwrap(), "ex-1.org");
        assert!(ascii_domain("a..b").is_none());
        assert!(ascii_domain("XN--nxasmq6b.example").is_none());
    }

    #[test]
    fn is_written_as_matches_only_the_canonical_text() {
        for s in [
            "a@b.example/r",
            "a@b.example",
            "b.example",
            "b.example/r/x",
            "a@b.example/",
        ] {
            if let Ok(j) = Jid::parse(s) {
                assert!(j.is_written_as(&j.to_string()), "{s}");
            }
        }
        let j = jid("Juliet@Example.com/Balcony");
        assert!(j.is_written_as("juliet@example.com/Balcony"));
        assert!(!j.is_written_as("Juliet@Example.com/Balcony"));
        assert!(!j.is_written_as("juliet@example.com"));
        assert!(!j.is_written_as("juliet@example.com/Balcony/x"));
        assert!(!jid("example.com").is_written_as("x@example.com"));
    }

    #[test]
    fn a_clone_shares_the_prepared_parts() {
        let Jid::Full(j) = jid("Juliet@Example.com/Balcony") else {
            panic!("a full address");
        };
        let c = j.clone();
        assert_eq!(c, j);
        assert!(Arc::ptr_eq(
            c.bare.local.as_ref().unwrap(),
            j.bare.local.as_ref().unwrap()
        ));
        assert!(Arc::ptr_eq(&c.bare.domain, &j.bare.domain));
        assert!(Arc::ptr_eq(&c.resource, &j.resource));
        // Prepared as before: lowercased local and domain, resource as is.
        assert_eq!(
            (j.local(), j.domain(), j.resource()),
            (Some("juliet"), "example.com", "Balcony")
        );
        // Equality, order and hashing are the text's, not the pointers'.
        let other = FullJid::parse("juliet@example.com/Balcony").unwrap();
        assert!(!Arc::ptr_eq(&other.resource, &j.resource));
        assert_eq!(other, j);
        assert_eq!(other.cmp(&j), std::cmp::Ordering::Equal);
        let set: std::collections::HashSet<FullJid> = [j, other].into_iter().collect();
        assert_eq!(set.len(), 1);
    }

    #[test]
    fn ascii_fast_paths_edge_cases() {
        for s in [" ", "  a ", "~", "!", "\"", "a@b", "A/B", "x\x7f"] {
            assert_eq!(
                ascii_resource(s).and_then(Result::ok).map(Cow::into_owned),
                precis_resource(s)
                    .ok()
                    .filter(|_| ascii_resource(s).is_some()),
                "{s:?}"
            );
            if let Some(fast) = ascii_local(s) {
                assert_eq!(
                    fast.ok().map(Cow::into_owned),
                    precis_local(s).ok(),
                    "{s:?}"
                );
            }
        }
        for d in [
            "XN--bcher-kva.example",
            "a..b",
            "-a.b",
            "a_b.c",
            "EXAMPLE.COM",
        ] {
            if let Some(fast) = ascii_domain(d) {
                assert_eq!(
                    fast.ok().map(Cow::into_owned),
                    uts46_domain(d).ok(),
                    "{d:?}"
                );
            }
        }
    }

    proptest! {
        // The ASCII fast paths must be exact shortcuts of the full
        // preparation: same value, same acceptance.
        #[test]
        fn ascii_fast_paths_agree_with_precis(s in "[ -~]{1,80}") {
            if let Some(fast) = ascii_local(&s) {
                prop_assert_eq!(fast.is_ok(), precis_local(&s).is_ok(), "local {:?}", s);
                if let Ok(v) = fast { prop_assert_eq!(v.into_owned(), precis_local(&s).unwrap()); }
            }
            if let Some(fast) = ascii_resource(&s) {
                prop_assert_eq!(fast.clone().ok().map(Cow::into_owned), precis_resource(&s).ok(), "resource {:?}", s);
            }
        }

        /// Text an address is written as parses to that address, whatever
        /// the address and the text (written another way, in another case,
        /// with a trailing dot, malformed …): what lets a reader that
        /// parsed one `to` take the next as a copy when `is_written_as`
        /// says so (the c2s `ClientMemo`).
        #[test]
        fn text_an_address_is_written_as_parses_to_it(
            texts in proptest::collection::vec(
                prop_oneof![
                    Just("a@b.example/r".to_string()),
                    Just("A@b.example/r".to_string()),
                    Just("a@B.example./r".to_string()),
                    Just("a@b.example".to_string()),
                    Just("b.example/r/s@t".to_string()),
                    Just("[::1]".to_string()),
                    Just("a@[0:0::1]/r".to_string()),
                    Just("127.0.0.1/r".to_string()),
                    Just("\u{e9}@b.example/\u{2603}".to_string()),
                    Just("a@@b".to_string()),
                    Just("".to_string()),
                    "[a-cA-C1@./]{0,8}",
                    "[ -~]{1,16}",
                ],
                1..12,
            ),
        ) {
            let parsed: Vec<Jid> = texts.iter().filter_map(|t| Jid::parse(t).ok()).collect();
            for jid in &parsed {
                for t in &texts {
                    if jid.is_written_as(t) {
                        prop_assert_eq!(Jid::parse(t), Ok(jid.clone()), "{:?} as {:?}", jid, t);
                    }
                }
            }
        }

        #[test]
        fn ascii_domain_fast_path_agrees_with_uts46(
            s in "([a-zA-Z0-9-]{1,12}\\.){0,3}[a-zA-Z0-9-]{1,12}|[A-Za-z.-]{1,20}|xn--[a-z0-9-]{1,10}\\.example",
        ) {
            if let Some(fast) = ascii_domain(&s) {
                prop_assert_eq!(fast.ok().map(Cow::into_owned), uts46_domain(&s).ok(), "domain {:?}", s);
            }
        }
    }

    fn jid(s: &str) -> Jid {
        Jid::parse(s).unwrap_or_else(|e| panic!("{s:?}: {e}"))
    }

    #[test]
    fn parses_all_three_shapes() {
        let j = jid("juliet@example.com/balcony");
        assert_eq!(j.local(), Some("juliet"));
        assert_eq!(j.domain(), "example.com");
        assert_eq!(j.resource(), Some("balcony"));

        let j = jid("juliet@example.com");
        assert_eq!(j.local(), Some("juliet"));
        assert_eq!(j.resource(), None);
        assert!(j.as_full().is_none());

        let j = jid("example.com");
        assert_eq!(j.local(), None);
        assert!(j.bare().is_domain());
    }

    #[test]
    fn width_and_case_mapping_of_localpart() {
        assert_eq!(
            jid("ＪＵＬＩＥＴ@example.com").to_string(),
            "juliet@example.com"
        );
    }

    #[test]
    fn resource_keeps_case_but_local_and_domain_fold() {
        assert_eq!(
            jid("Juliet@EXAMPLE.com/Balcony").to_string(),
            "juliet@example.com/Balcony"
        );
    }

    #[test]
    fn symbols_and_compat_chars_rejected_in_localpart() {
        assert_eq!(Jid::parse("☃snow@x"), Err(JidError::InvalidLocal));
        // U+212A KELVIN SIGN has a compatibility decomposition, so
        // IdentifierClass disallows it rather than mapping it to "k".
        assert_eq!(Jid::parse("\u{212A}elvin@x"), Err(JidError::InvalidLocal));
        assert_eq!(Jid::parse("a b@x"), Err(JidError::InvalidLocal));
    }

    #[test]
    fn forbidden_ascii_in_localpart() {
        for c in ['"', '&', '\'', ':', '<', '>'] {
            let s = format!("a{c}b@x");
            assert_eq!(Jid::parse(&s), Err(JidError::InvalidLocal), "{s}");
        }
    }

    #[test]
    fn emoji_and_spaces_allowed_in_resource() {
        let j = jid("a@x/🎉 party /with/slashes@and@ats");
        assert_eq!(j.resource(), Some("🎉 party /with/slashes@and@ats"));
        assert_eq!(j.local(), Some("a"));
    }

    #[test]
    fn last_at_before_slash_splits_localpart() {
        // Splitting at the last '@' makes "a@b" the localpart, which RFC 7622
        // forbids: the address is invalid, not silently re-split.
        assert_eq!(Jid::parse("a@b@c"), Err(JidError::InvalidLocal));
        // An '@' after the first '/' belongs to the resource.
        let j = jid("a@b/c@d");
        assert_eq!(
            (j.local(), j.domain(), j.resource()),
            (Some("a"), "b", Some("c@d"))
        );
    }

    #[test]
    fn empty_parts_rejected() {
        assert_eq!(Jid::parse(""), Err(JidError::Empty));
        assert_eq!(Jid::parse("@d"), Err(JidError::EmptyPart(JidPart::Local)));
        assert_eq!(Jid::parse("a@"), Err(JidError::EmptyPart(JidPart::Domain)));
        assert_eq!(
            Jid::parse("d/"),
            Err(JidError::EmptyPart(JidPart::Resource))
        );
        assert_eq!(Jid::parse("/r"), Err(JidError::EmptyPart(JidPart::Domain)));
        assert_eq!(Jid::parse("."), Err(JidError::EmptyPart(JidPart::Domain)));
        assert_eq!(Jid::parse("a..b"), Err(JidError::InvalidDomain));
        assert_eq!(Jid::parse(".a"), Err(JidError::InvalidDomain));
        assert_eq!(Jid::parse("a.."), Err(JidError::InvalidDomain));
    }

    #[test]
    fn ip_literals() {
        let j = jid("foo@[::1]/r");
        assert_eq!(j.domain(), "[::1]");
        assert_eq!(j.to_string(), "foo@[::1]/r");
        assert_eq!(jid("[0:0:0::1]").domain(), "[::1]");
        assert_eq!(jid("127.0.0.1").domain(), "127.0.0.1");
        assert_eq!(Jid::parse("[::g]"), Err(JidError::InvalidDomain));
        assert_eq!(Jid::parse("[127.0.0.1"), Err(JidError::InvalidDomain));
        assert_eq!(Jid::parse("::1"), Err(JidError::InvalidDomain));
    }

    #[test]
    fn length_limits() {
        let ok = "a".repeat(1023);
        assert_eq!(jid(&format!("{ok}@x")).local(), Some(ok.as_str()));
        let long = "a".repeat(1024);
        assert_eq!(
            Jid::parse(&format!("{long}@x")),
            Err(JidError::TooLong(JidPart::Local))
        );
        assert_eq!(
            Jid::parse(&format!("x/{long}")),
            Err(JidError::TooLong(JidPart::Resource))
        );
        // Multi-byte characters count in bytes, not characters.
        let wide = "é".repeat(512);
        assert_eq!(
            Jid::parse(&format!("{wide}@x")),
            Err(JidError::TooLong(JidPart::Local))
        );
        let label = "a".repeat(63);
        assert!(Jid::parse(&format!("{label}.com")).is_ok());
        assert_eq!(
            Jid::parse(&format!("a{label}.com")),
            Err(JidError::InvalidDomain)
        );
        // 16 labels of 63 plus 15 dots is exactly 1023 bytes.
        let domain = vec![label.as_str(); 16].join(".");
        assert!(Jid::parse(&domain).is_ok());
        let domain = format!("b.{domain}");
        assert_eq!(Jid::parse(&domain), Err(JidError::TooLong(JidPart::Domain)));
    }

    #[test]
    fn domain_trailing_dot_and_idna() {
        assert_eq!(jid("a@example.com.").to_string(), "a@example.com");
        assert_eq!(Jid::parse("a@example.com.."), Err(JidError::InvalidDomain));
        assert_eq!(jid("xn--bcher-kva.example").domain(), "bücher.example");
        assert_eq!(jid("BÜCHER.example").domain(), "bücher.example");
        assert_eq!(jid("bücher.example"), jid("xn--bcher-kva.EXAMPLE"));
        assert_eq!(Jid::parse("xn--a.example"), Err(JidError::InvalidDomain));
        // Found by the `jid` fuzz target: accepted, but its prepared form
        // was refused when parsed again.
        assert_eq!(
            Jid::parse("xn--xn--bchexn-bn--bche"),
            Err(JidError::InvalidDomain)
        );
        // Also found by it: NFC maps U+0387 to U+00B7, which is then refused.
        assert_eq!(Jid::parse("al@x/\u{387}a"), Err(JidError::InvalidResource));
        assert_eq!(Jid::parse("\u{387}a@x"), Err(JidError::InvalidLocal));
        assert_eq!(Jid::parse("ex ample.com"), Err(JidError::InvalidDomain));
        assert_eq!(Jid::parse("ex_ample.com"), Err(JidError::InvalidDomain));
        // Fullwidth full stop is a label separator under UTS 46.
        assert_eq!(jid("example\u{FF0E}com").domain(), "example.com");
    }

    #[test]
    fn typed_parsers_enforce_shape() {
        assert_eq!(BareJid::parse("a@b/c"), Err(JidError::UnexpectedResource));
        assert_eq!(FullJid::parse("a@b"), Err(JidError::MissingResource));
        let full: FullJid = "a@b/c".parse().unwrap();
        assert_eq!(full.bare(), &BareJid::new(Some("A"), "B").unwrap());
        assert_eq!(full.clone().into_bare().to_string(), "a@b");
        let j: Jid = full.clone().into();
        assert_eq!(j.as_full(), Some(&full));
        let j: Jid = BareJid::domain_only("b").unwrap().into();
        assert_eq!(j.to_string(), "b");
        assert_eq!(j.to_bare(), BareJid::parse("b").unwrap());
    }

    #[test]
    fn with_resource_prepares_it() {
        let bare = BareJid::parse("a@b").unwrap();
        assert_eq!(bare.with_resource("R\u{3000}1").unwrap().resource(), "R 1");
        assert_eq!(
            bare.with_resource(""),
            Err(JidError::EmptyPart(JidPart::Resource))
        );
        assert_eq!(bare.with_resource("\u{7}"), Err(JidError::InvalidResource));
    }

    #[test]
    fn display_round_trips() {
        for s in [
            "a@b",
            "b",
            "a@b/c",
            "b/c d",
            "ünïcode@bücher.example/🎉",
            "x@[2001:db8::1]/r",
        ] {
            let j = jid(s);
            assert_eq!(j.to_string(), s);
            assert_eq!(jid(&j.to_string()), j);
        }
    }

    #[test]
    fn ordering_is_by_local_then_domain() {
        let mut v = [jid("b@a"), jid("a"), jid("a@b"), jid("a@a")];
        v.sort();
        let s: Vec<String> = v.iter().map(ToString::to_string).collect();
        assert_eq!(s, ["a", "a@a", "a@b", "b@a"]);
    }
}
