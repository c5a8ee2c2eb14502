//! The channel grammar on arbitrary strings: no function panics; names and patterns are
//! disjoint; `expand(name)` holds the name and `/**`, only valid patterns besides the name,
//! no duplicates, and each of its entries matches the name; `matches` agrees with
//! `expand` membership for every valid pattern (the fuzzed one and the ones derived from
//! the name's prefixes).
#![no_main]

use actioncluster::protocol::channel::{
    expand, is_meta, is_pattern, is_service, is_subscribable, is_valid, is_valid_name, is_valid_pattern, matches,
};
use libfuzzer_sys::fuzz_target;

fn grammar(s: &str) {
    let name = is_valid_name(s);
    let pattern = is_valid_pattern(s);
    assert!(!(name && pattern), "{s:?} is both a name and a pattern");
    assert_eq!(is_valid(s), name || pattern, "{s:?}");
    if is_valid(s) {
        assert_eq!(is_pattern(s), pattern, "{s:?}");
        assert!(s.starts_with('/'), "{s:?}");
    }
    if is_meta(s) {
        assert!(is_valid(s) && (s.starts_with("/meta/") || s == "/meta"), "{s:?}");
    }
    if is_service(s) {
        assert!(is_valid(s) && (s.starts_with("/service/") || s == "/service"), "{s:?}");
    }
    assert_eq!(is_subscribable(s), is_valid(s) && !is_meta(s) && !is_service(s), "{s:?}");
    // Total functions: any string, valid or not, without a panic.
    let _ = expand(s);
    let _ = matches(s, s);
}

fn check_expansion(name: &str, extra: &str) {
    let expanded = expand(name);
    assert!(expanded.iter().any(|p| p == name), "expand({name:?}) lacks the name: {expanded:?}");
    assert!(expanded.iter().any(|p| p == "/**"), "expand({name:?}) lacks /**: {expanded:?}");
    for (i, p) in expanded.iter().enumerate() {
        assert!(p == name || is_valid_pattern(p), "expand({name:?}) yields {p:?}");
        assert!(matches(p, name), "expanded {p:?} does not match {name:?}");
        assert!(!expanded[..i].contains(p), "expand({name:?}) repeats {p:?}");
    }
    // Candidate subscriptions: the fuzzed one, and every pattern over the name's prefixes.
    let mut candidates = vec![extra.to_string(), "/*".to_string(), "/**".to_string()];
    for (i, b) in name.bytes().enumerate().skip(1) {
        if b == b'/' {
            candidates.push(name[..i].to_string());
            candidates.push(format!("{}/*", &name[..i]));
            candidates.push(format!("{}/**", &name[..i]));
        }
    }
    candidates.push(format!("{name}/*"));
    candidates.push(format!("{name}/**"));
    for c in candidates.iter().filter(|c| is_valid(c)) {
        assert_eq!(
            matches(c, name),
            expanded.contains(c),
            "matches({c:?}, {name:?}) disagrees with expand = {expanded:?}"
        );
    }
}

fuzz_target!(|input: (&str, &str)| {
    let (a, b) = input;
    grammar(a);
    grammar(b);
    let _ = matches(a, b);
    let _ = matches(b, a);
    if is_valid_name(a) {
        check_expansion(a, b);
    }
    if is_valid_name(b) {
        check_expansion(b, a);
    }
});
