//! Mapping rules: topic patterns with named wildcards, and templates that fill event attributes from them.
//!
//! A pattern is a topic filter whose levels may also be `{name}`, a single-level wildcard that captures the level:
//! `devices/{deviceid}/events/{type}` matches `devices/d7/events/temp` with `deviceid = d7` and `type = temp`.
//! Templates substitute `{name}` from the captures and from the built-ins `{topic}`, `{clientid}`,
//! `{gatewayid}` and `{protocol}`.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::spool::WhenFull;
use meshgate_protocols::cloudevents::CloudEvent;
use meshgate_protocols::mqtt::topic;
use serde::Deserialize;

/// One `[[rules]]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// The topic pattern (MQTT) or routing-key pattern this rule applies to.
    pub topic: String,
    /// Template for `type`.
    #[serde(rename = "type")]
    pub ty: Option<String>,
    /// Template for `source`.
    pub source: Option<String>,
    /// Template for `subject`.
    pub subject: Option<String>,
    /// Extension attributes to set (name → template).
    #[serde(default)]
    pub extensions: BTreeMap<String, String>,
    /// Uplinks the matching events go to; omitted means every uplink.
    pub uplinks: Option<Vec<String>>,
    /// What a full spool does with matching QoS 0 messages: `block` (default: slow the device) or `drop-oldest`
    /// (discard the oldest such telemetry). Messages a device waits an acknowledgement for always block.
    #[serde(default)]
    pub when_full: WhenFull,
}

const BUILTINS: [&str; 4] = ["topic", "clientid", "gatewayid", "protocol"];

impl RuleConfig {
    /// Checks the pattern, the templates' variables and the routes; errors name the key inside the rule.
    pub fn validate(&self, uplinks: &[&str]) -> Result<(), (String, String)> {
        let pattern = Pattern::parse(&self.topic).map_err(|p| ("topic".to_string(), p))?;
        let templates =
            [("type", self.ty.as_ref()), ("source", self.source.as_ref()), ("subject", self.subject.as_ref())];
        let ext_templates = self.extensions.iter().map(|(k, v)| (k.as_str(), Some(v)));
        for (key, template) in templates.into_iter().chain(ext_templates) {
            let Some(t) = template else { continue };
            for var in template_vars(t).map_err(|p| (key.to_string(), p))? {
                if !BUILTINS.contains(&var) && !pattern.captures().any(|c| c == var) {
                    return Err((
                        key.to_string(),
                        format!("`{{{var}}}` is neither captured by the topic pattern nor built in"),
                    ));
                }
            }
        }
        for name in self.extensions.keys() {
            let valid = !name.is_empty() && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
            if !valid {
                return Err((format!("extensions.{name}"), "extension names are lower-case a-z and 0-9 only".into()));
            }
        }
        for name in self.uplinks.iter().flatten() {
            if !uplinks.contains(&name.as_str()) {
                return Err(("uplinks".into(), format!("no uplink is named `{name}` (known: {})", uplinks.join(", "))));
            }
        }
        Ok(())
    }
}

fn template_vars(t: &str) -> Result<Vec<&str>, String> {
    let mut vars = Vec::new();
    let mut rest = t;
    while let Some(open) = rest.find('{') {
        let after = &rest[open + 1..];
        let close = after.find('}').ok_or_else(|| format!("unclosed `{{` in `{t}`"))?;
        vars.push(&after[..close]);
        rest = &after[close + 1..];
    }
    Ok(vars)
}

/// One level of a pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Level {
    Literal(String),
    Plus,
    Capture(String),
    Hash,
}

/// A compiled topic pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    levels: Vec<Level>,
}

impl Pattern {
    /// Parses a pattern; `{name}` levels become captures.
    pub fn parse(pattern: &str) -> Result<Pattern, String> {
        let as_filter: Vec<&str> = pattern
            .split('/')
            .map(|l| if l.starts_with('{') && l.ends_with('}') && l.len() > 2 { "+" } else { l })
            .collect();
        topic::validate_filter(&as_filter.join("/"))
            .map_err(|e| format!("`{pattern}` is not a valid topic pattern: {e}"))?;
        let levels = pattern
            .split('/')
            .map(|l| match l {
                "+" => Level::Plus,
                "#" => Level::Hash,
                _ if l.starts_with('{') && l.ends_with('}') && l.len() > 2 => Level::Capture(l[1..l.len() - 1].into()),
                _ => Level::Literal(l.into()),
            })
            .collect();
        Ok(Pattern { levels })
    }

    fn captures(&self) -> impl Iterator<Item = &str> {
        self.levels.iter().filter_map(|l| match l {
            Level::Capture(name) => Some(name.as_str()),
            _ => None,
        })
    }

    /// Matches `topic`, returning the captured levels by name.
    pub fn matches<'t>(&self, topic: &'t str) -> Option<Vec<(&str, &'t str)>> {
        if topic.starts_with('$') && matches!(self.levels.first(), Some(Level::Plus | Level::Hash | Level::Capture(_)))
        {
            return None;
        }
        let mut captures = Vec::new();
        let mut names = topic.split('/');
        for level in &self.levels {
            match (level, names.next()) {
                (Level::Hash, _) => return Some(captures),
                (Level::Plus, Some(_)) => {}
                (Level::Capture(name), Some(value)) => captures.push((name.as_str(), value)),
                (Level::Literal(l), Some(value)) if l == value => {}
                _ => return None,
            }
        }
        names.next().is_none().then_some(captures)
    }
}

/// A rule ready to apply.
#[derive(Debug, Clone)]
pub struct Rule {
    pattern: Pattern,
    config: RuleConfig,
    route: Option<Arc<[Arc<str>]>>,
}

/// The values templates draw from.
pub struct Vars<'a> {
    /// Captures from the pattern.
    pub captures: Vec<(&'a str, &'a str)>,
    /// The topic or routing key.
    pub topic: &'a str,
    /// The device's client id.
    pub client_id: &'a str,
    /// The gateway id.
    pub gateway_id: &'a str,
    /// The protocol name.
    pub protocol: &'a str,
}

impl Vars<'_> {
    fn get(&self, name: &str) -> Option<&str> {
        match name {
            "topic" => Some(self.topic),
            "clientid" => Some(self.client_id),
            "gatewayid" => Some(self.gateway_id),
            "protocol" => Some(self.protocol),
            _ => self.captures.iter().find(|(n, _)| *n == name).map(|(_, v)| *v),
        }
    }

    /// Fills `{name}` placeholders.
    pub fn render(&self, template: &str) -> String {
        let mut out = String::with_capacity(template.len() + 16);
        let mut rest = template;
        while let Some(open) = rest.find('{') {
            out.push_str(&rest[..open]);
            let after = &rest[open + 1..];
            match after.find('}') {
                Some(close) => {
                    out.push_str(self.get(&after[..close]).unwrap_or_default());
                    rest = &after[close + 1..];
                }
                None => {
                    out.push_str(&rest[open..]);
                    rest = "";
                }
            }
        }
        out.push_str(rest);
        out
    }
}

impl Rule {
    /// Compiles a validated rule.
    pub fn new(config: RuleConfig) -> Result<Rule, String> {
        let pattern = Pattern::parse(&config.topic)?;
        let route = config.uplinks.as_ref().map(|u| u.iter().map(|n| Arc::from(n.as_str())).collect());
        Ok(Rule { pattern, config, route })
    }

    /// Captures if the rule applies to `topic`.
    pub fn matches<'t>(&self, topic: &'t str) -> Option<Vec<(&str, &'t str)>> {
        self.pattern.matches(topic)
    }

    /// The uplinks this rule routes to, if it restricts them.
    pub fn route(&self) -> Option<&Arc<[Arc<str>]>> {
        self.route.as_ref()
    }

    /// What a full spool does with this rule's QoS 0 messages.
    pub fn when_full(&self) -> WhenFull {
        self.config.when_full
    }

    /// Applies the rule's templates to a wrapped event.
    pub fn apply(&self, event: &mut CloudEvent, vars: &Vars<'_>) {
        if let Some(t) = &self.config.ty {
            event.ty = vars.render(t);
        }
        if let Some(t) = &self.config.source {
            event.source = vars.render(t);
        }
        if let Some(t) = &self.config.subject {
            event.subject = Some(vars.render(t));
        }
        for (name, t) in &self.config.extensions {
            event.extensions.insert(name.clone(), vars.render(t).as_str().into());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn named_wildcards_capture_levels() {
        let p = Pattern::parse("devices/{deviceid}/events/{type}").unwrap();
        assert_eq!(p.matches("devices/d7/events/temp"), Some(vec![("deviceid", "d7"), ("type", "temp")]));
        assert_eq!(p.matches("devices/d7/events"), None);
        assert_eq!(p.matches("devices/d7/events/temp/x"), None);
        let p = Pattern::parse("site/+/#").unwrap();
        assert_eq!(p.matches("site/a/b/c"), Some(vec![]));
        assert_eq!(Pattern::parse("{x}/#").unwrap().matches("$SYS/x"), None);
        assert!(Pattern::parse("a/#/b").is_err());
    }

    #[test]
    fn templates_must_use_known_variables() {
        let rule = RuleConfig {
            topic: "devices/{deviceid}/#".into(),
            ty: Some("com.example.{kind}".into()),
            source: None,
            subject: None,
            extensions: BTreeMap::new(),
            uplinks: None,
            when_full: WhenFull::Block,
        };
        let (key, problem) = rule.validate(&["local"]).unwrap_err();
        assert_eq!(key, "type");
        assert!(problem.contains("{kind}"));
    }

    #[test]
    fn rendering_fills_captures_and_builtins() {
        let vars =
            Vars { captures: vec![("type", "temp")], topic: "t", client_id: "c", gateway_id: "g", protocol: "mqtt" };
        assert_eq!(vars.render("io.{gatewayid}.{type}/{clientid}"), "io.g.temp/c");
    }
}
