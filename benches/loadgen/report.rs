//! Printing: one run's figures, and the comparison table (ours vs node.js Faye, and the
//! ratio) built from the JSON lines that runs append with `--json-out`.

use crate::conn::BoxError;
use crate::run::Outcome;
use serde_json::Value;
use std::path::PathBuf;

pub fn print_outcome(label: &str, server: &str, scenario: &str, o: &Outcome) {
    println!("== {label} [{server}]");
    println!(
        "  subscribers ready {} (failed {}), closed early {}",
        o.subscribers_ready, o.subscribers_failed, o.closed_early
    );
    if scenario == "idle" {
        println!(
            "  ramp {:.1} s, {:.0} handshakes/s (peak {}/s in one second)",
            o.ramp_s.unwrap_or(0.0),
            o.handshakes_per_s.unwrap_or(0.0),
            o.peak_handshakes_per_s.unwrap_or(0)
        );
        if let (Some(base), Some(rss), Some(per)) = (o.server_rss_base_kib, o.server_rss_kib, o.server_kib_per_client) {
            println!("  server RSS {base} KiB -> {rss} KiB: {per:.2} KiB per client");
        }
    } else {
        println!(
            "  delivered {:.0}/s, publish acks {:.0}/s over {:.1} s ({} sent, {} acked, {} ack errors)",
            o.delivered_per_s, o.acks_per_s, o.measured_s, o.publishes_sent, o.publishes_acked, o.ack_errors
        );
        println!(
            "  latency ms: p50 {:.3} p90 {:.3} p99 {:.3} p99.9 {:.3} max {:.3} ({} samples)",
            o.p50_ms, o.p90_ms, o.p99_ms, o.p999_ms, o.max_ms, o.latency_samples
        );
        println!(
            "  CPU: generator {:.0}% of a core ({:.2} s){}{}",
            o.generator_cpu_pct,
            o.generator_cpu_s,
            o.server_cpu_pct.map(|p| format!(", server {p:.0}%")).unwrap_or_default(),
            o.redis_cpu_pct.map(|p| format!(", redis {p:.0}%")).unwrap_or_default(),
        );
    }
    println!(
        "  delivered {} of {} expected; lost {}, duplicated {}, unexpected {}",
        o.delivered, o.expected_deliveries, o.lost, o.duplicated, o.unexpected
    );
    if o.errors > 0 {
        println!("  errors {} (first: {})", o.errors, o.first_error.as_deref().unwrap_or("?"));
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Better {
    Higher,
    Lower,
    /// Shown for both, no ratio (context such as CPU use).
    Neither,
}

struct Figure {
    name: &'static str,
    key: fn(&Value) -> Option<f64>,
    better: Better,
    decimals: usize,
}

fn field(record: &Value, name: &str) -> Option<f64> {
    record.get(name)?.as_f64()
}

fn pubsub_figures(has_rate: bool, has_redis: bool) -> Vec<Figure> {
    let mut figures = Vec::new();
    if has_rate {
        figures.push(Figure {
            name: "offered publishes/s",
            key: |r| field(r, "rate"),
            better: Better::Neither,
            decimals: 0,
        });
    }
    figures.extend([
        Figure { name: "deliveries/s", key: |r| field(r, "delivered_per_s"), better: Better::Higher, decimals: 0 },
        Figure { name: "publish acks/s", key: |r| field(r, "acks_per_s"), better: Better::Higher, decimals: 0 },
        Figure { name: "latency p50 ms", key: |r| field(r, "p50_ms"), better: Better::Lower, decimals: 2 },
        Figure { name: "latency p90 ms", key: |r| field(r, "p90_ms"), better: Better::Lower, decimals: 2 },
        Figure { name: "latency p99 ms", key: |r| field(r, "p99_ms"), better: Better::Lower, decimals: 2 },
        Figure { name: "latency p99.9 ms", key: |r| field(r, "p999_ms"), better: Better::Lower, decimals: 2 },
        Figure { name: "latency max ms", key: |r| field(r, "max_ms"), better: Better::Lower, decimals: 2 },
        Figure { name: "lost", key: |r| field(r, "lost"), better: Better::Neither, decimals: 0 },
        Figure { name: "duplicated", key: |r| field(r, "duplicated"), better: Better::Neither, decimals: 0 },
        Figure {
            name: "server CPU % (1 core = 100)",
            key: |r| field(r, "server_cpu_pct"),
            better: Better::Neither,
            decimals: 0,
        },
        Figure {
            name: "server+redis CPU µs per delivery",
            key: |r| {
                let cpu = field(r, "server_cpu_pct")? + field(r, "redis_cpu_pct").unwrap_or(0.0);
                let rate = field(r, "delivered_per_s").filter(|d| *d > 0.0)?;
                Some(cpu / 100.0 / rate * 1e6)
            },
            better: Better::Lower,
            decimals: 2,
        },
        Figure {
            name: "generator CPU %",
            key: |r| field(r, "generator_cpu_pct"),
            better: Better::Neither,
            decimals: 0,
        },
    ]);
    if has_redis {
        figures.push(Figure {
            name: "redis CPU %",
            key: |r| field(r, "redis_cpu_pct"),
            better: Better::Neither,
            decimals: 0,
        });
    }
    figures
}

fn idle_figures() -> Vec<Figure> {
    vec![
        Figure {
            name: "clients held",
            key: |r| Some(field(r, "subscribers_ready")? - field(r, "closed_early").unwrap_or(0.0)),
            better: Better::Higher,
            decimals: 0,
        },
        Figure {
            name: "handshakes/s (ramp)",
            key: |r| field(r, "handshakes_per_s"),
            better: Better::Higher,
            decimals: 0,
        },
        Figure {
            name: "server KiB per client",
            key: |r| field(r, "server_kib_per_client"),
            better: Better::Lower,
            decimals: 2,
        },
        Figure {
            name: "server RSS MiB (all clients)",
            key: |r| Some(field(r, "server_rss_kib")? / 1024.0),
            better: Better::Lower,
            decimals: 1,
        },
        Figure { name: "lost", key: |r| field(r, "lost"), better: Better::Neither, decimals: 0 },
        Figure { name: "duplicated", key: |r| field(r, "duplicated"), better: Better::Neither, decimals: 0 },
    ]
}

fn format_number(v: f64, decimals: usize) -> String {
    if decimals > 0 {
        return format!("{v:.decimals$}");
    }
    let digits = format!("{:.0}", v.abs());
    let mut out = String::new();
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(ch);
    }
    if v < 0.0 { format!("-{out}") } else { out }
}

fn ratio(ours: Option<f64>, node: Option<f64>, better: Better) -> String {
    let (Some(ours), Some(node)) = (ours, node) else { return "—".into() };
    let r = match better {
        Better::Higher if node > 0.0 => ours / node,
        Better::Lower if ours > 0.0 => node / ours,
        _ => return "—".into(),
    };
    if r >= 10.0 { format!("**{r:.1}×**") } else { format!("{r:.2}×") }
}

/// Prints the markdown table: one block of rows per scenario label, in the order run.
pub fn table(files: &[PathBuf]) -> Result<(), BoxError> {
    let mut records: Vec<Value> = Vec::new();
    for path in files {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            records.push(serde_json::from_str(line)?);
        }
    }
    let mut labels: Vec<String> = Vec::new();
    for r in &records {
        if let Some(label) = r.get("label").and_then(Value::as_str)
            && !labels.iter().any(|l| l == label)
        {
            labels.push(label.to_string());
        }
    }
    // The last record of a label and server wins (a re-run replaces an earlier one).
    let find = |label: &str, server: &str| {
        records.iter().rev().find(|r| {
            r.get("label").and_then(Value::as_str) == Some(label)
                && r.get("server").and_then(Value::as_str) == Some(server)
        })
    };
    // Runs of an earlier build (`bench-compare.sh --before BIN`) get a column of their own.
    let has_before = records.iter().any(|r| r.get("server").and_then(Value::as_str) == Some("before"));
    if has_before {
        println!("| scenario | figure | before | actioncluster | node.js Faye | gain (>1: ours better) |");
        println!("| --- | --- | ---: | ---: | ---: | ---: |");
    } else {
        println!("| scenario | figure | actioncluster | node.js Faye | gain (>1: ours better) |");
        println!("| --- | --- | ---: | ---: | ---: |");
    }
    for label in &labels {
        let (ours, node, before) = (find(label, "ours"), find(label, "node"), find(label, "before"));
        let any = ours.or(node);
        let scenario = any.and_then(|r| r.get("scenario")).and_then(Value::as_str).unwrap_or("");
        let figures = if scenario == "idle" {
            idle_figures()
        } else {
            let has_rate = [ours, node].iter().flatten().any(|r| field(r, "rate").unwrap_or(0.0) > 0.0);
            let has_redis = [ours, node].iter().flatten().any(|r| field(r, "redis_cpu_pct").is_some());
            pubsub_figures(has_rate, has_redis)
        };
        for (i, figure) in figures.iter().enumerate() {
            let (a, b) = (ours.and_then(|r| (figure.key)(r)), node.and_then(|r| (figure.key)(r)));
            let show = |v: Option<f64>| v.map(|v| format_number(v, figure.decimals)).unwrap_or_else(|| "—".into());
            let gain = if figure.better == Better::Neither { String::new() } else { ratio(a, b, figure.better) };
            let before_cell =
                if has_before { format!(" {} |", show(before.and_then(|r| (figure.key)(r)))) } else { String::new() };
            println!(
                "| {} | {} |{before_cell} {} | {} | {} |",
                if i == 0 { label.as_str() } else { "" },
                figure.name,
                show(a),
                show(b),
                gain
            );
        }
    }
    Ok(())
}
