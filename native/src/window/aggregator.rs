//! The windowed aggregation state of one partition.

use std::collections::BTreeMap;
use std::mem::size_of;

use rustc_hash::FxHashMap;

use super::aggregate::Aggregate;
use super::error::{Error, Rejection};
use super::interner::{Interner, sort_by_key_text};
use super::keys::{KeySource, KeyTable, PinnedIds};
use super::limits::{Limits, SAFE_LIMIT, SampleChecks, all_safe_whole, is_safe_whole};
use super::outcome::{ClosedWindows, IngestOutcome, Stats, WindowStates, WindowStatesView};
use super::quantiles::{Quantiles, SketchUpdates, defer_sketch_update, window_panes};
use super::rows::Window;
use super::spec::{Pane, WindowSpec};

/// How many samples ahead the ingest loop starts loading a sample's index
/// slot; its row follows at half the distance. About a DRAM latency of work
/// at a few ns per sample (measured in `examples/core_speed.rs`).
const AHEAD: usize = 16;

/// The open aggregates from which the ingest loop loads ahead: about 4 MB of
/// rows and index, beyond a core's L2 cache.
const LOOK_AHEAD_MIN_ROWS: usize = 1 << 16;
use crate::sketch::{Sketch, SketchSpec, prefetch_lines};

/// A batch's sample columns (sample `i` is row `i` of each).
#[derive(Clone, Copy)]
struct Columns<'a> {
    key_index: &'a [u32],
    timestamps: &'a [f64],
    values: &'a [f64],
    offsets: &'a [f64],
}

/// Windowed aggregation state of one partition.
#[derive(Debug)]
pub struct Aggregator {
    spec: WindowSpec,
    keys: Interner,
    /// Open windows by start, so the oldest (first to close) are at the front.
    windows: BTreeMap<i64, Window>,
    /// Number of open (key, window) aggregates: the sum of the `windows` map sizes.
    open_count: usize,
    stream_time: Option<i64>,
    late_total: u64,
    aggregated_total: u64,
    rejected_by_reason: [u64; Rejection::SLOTS],
    limits: Limits,
    /// Whether [`IngestOutcome::changes`] is reported.
    track_changes: bool,
    /// Whether changes are kept for [`Aggregator::take_changes`] instead.
    coalesce_changes: bool,
    /// With either kind of change tracking: the aggregates created or updated
    /// since changes were last reported, as (window start, row), once each
    /// (a row's `changed` flag says it is listed, so listing costs no lookup).
    changed: Vec<(i64, u32)>,
    /// Per-window quantiles; `None`: no sketches.
    quantiles: Option<Quantiles>,
    /// With quantiles: the batch's sketch updates not applied yet, as
    /// (window start, [(row, value)]) buckets (a bucket whose start is `None`
    /// is free); see [`Aggregator::apply_sketch_updates`].
    sketch_updates: Vec<SketchUpdates>,
    /// Scratch of [`Aggregator::ingest_tumbling`]: (row, value) additions to
    /// the current window's rows, empty between batches.
    additions: Vec<(u32, f64)>,
    /// Tests only: every batch takes the general loop, to compare the two.
    #[cfg(test)]
    general_loop_only: bool,
}

impl Aggregator {
    pub fn new(spec: WindowSpec) -> Self {
        Self::restored(spec, None)
    }

    /// An aggregator resuming at a checkpointed stream time: windows that had
    /// closed by then stay closed, so replayed samples only rebuild open ones.
    pub fn restored(spec: WindowSpec, stream_time: Option<i64>) -> Self {
        Self {
            spec,
            keys: Interner::default(),
            windows: BTreeMap::new(),
            open_count: 0,
            stream_time,
            late_total: 0,
            aggregated_total: 0,
            rejected_by_reason: [0; Rejection::SLOTS],
            limits: Limits::default(),
            track_changes: false,
            coalesce_changes: false,
            changed: Vec::new(),
            quantiles: None,
            sketch_updates: Vec::new(),
            additions: Vec::new(),
            #[cfg(test)]
            general_loop_only: false,
        }
    }

    /// Keeps a sketch per open window and reports these quantiles of each
    /// closed one (see the module docs); none by default. Set it before the
    /// first sample or restore.
    pub fn with_quantiles(mut self, quantiles: Option<Quantiles>) -> Self {
        self.quantiles = quantiles;
        self
    }

    /// Sets the input bounds (see [`Limits`] and the module docs); the
    /// defaults otherwise.
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Turns change tracking (see the module docs) on or off; off by default.
    pub fn with_change_tracking(mut self, on: bool) -> Self {
        self.track_changes = on;
        self
    }

    /// Turns coalesced change tracking on or off (off by default): batches
    /// then report no `changes`; instead [`Aggregator::take_changes`] returns
    /// every window created or updated since its last call that is still
    /// open, once. A window touched by many batches between two calls is
    /// written to the changelog once (see the module docs).
    pub fn with_coalesced_changes(mut self, on: bool) -> Self {
        self.coalesce_changes = on;
        self
    }

    /// With coalesced change tracking: the state of every window created or
    /// updated since the last call (or the restore) that is still open, in
    /// the order of [`IngestOutcome::changes`]; forgets them. Empty when
    /// coalescing is off.
    pub fn take_changes(&mut self) -> WindowStates {
        if self.coalesce_changes {
            self.changed_states()
        } else {
            WindowStates::default()
        }
    }

    pub fn stream_time(&self) -> Option<i64> {
        self.stream_time
    }

    /// The lowest input offset whose sample is held in an open window, or
    /// `None` when no window is open: committing it makes a replay from there
    /// rebuild exactly the open windows.
    pub fn low_watermark(&self) -> Option<i64> {
        self.windows.values().filter_map(Window::first_offset).min()
    }

    /// Processes one batch in order and then closes every window with
    /// `end <= streamTime - grace` (see the module docs for the exact rules).
    ///
    /// Sample `i` is `(keys[key_index[i]], timestamps[i], values[i])` read
    /// from input offset `offsets[i]`; `keys` is the batch's key table. The
    /// four sample columns must have equal length, at most `u32::MAX`, and
    /// offsets must be integers in `[0, 2^53)`. Samples with a timestamp
    /// greater than `max_event_time` are rejected (code 6); `None` sets no
    /// bound, and NaN is an input error.
    pub fn ingest<K: AsRef<str>>(
        &mut self,
        keys: &[K],
        key_index: &[u32],
        timestamps: &[f64],
        values: &[f64],
        offsets: &[f64],
        max_event_time: Option<f64>,
    ) -> Result<IngestOutcome, Error> {
        let mut table = KeyTable::new(keys, &self.limits, &self.keys);
        self.ingest_from(
            &mut table,
            key_index,
            timestamps,
            values,
            offsets,
            max_event_time,
        )
    }

    /// Interns `keys` and pins them: each stays interned, under the returned
    /// id, until [`unpin_keys`](Self::unpin_keys), so batches can name keys
    /// by id ([`ingest_ids`](Self::ingest_ids)) instead of carrying their
    /// text. Pins count: a key pinned twice needs two unpins. Refuses (and
    /// pins nothing) if a key is empty or longer than `maxKeyBytes`.
    pub fn pin_keys<K: AsRef<str>>(&mut self, keys: &[K]) -> Result<Vec<u32>, Error> {
        for (i, key) in keys.iter().enumerate() {
            if let Err(reason) = self.limits.check_key(key.as_ref()) {
                let why = match reason {
                    Rejection::EmptyKey => "it is empty".to_owned(),
                    _ => format!(
                        "it is longer than maxKeyBytes ({}) UTF-8 bytes",
                        self.limits.max_key_bytes
                    ),
                };
                return Err(Error::InvalidInput(format!(
                    "keys[{i}] cannot be pinned: {why}"
                )));
            }
        }
        Ok(keys.iter().map(|key| self.keys.pin(key.as_ref())).collect())
    }

    /// Drops one pin of each id; a key with no pin and no open window is
    /// then released. Refuses (and unpins nothing) if an id is not pinned as
    /// many times as it is given.
    pub fn unpin_keys(&mut self, ids: &[u32]) -> Result<(), Error> {
        let mut given: FxHashMap<u32, u32> = FxHashMap::default();
        for &id in ids {
            *given.entry(id).or_default() += 1;
        }
        for (&id, &n) in &given {
            let pins = self.keys.pins.get(id as usize).copied().unwrap_or(0);
            if pins < n {
                return Err(Error::InvalidInput(format!(
                    "key id {id} is unpinned {n} times but pinned {pins} times"
                )));
            }
        }
        for &id in ids {
            self.keys.unpin(id);
        }
        self.sweep_keys();
        Ok(())
    }

    /// [`ingest`](Self::ingest) with samples naming their keys by pinned id
    /// ([`pin_keys`](Self::pin_keys)): sample `i` is `(key_ids[i],
    /// timestamps[i], values[i])`. An id that is not pinned is rejected with
    /// code 3 (codes 4 and 5 were checked when pinning).
    pub fn ingest_ids(
        &mut self,
        key_ids: &[u32],
        timestamps: &[f64],
        values: &[f64],
        offsets: &[f64],
        max_event_time: Option<f64>,
    ) -> Result<IngestOutcome, Error> {
        self.ingest_from(
            &mut PinnedIds,
            key_ids,
            timestamps,
            values,
            offsets,
            max_event_time,
        )
    }

    fn ingest_from<S: KeySource>(
        &mut self,
        source: &mut S,
        key_index: &[u32],
        timestamps: &[f64],
        values: &[f64],
        offsets: &[f64],
        max_event_time: Option<f64>,
    ) -> Result<IngestOutcome, Error> {
        let len = key_index.len();
        if timestamps.len() != len || values.len() != len || offsets.len() != len {
            return Err(Error::InvalidInput(format!(
                "keyIndex, timestamps, values and offsets must have equal length \
                 (got keyIndex {len}, timestamps {}, values {}, offsets {})",
                timestamps.len(),
                values.len(),
                offsets.len()
            )));
        }
        if !all_safe_whole(offsets)
            && let Some(bad) = offsets.iter().find(|&&o| !is_safe_whole(o))
        {
            return Err(Error::InvalidInput(format!(
                "offsets must be integers in [0, 2^53) (got {bad})"
            )));
        }
        if u32::try_from(len).is_err() {
            return Err(Error::InvalidInput(format!(
                "at most {} samples per batch (got {len})",
                u32::MAX
            )));
        }
        let checks = SampleChecks {
            // Exact: validated below 2^53.
            min_ts: self.limits.min_event_time as f64,
            max_ts: match max_event_time {
                None => f64::INFINITY,
                Some(t) if t.is_nan() => {
                    return Err(Error::InvalidInput(
                        "maxEventTime must be null or a number, not NaN".to_owned(),
                    ));
                }
                Some(t) => t,
            },
        };

        let mut out = IngestOutcome::default();
        let columns = Columns {
            key_index,
            timestamps,
            values,
            offsets,
        };
        if self.is_plain_tumbling(len) {
            // Checks that every sample passes need not be made one by one (most batches).
            if checks.all_pass(timestamps, values) && source.all_valid(key_index, &self.keys) {
                self.ingest_tumbling::<S, true>(source, &checks, &columns, &mut out);
            } else {
                self.ingest_tumbling::<S, false>(source, &checks, &columns, &mut out);
            }
        } else {
            self.ingest_general(source, &checks, &columns, &mut out);
        }

        self.aggregated_total += u64::from(out.aggregated);
        self.late_total += out.late_indexes.len() as u64;
        for &code in &out.rejected_reasons {
            self.rejected_by_reason[usize::from(code)] += 1;
        }
        if let Some(stream_time) = self.stream_time {
            self.close_windows(stream_time - self.spec.grace, &mut out.closed);
        }
        if self.track_changes && !self.coalesce_changes {
            out.changes = Some(self.changed_states());
        }
        self.sweep_keys();
        Ok(out)
    }

    /// Whether a batch of `len` samples can take [`ingest_tumbling`](Self::ingest_tumbling):
    /// tumbling windows without quantiles, and a window limit (if any) that the batch cannot
    /// reach even if each of its samples opened an aggregate. Then no window closes before the
    /// batch ends, which is what lets that loop keep its window at hand.
    fn is_plain_tumbling(&self, len: usize) -> bool {
        #[cfg(test)]
        if self.general_loop_only {
            return false;
        }
        self.spec.advance == self.spec.size
            && self.quantiles.is_none()
            && self
                .limits
                .max_open_windows
                .is_none_or(|max_open| self.open_count + len <= max_open)
    }

    /// [`ingest_general`](Self::ingest_general) for the common case ([`is_plain_tumbling`](
    /// Self::is_plain_tumbling)): the same decisions in the same order, made without the
    /// general loop's per-sample work. A sample has one window, and nothing closes during the
    /// batch, so the window of the previous sample stays at hand (no map lookup per sample)
    /// and the rows of samples some way ahead are loaded from it.
    ///
    /// `VALID`: every sample of the batch is known to pass codes 1-6, so none is checked, and
    /// consecutive samples in the window at hand and in its existing rows are added in one run
    /// ([`Window::add_run`]) without the per-sample decisions (none can be late or open a row).
    fn ingest_tumbling<S: KeySource, const VALID: bool>(
        &mut self,
        source: &mut S,
        checks: &SampleChecks,
        columns: &Columns,
        out: &mut IngestOutcome,
    ) {
        let Self {
            spec,
            keys,
            windows,
            open_count,
            stream_time,
            changed,
            track_changes,
            coalesce_changes,
            additions: scratch,
            ..
        } = self;
        let tracking = *track_changes || *coalesce_changes;
        let look_ahead = *open_count >= LOOK_AHEAD_MIN_ROWS;
        let size = spec.size;
        let Columns {
            key_index,
            timestamps,
            values,
            offsets,
        } = *columns;
        // Stream time as a plain number (no sample is valid at i64::MIN).
        let mut newest_time = stream_time.unwrap_or(i64::MIN);
        let mut pane = Pane::default();
        // The window of the last sample aggregated, by start, and the additions to its existing
        // rows not applied yet (see `add_to_rows`).
        let mut current: Option<(i64, &mut Window)> = None;
        let mut additions = std::mem::take(scratch);
        // The loops below load rows some samples ahead; the batch's first samples come before
        // any such hint, so hint them here (else every batch starts with misses in a row).
        if let Some(&ts) = timestamps.first()
            && (0.0..SAFE_LIMIT).contains(&ts)
            && let Some(window) = windows.get(&pane.newest_start(spec, ts as i64))
        {
            for &key in key_index.iter().take(AHEAD) {
                if let Some(id) = source.known(key) {
                    window.prefetch_row(id);
                }
            }
        }
        let mut next = 0;
        while let (Some(&key), Some(&ts), Some(&value), Some(&offset)) = (
            key_index.get(next),
            timestamps.get(next),
            values.get(next),
            offsets.get(next),
        ) {
            let i = next as u32; // the batch has at most u32::MAX samples
            next += 1;
            // Valid samples in a cached window's existing rows need none of the work below:
            // one run adds them all. (With loading ahead, rows go through `additions` instead.)
            if VALID
                && !look_ahead
                && let Some((start, window)) = current.as_mut()
            {
                let samples = (
                    &key_index[next - 1..],
                    &timestamps[next - 1..],
                    &values[next - 1..],
                );
                let known = |key| source.known(key);
                let run = if tracking {
                    window.add_run::<true>(*start, size, samples, known, changed)
                } else {
                    window.add_run::<false>(*start, size, samples, known, changed)
                };
                if let Some((n, newest)) = run {
                    out.aggregated += n as u32;
                    newest_time = newest_time.max(newest);
                    next += n - 1;
                    continue;
                }
            }
            // A hint only, as in ingest_general, for samples in the current window.
            if look_ahead
                && let Some((start, window)) = &current
                && let (Some(&key), Some(&ts)) = (
                    key_index.get(i as usize + AHEAD),
                    timestamps.get(i as usize + AHEAD),
                )
            {
                source.prefetch(key, keys);
                let in_window = ts >= *start as f64 && ts - (*start as f64) < size as f64;
                if let Some(id) = source.known(key).filter(|_| in_window) {
                    window.prefetch_slot(id);
                }
            }
            let checked = if VALID {
                Ok(ts as i64) // exact: a whole number in [0, 2^53)
            } else {
                check_sample(checks, source, keys, key, ts, value)
            };
            let Ok(ts) = checked.map_err(|reason| reject(out, i, reason)) else {
                continue;
            };
            newest_time = newest_time.max(ts);
            let start = pane.newest_start(spec, ts);
            if start + size <= newest_time - spec.grace {
                out.late_indexes.push(i);
                continue;
            }
            if current.as_ref().is_none_or(|&(at, _)| at != start) {
                if let Some((at, window)) = current.take() {
                    add_to_rows(
                        window,
                        at,
                        &mut additions,
                        tracking.then_some(&mut *changed),
                    );
                }
                current = Some((start, windows.entry(start).or_default()));
            }
            let Some((_, window)) = current.as_mut() else {
                unreachable!("set just above");
            };
            let id = source.intern(key, keys);
            match window.find(id) {
                // Only loading ahead pays for deferring; `add_run` relies on nothing deferred.
                Some(r) if look_ahead => additions.push((r as u32, value)),
                Some(r) => {
                    let row = window.row_mut(r);
                    row.agg.add(value);
                    if tracking {
                        row.list_change(changed, start, r as u32);
                    }
                }
                None => {
                    let offset = offset as i64;
                    let r = window.push(id, Aggregate::new(value, offset));
                    keys.acquire(id);
                    *open_count += 1;
                    if tracking {
                        window.row_mut(r).list_change(changed, start, r as u32);
                    }
                }
            }
            out.aggregated += 1;
        }
        if let Some((at, window)) = current {
            add_to_rows(window, at, &mut additions, tracking.then_some(changed));
        }
        *scratch = additions; // its capacity, for the next batches
        if newest_time > i64::MIN {
            *stream_time = Some(newest_time);
        }
    }

    /// The ingest loop for any window geometry, quantiles and window limit.
    fn ingest_general<S: KeySource>(
        &mut self,
        source: &mut S,
        checks: &SampleChecks,
        columns: &Columns,
        out: &mut IngestOutcome,
    ) {
        // Every aggregate created or updated is listed in `changed`, once; coalescing, they
        // accumulate across batches until take_changes.
        let tracking = self.track_changes || self.coalesce_changes;
        // The newest window start of the sample at hand, and of those loaded ahead.
        let [mut pane, mut slot_pane, mut row_pane] = [Pane::default(); 3];
        // Fewer rows stay in the caches, where loading ahead only costs time.
        let look_ahead = self.open_count >= LOOK_AHEAD_MIN_ROWS;
        let Columns {
            key_index,
            timestamps,
            values,
            offsets,
        } = *columns;
        let samples = key_index.iter().zip(timestamps).zip(values).zip(offsets);
        for (i, (((&key, &ts), &value), &offset)) in (0u32..).zip(samples) {
            // Hints only: the loads of samples some way ahead start now, so the cache misses of
            // consecutive samples overlap (with 1M series, each would miss on its row and index).
            if look_ahead {
                let ahead = i as usize + AHEAD;
                if let (Some(&key), Some(&ts)) = (key_index.get(ahead), timestamps.get(ahead)) {
                    self.prefetch_slot(source, key, ts, &mut slot_pane);
                }
                let ahead = i as usize + AHEAD / 2;
                if let (Some(&key), Some(&ts)) = (key_index.get(ahead), timestamps.get(ahead)) {
                    self.prefetch_row(source, key, ts, &mut row_pane);
                }
            }
            let checked = check_sample(checks, source, &self.keys, key, ts, value);
            let Ok(ts) = checked.map_err(|reason| reject(out, i, reason)) else {
                continue;
            };
            let stream_time = self.stream_time.map_or(ts, |st| st.max(ts));
            self.stream_time = Some(stream_time);
            let close_time = stream_time - self.spec.grace;
            let newest = pane.newest_start(&self.spec, ts);
            if newest + self.spec.size <= close_time {
                out.late_indexes.push(i);
                continue;
            }
            if let Some(max_open) = self.limits.max_open_windows
                && !self.has_room(source, key, ts, close_time, max_open, out)
            {
                reject(out, i, Rejection::WindowLimit);
                continue;
            }
            let size = self.spec.size;
            if self.quantiles.is_some()
                && self.spec.advance < size
                && self
                    .windows
                    .first_key_value()
                    .is_some_and(|(&first, _)| first + size <= close_time)
            {
                // A window due (not closed until the end of the batch) shares its last panes with
                // later windows; a sample late for it must not reach its sketch through them.
                // Closing it now closes the same window: nothing can join a due window.
                self.close_windows(close_time, &mut out.closed);
            }
            let id = source.intern(key, &mut self.keys);
            let offset = offset as i64;
            for start in self.spec.starts_up_to(newest) {
                if start + size > close_time {
                    let window = self.windows.entry(start).or_default();
                    let r = match window.find(id) {
                        Some(r) => {
                            window.row_mut(r).agg.add(value);
                            r
                        }
                        None => {
                            let r = window.push(id, Aggregate::new(value, offset));
                            self.keys.acquire(id);
                            self.open_count += 1;
                            r
                        }
                    };
                    // With quantiles, the sample's sketch is its pane's: the row of its newest
                    // window, the one starting less than an advance before it.
                    if self.quantiles.is_some() && ts - start < self.spec.advance {
                        defer_sketch_update(&mut self.sketch_updates, start, r as u32, value);
                    }
                    if tracking {
                        window
                            .row_mut(r)
                            .list_change(&mut self.changed, start, r as u32);
                    }
                }
            }
            out.aggregated += 1;
        }
    }

    /// Hints what sample `(key, ts)` reads first: its key's check and its
    /// index slot in its newest window (known keys only).
    #[inline]
    fn prefetch_slot<S: KeySource>(&self, source: &S, key: u32, ts: f64, pane: &mut Pane) {
        source.prefetch(key, &self.keys);
        if let Some((id, window)) = self.row_ahead(source, key, ts, pane) {
            window.prefetch_slot(id);
        }
    }

    /// Hints the row sample `(key, ts)` updates in its newest window, reading
    /// the index slot [`prefetch_slot`](Self::prefetch_slot) hinted.
    #[inline]
    fn prefetch_row<S: KeySource>(&self, source: &S, key: u32, ts: f64, pane: &mut Pane) {
        if let Some((id, window)) = self.row_ahead(source, key, ts, pane) {
            window.prefetch_row(id);
        }
    }

    /// The key id and newest open window of a sample not checked yet, if the
    /// batch knows its key and the window is open.
    #[inline]
    fn row_ahead<S: KeySource>(
        &self,
        source: &S,
        key: u32,
        ts: f64,
        pane: &mut Pane,
    ) -> Option<(u32, &Window)> {
        if !(0.0..SAFE_LIMIT).contains(&ts) {
            return None; // rejected later (or before 1970: not worth a division)
        }
        let id = source.known(key)?;
        let window = self
            .windows
            .get(&pane.newest_start(&self.spec, ts as i64))?;
        Some((id, window))
    }

    /// Applies the deferred sketch updates (the hot loop only records them):
    /// window by window, in a loop that overlaps their memory accesses
    /// ([`Window::add_to_sketches`]). A sketch's bins do not depend on the
    /// order of its samples, so the state is the same as if each were added
    /// at once. Must run before windows close or snapshots are taken; runs at
    /// the end of every batch.
    fn apply_sketch_updates(&mut self) {
        let Some(quantiles) = &self.quantiles else {
            return;
        };
        for (start, updates) in &mut self.sketch_updates {
            if let Some(start) = start.take() {
                let window = self
                    .windows
                    .get_mut(&start)
                    .expect("updates are for open windows");
                window.add_to_sketches(&quantiles.spec, updates);
                updates.clear();
            }
        }
    }

    /// The stream time at which the oldest open window closes (its end plus
    /// grace), or `None` when no window is open.
    pub fn next_close_time(&self) -> Option<i64> {
        let start = *self.windows.keys().next()?;
        Some(start + self.spec.size + self.spec.grace)
    }

    /// Moves stream time forward to `stream_time` without input (idle close:
    /// the wall clock stands in for samples that did not come) and closes the
    /// windows then due, as a batch would. A time at or below the current
    /// stream time, or an aggregator that has seen no sample yet (nothing is
    /// open, and no stream time to advance from), changes nothing. Samples
    /// for the windows it closes are late afterwards, as always.
    pub fn advance_stream_time(&mut self, stream_time: i64) -> ClosedWindows {
        let mut closed = ClosedWindows::default();
        match self.stream_time {
            Some(current) if stream_time > current => {
                self.stream_time = Some(stream_time);
                self.close_windows(stream_time - self.spec.grace, &mut closed);
                self.sweep_keys();
            }
            _ => {}
        }
        closed
    }

    /// Whether a sample of key reference `key` at `ts` fits in `max_open`
    /// open aggregates at `close_time` (rule 7 in the module docs). May close
    /// windows that are already due into `out.closed`, and resolves the key
    /// against the interner (without interning).
    fn has_room<S: KeySource>(
        &mut self,
        source: &mut S,
        key: u32,
        ts: i64,
        close_time: i64,
        max_open: usize,
        out: &mut IngestOutcome,
    ) -> bool {
        let size = self.spec.size;
        let open_starts = self
            .spec
            .window_starts(ts)
            .filter(move |&start| start + size > close_time);
        let wanted = open_starts.clone().count();
        if self.open_count + wanted <= max_open {
            return true; // fits even if every window is new
        }
        let new = match source.lookup(key, &self.keys) {
            Some(id) => open_starts
                .filter(|start| {
                    self.windows
                        .get(start)
                        .is_none_or(|window| window.find(id).is_none())
                })
                .count(),
            None => wanted,
        };
        if new == 0 || self.open_count + new <= max_open {
            return true;
        }
        // Windows already due don't count: close them now rather than at the
        // end of the batch. The sample's own windows are all still open.
        self.close_windows(close_time, &mut out.closed);
        self.open_count + new <= max_open
    }

    /// States of the `changed` aggregates that are still open, in output
    /// order; clears the list and the rows' flags.
    fn changed_states(&mut self) -> WindowStates {
        let mut changed = std::mem::take(&mut self.changed);
        // Closing removes a prefix of the starts, so a listed aggregate is still
        // open iff its start is not below the oldest open one (a closed start
        // never opens again: its samples are late).
        let oldest = self.windows.keys().next().copied().unwrap_or(i64::MAX);
        let mut rows: Vec<(i64, u32, u32)> = Vec::with_capacity(changed.len());
        for group in changed.chunk_by(|a, b| a.0 == b.0) {
            let start = group[0].0;
            if start < oldest {
                continue;
            }
            let window = self.windows.get_mut(&start).expect("open");
            for &(_, r) in group {
                let row = window.row_mut(r as usize);
                row.changed = false;
                rows.push((start, row.id, r));
            }
        }
        changed.clear();
        self.changed = changed; // its capacity, for the next batches
        sort_by_key_text(&self.keys, &mut rows, |&(start, id, _)| (start, id));
        let mut states = WindowStates::with_capacity(rows.len());
        for group in rows.chunk_by(|a, b| a.0 == b.0) {
            let start = group[0].0;
            let window = &self.windows[&start];
            for &(_, id, r) in group {
                let (agg, sketch) = window.at(r as usize);
                states.push_with_sketch(self.keys.name(id), start, agg, self.sketch_of(sketch));
            }
        }
        states
    }

    /// With quantiles on: the sketch parameters and a row's sketch, to encode it.
    fn sketch_of<'a>(
        &'a self,
        sketch: Option<&'a Sketch>,
    ) -> Option<(&'a SketchSpec, Option<&'a Sketch>)> {
        self.quantiles.as_ref().map(|q| (&q.spec, sketch))
    }

    /// The aggregates (and sketches) of one window start, ordered by series key.
    fn by_key_name<'a>(&self, window: &'a Window) -> Vec<(u32, &'a Aggregate, Option<&'a Sketch>)> {
        let mut rows: Vec<_> = window.iter().collect();
        sort_by_key_text(&self.keys, &mut rows, |row| (0, row.0));
        rows
    }

    /// [`by_key_name`](Self::by_key_name) for a window that closes: when it holds most of the
    /// keys (every series reports in every window), the interner's key order, kept across
    /// windows, is filtered instead of sorting the rows.
    fn closing_order<'a>(
        &mut self,
        window: &'a Window,
    ) -> Vec<(u32, &'a Aggregate, Option<&'a Sketch>)> {
        if window.len() * 2 < self.keys.len() {
            return self.by_key_name(window);
        }
        let mut rows = Vec::with_capacity(window.len());
        for &id in self.keys.in_key_order() {
            if let Some((agg, sketch)) = window.get(id) {
                rows.push((id, agg, sketch));
            }
        }
        debug_assert_eq!(rows.len(), window.len(), "every row's key is interned");
        rows
    }

    /// The state of every open window, ordered by start and then series key.
    pub fn snapshot(&self) -> WindowStates {
        let mut states = WindowStates::with_capacity(self.open_windows());
        for (&start, window) in &self.windows {
            for (id, agg, sketch) in self.by_key_name(window) {
                states.push_with_sketch(self.keys.name(id), start, agg, self.sketch_of(sketch));
            }
        }
        states
    }

    /// Loads open windows (e.g. a [`snapshot`](Self::snapshot), or a changelog
    /// compacted from [`IngestOutcome::changes`] and `closed`) and the stream
    /// time they were taken at into this aggregator, which must be fresh: no
    /// open windows and no samples ingested (a `stream_time` given at
    /// construction is fine and replaced). Rows may come in any order.
    ///
    /// Validates everything before changing anything: equal column lengths;
    /// `stream_time` an integer in `[0, 2^53)`, and set if any row is given;
    /// per row, `window_start` an integer multiple of `advance` in
    /// `(-size, stream_time]` whose window is still open
    /// (`end > stream_time - grace`), `count` an integer in `[1, 2^53)`,
    /// `first_offset` an integer in `[0, 2^53)`, finite `min <= max`, and no
    /// (key, start) twice. `sum` and `compensation` are taken as they are (an
    /// overflowed sum is infinite and its compensation NaN). Every row is
    /// loaded even beyond `maxOpenWindows` (see the module docs).
    pub fn restore<K: AsRef<str>>(
        &mut self,
        states: WindowStatesView<'_, K>,
        stream_time: Option<f64>,
    ) -> Result<(), Error> {
        let ingested = self.aggregated_total + self.late_total + self.rejected_total();
        if !self.windows.is_empty() || ingested > 0 {
            return Err(Error::InvalidRestore(format!(
                "the aggregator must be fresh (it holds {} open windows and has ingested \
                 {ingested} samples)",
                self.open_windows()
            )));
        }
        states.check_shape().map_err(Error::InvalidRestore)?;
        let len = states.series_keys.len();
        let stream_time = match stream_time {
            None => None,
            Some(t) if is_safe_whole(t) => Some(t as i64),
            Some(t) => {
                return Err(Error::InvalidRestore(format!(
                    "streamTime must be null or an integer in [0, 2^53) (got {t})"
                )));
            }
        };
        let Some(now) = stream_time else {
            if len > 0 {
                return Err(Error::InvalidRestore(format!(
                    "streamTime is null but {len} windows are given (a window only opens \
                     with an accepted sample, which sets streamTime)"
                )));
            }
            self.stream_time = None;
            return Ok(());
        };

        // A fresh aggregator holds only pinned keys: they stay.
        let mut keys = self.keys.clone();
        let mut windows: BTreeMap<i64, Window> = BTreeMap::new();
        for i in 0..len {
            let key = states.series_keys[i].as_ref();
            let (start, agg) = self
                .restored_row(&states, i, now)
                .map_err(|msg| Error::InvalidRestore(format!("row {i} (key {key:?}): {msg}")))?;
            let id = keys.intern(key);
            let window = windows.entry(start).or_default();
            if window.find(id).is_some() {
                return Err(Error::InvalidRestore(format!(
                    "row {i} (key {key:?}): window {start} appears twice"
                )));
            }
            let r = window.push(id, agg);
            if let Some(quantiles) = self.quantiles.as_ref() {
                // Rows without a sketch (written without quantiles) get an empty one: their
                // quantiles are unknown (NaN) when they close.
                let bytes = states.sketch(i);
                if !bytes.is_empty() {
                    *window.sketch_mut(r) =
                        Sketch::decode(&quantiles.spec, bytes).map_err(|err| {
                            Error::InvalidRestore(format!("row {i} (key {key:?}): sketch: {err}"))
                        })?;
                }
            }
            keys.acquire(id);
        }
        self.keys = keys;
        self.windows = windows;
        self.open_count = len;
        self.stream_time = stream_time;
        // What is restored is what the changelog holds already.
        self.changed.clear();
        Ok(())
    }

    /// Validates row `i` of `states` for a restore at stream time `now`.
    fn restored_row<K>(
        &self,
        states: &WindowStatesView<'_, K>,
        i: usize,
        now: i64,
    ) -> Result<(i64, Aggregate), String> {
        let WindowSpec {
            size,
            advance,
            grace,
        } = self.spec;
        let start = states.window_start[i];
        let integral = start.fract() == 0.0 && start > -(size as f64) && start <= now as f64;
        if !integral || (start as i64).rem_euclid(advance) != 0 {
            return Err(format!(
                "windowStart must be an integer multiple of advanceMs ({advance}) in \
                 (-sizeMs, streamTime] = ({}, {now}] (got {start})",
                -size
            ));
        }
        let start = start as i64;
        if start + size <= now - grace {
            return Err(format!(
                "window [{start}, {}) had already closed at streamTime {now} \
                 (end <= streamTime - graceMs = {}); a changelog never holds closed windows",
                start + size,
                now - grace
            ));
        }
        let count = states.count[i];
        if !(count.fract() == 0.0 && (1.0..SAFE_LIMIT).contains(&count)) {
            return Err(format!(
                "count must be an integer in [1, 2^53) (got {count})"
            ));
        }
        let first_offset = states.first_offset[i];
        if !is_safe_whole(first_offset) {
            return Err(format!(
                "firstOffset must be an integer in [0, 2^53) (got {first_offset})"
            ));
        }
        let (min, max) = (states.min[i], states.max[i]);
        if !(min.is_finite() && max.is_finite() && min <= max) {
            return Err(format!(
                "min and max must be finite with min <= max (got min {min}, max {max})"
            ));
        }
        Ok((
            start,
            Aggregate {
                first_offset: first_offset as i64,
                count: count as u64,
                sum: states.sum[i],
                compensation: states.compensation[i],
                min,
                max,
            },
        ))
    }

    /// Removes every window with `end <= close_time` and appends it to
    /// `closed`. As the close time never decreases, and no window is opened
    /// once it could be closed, what is appended always starts after what was.
    fn close_windows(&mut self, close_time: i64, closed: &mut ClosedWindows) {
        self.apply_sketch_updates();
        while let Some(entry) = self.windows.first_entry() {
            let start = *entry.key();
            let end = start + self.spec.size;
            if end > close_time {
                break;
            }
            let window = entry.remove();
            self.open_count -= window.len();
            let rows = self.closing_order(&window);
            let estimates = self.quantiles.as_ref().map_or(0, |q| q.quantiles().len());
            closed.reserve(rows.len(), rows.len() * estimates);
            let mut panes: Vec<&Sketch> = Vec::new();
            for (i, &(id, agg, sketch)) in rows.iter().enumerate() {
                // Rows come in key order, scattered in memory: load some ahead (a hint only).
                if let Some(&(ahead, row, _)) = rows.get(i + AHEAD) {
                    prefetch_lines(row);
                    self.keys.prefetch_name(ahead);
                }
                closed.push(self.keys.name(id), start, end, agg);
                if let Some(quantiles) = &self.quantiles {
                    window_panes(&self.spec, &self.windows, start, id, sketch, &mut panes);
                    quantiles.push_estimates(agg, &panes, &mut closed.quantiles);
                }
                self.keys.release(id);
            }
        }
    }

    fn open_windows(&self) -> usize {
        self.open_count
    }

    /// Drops the keys whose last open window closed during the batch (see
    /// [`Interner`]), and renumbers the rest when most id slots are free, so
    /// the memory held follows the open windows down as well as up.
    /// Renumbering rekeys every open window, but happens only after the
    /// number of keys fell to a quarter of the slots.
    fn sweep_keys(&mut self) {
        self.keys.sweep();
        if self.keys.sparse() {
            let remap = self.keys.compact();
            for window in self.windows.values_mut() {
                window.remap(&remap);
            }
            // `changed` names rows by position, which renaming keeps.
        }
    }

    pub fn stats(&self) -> Stats {
        Stats {
            open_windows: self.open_windows(),
            series_keys: self.keys.len(),
            late_total: self.late_total,
            aggregated_total: self.aggregated_total,
            rejected_total: self.rejected_total(),
            rejected_by_reason: self.rejected_by_reason,
            bytes_held: self.bytes_held(),
            stream_time: self.stream_time,
        }
    }

    fn rejected_total(&self) -> u64 {
        self.rejected_by_reason.iter().sum()
    }

    fn bytes_held(&self) -> usize {
        let windows: usize = self
            .windows
            .values()
            .map(|window| size_of::<(i64, Window)>() + window.bytes())
            .sum();
        size_of::<Self>() + self.keys.bytes_held() + windows
    }
}

/// Codes 1-6 of sample `(key, ts, value)`, in their order; its timestamp as whole milliseconds.
#[inline]
fn check_sample<S: KeySource>(
    checks: &SampleChecks,
    source: &S,
    keys: &Interner,
    key: u32,
    ts: f64,
    value: f64,
) -> Result<i64, Rejection> {
    checks
        .value_and_time(ts, value)
        .and_then(|ts| source.check(key, keys).map(|()| ts))
        .and_then(|ts| checks.not_future(ts))
}

/// Lists sample `i` as rejected for `reason`.
#[inline]
fn reject(out: &mut IngestOutcome, i: u32, reason: Rejection) {
    out.rejected_indexes.push(i);
    out.rejected_reasons.push(reason.code());
}

/// Applies `additions` (row, value) to `window` (start `start`) in their order, and empties
/// it; lists each row changed in `changed`, if given, once. The ingest loop only records them:
/// with many keys a row is seldom in the L1/L2 caches, and here the loop has nothing else to
/// do, so it loads each row [`AHEAD`] additions early and the misses of consecutive additions
/// overlap. A row's additions keep their order, so its sums are bit for bit those of adding
/// each value at once.
fn add_to_rows(
    window: &mut Window,
    start: i64,
    additions: &mut Vec<(u32, f64)>,
    mut changed: Option<&mut Vec<(i64, u32)>>,
) {
    for (j, &(r, value)) in additions.iter().enumerate() {
        if let Some(&(ahead, _)) = additions.get(j + AHEAD) {
            window.prefetch_row_at(ahead as usize);
        }
        let row = window.row_mut(r as usize);
        row.agg.add(value);
        if let Some(changed) = changed.as_deref_mut() {
            row.list_change(changed, start, r);
        }
    }
    additions.clear();
}

#[cfg(test)]
mod tests;
