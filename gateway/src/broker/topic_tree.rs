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

#[cfg(test)]
impl<K, V> Node<K, V> {
    fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.rest.is_empty() && self.children.is_empty() && self.plus.is_none()
    }
}

impl<K, V> Drop for TopicTree<K, V> {
    fn drop(&mut self) {
        drop_iteratively(std::mem::take(&mut self.root));
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

    /// Removes `key`'s subscription to `filter`; returns its value. Branches left empty are pruned. Iterative:
    /// a filter's depth never becomes stack depth.
    pub fn remove(&mut self, filter: &str, key: &K) -> Option<V> {
        let levels: Vec<&str> = filter.split('/').collect();
        let (path, last_is_rest) = match levels.split_last() {
            Some((&"#", path)) => (path, true),
            _ => (levels.as_slice(), false),
        };
        // Walk down once, read-only, noting the shallowest node from which everything below would be left empty.
        let mut node = &self.root;
        let mut prune_from: Option<usize> = None;
        for (depth, level) in path.iter().enumerate() {
            let child = if *level == "+" { node.plus.as_deref() } else { node.children.get(*level) };
            let child = child?;
            node = child;
            if depth + 1 == path.len() {
                break; // the end node: judged below, by what is left once `key` leaves it
            }
            let links = child.children.len() + usize::from(child.plus.is_some());
            let only_link = child.exact.is_empty() && child.rest.is_empty() && links == 1;
            match (only_link, prune_from) {
                (true, None) => prune_from = Some(depth),
                (false, _) => prune_from = None,
                (true, Some(_)) => {}
            }
        }
        // The end node itself: empty once `key` leaves it?
        let subs = if last_is_rest { &node.rest } else { &node.exact };
        let others = node.exact.len() + node.rest.len() + node.children.len() + usize::from(node.plus.is_some());
        if !subs.contains_key(key) {
            return None;
        }
        let end_empties = others == 1;
        let cut = match (end_empties, prune_from) {
            (true, Some(d)) => Some(d),
            (true, None) => path.len().checked_sub(1),
            (false, _) => None,
        };
        // Walk down again, mutably, to the node holding the subscription, or to the parent of the cut.
        let stop = cut.unwrap_or(path.len());
        let mut node = &mut self.root;
        for level in path.iter().take(stop) {
            node = if *level == "+" { node.plus.as_deref_mut()? } else { node.children.get_mut(*level)? };
        }
        let removed = match cut {
            Some(depth) => {
                let level = path.get(depth)?;
                let subtree = if *level == "+" { node.plus.take().map(|b| *b) } else { node.children.remove(*level) };
                let mut end = subtree?;
                let value = Self::take_from_chain(&mut end, path.get(depth + 1..)?, key, last_is_rest);
                drop_iteratively(end);
                value
            }
            None if last_is_rest => node.rest.remove(key),
            None => node.exact.remove(key),
        };
        self.len -= usize::from(removed.is_some());
        removed
    }

    /// Takes `key`'s value out of the node at `path` below `node` (a branch about to be dropped).
    fn take_from_chain(node: &mut Node<K, V>, path: &[&str], key: &K, rest: bool) -> Option<V> {
        let mut node = node;
        for level in path {
            node = if *level == "+" { node.plus.as_deref_mut()? } else { node.children.get_mut(*level)? };
        }
        if rest { node.rest.remove(key) } else { node.exact.remove(key) }
    }

    /// Calls `f` with every subscription matching the topic `name`. Iterative: a topic's depth never becomes
    /// stack depth.
    pub fn for_each_match(&self, name: &str, mut f: impl FnMut(&K, &V)) {
        // (node, the levels of `name` it has not consumed: `None` once all are); only the root sees a `$` topic's
        // first level. The stack is the walk's one allocation, as the collected levels were for the recursion.
        let mut stack: Vec<(&Node<K, V>, Option<&str>)> = vec![(&self.root, Some(name))];
        while let Some((node, rest)) = stack.pop() {
            let dollar_first = std::ptr::eq(node, &self.root) && name.starts_with('$');
            if !dollar_first {
                node.rest.iter().for_each(|(k, v)| f(k, v));
            }
            let Some(rest) = rest else {
                node.exact.iter().for_each(|(k, v)| f(k, v));
                continue;
            };
            let (level, after) = match rest.split_once('/') {
                Some((level, after)) => (level, Some(after)),
                None => (rest, None),
            };
            if !dollar_first && let Some(plus) = &node.plus {
                stack.push((plus, after));
            }
            if let Some(child) = node.children.get(level) {
                stack.push((child, after));
            }
        }
    }
}

/// Drops a branch level by level, so a deep branch never recurses in `Drop`.
fn drop_iteratively<K, V>(node: Node<K, V>) {
    let mut pending = vec![node];
    while let Some(mut node) = pending.pop() {
        pending.extend(node.children.drain().map(|(_, child)| child));
        if let Some(plus) = node.plus.take() {
            pending.push(*plus);
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

    #[test]
    fn filters_and_topics_far_deeper_than_the_stack_are_matched_removed_and_dropped() {
        // Recursion over levels overflowed a worker's stack at a few thousand; this runs on a test thread's 2 MiB.
        let deep = "a/".repeat(200_000);
        let mut t = TopicTree::new();
        t.insert(&format!("{deep}#"), 1u32, "deep".to_string());
        t.insert(&format!("{deep}b"), 2u32, "deep-b".to_string());
        t.insert("a/+/#", 3u32, "shallow".to_string());
        assert_eq!(matched(&t, &format!("{deep}b")), ["deep", "deep-b", "shallow"]);
        assert_eq!(t.remove(&format!("{deep}#"), &1), Some("deep".into()));
        assert_eq!(matched(&t, &format!("{deep}b")), ["deep-b", "shallow"]);
        assert_eq!(t.remove(&format!("{deep}b"), &2), Some("deep-b".into()));
        assert_eq!(t.len(), 1);
        assert_eq!(t.root.children.get("a").map(|a| a.children.len()), Some(0), "the deep branch is pruned");
        t.insert(&format!("{deep}c"), 4u32, "left for drop".to_string());
    }

    #[test]
    fn removal_prunes_only_what_it_leaves_empty() {
        let mut t = TopicTree::new();
        t.insert("a/b/c/d", 1u32, String::new());
        t.insert("a/b", 2u32, String::new());
        t.insert("a/b/x/#", 3u32, String::new());
        assert!(t.remove("a/b/c/d", &1).is_some());
        assert!(!t.root.children["a"].children["b"].children.contains_key("c"), "c and d pruned");
        assert_eq!(t.remove("a/b/c/d", &1), None);
        assert_eq!(t.remove("a/b/x", &3), None, "a/b/x is not a/b/x/#");
        assert!(t.remove("a/b/x/#", &3).is_some());
        assert!(t.root.children["a"].children["b"].children.is_empty());
        assert!(t.remove("a/b", &2).is_some());
        assert!(t.root.is_empty());
        t.insert("#", 5, String::new());
        t.insert("", 6, String::new());
        assert!(t.remove("#", &5).is_some() && t.remove("", &6).is_some());
        assert!(t.root.is_empty() && t.is_empty());
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
