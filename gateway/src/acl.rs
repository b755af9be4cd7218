//! Access control: which topics a device may publish to and which filters it may subscribe to, from
//! `[[auth.acl]]` rules. `{username}` and `{clientid}` in a rule's filters stand for the connecting device's.
//!
//! A rule applies to a user name, or to everyone with `user = "*"`. For a publish to topic T: a matching
//! `deny_publish` filter denies; else a matching `allow_publish` filter allows; else `auth.acl_default` decides.
//! For a subscription to filter F: a `deny_subscribe` filter that shares any topic with F denies; else an
//! `allow_subscribe` filter that covers every topic F can match allows; else the default. Devices get the protocol's
//! refusal: PUBACK/PUBREC 0x87 and SUBACK 0x87 in MQTT 5, SUBACK 0x80 in 3.1.1 (a denied 3.1.1 publish is
//! acknowledged and dropped, as 3.1.1 has no refusal short of closing).

use meshgate_protocols::mqtt::topic::matches;
use serde::Deserialize;

/// What an unmatched publish or subscription gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AclDefault {
    /// Allowed (the default: no rules, no restrictions).
    #[default]
    Allow,
    /// Denied.
    Deny,
}

/// One `[[auth.acl]]` rule.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AclRule {
    /// The user name it applies to, or `*` for every device (anonymous ones too).
    pub user: String,
    /// Topic filters the user may publish to.
    #[serde(default)]
    pub allow_publish: Vec<String>,
    /// Topic filters the user may subscribe within.
    #[serde(default)]
    pub allow_subscribe: Vec<String>,
    /// Topic filters the user may not publish to.
    #[serde(default)]
    pub deny_publish: Vec<String>,
    /// Topic filters the user may not subscribe to (or overlap).
    #[serde(default)]
    pub deny_subscribe: Vec<String>,
}

/// The rules in force.
#[derive(Debug, Clone, Default)]
pub struct Acl {
    rules: Vec<AclRule>,
    default: AclDefault,
}

/// A device's view of the rules: theirs, with `{username}` and `{clientid}` filled in.
#[derive(Debug, Clone, Default)]
pub struct DeviceAcl {
    allow_publish: Vec<String>,
    allow_subscribe: Vec<String>,
    deny_publish: Vec<String>,
    deny_subscribe: Vec<String>,
    default: AclDefault,
}

impl Acl {
    /// The rules and the default.
    pub fn new(rules: Vec<AclRule>, default: AclDefault) -> Acl {
        Acl { rules, default }
    }

    /// The rules for a device connected as `username` (if any) with `client_id`.
    pub fn for_device(&self, username: Option<&str>, client_id: &str) -> DeviceAcl {
        let fill = |f: &String| f.replace("{username}", username.unwrap_or_default()).replace("{clientid}", client_id);
        let mut acl = DeviceAcl { default: self.default, ..DeviceAcl::default() };
        for r in self.rules.iter().filter(|r| r.user == "*" || Some(r.user.as_str()) == username) {
            acl.allow_publish.extend(r.allow_publish.iter().map(fill));
            acl.allow_subscribe.extend(r.allow_subscribe.iter().map(fill));
            acl.deny_publish.extend(r.deny_publish.iter().map(fill));
            acl.deny_subscribe.extend(r.deny_subscribe.iter().map(fill));
        }
        acl
    }
}

impl DeviceAcl {
    fn default_allows(&self) -> bool {
        self.default == AclDefault::Allow
    }

    /// Whether the device may publish to `topic`.
    pub fn may_publish(&self, topic: &str) -> bool {
        if self.deny_publish.iter().any(|f| matches(f, topic)) {
            return false;
        }
        self.allow_publish.iter().any(|f| matches(f, topic)) || self.default_allows()
    }

    /// Whether the device may subscribe to `filter` (a `$share/{group}/` prefix is judged by its filter).
    pub fn may_subscribe(&self, filter: &str) -> bool {
        let filter = meshgate_protocols::mqtt::topic::split_shared(filter).map_or(filter, |(_, f)| f);
        if self.deny_subscribe.iter().any(|d| overlaps(d, filter)) {
            return false;
        }
        self.allow_subscribe.iter().any(|a| covers(a, filter)) || self.default_allows()
    }
}

/// Whether every topic `inner` can match is matched by `outer`.
pub fn covers(outer: &str, inner: &str) -> bool {
    if inner.starts_with('$') != outer.starts_with('$') && !outer.starts_with('$') && outer.starts_with(['+', '#']) {
        // A leading wildcard does not reach `$` topics.
        return false;
    }
    let mut o = outer.split('/');
    let mut i = inner.split('/');
    loop {
        match (o.next(), i.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(level)) if level != "#" => {}
            (Some(a), Some(b)) if a == b && a != "+" && a != "#" => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Whether some topic is matched by both filters.
pub fn overlaps(a: &str, b: &str) -> bool {
    let dollar = |f: &str| f.starts_with('$');
    let wild = |f: &str| f.starts_with(['+', '#']);
    if (dollar(a) && wild(b)) || (dollar(b) && wild(a)) {
        return false;
    }
    let mut x = a.split('/');
    let mut y = b.split('/');
    loop {
        match (x.next(), y.next()) {
            (Some("#"), _) | (_, Some("#")) => return true,
            (Some("+"), Some(_)) | (Some(_), Some("+")) => {}
            (Some(p), Some(q)) if p == q => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(user: &str) -> AclRule {
        AclRule {
            user: user.into(),
            allow_publish: vec!["devices/{clientid}/#".into()],
            allow_subscribe: vec!["devices/{clientid}/commands/#".into(), "broadcast/+".into()],
            deny_publish: vec!["devices/{clientid}/secret".into()],
            deny_subscribe: vec!["broadcast/admin".into()],
        }
    }

    #[test]
    fn rules_follow_the_device_and_deny_wins() {
        let acl = Acl::new(vec![rule("*")], AclDefault::Deny);
        let d = acl.for_device(Some("u"), "d7");
        assert!(d.may_publish("devices/d7/temp"));
        assert!(!d.may_publish("devices/d8/temp"), "another device's topic");
        assert!(!d.may_publish("devices/d7/secret"), "deny wins");
        assert!(d.may_subscribe("devices/d7/commands/#"));
        assert!(d.may_subscribe("devices/d7/commands/+/x"));
        assert!(!d.may_subscribe("devices/d7/#"), "wider than allowed");
        assert!(!d.may_subscribe("devices/+/commands/#"), "every device's commands");
        assert!(d.may_subscribe("broadcast/news"));
        assert!(!d.may_subscribe("broadcast/+"), "overlaps the denied broadcast/admin");
        assert!(d.may_subscribe("$share/g/devices/d7/commands/a"));
        let open = Acl::new(vec![], AclDefault::Allow).for_device(None, "x");
        assert!(open.may_publish("any") && open.may_subscribe("#"));
        let other_user = Acl::new(vec![rule("alice")], AclDefault::Deny).for_device(Some("bob"), "d7");
        assert!(!other_user.may_publish("devices/d7/temp"), "alice's rule is not bob's");
    }

    #[test]
    fn containment_and_overlap_of_filters() {
        assert!(covers("a/#", "a"));
        assert!(covers("a/#", "a/+/c"));
        assert!(covers("+/b", "x/b"));
        assert!(!covers("+/b", "#"));
        assert!(!covers("a/+", "a/#"));
        assert!(!covers("#", "$SYS/x"));
        assert!(covers("$SYS/#", "$SYS/x"));
        assert!(overlaps("a/+", "+/b"));
        assert!(overlaps("a/#", "a"));
        assert!(!overlaps("a/b", "a/c"));
        assert!(!overlaps("#", "$SYS/x"));
        assert!(!overlaps("a/b/c", "a/b"));
    }
}
