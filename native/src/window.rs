//! Event-time window aggregation in plain Rust (no Node-API types), so the
//! semantics can be unit-tested with `cargo test` and mirrored by a TS reference.
//!
//! # Semantics (Kafka Streams style)
//!
//! * Windows are `[start, start + size)` with `start` a multiple of `advance`;
//!   a timestamp `ts` belongs to the `size / advance` windows whose start `s`
//!   satisfies `s <= ts < s + size` (starts may be negative for `ts < size`).
//! * Stream time is the running maximum of accepted event timestamps, unset
//!   until the first one. Samples are processed in batch order, and a sample
//!   updates stream time *before* it is checked, so
//!   `closeTime = streamTime - grace` already includes the sample itself.
//! * A (sample, window) pair is late when `windowEnd <= closeTime`; the sample
//!   is then not added to that window.
//! * A sample is counted **late** iff all of its windows are late, which is the
//!   case iff its newest window (start `ts - ts % advance`) is late. Otherwise it
//!   is **aggregated**: added to each of its windows that is still open.
//! * A sample is **rejected** (and does not move stream time) when, checked in
//!   this order so the lowest code wins: its value is not finite (code 1), its
//!   timestamp is not an integer in `[0, 2^53)` (code 2), its key index is out of
//!   range of the batch's key table (code 3).
//! * After the whole batch, every open window with `end <= streamTime - grace`
//!   is removed and returned exactly once, ordered by window start and then
//!   by series key (see [`ClosedWindows`]).

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, btree_map};
use std::fmt;
use std::mem::size_of;

use rustc_hash::FxHashMap;

/// Exclusive upper bound for timestamps and config values: 2^53, beyond which
/// a JS number no longer represents every integer.
const SAFE_LIMIT: f64 = 9_007_199_254_740_992.0;

/// Errors from configuration or batch shape; per-sample problems are
/// reported as [`Rejection`]s instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// A config field is invalid; the message names the field.
    InvalidConfig(String),
    /// The batch columns are malformed (e.g. unequal lengths).
    InvalidInput(String),
    /// The aggregator was released by its owner and can no longer be used.
    Freed,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::InvalidConfig(msg) => write!(f, "invalid window config: {msg}"),
            Error::InvalidInput(msg) => write!(f, "invalid batch: {msg}"),
            Error::Freed => f.write_str("aggregator has been freed"),
        }
    }
}

impl std::error::Error for Error {}

/// Why a sample was rejected; the discriminant is the reason code reported to JS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Rejection {
    /// The value is NaN or ±Infinity.
    NonFiniteValue = 1,
    /// The timestamp is not an integer in `[0, 2^53)`.
    InvalidTimestamp = 2,
    /// The key index is outside the batch's key table.
    UnknownKey = 3,
}

/// Validated window geometry, all in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowSpec {
    size: i64,
    advance: i64,
    grace: i64,
}

impl WindowSpec {
    /// Validates JS-number-shaped config: `advance` defaults to `size`
    /// (tumbling) and `grace` to 0.
    pub fn new(size: f64, advance: Option<f64>, grace: Option<f64>) -> Result<Self, Error> {
        let size = whole_ms("sizeMs", size, 1, "an integer > 0")?;
        let advance = match advance {
            None => size,
            Some(advance) => whole_ms("advanceMs", advance, 1, "an integer > 0")?,
        };
        if advance > size {
            return Err(Error::InvalidConfig(format!(
                "advanceMs ({advance}) must not exceed sizeMs ({size})"
            )));
        }
        if size % advance != 0 {
            return Err(Error::InvalidConfig(format!(
                "sizeMs ({size}) must be a multiple of advanceMs ({advance}) so every \
                 timestamp falls in the same number of windows"
            )));
        }
        let grace = whole_ms("graceMs", grace.unwrap_or(0.0), 0, "an integer >= 0")?;
        Ok(Self {
            size,
            advance,
            grace,
        })
    }

    pub fn size(&self) -> i64 {
        self.size
    }

    pub fn advance(&self) -> i64 {
        self.advance
    }

    pub fn grace(&self) -> i64 {
        self.grace
    }

    /// Start of the newest window containing `ts`.
    pub fn newest_start(&self, ts: i64) -> i64 {
        ts - ts.rem_euclid(self.advance)
    }

    /// Starts of all `size / advance` windows containing `ts`, oldest first.
    pub fn window_starts(&self, ts: i64) -> impl Iterator<Item = i64> + use<> {
        let newest = self.newest_start(ts);
        // `advance` is validated positive, so the cast is lossless.
        (newest - self.size + self.advance..=newest).step_by(self.advance as usize)
    }
}

/// Converts a config number to whole milliseconds in `[min, 2^53)`.
pub fn whole_ms(field: &str, value: f64, min: i64, expected: &str) -> Result<i64, Error> {
    if value.fract() == 0.0 && value >= min as f64 && value < SAFE_LIMIT {
        Ok(value as i64)
    } else {
        Err(Error::InvalidConfig(format!(
            "{field} must be {expected} and < 2^53 (got {value})"
        )))
    }
}

/// Running statistics of one (series key, window); the sum uses Neumaier's
/// compensated summation so large values of opposite sign don't swallow small ones.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Aggregate {
    /// Input offset of the first sample: a replay from the lowest such offset
    /// among open windows rebuilds every one of them.
    first_offset: i64,
    count: u64,
    sum: f64,
    compensation: f64,
    min: f64,
    max: f64,
}

impl Aggregate {
    fn new(value: f64, offset: i64) -> Self {
        Self {
            first_offset: offset,
            count: 1,
            sum: value,
            compensation: 0.0,
            min: value,
            max: value,
        }
    }

    fn add(&mut self, value: f64) {
        let total = self.sum + value;
        // Recover the low-order bits lost by whichever operand is smaller.
        self.compensation += if self.sum.abs() >= value.abs() {
            (self.sum - total) + value
        } else {
            (value - total) + self.sum
        };
        self.sum = total;
        self.count += 1;
        self.min = self.min.min(value);
        self.max = self.max.max(value);
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    /// Compensated sum; an overflowed (infinite) sum is returned as is, since
    /// its compensation term is meaningless (NaN).
    pub fn sum(&self) -> f64 {
        if self.sum.is_finite() {
            self.sum + self.compensation
        } else {
            self.sum
        }
    }

    pub fn mean(&self) -> f64 {
        self.sum() / self.count as f64
    }

    pub fn min(&self) -> f64 {
        self.min
    }

    pub fn max(&self) -> f64 {
        self.max
    }
}

/// Closed (series key, window) aggregates as parallel columns, ordered by
/// window start (equivalently end, all windows have one size) and then by
/// series key in Rust `str` order, i.e. by UTF-8 bytes / code points. (JS `<`
/// compares UTF-16 code units, which differs only between astral-plane
/// characters and U+E000..U+FFFF.)
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClosedWindows {
    pub series_keys: Vec<String>,
    /// Epoch ms, exact as f64 for all accepted timestamps.
    pub window_start: Vec<f64>,
    pub window_end: Vec<f64>,
    pub count: Vec<f64>,
    pub sum: Vec<f64>,
    pub mean: Vec<f64>,
    pub min: Vec<f64>,
    pub max: Vec<f64>,
}

impl ClosedWindows {
    fn push(&mut self, key: &str, start: i64, end: i64, agg: &Aggregate) {
        self.series_keys.push(key.to_owned());
        self.window_start.push(start as f64);
        self.window_end.push(end as f64);
        self.count.push(agg.count() as f64);
        self.sum.push(agg.sum());
        self.mean.push(agg.mean());
        self.min.push(agg.min());
        self.max.push(agg.max());
    }

    pub fn len(&self) -> usize {
        self.series_keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.series_keys.is_empty()
    }
}

/// Result of one [`Aggregator::ingest`] call. Every sample of the batch is in
/// exactly one of: aggregated, `late_indexes`, `rejected_indexes`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct IngestOutcome {
    pub aggregated: u32,
    /// Batch positions of late samples, ascending.
    pub late_indexes: Vec<u32>,
    /// Batch positions of rejected samples, ascending.
    pub rejected_indexes: Vec<u32>,
    /// [`Rejection`] codes, parallel to `rejected_indexes`.
    pub rejected_reasons: Vec<u8>,
    pub closed: ClosedWindows,
}

/// Snapshot of an aggregator's counters and footprint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    /// Open (series key, window) aggregates.
    pub open_windows: usize,
    /// Interned series keys (never evicted).
    pub series_keys: usize,
    pub late_total: u64,
    pub aggregated_total: u64,
    pub rejected_total: u64,
    /// Estimated heap bytes owned (ignores allocator and B-tree node overhead).
    pub bytes_held: usize,
    pub stream_time: Option<i64>,
}

/// Series keys mapped to dense ids so open windows store a `u32` per key.
#[derive(Debug, Default)]
struct Interner {
    ids: FxHashMap<String, u32>,
    names: Vec<String>,
}

impl Interner {
    fn intern(&mut self, key: &str) -> u32 {
        if let Some(&id) = self.ids.get(key) {
            return id;
        }
        let id = u32::try_from(self.names.len()).expect("more than u32::MAX series keys");
        self.names.push(key.to_owned());
        self.ids.insert(key.to_owned(), id);
        id
    }

    fn name(&self, id: u32) -> &str {
        &self.names[id as usize]
    }

    fn bytes_held(&self) -> usize {
        // Each key is stored twice: in the id table and in the name list.
        let text: usize = self.names.iter().map(|name| 2 * name.capacity()).sum();
        text + self.names.capacity() * size_of::<String>()
            + self.ids.capacity() * (size_of::<(String, u32)>() + 1)
    }
}

/// Aggregates of one window start, by series key id.
type WindowMap = FxHashMap<u32, Aggregate>;

/// Windowed aggregation state of one partition.
#[derive(Debug)]
pub struct Aggregator {
    spec: WindowSpec,
    keys: Interner,
    /// Open windows by start, so the oldest (first to close) are at the front.
    windows: BTreeMap<i64, WindowMap>,
    /// Multiset of the open windows' first offsets; its minimum is the low watermark.
    first_offsets: BTreeMap<i64, u32>,
    stream_time: Option<i64>,
    late_total: u64,
    aggregated_total: u64,
    rejected_total: u64,
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
            first_offsets: BTreeMap::new(),
            stream_time,
            late_total: 0,
            aggregated_total: 0,
            rejected_total: 0,
        }
    }

    pub fn stream_time(&self) -> Option<i64> {
        self.stream_time
    }

    /// The lowest input offset whose sample is held in an open window, or
    /// `None` when no window is open: committing it makes a replay from there
    /// rebuild exactly the open windows.
    pub fn low_watermark(&self) -> Option<i64> {
        self.first_offsets.keys().next().copied()
    }

    /// Processes one batch in order and then closes every window with
    /// `end <= streamTime - grace` (see the module docs for the exact rules).
    ///
    /// Sample `i` is `(keys[key_index[i]], timestamps[i], values[i])` read
    /// from input offset `offsets[i]`; `keys` is the batch's key table. The
    /// four sample columns must have equal length, at most `u32::MAX`, and
    /// offsets must be integers in `[0, 2^53)`.
    pub fn ingest<K: AsRef<str>>(
        &mut self,
        keys: &[K],
        key_index: &[u32],
        timestamps: &[f64],
        values: &[f64],
        offsets: &[f64],
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
        if let Some(bad) = offsets.iter().find(|&&o| !is_safe_whole(o)) {
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

        let mut out = IngestOutcome::default();
        // Batch key index -> interned id, filled lazily so keys whose samples
        // are all late or rejected create no state.
        let mut ids: Vec<Option<u32>> = vec![None; keys.len()];
        let samples = key_index.iter().zip(timestamps).zip(values).zip(offsets);
        for (i, (((&key, &ts), &value), &offset)) in (0u32..).zip(samples) {
            let ts = match check_sample(keys.len(), key, ts, value) {
                Ok(ts) => ts,
                Err(reason) => {
                    out.rejected_indexes.push(i);
                    out.rejected_reasons.push(reason as u8);
                    continue;
                }
            };
            let stream_time = self.stream_time.map_or(ts, |st| st.max(ts));
            self.stream_time = Some(stream_time);
            let close_time = stream_time - self.spec.grace;
            if self.spec.newest_start(ts) + self.spec.size <= close_time {
                out.late_indexes.push(i);
                continue;
            }
            let key = key as usize;
            let id = *ids[key].get_or_insert_with(|| self.keys.intern(keys[key].as_ref()));
            let size = self.spec.size;
            let offset = offset as i64;
            for start in self.spec.window_starts(ts) {
                if start + size > close_time {
                    let window = self.windows.entry(start).or_default();
                    match window.entry(id) {
                        Entry::Occupied(mut agg) => agg.get_mut().add(value),
                        Entry::Vacant(slot) => {
                            slot.insert(Aggregate::new(value, offset));
                            *self.first_offsets.entry(offset).or_default() += 1;
                        }
                    }
                }
            }
            out.aggregated += 1;
        }

        self.aggregated_total += u64::from(out.aggregated);
        self.late_total += out.late_indexes.len() as u64;
        self.rejected_total += out.rejected_indexes.len() as u64;
        out.closed = self.close_windows();
        Ok(out)
    }

    /// Removes and returns every window with `end <= streamTime - grace`.
    fn close_windows(&mut self) -> ClosedWindows {
        let mut closed = ClosedWindows::default();
        let Some(stream_time) = self.stream_time else {
            return closed;
        };
        let close_time = stream_time - self.spec.grace;
        while let Some(entry) = self.windows.first_entry() {
            let start = *entry.key();
            let end = start + self.spec.size;
            if end > close_time {
                break;
            }
            let mut rows: Vec<(u32, Aggregate)> = entry.remove().into_iter().collect();
            // Keys are unique within a window, so an unstable sort is deterministic.
            rows.sort_unstable_by(|a, b| self.keys.name(a.0).cmp(self.keys.name(b.0)));
            for (id, agg) in &rows {
                closed.push(self.keys.name(*id), start, end, agg);
                release_offset(&mut self.first_offsets, agg.first_offset);
            }
        }
        closed
    }

    pub fn stats(&self) -> Stats {
        Stats {
            open_windows: self.windows.values().map(WindowMap::len).sum(),
            series_keys: self.keys.names.len(),
            late_total: self.late_total,
            aggregated_total: self.aggregated_total,
            rejected_total: self.rejected_total,
            bytes_held: self.bytes_held(),
            stream_time: self.stream_time,
        }
    }

    fn bytes_held(&self) -> usize {
        let windows: usize = self
            .windows
            .values()
            .map(|aggs| {
                size_of::<(i64, WindowMap)>()
                    + aggs.capacity() * (size_of::<(u32, Aggregate)>() + 1)
            })
            .sum();
        let offsets = self.first_offsets.len() * size_of::<(i64, u32)>();
        size_of::<Self>() + self.keys.bytes_held() + windows + offsets
    }
}

/// Removes one occurrence of `offset` from the first-offset multiset.
fn release_offset(first_offsets: &mut BTreeMap<i64, u32>, offset: i64) {
    if let btree_map::Entry::Occupied(mut count) = first_offsets.entry(offset) {
        *count.get_mut() -= 1;
        if *count.get() == 0 {
            count.remove();
        }
    }
}

/// An integer in `[0, 2^53)`: exactly representable as a JS number.
fn is_safe_whole(x: f64) -> bool {
    x.fract() == 0.0 && (0.0..SAFE_LIMIT).contains(&x)
}

/// Validates one sample; returns its timestamp as whole milliseconds.
fn check_sample(key_count: usize, key: u32, ts: f64, value: f64) -> Result<i64, Rejection> {
    if !value.is_finite() {
        Err(Rejection::NonFiniteValue)
    } else if !is_safe_whole(ts) {
        Err(Rejection::InvalidTimestamp)
    } else if key as usize >= key_count {
        Err(Rejection::UnknownKey)
    } else {
        Ok(ts as i64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(size: f64, advance: Option<f64>, grace: Option<f64>) -> WindowSpec {
        WindowSpec::new(size, advance, grace).expect("valid spec")
    }

    fn config_error(size: f64, advance: Option<f64>, grace: Option<f64>) -> String {
        match WindowSpec::new(size, advance, grace) {
            Err(err @ Error::InvalidConfig(_)) => err.to_string(),
            other => panic!("expected InvalidConfig, got {other:?}"),
        }
    }

    /// Ingests `(key, ts, value)` samples with the key table `keys`.
    fn ingest(agg: &mut Aggregator, keys: &[&str], samples: &[(u32, f64, f64)]) -> IngestOutcome {
        let key_index: Vec<u32> = samples.iter().map(|s| s.0).collect();
        let timestamps: Vec<f64> = samples.iter().map(|s| s.1).collect();
        let values: Vec<f64> = samples.iter().map(|s| s.2).collect();
        // One sample per input offset, continuing from the previous batch.
        let first =
            agg.stats().aggregated_total + agg.stats().late_total + agg.stats().rejected_total;
        let offsets: Vec<f64> = (0..samples.len())
            .map(|i| (first + i as u64) as f64)
            .collect();
        let out = agg
            .ingest(keys, &key_index, &timestamps, &values, &offsets)
            .expect("well-formed batch");
        let accounted =
            out.aggregated as usize + out.late_indexes.len() + out.rejected_indexes.len();
        assert_eq!(accounted, samples.len(), "every sample is classified once");
        out
    }

    /// Closed rows as `(key, start, end, count, sum)` for compact assertions.
    fn rows(closed: &ClosedWindows) -> Vec<(&str, f64, f64, f64, f64)> {
        (0..closed.len())
            .map(|i| {
                (
                    closed.series_keys[i].as_str(),
                    closed.window_start[i],
                    closed.window_end[i],
                    closed.count[i],
                    closed.sum[i],
                )
            })
            .collect()
    }

    #[test]
    fn config_defaults_to_tumbling_without_grace() {
        let s = spec(10.0, None, None);
        assert_eq!((s.size(), s.advance(), s.grace()), (10, 10, 0));
        let s = spec(60_000.0, Some(15_000.0), Some(5_000.0));
        assert_eq!((s.size(), s.advance(), s.grace()), (60_000, 15_000, 5_000));
    }

    #[test]
    fn config_errors_name_the_field() {
        for bad in [0.0, -5.0, 1.5, f64::NAN, f64::INFINITY, SAFE_LIMIT] {
            assert!(config_error(bad, None, None).contains("sizeMs"), "{bad}");
        }
        for bad in [0.0, -1.0, 2.5, f64::NAN] {
            assert!(config_error(10.0, Some(bad), None).contains("advanceMs"));
        }
        for bad in [-1.0, 0.5, f64::NAN, f64::INFINITY] {
            assert!(config_error(10.0, None, Some(bad)).contains("graceMs"));
        }
        assert!(config_error(10.0, Some(20.0), None).contains("advanceMs (20)"));
        let msg = config_error(10.0, Some(3.0), None);
        assert!(
            msg.contains("sizeMs (10) must be a multiple of advanceMs (3)"),
            "{msg}"
        );
        // Zero grace is explicitly allowed.
        assert_eq!(spec(10.0, None, Some(0.0)).grace(), 0);
    }

    #[test]
    fn tumbling_window_membership() {
        let s = spec(10.0, None, None);
        assert_eq!(s.window_starts(0).collect::<Vec<_>>(), [0]);
        assert_eq!(s.window_starts(9).collect::<Vec<_>>(), [0]);
        assert_eq!(s.window_starts(10).collect::<Vec<_>>(), [10]);
        assert_eq!(s.window_starts(1_234).collect::<Vec<_>>(), [1_230]);
    }

    #[test]
    fn hopping_window_membership_at_boundaries() {
        let s = spec(10.0, Some(5.0), None);
        assert_eq!(s.window_starts(7).collect::<Vec<_>>(), [0, 5]);
        // A window's start is inclusive, its end exclusive.
        assert_eq!(s.window_starts(5).collect::<Vec<_>>(), [0, 5]);
        assert_eq!(s.window_starts(10).collect::<Vec<_>>(), [5, 10]);
        assert_eq!(s.window_starts(14).collect::<Vec<_>>(), [5, 10]);
        // Early timestamps also belong to windows that start before the epoch.
        assert_eq!(s.window_starts(4).collect::<Vec<_>>(), [-5, 0]);
        let s = spec(60.0, Some(15.0), None);
        assert_eq!(s.window_starts(100).collect::<Vec<_>>(), [45, 60, 75, 90]);
    }

    #[test]
    fn tumbling_windows_close_when_stream_time_reaches_their_end() {
        let mut agg = Aggregator::new(spec(10.0, None, None));
        let out = ingest(&mut agg, &["a"], &[(0, 0.0, 1.0), (0, 9.0, 2.0)]);
        assert_eq!(out.aggregated, 2);
        assert!(out.closed.is_empty());

        let out = ingest(&mut agg, &["a"], &[(0, 10.0, 4.0)]);
        assert_eq!(rows(&out.closed), [("a", 0.0, 10.0, 2.0, 3.0)]);
        assert_eq!(out.closed.mean, [1.5]);
        assert_eq!((out.closed.min[0], out.closed.max[0]), (1.0, 2.0));
        assert_eq!(agg.stats().open_windows, 1);
    }

    #[test]
    fn hopping_sample_feeds_every_window() {
        let mut agg = Aggregator::new(spec(10.0, Some(5.0), None));
        ingest(&mut agg, &["a"], &[(0, 12.0, 1.0)]);
        let out = ingest(&mut agg, &["a"], &[(0, 25.0, 0.0)]);
        assert_eq!(
            rows(&out.closed),
            [("a", 5.0, 15.0, 1.0, 1.0), ("a", 10.0, 20.0, 1.0, 1.0)]
        );
    }

    #[test]
    fn stream_time_advances_within_a_batch() {
        let mut agg = Aggregator::new(spec(10.0, None, None));
        // The 2nd sample's window [0,10) closed when the 1st moved stream time to 100.
        let out = ingest(&mut agg, &["a"], &[(0, 100.0, 1.0), (0, 5.0, 1.0)]);
        assert_eq!((out.aggregated, out.late_indexes.as_slice()), (1, &[1][..]));
        assert!(out.closed.is_empty());

        // In the opposite order both are aggregated, and [0,10) closes at batch end.
        let mut agg = Aggregator::new(spec(10.0, None, None));
        let out = ingest(&mut agg, &["a"], &[(0, 5.0, 1.0), (0, 100.0, 1.0)]);
        assert_eq!(out.aggregated, 2);
        assert_eq!(rows(&out.closed), [("a", 0.0, 10.0, 1.0, 1.0)]);
    }

    #[test]
    fn hopping_sample_is_late_only_when_all_its_windows_are() {
        let mut agg = Aggregator::new(spec(10.0, Some(5.0), None));
        let out = ingest(
            &mut agg,
            &["a"],
            &[
                (0, 12.0, 1.0), // stream time 12: [0,10) is now closed
                (0, 7.0, 2.0),  // [0,10) late, [5,15) open: aggregated into [5,15) only
                (0, 3.0, 4.0),  // [-5,5) and [0,10) both closed: late
            ],
        );
        assert_eq!((out.aggregated, out.late_indexes.as_slice()), (2, &[2][..]));
        let out = ingest(&mut agg, &["a"], &[(0, 30.0, 0.0)]);
        assert_eq!(
            rows(&out.closed),
            [("a", 5.0, 15.0, 2.0, 3.0), ("a", 10.0, 20.0, 1.0, 1.0)]
        );
    }

    #[test]
    fn grace_keeps_windows_open_past_their_end() {
        let mut agg = Aggregator::new(spec(10.0, None, Some(5.0)));
        let out = ingest(
            &mut agg,
            &["a"],
            &[
                (0, 12.0, 1.0), // close time 7
                (0, 8.0, 2.0),  // [0,10) ends at 10 > 7: accepted
                (0, 15.0, 4.0), // close time 10
                (0, 9.0, 8.0),  // [0,10) ends at 10 <= 10: late
            ],
        );
        assert_eq!((out.aggregated, out.late_indexes.as_slice()), (3, &[3][..]));
        assert_eq!(rows(&out.closed), [("a", 0.0, 10.0, 1.0, 2.0)]);
        assert_eq!(agg.stats().stream_time, Some(15));
    }

    #[test]
    fn closed_windows_are_ordered_by_start_then_key_and_emitted_once() {
        let mut agg = Aggregator::new(spec(10.0, None, None));
        let keys = ["zeta", "alpha", "Mid"];
        let out = ingest(
            &mut agg,
            &keys,
            &[
                (0, 1.0, 1.0),
                (1, 5.0, 1.0),
                (0, 15.0, 1.0),
                (2, 12.0, 1.0),
                (1, 11.0, 1.0),
                (2, 40.0, 1.0),
            ],
        );
        let order: Vec<_> = rows(&out.closed).iter().map(|r| (r.0, r.1)).collect();
        assert_eq!(
            order,
            [
                ("alpha", 0.0),
                ("zeta", 0.0),
                ("Mid", 10.0),
                ("alpha", 10.0),
                ("zeta", 10.0)
            ]
        );
        let again = ingest(&mut agg, &keys, &[(2, 41.0, 1.0)]);
        assert!(again.closed.is_empty());
    }

    #[test]
    fn neumaier_sum_keeps_small_terms() {
        let mut agg = Aggregator::new(spec(10.0, None, None));
        ingest(
            &mut agg,
            &["a"],
            &[(0, 1.0, 1e16), (0, 2.0, 1.0), (0, 3.0, -1e16)],
        );
        let out = ingest(&mut agg, &["a"], &[(0, 10.0, 0.0)]);
        let c = &out.closed;
        assert_eq!((c.count[0], c.sum[0]), (3.0, 1.0));
        assert_eq!(c.mean[0], 1.0 / 3.0);
        assert_eq!((c.min[0], c.max[0]), (-1e16, 1e16));
    }

    #[test]
    fn overflowing_sum_reports_infinity() {
        let mut a = Aggregate::new(f64::MAX, 0);
        a.add(f64::MAX);
        assert_eq!(a.sum(), f64::INFINITY);
    }

    #[test]
    fn rejected_samples_carry_reason_codes_and_keep_stream_time() {
        let mut agg = Aggregator::new(spec(10.0, None, None));
        let max_ts = SAFE_LIMIT - 1.0;
        let out = ingest(
            &mut agg,
            &["a"],
            &[
                (0, 5.0, f64::NAN),
                (0, 5.0, f64::NEG_INFINITY),
                (0, -1.0, 1.0),
                (0, 5.5, 1.0),
                (0, f64::NAN, 1.0),
                (0, SAFE_LIMIT, 1.0),
                (1, 5.0, 1.0),
                (9, f64::NAN, f64::INFINITY), // lowest code wins
                (0, 5.0, 1.0),
            ],
        );
        assert_eq!(out.rejected_indexes, [0, 1, 2, 3, 4, 5, 6, 7]);
        assert_eq!(out.rejected_reasons, [1, 1, 2, 2, 2, 2, 3, 1]);
        assert_eq!(out.aggregated, 1);
        assert_eq!(agg.stream_time(), Some(5));

        // The largest safe integer is a valid timestamp.
        let out = ingest(&mut agg, &["a"], &[(0, max_ts, 1.0)]);
        assert_eq!(out.aggregated, 1);
        assert_eq!(rows(&out.closed), [("a", 0.0, 10.0, 1.0, 1.0)]);
    }

    #[test]
    fn unequal_columns_are_an_input_error() {
        let mut agg = Aggregator::new(spec(10.0, None, None));
        let err = agg
            .ingest(&["a"], &[0, 0], &[1.0], &[1.0, 2.0], &[0.0, 1.0])
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid batch: keyIndex, timestamps, values and offsets must have equal length \
             (got keyIndex 2, timestamps 1, values 2, offsets 2)"
        );
        assert_eq!(agg.stats().stream_time, None);
    }

    #[test]
    fn empty_batch_is_a_no_op() {
        let mut agg = Aggregator::new(spec(10.0, None, None));
        let out = ingest(&mut agg, &[] as &[&str], &[]);
        assert_eq!(out, IngestOutcome::default());
        assert_eq!(agg.stream_time(), None);
    }

    #[test]
    fn stats_track_totals_keys_and_memory() {
        let mut agg = Aggregator::new(spec(10.0, Some(5.0), None));
        let empty = agg.stats();
        assert_eq!(empty.open_windows, 0);
        assert_eq!(empty.stream_time, None);

        let out = ingest(
            &mut agg,
            &["a", "b", "late-only", "unused"],
            &[
                (0, 100.0, 1.0),
                (1, 101.0, 1.0),
                (2, 3.0, 1.0),
                (0, f64::NAN, 1.0),
            ],
        );
        assert_eq!(out.aggregated, 2);
        let stats = agg.stats();
        assert_eq!(
            (
                stats.aggregated_total,
                stats.late_total,
                stats.rejected_total
            ),
            (2, 1, 1)
        );
        // Two keys, each in windows [95,105) and [100,110).
        assert_eq!(stats.open_windows, 4);
        // Keys whose samples were only late, rejected or absent are not interned.
        assert_eq!(stats.series_keys, 2);
        assert_eq!(stats.stream_time, Some(101));
        assert!(stats.bytes_held > empty.bytes_held);

        ingest(&mut agg, &["a"], &[(0, 200.0, 1.0)]);
        let stats = agg.stats();
        assert_eq!((stats.open_windows, stats.aggregated_total), (2, 3));
    }

    #[test]
    fn low_watermark_is_the_first_offset_of_the_oldest_open_window() {
        let mut agg = Aggregator::new(spec(10.0, None, None));
        assert_eq!(agg.low_watermark(), None);
        // offsets 0, 1, 2: windows [0,10) created at 0 and [10,20) at 2.
        ingest(
            &mut agg,
            &["a"],
            &[(0, 1.0, 1.0), (0, 2.0, 1.0), (0, 12.0, 1.0)],
        );
        assert_eq!(
            agg.low_watermark(),
            Some(2),
            "[0,10) closed at stream time 12"
        );
        // offset 3 opens key b in [10,20); offset 4 closes both windows of [10,20).
        ingest(&mut agg, &["b"], &[(0, 15.0, 1.0)]);
        assert_eq!(agg.low_watermark(), Some(2));
        ingest(&mut agg, &["a"], &[(0, 25.0, 1.0)]);
        assert_eq!(agg.low_watermark(), Some(4));
    }

    #[test]
    fn restored_stream_time_keeps_closed_windows_closed() {
        let mut agg = Aggregator::restored(spec(10.0, None, Some(2.0)), Some(21));
        let out = ingest(
            &mut agg,
            &["a"],
            &[(0, 5.0, 1.0), (0, 19.0, 2.0), (0, 20.0, 3.0)],
        );
        // Close time 19: [0,10) was closed before the restore, [10,20) and [20,30) are open.
        assert_eq!(out.late_indexes, vec![0]);
        assert!(out.closed.is_empty());
        assert_eq!(agg.stream_time(), Some(21));
        assert_eq!(agg.stats().open_windows, 2);
    }

    #[test]
    fn offsets_must_be_whole_and_match_the_columns() {
        let mut agg = Aggregator::new(spec(10.0, None, None));
        let err = agg
            .ingest(&["a"], &[0], &[1.0], &[1.0], &[0.5])
            .expect_err("fractional offset");
        assert!(err.to_string().contains("offsets"), "{err}");
    }
}
