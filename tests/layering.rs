//! The module tree is the architecture: each layer may import only the layers below it
//! (ARCHITECTURE.md). This test fails on a forbidden `crate::` path inside the server crate,
//! on I/O in the protocol crate, and on server dependencies in the client crate's tree.

#![allow(clippy::expect_used)]

use std::fs;
use std::path::{Path, PathBuf};

/// (layer, modules it must not name)
// `protocol` and `client` are crates of their own (crates/actioncluster-protocol,
// crates/actioncluster-client): cargo itself keeps them from importing the server. These rules
// hold the modules inside the server crate.
const RULES: &[(&str, &[&str])] = &[
    ("engine", &["server", "transport", "client", "cluster", "node"]),
    ("server", &["transport", "client", "cluster", "node"]),
    ("transport", &["engine", "client", "cluster", "node"]),
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

/// Every `.rs` file of one workspace crate.
fn crate_files(name: &str) -> Vec<PathBuf> {
    let mut files = Vec::new();
    rust_files(&Path::new(env!("CARGO_MANIFEST_DIR")).join("crates").join(name).join("src"), &mut files);
    files
}

#[test]
fn protocol_is_pure() {
    let files = crate_files("actioncluster-protocol");
    assert!(files.len() > 3, "the protocol crate's sources were not found");
    for file in files {
        let text = fs::read_to_string(&file).unwrap_or_default();
        for word in ["tokio::", "std::net", "std::fs", "std::time::Instant", "SystemTime"] {
            assert!(!text.contains(word), "{} uses {word}: protocol must stay free of I/O and clocks", file.display());
        }
    }
}

/// `cargo tree` of one crate's normal dependencies, with the features each is built with.
fn dependency_tree(package: &str) -> String {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = std::process::Command::new(cargo)
        .args(["tree", "--offline", "-p", package, "-e", "normal,features", "--prefix", "none"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo tree runs");
    assert!(out.status.success(), "cargo tree -p {package}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn the_client_crate_pulls_in_no_server() {
    let tree = dependency_tree("actioncluster-client");
    assert!(tree.contains("actioncluster-protocol"), "{tree}");
    assert!(tree.contains("tokio-tungstenite"), "the tree lists the client's own dependencies:\n{tree}");
    for line in tree.lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        assert!(!matches!(name, "redis" | "clap" | "dashmap" | "tracing-subscriber" | "actioncluster"), "{line}");
        assert!(!(name == "hyper" && line.contains("feature \"server\"")), "hyper's server feature: {line}");
        assert!(!(name == "hyper-util" && line.contains("feature \"server")), "hyper-util's server: {line}");
    }
}

#[test]
fn the_protocol_crate_has_no_runtime() {
    let tree = dependency_tree("actioncluster-protocol");
    for line in tree.lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        assert!(!matches!(name, "tokio" | "hyper" | "redis" | "mio"), "{line}");
    }
}
