//! The open aggregates of one window start, found by key id.

use std::mem::size_of;

use rustc_hash::FxHashMap;

use super::aggregate::Aggregate;
use crate::sketch::{Sketch, SketchSpec, prefetch_lines, prefetch_read};

#[cfg(doc)]
use super::{Aggregator, interner::Interner};

/// Rows per chunk of a [`Window`] once it outgrows its first chunk.
const CHUNK: usize = 1024;

/// How many samples ahead [`Window::add_run`] loads a sample's row.
const RUN_AHEAD: usize = 8;

/// An open aggregate and its key.
#[derive(Debug, Clone, Copy)]
pub(super) struct Row {
    pub(super) agg: Aggregate,
    pub(super) id: u32,
    /// Listed in the aggregator's changes since they were last reported (in
    /// the padding after `id`: no extra memory).
    pub(super) changed: bool,
}

impl Row {
    /// Lists this row (row `r` of the window starting at `start`) in `changed`, the first time
    /// it changes since changes were last reported (the `changed` flag says it is listed).
    #[inline]
    pub(super) fn list_change(&mut self, changed: &mut Vec<(i64, u32)>, start: i64, r: u32) {
        if !self.changed {
            self.changed = true;
            changed.push((start, r));
        }
    }
}

/// The open aggregates of one window start. Rows live in chunks of at most
/// [`CHUNK`] (a row never moves, and at most one chunk is partly empty) and
/// are found by key id through an index: a dense array by id once the window
/// holds enough of the ids below its largest (the common case: one lookup,
/// no hashing), a hash map before (few keys with large ids cost no array).
#[derive(Debug, Default)]
pub(super) struct Window {
    chunks: Vec<Vec<Row>>,
    /// With quantiles: row `r`'s sketch at `sketches[r]` (grown on demand).
    sketches: Vec<Sketch>,
    len: usize,
    /// One more than the largest key id held.
    ids: usize,
    index: Index,
    /// The lowest first offset of its rows (`None`: no row). Rows only leave with their window,
    /// so a running minimum is exact.
    first_offset: Option<i64>,
}

#[derive(Debug)]
enum Index {
    /// Row by id.
    Hashed(FxHashMap<u32, u32>),
    /// Row + 1 by id (0: no row).
    Dense(Vec<u32>),
}

impl Default for Index {
    fn default() -> Self {
        Self::Hashed(FxHashMap::default())
    }
}

impl Window {
    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// The lowest input offset whose sample is held in this window, if any.
    pub(super) fn first_offset(&self) -> Option<i64> {
        self.first_offset
    }

    /// Hints the index slot [`find`](Self::find) reads for key `id` (a dense
    /// index's; a hashed one is small, so likely cached).
    #[inline]
    pub(super) fn prefetch_slot(&self, id: u32) {
        if let Index::Dense(rows) = &self.index
            && let Some(slot) = rows.get(id as usize)
        {
            prefetch_read(slot);
        }
    }

    /// Hints both cache lines of key `id`'s row, if it has one; reads its
    /// index slot (hinted by [`prefetch_slot`](Self::prefetch_slot) before).
    #[inline(always)]
    pub(super) fn prefetch_row(&self, id: u32) {
        if let Some(r) = self.find(id) {
            prefetch_lines(self.row(r));
        }
    }

    /// Hints both cache lines of row `r`.
    #[inline(always)]
    pub(super) fn prefetch_row_at(&self, r: usize) {
        prefetch_lines(self.row(r));
    }

    /// The row holding key `id`.
    #[inline]
    pub(super) fn find(&self, id: u32) -> Option<usize> {
        match &self.index {
            Index::Dense(rows) => match rows.get(id as usize) {
                Some(&r) if r > 0 => Some(r as usize - 1),
                _ => None,
            },
            Index::Hashed(rows) => rows.get(&id).map(|&r| r as usize),
        }
    }

    /// The aggregate of key `id` and its sketch, if any.
    pub(super) fn get(&self, id: u32) -> Option<(&Aggregate, Option<&Sketch>)> {
        self.find(id).map(|r| self.at(r))
    }

    /// Adds each `(row, value)` to its row's sketch. The sketches of a window
    /// with many keys spill out of the CPU caches, so each add would wait for
    /// memory twice (the sketch, then its counter); here the loop has nothing
    /// else to do and loads the sketch [`AHEAD`] updates early and the counter
    /// half as early, so the misses of consecutive updates overlap.
    pub(super) fn add_to_sketches(&mut self, spec: &SketchSpec, updates: &[(u32, f64)]) {
        const AHEAD: usize = 16;
        if self.sketches.len() < self.len {
            self.sketches.resize_with(self.len, Sketch::default);
        }
        let sketches = &mut self.sketches;
        for (i, &(r, value)) in updates.iter().enumerate() {
            if let Some(&(r, _)) = updates.get(i + AHEAD) {
                prefetch_read(&sketches[r as usize]);
            }
            if let Some(&(r, value)) = updates.get(i + AHEAD / 2) {
                sketches[r as usize].prefetch(spec, value);
            }
            sketches[r as usize].add(spec, value);
        }
    }

    /// Row `r`'s sketch, created empty if need be.
    #[inline]
    pub(super) fn sketch_mut(&mut self, r: usize) -> &mut Sketch {
        if r >= self.sketches.len() {
            self.sketches.resize_with(r + 1, Sketch::default);
        }
        &mut self.sketches[r]
    }

    /// Row `r`'s aggregate and sketch, if any.
    pub(super) fn at(&self, r: usize) -> (&Aggregate, Option<&Sketch>) {
        (&self.row(r).agg, self.sketches.get(r))
    }

    #[inline]
    fn row(&self, r: usize) -> &Row {
        &self.chunks[r / CHUNK][r % CHUNK]
    }

    #[inline]
    pub(super) fn row_mut(&mut self, r: usize) -> &mut Row {
        &mut self.chunks[r / CHUNK][r % CHUNK]
    }

    /// Adds the `samples` `(keys[j], timestamps[j], values[j])` to this window's rows, in order,
    /// for as long as each sample is in the window (`[start, start + size)`) and its key (`id_of`)
    /// has a row here; with `TRACK`, lists each row changed in `changed` once. Returns how many
    /// samples it added and the newest timestamp among them, or `None` if it added none.
    ///
    /// For [`Aggregator`]'s tumbling loop, whose samples are all valid (codes 1-6) and whose
    /// window is not late for them: a sample within the window never makes it late (stream time
    /// would have to pass its end), so these samples need no other decision.
    #[inline]
    pub(super) fn add_run<const TRACK: bool>(
        &mut self,
        start: i64,
        size: i64,
        (keys, timestamps, values): (&[u32], &[f64], &[f64]),
        id_of: impl Fn(u32) -> Option<u32>,
        changed: &mut Vec<(i64, u32)>,
    ) -> Option<(usize, i64)> {
        let Index::Dense(index) = &self.index else {
            return None;
        };
        // Exact: window bounds are within (-2^53, 2^54).
        let (low, high) = (start as f64, (start + size) as f64);
        let mut n = 0;
        for (j, ((&key, &ts), &value)) in keys.iter().zip(timestamps).zip(values).enumerate() {
            // A hint only: the row of a sample some way ahead, so consecutive misses overlap.
            if let Some(&slot) = keys
                .get(j + RUN_AHEAD)
                .and_then(|&key| id_of(key))
                .and_then(|id| index.get(id as usize))
                && let Some(r) = slot.checked_sub(1)
                && let Some(row) = self
                    .chunks
                    .get(r as usize / CHUNK)
                    .and_then(|chunk| chunk.get(r as usize % CHUNK))
            {
                prefetch_lines(row);
            }
            let in_window = ts >= low && ts < high;
            let Some(r) = id_of(key)
                .filter(|_| in_window)
                .and_then(|id| index.get(id as usize))
                .and_then(|&slot| slot.checked_sub(1))
            else {
                break;
            };
            let row = &mut self.chunks[r as usize / CHUNK][r as usize % CHUNK];
            row.agg.add(value);
            // Written out, not `Row::list_change`: that measured 2-3% slower in this loop.
            if TRACK && !row.changed {
                row.changed = true;
                changed.push((start, r));
            }
            n += 1;
        }
        // After the loop, not a running maximum in it: this pass vectorizes, and the loop keeps
        // its registers. A select, not `f64::max`: a valid timestamp is never NaN.
        let newest =
            timestamps[..n].iter().fold(
                f64::NEG_INFINITY,
                |newest, &ts| if ts > newest { ts } else { newest },
            );
        // Exact: a valid timestamp is a whole number in [0, 2^53).
        (n > 0).then_some((n, newest as i64))
    }

    /// Adds the row of key `id`, which has none; returns its row.
    pub(super) fn push(&mut self, id: u32, agg: Aggregate) -> usize {
        let r = self.len;
        match self.chunks.last_mut() {
            Some(chunk) if chunk.len() < CHUNK => chunk.push(Row {
                agg,
                id,
                changed: false,
            }),
            _ => {
                // The first chunk grows as a Vec does, so small windows stay small.
                let mut chunk = Vec::with_capacity(if r == 0 { 4 } else { CHUNK });
                chunk.push(Row {
                    agg,
                    id,
                    changed: false,
                });
                self.chunks.push(chunk);
            }
        }
        self.len += 1;
        self.ids = self.ids.max(id as usize + 1);
        self.first_offset = Some(
            self.first_offset
                .map_or(agg.first_offset, |lowest| lowest.min(agg.first_offset)),
        );
        match &mut self.index {
            Index::Dense(rows) => {
                if rows.len() <= id as usize {
                    rows.resize(id as usize + 1, 0);
                }
                rows[id as usize] = r as u32 + 1;
            }
            Index::Hashed(rows) => {
                rows.insert(id, r as u32);
                self.densify_if_cheap();
            }
        }
        r
    }

    /// Switches to the dense index once it takes no more than ~2x the hash
    /// map's memory: at least 1 row per 8 ids below the largest.
    fn densify_if_cheap(&mut self) {
        let Index::Hashed(rows) = &self.index else {
            return;
        };
        if self.len >= 16 && self.ids <= 8 * self.len {
            let mut dense = vec![0u32; self.ids];
            for (&id, &r) in rows {
                dense[id as usize] = r + 1;
            }
            self.index = Index::Dense(dense);
        }
    }

    /// Every row: key id, aggregate and sketch (if any).
    pub(super) fn iter(&self) -> impl Iterator<Item = (u32, &Aggregate, Option<&Sketch>)> {
        self.chunks
            .iter()
            .flatten()
            .enumerate()
            .map(|(r, row)| (row.id, &row.agg, self.sketches.get(r)))
    }

    /// Renames every key id by `remap` (see [`Interner::compact`]).
    pub(super) fn remap(&mut self, remap: &[u32]) {
        let mut renamed = Window::default();
        let mut sketches = std::mem::take(&mut self.sketches).into_iter();
        for row in self.chunks.iter().flatten() {
            let r = renamed.push(remap[row.id as usize], row.agg);
            renamed.row_mut(r).changed = row.changed;
            if let Some(sketch) = sketches.next() {
                *renamed.sketch_mut(r) = sketch;
            }
        }
        *self = renamed;
    }

    pub(super) fn bytes(&self) -> usize {
        let rows: usize = self.chunks.iter().map(Vec::capacity).sum();
        let index = match &self.index {
            Index::Dense(rows) => rows.capacity() * size_of::<u32>(),
            Index::Hashed(rows) => rows.capacity() * (size_of::<(u32, u32)>() + 1),
        };
        let sketches = self.sketches.capacity() * size_of::<Sketch>()
            + self.sketches.iter().map(Sketch::heap_bytes).sum::<usize>();
        rows * size_of::<Row>() + self.chunks.capacity() * size_of::<Vec<Row>>() + index + sketches
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_switch_to_a_dense_index_and_find_every_key() {
        let mut w = Window::default();
        let ids: Vec<u32> = (0..3_000).map(|i| (i * 7919) % 4_001).collect();
        for (n, &id) in ids.iter().enumerate() {
            assert!(w.find(id).is_none());
            w.push(id, Aggregate::new(n as f64, 0));
            if n < 15 {
                assert!(matches!(w.index, Index::Hashed(_)));
            }
        }
        assert!(matches!(w.index, Index::Dense(_)));
        assert_eq!(w.len(), ids.len());
        for (n, &id) in ids.iter().enumerate() {
            assert_eq!(w.get(id).map(|(agg, _)| agg.sum()), Some(n as f64));
        }
        let remap: Vec<u32> = (0..4_001).map(|id| 4_000 - id).collect();
        w.remap(&remap);
        for (n, &id) in ids.iter().enumerate() {
            assert_eq!(w.get(4_000 - id).map(|(agg, _)| agg.sum()), Some(n as f64));
        }
        // Few keys with large ids stay hashed.
        let mut sparse = Window::default();
        for id in (0..40).map(|i| i * 1_000_000) {
            sparse.push(id, Aggregate::new(1.0, 0));
        }
        assert!(matches!(sparse.index, Index::Hashed(_)));
        assert!(sparse.bytes() < 10_000);
    }
}
