//! The module tree is the architecture: each layer may import only the layers below it
//! (../shared/DESIGN.md). This test fails on a forbidden `crate::` path.

use std::fs;
use std::path::{Path, PathBuf};

/// (layer, modules it must not name)
const RULES: &[(&str, &[&str])] = &[
    ("protocol", &["engine", "server", "transport", "client", "cluster", "node", "config", "redis_conn"]),
    ("engine", &["server", "transport", "client", "cluster", "node"]),
    ("server", &["transport", "client", "cluster", "node"]),
    ("transport", &["engine", "client", "cluster", "node"]),
    ("client", &["engine", "server", "transport", "cluster", "node"]),
    // cluster -> protocol, redis_conn, telemetry (and the engine's public trait, per DESIGN.md)
    ("cluster", &["server", "transport", "client", "node", "config"]),
    // chat is node-level wiring of cluster rooms onto the Bayeux server; it never reaches
    // into HTTP or the engines, nor back into the node.
    ("chat", &["transport", "engine", "node", "commands"]),
    // cluster commands: node-level like chat (they target chat connections).
    ("commands", &["transport", "engine", "node"]),
    ("dashboard", &["engine", "client", "chat", "commands", "node"]),
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn layer_files(layer: &str) -> Vec<PathBuf> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src.join(layer), &mut files);
    let single = src.join(format!("{layer}.rs"));
    if single.exists() {
        files.push(single);
    }
    files
}

#[test]
fn layers_import_only_lower_layers() {
    let mut violations = Vec::new();
    let mut checked = 0;
    for (layer, forbidden) in RULES {
        for file in layer_files(layer) {
            checked += 1;
            let text = fs::read_to_string(&file).unwrap_or_default();
            for (n, line) in text.lines().enumerate() {
                for module in *forbidden {
                    if line.contains(&format!("crate::{module}::")) || line.contains(&format!("crate::{module};")) {
                        violations.push(format!("{}:{}: {layer} names crate::{module}", file.display(), n + 1));
                    }
                }
            }
        }
    }
    assert!(checked > 5, "the layering test found too few source files ({checked})");
    assert!(violations.is_empty(), "layering violations:\n{}", violations.join("\n"));
}

#[test]
fn protocol_is_pure() {
    for file in layer_files("protocol") {
        let text = fs::read_to_string(&file).unwrap_or_default();
        for word in ["tokio::", "std::net", "std::fs", "std::time::Instant", "SystemTime"] {
            assert!(!text.contains(word), "{} uses {word}: protocol must stay free of I/O and clocks", file.display());
        }
    }
}
