//! Upstream topics from events: the template rendered, made a valid MQTT topic name.

use crate::CloudEvent;

/// Makes `rendered` a valid topic name: wildcards (`+`, `#`) and NUL become `_`.
pub fn sanitize(rendered: &str) -> String {
    rendered.chars().map(|c| if matches!(c, '+' | '#' | '\0') { '_' } else { c }).collect()
}

/// The topic an event is published on: `template` rendered, or `fallback` when it renders empty.
pub fn for_event(template: &str, fallback: &str, event: &CloudEvent) -> String {
    let rendered = crate::uplink::template::render(template, event, None);
    if rendered.is_empty() { fallback.to_string() } else { sanitize(&rendered) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_come_from_the_template_without_wildcards() {
        let mut e = CloudEvent { id: "1".into(), source: "/s".into(), ty: "t".into(), ..CloudEvent::default() };
        e.subject = Some("devices/d7/temp".into());
        assert_eq!(for_event("site7/{subject}", "fb", &e), "site7/devices/d7/temp");
        e.subject = Some("a/+/#".into());
        assert_eq!(for_event("{subject}", "fb", &e), "a/_/_");
        e.subject = None;
        assert_eq!(for_event("{subject}", "fb", &e), "fb");
    }
}
