//! Series keys interned to dense, reference-counted ids.

use std::mem::size_of;

use std::hash::BuildHasher;

use super::id_table::IdTable;
use crate::sketch::prefetch_read;

#[cfg(doc)]
use super::Aggregator;

/// Marks a free id in [`Interner::refs`].
pub(super) const FREE: u32 = u32::MAX;

/// Below this many id slots the interner is only compacted once it is empty.
/// Tiny in tests, so the property test renumbers keys often.
const COMPACT_MIN_SLOTS: usize = if cfg!(test) { 2 } else { 1024 };

/// Key bytes stored in a [`KeyText`] itself: 30 (with its tag and length, 32
/// bytes, one aligned half cache line). Longer keys go on the heap.
const INLINE_KEY_BYTES: usize = 30;

/// A series key's text, stored where a lookup finds it with one cache miss:
/// inline when it fits (most series keys are short), else on the heap (one
/// more miss). An empty inline text marks a free id.
#[derive(Debug, Clone)]
#[repr(align(32))]
pub(super) enum KeyText {
    Inline {
        len: u8,
        bytes: [u8; INLINE_KEY_BYTES],
    },
    Heap(Box<str>),
}

const _: () = assert!(size_of::<KeyText>() == 32);

impl Default for KeyText {
    fn default() -> Self {
        Self::Inline {
            len: 0,
            bytes: [0; INLINE_KEY_BYTES],
        }
    }
}

impl KeyText {
    fn new(key: &str) -> Self {
        let text = key.as_bytes();
        if text.len() > INLINE_KEY_BYTES {
            return Self::Heap(key.into());
        }
        let mut bytes = [0; INLINE_KEY_BYTES];
        bytes[..text.len()].copy_from_slice(text);
        Self::Inline {
            len: text.len() as u8,
            bytes,
        }
    }

    #[inline]
    pub(super) fn as_bytes(&self) -> &[u8] {
        match self {
            Self::Inline { len, bytes } => &bytes[..usize::from(*len)],
            Self::Heap(text) => text.as_bytes(),
        }
    }

    /// Whether this is `key`'s text: `as_bytes() == key`, inlined for short keys (a call to
    /// `memcmp` per lookup costs more than the comparison).
    #[inline]
    pub(super) fn is(&self, key: &[u8]) -> bool {
        match self {
            Self::Inline { len, bytes } => {
                usize::from(*len) == key.len() && same_short_text(&bytes[..key.len()], key)
            }
            Self::Heap(text) => text.as_bytes() == key,
        }
    }

    pub(super) fn as_str(&self) -> &str {
        match self {
            // Copied from a str whole (never cut), so valid UTF-8; checking it again
            // costs little next to what a key's text is wanted for (publishing it).
            Self::Inline { .. } => std::str::from_utf8(self.as_bytes()).expect("whole UTF-8"),
            Self::Heap(text) => text,
        }
    }

    #[cfg(test)]
    pub(super) fn is_empty(&self) -> bool {
        self.as_bytes().is_empty()
    }

    /// Bytes held outside the [`KeyText`] itself.
    fn heap_bytes(&self) -> usize {
        match self {
            Self::Inline { .. } => 0,
            Self::Heap(text) => text.len(),
        }
    }
}

/// `a == b` for two texts of the same length, at most [`INLINE_KEY_BYTES`]: each compared as
/// two words that overlap where the length is not twice a word's.
#[inline]
fn same_short_text(a: &[u8], b: &[u8]) -> bool {
    fn word<const N: usize>(text: &[u8], at: usize) -> [u8; N] {
        text[at..at + N].try_into().expect("N bytes")
    }
    fn same<const N: usize>(a: &[u8], b: &[u8]) -> bool {
        let last = a.len() - N;
        (word::<N>(a, 0) == word::<N>(b, 0)) & (word::<N>(a, last) == word::<N>(b, last))
    }
    debug_assert_eq!(a.len(), b.len());
    match a.len() {
        16.. => same::<16>(a, b),
        8.. => same::<8>(a, b),
        4.. => same::<4>(a, b),
        _ => a == b,
    }
}

/// Series keys mapped to dense ids so open windows store a `u32` per key.
///
/// Keys are reference-counted by the open aggregates that use them
/// ([`acquire`](Self::acquire) when an aggregate is created,
/// [`release`](Self::release) when it closes). A key whose count drops to 0
/// is only queued: [`sweep`](Self::sweep), at the end of a batch, removes
/// the keys still unused and recycles their ids. So ids cached for the
/// batch's key table stay valid while windows close mid-batch (rule 7), and
/// a key released and used again within one batch keeps its id.
#[derive(Debug, Default, Clone)]
pub(super) struct Interner {
    /// Id by key hash ([`hash`](Self::hash)); the text is `names[id]`.
    ids: IdTable,
    /// Seeded at random per interner, so that series keys chosen to collide
    /// (to make every lookup probe a long run) cannot be prepared in advance.
    hasher: foldhash::fast::RandomState,
    /// Name by id; empty for a free id.
    pub(super) names: Vec<KeyText>,
    /// Open aggregates by id, or [`FREE`].
    pub(super) refs: Vec<u32>,
    /// Free ids, reused before new ones are allocated.
    pub(super) free: Vec<u32>,
    /// Ids whose count dropped to 0 since the last sweep (possibly repeated,
    /// possibly in use again).
    pub(super) unused: Vec<u32>,
    /// Pins by id (see [`Aggregator::pin_keys`]); grown on the first pin.
    pub(super) pins: Vec<u32>,
    /// Ids with at least one pin: while any, ids are never renumbered.
    pinned: usize,
    /// Every interned id, in its key's code point order, as of the last
    /// [`in_key_order`](Self::in_key_order); `None` once a key came or went since.
    key_order: Option<Vec<u32>>,
}

impl Interner {
    /// The key's id, interning it (with a count of 0) if needed. The caller
    /// acquires it before the batch ends, or it is never swept.
    pub(super) fn intern(&mut self, key: &str) -> u32 {
        self.intern_hashed(key, self.hash(key))
    }

    /// The hash the interner files `key` under.
    #[inline]
    pub(super) fn hash(&self, key: &str) -> u64 {
        self.hasher.hash_one(key)
    }

    /// [`intern`](Self::intern) of a key whose [`hash`](Self::hash) is `hash`.
    pub(super) fn intern_hashed(&mut self, key: &str, hash: u64) -> u32 {
        if let Some(id) = self.get_hashed(key, hash) {
            return id;
        }
        let name = KeyText::new(key);
        let id = match self.free.pop() {
            Some(id) => {
                self.names[id as usize] = name;
                self.refs[id as usize] = 0;
                id
            }
            None => {
                let id = u32::try_from(self.names.len())
                    .ok()
                    .filter(|&id| id != FREE)
                    .expect("fewer than u32::MAX open series keys");
                self.names.push(name);
                self.refs.push(0);
                id
            }
        };
        self.ids.insert(hash, id);
        self.key_order = None;
        id
    }

    /// The id of an already interned key, without interning it.
    #[cfg(test)]
    pub(super) fn get(&self, key: &str) -> Option<u32> {
        self.get_hashed(key, self.hash(key))
    }

    /// [`get`](Self::get) of a key whose [`hash`](Self::hash) is `hash`.
    #[inline]
    pub(super) fn get_hashed(&self, key: &str, hash: u64) -> Option<u32> {
        self.ids
            .find(hash, |id| self.names[id as usize].is(key.as_bytes()))
    }

    /// The id of each of `keys` that is interned ([`get`](Self::get)), given
    /// their [`hash`](Self::hash)es. With many keys each lookup misses the caches
    /// twice in a row (its slot, then its name, which holds a short key's text;
    /// a long key's text is a third); here the loop starts each step of a
    /// lookup some keys ahead, so the misses of consecutive keys overlap.
    pub(super) fn resolve<K: AsRef<str>>(&self, keys: &[K], hashes: &[u64]) -> Vec<Option<u32>> {
        const STEP: usize = 16;
        let name_of = |i: usize| {
            let id = self.ids.first_id(*hashes.get(i)?)?;
            self.names.get(id as usize)
        };
        (0..keys.len())
            .map(|i| {
                if let Some(&hash) = hashes.get(i + 3 * STEP) {
                    self.ids.prefetch(hash);
                }
                if let Some(&hash) = hashes.get(i + 2 * STEP)
                    && let Some(id) = self.ids.first_id(hash)
                    && let Some(name) = self.names.get(id as usize)
                {
                    prefetch_read(name);
                }
                if let Some(KeyText::Heap(text)) = name_of(i + STEP)
                    && let Some(first) = text.as_bytes().first()
                {
                    prefetch_read(first);
                }
                self.get_hashed(keys[i].as_ref(), hashes[i])
            })
            .collect()
    }

    /// The first 16 bytes of key `id` (zero-padded) as a big-endian number.
    /// Keys in code point order (UTF-8 byte order) have non-decreasing
    /// prefixes, so sorting by prefix first leaves only equal prefixes to
    /// compare by text.
    pub(super) fn name_prefix(&self, id: u32) -> u128 {
        let name = self.names[id as usize].as_bytes();
        let mut prefix = [0u8; 16];
        let n = name.len().min(16);
        prefix[..n].copy_from_slice(&name[..n]);
        u128::from_be_bytes(prefix)
    }

    /// Every interned id in its key's code point order (UTF-8 byte order). Sorted again only
    /// after keys came or went: windows over the same series reuse one order.
    pub(super) fn in_key_order(&mut self) -> &[u32] {
        if self.key_order.is_none() {
            let mut ids: Vec<u32> = (0..self.names.len() as u32)
                .filter(|&id| self.refs[id as usize] != FREE)
                .collect();
            sort_by_key_text(self, &mut ids, |&id| (0, id));
            self.key_order = Some(ids);
        }
        self.key_order.as_deref().unwrap_or_default()
    }

    pub(super) fn name(&self, id: u32) -> &str {
        self.names[id as usize].as_str()
    }

    /// Series keys currently interned.
    pub(super) fn len(&self) -> usize {
        self.ids.len()
    }

    /// One more open aggregate uses `id`.
    #[inline]
    pub(super) fn acquire(&mut self, id: u32) {
        self.refs[id as usize] += 1;
    }

    /// One open aggregate using `id` closed; queues the key for the next
    /// [`sweep`](Self::sweep) when it was the last.
    #[inline]
    pub(super) fn release(&mut self, id: u32) {
        let refs = &mut self.refs[id as usize];
        *refs -= 1;
        if *refs == 0 {
            self.unused.push(id);
        }
    }

    /// Removes every queued key that is still unused and frees its id.
    pub(super) fn sweep(&mut self) {
        for id in self.unused.drain(..) {
            let i = id as usize;
            if self.refs[i] == 0 {
                let name = std::mem::take(&mut self.names[i]);
                self.ids.remove(self.hasher.hash_one(name.as_str()), id);
                self.refs[i] = FREE;
                self.free.push(id);
                self.key_order = None;
            }
        }
        if self.unused.capacity() > 1024 {
            self.unused = Vec::new();
        }
    }

    /// Whether most id slots are free, so [`compact`](Self::compact) would
    /// give back memory. Never while keys are pinned: callers hold their ids.
    pub(super) fn sparse(&self) -> bool {
        let slots = self.names.len();
        let live = self.len();
        self.pinned == 0 && (slots > COMPACT_MIN_SLOTS || live == 0) && live * 4 < slots
    }

    /// Interns `key` and holds it (as an open aggregate would) until unpinned.
    pub(super) fn pin(&mut self, key: &str) -> u32 {
        let id = self.intern(key);
        if self.pins.len() <= id as usize {
            self.pins.resize(self.names.len(), 0);
        }
        let pins = &mut self.pins[id as usize];
        if *pins == 0 {
            self.pinned += 1;
        }
        *pins += 1;
        self.acquire(id);
        id
    }

    pub(super) fn is_pinned(&self, id: u32) -> bool {
        self.pins.get(id as usize).is_some_and(|&n| n > 0)
    }

    /// Whether every id in `ids` is pinned. When every id with a pin slot is pinned (the usual
    /// case: one `pinKeys` of the whole key set), that is a bound on the largest id, found
    /// without a branch per id.
    pub(super) fn all_pinned(&self, ids: &[u32]) -> bool {
        if self.pinned == self.pins.len() {
            let largest = ids.iter().fold(0, |max, &id| max.max(id));
            ids.is_empty() || (largest as usize) < self.pins.len()
        } else {
            ids.iter().all(|&id| self.is_pinned(id))
        }
    }

    /// Hints the memory [`name`](Self::name) reads for `id` (a short key's text is all there).
    #[inline]
    pub(super) fn prefetch_name(&self, id: u32) {
        if let Some(name) = self.names.get(id as usize) {
            prefetch_read(name);
        }
    }

    /// Hints the memory [`is_pinned`](Self::is_pinned) reads for `id`.
    #[inline]
    pub(super) fn prefetch_pin(&self, id: u32) {
        if let Some(pins) = self.pins.get(id as usize) {
            prefetch_read(pins);
        }
    }

    /// Drops one pin of `id`, which must be pinned.
    pub(super) fn unpin(&mut self, id: u32) {
        let pins = &mut self.pins[id as usize];
        *pins -= 1;
        if *pins == 0 {
            self.pinned -= 1;
        }
        self.release(id);
    }

    /// Renumbers the keys densely and shrinks every table to fit; returns the
    /// new id by old id ([`FREE`] for free ones).
    pub(super) fn compact(&mut self) -> Vec<u32> {
        let live = self.len();
        let mut remap = vec![FREE; self.names.len()];
        let mut names = Vec::with_capacity(live);
        let mut refs = Vec::with_capacity(live);
        let old = std::mem::take(&mut self.names)
            .into_iter()
            .zip(std::mem::take(&mut self.refs));
        for (old_id, (name, count)) in old.enumerate() {
            if count != FREE {
                // Fewer live keys than old ids, which fit in a u32.
                remap[old_id] = names.len() as u32;
                names.push(name);
                refs.push(count);
            }
        }
        self.ids.remap(&remap);
        self.ids.shrink_to_fit();
        self.names = names;
        self.refs = refs;
        self.free = Vec::new();
        self.unused = Vec::new();
        self.pins = Vec::new();
        self.key_order = None;
        remap
    }

    pub(super) fn bytes_held(&self) -> usize {
        let text: usize = self.names.iter().map(KeyText::heap_bytes).sum();
        text + self.names.capacity() * size_of::<KeyText>()
            + (self.refs.capacity()
                + self.free.capacity()
                + self.unused.capacity()
                + self.pins.capacity()
                + self.key_order.as_ref().map_or(0, Vec::capacity))
                * size_of::<u32>()
            + self.ids.bytes()
    }
}

/// Sorts `rows` by window start, then by series key in code point order
/// (UTF-8 byte order); `start_and_id` names a row's. Keys are unique per
/// start, so the unstable sort is deterministic. It compares the keys'
/// 16-byte prefixes first ([`Interner::name_prefix`]), read once per row:
/// with many rows, reading two keys' text per comparison would miss the
/// caches each time.
pub(super) fn sort_by_key_text<T>(
    keys: &Interner,
    rows: &mut Vec<T>,
    start_and_id: impl Fn(&T) -> (i64, u32),
) {
    let mut keyed: Vec<(i64, u128, u32, T)> = rows
        .drain(..)
        .map(|row| {
            let (start, id) = start_and_id(&row);
            (start, keys.name_prefix(id), id, row)
        })
        .collect();
    keyed.sort_unstable_by(|a, b| {
        (a.0, a.1)
            .cmp(&(b.0, b.1))
            .then_with(|| keys.name(a.2).cmp(keys.name(b.2)))
    });
    rows.extend(keyed.into_iter().map(|(_, _, _, row)| row));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Keys on both sides of the inline limit, multi-byte text across it,
    /// and long ones: each interned, found, named and swept as itself.
    #[test]
    fn short_texts_are_the_same_only_when_every_byte_is() {
        for len in 0..=INLINE_KEY_BYTES {
            let a: Vec<u8> = (0..len as u8).map(|b| b.wrapping_mul(37) ^ 0x5a).collect();
            let stored = KeyText::new(std::str::from_utf8(&a).unwrap_or("")).clone();
            assert!(same_short_text(&a, &a.clone()), "len {len}");
            for at in 0..len {
                for flip in [1u8, 0x80] {
                    let mut b = a.clone();
                    b[at] ^= flip;
                    assert!(!same_short_text(&a, &b), "len {len}, byte {at}");
                }
            }
            if let Ok(text) = std::str::from_utf8(&a) {
                assert!(KeyText::new(text).is(text.as_bytes()));
                assert!(!stored.is(&[a.as_slice(), b"x"].concat()));
            }
        }
        let long = "k".repeat(INLINE_KEY_BYTES + 1);
        assert!(KeyText::new(&long).is(long.as_bytes()));
        assert!(!KeyText::new(&long).is(&long.as_bytes()[1..]));
    }

    #[test]
    fn keys_inline_and_on_the_heap() {
        let mut keys: Vec<String> = ["", "a", "série-été", "x".repeat(29).as_str()]
            .map(str::to_owned)
            .to_vec();
        keys.push("x".repeat(INLINE_KEY_BYTES));
        keys.push("x".repeat(INLINE_KEY_BYTES + 1));
        // 28 + 2 bytes fit; 29 + 2 do not.
        keys.push(format!("{}é", "y".repeat(28)));
        keys.push(format!("{}é", "y".repeat(29)));
        keys.push("z".repeat(4096));
        let mut interner = Interner::default();
        let ids: Vec<u32> = keys.iter().map(|key| interner.intern(key)).collect();
        for (key, &id) in keys.iter().zip(&ids) {
            let text = &interner.names[id as usize];
            assert_eq!(
                matches!(text, KeyText::Inline { .. }),
                key.len() <= INLINE_KEY_BYTES,
                "{key:?}"
            );
            assert_eq!(interner.name(id), key);
            assert_eq!(interner.get(key), Some(id));
            // A prefix or an extension of a key is another key.
            assert_ne!(interner.get(&format!("{key}!")), Some(id));
        }
        let hashes: Vec<u64> = keys.iter().map(|key| interner.hash(key)).collect();
        let resolved = interner.resolve(&keys, &hashes);
        assert_eq!(resolved, ids.iter().map(|&id| Some(id)).collect::<Vec<_>>());
        let heap: usize = keys
            .iter()
            .filter(|key| key.len() > INLINE_KEY_BYTES)
            .map(String::len)
            .sum();
        assert!(interner.bytes_held() >= heap + keys.len() * size_of::<KeyText>());
        for &id in &ids {
            interner.acquire(id);
            interner.release(id);
        }
        interner.sweep();
        assert_eq!(interner.len(), 0);
        assert!(interner.names.iter().all(KeyText::is_empty));
    }
}
