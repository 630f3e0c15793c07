//! SASL (RFC 6120 §6) for both framings, plain and XEP-0388: PLAIN and
//! SCRAM over the sans-IO mechanisms of `waxwing_proto::sasl`, failure
//! throttling, and the constant-cost answer for unknown accounts.

use waxwing_proto::jid::{BareJid, Jid};
use waxwing_proto::ns;
use waxwing_proto::sasl::{self, Mechanism, SaslError, ScramHash, ScramSecret, ScramServer};
use waxwing_proto::stanza::StreamCondition;
use waxwing_proto::xml::Element;

use super::link::ClientTransport;
use super::{Conn, End, full_limits, sasl2, stream_error};
use crate::{credentials, random_id};

impl Conn {
    pub(super) async fn sasl_failure(&mut self, condition: &str) -> Result<(), End> {
        let failure =
            Element::new("failure", self.sasl_ns()).with_child(Element::new(condition, ns::SASL));
        self.send(&failure).await
    }

    /// One SASL exchange (either framing). `Some(additional data)` on
    /// success, with `self.neg.user` set; `None` after a failure the client may
    /// retry; Err once too many failures piled up.
    pub(super) async fn authenticate(
        &mut self,
        auth: &Element,
    ) -> Result<Option<Option<Vec<u8>>>, End> {
        let ip = self.peer.ip();
        let server = self.server.clone();
        let throttle = &server.auth_throttle;
        self.neg.attempted = None;
        // A FAST token is 32 random bytes, bound to one client: presenting
        // a valid one is not guessing, so the owner gets in even from a
        // throttled network (a failed one still counts as a failure).
        let fast = self.neg.sasl2 && auth.attr("mechanism").is_some_and(|m| m.starts_with("HT-"));
        let outcome = if !fast && throttle.blocked(ip, None) {
            Err(SaslError::TemporaryAuthFailure)
        } else {
            let exchange = if fast {
                self.fast_exchange(auth).await?
            } else {
                self.sasl_exchange(auth).await?
            };
            match exchange {
                // A throttled (account, address prefix) stays throttled even
                // for the right password: otherwise guessing would not slow
                // down. Other prefixes are unaffected.
                Ok((user, _)) if !fast && throttle.blocked(ip, Some(&user)) => {
                    Err(SaslError::TemporaryAuthFailure)
                }
                other => other,
            }
        };
        match outcome {
            Ok((user, additional)) => {
                server.metrics.auth(auth.attr("mechanism"), true);
                throttle.record_success(ip, &user);
                self.link.set_limits(full_limits(&self.config));
                tracing::info!(%user, "authenticated");
                self.neg.user = Some(user);
                Ok(Some(additional))
            }
            Err(e) => {
                self.sasl_failure(e.condition()).await?;
                if matches!(e, SaslError::Aborted) {
                    return Ok(None);
                }
                tracing::info!(user = ?self.neg.attempted.as_ref().map(|u| u.to_string()), condition = e.condition(), "authentication failed");
                server.metrics.auth(auth.attr("mechanism"), false);
                throttle.record_failure(ip, self.neg.attempted.as_ref());
                self.neg.auth_failures += 1;
                if self.neg.auth_failures >= self.server.config.max_auth_failures {
                    return Err(stream_error(
                        StreamCondition::PolicyViolation,
                        "too many failed authentication attempts",
                    ));
                }
                Ok(None)
            }
        }
    }

    /// Reads the next SASL response; `<abort/>` and anything else end the exchange.
    pub(super) async fn sasl_response(&mut self) -> Result<Result<Vec<u8>, SaslError>, End> {
        let el = self.next_element().await?;
        if el.is("abort", self.sasl_ns()) {
            return Ok(Err(SaslError::Aborted));
        }
        if !el.is("response", self.sasl_ns()) {
            return Err(stream_error(
                StreamCondition::NotAuthorized,
                "SASL exchange in progress",
            ));
        }
        Ok(sasl::decode_payload(&el.text()))
    }

    pub(super) fn sasl_ns(&self) -> &'static str {
        if self.neg.sasl2 { sasl2::NS } else { ns::SASL }
    }

    pub(super) async fn challenge(&mut self, data: &[u8]) -> Result<(), End> {
        // SASL2 has no "=" for empty data (XEP-0388 §2.1): empty is empty.
        let text = if self.neg.sasl2 && data.is_empty() {
            String::new()
        } else {
            sasl::encode_payload(data)
        };
        let el = Element::new("challenge", self.sasl_ns()).with_text(text);
        self.send(&el).await
    }

    /// Ok((user, additional data for `<success/>`)) when the exchange succeeded.
    pub(super) async fn sasl_exchange(
        &mut self,
        auth: &Element,
    ) -> Result<Result<(BareJid, Option<Vec<u8>>), SaslError>, End> {
        let offered = self.mechanisms_offered();
        let Some(mech) = auth
            .attr("mechanism")
            .filter(|m| offered.contains(m))
            .and_then(Mechanism::from_name)
        else {
            return Ok(Err(SaslError::InvalidMechanism));
        };
        let text = if self.neg.sasl2 {
            auth.child("initial-response", sasl2::NS)
                .map(|r| r.text())
                .unwrap_or_default()
        } else {
            auth.text()
        };
        if mech == Mechanism::DigestMd5 {
            // RFC 2831: the server speaks first; there is no initial response.
            if !matches!(text.trim(), "" | "=") {
                return Ok(Err(SaslError::MalformedRequest));
            }
            let host = self.host.clone().unwrap_or_default();
            return Ok(self.digest_md5(&host).await?.map(|u| (u, None)));
        }
        let initial = if text.trim().is_empty() {
            // No initial response: send an empty challenge and wait (RFC 6120 §6.4.2).
            self.challenge(&[]).await?;
            match self.sasl_response().await? {
                Ok(data) => data,
                Err(e) => return Ok(Err(e)),
            }
        } else {
            match sasl::decode_payload(&text) {
                Ok(d) => d,
                Err(e) => return Ok(Err(e)),
            }
        };
        let host = self.host.clone().unwrap_or_default();
        match mech {
            Mechanism::Plain => Ok(self.plain(&initial, &host).await.map(|u| (u, None))),
            Mechanism::Anonymous => {
                Ok(
                    crate::auth::anonymous::login(&self.server, &host, self.peer.ip(), &initial)
                        .await
                        .map(|u| (u, None)),
                )
            }
            Mechanism::External => {
                let cert = self.link.tcp().and_then(|t| t.peer_certificate());
                Ok(
                    crate::auth::external::login(&self.server, &host, cert, &initial)
                        .await
                        .map(|u| (u, None)),
                )
            }
            Mechanism::Scram { hash, plus } => self.scram(hash, plus, &initial, &host).await,
            // Handled above: it has no initial response.
            Mechanism::DigestMd5 => Ok(Err(SaslError::MalformedRequest)),
            #[cfg(feature = "gssapi")]
            Mechanism::Gssapi => Ok(self.gssapi(initial, &host).await?.map(|u| (u, None))),
            // Never offered: `config check` refuses GSSAPI in such a build.
            #[cfg(not(feature = "gssapi"))]
            Mechanism::Gssapi => Ok(Err(SaslError::InvalidMechanism)),
        }
    }

    /// RFC 2831 DIGEST-MD5 (historic, only where `legacy_digest_md5` is
    /// on): challenge, digest-response checked against the account's HA1,
    /// `rspauth` as a last challenge that the client answers empty.
    async fn digest_md5(&mut self, host: &str) -> Result<Result<BareJid, SaslError>, End> {
        use waxwing_proto::sasl::DigestMd5Server;
        // 2 × 96 random bits: fresh for every exchange, never reused.
        let nonce = format!("{}{}", random_id(), random_id());
        let mut mech = DigestMd5Server::new(host, &nonce);
        self.challenge(&mech.challenge()).await?;
        let msg = match self.sasl_response().await? {
            Ok(m) => m,
            Err(e) => return Ok(Err(e)),
        };
        let response = match mech.handle_response(&msg) {
            Ok(r) => r,
            Err(e) => return Ok(Err(e)),
        };
        let Ok(user) = BareJid::new(Some(&response.username), host) else {
            return Ok(Err(SaslError::NotAuthorized));
        };
        self.neg.attempted = Some(user.clone());
        let secret = match self.server.stores.accounts.secrets(&user).await {
            Ok(list) => list
                .unwrap_or_default()
                .into_iter()
                .find(|s| s.mechanism == credentials::DIGEST_MD5 && s.salt == host.as_bytes()),
            Err(e) => {
                tracing::error!(error = %e, "credential lookup failed");
                return Ok(Err(SaslError::TemporaryAuthFailure));
            }
        };
        let Some(secret) = secret else {
            // No such account, or its password was set before
            // legacy_digest_md5 was turned on: never derived otherwise.
            tracing::info!(%user, "DIGEST-MD5: the account has no digest secret");
            return Ok(Err(SaslError::NotAuthorized));
        };
        let rspauth = match mech.verify(&response, &secret.stored_key) {
            Ok(r) => r,
            Err(e) => return Ok(Err(e)),
        };
        if let Err(e) = check_authzid(response.authzid.as_deref(), &user) {
            return Ok(Err(e));
        }
        self.challenge(&rspauth).await?;
        match self.sasl_response().await? {
            Ok(empty) if empty.is_empty() => Ok(Ok(user)),
            Ok(_) => Ok(Err(SaslError::MalformedRequest)),
            Err(e) => Ok(Err(e)),
        }
    }

    /// RFC 4752: establish the Kerberos context (as many challenges as the
    /// GSS library needs), map its principal to an account of `host`, then
    /// the wrapped security-layer round trip, which also carries the
    /// client's authorization identity.
    #[cfg(feature = "gssapi")]
    async fn gssapi(
        &mut self,
        initial: Vec<u8>,
        host: &str,
    ) -> Result<Result<BareJid, SaslError>, End> {
        use crate::auth::gssapi::{Exchange, Step, account_usable, map_principal};
        /// Kerberos needs one or two tokens each way; more is not a client.
        const MAX_ROUNDS: usize = 4;
        let Some(cfg) = self
            .server
            .config
            .auth
            .host(host)
            .and_then(|h| h.gssapi.clone())
        else {
            return Ok(Err(SaslError::InvalidMechanism));
        };
        if !sasl::is_krb5_initial_token(&initial) {
            return Ok(Err(SaslError::MalformedRequest));
        }
        // The GSS library reads files (keytab, replay cache): blocking pool.
        let started = {
            let cfg = cfg.clone();
            tokio::task::spawn_blocking(move || Exchange::start(&cfg)).await
        };
        let mut exchange = match started {
            Ok(Ok(x)) => x,
            Ok(Err(e)) => {
                tracing::error!(%host, error = %e, "GSSAPI unavailable: check [auth.gssapi] keytab");
                return Ok(Err(SaslError::TemporaryAuthFailure));
            }
            Err(_) => return Ok(Err(SaslError::TemporaryAuthFailure)),
        };
        let mut token = initial;
        let mut rounds = 0;
        loop {
            rounds += 1;
            if rounds > MAX_ROUNDS {
                return Ok(Err(SaslError::MalformedRequest));
            }
            let Ok((x, step)) = tokio::task::spawn_blocking(move || {
                let step = exchange.step(&token);
                (exchange, step)
            })
            .await
            else {
                return Ok(Err(SaslError::TemporaryAuthFailure));
            };
            exchange = x;
            match step {
                Ok(Step::Continue(out)) => {
                    self.challenge(&out).await?;
                    token = match self.sasl_response().await? {
                        Ok(t) => t,
                        Err(e) => return Ok(Err(e)),
                    };
                }
                Ok(Step::Done(last)) => {
                    if let Some(out) = last {
                        // Mutual authentication: the client answers empty.
                        self.challenge(&out).await?;
                        match self.sasl_response().await? {
                            Ok(t) if t.is_empty() => {}
                            Ok(_) => return Ok(Err(SaslError::MalformedRequest)),
                            Err(e) => return Ok(Err(e)),
                        }
                    }
                    break;
                }
                Err((condition, e)) => {
                    let log = format!("GSSAPI context not established: {e}");
                    if condition == SaslError::TemporaryAuthFailure {
                        tracing::error!(%host, "{log} (is the keytab current?)");
                    } else {
                        tracing::info!(%host, "{log}");
                    }
                    return Ok(Err(condition));
                }
            }
        }
        let principal = match exchange.principal() {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(error = %e, "GSSAPI: no principal");
                return Ok(Err(SaslError::TemporaryAuthFailure));
            }
        };
        let Some(user) = map_principal(&cfg, host, &principal) else {
            tracing::info!(%principal, %host, "GSSAPI: the principal is no account of this host");
            return Ok(Err(SaslError::NotAuthorized));
        };
        self.neg.attempted = Some(user.clone());
        // RFC 4752 §3.1: the security-layer offer, wrapped without
        // confidentiality; the client's choice comes back wrapped too.
        let offer = match exchange.wrap(&sasl::security_layer_offer()) {
            Ok(o) => o,
            Err(e) => {
                tracing::error!(error = %e, "GSSAPI");
                return Ok(Err(SaslError::TemporaryAuthFailure));
            }
        };
        self.challenge(&offer).await?;
        let reply = match self.sasl_response().await? {
            Ok(r) => r,
            Err(e) => return Ok(Err(e)),
        };
        let choice = match exchange.unwrap(&reply) {
            Ok(c) => c,
            Err(e) => {
                tracing::info!(%user, error = %e, "GSSAPI: bad security-layer answer");
                return Ok(Err(SaslError::NotAuthorized));
            }
        };
        let authzid = match sasl::parse_security_layer_choice(&choice) {
            Ok(a) => a,
            Err(e) => return Ok(Err(e)),
        };
        if let Err(e) = check_authzid(authzid.as_deref(), &user) {
            tracing::info!(%user, ?authzid, "GSSAPI: authorization identity refused");
            return Ok(Err(e));
        }
        Ok(account_usable(&self.server, &user).await.map(|()| user))
    }

    /// The mechanisms for this stream's host, on this listener and
    /// connection (`auth::Authenticator::offered`).
    pub(super) fn mechanisms_offered(&self) -> Vec<&'static str> {
        let tcp = self.link.tcp();
        crate::auth::Authenticator::offered(
            &self.server.config,
            self.host.as_deref(),
            tcp.and_then(|t| t.local_addr()),
            self.link.is_secure(),
            self.link.channel_binding_types(),
            tcp.and_then(|t| t.peer_certificate()).is_some(),
        )
    }

    pub(super) async fn plain(&mut self, data: &[u8], host: &str) -> Result<BareJid, SaslError> {
        let creds = sasl::parse_plain(data)?;
        let user =
            BareJid::new(Some(&creds.authcid), host).map_err(|_| SaslError::NotAuthorized)?;
        self.neg.attempted = Some(user.clone());
        check_authzid(creds.authzid.as_deref(), &user)?;
        let server = self.server.clone();
        if let Some(verdict) = server
            .auth
            .external_plain(&server, &user, &creds.password)
            .await
        {
            return verdict.map(|()| user);
        }
        let secrets = self.lookup(&user).await?;
        let secret = secrets
            .iter()
            .find(|s| s.hash == ScramHash::Sha256)
            .or(secrets.first())
            .cloned();
        // An unknown account costs the same derivation as a known one, so
        // that the time to answer does not say which accounts exist.
        let (secret, exists) = match secret {
            Some(s) => (s, true),
            None => (
                credentials::decoy_secret(
                    &credentials::host_fake_salt_key(&self.server.fake_salt_key, host),
                    user.local().unwrap_or_default(),
                    self.server.config.scram_iterations,
                ),
                false,
            ),
        };
        // PBKDF2 takes milliseconds: keep it off the threads that serve streams.
        let password = creds.password;
        let ok = tokio::task::spawn_blocking(move || secret.verify_password(&password))
            .await
            .unwrap_or(false);
        if ok && exists {
            Ok(user)
        } else {
            Err(SaslError::NotAuthorized)
        }
    }

    pub(super) async fn lookup(&self, user: &BareJid) -> Result<Vec<ScramSecret>, SaslError> {
        match self.server.stores.accounts.secrets(user).await {
            Ok(Some(list)) => Ok(list.iter().filter_map(credentials::from_stored).collect()),
            Ok(None) => Ok(Vec::new()),
            Err(e) => {
                tracing::error!(error = %e, "credential lookup failed");
                Err(SaslError::TemporaryAuthFailure)
            }
        }
    }

    pub(super) async fn scram(
        &mut self,
        hash: ScramHash,
        plus: bool,
        first: &[u8],
        host: &str,
    ) -> Result<Result<(BareJid, Option<Vec<u8>>), SaslError>, End> {
        // RFC 5802 §6: a client's "y" (binding supported by it, not by us)
        // is a downgrade only when we advertised -PLUS; a host or listener
        // whose list leaves -PLUS out must accept it.
        let cb = if !self
            .mechanisms_offered()
            .iter()
            .any(|m| m.ends_with("-PLUS"))
        {
            waxwing_proto::sasl::ChannelBindingData::default()
        } else if first.starts_with(b"p") {
            // The client binds (GS2 flag "p=…"): the data itself.
            self.link.channel_binding().clone()
        } else {
            // "n" or "y": only whether we support binding matters (a "y"
            // is a downgrade then), which the types say without making
            // the exporter (a key-schedule expansion per login). The empty
            // data stands for "available" and is never read: only a "p="
            // flag (handled above) puts binding data into the proof.
            let types = self.link.channel_binding_types();
            waxwing_proto::sasl::ChannelBindingData {
                tls_exporter: types.tls_exporter.then(Vec::new),
                tls_server_end_point: types.tls_server_end_point.then(Vec::new),
            }
        };
        let mut scram = ScramServer::new(hash, plus, cb, random_id());
        let client_first = match scram.handle_client_first(first) {
            Ok(cf) => cf,
            Err(e) => return Ok(Err(e)),
        };
        let user = BareJid::new(Some(&client_first.username), host).ok();
        self.neg.attempted = user.clone();
        let secret = match &user {
            Some(u) => match self.lookup(u).await {
                Ok(list) => list.into_iter().find(|s| s.hash == hash),
                Err(e) => return Ok(Err(e)),
            },
            None => None,
        };
        // The host's fake-salt key salts only an unknown account's answer
        // (a known one has its own salt): derived only then, which says
        // nothing an unknown account's store read (never cached) does not.
        let fake_key = match secret {
            None => credentials::host_fake_salt_key(&self.server.fake_salt_key, host),
            Some(_) => [0; 32],
        };
        let server_first = scram.server_first(
            secret.as_ref(),
            &fake_key,
            self.server.config.scram_iterations,
        );
        self.challenge(&server_first).await?;
        let client_final = match self.sasl_response().await? {
            Ok(data) => data,
            Err(e) => return Ok(Err(e)),
        };
        let server_final = match scram.handle_client_final(&client_final) {
            Ok(v) => v,
            Err(e) => return Ok(Err(e)),
        };
        let (Some(user), Some(_)) = (user, secret) else {
            return Ok(Err(SaslError::NotAuthorized));
        };
        if let Err(e) = check_authzid(client_first.authzid.as_deref(), &user) {
            return Ok(Err(e));
        }
        Ok(Ok((user, Some(server_final))))
    }
}

fn check_authzid(authzid: Option<&str>, user: &BareJid) -> Result<(), SaslError> {
    match authzid {
        None | Some("") => Ok(()),
        Some(z) => match Jid::parse(z) {
            Ok(j) if j.bare() == user => Ok(()),
            _ => Err(SaslError::InvalidAuthzid),
        },
    }
}
