//! `xml:lang` on streams (RFC 6120 §4.7.4): which language our stream
//! header declares, and which tags a stream may make the default language
//! of its stanzas.

/// The languages of our human-readable texts (stream and stanza error
/// texts, form labels). A client asking for another gets [`DEFAULT`].
pub const SUPPORTED: &[&str] = &["en"];

/// The language of our texts when the client's is not supported.
pub const DEFAULT: &str = "en";

/// Longer tags are refused: RFC 5646 §4.4.1 asks implementations to
/// accept 35 characters; extensions and private use make some longer.
const MAX_TAG_LEN: usize = 64;

/// Whether `tag` is shaped like a language tag (RFC 5646 §2.1): a primary
/// subtag of 1–8 letters, then subtags of 1–8 letters or digits, joined by
/// `-`. Anything else (empty, spaces, quotes) is no language at all, and is
/// never echoed into a header or stamped on a stanza.
pub fn is_well_formed(tag: &str) -> bool {
    if tag.is_empty() || tag.len() > MAX_TAG_LEN {
        return false;
    }
    let mut subtags = tag.split('-');
    let primary = subtags.next().unwrap_or_default();
    let sized = |s: &str| (1..=8).contains(&s.len());
    sized(primary)
        && primary.bytes().all(|b| b.is_ascii_alphabetic())
        && subtags.all(|s| sized(s) && s.bytes().all(|b| b.is_ascii_alphanumeric()))
}

/// The `xml:lang` of the header answering a stream whose header asked for
/// `requested`: the client's own tag when its language is one we support
/// (RFC 4647 §3.3.1 basic filtering: `en` covers `en-GB`), else [`DEFAULT`].
pub fn reply_language(requested: Option<&str>) -> &str {
    match requested {
        Some(tag) if is_well_formed(tag) && SUPPORTED.iter().any(|s| covers(s, tag)) => tag,
        _ => DEFAULT,
    }
}

/// Whether the language range `range` matches `tag` (RFC 4647 §3.3.1).
fn covers(range: &str, tag: &str) -> bool {
    tag.len() >= range.len()
        && tag[..range.len()].eq_ignore_ascii_case(range)
        && (tag.len() == range.len() || tag.as_bytes()[range.len()] == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn well_formed_tags() {
        for ok in [
            "en",
            "de",
            "en-GB",
            "zh-Hant-TW",
            "sl-rozaj-biske",
            "x-klingon",
            "i-enochian",
        ] {
            assert!(is_well_formed(ok), "{ok}");
        }
        for bad in [
            "",
            "-",
            "en-",
            "e n",
            "en'",
            "toolonglang",
            "en-toolongsub",
            "1en",
            "en_GB",
        ] {
            assert!(!is_well_formed(bad), "{bad}");
        }
        assert!(!is_well_formed(&format!("en-{}", "-abc".repeat(20))));
    }

    #[test]
    fn the_reply_echoes_supported_languages_only() {
        assert_eq!(reply_language(Some("en")), "en");
        assert_eq!(reply_language(Some("en-GB")), "en-GB");
        assert_eq!(reply_language(Some("EN-us")), "EN-us");
        assert_eq!(reply_language(Some("de")), DEFAULT);
        assert_eq!(
            reply_language(Some("eng")),
            DEFAULT,
            "a prefix is not a subtag"
        );
        assert_eq!(reply_language(Some("en' x='y")), DEFAULT);
        assert_eq!(reply_language(None), DEFAULT);
    }
}
