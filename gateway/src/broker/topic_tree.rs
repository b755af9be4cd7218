//! The subscription index: a trie of topic-filter levels, so a publish visits only the branches its topic can
//! match (exact level, `+`, `#`), not every subscription.
//!
//! Matching follows MQTT 5 section 4.7: `+` matches one whole level, `#` the rest (including none: `a/#` matches
//! `a`), and a topic starting with `$` is not matched by a filter starting with a wildcard.

use std::collections::{BTreeMap, HashMap};

/// Subscribers by filter: `K` identifies a subscription (e.g. client and share group), `V` is its options.
#[derive(Debug)]
pub struct TopicTree<K, V> {
    root: Node<K, V>,
    len: usize,
}

#[derive(Debug)]
struct Node<K, V> {
    /// Subscriptions whose filter ends at this level.
    exact: BTreeMap<K, V>,
    /// Subscriptions whose filter ends with `#` after this level.
    rest: BTreeMap<K, V>,
    /// Named next levels.
    children: HashMap<String, Node<K, V>>,
    /// The `+` next level.
    plus: Option<Box<Node<K, V>>>,
}

impl<K, V> Default for Node<K, V> {
    fn default() -> Self {
        Node { exact: BTreeMap::new(), rest: BTreeMap::new(), children: HashMap::new(), plus: None }
    }
}

impl<K, V> Node<K, V> {
    fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.rest.is_empty() && self.children.is_empty() && self.plus.is_none()
    }
}

impl<K: Ord + Clone, V> Default for TopicTree<K, V> {
    fn default() -> Self {
        TopicTree { root: Node::default(), len: 0 }
    }
}

impl<K: Ord + Clone, V> TopicTree<K, V> {
    /// An empty tree.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many subscriptions it holds.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Adds (or replaces) `key`'s subscription to `filter` (a valid filter, `$share/` prefix removed); returns the
    /// value it replaced.
    pub fn insert(&mut self, filter: &str, key: K, value: V) -> Option<V> {
        let mut node = &mut self.root;
        let mut levels = filter.split('/').peekable();
        while let Some(level) = levels.next() {
            if level == "#" && levels.peek().is_none() {
                let old = node.rest.insert(key, value);
                self.len += usize::from(old.is_none());
                return old;
            }
            node = if level == "+" {
                node.plus.get_or_insert_with(Box::default)
            } else {
                node.children.entry(level.to_string()).or_default()
            };
        }
        let old = node.exact.insert(key, value);
        self.len += usize::from(old.is_none());
        old
    }

    /// Removes `key`'s subscription to `filter`; returns its value. Branches left empty are pruned.
    pub fn remove(&mut self, filter: &str, key: &K) -> Option<V> {
        let levels: Vec<&str> = filter.split('/').collect();
        let removed = Self::remove_at(&mut self.root, &levels, key);
        self.len -= usize::from(removed.is_some());
        removed
    }

    fn remove_at(node: &mut Node<K, V>, levels: &[&str], key: &K) -> Option<V> {
        match levels {
            [] => node.exact.remove(key),
            ["#"] => node.rest.remove(key),
            [level, rest @ ..] => {
                let removed;
                if *level == "+" {
                    let child = node.plus.as_deref_mut()?;
                    removed = Self::remove_at(child, rest, key);
                    if child.is_empty() {
                        node.plus = None;
                    }
                } else {
                    let child = node.children.get_mut(*level)?;
                    removed = Self::remove_at(child, rest, key);
                    if child.is_empty() {
                        node.children.remove(*level);
                    }
                }
                removed
            }
        }
    }

    /// Calls `f` with every subscription matching the topic `name`.
    pub fn for_each_match(&self, name: &str, mut f: impl FnMut(&K, &V)) {
        let levels: Vec<&str> = name.split('/').collect();
        Self::visit(&self.root, &levels, name.starts_with('$'), &mut f);
    }

    fn visit(node: &Node<K, V>, levels: &[&str], dollar_first: bool, f: &mut impl FnMut(&K, &V)) {
        if !dollar_first {
            node.rest.iter().for_each(|(k, v)| f(k, v));
        }
        match levels.split_first() {
            None => node.exact.iter().for_each(|(k, v)| f(k, v)),
            Some((level, rest)) => {
                if let Some(child) = node.children.get(*level) {
                    Self::visit(child, rest, false, f);
                }
                if !dollar_first && let Some(plus) = &node.plus {
                    Self::visit(plus, rest, false, f);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshgate_protocols::mqtt::topic::matches;
    use proptest::prelude::*;

    fn matched(tree: &TopicTree<u32, String>, name: &str) -> Vec<String> {
        let mut out = Vec::new();
        tree.for_each_match(name, |_, filter| out.push(filter.clone()));
        out.sort();
        out
    }

    #[test]
    fn wildcards_and_dollar_topics_follow_the_spec() {
        let mut t = TopicTree::new();
        for (i, f) in
            ["sport/tennis/player1/#", "sport/#", "sport/+", "+/+", "/+", "+", "#", "$SYS/#"].iter().enumerate()
        {
            t.insert(f, i as u32, f.to_string());
        }
        assert_eq!(matched(&t, "sport/tennis/player1"), ["#", "sport/#", "sport/tennis/player1/#"]);
        assert_eq!(matched(&t, "sport"), ["#", "+", "sport/#"]);
        assert_eq!(matched(&t, "sport/"), ["#", "+/+", "sport/#", "sport/+"]);
        assert_eq!(matched(&t, "/finance"), ["#", "+/+", "/+"]);
        assert_eq!(matched(&t, "$SYS/broker"), ["$SYS/#"]);
        assert_eq!(t.len(), 8);
        assert_eq!(t.remove("sport/+", &2), Some("sport/+".into()));
        assert_eq!(t.remove("sport/+", &2), None);
        assert_eq!(matched(&t, "sport/"), ["#", "+/+", "sport/#"]);
        for (i, f) in ["sport/tennis/player1/#", "sport/#", "+/+", "/+", "+", "#", "$SYS/#"].iter().enumerate() {
            let key = if i >= 2 { i as u32 + 1 } else { i as u32 };
            assert!(t.remove(f, &key).is_some(), "{f}");
        }
        assert!(t.is_empty());
        assert!(t.root.is_empty(), "every branch pruned");
    }

    fn level() -> impl Strategy<Value = String> {
        prop_oneof![Just("a".to_string()), Just("b".to_string()), Just(String::new()), Just("$x".to_string())]
    }

    fn filter() -> impl Strategy<Value = String> {
        (proptest::collection::vec(prop_oneof![3 => level(), 1 => Just("+".to_string())], 1..4), any::<bool>())
            .prop_map(|(mut levels, hash)| {
                if hash {
                    levels.push("#".into());
                }
                levels.join("/")
            })
    }

    proptest! {
        #[test]
        fn the_tree_matches_exactly_what_the_spec_matches(
            filters in proptest::collection::vec(filter(), 1..20),
            removals in proptest::collection::vec(any::<proptest::sample::Index>(), 0..5),
            names in proptest::collection::vec(proptest::collection::vec(level(), 1..5).prop_map(|l| l.join("/")), 1..10),
        ) {
            let mut tree = TopicTree::new();
            let mut live: BTreeMap<u32, String> = BTreeMap::new();
            for (i, f) in filters.iter().enumerate() {
                tree.insert(f, i as u32, f.clone());
                live.insert(i as u32, f.clone());
            }
            for r in removals {
                let key = r.index(filters.len()) as u32;
                let expected = live.remove(&key);
                prop_assert_eq!(tree.remove(&filters[key as usize], &key), expected);
            }
            prop_assert_eq!(tree.len(), live.len());
            for name in &names {
                let mut want: Vec<String> = live.values().filter(|f| matches(f, name)).cloned().collect();
                want.sort();
                prop_assert_eq!(matched(&tree, name), want, "topic {}", name);
            }
        }
    }
}
