//! Channel names and patterns (Faye's grammar), meta/service classification and
//! the expansion of a name into every pattern that matches it.

/// Prefix of meta channels (`/meta/...`), handled by the server itself.
pub const META_PREFIX: &str = "/meta/";
/// Prefix of service channels (`/service/...`), not relayed to their subscribers.
pub const SERVICE_PREFIX: &str = "/service/";

/// The meta channel names the server answers.
pub mod meta {
    /// `/meta/handshake`
    pub const HANDSHAKE: &str = "/meta/handshake";
    /// `/meta/connect`
    pub const CONNECT: &str = "/meta/connect";
    /// `/meta/subscribe`
    pub const SUBSCRIBE: &str = "/meta/subscribe";
    /// `/meta/unsubscribe`
    pub const UNSUBSCRIBE: &str = "/meta/unsubscribe";
    /// `/meta/disconnect`
    pub const DISCONNECT: &str = "/meta/disconnect";
}

fn is_segment_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'!' | b'~' | b'(' | b')' | b'$' | b'@')
}

fn is_segment(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(is_segment_char)
}

/// True for a concrete channel name such as `/a/b` (no wildcards).
pub fn is_valid_name(name: &str) -> bool {
    match name.strip_prefix('/') {
        Some(rest) => rest.split('/').all(is_segment),
        None => false,
    }
}

/// True for a pattern such as `/a/*`, `/a/**` or `/**`.
pub fn is_valid_pattern(name: &str) -> bool {
    let (prefix, last) = match name.rfind('/') {
        Some(i) => (&name[..i], &name[i + 1..]),
        None => return false,
    };
    (last == "*" || last == "**") && (prefix.is_empty() || is_valid_name(prefix))
}

/// True for a name or a pattern.
pub fn is_valid(name: &str) -> bool {
    is_valid_name(name) || is_valid_pattern(name)
}

/// True when the name is a valid channel or pattern whose first segment is `meta`.
pub fn is_meta(name: &str) -> bool {
    is_valid(name) && first_segment(name) == Some("meta")
}

/// True when the name is a valid channel or pattern whose first segment is `service`.
pub fn is_service(name: &str) -> bool {
    is_valid(name) && first_segment(name) == Some("service")
}

/// True when an external client may subscribe to it: valid, neither meta nor service.
pub fn is_subscribable(name: &str) -> bool {
    is_valid(name) && !is_meta(name) && !is_service(name)
}

/// True when the name ends in a wildcard segment.
pub fn is_pattern(name: &str) -> bool {
    name.ends_with("/*") || name.ends_with("/**")
}

fn first_segment(name: &str) -> Option<&str> {
    name.strip_prefix('/')?.split('/').next()
}

/// Every subscription that receives a message published to `name`, in Faye's order:
/// `/**`, the name itself, the name with its last segment replaced by `*`, and
/// every proper prefix followed by `/**`. `name` must be a valid channel name.
pub fn expand(name: &str) -> Vec<String> {
    let mut out = Vec::with_capacity(8);
    out.push("/**".to_string());
    out.push(name.to_string());
    if let Some(i) = name.rfind('/') {
        out.push(format!("{}/*", &name[..i]));
    }
    // Every proper prefix (ending before a '/', not the leading one).
    for (i, b) in name.bytes().enumerate().skip(1) {
        if b == b'/' {
            out.push(format!("{}/**", &name[..i]));
        }
    }
    out
}

/// True when the subscription `pattern` (a name or a pattern) matches the channel `name`.
pub fn matches(pattern: &str, name: &str) -> bool {
    if let Some(prefix) = pattern.strip_suffix("/**") {
        name.len() > prefix.len() + 1 && name.starts_with(prefix) && name.as_bytes()[prefix.len()] == b'/'
    } else if let Some(prefix) = pattern.strip_suffix("/*") {
        match name.rfind('/') {
            Some(i) => &name[..i] == prefix && i + 1 < name.len(),
            None => false,
        }
    } else {
        pattern == name
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn grammar() {
        for ok in ["/a", "/a/b", "/foo-bar_(x)!~$@/Z9"] {
            assert!(is_valid_name(ok), "{ok}");
        }
        for bad in ["", "/", "a", "/a/", "//a", "/foo bar", "/café", "/a/*", "/a.b"] {
            assert!(!is_valid_name(bad), "{bad}");
        }
        for ok in ["/*", "/**", "/a/*", "/a/b/**"] {
            assert!(is_valid_pattern(ok), "{ok}");
        }
        for bad in ["/a/**/b", "/a*", "/***", "*", "/a/*/", "//*"] {
            assert!(!is_valid_pattern(bad), "{bad}");
        }
    }

    #[test]
    fn classification() {
        assert!(is_meta("/meta/connect"));
        assert!(is_meta("/meta/**"));
        assert!(!is_meta("/metal"));
        assert!(is_service("/service/*"));
        assert!(!is_subscribable("/service/**"));
        assert!(is_subscribable("/**"));
        assert!(!is_subscribable("/meta/foo"));
    }

    #[test]
    fn expansion_order() {
        assert_eq!(expand("/a/b/c"), ["/**", "/a/b/c", "/a/b/*", "/a/**", "/a/b/**"]);
        assert_eq!(expand("/a"), ["/**", "/a", "/*"]);
    }

    fn name_strategy() -> impl Strategy<Value = String> {
        prop::collection::vec("[a-c]{1,2}", 1..5).prop_map(|segs| format!("/{}", segs.join("/")))
    }

    proptest! {
        #[test]
        fn expand_agrees_with_matches(name in name_strategy(), pattern in prop_oneof![
            name_strategy(),
            name_strategy().prop_map(|n| format!("{n}/*")),
            name_strategy().prop_map(|n| format!("{n}/**")),
            Just("/*".to_string()),
            Just("/**".to_string()),
        ]) {
            prop_assert_eq!(expand(&name).contains(&pattern), matches(&pattern, &name));
        }
    }
}
