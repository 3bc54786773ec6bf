//! Key hash to key id: an open-addressed table whose probes can be loaded ahead.

use std::mem::size_of;

use crate::sketch::prefetch_read;

/// No id: an empty slot.
const EMPTY: u32 = u32::MAX;

/// Smallest table, in slots (a power of two).
const MIN_SLOTS: usize = 16;

#[derive(Debug, Clone, Copy)]
struct Slot {
    hash: u64,
    id: u32,
}

const EMPTY_SLOT: Slot = Slot { hash: 0, id: EMPTY };

/// Ids by the hash of their key, with linear probing, at most half full.
///
/// The table holds only hashes and ids; whether an id's key is the one looked
/// up is the caller's to say (`is_key`), so the key text is stored once, by
/// the caller. Unlike a general-purpose map, a lookup's first probe is
/// addressable before the lookup ([`prefetch`](Self::prefetch),
/// [`first_id`](Self::first_id)), so a batch of lookups can overlap their
/// cache misses (see [`super::interner::Interner::resolve`]).
#[derive(Debug, Clone, Default)]
pub(super) struct IdTable {
    slots: Vec<Slot>,
    len: usize,
}

impl IdTable {
    pub(super) fn len(&self) -> usize {
        self.len
    }

    #[inline]
    fn mask(&self) -> usize {
        self.slots.len() - 1
    }

    #[inline]
    fn home(&self, hash: u64) -> usize {
        // foldhash mixes every bit of its output (see Interner::hash).
        hash as usize & self.mask()
    }

    /// The id of the key hashed to `hash` for which `is_key` holds, if any.
    #[inline]
    pub(super) fn find(&self, hash: u64, mut is_key: impl FnMut(u32) -> bool) -> Option<u32> {
        if self.slots.is_empty() {
            return None;
        }
        let mut i = self.home(hash);
        loop {
            let slot = self.slots[i];
            if slot.id == EMPTY {
                return None;
            }
            if slot.hash == hash && is_key(slot.id) {
                return Some(slot.id);
            }
            i = (i + 1) & self.mask();
        }
    }

    /// Hints the first slot a lookup of `hash` reads.
    #[inline]
    pub(super) fn prefetch(&self, hash: u64) {
        if !self.slots.is_empty() {
            prefetch_read(&self.slots[self.home(hash)]);
        }
    }

    /// The id in the first slot a lookup of `hash` reads, if its hash is
    /// `hash`: the likely answer, to load its key ahead.
    #[inline]
    pub(super) fn first_id(&self, hash: u64) -> Option<u32> {
        let slot = self.slots.get(self.home_or_zero(hash))?;
        (slot.id != EMPTY && slot.hash == hash).then_some(slot.id)
    }

    #[inline]
    fn home_or_zero(&self, hash: u64) -> usize {
        if self.slots.is_empty() {
            0
        } else {
            self.home(hash)
        }
    }

    /// Adds `id` under `hash`; its key must not be in the table.
    pub(super) fn insert(&mut self, hash: u64, id: u32) {
        debug_assert_ne!(id, EMPTY);
        if 2 * (self.len + 1) > self.slots.len() {
            self.resize(MIN_SLOTS.max(4 * (self.len + 1)).next_power_of_two());
        }
        self.place(Slot { hash, id });
        self.len += 1;
    }

    fn place(&mut self, slot: Slot) {
        let mut i = self.home(slot.hash);
        while self.slots[i].id != EMPTY {
            i = (i + 1) & self.mask();
        }
        self.slots[i] = slot;
    }

    /// Removes `id`, held under `hash`.
    pub(super) fn remove(&mut self, hash: u64, id: u32) {
        let mut hole = self.home(hash);
        while self.slots[hole].id != id {
            debug_assert_ne!(self.slots[hole].id, EMPTY, "id {id} is in the table");
            hole = (hole + 1) & self.mask();
        }
        // Backward-shift deletion: move each later slot of the run whose home
        // is not between the hole and it into the hole, so no probe that
        // passed the hole stops early. No tombstones.
        let mut next = hole;
        loop {
            next = (next + 1) & self.mask();
            let slot = self.slots[next];
            if slot.id == EMPTY {
                break;
            }
            let home = self.home(slot.hash);
            // Whether `home` lies cyclically in (hole, next]: then `slot` stays.
            let stays = if hole <= next {
                hole < home && home <= next
            } else {
                hole < home || home <= next
            };
            if !stays {
                self.slots[hole] = slot;
                hole = next;
            }
        }
        self.slots[hole] = EMPTY_SLOT;
        self.len -= 1;
    }

    /// Renames every id by `remap` (the new id by old id).
    pub(super) fn remap(&mut self, remap: &[u32]) {
        for slot in &mut self.slots {
            if slot.id != EMPTY {
                slot.id = remap[slot.id as usize];
            }
        }
    }

    /// Shrinks the table to the smallest size that holds its ids.
    pub(super) fn shrink_to_fit(&mut self) {
        let slots = if self.len == 0 {
            0
        } else {
            MIN_SLOTS.max(2 * self.len).next_power_of_two()
        };
        if slots < self.slots.len() {
            self.resize(slots);
        }
    }

    fn resize(&mut self, slots: usize) {
        let old = std::mem::replace(&mut self.slots, vec![EMPTY_SLOT; slots]);
        for slot in old.into_iter().filter(|slot| slot.id != EMPTY) {
            self.place(slot);
        }
    }

    pub(super) fn bytes(&self) -> usize {
        self.slots.capacity() * size_of::<Slot>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    proptest! {
        /// Inserts, removals, renames and shrinks agree with a map; hashes
        /// drawn from a few values so runs collide and wrap around the end.
        #[test]
        fn agrees_with_a_map(ops in prop::collection::vec((0u8..4, 0u32..48, 0u64..8), 1..400)) {
            let mut table = IdTable::default();
            // Key (the id's "text") by id, and its hash.
            let mut model: HashMap<u32, u64> = HashMap::new();
            let hash_of = |key: u32, salt: u64| (salt << 61) | u64::from(key % 5) | (u64::from(key % 3) << 4);
            for (op, key, salt) in ops {
                let hash = hash_of(key, salt % 2);
                match op {
                    0 | 1 if !model.contains_key(&key) => {
                        table.insert(hash, key);
                        model.insert(key, hash);
                    }
                    2 => {
                        if let Some(hash) = model.remove(&key) {
                            table.remove(hash, key);
                        }
                    }
                    3 => table.shrink_to_fit(),
                    _ => {}
                }
                prop_assert_eq!(table.len, model.len());
                prop_assert!(2 * table.len <= table.slots.len() || table.slots.is_empty());
                for probe in 0..48 {
                    for salt in 0..2 {
                        let hash = hash_of(probe, salt);
                        let want = (model.get(&probe) == Some(&hash)).then_some(probe);
                        prop_assert_eq!(table.find(hash, |id| id == probe), want);
                    }
                }
            }
            // Renaming every id keeps every key findable under its new id.
            let remap: Vec<u32> = (0..48).map(|id| 100 + id).collect();
            table.remap(&remap);
            for (&key, &hash) in &model {
                prop_assert_eq!(table.find(hash, |id| id == key + 100), Some(key + 100));
            }
        }
    }

    #[test]
    fn first_id_is_the_home_slots_id() {
        let mut table = IdTable::default();
        assert_eq!(table.first_id(7), None);
        table.insert(7, 3);
        assert_eq!(table.first_id(7), Some(3));
        // A key with the same home but another hash probes on.
        table.insert(7 + 1024, 4);
        assert_eq!(table.first_id(7 + 1024), None);
        assert_eq!(table.find(7 + 1024, |id| id == 4), Some(4));
    }
}
