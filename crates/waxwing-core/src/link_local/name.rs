//! Link-local names (XEP-0174 §3): the `user@machine` instance names of the
//! `_presence._tcp` service, and their reversible mapping to JIDs of the
//! gateway domain (`user%machine@lan.example.org`).
//!
//! In the gateway localpart, `%` separates user and machine (the
//! convention of XMPP gateways, readable in any client), and the characters a
//! localpart may not hold are escaped as XEP-0106 says. A machine is a DNS
//! label (no `%`), so the last `%` is always the separator, whatever the user
//! part contains. JID preparation folds case, and so does DNS: a peer is
//! found again by its lower-cased name.

use std::fmt;

/// The longest instance name: a DNS label (RFC 6763 §4.1.1).
pub const MAX_INSTANCE_BYTES: usize = 63;

/// `user@machine`, as announced in a PTR record and used as the `from`/`to`
/// of serverless streams.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Instance {
    user: String,
    machine: String,
}

impl Instance {
    /// `None` unless `user` is non-empty text without control characters
    /// and `machine` a valid machine label.
    pub fn new(user: &str, machine: &str) -> Option<Instance> {
        let ok_user = !user.is_empty() && !user.chars().any(char::is_control);
        let inst = Instance {
            user: user.to_string(),
            machine: machine.to_string(),
        };
        (ok_user && valid_machine(machine) && inst.to_string().len() <= MAX_INSTANCE_BYTES)
            .then_some(inst)
    }

    /// Parses `user@machine`; the machine is after the last `@`.
    pub fn parse(s: &str) -> Option<Instance> {
        let (user, machine) = s.rsplit_once('@')?;
        Instance::new(user, machine)
    }

    /// The instance's part of a DNS-SD full name
    /// (`juliet@pronto._presence._tcp.local.`), unescaped.
    pub fn from_fullname(fullname: &str) -> Option<Instance> {
        let inst = fullname
            .strip_suffix(super::SERVICE_TYPE)?
            .strip_suffix('.')?;
        Instance::parse(&unescape_dns(inst))
    }

    pub fn user(&self) -> &str {
        &self.user
    }

    pub fn machine(&self) -> &str {
        &self.machine
    }

    /// The key under which peers and streams are found (names compare
    /// without case, as in DNS).
    pub fn key(&self) -> String {
        self.to_string().to_lowercase()
    }

    /// The localpart of this peer's JID at the gateway, before preparation.
    pub fn gateway_local(&self) -> String {
        format!("{}%{}", escape_106(&self.user), escape_106(&self.machine))
    }

    /// The peer named by a gateway localpart (after preparation, so in
    /// lower case; compare with [`Instance::key`]).
    pub fn from_gateway_local(local: &str) -> Option<Instance> {
        let (user, machine) = local.rsplit_once('%')?;
        Instance::new(&unescape_106(user)?, &unescape_106(machine)?)
    }
}

impl fmt::Display for Instance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.user, self.machine)
    }
}

/// A machine name: one DNS label of letters, digits and `-` (XEP-0174 §7:
/// the machine is US-ASCII, since it also names the A record).
pub fn valid_machine(m: &str) -> bool {
    !m.is_empty()
        && m.len() <= MAX_INSTANCE_BYTES
        && !m.starts_with('-')
        && m.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// XEP-0106 §3.2: the characters a localpart may not contain, and the
/// backslash itself (always escaped here, so unescaping is exact).
const ESCAPES: [(char, &str); 10] = [
    ('\\', "\\5c"),
    (' ', "\\20"),
    ('"', "\\22"),
    ('&', "\\26"),
    ('\'', "\\27"),
    ('/', "\\2f"),
    (':', "\\3a"),
    ('<', "\\3c"),
    ('>', "\\3e"),
    ('@', "\\40"),
];

fn escape_106(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match ESCAPES.iter().find(|(e, _)| *e == c) {
            Some((_, code)) => out.push_str(code),
            None => out.push(c),
        }
    }
    out
}

/// The inverse of [`escape_106`]; `None` on a backslash that starts no
/// known escape (not a name we made).
fn unescape_106(s: &str) -> Option<String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('\\') {
        out.push_str(&rest[..i]);
        let code = rest.get(i..i + 3)?.to_ascii_lowercase();
        let (c, _) = ESCAPES.iter().find(|(_, e)| *e == code)?;
        out.push(*c);
        rest = &rest[i + 3..];
    }
    out.push_str(rest);
    Some(out)
}

/// RFC 6763 §4.3: a DNS-SD instance label may carry `\.` and `\\`, and
/// decimal escapes (`\064` for `@`) from some responders.
fn unescape_dns(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 1 < bytes.len() {
            let digits = bytes.get(i + 1..i + 4);
            if let Some(d) = digits.filter(|d| d.iter().all(u8::is_ascii_digit)) {
                let v = d.iter().fold(0u32, |a, b| a * 10 + u32::from(b - b'0'));
                if let Ok(b) = u8::try_from(v) {
                    out.push(b);
                    i += 4;
                    continue;
                }
            }
            out.push(bytes[i + 1]);
            i += 2;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use waxwing_proto::jid::BareJid;

    #[test]
    fn instance_parses_at_the_last_at_sign() {
        let i = Instance::parse("juliet@pronto").unwrap();
        assert_eq!((i.user(), i.machine()), ("juliet", "pronto"));
        let odd = Instance::parse("a@b@pronto").unwrap();
        assert_eq!((odd.user(), odd.machine()), ("a@b", "pronto"));
        for bad in [
            "",
            "juliet",
            "@pronto",
            "juliet@",
            "juliet@pron to",
            "juliet@-x",
        ] {
            assert!(Instance::parse(bad).is_none(), "{bad:?}");
        }
        let long = format!("{}@m", "u".repeat(62));
        assert!(Instance::parse(&long).is_none());
    }

    #[test]
    fn gateway_localpart_round_trips_through_jid_preparation() {
        for name in [
            "juliet@pronto",
            "Romeo Montague@Forza-2",
            "o'brien@desk",
            "a\\20b@m",
            "50%off@shop",
            "x/y:z<w>&\"@m1",
            "a@b@pronto",
            "zoë@laptop",
        ] {
            let inst = Instance::parse(name).unwrap();
            let jid = BareJid::new(Some(&inst.gateway_local()), "lan.example.org")
                .unwrap_or_else(|e| panic!("{name:?}: {e}"));
            let back = Instance::from_gateway_local(jid.local().unwrap()).unwrap();
            assert_eq!(back.key(), inst.key(), "{name:?} via {jid}");
        }
    }

    #[test]
    fn gateway_localpart_is_readable() {
        let inst = Instance::parse("juliet@pronto").unwrap();
        assert_eq!(inst.gateway_local(), "juliet%pronto");
        let spaced = Instance::parse("Romeo M@forza").unwrap();
        assert_eq!(spaced.gateway_local(), "Romeo\\20M%forza");
    }

    #[test]
    fn foreign_gateway_localparts_are_refused() {
        for bad in ["juliet", "juliet%", "%pronto", "a\\zz%m", "a\\2%m", "a%m.x"] {
            assert!(Instance::from_gateway_local(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn fullnames_are_unescaped() {
        let t = super::super::SERVICE_TYPE;
        let i = Instance::from_fullname(&format!("juliet@pronto.{t}")).unwrap();
        assert_eq!(i.to_string(), "juliet@pronto");
        let i = Instance::from_fullname(&format!("juliet\\064pronto.{t}")).unwrap();
        assert_eq!(i.to_string(), "juliet@pronto");
        let i = Instance::from_fullname(&format!("Ro\\ meo@forza.{t}")).unwrap();
        assert_eq!(i.to_string(), "Ro meo@forza");
        assert!(Instance::from_fullname("juliet@pronto._http._tcp.local.").is_none());
    }
}
