//! Turns the JSON lines of a run into the markdown table of `bench/results/`.

use std::collections::HashMap;
use std::fmt::Write as _;

use crate::measure::parse_flat_json;

/// Columns, in order: (system key in the records, heading).
const SYSTEMS: &[(&str, &str)] = &[
    ("waxwing", "Waxwing"),
    ("prosody", "Prosody"),
    ("ejabberd", "ejabberd"),
    ("floor", "floor"),
];

/// Rows: (scenario, field, label). Lower-is-better metrics say so.
const ROWS: &[(&str, &str, &str)] = &[
    (
        "login",
        "figure",
        "logins/s, cold (each account's first since start)",
    ),
    (
        "login",
        "per_server_cpu_s",
        "logins per server CPU-s, cold (first since start)",
    ),
    ("login", "_cpu", "server CPU-s / generator CPU share"),
    (
        "login-again",
        "figure",
        "logins/s, returning (each account's second)",
    ),
    (
        "login-again",
        "per_server_cpu_s",
        "logins per server CPU-s, returning (second login)",
    ),
    ("login-again", "_cpu", "server CPU-s / generator CPU share"),
    (
        "idle",
        "figure",
        "KiB per idle TLS session (lower is better)",
    ),
    ("idle", "_cpu", "server CPU-s / generator CPU share"),
    (
        "idle-plain",
        "figure",
        "KiB per idle plain-TCP session (lower is better)",
    ),
    ("idle-plain", "_cpu", "server CPU-s / generator CPU share"),
    (
        "idle-ws",
        "figure",
        "KiB per idle WebSocket session, plain ws:// (lower is better)",
    ),
    ("idle-ws", "_cpu", "server CPU-s / generator CPU share"),
    (
        "roster-login",
        "figure",
        "roster logins/s (contacts all online)",
    ),
    (
        "roster-login",
        "per_server_cpu_s",
        "roster logins per server CPU-s",
    ),
    (
        "roster-login",
        "presences_per_server_cpu_s",
        "presences delivered per server CPU-s",
    ),
    ("roster-login", "_cpu", "server CPU-s / generator CPU share"),
    ("chat", "figure", "1:1 msgs/s delivered, saturation"),
    (
        "chat",
        "per_server_cpu_s",
        "1:1 msgs per server CPU-s, saturation",
    ),
    (
        "chat",
        "server_cpu_us_per",
        "server CPU µs per 1:1 msg, saturation (lower is better)",
    ),
    ("chat", "p99_ms", "p99 ms at saturation (lower is better)"),
    ("chat", "_cpu", "server CPU-s / generator CPU share"),
    ("chat-rate", "figure", "1:1 msgs/s delivered, fixed rate"),
    (
        "chat-rate",
        "per_server_cpu_s",
        "1:1 msgs per server CPU-s, fixed rate",
    ),
    (
        "chat-rate",
        "p50_ms",
        "p50 ms at fixed rate (lower is better)",
    ),
    (
        "chat-rate",
        "p99_ms",
        "p99 ms at fixed rate (lower is better)",
    ),
    (
        "chat-rate",
        "max_ms",
        "max ms at fixed rate (lower is better)",
    ),
    ("chat-rate", "_cpu", "server CPU-s / generator CPU share"),
    ("churn", "per_server_cpu_s", "churn logins per server CPU-s"),
    (
        "churn",
        "rss_growth_kb",
        "RSS growth over the first churn round, KiB (lower is better)",
    ),
    (
        "churn",
        "rss_growth_second_kb",
        "RSS growth over a second churn round, KiB (lower is better)",
    ),
    ("churn", "_cpu", "server CPU-s / generator CPU share"),
    (
        "chat-after-churn",
        "per_server_cpu_s",
        "1:1 msgs per server CPU-s after churn",
    ),
    (
        "chat-after-churn",
        "p99_ms",
        "p99 ms after churn (lower is better)",
    ),
    (
        "chat-after-churn",
        "_cpu",
        "server CPU-s / generator CPU share",
    ),
    ("muc", "figure", "MUC deliveries/s"),
    ("muc", "per_server_cpu_s", "MUC deliveries per server CPU-s"),
    (
        "muc",
        "server_cpu_us_per",
        "server CPU µs per MUC delivery (lower is better)",
    ),
    ("muc", "_cpu", "server CPU-s / generator CPU share"),
];

/// Rows of the other room sizes (`muc-<occupants>` records, e.g. from
/// `MUC_SIZES`), smallest room first, so the cost per delivery can be
/// read down one column.
fn muc_size_rows(scenarios: &[String]) -> Vec<(String, &'static str, String)> {
    let mut sizes: Vec<(u64, &String)> = scenarios
        .iter()
        .filter_map(|s| Some((s.strip_prefix("muc-")?.parse().ok()?, s)))
        .collect();
    sizes.sort();
    sizes.dedup();
    let mut rows = Vec::new();
    for (n, s) in sizes {
        rows.push((
            s.clone(),
            "figure",
            format!("MUC deliveries/s, {n} occupants"),
        ));
        rows.push((
            s.clone(),
            "per_server_cpu_s",
            format!("MUC deliveries per server CPU-s, {n} occupants"),
        ));
        rows.push((
            s.clone(),
            "server_cpu_us_per",
            format!("server CPU µs per MUC delivery, {n} occupants (lower is better)"),
        ));
        rows.push((
            s.clone(),
            "_cpu",
            "server CPU-s / generator CPU share".to_string(),
        ));
    }
    rows
}

type Rec = HashMap<String, String>;

/// Renders every record found in `jsonl` (all systems, both variants).
pub fn render(jsonl: &str, title: &str, params: &str) -> String {
    let mut by_key: HashMap<(String, String, String), Rec> = HashMap::new();
    let mut variants: Vec<String> = Vec::new();
    let mut scenarios: Vec<String> = Vec::new();
    for line in jsonl.lines().filter(|l| l.trim_start().starts_with('{')) {
        let rec: Rec = parse_flat_json(line).into_iter().collect();
        let get = |k: &str| rec.get(k).cloned().unwrap_or_default();
        let variant = get("variant");
        if !variants.contains(&variant) {
            variants.push(variant.clone());
        }
        let scenario = get("scenario");
        if !scenarios.contains(&scenario) {
            scenarios.push(scenario);
        }
        by_key.insert((get("system"), variant, get("scenario")), rec);
    }
    let mut out = String::new();
    let _ = writeln!(out, "# {title}\n\n{params}\n");
    out.push_str("| Scenario | Variant | Metric |");
    for (_, h) in SYSTEMS {
        let _ = write!(out, " {h} |");
    }
    out.push_str(" Waxwing ÷ Prosody | Waxwing ÷ ejabberd | Waxwing ÷ floor |\n");
    out.push_str("|---|---|---|");
    for _ in SYSTEMS {
        out.push_str("---:|");
    }
    out.push_str("---:|---:|---:|\n");
    let mut notes: Vec<String> = Vec::new();
    let rows: Vec<(String, &str, String)> = ROWS
        .iter()
        .map(|(s, f, l)| (s.to_string(), *f, l.to_string()))
        .chain(muc_size_rows(&scenarios))
        .collect();
    for variant in &variants {
        for (scenario, field, label) in &rows {
            let field = *field;
            let recs: Vec<Option<&Rec>> = SYSTEMS
                .iter()
                .map(|(s, _)| by_key.get(&(s.to_string(), variant.clone(), scenario.clone())))
                .collect();
            if recs.iter().all(Option::is_none) {
                continue;
            }
            let _ = write!(out, "| {scenario} | {variant} | {label} |");
            let mut values = Vec::new();
            for (rec, (system, _)) in recs.iter().zip(SYSTEMS) {
                let cell = match rec {
                    None => {
                        values.push(None);
                        "–".to_string()
                    }
                    Some(r) if field == "_cpu" => {
                        values.push(None);
                        let num = |k: &str| r.get(k).and_then(|v| v.parse::<f64>().ok());
                        match (num("server_cpu_s"), num("gen_cpu_share")) {
                            (Some(s), Some(g)) => format!("{} s / {:.0} %", fmt(s), g * 100.0),
                            _ => "–".to_string(),
                        }
                    }
                    Some(r) => {
                        let v = r.get(field).and_then(|v| v.parse::<f64>().ok());
                        values.push(v);
                        let mut cell = match (v, r.get("status").map(String::as_str)) {
                            (_, Some("not supported")) => "not supported".to_string(),
                            (Some(v), _) => fmt(v),
                            (None, Some(s)) => s.to_string(),
                            (None, None) => "n/a".to_string(),
                        };
                        if r.get("gen_bound").map(String::as_str) == Some("yes") {
                            cell.push_str(" †");
                        }
                        if let Some(f) = r
                            .get("failed")
                            .and_then(|f| f.parse::<f64>().ok())
                            .filter(|f| *f > 0.0)
                        {
                            cell.push_str(&format!(" ({f} failed)"));
                            let err = r.get("first_error").cloned().unwrap_or_default();
                            let note = format!(
                                "{system}/{variant}/{scenario}: {f} failed; first error: {err}"
                            );
                            if !notes.contains(&note) {
                                notes.push(note);
                            }
                        }
                        if let Some(s) = r.get("status").filter(|s| s.as_str() == "incomplete") {
                            cell.push_str(&format!(" ({s})"));
                        }
                        cell
                    }
                };
                let _ = write!(out, " {cell} |");
            }
            let wx = values[0];
            for anchor in &values[1..] {
                let ratio = match (wx, anchor) {
                    (Some(a), Some(b)) if *b != 0.0 => format!("{:.2}×", a / b),
                    _ => "–".to_string(),
                };
                let _ = write!(out, " {ratio} |");
            }
            out.push('\n');
        }
    }
    out.push_str("\n† the load generator, not the server, was the bottleneck (it saturated its cores, or the machine with more CPU than the server).\n");
    out.push_str("Ratios are Waxwing's figure divided by the other system's: above 1 is better for throughput rows, below 1 is better for rows marked \"lower is better\".\n");
    if !notes.is_empty() {
        out.push_str("\nFailures:\n\n");
        for n in notes {
            let _ = writeln!(out, "- {n}");
        }
    }
    out
}

fn fmt(v: f64) -> String {
    let a = v.abs();
    if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn other_room_sizes_get_their_own_rows_smallest_first() {
        let jsonl = [
            r#"{"scenario":"muc-1000","system":"waxwing","variant":"shared","per_server_cpu_s":200000,"server_cpu_us_per":5}"#,
            r#"{"scenario":"muc","system":"waxwing","variant":"shared","per_server_cpu_s":250000,"server_cpu_us_per":4}"#,
            r#"{"scenario":"muc-10","system":"waxwing","variant":"shared","per_server_cpu_s":100000,"server_cpu_us_per":10}"#,
            r#"{"scenario":"muc-10","system":"ejabberd","variant":"shared","per_server_cpu_s":10000,"server_cpu_us_per":100}"#,
        ]
        .join("\n");
        let out = render(&jsonl, "t", "");
        let row = |label: &str| {
            out.lines()
                .position(|l| l.contains(label))
                .unwrap_or_else(|| panic!("no row {label:?} in\n{out}"))
        };
        let ten = row("per MUC delivery, 10 occupants");
        let thousand = row("per MUC delivery, 1000 occupants");
        assert!(row("per MUC delivery (lower") < ten && ten < thousand);
        let line = out.lines().nth(ten).unwrap();
        assert!(
            line.contains("| 10.0 |") && line.contains("| 100 |"),
            "{line}"
        );
        assert!(line.contains("0.10×"), "ratio to ejabberd: {line}");
    }
}
