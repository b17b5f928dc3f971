//! A bounded map of records a service wrote or read moments ago, kept so that a later step
//! can skip reading them back from the server. Why skipping a read is safe is the caller's to
//! argue where it keeps an entry; this only bounds the memory: once the entries weigh more
//! than a byte bound, or number more than an entry bound, the oldest are forgotten first.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

/// Entries by key, each with the weight its `weight` function gives it.
pub struct Kept<V> {
    inner: Mutex<Inner<V>>,
    max_bytes: usize,
    max_entries: usize,
    weight: fn(&str, &V) -> usize,
}

struct Inner<V> {
    entries: HashMap<String, (u64, V)>,
    /// Keys in the order they came, each with the number it came under: a key forgotten, or
    /// kept again since, is passed over when its turn to be evicted comes.
    order: VecDeque<(String, u64)>,
    next: u64,
    bytes: usize,
}

impl<V: Clone> Kept<V> {
    /// At most `max_entries` entries weighing `max_bytes` in all, by `weight` (roughly what an
    /// entry costs in memory: its key, its bytes and its fields).
    pub fn new(max_bytes: usize, max_entries: usize, weight: fn(&str, &V) -> usize) -> Self {
        Self {
            inner: Mutex::new(Inner {
                entries: HashMap::new(),
                order: VecDeque::new(),
                next: 0,
                bytes: 0,
            }),
            max_bytes,
            max_entries,
            weight,
        }
    }

    /// Keeps `value` under `key`, in place of what was kept there.
    pub fn keep(&self, key: String, value: V) {
        let mut inner = self.inner.lock().expect("kept lock");
        let seq = inner.next;
        inner.next += 1;
        inner.bytes += (self.weight)(&key, &value);
        inner.order.push_back((key.clone(), seq));
        if let Some((_, old)) = inner.entries.insert(key.clone(), (seq, value)) {
            inner.bytes -= (self.weight)(&key, &old);
        }
        while inner.bytes > self.max_bytes || inner.order.len() > self.max_entries {
            let Some((key, seq)) = inner.order.pop_front() else {
                break;
            };
            self.remove(&mut inner, &key, Some(seq));
        }
    }

    /// The values kept under `keys`, those that are.
    pub fn find<'a>(&self, keys: impl IntoIterator<Item = &'a str>) -> Vec<V> {
        let inner = self.inner.lock().expect("kept lock");
        keys.into_iter()
            .filter_map(|k| inner.entries.get(k).map(|(_, v)| v.clone()))
            .collect()
    }

    /// The value kept under `key`, forgotten here.
    pub fn take(&self, key: &str) -> Option<V> {
        let mut inner = self.inner.lock().expect("kept lock");
        self.remove(&mut inner, key, None)
    }

    /// Forgets what is kept under `keys`.
    pub fn forget<'a>(&self, keys: impl IntoIterator<Item = &'a str>) {
        let mut inner = self.inner.lock().expect("kept lock");
        for key in keys {
            self.remove(&mut inner, key, None);
        }
    }

    /// Entries kept and their weight.
    pub fn len(&self) -> (usize, usize) {
        let inner = self.inner.lock().expect("kept lock");
        (inner.entries.len(), inner.bytes)
    }

    /// Whether nothing is kept.
    pub fn is_empty(&self) -> bool {
        self.len().0 == 0
    }

    /// Removes `key`'s entry if it is kept under `seq` (whatever it is kept under, when None).
    fn remove(&self, inner: &mut Inner<V>, key: &str, seq: Option<u64>) -> Option<V> {
        let current = inner.entries.get(key).map(|(s, _)| *s)?;
        if seq.is_some_and(|s| s != current) {
            return None;
        }
        let (_, value) = inner.entries.remove(key)?;
        inner.bytes -= (self.weight)(key, &value);
        Some(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kept(max_bytes: usize, max_entries: usize) -> Kept<Vec<u8>> {
        Kept::new(max_bytes, max_entries, |key, v| key.len() + v.len())
    }

    #[test]
    fn kept_values_are_found_until_taken_or_forgotten() {
        let k = kept(1 << 20, 100);
        k.keep("a".into(), vec![1; 10]);
        k.keep("b".into(), vec![2; 10]);
        assert_eq!(k.find(["a", "b", "c"]), vec![vec![1; 10], vec![2; 10]]);
        assert_eq!(k.take("a"), Some(vec![1; 10]));
        assert_eq!(k.take("a"), None, "taken once");
        k.forget(["b"]);
        assert!(k.find(["a", "b"]).is_empty());
        assert_eq!(k.len(), (0, 0), "nothing kept, nothing counted");
    }

    #[test]
    fn the_oldest_are_forgotten_past_the_byte_bound() {
        let k = kept(2_500, 100);
        k.keep("a".into(), vec![0; 999]);
        k.keep("b".into(), vec![0; 999]);
        // Kept again: its first turn in the order no longer evicts it.
        k.keep("a".into(), vec![1; 999]);
        k.keep("c".into(), vec![0; 999]);
        assert!(k.find(["b"]).is_empty(), "the oldest went");
        assert_eq!(k.find(["a", "c"]).len(), 2);
        assert_eq!(k.find(["a"]), vec![vec![1; 999]], "as kept last");
        assert_eq!(k.len(), (2, 2_000));
    }

    #[test]
    fn entries_are_bounded_whatever_their_size() {
        let k = kept(1 << 20, 1_000);
        for i in 0..1_010 {
            k.keep(format!("k{i}"), Vec::new());
        }
        // Forgotten entries leave their place in the order, which is bounded too.
        k.forget(["k500", "k501"]);
        assert_eq!(k.len().0, 998);
        assert!(k.find(["k0", "k9"]).is_empty(), "the first ten went");
        assert_eq!(k.find(["k10"]).len(), 1);
    }
}
