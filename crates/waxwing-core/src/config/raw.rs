//! Serde mirror of the TOML file. Every field has the documented default;
//! unknown keys are errors so that a typo never silently falls back to a
//! default (ejabberd and Prosody both warn; we refuse).

use serde::Deserialize;

/// The whole configuration file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct File {
    pub data_dir: String,
    pub hosts: Vec<String>,
    pub admins: Vec<String>,
    pub listen: Listen,
    pub tls: Tls,
    pub storage: Storage,
    pub auth: Auth,
    pub registration: Registration,
    pub limits: Limits,
    pub log: Log,
}

impl Default for File {
    fn default() -> Self {
        File {
            data_dir: "./data".into(),
            hosts: vec!["localhost".into()],
            admins: Vec::new(),
            listen: Listen::default(),
            tls: Tls::default(),
            storage: Storage::default(),
            auth: Auth::default(),
            registration: Registration::default(),
            limits: Limits::default(),
            log: Log::default(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Listen {
    pub c2s: Vec<String>,
    pub c2s_direct_tls: Vec<String>,
}

impl Default for Listen {
    fn default() -> Self {
        Listen {
            c2s: vec!["[::]:5222".into()],
            c2s_direct_tls: vec!["[::]:5223".into()],
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Tls {
    pub require_encryption: bool,
    pub certificates: Vec<Certificate>,
}

impl Default for Tls {
    fn default() -> Self {
        Tls {
            require_encryption: true,
            certificates: Vec::new(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Certificate {
    pub host: String,
    pub cert: String,
    pub key: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Storage {
    pub database: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Auth {
    pub scram_iterations: u32,
    pub allow_plain: bool,
    pub max_failures_per_stream: u32,
    pub max_failures_per_ip: u32,
    pub max_failures_per_account: u32,
    pub failure_window_secs: u64,
}

impl Default for Auth {
    fn default() -> Self {
        Auth {
            scram_iterations: 4096,
            allow_plain: true,
            max_failures_per_stream: 3,
            max_failures_per_ip: 20,
            max_failures_per_account: 10,
            failure_window_secs: 600,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Registration {
    pub open: bool,
    pub min_password_length: usize,
}

impl Default for Registration {
    fn default() -> Self {
        Registration {
            open: false,
            min_password_length: 8,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    pub max_stanza_bytes: usize,
    pub max_depth: usize,
    pub max_attributes: usize,
    pub auth_timeout_secs: u64,
    pub outbound_queue: usize,
    pub offline_quota: u32,
    pub max_resources: usize,
    pub max_connections_per_ip: u32,
    pub read_rate_bytes: u64,
    pub read_burst_bytes: u64,
    pub stanza_timeout_secs: u64,
    pub idle_timeout_secs: u64,
    pub resume_timeout_secs: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_stanza_bytes: 262_144,
            max_depth: 32,
            max_attributes: 64,
            auth_timeout_secs: 60,
            outbound_queue: 1024,
            offline_quota: 1000,
            max_resources: 32,
            max_connections_per_ip: 64,
            read_rate_bytes: 65_536,
            read_burst_bytes: 1_048_576,
            stanza_timeout_secs: 60,
            idle_timeout_secs: 1800,
            resume_timeout_secs: 300,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Log {
    pub level: String,
    pub format: String,
}

impl Default for Log {
    fn default() -> Self {
        Log {
            level: "info".into(),
            format: "text".into(),
        }
    }
}
