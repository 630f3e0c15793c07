//! `waxwing cert status`: each name's certificate, from the running
//! server's admin API when a token is given (what it serves now, ACME
//! names included), else from the files (what it would load).

use anyhow::bail;
use clap::Subcommand;
use serde_json::Value;
use waxwing_core::Config;

use crate::admin::Target;

#[derive(Subcommand)]
pub enum Action {
    /// Name, source, issuer, expiry and files of every certificate.
    Status {
        /// Print JSON instead of one line per name.
        #[arg(long)]
        json: bool,
    },
}

pub async fn run(config: &Config, target: Target, action: Action) -> anyhow::Result<()> {
    let Action::Status { json } = action;
    let (list, from) = if target.token.is_some() {
        let v = crate::admin::call(config, &target, "GET", "/admin/api/certificates", None).await?;
        let list = v
            .get("certificates")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        (list, "the running server")
    } else {
        let mut list = Vec::new();
        let mut failed = 0;
        for r in waxwing_core::tls::status_from_files(config) {
            match r {
                Ok(c) => list.push(waxwing_core::admin::certificate_json(&c)),
                Err((name, why)) => {
                    failed += 1;
                    eprintln!("{name}: {why}");
                }
            }
        }
        if failed > 0 && list.is_empty() {
            bail!("no certificate could be read");
        }
        (
            list,
            "the files (give --token for what the running server serves)",
        )
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(());
    }
    eprintln!("from {from}:");
    let now = std::time::SystemTime::now();
    for c in &list {
        let s = |k: &str| c.get(k).and_then(Value::as_str).unwrap_or("?").to_string();
        let left = waxwing_proto::datetime::parse(&s("not_after"))
            .map(|t| match t.duration_since(now) {
                Ok(d) => format!("{} days left", d.as_secs() / 86_400),
                Err(_) => "EXPIRED".to_string(),
            })
            .unwrap_or_default();
        let names = c
            .get("names")
            .and_then(Value::as_array)
            .map(|n| {
                n.iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .unwrap_or_default();
        println!(
            "{}\t{}\tnot after {} ({left})\tissuer {}\tnames {names}\t{}\tsha256 {}",
            s("name"),
            s("source"),
            s("not_after"),
            s("issuer"),
            s("cert"),
            s("sha256"),
        );
    }
    Ok(())
}
