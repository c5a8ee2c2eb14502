//! `--config FILE`: a TOML file holding any flag of the binary (the key is the flag's name:
//! `port = 9000`, `handshake-rate = 20`; `handshake_rate` works too) plus the channel rules
//! (`[[rules]]`). A flag given on the command line or through its env var wins over the file,
//! and the file wins over the default. An unknown key or a bad value is one error line naming
//! the key.

use actioncluster::config::{ChannelRule, Permission};
use clap::parser::ValueSource;
use clap::{ArgAction, ArgMatches, CommandFactory, FromArgMatches};
use serde::Deserialize;
use std::ffi::OsString;
use std::path::Path;

/// The key holding the channel rules.
const RULES_KEY: &str = "rules";

/// One `[[rules]]` entry as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleEntry {
    channel: String,
    #[serde(default)]
    subscribe: Option<String>,
    #[serde(default)]
    publish: Option<String>,
}

/// Applies the file under the command line and env: the parsed flags, and the rules.
pub(crate) fn apply<A: CommandFactory + FromArgMatches>(
    path: &Path,
    argv: &[OsString],
    matches: &ArgMatches,
) -> Result<(A, Vec<ChannelRule>), String> {
    let shown = path.display();
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read config file {shown}: {e}"))?;
    let table: toml::Table =
        toml::from_str(&text).map_err(|e| format!("config file {shown}: {}", one_line(&e, &text)))?;
    let command = A::command();
    let mut file_args: Vec<OsString> = Vec::new();
    let mut from_file: Vec<(String, String)> = Vec::new();
    let mut rules = Vec::new();
    for (key, value) in &table {
        let fail = |reason: String| format!("config file {shown}: key `{key}`: {reason}");
        if key == RULES_KEY {
            rules = parse_rules(value).map_err(fail)?;
            continue;
        }
        let long = key.replace('_', "-");
        let arg = command
            .get_arguments()
            .find(|a| a.get_long() == Some(long.as_str()) && a.get_id() != "config")
            .ok_or_else(|| format!("config file {shown}: unknown key `{key}`"))?;
        let given = matches!(
            matches.value_source(arg.get_id().as_str()),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        );
        let is_switch = matches!(arg.get_action(), ArgAction::SetTrue);
        let text = value_text(value, is_switch).map_err(fail)?;
        if given {
            continue;
        }
        match (is_switch, text.as_str()) {
            (true, "true") => file_args.push(format!("--{long}").into()),
            (true, _) => {}
            (false, text) => {
                file_args.push(format!("--{long}={text}").into());
                from_file.push((long, key.clone()));
            }
        }
    }
    let mut full: Vec<OsString> = argv.iter().take(1).cloned().collect();
    full.extend(file_args);
    full.extend(argv.iter().skip(1).cloned());
    let matches = A::command().try_get_matches_from(full).map_err(|e| {
        // Name the file's key when the value that failed came from the file.
        let culprit = match e.get(clap::error::ContextKind::InvalidArg) {
            Some(clap::error::ContextValue::String(arg)) => {
                from_file.iter().find(|(long, _)| arg.starts_with(&format!("--{long} ")) || arg == &format!("--{long}"))
            }
            _ => None,
        };
        match culprit {
            Some((_, key)) => format!("config file {shown}: key `{key}`: {}", clap_reason(&e)),
            None => format!("config file {shown}: {}", clap_reason(&e)),
        }
    })?;
    let args = A::from_arg_matches(&matches).map_err(|e| clap_reason(&e))?;
    Ok((args, rules))
}

fn parse_rules(value: &toml::Value) -> Result<Vec<ChannelRule>, String> {
    let entries: Vec<RuleEntry> =
        value.clone().try_into().map_err(|e: toml::de::Error| format!("expected [[rules]] tables: {}", e.message()))?;
    entries
        .into_iter()
        .enumerate()
        .map(|(i, entry)| {
            let permission = |field: &str, text: Option<String>| -> Result<Permission, String> {
                text.as_deref().unwrap_or("anyone").parse().map_err(|e| format!("rule {} ({field}): {e}", i + 1))
            };
            Ok(ChannelRule {
                subscribe: permission("subscribe", entry.subscribe)?,
                publish: permission("publish", entry.publish)?,
                channel: entry.channel,
            })
        })
        .collect()
}

/// A TOML value as the flag's text.
fn value_text(value: &toml::Value, is_switch: bool) -> Result<String, String> {
    use toml::Value;
    match (value, is_switch) {
        (Value::Boolean(b), true) => Ok(b.to_string()),
        (_, true) => Err("expected true or false".into()),
        (Value::String(s), false) => Ok(s.clone()),
        (Value::Integer(i), false) => Ok(i.to_string()),
        (Value::Float(f), false) => Ok(f.to_string()),
        (Value::Array(items), false) => items
            .iter()
            .map(|item| match item {
                Value::String(s) => Ok(s.clone()),
                Value::Integer(i) => Ok(i.to_string()),
                _ => Err("expected a list of strings".to_string()),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(|items| items.join(",")),
        (Value::Boolean(_), false) => Err("expected a value, not true or false".into()),
        _ => Err("expected a string, a number or a list".into()),
    }
}

/// The first line of a clap error, without its `error: ` prefix.
fn clap_reason(e: &clap::Error) -> String {
    let rendered = e.to_string();
    let line = rendered.lines().next().unwrap_or("invalid value");
    line.strip_prefix("error: ").unwrap_or(line).to_string()
}

/// A TOML syntax error on one line, with its line number.
fn one_line(e: &toml::de::Error, text: &str) -> String {
    let line = e.span().map(|span| text[..span.start.min(text.len())].lines().count().max(1));
    let message = e.message().lines().next().unwrap_or("invalid TOML").to_string();
    match line {
        Some(n) => format!("line {n}: {message}"),
        None => message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(clap::Parser, Debug)]
    struct Demo {
        #[arg(long, env = "CONFIG_FILE_TEST_PORT", default_value_t = 8000)]
        port: u16,
        #[arg(long, env = "CONFIG_FILE_TEST_HOST", default_value = "0.0.0.0")]
        host: String,
        #[arg(long)]
        quiet: bool,
        #[arg(long, value_delimiter = ',')]
        origins: Option<Vec<String>>,
        #[arg(long)]
        config: Option<std::path::PathBuf>,
    }

    fn run(file: &str, argv: &[&str]) -> Result<(Demo, Vec<ChannelRule>), String> {
        let dir = std::env::temp_dir().join(format!("config-file-test-{}-{}", std::process::id(), rand_suffix()));
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let path = dir.join("node.toml");
        std::fs::write(&path, file).map_err(|e| e.to_string())?;
        let argv: Vec<OsString> = std::iter::once("demo").chain(argv.iter().copied()).map(OsString::from).collect();
        let matches = Demo::command().try_get_matches_from(&argv).map_err(|e| e.to_string())?;
        let result = apply::<Demo>(&path, &argv, &matches);
        let _ = std::fs::remove_dir_all(&dir);
        result
    }

    fn rand_suffix() -> u64 {
        use std::sync::atomic::{AtomicU64, Ordering};
        static N: AtomicU64 = AtomicU64::new(0);
        N.fetch_add(1, Ordering::Relaxed)
    }

    #[test]
    fn the_file_fills_what_flags_leave_default() {
        let (demo, rules) = run(
            "port = 9100\nquiet = true\norigins = ['https://a.example', 'https://b.example']\n\
             [[rules]]\nchannel = '/users/{sub}/**'\nsubscribe = 'claim:sub'\npublish = 'server'\n",
            &[],
        )
        .unwrap();
        assert_eq!(demo.port, 9100);
        assert!(demo.quiet);
        assert_eq!(demo.origins.as_deref().map(|o| o.len()), Some(2));
        assert_eq!(rules.len(), 1);
        assert_eq!(rules[0].subscribe, Permission::Claim("sub".into()));
        assert_eq!(rules[0].publish, Permission::Server);
        let (demo, _) = run("port = 9100\n", &["--port", "9200"]).unwrap();
        assert_eq!(demo.port, 9200, "a flag wins over the file");
    }

    #[test]
    fn errors_name_the_key() {
        let err = run("prot = 9100\n", &[]).unwrap_err();
        assert!(err.contains("unknown key `prot`"), "{err}");
        let err = run("port = 'nine'\n", &[]).unwrap_err();
        assert!(err.contains("key `port`") && err.contains("nine"), "{err}");
        let err = run("quiet = 'yes'\n", &[]).unwrap_err();
        assert!(err.contains("key `quiet`: expected true or false"), "{err}");
        let err = run("[[rules]]\nchannel = '/a'\nsubscribe = 'everyone'\n", &[]).unwrap_err();
        assert!(err.contains("key `rules`: rule 1 (subscribe)"), "{err}");
        let err = run("[[rules]]\nchannel = '/a'\nwho = 'x'\n", &[]).unwrap_err();
        assert!(err.contains("key `rules`") && err.contains("who"), "{err}");
        let err = run("port = \n", &[]).unwrap_err();
        assert!(err.contains("line 1"), "{err}");
        assert!(!err.contains('\n'), "one line: {err}");
    }
}
