//! What a reload (SIGHUP, `waxwing admin reload`) may change in a running
//! server, and the configuration it then runs on.
//!
//! Both files are compared as trees keyed like the TOML file, every
//! default filled in (`Config::settings`), so a key written out with its
//! default value is no change, and each change is named as the operator
//! wrote it (`listen.c2s`, `limits.max_stanza_bytes`). A change to a key in
//! [`LIVE`] is applied; any other change is reported as needing a restart
//! and left out: the configuration the server goes on with is the new file
//! with every restart-only key put back to its running value, validated
//! again as a whole. So whatever reads a live setting through
//! `Server::live` sees either the old or the new value, and a restart-only
//! setting never changes under a running server.

use serde_json::{Map, Value};

use super::{Config, ConfigError, raw};

/// Keys a reload applies, and for what they take effect. A key covers
/// everything below it (`contact` is every role of `[contact]`).
pub const LIVE: &[(&str, &str)] = &[
    ("tls.certificates", "new TLS handshakes"),
    ("limits.max_stanza_bytes", "new connections"),
    ("limits.max_stanza_bytes_before_auth", "new connections"),
    ("limits.max_depth", "new connections"),
    ("limits.max_attributes", "new connections"),
    ("limits.auth_timeout_secs", "new connections"),
    ("limits.outbound_queue", "new sessions"),
    ("limits.outbound_burst", "new sessions and s2s routes"),
    ("limits.offline_quota", "at once"),
    ("limits.max_resources", "new sessions"),
    ("limits.max_connections_per_ip", "new connections"),
    ("limits.read_rate_bytes", "new connections"),
    ("limits.read_burst_bytes", "new connections"),
    ("limits.stanza_timeout_secs", "new connections"),
    ("limits.idle_timeout_secs", "new connections"),
    ("limits.resume_timeout_secs", "new connections"),
    ("limits.write_timeout_secs", "new connections"),
    ("limits.max_roster_items", "at once"),
    ("limits.max_pending_subscriptions", "at once"),
    ("log.level", "at once (unless RUST_LOG is set)"),
    ("admins", "at once"),
    ("contact", "at once (XEP-0157 in disco#info)"),
    ("s2s.blocked_domains", "at once, both directions"),
    (
        "pubsub.feeds",
        "at once: removed feeds stop, new ones start",
    ),
];

/// What a reload would do.
#[derive(Debug)]
pub struct Plan {
    /// The configuration to run on: the new file's live settings, the
    /// running restart-only ones.
    pub config: Config,
    /// Live keys that changed (applied).
    pub applied: Vec<String>,
    /// Keys that changed but take effect only after a restart.
    pub needs_restart: Vec<String>,
}

/// Validates `source` as fully as at start (`config check`) and works out
/// the configuration a server running on `running` goes on with. An
/// invalid file is an error and changes nothing.
pub fn plan(running: &Config, source: &str) -> Result<Plan, ConfigError> {
    let new = Config::parse(source)?;
    let mut changed = Vec::new();
    diff(
        &running.settings,
        &new.settings,
        &mut Vec::new(),
        &mut changed,
    );
    let mut applied = Vec::new();
    let mut needs_restart = Vec::new();
    let mut merged = (*new.settings).clone();
    for path in &changed {
        if is_live(path, &running.settings, &new.settings) {
            applied.push(path.join("."));
        } else {
            needs_restart.push(path.join("."));
            set(&mut merged, path, lookup(&running.settings, path).cloned());
        }
    }
    let config = if needs_restart.is_empty() {
        new
    } else {
        let unapplied = || needs_restart.join(", ");
        let raw: raw::File = serde_json::from_value(merged).map_err(|e| ConfigError {
            line: None,
            message: format!(
                "the live settings cannot be applied without {}: {e}",
                unapplied()
            ),
        })?;
        Config::from_raw(raw, "").map_err(|e| ConfigError {
            line: None,
            message: format!(
                "the new settings do not fit the running configuration without a restart (for {}): {}",
                unapplied(),
                e.message
            ),
        })?
    };
    Ok(Plan {
        config,
        applied,
        needs_restart,
    })
}

/// The paths where `old` and `new` differ: objects are compared key by
/// key, anything else (arrays included) as a whole.
fn diff(old: &Value, new: &Value, path: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    match (old, new) {
        (Value::Object(a), Value::Object(b)) => {
            let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                path.push(k.clone());
                diff(
                    a.get(k).unwrap_or(&Value::Null),
                    b.get(k).unwrap_or(&Value::Null),
                    path,
                    out,
                );
                path.pop();
            }
        }
        _ if old != new => out.push(path.clone()),
        _ => {}
    }
}

fn is_live(path: &[String], old: &Value, new: &Value) -> bool {
    // `[modules.<name>]`: a module reads its table through the live
    // configuration, but only a module that was loaded at start can; a
    // table added or removed loads or unloads a module: restart.
    if let [first, name, ..] = path
        && first == "modules"
    {
        let table = |v: &Value| v.get("modules").and_then(|m| m.get(name)).is_some();
        return path.len() > 2 && table(old) && table(new);
    }
    LIVE.iter().any(|(key, _)| {
        let key: Vec<&str> = key.split('.').collect();
        path.len() >= key.len() && path.iter().zip(&key).all(|(p, k)| p == k)
    })
}

fn lookup<'a>(root: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(root, |v, k| v.get(k))
}

/// Puts `value` at `path` (removes the key when `None`).
fn set(root: &mut Value, path: &[String], value: Option<Value>) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut at = root;
    for k in parents {
        let Value::Object(map) = at else { return };
        at = map
            .entry(k.clone())
            .or_insert_with(|| Value::Object(Map::new()));
    }
    let Value::Object(map) = at else { return };
    match value {
        Some(v) => {
            map.insert(last.clone(), v);
        }
        None => {
            map.remove(last);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
hosts = ["example.org"]
admins = ["boss@example.org"]
[listen]
c2s = ["127.0.0.1:5222"]
[limits]
max_stanza_bytes = 100000
[modules.motd]
text = "hello"
"#;

    fn plan_of(new: &str) -> Result<Plan, ConfigError> {
        plan(&Config::parse(BASE).unwrap(), new)
    }

    #[test]
    fn the_same_file_changes_nothing_and_written_out_defaults_are_no_change() {
        let p = plan_of(BASE).unwrap();
        assert!(p.applied.is_empty() && p.needs_restart.is_empty(), "{p:?}");
        let with_default = format!("{BASE}\n[log]\nlevel = \"info\"\n");
        let p = plan_of(&with_default).unwrap();
        assert!(p.applied.is_empty() && p.needs_restart.is_empty(), "{p:?}");
    }

    #[test]
    fn live_settings_are_applied() {
        let new = BASE
            .replace("100000", "50000")
            .replace(
                "\"boss@example.org\"",
                "\"boss@example.org\", \"ops@example.org\"",
            )
            .replace("hello", "good morning")
            + "\n[log]\nlevel = \"debug\"\n[contact]\nabuse = [\"mailto:abuse@example.org\"]\n[s2s]\nblocked_domains = [\"spam.example\"]\n";
        let p = plan_of(&new).unwrap();
        assert_eq!(
            p.applied,
            [
                "admins",
                "contact.abuse",
                "limits.max_stanza_bytes",
                "log.level",
                "modules.motd.text",
                "s2s.blocked_domains"
            ]
        );
        assert!(p.needs_restart.is_empty(), "{:?}", p.needs_restart);
        assert_eq!(p.config.max_stanza_bytes, 50_000);
        assert_eq!(p.config.admins.len(), 2);
        assert_eq!(p.config.log_level, "debug");
        assert_eq!(p.config.s2s.blocked_domains, ["spam.example"]);
    }

    #[test]
    fn restart_only_settings_are_named_and_keep_their_running_values() {
        let new = BASE
            .replace("127.0.0.1:5222", "127.0.0.1:5223")
            .replace("100000", "50000")
            + "\n[storage]\ndatabase = \"sqlite://other.db\"\n[log]\nformat = \"json\"\n";
        let p = plan_of(&new).unwrap();
        assert_eq!(p.applied, ["limits.max_stanza_bytes"]);
        assert_eq!(
            p.needs_restart,
            ["listen.c2s", "log.format", "storage.database"]
        );
        // The live change is in, the others are not.
        assert_eq!(p.config.max_stanza_bytes, 50_000);
        assert_eq!(p.config.c2s, ["127.0.0.1:5222".parse().unwrap()]);
        assert!(!p.config.log_json);
        assert_eq!(
            p.config.database_url,
            Config::parse(BASE).unwrap().database_url
        );
        // Running on the result and reloading the same file again still
        // reports what is waiting for a restart, and applies nothing new.
        let again = plan(&p.config, &new).unwrap();
        assert!(again.applied.is_empty(), "{:?}", again.applied);
        assert_eq!(again.needs_restart, p.needs_restart);
    }

    #[test]
    fn hosts_and_module_tables_added_or_removed_need_a_restart() {
        let new = BASE
            .replace("[\"example.org\"]", "[\"example.org\", \"example.net\"]")
            .replace("[modules.motd]\ntext = \"hello\"\n", "");
        let p = plan_of(&new).unwrap();
        assert_eq!(p.needs_restart, ["hosts", "modules.motd"]);
        assert_eq!(p.config.hosts, ["example.org"]);
        assert!(p.config.module_tables.contains_key("motd"));
    }

    #[test]
    fn an_invalid_file_is_refused_with_its_line() {
        let bad = BASE.replace("max_stanza_bytes = 100000", "max_stanza_bytes = 0");
        let e = plan_of(&bad).unwrap_err();
        assert!(e.line.is_some(), "{e}");
        let e = plan_of("hosts = [\"example.org\"]\nnot_a_key = 1\n").unwrap_err();
        assert!(e.to_string().contains("not_a_key"), "{e}");
    }

    #[test]
    fn live_settings_that_need_a_restart_only_setting_are_refused() {
        // A certificate (live) for a host that is only being added (restart).
        let new = BASE.replace("[\"example.org\"]", "[\"example.org\", \"example.net\"]")
            + "\n[[tls.certificates]]\nhost = \"example.net\"\ncert = \"/c\"\nkey = \"/k\"\n";
        let e = plan_of(&new).unwrap_err();
        assert!(e.message.contains("without a restart (for hosts)"), "{e}");
    }
}
