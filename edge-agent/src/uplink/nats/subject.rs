//! NATS subjects from events: the template rendered with `/` → `.`, then made a valid publish subject.

use crate::CloudEvent;

/// Makes `rendered` a valid NATS publish subject: every empty token (a leading, trailing or doubled `.`, as an
/// MQTT topic `/a//b` gives) becomes `_`, and wildcards (`*`, `>`) and whitespace become `_`.
pub fn sanitize(rendered: &str) -> String {
    let mut out = String::with_capacity(rendered.len() + 2);
    for (i, token) in rendered.split('.').enumerate() {
        if i > 0 {
            out.push('.');
        }
        if token.is_empty() {
            out.push('_');
        }
        out.extend(token.chars().map(|c| if c == '*' || c == '>' || c.is_whitespace() { '_' } else { c }));
    }
    out
}

/// The subject an event is published on: `template` rendered (`/` → `.` in `{subject}`), or `fallback` when it
/// renders empty.
pub fn for_event(template: &str, fallback: &str, event: &CloudEvent) -> String {
    let rendered = crate::uplink::template::render(template, event, Some('.'));
    if rendered.is_empty() { fallback.to_string() } else { sanitize(&rendered) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn mqtt_topics_become_valid_subjects() {
        let mut e = CloudEvent { id: "1".into(), source: "/s".into(), ty: "t".into(), ..CloudEvent::default() };
        e.subject = Some("devices/d7/temp".into());
        assert_eq!(for_event("{subject}", "fb", &e), "devices.d7.temp");
        assert_eq!(for_event("site.{subject}", "fb", &e), "site.devices.d7.temp");
        e.subject = Some("/a//b c/".into());
        assert_eq!(for_event("{subject}", "fb", &e), "_.a._.b_c._");
        e.subject = None;
        assert_eq!(for_event("{subject}", "fb", &e), "fb");
        assert_eq!(sanitize("a.*.>"), "a._._");
    }

    proptest! {
        #[test]
        fn any_rendering_is_a_valid_subject(s in "\\PC{0,40}") {
            let subject = sanitize(&s);
            prop_assert!(!subject.is_empty());
            for token in subject.split('.') {
                prop_assert!(!token.is_empty());
                prop_assert!(!token.contains(['*', '>']) && !token.chars().any(char::is_whitespace));
            }
        }
    }
}
