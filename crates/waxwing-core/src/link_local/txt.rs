//! XEP-0174 §5: the TXT record of a `_presence._tcp` service, which carries
//! presence (there is no presence stanza on the LAN) and the optional
//! personal details and XEP-0115 capabilities.
//!
//! Parsing is lenient (XEP-0174: an implementation MUST NOT fail even if no
//! parameter is provided); building follows DNS-SD: `txtvers` first, each
//! key once, and every string within the 255 bytes a TXT string may hold.

/// Availability as the `status` key says it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Status {
    #[default]
    Avail,
    Away,
    Dnd,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Avail => "avail",
            Status::Away => "away",
            Status::Dnd => "dnd",
        }
    }

    /// The XMPP `<show/>` for this status (`None`: plain available).
    pub fn show(self) -> Option<&'static str> {
        match self {
            Status::Avail => None,
            Status::Away => Some("away"),
            Status::Dnd => Some("dnd"),
        }
    }

    /// From an XMPP `<show/>`: `xa` is away, `chat` is available.
    pub fn from_show(show: Option<&str>) -> Status {
        match show {
            Some("away" | "xa") => Status::Away,
            Some("dnd") => Status::Dnd,
            _ => Status::Avail,
        }
    }
}

/// XEP-0115 capabilities as TXT keys.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Caps {
    pub node: String,
    pub ver: String,
    pub hash: String,
}

/// What one TXT record says about an entity.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Presence {
    pub status: Status,
    /// `msg`: free text, the XMPP `<status/>`.
    pub msg: Option<String>,
    pub nick: Option<String>,
    pub first: Option<String>,
    pub last: Option<String>,
    pub email: Option<String>,
    pub jid: Option<String>,
    pub caps: Option<Caps>,
}

/// The longest TXT string (RFC 6763 §6.1): a length byte, then `key=value`.
const MAX_STRING: usize = 255;

impl Presence {
    /// Reads the keys of a TXT record; unknown keys are ignored, and
    /// values that are not UTF-8 are read lossily.
    pub fn from_txt<'a>(props: impl IntoIterator<Item = (&'a str, Option<&'a [u8]>)>) -> Self {
        let mut p = Presence::default();
        let (mut node, mut ver, mut hash) = (None, None, None);
        for (key, val) in props {
            let text = || {
                val.map(|v| String::from_utf8_lossy(v).trim().to_string())
                    .filter(|s| !s.is_empty())
            };
            match key.to_ascii_lowercase().as_str() {
                "status" => {
                    p.status = match text().as_deref() {
                        Some("away") => Status::Away,
                        Some("dnd") => Status::Dnd,
                        _ => Status::Avail,
                    }
                }
                "msg" => p.msg = text(),
                "nick" => p.nick = text(),
                "1st" => p.first = text(),
                "last" => p.last = text(),
                "email" => p.email = text(),
                "jid" => p.jid = text(),
                "node" => node = text(),
                "ver" => ver = text(),
                "hash" => hash = text(),
                _ => {}
            }
        }
        if let (Some(node), Some(ver)) = (node, ver) {
            // XEP-0115 v1.5: no `hash` is the legacy form; keep it empty.
            p.caps = Some(Caps {
                node,
                ver,
                hash: hash.unwrap_or_default(),
            });
        }
        p
    }

    /// The TXT strings, `txtvers` first, for a service on `port`.
    pub fn to_txt(&self, port: u16) -> Vec<(String, String)> {
        let mut out = vec![
            ("txtvers".to_string(), "1".to_string()),
            ("port.p2pj".into(), port.to_string()),
            ("status".into(), self.status.as_str().into()),
        ];
        let optional = [
            ("msg", &self.msg),
            ("nick", &self.nick),
            ("1st", &self.first),
            ("last", &self.last),
            ("email", &self.email),
            ("jid", &self.jid),
        ];
        for (key, val) in optional {
            if let Some(v) = val {
                out.push((key.into(), fit(key, v)));
            }
        }
        if let Some(c) = &self.caps {
            out.push(("node".into(), fit("node", &c.node)));
            out.push(("ver".into(), fit("ver", &c.ver)));
            if !c.hash.is_empty() {
                out.push(("hash".into(), fit("hash", &c.hash)));
            }
        }
        out
    }
}

/// `value` cut (at a character boundary) so that `key=value` fits one TXT string.
fn fit(key: &str, value: &str) -> String {
    let room = MAX_STRING - key.len() - 1;
    if value.len() <= room {
        return value.to_string();
    }
    let mut end = room;
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    value[..end].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(strings: &[&str]) -> Presence {
        let pairs: Vec<(&str, Option<&[u8]>)> = strings
            .iter()
            .map(|s| match s.split_once('=') {
                Some((k, v)) => (k, Some(v.as_bytes())),
                None => (*s, None),
            })
            .collect();
        Presence::from_txt(pairs)
    }

    #[test]
    fn the_xep_example_record_is_read() {
        let p = parse(&[
            "txtvers=1",
            "1st=Juliet",
            "email=juliet@capulet.lit",
            "hash=sha-1",
            "jid=juliet@capulet.lit",
            "last=Capulet",
            "msg=Hanging out downtown",
            "nick=JuliC",
            "node=http://www.adiumx.com",
            "phsh=a3839614e1a382bcfebbcf20464f519e81770813",
            "port.p2pj=5562",
            "status=avail",
            "vc=CA!",
            "ver=QgayPKawpkPSDYmwT/WM94uAlu0=",
        ]);
        assert_eq!(p.status, Status::Avail);
        assert_eq!(p.msg.as_deref(), Some("Hanging out downtown"));
        assert_eq!(p.nick.as_deref(), Some("JuliC"));
        assert_eq!(p.first.as_deref(), Some("Juliet"));
        assert_eq!(p.last.as_deref(), Some("Capulet"));
        assert_eq!(p.email.as_deref(), Some("juliet@capulet.lit"));
        assert_eq!(p.jid.as_deref(), Some("juliet@capulet.lit"));
        let caps = p.caps.unwrap();
        assert_eq!(caps.node, "http://www.adiumx.com");
        assert_eq!(caps.ver, "QgayPKawpkPSDYmwT/WM94uAlu0=");
        assert_eq!(caps.hash, "sha-1");
    }

    #[test]
    fn an_empty_or_odd_record_means_available() {
        assert_eq!(parse(&[]), Presence::default());
        let p = parse(&["status=bogus", "msg=", "nick", "STATUS=dnd"]);
        assert_eq!(p.status, Status::Dnd, "keys are case-insensitive");
        assert_eq!(p.msg, None);
        assert_eq!(p.nick, None);
        assert_eq!(parse(&["status=away"]).status, Status::Away);
        let lossy = Presence::from_txt([("msg", Some(&b"caf\xe9"[..]))]);
        assert_eq!(lossy.msg.as_deref(), Some("caf\u{fffd}"));
    }

    #[test]
    fn built_records_start_with_txtvers_and_round_trip() {
        let p = Presence {
            status: Status::Dnd,
            msg: Some("in a meeting".into()),
            nick: Some("Alice".into()),
            jid: Some("alice@example.org".into()),
            caps: Some(Caps {
                node: "https://waxwing.invalid".into(),
                ver: "abc=".into(),
                hash: "sha-1".into(),
            }),
            ..Presence::default()
        };
        let txt = p.to_txt(5298);
        assert_eq!(txt[0], ("txtvers".into(), "1".into()));
        assert!(txt.contains(&("port.p2pj".into(), "5298".into())));
        assert!(txt.contains(&("status".into(), "dnd".into())));
        let mut keys: Vec<_> = txt.iter().map(|(k, _)| k.clone()).collect();
        keys.sort();
        keys.dedup();
        assert_eq!(keys.len(), txt.len(), "each key once");
        let back = Presence::from_txt(txt.iter().map(|(k, v)| (k.as_str(), Some(v.as_bytes()))));
        assert_eq!(back, p);
    }

    #[test]
    fn long_values_are_cut_to_one_txt_string_on_a_char_boundary() {
        let p = Presence {
            msg: Some("é".repeat(300)),
            ..Presence::default()
        };
        let txt = p.to_txt(1);
        let (k, v) = txt.iter().find(|(k, _)| k == "msg").unwrap();
        assert!(k.len() + 1 + v.len() <= 255);
        assert!(k.len() + 1 + v.len() >= 253);
        assert!(v.chars().all(|c| c == 'é'));
    }

    #[test]
    fn show_maps_both_ways() {
        assert_eq!(Status::from_show(None), Status::Avail);
        assert_eq!(Status::from_show(Some("chat")), Status::Avail);
        assert_eq!(Status::from_show(Some("xa")), Status::Away);
        assert_eq!(Status::from_show(Some("dnd")), Status::Dnd);
        assert_eq!(Status::Away.show(), Some("away"));
        assert_eq!(Status::Avail.show(), None);
    }
}
