//! Channel-binding types for SCRAM `-PLUS`: RFC 9266 `tls-exporter` and
//! RFC 5929 `tls-server-end-point`.

use sha2::{Digest, Sha224, Sha256, Sha384, Sha512};

/// A channel-binding type we can support, named as in the IANA registry.
///
/// `tls-unique` is absent on purpose: it is undefined for TLS 1.3 and
/// insecure for TLS 1.2 without extended master secret (RFC 9266 §1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ChannelBindingType {
    /// RFC 9266: keying material exported with label `EXPORTER-Channel-Binding`.
    TlsExporter,
    /// RFC 5929 §4: a hash of the server's certificate.
    TlsServerEndPoint,
}

impl ChannelBindingType {
    /// The name used in the GS2 header `p=` flag.
    pub fn as_str(&self) -> &'static str {
        match self {
            ChannelBindingType::TlsExporter => "tls-exporter",
            ChannelBindingType::TlsServerEndPoint => "tls-server-end-point",
        }
    }

    /// Parses a GS2 `cb-name`; names are case-sensitive.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "tls-exporter" => Some(ChannelBindingType::TlsExporter),
            "tls-server-end-point" => Some(ChannelBindingType::TlsServerEndPoint),
            _ => None,
        }
    }
}

/// Channel-binding data for one connection, supplied by the TLS layer.
///
/// The default (all `None`) is a plaintext stream, or a TLS stream whose
/// bindings are unusable. The TLS layer must leave `tls_exporter` empty on
/// TLS 1.2 without extended master secret, where RFC 9266 §3 says the
/// exporter does not bind the channel.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChannelBindingData {
    /// 32 bytes exported with label `EXPORTER-Channel-Binding` and empty context.
    pub tls_exporter: Option<Vec<u8>>,
    /// Our certificate's hash, from [`tls_server_end_point_hash`].
    pub tls_server_end_point: Option<Vec<u8>>,
}

impl ChannelBindingData {
    /// The data for one binding type, if we have it.
    pub fn get(&self, ty: ChannelBindingType) -> Option<&[u8]> {
        match ty {
            ChannelBindingType::TlsExporter => self.tls_exporter.as_deref(),
            ChannelBindingType::TlsServerEndPoint => self.tls_server_end_point.as_deref(),
        }
    }

    /// True if any binding type is available, i.e. if we advertise `-PLUS`.
    pub fn any(&self) -> bool {
        self.types().any()
    }

    /// Which types this data has.
    pub fn types(&self) -> ChannelBindingTypes {
        ChannelBindingTypes {
            tls_exporter: self.tls_exporter.is_some(),
            tls_server_end_point: self.tls_server_end_point.is_some(),
        }
    }
}

/// Which channel-binding types a connection can supply, without the data:
/// what stream features advertise. A TLS layer may know this long before
/// (or without ever) computing the data: the exporter costs a key-schedule
/// expansion per connection, and most logins do not bind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChannelBindingTypes {
    pub tls_exporter: bool,
    pub tls_server_end_point: bool,
}

impl ChannelBindingTypes {
    /// True if any binding type is available, i.e. if we advertise `-PLUS`.
    pub fn any(&self) -> bool {
        self.tls_exporter || self.tls_server_end_point
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CertHash {
    Sha224,
    Sha256,
    Sha384,
    Sha512,
}

impl CertHash {
    fn digest(self, data: &[u8]) -> Vec<u8> {
        match self {
            CertHash::Sha224 => Sha224::digest(data).to_vec(),
            CertHash::Sha256 => Sha256::digest(data).to_vec(),
            CertHash::Sha384 => Sha384::digest(data).to_vec(),
            CertHash::Sha512 => Sha512::digest(data).to_vec(),
        }
    }
}

/// RFC 5929 §4.1 `tls-server-end-point` data for our DER certificate.
///
/// The hash is the one the certificate's signature algorithm uses, upgraded
/// to SHA-256 when that is MD5 or SHA-1. Returns `None` for a malformed
/// certificate or an algorithm whose hash we cannot compute; the caller then
/// simply does not offer this binding type.
///
/// RFC 5929 leaves binding undefined for algorithms without a single hash.
/// For Ed25519 we follow OpenSSL 3's `X509_digest_sig` (SHA-512, the RFC 8419
/// CMS default) because OpenSSL-based clients compute the value that way and
/// a binding only works if both ends agree. Ed448 would need SHAKE256, which
/// we lack, so it yields `None`, as do unknown algorithms.
pub fn tls_server_end_point_hash(cert_der: &[u8]) -> Option<Vec<u8>> {
    let hash = signature_hash(cert_der)?;
    Some(hash.digest(cert_der))
}

// DER content octets of the object identifiers we recognise.
const RSA_PKCS1: &[u8] = &[0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x01, 0x01]; // 1.2.840.113549.1.1
const ECDSA_SHA1: &[u8] = &[0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x04, 0x01]; // 1.2.840.10045.4.1
const ECDSA_SHA2: &[u8] = &[0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x04, 0x03]; // 1.2.840.10045.4.3
const DSA_SHA1: &[u8] = &[0x2A, 0x86, 0x48, 0xCE, 0x38, 0x04, 0x03]; // 1.2.840.10040.4.3
const NIST_SIG: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x03]; // 2.16.840.1.101.3.4.3
const NIST_HASH: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02]; // 2.16.840.1.101.3.4.2
const SHA1: &[u8] = &[0x2B, 0x0E, 0x03, 0x02, 0x1A]; // 1.3.14.3.2.26
const ED25519: &[u8] = &[0x2B, 0x65, 0x70]; // 1.3.101.112

const TAG_SEQUENCE: u8 = 0x30;
const TAG_OID: u8 = 0x06;
const TAG_CONTEXT_0: u8 = 0xA0;

/// Finds the hash to use from `Certificate.signatureAlgorithm`.
fn signature_hash(cert_der: &[u8]) -> Option<CertHash> {
    // Certificate ::= SEQUENCE { tbsCertificate, signatureAlgorithm, signatureValue }
    let (cert, rest) = read_tlv(cert_der, TAG_SEQUENCE)?;
    if !rest.is_empty() {
        return None;
    }
    let (_tbs, cert) = read_tlv(cert, TAG_SEQUENCE)?;
    let (alg_id, _signature) = read_tlv(cert, TAG_SEQUENCE)?;
    // AlgorithmIdentifier ::= SEQUENCE { algorithm OID, parameters ANY OPTIONAL }
    let (oid, params) = read_tlv(alg_id, TAG_OID)?;

    if let Some(&[arc]) = oid.strip_prefix(RSA_PKCS1) {
        return match arc {
            4 | 5 => Some(CertHash::Sha256), // md5/sha1WithRSAEncryption, upgraded
            10 => pss_hash(params),
            11 => Some(CertHash::Sha256),
            12 => Some(CertHash::Sha384),
            13 => Some(CertHash::Sha512),
            14 => Some(CertHash::Sha224),
            _ => None,
        };
    }
    if oid == ECDSA_SHA1 || oid == DSA_SHA1 {
        return Some(CertHash::Sha256);
    }
    if let Some(&[arc]) = oid.strip_prefix(ECDSA_SHA2) {
        return match arc {
            1 => Some(CertHash::Sha224),
            2 => Some(CertHash::Sha256),
            3 => Some(CertHash::Sha384),
            4 => Some(CertHash::Sha512),
            _ => None,
        };
    }
    if let Some(&[arc]) = oid.strip_prefix(NIST_SIG) {
        // dsa-with-sha224/256; higher arcs are SHA-3 variants we cannot compute.
        return match arc {
            1 => Some(CertHash::Sha224),
            2 => Some(CertHash::Sha256),
            _ => None,
        };
    }
    if oid == ED25519 {
        return Some(CertHash::Sha512);
    }
    None
}

/// RSASSA-PSS names its hash in the parameters (RFC 4055 §3.1):
/// `SEQUENCE { hashAlgorithm [0] AlgorithmIdentifier DEFAULT sha1, … }`.
fn pss_hash(params: &[u8]) -> Option<CertHash> {
    let (params, _) = read_tlv(params, TAG_SEQUENCE)?;
    let Some((explicit, _)) = read_tlv(params, TAG_CONTEXT_0) else {
        return Some(CertHash::Sha256); // default SHA-1, upgraded
    };
    let (hash_alg, _) = read_tlv(explicit, TAG_SEQUENCE)?;
    let (oid, _) = read_tlv(hash_alg, TAG_OID)?;
    if oid == SHA1 {
        return Some(CertHash::Sha256);
    }
    match oid.strip_prefix(NIST_HASH)? {
        [1] => Some(CertHash::Sha256),
        [2] => Some(CertHash::Sha384),
        [3] => Some(CertHash::Sha512),
        [4] => Some(CertHash::Sha224),
        _ => None,
    }
}

/// Reads one DER TLV with the expected tag, returning (contents, rest).
///
/// Only what certificates need: single-byte tags and definite lengths of up
/// to four octets. Indefinite lengths are not DER and are refused.
fn read_tlv(input: &[u8], expected_tag: u8) -> Option<(&[u8], &[u8])> {
    let (&tag, input) = input.split_first()?;
    if tag != expected_tag {
        return None;
    }
    let (&first, mut input) = input.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7F);
        if n == 0 || n > 4 || input.len() < n {
            return None;
        }
        let (len_bytes, rest) = input.split_at(n);
        input = rest;
        len_bytes
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b))
    };
    if input.len() < len {
        return None;
    }
    Some(input.split_at(len))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// DER length encoding, for building test certificates.
    fn der(tag: u8, content: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        match content.len() {
            n @ 0..0x80 => out.push(n as u8),
            n @ 0x80..0x100 => out.extend([0x81, n as u8]),
            n => out.extend([0x82, (n >> 8) as u8, n as u8]),
        }
        out.extend_from_slice(content);
        out
    }

    /// A structurally plausible certificate with the given signature
    /// AlgorithmIdentifier contents; the TBS is opaque filler long enough to
    /// need a long-form length.
    fn cert_with_alg(alg_id_content: &[u8]) -> Vec<u8> {
        let tbs = der(TAG_SEQUENCE, &[0x5A; 300]);
        let alg = der(TAG_SEQUENCE, alg_id_content);
        let sig = der(0x03, &[0x00, 0x01, 0x02]);
        der(TAG_SEQUENCE, &[tbs, alg, sig].concat())
    }

    fn oid(content: &[u8]) -> Vec<u8> {
        der(TAG_OID, content)
    }

    fn cert_with_oid(content: &[u8]) -> Vec<u8> {
        cert_with_alg(&[oid(content), vec![0x05, 0x00]].concat())
    }

    #[test]
    fn rsa_and_ecdsa_hashes() {
        let cases: &[(Vec<u8>, Option<CertHash>)] = &[
            ([RSA_PKCS1, &[4]].concat(), Some(CertHash::Sha256)),
            ([RSA_PKCS1, &[5]].concat(), Some(CertHash::Sha256)),
            ([RSA_PKCS1, &[11]].concat(), Some(CertHash::Sha256)),
            ([RSA_PKCS1, &[12]].concat(), Some(CertHash::Sha384)),
            ([RSA_PKCS1, &[13]].concat(), Some(CertHash::Sha512)),
            ([RSA_PKCS1, &[14]].concat(), Some(CertHash::Sha224)),
            ([RSA_PKCS1, &[1]].concat(), None),
            (ECDSA_SHA1.to_vec(), Some(CertHash::Sha256)),
            ([ECDSA_SHA2, &[2]].concat(), Some(CertHash::Sha256)),
            ([ECDSA_SHA2, &[3]].concat(), Some(CertHash::Sha384)),
            ([ECDSA_SHA2, &[4]].concat(), Some(CertHash::Sha512)),
            ([NIST_SIG, &[2]].concat(), Some(CertHash::Sha256)),
            ([NIST_SIG, &[10]].concat(), None), // ecdsa-with-SHA3-256
            (ED25519.to_vec(), Some(CertHash::Sha512)),
            (vec![0x2B, 0x65, 0x71], None), // Ed448
        ];
        for (content, want) in cases {
            assert_eq!(
                signature_hash(&cert_with_oid(content)),
                *want,
                "{content:02X?}"
            );
        }
    }

    /// A real self-signed ecdsa-with-SHA384 certificate from
    /// `openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-384 -sha384`,
    /// with the digest from `openssl dgst -sha384`.
    #[test]
    fn openssl_certificate() {
        use base64::Engine as _;
        const CERT: &str = "MIIBvTCCAUSgAwIBAgIUfLYEjhKfcP/eRmIodn6K6Eyj6DQwCgYIKoZIzj0EAwMwFjEUMBIGA1UEAwwLZXhhbXBsZS5jb20wHhcNMjYxMTI1MTI1OTI2WhcNMzYxMTIyMTI1OTI2WjAWMRQwEgYDVQQDDAtleGFtcGxlLmNvbTB2MBAGByqGSM49AgEGBSuBBAAiA2IABMisyUJcjVG2KlVn4SP0HbT+3q2qVdoPg3+XIZ45GtVxUYUBqVba4cSVivgJ7JgGwxsdWxJAhFThWkgU3C1d6/QxljNFIuuJFEazAxSCxYJ4z31KCQj7fcPn07yACYrpxqNTMFEwHQYDVR0OBBYEFOxDsL8kCKkJfQuHq4B7Ya8GSq58MB8GA1UdIwQYMBaAFOxDsL8kCKkJfQuHq4B7Ya8GSq58MA8GA1UdEwEB/wQFMAMBAf8wCgYIKoZIzj0EAwMDZwAwZAIwW/9L8iRzxqQrrGGO7iWmjhOokSY7z8+3oZVO2B7sFcwh5HtyALCfbntcugBk/tEeAjAuSEc/OLFZwh9HtVRtCV4odHpE64rhG7ab9cAaa+ffj43MPPb0oUeZ5I9TEuTdNPQ=";
        const SHA384: &str = "6fdb30aabc21e5f8586127298af0a08c658a15af5a4eafd0cb2df6827f4d1347f9d8218172b77362a01a8412f8e42b43";
        let der = base64::engine::general_purpose::STANDARD
            .decode(CERT)
            .unwrap();
        let hex: String = tls_server_end_point_hash(&der)
            .unwrap()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(hex, SHA384);
    }

    #[test]
    fn hash_covers_the_whole_certificate() {
        let cert = cert_with_oid(&[ECDSA_SHA2, &[3]].concat());
        let got = tls_server_end_point_hash(&cert).unwrap();
        assert_eq!(got, Sha384::digest(&cert).to_vec());
        assert_eq!(got.len(), 48);
    }

    #[test]
    fn pss_reads_hash_from_parameters() {
        let pss = oid(&[RSA_PKCS1, &[10]].concat());
        let sha384 = der(TAG_SEQUENCE, &oid(&[NIST_HASH, &[2]].concat()));
        let params = der(TAG_SEQUENCE, &der(TAG_CONTEXT_0, &sha384));
        let cert = cert_with_alg(&[pss.clone(), params].concat());
        assert_eq!(signature_hash(&cert), Some(CertHash::Sha384));

        // hashAlgorithm absent: the default is SHA-1, upgraded to SHA-256.
        let cert = cert_with_alg(&[pss.clone(), der(TAG_SEQUENCE, &[])].concat());
        assert_eq!(signature_hash(&cert), Some(CertHash::Sha256));

        // PSS parameters are mandatory in certificates.
        assert_eq!(signature_hash(&cert_with_alg(&pss)), None);
    }

    #[test]
    fn malformed_der_is_none() {
        let good = cert_with_oid(&[ECDSA_SHA2, &[2]].concat());
        assert!(tls_server_end_point_hash(&good).is_some());
        for cut in [0, 1, 2, 3, 10, good.len() - 1] {
            assert_eq!(tls_server_end_point_hash(&good[..cut]), None, "cut {cut}");
        }
        let mut trailing = good.clone();
        trailing.push(0);
        assert_eq!(tls_server_end_point_hash(&trailing), None);
        // Indefinite length (BER, not DER).
        assert_eq!(read_tlv(&[0x30, 0x80, 0x00, 0x00], TAG_SEQUENCE), None);
        // Length larger than the input.
        assert_eq!(
            read_tlv(&[0x30, 0x84, 0xFF, 0xFF, 0xFF, 0xFF], TAG_SEQUENCE),
            None
        );
        assert_eq!(tls_server_end_point_hash(b"not a certificate"), None);
    }

    #[test]
    fn binding_data_lookup() {
        let data = ChannelBindingData {
            tls_exporter: None,
            tls_server_end_point: Some(vec![7]),
        };
        assert!(data.any());
        assert!(!ChannelBindingData::default().any());
        assert_eq!(
            data.get(ChannelBindingType::TlsServerEndPoint),
            Some(&[7][..])
        );
        assert_eq!(data.get(ChannelBindingType::TlsExporter), None);
        for ty in [
            ChannelBindingType::TlsExporter,
            ChannelBindingType::TlsServerEndPoint,
        ] {
            assert_eq!(ChannelBindingType::from_name(ty.as_str()), Some(ty));
        }
        assert_eq!(ChannelBindingType::from_name("tls-unique"), None);
    }
}
