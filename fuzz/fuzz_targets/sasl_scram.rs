//! A whole SCRAM exchange driven by fuzzed client messages: the first
//! message, then (with a known and with an unknown account) the final one,
//! for SHA-1/SHA-256, with and without -PLUS.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use waxwing_proto::sasl::{ChannelBindingData, ScramHash, ScramSecret, ScramServer};

fn secret(hash: ScramHash) -> &'static ScramSecret {
    static SECRETS: OnceLock<[ScramSecret; 2]> = OnceLock::new();
    let s = SECRETS.get_or_init(|| {
        [ScramHash::Sha1, ScramHash::Sha256]
            .map(|h| ScramSecret::derive(h, "pencil", b"salt-salt-salt!!", 1).unwrap())
    });
    &s[usize::from(hash == ScramHash::Sha256)]
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    // client-first and client-final, split at the first NUL.
    let (first, last) = match rest.iter().position(|&b| b == 0) {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, &[][..]),
    };
    let hash = if mode & 1 == 0 {
        ScramHash::Sha1
    } else {
        ScramHash::Sha256
    };
    let plus = mode & 2 != 0;
    let cb = ChannelBindingData {
        tls_exporter: Some(vec![7; 32]),
        tls_server_end_point: (mode & 4 != 0).then(|| vec![9; 32]),
    };
    let mut server = ScramServer::new(hash, plus, cb, "3rfcNHYJY1ZVvWVs7j".into());
    if server.handle_client_first(first).is_err() {
        return;
    }
    let known = (mode & 8 != 0).then(|| secret(hash));
    let _ = server.server_first(known, b"fake-salt-key", 4096);
    let _ = server.handle_client_final(last);
});
