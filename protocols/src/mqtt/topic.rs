//! Topic names and topic filters: validation and matching (MQTT 5 section 4.7).

use super::Malformed;

/// Whether `s` holds a wildcard, `+` or `#` (a byte scan: less code on a device than a `char` pattern search).
pub fn has_wildcard(s: &str) -> bool {
    s.bytes().any(|b| matches!(b, b'+' | b'#'))
}

/// Checks a topic name for PUBLISH: non-empty and free of the wildcards `+` and `#`.
pub fn validate_name(name: &str) -> Result<(), Malformed> {
    if name.is_empty() {
        return Err(Malformed::EmptyTopic);
    }
    if has_wildcard(name) {
        return Err(Malformed::WildcardInTopicName);
    }
    Ok(())
}

/// Checks a topic filter: non-empty; `+` only as a whole level; `#` only as the whole last level.
pub fn validate_filter(filter: &str) -> Result<(), Malformed> {
    if filter.is_empty() {
        return Err(Malformed::EmptyTopic);
    }
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        let last = levels.peek().is_none();
        match level {
            "+" => {}
            "#" if last => {}
            _ if has_wildcard(level) => return Err(Malformed::InvalidTopicFilter),
            _ => {}
        }
    }
    Ok(())
}

/// A shared subscription's parts: `$share/{group}/{filter}`.
pub fn split_shared(filter: &str) -> Option<(&str, &str)> {
    let rest = filter.strip_prefix("$share/")?;
    let (group, inner) = rest.split_once('/')?;
    Some((group, inner))
}

/// Whether `filter` matches the topic `name`. Topics starting with `$` are not matched by a filter starting with a
/// wildcard.
pub fn matches(filter: &str, name: &str) -> bool {
    if name.starts_with('$') && filter.starts_with(['+', '#']) {
        return false;
    }
    let mut f = filter.split('/');
    let mut n = name.split('/');
    loop {
        match (f.next(), n.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_refuse_wildcards() {
        assert_eq!(validate_name("a/+/b"), Err(Malformed::WildcardInTopicName));
        assert_eq!(validate_name("a/#"), Err(Malformed::WildcardInTopicName));
        assert_eq!(validate_name(""), Err(Malformed::EmptyTopic));
        assert_eq!(validate_name("/"), Ok(()));
    }

    #[test]
    fn filters_place_wildcards_on_whole_levels() {
        for ok in ["#", "+", "a/+/b", "a/#", "+/+", "/", "sport/tennis/#"] {
            assert_eq!(validate_filter(ok), Ok(()), "{ok}");
        }
        for bad in ["a#", "a/#/b", "a+/b", "#/a", "sport/tennis#"] {
            assert_eq!(validate_filter(bad), Err(Malformed::InvalidTopicFilter), "{bad}");
        }
    }

    #[test]
    fn matching_follows_the_spec_examples() {
        assert!(matches("sport/tennis/player1/#", "sport/tennis/player1"));
        assert!(matches("sport/tennis/player1/#", "sport/tennis/player1/ranking"));
        assert!(matches("sport/#", "sport"));
        assert!(matches("sport/+", "sport/"));
        assert!(!matches("sport/+", "sport"));
        assert!(matches("+/+", "/finance"));
        assert!(matches("/+", "/finance"));
        assert!(!matches("+", "/finance"));
        assert!(!matches("#", "$SYS/broker"));
        assert!(matches("$SYS/#", "$SYS/broker"));
    }
}
