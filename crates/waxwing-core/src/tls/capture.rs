//! What channel binding needs from a client handshake, caught as rustls
//! produces it: the TLS 1.3 exporter master secret and the certificate we
//! presented.
//!
//! rustls' unbuffered connection (`stream.rs`) has no
//! `export_keying_material`, but rustls hands every TLS 1.3 secret to the
//! configuration's [`KeyLog`] (`EXPORTER_SECRET`), and the chosen
//! certificate passes through our resolver. Both calls happen synchronously
//! inside `process_tls_records`, which `stream.rs` runs between
//! [`capturing`]'s arming and disarming of a thread-local slot: no `.await`
//! sits in between, so nothing else runs on this thread meanwhile and what
//! lands in the slot belongs to that one connection. Outside that window
//! (other connections of the same configuration: s2s, HTTPS, tokio-rustls
//! callers) the slot is empty and nothing is kept.
//!
//! From the secret, [`tls_exporter`] derives RFC 9266's `tls-exporter`
//! channel binding the way RFC 8446 §7.5 defines the exporter, with the
//! negotiated suite's own HKDF and hash. The secret itself is an
//! [`OkmBlock`], which zeroes its bytes when dropped: it lives only until
//! the handshake is over.

use std::cell::RefCell;
use std::sync::Arc;

use rustls::KeyLog;
use rustls::Tls13CipherSuite;
use rustls::crypto::tls13::OkmBlock;
use rustls::sign::CertifiedKey;

/// The label rustls logs the exporter master secret under (NSS key log
/// format, the same name `SSLKEYLOGFILE` consumers know).
const EXPORTER_SECRET: &str = "EXPORTER_SECRET";

/// What one handshake left behind for channel binding.
#[derive(Default)]
pub(crate) struct Captured {
    /// TLS 1.3 only: TLS 1.2 has no exporter secret to log.
    pub exporter_secret: Option<OkmBlock>,
    /// The certificate the resolver chose (the last one, after a
    /// HelloRetryRequest asked for a second ClientHello).
    pub certificate: Option<Arc<CertifiedKey>>,
}

thread_local! {
    static SLOT: RefCell<Option<Captured>> = const { RefCell::new(None) };
}

/// Runs `f` (one synchronous `process_tls_records` step of the connection
/// `into` belongs to) with the slot armed, and moves what it caught into
/// `into`. Disarms on unwind too, so a panic cannot leave one connection's
/// secrets for the next handshake on this thread.
pub(crate) fn capturing<R>(into: &mut Captured, f: impl FnOnce() -> R) -> R {
    struct Disarm<'a>(&'a mut Captured);
    impl Drop for Disarm<'_> {
        fn drop(&mut self) {
            if let Some(caught) = SLOT.with(|slot| slot.borrow_mut().take()) {
                *self.0 = caught;
            }
        }
    }
    SLOT.with(|slot| *slot.borrow_mut() = Some(std::mem::take(into)));
    let _disarm = Disarm(into);
    f()
}

fn with_slot(f: impl FnOnce(&mut Captured)) {
    SLOT.with(|slot| {
        if let Some(captured) = slot.borrow_mut().as_mut() {
            f(captured);
        }
    });
}

/// Called by the certificate resolver with the certificate it picked.
pub(crate) fn record_certificate(key: &Arc<CertifiedKey>) {
    with_slot(|c| c.certificate = Some(key.clone()));
}

/// The client listener's key log: keeps the exporter secret while armed,
/// and passes everything on to the key log configured before (rustls'
/// default logs nothing).
#[derive(Debug)]
pub(crate) struct ExporterSecretLog {
    pub chained: Arc<dyn KeyLog>,
}

impl KeyLog for ExporterSecretLog {
    fn log(&self, label: &str, client_random: &[u8], secret: &[u8]) {
        if label == EXPORTER_SECRET {
            with_slot(|c| c.exporter_secret = Some(OkmBlock::new(secret)));
        }
        if self.chained.will_log(label) {
            self.chained.log(label, client_random, secret);
        }
    }

    fn will_log(&self, label: &str) -> bool {
        let armed = || SLOT.with(|slot| slot.borrow().is_some());
        (label == EXPORTER_SECRET && armed()) || self.chained.will_log(label)
    }
}

/// RFC 9266 `tls-exporter`: TLS-Exporter("EXPORTER-Channel-Binding", "",
/// 32), which RFC 8446 §7.5 defines as
/// `HKDF-Expand-Label(Derive-Secret(exporter_master_secret, label, ""),
/// "exporter", Hash(""), 32)`; what `export_keying_material` returns on a
/// buffered connection.
pub(crate) fn tls_exporter(suite: &Tls13CipherSuite, exporter_secret: &OkmBlock) -> Vec<u8> {
    let empty_hash = suite.common.hash_provider.hash(&[]);
    let expander = suite.hkdf_provider.expander_for_okm(exporter_secret);
    // Derive-Secret(secret, label, "") is HKDF-Expand-Label(secret, label,
    // Hash(""), Hash.length).
    let length = u16::try_from(expander.hash_len())
        .expect("hash length fits in u16")
        .to_be_bytes();
    let derived = expander.expand_block(&label_info(
        &length,
        b"EXPORTER-Channel-Binding",
        empty_hash.as_ref(),
    ));
    let mut out = vec![0u8; 32];
    let length = 32u16.to_be_bytes();
    suite
        .hkdf_provider
        .expander_for_okm(&derived)
        .expand_slice(
            &label_info(&length, b"exporter", empty_hash.as_ref()),
            &mut out,
        )
        .expect("32 bytes is within HKDF-Expand's range");
    out
}

/// The `info` of RFC 8446 §7.1 HkdfLabel, as the slices rustls' expanders
/// take: length, `"tls13 " + label` with its length byte, context with its
/// length byte.
fn label_info<'a>(length: &'a [u8; 2], label: &'a [u8], context: &'a [u8]) -> [&'a [u8]; 6] {
    // Labels are ours (short constants) and contexts are one hash: both fit
    // their one-byte length prefixes.
    let label_len = &LENGTHS[6 + label.len()];
    let context_len = &LENGTHS[context.len()];
    [
        length,
        std::slice::from_ref(label_len),
        b"tls13 ",
        label,
        std::slice::from_ref(context_len),
        context,
    ]
}

/// Every one-byte length, so [`label_info`] can borrow them for as long as
/// its caller needs.
static LENGTHS: [u8; 256] = {
    let mut all = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        all[i] = i as u8;
        i += 1;
    }
    all
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_is_empty_outside_capturing() {
        let log = ExporterSecretLog {
            chained: Arc::new(rustls::NoKeyLog),
        };
        log.log(EXPORTER_SECRET, &[0; 32], &[7; 32]);
        let mut captured = Captured::default();
        capturing(&mut captured, || {
            assert!(log.will_log(EXPORTER_SECRET));
        });
        assert!(
            captured.exporter_secret.is_none(),
            "a secret logged while disarmed was kept"
        );
        capturing(&mut captured, || {
            log.log(EXPORTER_SECRET, &[0; 32], &[7; 32])
        });
        assert!(captured.exporter_secret.is_some());
        assert!(SLOT.with(|s| s.borrow().is_none()), "left armed");
    }
}
