//! How a batch's samples name their series keys: a key table, or pinned ids.

use super::error::Rejection;
use super::interner::Interner;
use super::limits::Limits;

#[cfg(doc)]
use super::Aggregator;

/// What one batch knows about an entry of its key table.
#[derive(Debug, Clone, Copy)]
enum BatchKey {
    /// Rejected (code 4 or 5): every sample with this key is.
    Invalid(Rejection),
    /// Valid, and not known to be interned (looked up again each time: a
    /// duplicate entry of the table may intern it).
    Unresolved,
    Interned(u32),
}

/// How a batch's samples name their series keys.
pub(super) trait KeySource {
    /// Codes 3-5 for sample key reference `key`.
    fn check(&self, key: u32, interner: &Interner) -> Result<(), Rejection>;
    /// The key's id if it is interned, without interning it.
    fn lookup(&mut self, key: u32, interner: &Interner) -> Option<u32>;
    /// The key's id, interning it if needed.
    fn intern(&mut self, key: u32, interner: &mut Interner) -> u32;
    /// The key's id if the batch already holds it, at no cost (no lookup);
    /// only to load its row ahead of time.
    fn known(&self, key: u32) -> Option<u32>;
    /// Whether every reference in `key_index` passes [`check`](Self::check).
    fn all_valid(&self, key_index: &[u32], interner: &Interner) -> bool;
    /// Hints the memory [`check`](Self::check) will read for `key`.
    fn prefetch(&self, _key: u32, _interner: &Interner) {}
}

/// A per-batch table of key strings; samples hold indexes into it.
pub(super) struct KeyTable<'k, K> {
    keys: &'k [K],
    /// Each entry's [`Interner::hash`], computed once.
    hashes: Vec<u64>,
    /// What the batch knows about each entry. Keys already interned are
    /// looked up once, up front; new ones are interned lazily, so keys whose
    /// samples are all late or rejected create no state.
    slots: Vec<BatchKey>,
}

impl<'k, K: AsRef<str>> KeyTable<'k, K> {
    pub(super) fn new(keys: &'k [K], limits: &Limits, interner: &Interner) -> Self {
        // Codes 4 and 5 once per entry; an invalid key is not hashed (it may be huge).
        let checks: Vec<Result<(), Rejection>> = keys
            .iter()
            .map(|key| limits.check_key(key.as_ref()))
            .collect();
        let hashes: Vec<u64> = keys
            .iter()
            .zip(&checks)
            .map(|(key, check)| check.map_or(0, |()| interner.hash(key.as_ref())))
            .collect();
        // All at once, so the lookups' cache misses overlap (see Interner::resolve);
        // the ids stay valid for the batch (keys are only removed between batches).
        let ids = interner.resolve(keys, &hashes);
        let slots = checks
            .into_iter()
            .zip(ids)
            .map(|(check, id)| match (check, id) {
                (Err(reason), _) => BatchKey::Invalid(reason),
                (Ok(()), Some(id)) => BatchKey::Interned(id),
                (Ok(()), None) => BatchKey::Unresolved,
            })
            .collect();
        Self {
            keys,
            hashes,
            slots,
        }
    }
}

impl<K: AsRef<str>> KeySource for KeyTable<'_, K> {
    fn all_valid(&self, key_index: &[u32], _: &Interner) -> bool {
        // Entries never turn invalid during a batch; the largest reference is found without a
        // branch per sample.
        let largest = key_index.iter().fold(0, |max, &k| max.max(k));
        (key_index.is_empty() || (largest as usize) < self.slots.len())
            && !self
                .slots
                .iter()
                .any(|slot| matches!(slot, BatchKey::Invalid(_)))
    }

    #[inline]
    fn check(&self, key: u32, _: &Interner) -> Result<(), Rejection> {
        match self.slots.get(key as usize) {
            None => Err(Rejection::UnknownKey),
            Some(BatchKey::Invalid(reason)) => Err(*reason),
            Some(_) => Ok(()),
        }
    }

    fn lookup(&mut self, key: u32, interner: &Interner) -> Option<u32> {
        let slot = &mut self.slots[key as usize];
        if let BatchKey::Interned(id) = *slot {
            return Some(id);
        }
        // Absence is not remembered: another entry of the table with the same
        // text may intern the key later in the batch.
        let k = key as usize;
        let id = interner.get_hashed(self.keys[k].as_ref(), self.hashes[k])?;
        *slot = BatchKey::Interned(id);
        Some(id)
    }

    #[inline]
    fn intern(&mut self, key: u32, interner: &mut Interner) -> u32 {
        let slot = &mut self.slots[key as usize];
        match *slot {
            BatchKey::Interned(id) => id,
            _ => {
                let k = key as usize;
                let id = interner.intern_hashed(self.keys[k].as_ref(), self.hashes[k]);
                *slot = BatchKey::Interned(id);
                id
            }
        }
    }

    #[inline]
    fn known(&self, key: u32) -> Option<u32> {
        match self.slots.get(key as usize) {
            Some(&BatchKey::Interned(id)) => Some(id),
            _ => None,
        }
    }
}

/// Samples name keys by the ids [`Aggregator::pin_keys`] returned.
pub(super) struct PinnedIds;

impl KeySource for PinnedIds {
    #[inline]
    fn check(&self, key: u32, interner: &Interner) -> Result<(), Rejection> {
        if interner.is_pinned(key) {
            Ok(())
        } else {
            Err(Rejection::UnknownKey)
        }
    }

    fn all_valid(&self, key_index: &[u32], interner: &Interner) -> bool {
        interner.all_pinned(key_index)
    }

    fn lookup(&mut self, key: u32, _: &Interner) -> Option<u32> {
        Some(key)
    }

    #[inline]
    fn intern(&mut self, key: u32, _: &mut Interner) -> u32 {
        key
    }

    #[inline]
    fn known(&self, key: u32) -> Option<u32> {
        Some(key)
    }

    #[inline]
    fn prefetch(&self, key: u32, interner: &Interner) {
        interner.prefetch_pin(key);
    }
}
