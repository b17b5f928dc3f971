//! Parts this aggregator recorded lately, so the child that completes a join finds its
//! siblings here instead of reading them back from the server: its join signal follows its
//! own part's create by nothing but the publish.
//!
//! Skipping the read is safe because a part record never changes once made (the first
//! recorded result of a node stands; nothing rewrites or deletes it), so a record kept here is
//! what the read would return. Only what the server confirmed comes in: a create that made
//! the record, or the record a create found there. A sibling not kept here (recorded by
//! another aggregator instance, before this one started, or forgotten to bound the memory)
//! is read, as every sibling was before.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use push0_protocol::{Blob, ChildProof};

/// Recorded parts by their key in the `parts` bucket, oldest forgotten first once the proofs
/// kept pass [`Recent::MAX_BYTES`] or the entries [`Recent::MAX_ENTRIES`].
#[derive(Default)]
pub(crate) struct Recent(Mutex<Kept>);

#[derive(Default)]
struct Kept {
    parts: HashMap<String, (u64, ChildProof)>,
    /// Keys in the order they came, each with the number it came under: a key forgotten, or
    /// kept again since, is passed over when its turn to be evicted comes.
    order: VecDeque<(String, u64)>,
    next: u64,
    bytes: usize,
}

impl Recent {
    /// Inline proofs kept, at most. Joins of small proofs complete within moments; a large
    /// proof is usually stored in the object store and kept here as its reference.
    pub(crate) const MAX_BYTES: usize = 32 << 20;
    pub(crate) const MAX_ENTRIES: usize = 65_536;

    /// Keeps `proof` as the record under `key`, which the server holds.
    pub(crate) fn keep(&self, key: String, proof: ChildProof) {
        let mut kept = self.0.lock().expect("recent parts lock");
        let seq = kept.next;
        kept.next += 1;
        let size = weight(&key, &proof);
        kept.order.push_back((key.clone(), seq));
        if let Some((_, old)) = kept.parts.insert(key.clone(), (seq, proof)) {
            kept.bytes -= weight(&key, &old);
        }
        kept.bytes += size;
        while kept.bytes > Self::MAX_BYTES || kept.order.len() > Self::MAX_ENTRIES {
            let Some((key, seq)) = kept.order.pop_front() else {
                break;
            };
            kept.forget_at(&key, Some(seq));
        }
    }

    /// The records kept under `keys`, those that are.
    pub(crate) fn find<'a>(&self, keys: impl IntoIterator<Item = &'a str>) -> Vec<ChildProof> {
        let kept = self.0.lock().expect("recent parts lock");
        keys.into_iter()
            .filter_map(|k| kept.parts.get(k).map(|(_, p)| p.clone()))
            .collect()
    }

    /// Forgets the records under `keys` (a join signalled: its children are not needed).
    pub(crate) fn forget<'a>(&self, keys: impl IntoIterator<Item = &'a str>) {
        let mut kept = self.0.lock().expect("recent parts lock");
        for key in keys {
            kept.forget_at(key, None);
        }
    }

    #[cfg(test)]
    fn len(&self) -> (usize, usize) {
        let kept = self.0.lock().expect("recent parts lock");
        (kept.parts.len(), kept.bytes)
    }
}

impl Kept {
    /// Forgets `key`, if it is kept under `seq` (any, when None).
    fn forget_at(&mut self, key: &str, seq: Option<u64>) {
        let current = self.parts.get(key).map(|(s, _)| *s);
        if current.is_some()
            && (seq.is_none() || seq == current)
            && let Some((_, proof)) = self.parts.remove(key)
        {
            self.bytes -= weight(key, &proof);
        }
    }
}

/// What an entry costs, roughly: its key, its inline proof and its fields.
fn weight(key: &str, proof: &ChildProof) -> usize {
    let inline = match &proof.proof {
        Blob::Inline(bytes) => bytes.len(),
        Blob::Stored(_) => 128,
    };
    key.len() + inline + proof.proof_system.len() + 64
}

#[cfg(test)]
mod tests {
    use push0_protocol::NodeId;

    use super::*;

    fn proof(index: u32, bytes: usize) -> ChildProof {
        ChildProof {
            node: NodeId { level: 0, index },
            proof: Blob::Inline(vec![7; bytes]),
            proof_system: "sim".into(),
            critical_ms: 0,
        }
    }

    #[test]
    fn kept_records_are_found_until_forgotten() {
        let recent = Recent::default();
        recent.keep("a".into(), proof(0, 10));
        recent.keep("b".into(), proof(1, 10));
        let found = recent.find(["a", "b", "c"]);
        assert_eq!(found, vec![proof(0, 10), proof(1, 10)]);
        recent.forget(["a", "b"]);
        assert!(recent.find(["a", "b"]).is_empty());
        assert_eq!(recent.len(), (0, 0), "nothing kept, nothing counted");
    }

    #[test]
    fn the_oldest_are_forgotten_past_the_byte_bound() {
        let recent = Recent::default();
        let big = Recent::MAX_BYTES / 3;
        recent.keep("a".into(), proof(0, big));
        recent.keep("b".into(), proof(1, big));
        // Kept again: its first turn in the order no longer evicts it.
        recent.keep("a".into(), proof(0, big));
        recent.keep("c".into(), proof(2, big));
        let found = recent.find(["a", "b", "c"]);
        assert_eq!(found.len(), 2, "one of three had to go");
        assert!(recent.find(["b"]).is_empty(), "the oldest went: {found:?}");
        assert!(recent.len().1 <= Recent::MAX_BYTES);
    }

    #[test]
    fn entries_are_bounded_whatever_their_size() {
        let recent = Recent::default();
        for i in 0..Recent::MAX_ENTRIES + 10 {
            recent.keep(format!("k{i}"), proof(0, 0));
        }
        // Forgotten entries leave their place in the order, which is bounded too.
        recent.forget(["k20000", "k20001"]);
        let (entries, _) = recent.len();
        assert_eq!(entries, Recent::MAX_ENTRIES - 2);
        assert!(recent.find(["k0", "k9"]).is_empty(), "the first ten went");
        assert_eq!(recent.find(["k10"]).len(), 1);
    }
}
