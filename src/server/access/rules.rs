//! Channel rules: ordered patterns saying who may subscribe and publish. A publish names one
//! channel, and the first rule matching it decides. A subscription may be a pattern (`/a/*`,
//! `/**`), and it must not reach around a rule: every rule whose channels it overlaps, up to
//! the first rule that holds all of them, must allow it.

use crate::config::{ChannelRule, Permission};
use serde_json::{Map, Value};

/// Subscribe or publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Operation {
    /// `/meta/subscribe`.
    Subscribe,
    /// A publish.
    Publish,
}

impl Operation {
    /// The name the auth hook is given.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Operation::Subscribe => "subscribe",
            Operation::Publish => "publish",
        }
    }
}

/// Who asks.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Caller<'a> {
    /// The server publish API or an in-process client.
    Server,
    /// A client that handshook without a token.
    Anonymous,
    /// A client whose handshake token carried these claims.
    Token(&'a Map<String, Value>),
}

/// One segment of a rule pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    /// `*`: any one segment.
    Star,
    /// `**`, last: one or more segments.
    Globstar,
    /// `{name}`: any one segment, named for a `claim:name` permission.
    Capture(String),
}

#[derive(Debug, Clone)]
struct Rule {
    segments: Vec<Segment>,
    subscribe: Permission,
    publish: Permission,
}

/// The compiled channel rules of a node.
#[derive(Debug, Clone, Default)]
pub(crate) struct Rules {
    rules: Vec<Rule>,
}

impl Rules {
    /// Compiles the configured rules (their patterns were validated with the config).
    pub(crate) fn new(rules: &[ChannelRule]) -> Self {
        let rules = rules
            .iter()
            .map(|r| Rule { segments: parse(&r.channel), subscribe: r.subscribe.clone(), publish: r.publish.clone() })
            .collect();
        Self { rules }
    }

    /// May `caller` do `operation` on `channel` (a channel name, or a pattern for subscribe)?
    pub(crate) fn allows(&self, operation: Operation, channel: &str, caller: Caller<'_>) -> bool {
        let target: Vec<&str> = channel.strip_prefix('/').unwrap_or(channel).split('/').collect();
        for rule in &self.rules {
            if !overlaps(&rule.segments, &target) {
                continue;
            }
            let permission = match operation {
                Operation::Subscribe => &rule.subscribe,
                Operation::Publish => &rule.publish,
            };
            if !permitted(permission, caller, &rule.segments, &target) {
                return false;
            }
            if contains(&rule.segments, &target) {
                return true;
            }
        }
        true
    }
}

fn parse(pattern: &str) -> Vec<Segment> {
    pattern
        .strip_prefix('/')
        .unwrap_or(pattern)
        .split('/')
        .map(|s| match s {
            "*" => Segment::Star,
            "**" => Segment::Globstar,
            s if s.starts_with('{') && s.ends_with('}') && s.len() > 2 => {
                Segment::Capture(s[1..s.len() - 1].to_string())
            }
            s => Segment::Literal(s.to_string()),
        })
        .collect()
}

/// True when some channel matches both the rule and the target (a name or a Bayeux pattern).
fn overlaps(rule: &[Segment], target: &[&str]) -> bool {
    match (rule.first(), target.first()) {
        (None, None) => true,
        (Some(Segment::Globstar), Some(_)) => true,
        (Some(_), Some(&"**")) => true,
        (Some(segment), Some(&name)) => {
            let one = match segment {
                Segment::Literal(l) => name == "*" || l == name,
                _ => true,
            };
            one && overlaps(&rule[1..], &target[1..])
        }
        _ => false,
    }
}

/// True when every channel the target matches is also matched by the rule.
fn contains(rule: &[Segment], target: &[&str]) -> bool {
    match (rule.first(), target.first()) {
        (None, None) => true,
        (Some(Segment::Globstar), Some(_)) => true,
        (_, Some(&"**")) => false,
        (Some(segment), Some(&name)) => {
            let one = match segment {
                Segment::Literal(l) => l == name,
                _ => true,
            };
            one && contains(&rule[1..], &target[1..])
        }
        _ => false,
    }
}

/// The concrete segment a rule's `{name}` captures from the target: none where the target
/// has a wildcard there, since a wildcard names no one user.
fn captured<'t>(rule: &[Segment], target: &[&'t str], name: &str) -> Option<&'t str> {
    for (i, segment) in rule.iter().enumerate() {
        match segment {
            Segment::Capture(n) if n == name => {
                let value = *target.get(i)?;
                return (value != "*" && value != "**").then_some(value);
            }
            Segment::Literal(_) | Segment::Star | Segment::Capture(_) => {
                if target.get(i).is_none_or(|t| *t == "**") {
                    return None;
                }
            }
            Segment::Globstar => return None,
        }
    }
    None
}

fn permitted(permission: &Permission, caller: Caller<'_>, rule: &[Segment], target: &[&str]) -> bool {
    match (permission, caller) {
        (Permission::Nobody, _) => false,
        (_, Caller::Server) => true,
        (Permission::Anyone, _) => true,
        (Permission::Server, _) => false,
        (Permission::Token, Caller::Token(_)) => true,
        (Permission::Claim(name), Caller::Token(claims)) => {
            let has_capture = rule.iter().any(|s| matches!(s, Segment::Capture(n) if n == name));
            match claims.get(name) {
                None | Some(Value::Null) => false,
                Some(value) if has_capture => {
                    captured(rule, target, name).is_some_and(|segment| claim_equals(value, segment))
                }
                Some(value) => is_truthy(value),
            }
        }
        (Permission::Token | Permission::Claim(_), Caller::Anonymous) => false,
    }
}

fn claim_equals(value: &Value, segment: &str) -> bool {
    match value {
        Value::String(s) => s == segment,
        Value::Number(n) => n.to_string() == segment,
        _ => false,
    }
}

fn is_truthy(value: &Value) -> bool {
    match value {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::String(s) => !s.is_empty(),
        Value::Number(_) => true,
        Value::Array(a) => !a.is_empty(),
        Value::Object(_) => true,
    }
}

/// True when a token's channel list lets the session at `channel`: some listed pattern holds
/// every channel the target matches.
pub(crate) fn listed(patterns: &[String], channel: &str) -> bool {
    let target: Vec<&str> = channel.strip_prefix('/').unwrap_or(channel).split('/').collect();
    patterns.iter().any(|p| contains(&parse(p), &target))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rule(channel: &str, subscribe: &str, publish: &str) -> ChannelRule {
        ChannelRule {
            channel: channel.into(),
            subscribe: subscribe.parse().unwrap_or(Permission::Nobody),
            publish: publish.parse().unwrap_or(Permission::Nobody),
        }
    }

    fn claims(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => Map::new(),
        }
    }

    #[test]
    fn private_user_channels_need_the_matching_claim() {
        let rules = Rules::new(&[rule("/users/{sub}/**", "claim:sub", "server")]);
        let alice = claims(json!({"sub": "alice"}));
        let s = Operation::Subscribe;
        assert!(rules.allows(s, "/users/alice/inbox", Caller::Token(&alice)));
        assert!(rules.allows(s, "/users/alice/**", Caller::Token(&alice)));
        assert!(!rules.allows(s, "/users/bob/inbox", Caller::Token(&alice)));
        assert!(!rules.allows(s, "/users/*/inbox", Caller::Token(&alice)), "a wildcard names no one user");
        assert!(!rules.allows(s, "/users/**", Caller::Token(&alice)));
        assert!(!rules.allows(s, "/**", Caller::Token(&alice)), "/** overlaps every private channel");
        assert!(rules.allows(s, "/*/alice/inbox", Caller::Token(&alice)), "reaches only alice's own channels");
        assert!(!rules.allows(s, "/*/bob/inbox", Caller::Token(&alice)));
        assert!(!rules.allows(s, "/users/alice/inbox", Caller::Anonymous));
        assert!(rules.allows(s, "/news", Caller::Anonymous), "no rule: open, as today");
        assert!(rules.allows(s, "/*", Caller::Anonymous), "/* cannot reach /users/x/y");
        assert!(rules.allows(s, "/users", Caller::Anonymous), "/users/{{sub}}/** needs two more segments");
        assert!(!rules.allows(Operation::Publish, "/users/alice/inbox", Caller::Token(&alice)));
        assert!(rules.allows(Operation::Publish, "/users/alice/inbox", Caller::Server));
    }

    #[test]
    fn first_match_wins() {
        let rules = Rules::new(&[rule("/public/**", "anyone", "token"), rule("/**", "token", "nobody")]);
        let t = claims(json!({"sub": "u"}));
        assert!(rules.allows(Operation::Subscribe, "/public/a", Caller::Anonymous));
        assert!(!rules.allows(Operation::Subscribe, "/other", Caller::Anonymous));
        assert!(rules.allows(Operation::Subscribe, "/other", Caller::Token(&t)));
        assert!(rules.allows(Operation::Publish, "/public/a", Caller::Token(&t)));
        assert!(!rules.allows(Operation::Publish, "/other", Caller::Token(&t)));
        assert!(!rules.allows(Operation::Publish, "/other", Caller::Server), "nobody means nobody");
        assert!(
            !rules.allows(Operation::Subscribe, "/**", Caller::Anonymous),
            "/** overlaps /public (allowed) and then /** (token)"
        );
        assert!(rules.allows(Operation::Subscribe, "/**", Caller::Token(&t)));
    }

    #[test]
    fn claims_without_a_capture_must_be_truthy() {
        let rules = Rules::new(&[rule("/admin/**", "claim:admin", "claim:admin")]);
        let admin = claims(json!({"admin": true}));
        let user = claims(json!({"admin": false}));
        assert!(rules.allows(Operation::Publish, "/admin/x", Caller::Token(&admin)));
        assert!(!rules.allows(Operation::Publish, "/admin/x", Caller::Token(&user)));
        assert!(!rules.allows(Operation::Publish, "/admin/x", Caller::Token(&Map::new())));
    }

    #[test]
    fn token_channel_lists() {
        let list = vec!["/chat/*".to_string(), "/users/alice/**".to_string()];
        assert!(listed(&list, "/chat/room"));
        assert!(listed(&list, "/chat/*"));
        assert!(!listed(&list, "/chat/**"));
        assert!(listed(&list, "/users/alice/a/b"));
        assert!(!listed(&list, "/users/bob/a"));
        assert!(!listed(&list, "/**"));
    }
}
