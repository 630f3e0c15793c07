//! RFC 5802 / RFC 7677: SCRAM-SHA-1 and SCRAM-SHA-256, with RFC 5802 §6
//! channel binding (`-PLUS`).

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, Mac};
use precis_core::profile::PrecisFastInvocation;
use precis_profiles::OpaqueString;
use sha1::Sha1;
use sha2::{Digest, Sha256};
use subtle::{Choice, ConstantTimeEq};

use super::{ChannelBindingData, ChannelBindingType, MAX_MESSAGE_LEN, SaslError};
use crate::jid;

/// Salt length for unknown users. Real accounts should use the same length
/// so that the salt in server-first does not reveal whether a user exists.
const FAKE_SALT_LEN: usize = 16;

/// The hash function of a SCRAM mechanism.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ScramHash {
    /// SCRAM-SHA-1 (RFC 5802), kept for older clients.
    Sha1,
    /// SCRAM-SHA-256 (RFC 7677).
    Sha256,
}

impl ScramHash {
    /// The mechanism name without channel binding.
    pub fn name(&self) -> &'static str {
        match self {
            ScramHash::Sha1 => "SCRAM-SHA-1",
            ScramHash::Sha256 => "SCRAM-SHA-256",
        }
    }

    /// The mechanism name with channel binding.
    pub fn plus_name(&self) -> &'static str {
        match self {
            ScramHash::Sha1 => "SCRAM-SHA-1-PLUS",
            ScramHash::Sha256 => "SCRAM-SHA-256-PLUS",
        }
    }

    /// Digest size in bytes, which is also the size of keys and proofs.
    pub fn output_len(&self) -> usize {
        match self {
            ScramHash::Sha1 => 20,
            ScramHash::Sha256 => 32,
        }
    }

    fn hash(self, data: &[u8]) -> Vec<u8> {
        match self {
            ScramHash::Sha1 => Sha1::digest(data).to_vec(),
            ScramHash::Sha256 => Sha256::digest(data).to_vec(),
        }
    }

    fn hmac(self, key: &[u8], data: &[u8]) -> Vec<u8> {
        fn run<M: Mac + hmac::digest::KeyInit>(key: &[u8], data: &[u8]) -> Vec<u8> {
            // HMAC accepts keys of any length, so this cannot fail.
            let mut mac = <M as hmac::digest::KeyInit>::new_from_slice(key)
                .expect("HMAC takes any key length");
            mac.update(data);
            mac.finalize().into_bytes().to_vec()
        }
        match self {
            ScramHash::Sha1 => run::<Hmac<Sha1>>(key, data),
            ScramHash::Sha256 => run::<Hmac<Sha256>>(key, data),
        }
    }

    /// RFC 5802 §2.2 `Hi()`, which is PBKDF2 with HMAC as the PRF.
    fn salted_password(self, password: &[u8], salt: &[u8], iterations: u32) -> Vec<u8> {
        let mut out = vec![0; self.output_len()];
        let result = match self {
            ScramHash::Sha1 => pbkdf2::pbkdf2::<Hmac<Sha1>>(password, salt, iterations, &mut out),
            ScramHash::Sha256 => {
                pbkdf2::pbkdf2::<Hmac<Sha256>>(password, salt, iterations, &mut out)
            }
        };
        result.expect("HMAC takes any key length");
        out
    }
}

/// What the server stores per account and mechanism hash (RFC 5802 §3):
/// enough to verify a login, but not the password itself.
#[derive(Clone, PartialEq, Eq)]
pub struct ScramSecret {
    /// The hash these keys were computed with.
    pub hash: ScramHash,
    /// The per-account salt.
    pub salt: Vec<u8>,
    /// PBKDF2 iteration count.
    pub iterations: u32,
    /// `H(ClientKey)`.
    pub stored_key: Vec<u8>,
    /// `HMAC(SaltedPassword, "Server Key")`.
    pub server_key: Vec<u8>,
}

// The keys are password-equivalent for impersonating the server, so keep them
// out of logs.
impl fmt::Debug for ScramSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScramSecret")
            .field("hash", &self.hash)
            .field("salt", &BASE64.encode(&self.salt))
            .field("iterations", &self.iterations)
            .finish_non_exhaustive()
    }
}

impl ScramSecret {
    /// Computes the stored secret for a password.
    ///
    /// The password is enforced with PRECIS OpaqueString, which RFC 8265
    /// makes the successor of SASLprep for this purpose; passwords it rejects
    /// (e.g. with control characters) cannot be set.
    pub fn derive(
        hash: ScramHash,
        password: &str,
        salt: &[u8],
        iterations: u32,
    ) -> Result<Self, SaslError> {
        if iterations == 0 {
            return Err(SaslError::InvalidIterationCount);
        }
        let password = OpaqueString::enforce(password).map_err(|_| SaslError::InvalidPassword)?;
        let salted = hash.salted_password(password.as_bytes(), salt, iterations);
        let client_key = hash.hmac(&salted, b"Client Key");
        Ok(ScramSecret {
            hash,
            salt: salt.to_vec(),
            iterations,
            stored_key: hash.hash(&client_key),
            server_key: hash.hmac(&salted, b"Server Key"),
        })
    }

    /// Checks a cleartext password (from PLAIN) against this secret.
    ///
    /// The comparison is constant-time so that response timing does not
    /// reveal how much of the stored key a guess matched.
    pub fn verify_password(&self, password: &str) -> bool {
        match Self::derive(self.hash, password, &self.salt, self.iterations) {
            Ok(candidate) => candidate.stored_key.ct_eq(&self.stored_key).into(),
            Err(_) => false,
        }
    }
}

/// The parts of client-first the caller needs to look up the account.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientFirst {
    /// The authentication identity, saslname-decoded and prepared with
    /// UsernameCaseMapped exactly as a JID localpart would be.
    pub username: String,
    /// The requested authorization identity, saslname-decoded but otherwise
    /// raw: it is a JID the caller must parse and authorize.
    pub authzid: Option<String>,
}

enum State {
    Start,
    ClientFirst {
        /// Kept verbatim: its base64 form must reappear in `c=`.
        gs2_header: String,
        cb_type: Option<ChannelBindingType>,
        client_first_bare: String,
        client_nonce: String,
        username: String,
    },
    ServerFirst {
        expected_cb: Vec<u8>,
        nonce: String,
        /// client-first-bare "," server-first ","
        auth_message_prefix: String,
        stored_key: Vec<u8>,
        server_key: Vec<u8>,
        user_exists: bool,
    },
    /// Finished, successfully or not; any further message is out of order.
    Done,
}

/// One server-side SCRAM exchange.
///
/// Call [`handle_client_first`](Self::handle_client_first), look the user up,
/// call [`server_first`](Self::server_first), then
/// [`handle_client_final`](Self::handle_client_final). Any error ends the
/// exchange.
pub struct ScramServer {
    hash: ScramHash,
    plus: bool,
    cb: ChannelBindingData,
    server_nonce: String,
    state: State,
}

impl fmt::Debug for ScramServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScramServer")
            .field("hash", &self.hash)
            .field("plus", &self.plus)
            .finish_non_exhaustive()
    }
}

impl ScramServer {
    /// Starts an exchange for `SCRAM-<hash>` or, with `plus`, `SCRAM-<hash>-PLUS`.
    ///
    /// `server_nonce` must be fresh and unpredictable (RFC 5802 §5.1 suggests
    /// at least 16 random bytes, base64-encoded); the crate has no randomness
    /// source of its own. It must be printable ASCII without `,`.
    pub fn new(hash: ScramHash, plus: bool, cb: ChannelBindingData, server_nonce: String) -> Self {
        debug_assert!(
            !server_nonce.is_empty() && server_nonce.bytes().all(is_nonce_char),
            "server nonce must be printable ASCII without ','"
        );
        ScramServer {
            hash,
            plus,
            cb,
            server_nonce,
            state: State::Start,
        }
    }

    /// Parses client-first-message: the GS2 header and client-first-bare.
    pub fn handle_client_first(&mut self, msg: &[u8]) -> Result<ClientFirst, SaslError> {
        // Until this succeeds, any error leaves the exchange finished.
        if !matches!(
            std::mem::replace(&mut self.state, State::Done),
            State::Start
        ) {
            return Err(SaslError::MalformedRequest);
        }
        let msg = message_str(msg)?;

        let (cbind_flag, rest) = msg.split_once(',').ok_or(SaslError::MalformedRequest)?;
        let (authzid, client_first_bare) =
            rest.split_once(',').ok_or(SaslError::MalformedRequest)?;
        let gs2_header = &msg[..cbind_flag.len() + authzid.len() + 2];

        let cb_type = self.check_cbind_flag(cbind_flag)?;
        let authzid = match authzid {
            "" => None,
            a => Some(decode_saslname(
                a.strip_prefix("a=").ok_or(SaslError::MalformedRequest)?,
            )?),
        };

        let mut attrs = client_first_bare.split(',');
        let username = attrs.next().unwrap_or_default();
        // RFC 5802 §5.1: `m=` is reserved for mandatory extensions, and a
        // server that does not understand one must fail.
        let username = username
            .strip_prefix("n=")
            .ok_or(SaslError::MalformedRequest)?;
        let client_nonce = attrs
            .next()
            .and_then(|r| r.strip_prefix("r="))
            .ok_or(SaslError::MalformedRequest)?;
        if client_nonce.is_empty() || !client_nonce.bytes().all(is_nonce_char) {
            return Err(SaslError::MalformedRequest);
        }
        check_extensions(attrs)?;

        let username = decode_saslname(username)?;
        // A name that can never be a localpart cannot have an account; saying
        // so reveals nothing about which accounts exist.
        let username = jid::prepare_local(&username).map_err(|_| SaslError::NotAuthorized)?;

        self.state = State::ClientFirst {
            gs2_header: gs2_header.to_owned(),
            cb_type,
            client_first_bare: client_first_bare.to_owned(),
            client_nonce: client_nonce.to_owned(),
            username: username.clone(),
        };
        Ok(ClientFirst { username, authzid })
    }

    /// Applies the RFC 5802 §6 rules to the GS2 channel-binding flag.
    fn check_cbind_flag(&self, flag: &str) -> Result<Option<ChannelBindingType>, SaslError> {
        match (flag, flag.strip_prefix("p=")) {
            (_, Some(name)) => {
                if !self.plus {
                    return Err(SaslError::MalformedRequest);
                }
                if name.is_empty()
                    || !name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
                {
                    return Err(SaslError::MalformedRequest);
                }
                let ty = ChannelBindingType::from_name(name)
                    .filter(|&ty| self.cb.get(ty).is_some())
                    .ok_or(SaslError::ChannelBindingMismatch)?;
                Ok(Some(ty))
            }
            // A -PLUS mechanism means the client chose binding; `n` or `y`
            // contradicts the mechanism it asked for.
            ("n" | "y", None) if self.plus => Err(SaslError::MalformedRequest),
            ("n", None) => Ok(None),
            // `y`: the client could bind but believes we cannot. If we do
            // advertise -PLUS, someone stripped it from <mechanisms/>.
            ("y", None) if self.cb.any() => Err(SaslError::ChannelBindingMismatch),
            ("y", None) => Ok(None),
            _ => Err(SaslError::MalformedRequest),
        }
    }

    /// Produces server-first-message for the user named in client-first.
    ///
    /// Pass `None` for an unknown user: the exchange then proceeds with a salt
    /// derived from `fake_salt_key` and the username, so repeated probes see a
    /// stable salt and `default_iterations` exactly as for a real account, and
    /// only the final proof check fails. `fake_salt_key` should be a
    /// server-wide secret that survives restarts.
    ///
    /// # Panics
    ///
    /// If called other than right after a successful
    /// [`handle_client_first`](Self::handle_client_first), or with a secret
    /// for a different hash: both are bugs in the caller, not client input.
    pub fn server_first(
        &mut self,
        secret: Option<&ScramSecret>,
        fake_salt_key: &[u8],
        default_iterations: u32,
    ) -> Vec<u8> {
        let State::ClientFirst {
            gs2_header,
            cb_type,
            client_first_bare,
            client_nonce,
            username,
        } = std::mem::replace(&mut self.state, State::Done)
        else {
            panic!("ScramServer::server_first called out of order");
        };

        let (salt, iterations, stored_key, server_key, user_exists) = match secret {
            Some(secret) => {
                assert_eq!(secret.hash, self.hash, "SCRAM secret for the wrong hash");
                (
                    secret.salt.clone(),
                    secret.iterations,
                    secret.stored_key.clone(),
                    secret.server_key.clone(),
                    true,
                )
            }
            None => {
                // The keys only need the right length: verification runs the
                // same HMACs as for a real user, then `user_exists` fails it.
                let len = self.hash.output_len();
                (
                    fake_salt(fake_salt_key, &username),
                    default_iterations.max(1),
                    vec![0; len],
                    vec![0; len],
                    false,
                )
            }
        };

        let nonce = format!("{client_nonce}{}", self.server_nonce);
        let server_first = format!("r={nonce},s={},i={iterations}", BASE64.encode(&salt));
        let mut expected_cb = gs2_header.into_bytes();
        if let Some(ty) = cb_type {
            expected_cb.extend_from_slice(self.cb.get(ty).unwrap_or_default());
        }
        self.state = State::ServerFirst {
            expected_cb,
            nonce,
            auth_message_prefix: format!("{client_first_bare},{server_first},"),
            stored_key,
            server_key,
            user_exists,
        };
        server_first.into_bytes()
    }

    /// Verifies client-final-message and returns server-final-message (`v=…`),
    /// which the caller sends as additional data in `<success/>`.
    pub fn handle_client_final(&mut self, msg: &[u8]) -> Result<Vec<u8>, SaslError> {
        let State::ServerFirst {
            expected_cb,
            nonce,
            auth_message_prefix,
            stored_key,
            server_key,
            user_exists,
        } = std::mem::replace(&mut self.state, State::Done)
        else {
            return Err(SaslError::MalformedRequest);
        };
        let msg = message_str(msg)?;

        // RFC 5802 §7: the proof is always the last attribute, and the
        // AuthMessage covers everything before it.
        let (without_proof, proof) = msg.rsplit_once(",p=").ok_or(SaslError::MalformedRequest)?;
        if proof.contains(',') {
            return Err(SaslError::MalformedRequest);
        }
        let proof = BASE64
            .decode(proof)
            .map_err(|_| SaslError::MalformedRequest)?;
        if proof.len() != self.hash.output_len() {
            return Err(SaslError::MalformedRequest);
        }

        let mut attrs = without_proof.split(',');
        let cb = attrs
            .next()
            .and_then(|c| c.strip_prefix("c="))
            .ok_or(SaslError::MalformedRequest)?;
        let cb = BASE64.decode(cb).map_err(|_| SaslError::MalformedRequest)?;
        let client_nonce = attrs
            .next()
            .and_then(|r| r.strip_prefix("r="))
            .ok_or(SaslError::MalformedRequest)?;
        check_extensions(attrs)?;

        // Neither value is secret, but the binding data is derived from TLS
        // keying material; constant time costs nothing here.
        if !bool::from(cb.ct_eq(&expected_cb)) {
            return Err(SaslError::ChannelBindingMismatch);
        }
        if client_nonce != nonce {
            return Err(SaslError::NotAuthorized);
        }

        let auth_message = format!("{auth_message_prefix}{without_proof}");
        let client_signature = self.hash.hmac(&stored_key, auth_message.as_bytes());
        let client_key: Vec<u8> = proof
            .iter()
            .zip(&client_signature)
            .map(|(p, s)| p ^ s)
            .collect();
        let ok =
            self.hash.hash(&client_key).ct_eq(&stored_key) & Choice::from(u8::from(user_exists));
        if !bool::from(ok) {
            return Err(SaslError::NotAuthorized);
        }

        let server_signature = self.hash.hmac(&server_key, auth_message.as_bytes());
        Ok(format!("v={}", BASE64.encode(server_signature)).into_bytes())
    }
}

/// Deterministic per (server key, username) so that probing the same name
/// twice shows the same salt, as a real account would. 16 bytes, like the
/// salt of a real account.
pub fn fake_salt(key: &[u8], username: &str) -> Vec<u8> {
    let mut data = b"waxwing SCRAM fake salt\0".to_vec();
    data.extend_from_slice(username.as_bytes());
    let mut mac = ScramHash::Sha256.hmac(key, &data);
    mac.truncate(FAKE_SALT_LEN);
    mac
}

fn message_str(msg: &[u8]) -> Result<&str, SaslError> {
    if msg.len() > MAX_MESSAGE_LEN {
        return Err(SaslError::MalformedRequest);
    }
    std::str::from_utf8(msg).map_err(|_| SaslError::MalformedRequest)
}

/// RFC 5802 §7 `printable`: %x21-2B / %x2D-7E.
fn is_nonce_char(b: u8) -> bool {
    (0x21..=0x7E).contains(&b) && b != b','
}

/// Optional extensions (`attr-val = ALPHA "=" value`) are ignored as RFC
/// 5802 allows, but they must be well-formed, and `m=` (mandatory) is never
/// acceptable since we implement none.
fn check_extensions<'a>(attrs: impl Iterator<Item = &'a str>) -> Result<(), SaslError> {
    for attr in attrs {
        match attr.as_bytes() {
            [b'm', b'=', ..] => return Err(SaslError::MalformedRequest),
            [a, b'=', ..] if a.is_ascii_alphabetic() => {}
            _ => return Err(SaslError::MalformedRequest),
        }
    }
    Ok(())
}

/// RFC 5802 §7 `saslname`: `,` and `=` travel as `=2C` and `=3D`; any other
/// `=` sequence is malformed.
fn decode_saslname(s: &str) -> Result<String, SaslError> {
    if s.is_empty() || s.contains('\0') {
        return Err(SaslError::MalformedRequest);
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('=') {
        out.push_str(&rest[..i]);
        out.push(match rest.get(i + 1..i + 3) {
            Some("2C") => ',',
            Some("3D") => '=',
            _ => return Err(SaslError::MalformedRequest),
        });
        rest = &rest[i + 3..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Just enough of a SCRAM client to drive the server through a real
    /// exchange, including channel binding.
    struct TestClient {
        hash: ScramHash,
        password: String,
        gs2_header: String,
        cb_data: Vec<u8>,
        client_first_bare: String,
        salted: Vec<u8>,
        auth_message: String,
    }

    impl TestClient {
        fn new(hash: ScramHash, gs2_header: &str, cb_data: &[u8], password: &str) -> Self {
            TestClient {
                hash,
                password: password.to_owned(),
                gs2_header: gs2_header.to_owned(),
                cb_data: cb_data.to_vec(),
                client_first_bare: String::new(),
                salted: Vec::new(),
                auth_message: String::new(),
            }
        }

        fn client_first(&mut self, user: &str, nonce: &str) -> Vec<u8> {
            self.client_first_bare = format!("n={user},r={nonce}");
            format!("{}{}", self.gs2_header, self.client_first_bare).into_bytes()
        }

        fn client_final(&mut self, server_first: &[u8]) -> Vec<u8> {
            let server_first = std::str::from_utf8(server_first).unwrap();
            let mut nonce = "";
            let mut salt = Vec::new();
            let mut iterations = 0;
            for attr in server_first.split(',') {
                let (k, v) = attr.split_once('=').unwrap();
                match k {
                    "r" => nonce = v,
                    "s" => salt = BASE64.decode(v).unwrap(),
                    "i" => iterations = v.parse().unwrap(),
                    _ => panic!("unexpected {attr}"),
                }
            }
            let mut cb = self.gs2_header.as_bytes().to_vec();
            cb.extend_from_slice(&self.cb_data);
            let without_proof = format!("c={},r={nonce}", BASE64.encode(cb));
            self.auth_message =
                format!("{},{server_first},{without_proof}", self.client_first_bare);
            self.salted = self
                .hash
                .salted_password(self.password.as_bytes(), &salt, iterations);
            let client_key = self.hash.hmac(&self.salted, b"Client Key");
            let stored_key = self.hash.hash(&client_key);
            let signature = self.hash.hmac(&stored_key, self.auth_message.as_bytes());
            let proof: Vec<u8> = client_key
                .iter()
                .zip(&signature)
                .map(|(a, b)| a ^ b)
                .collect();
            format!("{without_proof},p={}", BASE64.encode(proof)).into_bytes()
        }

        fn verify_server_final(&self, server_final: &[u8]) -> bool {
            let server_key = self.hash.hmac(&self.salted, b"Server Key");
            let signature = self.hash.hmac(&server_key, self.auth_message.as_bytes());
            server_final == format!("v={}", BASE64.encode(signature)).as_bytes()
        }
    }

    const FAKE_KEY: &[u8] = b"fake-salt-key";

    fn exporter() -> ChannelBindingData {
        ChannelBindingData {
            tls_exporter: Some((0..32).collect()),
            tls_server_end_point: None,
        }
    }

    fn secret(hash: ScramHash, password: &str) -> ScramSecret {
        ScramSecret::derive(hash, password, b"0123456789abcdef", 64).unwrap()
    }

    #[test]
    fn rfc5802_sha1_vector() {
        let salt = BASE64.decode("QSXCR+Q6sek8bf92").unwrap();
        let secret = ScramSecret::derive(ScramHash::Sha1, "pencil", &salt, 4096).unwrap();
        let mut server = ScramServer::new(
            ScramHash::Sha1,
            false,
            ChannelBindingData::default(),
            "3rfcNHYJY1ZVvWVs7j".into(),
        );
        let first = server
            .handle_client_first(b"n,,n=user,r=fyko+d2lbbFgONRv9qkxdawL")
            .unwrap();
        assert_eq!(
            first,
            ClientFirst {
                username: "user".into(),
                authzid: None
            }
        );
        assert_eq!(
            server.server_first(Some(&secret), FAKE_KEY, 4096),
            b"r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,s=QSXCR+Q6sek8bf92,i=4096"
        );
        let fin = server
            .handle_client_final(
                b"c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts=",
            )
            .unwrap();
        assert_eq!(fin, b"v=rmF9pqV8S7suAoZWja4dJRkFsKQ=");
    }

    #[test]
    fn rfc7677_sha256_vector() {
        let salt = BASE64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        let secret = ScramSecret::derive(ScramHash::Sha256, "pencil", &salt, 4096).unwrap();
        let mut server = ScramServer::new(
            ScramHash::Sha256,
            false,
            ChannelBindingData::default(),
            "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0".into(),
        );
        server
            .handle_client_first(b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO")
            .unwrap();
        assert_eq!(
            server.server_first(Some(&secret), FAKE_KEY, 4096),
            b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
        );
        let fin = server
            .handle_client_final(
                b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
                  p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
            )
            .unwrap();
        assert_eq!(fin, b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=");
    }

    /// Runs a whole exchange; returns the server's verdict and whether the
    /// client accepted server-final.
    fn exchange(
        hash: ScramHash,
        plus: bool,
        cb: ChannelBindingData,
        gs2_header: &str,
        client_cb: &[u8],
        password: &str,
    ) -> Result<bool, SaslError> {
        let secret = secret(hash, "correct horse");
        let mut server = ScramServer::new(hash, plus, cb, "SERVERNONCE".into());
        let mut client = TestClient::new(hash, gs2_header, client_cb, password);
        server.handle_client_first(&client.client_first("juliet", "CLIENTNONCE"))?;
        let server_first = server.server_first(Some(&secret), FAKE_KEY, 64);
        let server_final = server.handle_client_final(&client.client_final(&server_first))?;
        Ok(client.verify_server_final(&server_final))
    }

    #[test]
    fn full_exchange_both_hashes() {
        for hash in [ScramHash::Sha1, ScramHash::Sha256] {
            let none = ChannelBindingData::default();
            assert_eq!(
                exchange(hash, false, none.clone(), "n,,", b"", "correct horse"),
                Ok(true)
            );
            // `y` is fine when we really cannot bind.
            assert_eq!(
                exchange(hash, false, none, "y,,", b"", "correct horse"),
                Ok(true)
            );
        }
    }

    #[test]
    fn plus_exchange_with_tls_exporter() {
        let cb = exporter();
        let data = cb.tls_exporter.clone().unwrap();
        for hash in [ScramHash::Sha1, ScramHash::Sha256] {
            assert_eq!(
                exchange(
                    hash,
                    true,
                    cb.clone(),
                    "p=tls-exporter,,",
                    &data,
                    "correct horse"
                ),
                Ok(true)
            );
        }
    }

    #[test]
    fn plus_exchange_with_authzid_and_server_end_point() {
        let cb = ChannelBindingData {
            tls_exporter: None,
            tls_server_end_point: Some(vec![0xAB; 32]),
        };
        assert_eq!(
            exchange(
                ScramHash::Sha256,
                true,
                cb,
                "p=tls-server-end-point,a=juliet@example.com,",
                &[0xAB; 32],
                "correct horse"
            ),
            Ok(true)
        );
    }

    #[test]
    fn wrong_password_fails() {
        assert_eq!(
            exchange(
                ScramHash::Sha256,
                false,
                ChannelBindingData::default(),
                "n,,",
                b"",
                "Correct horse"
            ),
            Err(SaslError::NotAuthorized)
        );
    }

    #[test]
    fn wrong_channel_binding_data_fails() {
        assert_eq!(
            exchange(
                ScramHash::Sha256,
                true,
                exporter(),
                "p=tls-exporter,,",
                &[0; 32],
                "correct horse"
            ),
            Err(SaslError::ChannelBindingMismatch)
        );
    }

    #[test]
    fn c_attribute_must_repeat_gs2_header() {
        let secret = secret(ScramHash::Sha256, "pw");
        let mut server = ScramServer::new(
            ScramHash::Sha256,
            false,
            ChannelBindingData::default(),
            "S".into(),
        );
        // Client sent an authzid, then claims "n,," in c=.
        let mut client = TestClient::new(ScramHash::Sha256, "n,,", b"", "pw");
        let first = client.client_first("u", "C");
        let first = [b"n,a=other," as &[u8], &first[3..]].concat();
        server.handle_client_first(&first).unwrap();
        let server_first = server.server_first(Some(&secret), FAKE_KEY, 64);
        assert_eq!(
            server.handle_client_final(&client.client_final(&server_first)),
            Err(SaslError::ChannelBindingMismatch)
        );
    }

    #[test]
    fn downgrade_with_y_is_refused_when_we_offer_plus() {
        let mut server = ScramServer::new(ScramHash::Sha256, false, exporter(), "S".into());
        assert_eq!(
            server.handle_client_first(b"y,,n=u,r=abc"),
            Err(SaslError::ChannelBindingMismatch)
        );
        // `n` (client cannot bind at all) is still fine.
        let mut server = ScramServer::new(ScramHash::Sha256, false, exporter(), "S".into());
        assert!(server.handle_client_first(b"n,,n=u,r=abc").is_ok());
    }

    #[test]
    fn gs2_flag_must_match_mechanism() {
        let cases: &[(bool, &[u8], SaslError)] = &[
            (
                false,
                b"p=tls-exporter,,n=u,r=a",
                SaslError::MalformedRequest,
            ),
            (true, b"n,,n=u,r=a", SaslError::MalformedRequest),
            (true, b"y,,n=u,r=a", SaslError::MalformedRequest),
            (
                true,
                b"p=tls-unique,,n=u,r=a",
                SaslError::ChannelBindingMismatch,
            ),
            // We have exporter data only.
            (
                true,
                b"p=tls-server-end-point,,n=u,r=a",
                SaslError::ChannelBindingMismatch,
            ),
            (true, b"p=,,n=u,r=a", SaslError::MalformedRequest),
            (
                true,
                b"p=tls_exporter,,n=u,r=a",
                SaslError::MalformedRequest,
            ),
            (false, b"F,n,,n=u,r=a", SaslError::MalformedRequest),
            (false, b"x,,n=u,r=a", SaslError::MalformedRequest),
        ];
        for (plus, msg, want) in cases {
            let mut server = ScramServer::new(ScramHash::Sha1, *plus, exporter(), "S".into());
            assert_eq!(
                server.handle_client_first(msg),
                Err(*want),
                "{}",
                String::from_utf8_lossy(msg)
            );
        }
    }

    #[test]
    fn plus_without_any_binding_data_fails() {
        let mut server = ScramServer::new(
            ScramHash::Sha256,
            true,
            ChannelBindingData::default(),
            "S".into(),
        );
        assert_eq!(
            server.handle_client_first(b"p=tls-exporter,,n=u,r=a"),
            Err(SaslError::ChannelBindingMismatch)
        );
    }

    #[test]
    fn client_first_grammar() {
        let bad: &[&[u8]] = &[
            b"",
            b"n",
            b"n,",
            b"n,,",
            b"n,,r=abc,n=u",
            b"n,,n=u",
            b"n,,n=u,r=",
            b"n,,n=u,r=ab c",
            b"n,,n=u,r=ab\xC3\xA9",
            b"n,,n=,r=abc",
            b"n,,n=a=2Xb,r=abc",
            b"n,,n=a=2,r=abc",
            b"n,,n=a\0b,r=abc",
            b"n,,m=ext,n=u,r=abc",
            b"n,,n=u,r=abc,m=ext",
            b"n,,n=u,r=abc,1=x",
            b"n,,n=u,r=abc,",
            b"n,a=,n=u,r=abc",
            b"n,z=x,n=u,r=abc",
            b"n,,n=u,r=abc\xFF",
        ];
        for msg in bad {
            let mut server = ScramServer::new(
                ScramHash::Sha1,
                false,
                ChannelBindingData::default(),
                "S".into(),
            );
            assert_eq!(
                server.handle_client_first(msg),
                Err(SaslError::MalformedRequest),
                "{}",
                String::from_utf8_lossy(msg)
            );
        }
        let long = [b"n,,n=u,r=" as &[u8], &[b'a'; MAX_MESSAGE_LEN]].concat();
        let mut server = ScramServer::new(
            ScramHash::Sha1,
            false,
            ChannelBindingData::default(),
            "S".into(),
        );
        assert_eq!(
            server.handle_client_first(&long),
            Err(SaslError::MalformedRequest)
        );
    }

    #[test]
    fn username_and_authzid_decoding() {
        let mut server = ScramServer::new(
            ScramHash::Sha1,
            false,
            ChannelBindingData::default(),
            "S".into(),
        );
        let first = server
            .handle_client_first(b"n,a=a=2Cb=3Dc@x,n=Juliet,r=abc,x=ignored")
            .unwrap();
        assert_eq!(first.username, "juliet");
        assert_eq!(first.authzid.as_deref(), Some("a,b=c@x"));

        // A username that is not a valid localpart cannot be an account.
        let mut server = ScramServer::new(
            ScramHash::Sha1,
            false,
            ChannelBindingData::default(),
            "S".into(),
        );
        assert_eq!(
            server.handle_client_first(b"n,,n=a@b,r=abc"),
            Err(SaslError::NotAuthorized)
        );
    }

    #[test]
    fn missing_user_gets_stable_fake_salt_and_fails() {
        let run = |user: &str| {
            let mut server = ScramServer::new(
                ScramHash::Sha256,
                false,
                ChannelBindingData::default(),
                "S".into(),
            );
            let mut client = TestClient::new(ScramHash::Sha256, "n,,", b"", "anything");
            server
                .handle_client_first(&client.client_first(user, "C"))
                .unwrap();
            let server_first = server.server_first(None, FAKE_KEY, 4096);
            let result = server.handle_client_final(&client.client_final(&server_first));
            (String::from_utf8(server_first).unwrap(), result)
        };
        let (a1, r1) = run("ghost");
        let (a2, _) = run("ghost");
        let (b, _) = run("other");
        assert_eq!(r1, Err(SaslError::NotAuthorized));
        assert_eq!(a1, a2);
        assert_ne!(a1, b);
        assert!(a1.ends_with(",i=4096"), "{a1}");
        let salt = a1.split(",s=").nth(1).unwrap().split(',').next().unwrap();
        assert_eq!(BASE64.decode(salt).unwrap().len(), FAKE_SALT_LEN);
        // Case-folded usernames are the same account, so the same fake salt.
        assert_eq!(run("GHOST").0, a1);
    }

    #[test]
    fn client_final_checks() {
        let secret = secret(ScramHash::Sha1, "pw");
        let start = || {
            let mut server = ScramServer::new(
                ScramHash::Sha1,
                false,
                ChannelBindingData::default(),
                "S".into(),
            );
            let mut client = TestClient::new(ScramHash::Sha1, "n,,", b"", "pw");
            server
                .handle_client_first(&client.client_first("u", "C"))
                .unwrap();
            let sf = server.server_first(Some(&secret), FAKE_KEY, 64);
            let good = String::from_utf8(client.client_final(&sf)).unwrap();
            (server, good)
        };

        let (mut server, good) = start();
        let bad_nonce = good.replace("r=CS", "r=CX");
        assert_eq!(
            server.handle_client_final(bad_nonce.as_bytes()),
            Err(SaslError::NotAuthorized)
        );

        let (mut server, good) = start();
        let (head, proof) = good.rsplit_once(",p=").unwrap();
        let mut raw = BASE64.decode(proof).unwrap();
        raw[0] ^= 1;
        let flipped = format!("{head},p={}", BASE64.encode(raw));
        assert_eq!(
            server.handle_client_final(flipped.as_bytes()),
            Err(SaslError::NotAuthorized)
        );

        let (_, good) = start();
        let (head, _) = good.rsplit_once(",p=").unwrap();
        for msg in [
            head.to_owned(),
            format!("{head},p=AAAA"),
            format!("{head},p=!!!"),
            format!("{head},p="),
            format!("{head},m=x,p=AAAAAAAAAAAAAAAAAAAAAAAAAAA="),
            good.replacen("c=biws", "c=bi!s", 1),
            good.replacen("c=biws,", "", 1),
            format!("{good},x=trailing"),
        ] {
            let (mut server, _) = start();
            assert_eq!(
                server.handle_client_final(msg.as_bytes()),
                Err(SaslError::MalformedRequest),
                "{msg}"
            );
        }

        // Replaying a final message to a finished exchange is out of order.
        let (mut server, good) = start();
        assert!(server.handle_client_final(good.as_bytes()).is_ok());
        assert_eq!(
            server.handle_client_final(good.as_bytes()),
            Err(SaslError::MalformedRequest)
        );
        assert_eq!(
            server.handle_client_first(b"n,,n=u,r=C"),
            Err(SaslError::MalformedRequest)
        );
    }

    #[test]
    fn exchange_ends_after_error() {
        let mut server = ScramServer::new(
            ScramHash::Sha1,
            false,
            ChannelBindingData::default(),
            "S".into(),
        );
        assert!(server.handle_client_first(b"garbage").is_err());
        assert_eq!(
            server.handle_client_first(b"n,,n=u,r=abc"),
            Err(SaslError::MalformedRequest)
        );
        let mut server = ScramServer::new(
            ScramHash::Sha1,
            false,
            ChannelBindingData::default(),
            "S".into(),
        );
        assert_eq!(
            server.handle_client_final(b"c=biws,r=x,p=AAAA"),
            Err(SaslError::MalformedRequest)
        );
    }

    #[test]
    #[should_panic(expected = "out of order")]
    fn server_first_before_client_first_is_a_bug() {
        let mut server = ScramServer::new(
            ScramHash::Sha1,
            false,
            ChannelBindingData::default(),
            "S".into(),
        );
        server.server_first(None, FAKE_KEY, 4096);
    }

    #[test]
    fn derive_and_verify_password() {
        let s = secret(ScramHash::Sha256, "pässwörd");
        assert!(s.verify_password("pässwörd"));
        // OpaqueString applies NFC, so decomposed input is the same password.
        assert!(s.verify_password("pa\u{308}sswo\u{308}rd"));
        // Non-ASCII spaces map to U+0020.
        let spaced = secret(ScramHash::Sha1, "a b");
        assert!(spaced.verify_password("a\u{3000}b"));
        assert!(!s.verify_password("passwörd"));
        assert!(!s.verify_password(""));
        assert!(!s.verify_password("bad\u{7}"));
        assert_eq!(s.stored_key.len(), 32);
        assert_eq!(s.server_key.len(), 32);
        assert_eq!(
            ScramSecret::derive(ScramHash::Sha1, "x\u{0}", b"salt", 1),
            Err(SaslError::InvalidPassword)
        );
        assert_eq!(
            ScramSecret::derive(ScramHash::Sha1, "", b"salt", 1),
            Err(SaslError::InvalidPassword)
        );
        assert_eq!(
            ScramSecret::derive(ScramHash::Sha1, "x", b"salt", 0),
            Err(SaslError::InvalidIterationCount)
        );
    }

    #[test]
    fn debug_hides_keys() {
        let s = secret(ScramHash::Sha1, "pw");
        let dbg = format!("{s:?}");
        assert!(
            !dbg.contains("stored_key") && !dbg.contains("server_key"),
            "{dbg}"
        );
    }

    #[test]
    fn saslname_decoding() {
        assert_eq!(decode_saslname("a=2Cb=3D").unwrap(), "a,b=");
        assert_eq!(decode_saslname("=3D=3D").unwrap(), "==");
        for bad in ["", "=", "=2", "=2c", "a=3", "=41"] {
            assert_eq!(
                decode_saslname(bad),
                Err(SaslError::MalformedRequest),
                "{bad}"
            );
        }
    }
}
