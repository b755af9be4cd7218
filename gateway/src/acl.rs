//! Access control: which topics a device may publish to, which filters it may subscribe to and which topics it
//! may read, from `[[auth.acl]]` rules. `{username}` and `{clientid}` in a rule's filters stand for the
//! connecting device's.
//!
//! A rule applies to a user name, or to everyone with `user = "*"`. The semantics are Mosquitto's:
//!
//! - **An allow list means "this and nothing else".** A device to which any applicable rule grants something
//!   (an `allow_publish` or `allow_subscribe` filter) may do only what the rules grant. For devices that no rule
//!   grants anything, `auth.acl_default` decides what the deny lists leave; a rule with only deny lists takes away
//!   from that default and nothing more.
//! - **Publish** to topic T: a matching `deny_publish` filter denies; else a matching `allow_publish` filter
//!   allows; else the device's default.
//! - **Read** topic T (every delivery, retained ones included): a matching `deny_subscribe` filter denies; else a
//!   matching `allow_subscribe` filter allows; else the default.
//! - **Subscribe** to filter F (`$share/{group}/` judged by the filter after it): refused when F lies entirely
//!   inside a `deny_subscribe` filter, or when the device may read nothing F can match; otherwise granted, and
//!   what F matches that the device may not read is never delivered to it.
//!
//! A placeholder is filled only with a value that cannot widen the filter: a user name or client id holding
//! `/`, `+`, `#` or U+0000 fills nothing, so an `allow_*` filter using it is dropped for that device (a client id
//! `+` must not turn `devices/{clientid}/#` into every device's topics), while a `deny_*` filter using it still
//! denies the filter with that placeholder standing for any single level.
//!
//! **`$SYS/` topics** are the gateway's own (see [`crate::sys`]): no device may publish to them, and only a device
//! whose rules grant them explicitly (an `allow_subscribe` filter starting with `$SYS`) may read them;
//! `acl_default = "allow"` does not open them.
//!
//! Devices get the protocol's refusal: PUBACK/PUBREC 0x87 and SUBACK 0x87 in MQTT 5, SUBACK 0x80 in 3.1.1 (a
//! denied 3.1.1 publish is acknowledged and dropped, as 3.1.1 has no refusal short of closing), `granted: false`
//! on `cloudevents.json`, 403 ACCESS_REFUSED on an AMQP bind.

use meshgate_protocols::mqtt::topic::{matches, split_shared};
use serde::Deserialize;

/// What a device no rule grants anything gets, where no deny rule decides.
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
    /// Topic filters the user may subscribe within (and read).
    #[serde(default)]
    pub allow_subscribe: Vec<String>,
    /// Topic filters the user may not publish to.
    #[serde(default)]
    pub deny_publish: Vec<String>,
    /// Topic filters the user may not read: subscriptions inside one are refused, wider ones never deliver them.
    #[serde(default)]
    pub deny_subscribe: Vec<String>,
}

impl AclRule {
    /// Every filter of the rule with the name of its list, to validate.
    pub fn filters(&self) -> impl Iterator<Item = (&'static str, &str)> {
        let lists = [
            ("allow_publish", &self.allow_publish),
            ("allow_subscribe", &self.allow_subscribe),
            ("deny_publish", &self.deny_publish),
            ("deny_subscribe", &self.deny_subscribe),
        ];
        lists.into_iter().flat_map(|(name, list)| list.iter().map(move |f| (name, f.as_str())))
    }

    fn grants(&self) -> bool {
        !self.allow_publish.is_empty() || !self.allow_subscribe.is_empty()
    }
}

/// The rules in force.
#[derive(Debug, Clone, Default)]
pub struct Acl {
    rules: Vec<AclRule>,
    default: AclDefault,
}

/// A device's view of the rules: theirs, with `{username}` and `{clientid}` filled in.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceAcl {
    allow_publish: Vec<String>,
    allow_subscribe: Vec<String>,
    deny_publish: Vec<String>,
    deny_subscribe: Vec<String>,
    /// What the rules leave undecided gets: `Deny` once any rule grants the device something.
    default: AclDefault,
}

/// The answer to a subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubscribeVerdict {
    /// Granted; everything it matches may be read.
    Granted,
    /// Granted; some topics it matches may not be read and are never delivered.
    Filtered,
    /// Refused: the device may read nothing it matches.
    Refused,
}

impl SubscribeVerdict {
    /// Whether the subscription is granted (possibly filtered).
    pub fn granted(self) -> bool {
        self != SubscribeVerdict::Refused
    }
}

impl Acl {
    /// The rules and the default.
    pub fn new(rules: Vec<AclRule>, default: AclDefault) -> Acl {
        Acl { rules, default }
    }

    /// The rules for a device connected as `username` (if any) with `client_id`.
    pub fn for_device(&self, username: Option<&str>, client_id: &str) -> DeviceAcl {
        let safe = |v: &str| !v.contains(['/', '+', '#', '\0']);
        let username = username.unwrap_or_default();
        let (user_ok, client_ok) = (safe(username), safe(client_id));
        let fill = |f: &String, widen: bool| -> Option<String> {
            let bad = (!user_ok && f.contains("{username}")) || (!client_ok && f.contains("{clientid}"));
            match (bad, widen) {
                (false, _) => Some(f.replace("{username}", username).replace("{clientid}", client_id)),
                // An allow filter the placeholder could widen is dropped.
                (true, true) => None,
                // A deny filter keeps denying, the placeholder standing for any one level.
                (true, false) => Some(f.replace("{username}", "+").replace("{clientid}", "+")),
            }
        };
        let mut acl = DeviceAcl { default: self.default, ..DeviceAcl::default() };
        for r in self.rules.iter().filter(|r| r.user == "*" || (r.user == username && !username.is_empty())) {
            if r.grants() {
                acl.default = AclDefault::Deny;
            }
            acl.allow_publish.extend(r.allow_publish.iter().filter_map(|f| fill(f, true)));
            acl.allow_subscribe.extend(r.allow_subscribe.iter().filter_map(|f| fill(f, true)));
            acl.deny_publish.extend(r.deny_publish.iter().filter_map(|f| fill(f, false)));
            acl.deny_subscribe.extend(r.deny_subscribe.iter().filter_map(|f| fill(f, false)));
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
        if is_sys(topic) || self.deny_publish.iter().any(|f| matches(f, topic)) {
            return false;
        }
        self.allow_publish.iter().any(|f| matches(f, topic)) || self.default_allows()
    }

    /// Whether the device may be delivered a message on `topic`.
    pub fn may_read(&self, topic: &str) -> bool {
        if self.deny_subscribe.iter().any(|f| matches(f, topic)) {
            return false;
        }
        self.allow_subscribe.iter().any(|f| matches(f, topic)) || (self.default_allows() && !is_sys(topic))
    }

    /// Whether the device may read every topic, so deliveries need no check.
    pub fn reads_everything(&self) -> bool {
        self.deny_subscribe.is_empty() && self.default_allows()
    }

    /// The answer to a subscription to `filter` (a `$share/{group}/` prefix is judged by its filter).
    pub fn subscribe(&self, filter: &str) -> SubscribeVerdict {
        let filter = split_shared(filter).map_or(filter, |(_, f)| f);
        if self.deny_subscribe.iter().any(|d| covers(d, filter)) {
            return SubscribeVerdict::Refused;
        }
        // `$SYS/` is read only where a rule grants it, whatever the default.
        let default = self.default_allows() && !is_sys(filter);
        let readable = default || self.allow_subscribe.iter().any(|a| overlaps(a, filter));
        if !readable {
            return SubscribeVerdict::Refused;
        }
        let whole = self.deny_subscribe.iter().all(|d| !overlaps(d, filter))
            && (default || self.allow_subscribe.iter().any(|a| covers(a, filter)));
        if whole { SubscribeVerdict::Granted } else { SubscribeVerdict::Filtered }
    }

    /// Whether a subscription to `filter` is granted (possibly filtered).
    pub fn may_subscribe(&self, filter: &str) -> bool {
        self.subscribe(filter).granted()
    }
}

/// Whether a topic or filter lies in the gateway's `$SYS/` tree.
pub fn is_sys(topic: &str) -> bool {
    topic == "$SYS" || topic.starts_with("$SYS/")
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
    use super::SubscribeVerdict::{Filtered, Granted, Refused};
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

    fn only_deny(filters: &[&str]) -> AclRule {
        AclRule {
            user: "*".into(),
            allow_publish: vec![],
            allow_subscribe: vec![],
            deny_publish: vec![],
            deny_subscribe: filters.iter().map(|f| f.to_string()).collect(),
        }
    }

    #[test]
    fn sys_topics_are_read_only_where_a_rule_grants_them_and_never_published() {
        let open = Acl::new(vec![], AclDefault::Allow).for_device(Some("u"), "c");
        assert_eq!(open.subscribe("$SYS/#"), Refused, "the default does not open $SYS");
        assert!(!open.may_read("$SYS/broker/uptime"));
        assert!(open.may_read("a/b"));
        let monitor = AclRule {
            user: "ops".into(),
            allow_publish: vec![],
            allow_subscribe: vec!["$SYS/#".into()],
            deny_publish: vec![],
            deny_subscribe: vec![],
        };
        let ops = Acl::new(vec![monitor], AclDefault::Allow).for_device(Some("ops"), "c");
        assert_eq!(ops.subscribe("$SYS/#"), Granted);
        assert!(ops.may_read("$SYS/broker/clients/connected"));
        assert!(!ops.may_publish("$SYS/broker/version"), "nobody publishes into $SYS");
    }

    #[test]
    fn rules_follow_the_device_and_deny_wins() {
        let acl = Acl::new(vec![rule("*")], AclDefault::Deny);
        let d = acl.for_device(Some("u"), "d7");
        assert!(d.may_publish("devices/d7/temp"));
        assert!(!d.may_publish("devices/d8/temp"), "another device's topic");
        assert!(!d.may_publish("devices/d7/secret"), "deny wins");
        assert_eq!(d.subscribe("devices/d7/commands/#"), Granted);
        assert_eq!(d.subscribe("devices/d7/commands/+/x"), Granted);
        assert_eq!(d.subscribe("devices/d7/#"), Filtered, "wider than allowed: only the commands are delivered");
        assert_eq!(d.subscribe("devices/+/commands/#"), Filtered, "every device's commands: only its own");
        assert_eq!(d.subscribe("devices/d8/#"), Refused, "nothing in it may be read");
        assert_eq!(d.subscribe("broadcast/news"), Granted);
        assert_eq!(d.subscribe("broadcast/+"), Filtered, "overlaps the denied broadcast/admin");
        assert_eq!(d.subscribe("broadcast/admin"), Refused, "inside a denied filter");
        assert_eq!(d.subscribe("$share/g/devices/d7/commands/a"), Granted, "judged after the share name");
        assert_eq!(d.subscribe("$share/g/devices/d8/commands/a"), Refused);
        assert!(d.may_read("devices/d7/commands/reboot") && d.may_read("broadcast/news"));
        assert!(!d.may_read("devices/d8/commands/reboot") && !d.may_read("broadcast/admin"));
        let open = Acl::new(vec![], AclDefault::Allow).for_device(None, "x");
        assert!(open.may_publish("any") && open.subscribe("#") == Granted && open.reads_everything());
        let other_user = Acl::new(vec![rule("alice")], AclDefault::Deny).for_device(Some("bob"), "d7");
        assert!(!other_user.may_publish("devices/d7/temp"), "alice's rule is not bob's");
    }

    #[test]
    fn an_allow_list_means_this_and_nothing_else() {
        let mut r = rule("alice");
        r.allow_subscribe.clear();
        let acl = Acl::new(vec![r], AclDefault::Allow);
        let alice = acl.for_device(Some("alice"), "a1");
        assert!(alice.may_publish("devices/a1/x"));
        assert!(!alice.may_publish("elsewhere"), "granted something, so only that");
        assert_eq!(alice.subscribe("#"), Refused, "no read grant at all");
        let bob = acl.for_device(Some("bob"), "b1");
        assert!(bob.may_publish("elsewhere") && bob.subscribe("#") == Granted, "no rule: acl_default");
    }

    #[test]
    fn deny_only_rules_take_away_from_the_default() {
        let acl = Acl::new(vec![only_deny(&["test/nosubscribe"])], AclDefault::Allow);
        let d = acl.for_device(Some("anyone"), "c");
        assert_eq!(d.subscribe("#"), Filtered, "granted, the denied topic filtered out");
        assert_eq!(d.subscribe("test/nosubscribe"), Refused);
        assert_eq!(d.subscribe("test/+"), Filtered);
        assert_eq!(d.subscribe("test/other"), Granted);
        assert!(d.may_read("test/other") && !d.may_read("test/nosubscribe"));
        assert!(d.may_publish("test/nosubscribe"), "publishing is another list");
        assert!(!d.reads_everything());
    }

    #[test]
    fn placeholders_never_widen_a_filter() {
        let acl = Acl::new(vec![rule("*")], AclDefault::Allow);
        for sneaky in ["+", "#", "d7/commands", "a\0b"] {
            let d = acl.for_device(Some("u"), sneaky);
            assert!(!d.may_publish("devices/d7/temp"), "client id {sneaky:?}");
            assert_eq!(d.subscribe("devices/d7/commands/reboot"), Refused, "client id {sneaky:?}");
            assert!(!d.may_publish("devices/+/secret"), "the deny still applies to any one level");
        }
        let named = Acl::new(
            vec![AclRule { allow_publish: vec!["users/{username}/#".into()], ..only_deny(&[]) }],
            AclDefault::Allow,
        );
        assert!(!named.for_device(Some("a/b"), "c").may_publish("users/a/b/x"));
        assert!(named.for_device(Some("ab"), "c").may_publish("users/ab/x"));
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
