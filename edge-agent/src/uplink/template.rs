//! Name templates for routing keys and topics: `{subject}`, `{type}`, `{source}`, `{id}` and any extension by
//! name, filled from an event.

use crate::CloudEvent;

/// Fills `template` from `event`. `subject_separator` replaces `/` in the subject (AMQP routing keys use `.`);
/// `None` keeps the subject as it is. A missing value renders empty; an unclosed `{` is kept literally.
pub fn render(template: &str, event: &CloudEvent, subject_separator: Option<char>) -> String {
    let mut out = String::with_capacity(template.len() + 32);
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let Some(close) = after.find('}') else {
            out.push_str(&rest[open..]);
            return out;
        };
        match &after[..close] {
            "subject" => {
                let subject = event.subject.as_deref().unwrap_or_default();
                match subject_separator {
                    Some(sep) => out.extend(subject.chars().map(|c| if c == '/' { sep } else { c })),
                    None => out.push_str(subject),
                }
            }
            "type" => out.push_str(&event.ty),
            "source" => out.push_str(&event.source),
            "id" => out.push_str(&event.id),
            other => {
                if let Some(v) = event.extensions.get(other) {
                    out.push_str(&v.to_canonical_string());
                }
            }
        }
        rest = &after[close + 1..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_take_attributes_and_extensions() {
        let mut e = CloudEvent { id: "1".into(), source: "/s".into(), ty: "t.x".into(), ..CloudEvent::default() };
        e.subject = Some("devices/d7/temp".into());
        e.extensions.insert("deviceid".into(), "d7".into());
        assert_eq!(render("{subject}", &e, Some('.')), "devices.d7.temp");
        assert_eq!(render("{subject}", &e, None), "devices/d7/temp");
        assert_eq!(render("site.{deviceid}.{type}.{missing}", &e, None), "site.d7.t.x.");
        assert_eq!(render("a{b", &e, None), "a{b");
    }
}
