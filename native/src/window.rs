//! Event-time window aggregation in plain Rust (no Node-API types), so the
//! semantics can be unit-tested with `cargo test` and mirrored by a TS reference.
//!
//! # Semantics (Kafka Streams style)
//!
//! * Windows are `[start, start + size)` with `start` a multiple of `advance`;
//!   a timestamp `ts` belongs to the `size / advance` windows whose start `s`
//!   satisfies `s <= ts < s + size` (starts may be negative for `ts < size`).
//! * Stream time is the running maximum of the event timestamps of samples
//!   that pass the input checks (codes 1-6 below), unset until the first one.
//!   Samples are processed in batch order, and a sample updates stream time
//!   *before* it is checked for lateness, so `closeTime = streamTime - grace`
//!   already includes the sample itself.
//! * A (sample, window) pair is late when `windowEnd <= closeTime`; the sample
//!   is then not added to that window.
//! * A sample is counted **late** iff all of its windows are late, which is the
//!   case iff its newest window (start `ts - ts % advance`) is late. Otherwise it
//!   is **aggregated**: added to each of its windows that is still open.
//! * After the whole batch, every open window with `end <= streamTime - grace`
//!   is removed and returned exactly once, ordered by window start and then
//!   by series key (see [`ClosedWindows`]).
//!
//! # Rejections (hostile-input defences)
//!
//! Every sample is exactly one of aggregated, late or **rejected**. A sample is
//! rejected with the lowest [`Rejection`] code that applies, checked in this order:
//!
//! | code | [`Rejection`] | when |
//! |---|---|---|
//! | 1 | `NonFiniteValue` | the value is NaN or ±Infinity |
//! | 2 | `InvalidTimestamp` | the timestamp is not an integer in `[minEventTime, 2^53)` ([`Limits`], default 0) |
//! | 3 | `UnknownKey` | the key index is outside the batch's key table |
//! | 4 | `EmptyKey` | the series key is the empty string |
//! | 5 | `KeyTooLong` | the series key is longer than `maxKeyBytes` UTF-8 bytes ([`Limits`], default 1024) |
//! | 6 | `FutureTimestamp` | the timestamp is greater than the batch's `max_event_time` (e.g. wall clock + allowed skew) |
//! | 7 | `WindowLimit` | the sample would open more (key, window) aggregates than `maxOpenWindows` allows (see below) |
//!
//! * Codes 1-6 depend only on the sample, the batch's key table, the config
//!   and `max_event_time`; codes 4 and 5 are decided once per entry of the key
//!   table, not per sample. A sample rejected with one of them changes
//!   nothing: in particular a sample from the future does **not** move stream
//!   time (one bad clock would otherwise make every later sample late).
//! * **Window limit** (code 7, only with `maxOpenWindows` set). It applies to
//!   a sample that passed codes 1-6 and is not late. Such a sample needs its
//!   open windows (those with `end > closeTime`); the ones that don't hold its
//!   key yet are *new*. If the open aggregates, not counting windows already due
//!   to close (`end <= closeTime`), plus the new ones would exceed
//!   `maxOpenWindows`, the sample is rejected whole, before touching any
//!   window: it is not added to the windows that do exist either, and its key
//!   is not interned. A sample needing no new aggregate (all of its open
//!   windows already hold its key) is always aggregated, so existing windows
//!   keep aggregating while the limit is reached. The number of open
//!   aggregates therefore never exceeds `maxOpenWindows` (except after a
//!   [`restore`](Aggregator::restore) of more rows than that; new aggregates
//!   are then refused until closing brings the count under the bound).
//!   Unlike codes 1-6, a sample rejected with code 7 **does** move stream
//!   time, as a late sample does: its timestamp passed every check, and if
//!   refused samples could not advance stream time, a full table of windows
//!   would never close and every later sample needing a new window would be
//!   refused forever. When the bound is reached, the windows already due are
//!   closed right away instead of at the end of the batch; they are returned
//!   in `closed` just the same and in the same order (all windows closing
//!   later start after them). So every decision depends only on the samples
//!   and their order, not on how they are split into batches.
//!
//! # Changelog support: change tracking, snapshot and restore
//!
//! The full state of an open window is a [`WindowStates`] row: key, start,
//! count, the *raw* running sum and its Neumaier compensation term (reported
//! sums are `sum + compensation`), min, max and first offset.
//!
//! * With change tracking on ([`Aggregator::with_change_tracking`]), each
//!   [`IngestOutcome`] also carries `changes`: the state after the batch of
//!   every window the batch created or updated and that is still open, once
//!   per window, in the order of closed windows. Windows closed by the batch
//!   are only in `closed`. So upserting `changes` and then deleting `closed`
//!   into a map keyed by (series key, window start) keeps it equal to
//!   [`Aggregator::snapshot`]: a compacted changelog. With tracking off
//!   `changes` is `None` and the hot path does no extra work beyond one
//!   predictable branch per (sample, window).
//! * [`Aggregator::snapshot`] returns every open window, in the same order.
//! * [`Aggregator::restore`] loads such rows (in any order) and a stream time
//!   into a fresh aggregator. Afterwards it behaves exactly like the
//!   aggregator they were taken from: the same lateness decisions, the same
//!   closed windows bit for bit, the same low watermark and open window
//!   count. Only what the rows cannot carry differs: totals restart at 0 and
//!   only the keys of open windows are interned.
//!
//! # Quantiles
//!
//! With [`Quantiles`] ([`Aggregator::with_quantiles`]) every open aggregate
//! also holds a [`Sketch`] (DDSketch, see [`crate::sketch`]) of its first
//! *pane*: the samples of its key in `[start, start + advance)` (the whole
//! window when tumbling). A sample updates one sketch, its pane's, held by
//! its newest window; a closing window reads its quantiles from the bins of
//! its `size / advance` panes summed, which is their exact merge. So a closed
//! window reports the configured quantiles within the sketch's relative
//! accuracy (clamped to its exact min and max). A window due to close is
//! closed before a sample late for it could reach its panes. The sketch's exact state is part of its [`WindowStates`] row
//! (`sketch_bytes`), so a changelog restore is bit-identical. A window whose
//! sketch does not hold all its samples (restored from rows without sketches)
//! reports NaN quantiles rather than those of a part of its samples.
//!
//! # Memory
//!
//! State is held only for open windows: each open (key, window) aggregate,
//! and each series key while at least one open aggregate uses it. Keys are
//! interned to dense `u32` ids and reference-counted by their open
//! aggregates; the counts change only when an aggregate is created or
//! closed, never per sample. A key whose last open window closed is dropped
//! at the end of the batch and its id reused, and the id table is compacted
//! once most of its slots are free. So under key churn (many distinct keys
//! over time) the memory held is O(open aggregates), which `maxOpenWindows`
//! bounds, rather than O(keys ever seen); [`Stats::series_keys`] is never
//! more than [`Stats::open_windows`] after a batch.

use std::collections::{BTreeMap, btree_map};
use std::fmt;
use std::mem::size_of;

use rustc_hash::{FxHashMap, FxHashSet};

use crate::sketch::{
    MAX_RELATIVE_ACCURACY, MIN_RELATIVE_ACCURACY, Sketch, SketchSpec, prefetch_read,
};

/// A window's sketch keeps its own bin for every value within this many
/// decades below the largest (per sign), whatever the accuracy: beyond, the
/// lowest bins collapse (see [`crate::sketch`]). 1 µs to 11 days is 12 decades.
pub const SKETCH_DECADES: f64 = 12.0;

/// Bins per sketch store that cover [`SKETCH_DECADES`] at `relative_accuracy`
/// (the sketch's mapping has `0.7 / ln((1 + α) / (1 - α))` bins per octave):
/// about 1,400 at 1%.
pub fn sketch_max_bins(relative_accuracy: f64) -> usize {
    let per_octave = 0.7 / (relative_accuracy.ln_1p() - (-relative_accuracy).ln_1p());
    (per_octave * SKETCH_DECADES * 10f64.log2()).ceil() as usize + 1
}

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
    /// [`Aggregator::restore`] was given invalid window states, or the
    /// aggregator is not fresh.
    InvalidRestore(String),
    /// The aggregator was released by its owner and can no longer be used.
    Freed,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::InvalidConfig(msg) => write!(f, "invalid window config: {msg}"),
            Error::InvalidInput(msg) => write!(f, "invalid batch: {msg}"),
            Error::InvalidRestore(msg) => write!(f, "cannot restore: {msg}"),
            Error::Freed => f.write_str("aggregator has been freed"),
        }
    }
}

impl std::error::Error for Error {}

/// Why a sample was rejected; the discriminant is the reason code reported to
/// JS. When several apply, the lowest code is reported (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Rejection {
    /// The value is NaN or ±Infinity.
    NonFiniteValue = 1,
    /// The timestamp is not an integer in `[minEventTime, 2^53)`.
    InvalidTimestamp = 2,
    /// The key index is outside the batch's key table.
    UnknownKey = 3,
    /// The series key is empty.
    EmptyKey = 4,
    /// The series key is longer than `maxKeyBytes` UTF-8 bytes.
    KeyTooLong = 5,
    /// The timestamp is greater than the batch's `max_event_time`.
    FutureTimestamp = 6,
    /// Aggregating the sample would exceed `maxOpenWindows`.
    WindowLimit = 7,
}

impl Rejection {
    /// Every reason, by ascending code (precedence order).
    pub const ALL: [Rejection; 7] = [
        Rejection::NonFiniteValue,
        Rejection::InvalidTimestamp,
        Rejection::UnknownKey,
        Rejection::EmptyKey,
        Rejection::KeyTooLong,
        Rejection::FutureTimestamp,
        Rejection::WindowLimit,
    ];

    /// Length of an array indexed by code (index 0 is unused).
    pub const SLOTS: usize = Rejection::ALL.len() + 1;

    pub fn code(self) -> u8 {
        self as u8
    }
}

/// Default for [`Limits`]' `max_key_bytes`.
pub const DEFAULT_MAX_KEY_BYTES: usize = 1024;

/// Bounds on hostile input (rejection codes 2, 5 and 7); the defaults accept
/// everything the window rules can handle except keys over 1024 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Lowest accepted event time (code 2 below it).
    min_event_time: i64,
    /// Longest accepted series key in UTF-8 bytes (code 5 above it).
    max_key_bytes: usize,
    /// Bound on open (key, window) aggregates (code 7); `None` for no bound.
    max_open_windows: Option<usize>,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            min_event_time: 0,
            max_key_bytes: DEFAULT_MAX_KEY_BYTES,
            max_open_windows: None,
        }
    }
}

impl Limits {
    /// Validates JS-number-shaped config: `minEventTimeMs` an integer in
    /// `[0, 2^53)` (default 0), `maxKeyBytes` an integer in `[1, 2^53)`
    /// (default 1024) and `maxOpenWindows` `None` (no bound) or an integer in
    /// `[size / advance, 2^53)`: one sample may open `size / advance` windows,
    /// so a smaller bound could refuse every sample of a new key.
    pub fn new(
        spec: &WindowSpec,
        min_event_time: Option<f64>,
        max_key_bytes: Option<f64>,
        max_open_windows: Option<f64>,
    ) -> Result<Self, Error> {
        let min_event_time = match min_event_time {
            None => 0,
            Some(t) => whole_ms("minEventTimeMs", t, 0, "an integer >= 0")?,
        };
        let max_key_bytes = match max_key_bytes {
            None => DEFAULT_MAX_KEY_BYTES,
            Some(n) => whole_ms("maxKeyBytes", n, 1, "an integer > 0")? as usize,
        };
        let max_open_windows = match max_open_windows {
            None => None,
            Some(n) => {
                let n = whole_ms("maxOpenWindows", n, 1, "null or an integer > 0")?;
                let per_sample = spec.size / spec.advance;
                if n < per_sample {
                    return Err(Error::InvalidConfig(format!(
                        "maxOpenWindows ({n}) must be at least sizeMs / advanceMs \
                         ({per_sample}), the windows one sample can open"
                    )));
                }
                Some(n as usize)
            }
        };
        Ok(Self {
            min_event_time,
            max_key_bytes,
            max_open_windows,
        })
    }

    pub fn min_event_time(&self) -> i64 {
        self.min_event_time
    }

    pub fn max_key_bytes(&self) -> usize {
        self.max_key_bytes
    }

    pub fn max_open_windows(&self) -> Option<usize> {
        self.max_open_windows
    }

    /// Codes 4 and 5 for one entry of a batch's key table.
    fn check_key(&self, key: &str) -> Result<(), Rejection> {
        if key.is_empty() {
            Err(Rejection::EmptyKey)
        } else if key.len() > self.max_key_bytes {
            Err(Rejection::KeyTooLong)
        } else {
            Ok(())
        }
    }
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
    pub fn window_starts(&self, ts: i64) -> impl Iterator<Item = i64> + Clone + use<> {
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

/// Which quantiles every window reports, and the sketch parameters.
#[derive(Debug, Clone)]
pub struct Quantiles {
    spec: SketchSpec,
    quantiles: Vec<f64>,
    /// The quantiles sorted, and where each configured one is among them.
    ascending: Vec<f64>,
    order: Vec<usize>,
}

impl Quantiles {
    /// `quantiles` in [0, 1] (at least one); `relative_accuracy` in [1e-6, 0.5].
    pub fn new(quantiles: &[f64], relative_accuracy: f64) -> Result<Self, Error> {
        if quantiles.is_empty() || quantiles.iter().any(|q| !(0.0..=1.0).contains(q)) {
            return Err(Error::InvalidConfig(format!(
                "quantiles must be one or more numbers in [0, 1] (got {quantiles:?})"
            )));
        }
        if !(MIN_RELATIVE_ACCURACY..=MAX_RELATIVE_ACCURACY).contains(&relative_accuracy) {
            return Err(Error::InvalidConfig(format!(
                "quantileAccuracy must be in [{MIN_RELATIVE_ACCURACY}, {MAX_RELATIVE_ACCURACY}] \
                 (got {relative_accuracy})"
            )));
        }
        let spec = SketchSpec::new(relative_accuracy, sketch_max_bins(relative_accuracy))
            .map_err(|err| Error::InvalidConfig(format!("quantileAccuracy: {err}")))?;
        let mut order: Vec<usize> = (0..quantiles.len()).collect();
        order.sort_by(|&a, &b| quantiles[a].total_cmp(&quantiles[b]));
        let ascending = order.iter().map(|&i| quantiles[i]).collect();
        // order[j] = position in `ascending` of configured quantile j.
        let mut position = vec![0; quantiles.len()];
        for (sorted, &i) in order.iter().enumerate() {
            position[i] = sorted;
        }
        Ok(Self {
            spec,
            quantiles: quantiles.to_vec(),
            ascending,
            order: position,
        })
    }

    pub fn quantiles(&self) -> &[f64] {
        &self.quantiles
    }

    /// Appends the window's quantiles to `out`: NaN unless the sketch holds
    /// every sample of the aggregate.
    fn push_estimates(&self, agg: &Aggregate, panes: &[&Sketch], out: &mut Vec<f64>) {
        let from = out.len();
        let count = panes.iter().map(|s| s.count()).sum::<u64>();
        if count == agg.count {
            Sketch::merged_quantiles_into(&self.spec, panes, &self.ascending, out);
        } else {
            out.extend(self.ascending.iter().map(|_| f64::NAN));
        }
        let estimates = &mut out[from..];
        // The exact bounds only bring an estimate closer to the truth.
        for estimate in estimates.iter_mut() {
            *estimate = estimate.clamp(agg.min, agg.max);
        }
        if self.order.iter().enumerate().any(|(j, &i)| i != j) {
            // Back to the configured order (the CLI's is ascending already).
            let ascending = estimates.to_vec();
            for (slot, &i) in estimates.iter_mut().zip(&self.order) {
                *slot = ascending[i];
            }
        }
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
    /// With [`Quantiles`]: per row, one estimate per configured quantile
    /// (row-major, NaN when unknown); empty otherwise.
    pub quantiles: Vec<f64>,
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

/// Full state of open (series key, window) aggregates as parallel columns,
/// ordered like [`ClosedWindows`]: what [`Aggregator::restore`] needs to
/// rebuild them exactly.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WindowStates {
    pub series_keys: Vec<String>,
    /// Inclusive window start, epoch ms.
    pub window_start: Vec<f64>,
    pub count: Vec<f64>,
    /// Raw running sum, without the compensation term.
    pub sum: Vec<f64>,
    /// Neumaier compensation term: the compensated sum is `sum + compensation`.
    pub compensation: Vec<f64>,
    pub min: Vec<f64>,
    pub max: Vec<f64>,
    /// Input offset of the window's first sample.
    pub first_offset: Vec<f64>,
    /// With [`Quantiles`]: every row's sketch, encoded ([`Sketch::encode`]),
    /// one after the other; row `i` is `sketch_bytes[sketch_ends[i-1]..sketch_ends[i]]`.
    /// Both empty without quantiles.
    pub sketch_bytes: Vec<u8>,
    pub sketch_ends: Vec<u32>,
}

impl WindowStates {
    fn with_capacity(rows: usize) -> Self {
        Self {
            series_keys: Vec::with_capacity(rows),
            window_start: Vec::with_capacity(rows),
            count: Vec::with_capacity(rows),
            sum: Vec::with_capacity(rows),
            compensation: Vec::with_capacity(rows),
            min: Vec::with_capacity(rows),
            max: Vec::with_capacity(rows),
            first_offset: Vec::with_capacity(rows),
            sketch_bytes: Vec::new(),
            sketch_ends: Vec::new(),
        }
    }

    /// Adds a row; with quantiles on, `sketch` is the row's (default: empty).
    fn push_with_sketch(
        &mut self,
        key: &str,
        start: i64,
        agg: &Aggregate,
        sketch: Option<(&SketchSpec, Option<&Sketch>)>,
    ) {
        self.push(key, start, agg);
        if let Some((spec, sketch)) = sketch {
            sketch
                .unwrap_or(&Sketch::default())
                .encode(spec, &mut self.sketch_bytes);
            let end = u32::try_from(self.sketch_bytes.len()).expect("sketches under 4 GiB");
            self.sketch_ends.push(end);
        }
    }

    fn push(&mut self, key: &str, start: i64, agg: &Aggregate) {
        self.series_keys.push(key.to_owned());
        self.window_start.push(start as f64);
        self.count.push(agg.count as f64);
        self.sum.push(agg.sum);
        self.compensation.push(agg.compensation);
        self.min.push(agg.min);
        self.max.push(agg.max);
        self.first_offset.push(agg.first_offset as f64);
    }

    pub fn len(&self) -> usize {
        self.series_keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.series_keys.is_empty()
    }

    /// Borrows the columns, e.g. to pass them to [`Aggregator::restore`].
    pub fn view(&self) -> WindowStatesView<'_, String> {
        WindowStatesView {
            series_keys: &self.series_keys,
            window_start: &self.window_start,
            count: &self.count,
            sum: &self.sum,
            compensation: &self.compensation,
            min: &self.min,
            max: &self.max,
            first_offset: &self.first_offset,
            sketch_bytes: &self.sketch_bytes,
            sketch_ends: &self.sketch_ends,
        }
    }
}

/// Borrowed [`WindowStates`] columns, the input of [`Aggregator::restore`];
/// rows may come in any order.
#[derive(Debug, Clone, Copy)]
pub struct WindowStatesView<'a, K> {
    pub series_keys: &'a [K],
    pub window_start: &'a [f64],
    pub count: &'a [f64],
    pub sum: &'a [f64],
    pub compensation: &'a [f64],
    pub min: &'a [f64],
    pub max: &'a [f64],
    pub first_offset: &'a [f64],
    /// Encoded sketches as in [`WindowStates`]; both empty when the rows have none.
    pub sketch_bytes: &'a [u8],
    pub sketch_ends: &'a [u32],
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
    /// With change tracking on: the state after the batch of every window the
    /// batch created or updated and that is still open (closed ones are only
    /// in `closed`), once each, ordered like `closed`. `None` when tracking is off.
    pub changes: Option<WindowStates>,
}

/// Snapshot of an aggregator's counters and footprint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    /// Open (series key, window) aggregates.
    pub open_windows: usize,
    /// Series keys currently held: those of open windows (a key is dropped
    /// once its last open window closes), so never more than `open_windows`.
    pub series_keys: usize,
    pub late_total: u64,
    pub aggregated_total: u64,
    pub rejected_total: u64,
    /// Rejected samples by [`Rejection`] code (index 0 is unused and 0); the
    /// entries add up to `rejected_total`.
    pub rejected_by_reason: [u64; Rejection::SLOTS],
    /// Estimated heap bytes owned (ignores allocator and B-tree node overhead).
    pub bytes_held: usize,
    pub stream_time: Option<i64>,
}

/// Marks a free id in [`Interner::refs`].
const FREE: u32 = u32::MAX;

/// Below this many id slots the interner is only compacted once it is empty.
/// Tiny in tests, so the property test renumbers keys often.
const COMPACT_MIN_SLOTS: usize = if cfg!(test) { 2 } else { 1024 };

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
struct Interner {
    ids: FxHashMap<Box<str>, u32>,
    /// Name by id; empty for a free id.
    names: Vec<Box<str>>,
    /// Open aggregates by id, or [`FREE`].
    refs: Vec<u32>,
    /// Free ids, reused before new ones are allocated.
    free: Vec<u32>,
    /// Ids whose count dropped to 0 since the last sweep (possibly repeated,
    /// possibly in use again).
    unused: Vec<u32>,
    /// Pins by id (see [`Aggregator::pin_keys`]); grown on the first pin.
    pins: Vec<u32>,
    /// Ids with at least one pin: while any, ids are never renumbered.
    pinned: usize,
}

impl Interner {
    /// The key's id, interning it (with a count of 0) if needed. The caller
    /// acquires it before the batch ends, or it is never swept.
    fn intern(&mut self, key: &str) -> u32 {
        if let Some(&id) = self.ids.get(key) {
            return id;
        }
        let name: Box<str> = key.into();
        let id = match self.free.pop() {
            Some(id) => {
                self.names[id as usize] = name.clone();
                self.refs[id as usize] = 0;
                id
            }
            None => {
                let id = u32::try_from(self.names.len())
                    .ok()
                    .filter(|&id| id != FREE)
                    .expect("fewer than u32::MAX open series keys");
                self.names.push(name.clone());
                self.refs.push(0);
                id
            }
        };
        self.ids.insert(name, id);
        id
    }

    /// The id of an already interned key, without interning it.
    fn get(&self, key: &str) -> Option<u32> {
        self.ids.get(key).copied()
    }

    fn name(&self, id: u32) -> &str {
        &self.names[id as usize]
    }

    /// Series keys currently interned.
    fn len(&self) -> usize {
        self.ids.len()
    }

    /// One more open aggregate uses `id`.
    #[inline]
    fn acquire(&mut self, id: u32) {
        self.refs[id as usize] += 1;
    }

    /// One open aggregate using `id` closed; queues the key for the next
    /// [`sweep`](Self::sweep) when it was the last.
    #[inline]
    fn release(&mut self, id: u32) {
        let refs = &mut self.refs[id as usize];
        *refs -= 1;
        if *refs == 0 {
            self.unused.push(id);
        }
    }

    /// Removes every queued key that is still unused and frees its id.
    fn sweep(&mut self) {
        for id in self.unused.drain(..) {
            let i = id as usize;
            if self.refs[i] == 0 {
                let name = std::mem::take(&mut self.names[i]);
                self.ids.remove(&name);
                self.refs[i] = FREE;
                self.free.push(id);
            }
        }
        if self.unused.capacity() > 1024 {
            self.unused = Vec::new();
        }
    }

    /// Whether most id slots are free, so [`compact`](Self::compact) would
    /// give back memory. Never while keys are pinned: callers hold their ids.
    fn sparse(&self) -> bool {
        let slots = self.names.len();
        let live = self.len();
        self.pinned == 0 && (slots > COMPACT_MIN_SLOTS || live == 0) && live * 4 < slots
    }

    /// Interns `key` and holds it (as an open aggregate would) until unpinned.
    fn pin(&mut self, key: &str) -> u32 {
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

    fn is_pinned(&self, id: u32) -> bool {
        self.pins.get(id as usize).is_some_and(|&n| n > 0)
    }

    /// Drops one pin of `id`, which must be pinned.
    fn unpin(&mut self, id: u32) {
        let pins = &mut self.pins[id as usize];
        *pins -= 1;
        if *pins == 0 {
            self.pinned -= 1;
        }
        self.release(id);
    }

    /// Renumbers the keys densely and shrinks every table to fit; returns the
    /// new id by old id ([`FREE`] for free ones).
    fn compact(&mut self) -> Vec<u32> {
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
        for id in self.ids.values_mut() {
            *id = remap[*id as usize];
        }
        self.ids.shrink_to_fit();
        self.names = names;
        self.refs = refs;
        self.free = Vec::new();
        self.unused = Vec::new();
        self.pins = Vec::new();
        remap
    }

    fn bytes_held(&self) -> usize {
        // Each live key's text is stored twice: in the id table and in the name list.
        let text: usize = self.names.iter().map(|name| 2 * name.len()).sum();
        text + self.names.capacity() * size_of::<Box<str>>()
            + (self.refs.capacity()
                + self.free.capacity()
                + self.unused.capacity()
                + self.pins.capacity())
                * size_of::<u32>()
            + self.ids.capacity() * (size_of::<(Box<str>, u32)>() + 1)
    }
}

/// Rows per chunk of a [`Window`] once it outgrows its first chunk.
const CHUNK: usize = 1024;

/// An open aggregate and its key.
#[derive(Debug, Clone, Copy)]
struct Row {
    agg: Aggregate,
    id: u32,
}

/// The open aggregates of one window start. Rows live in chunks of at most
/// [`CHUNK`] (a row never moves, and at most one chunk is partly empty) and
/// are found by key id through an index: a dense array by id once the window
/// holds enough of the ids below its largest (the common case: one lookup,
/// no hashing), a hash map before (few keys with large ids cost no array).
#[derive(Debug, Default)]
struct Window {
    chunks: Vec<Vec<Row>>,
    /// With quantiles: row `r`'s sketch at `sketches[r]` (grown on demand).
    sketches: Vec<Sketch>,
    len: usize,
    /// One more than the largest key id held.
    ids: usize,
    index: Index,
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
    fn len(&self) -> usize {
        self.len
    }

    /// The row holding key `id`.
    #[inline]
    fn find(&self, id: u32) -> Option<usize> {
        match &self.index {
            Index::Dense(rows) => match rows.get(id as usize) {
                Some(&r) if r > 0 => Some(r as usize - 1),
                _ => None,
            },
            Index::Hashed(rows) => rows.get(&id).map(|&r| r as usize),
        }
    }

    /// The aggregate of key `id` and its sketch, if any.
    fn get(&self, id: u32) -> Option<(&Aggregate, Option<&Sketch>)> {
        self.find(id)
            .map(|r| (&self.row(r).agg, self.sketches.get(r)))
    }

    /// Adds each `(row, value)` to its row's sketch. The sketches of a window
    /// with many keys spill out of the CPU caches, so each add would wait for
    /// memory twice (the sketch, then its counter); here the loop has nothing
    /// else to do and loads the sketch [`AHEAD`] updates early and the counter
    /// half as early, so the misses of consecutive updates overlap.
    fn add_to_sketches(&mut self, spec: &SketchSpec, updates: &[(u32, f64)]) {
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
    fn sketch_mut(&mut self, r: usize) -> &mut Sketch {
        if r >= self.sketches.len() {
            self.sketches.resize_with(r + 1, Sketch::default);
        }
        &mut self.sketches[r]
    }

    #[inline]
    fn row(&self, r: usize) -> &Row {
        &self.chunks[r / CHUNK][r % CHUNK]
    }

    #[inline]
    fn row_mut(&mut self, r: usize) -> &mut Row {
        &mut self.chunks[r / CHUNK][r % CHUNK]
    }

    /// Adds the row of key `id`, which has none; returns its row.
    fn push(&mut self, id: u32, agg: Aggregate) -> usize {
        let r = self.len;
        match self.chunks.last_mut() {
            Some(chunk) if chunk.len() < CHUNK => chunk.push(Row { agg, id }),
            _ => {
                // The first chunk grows as a Vec does, so small windows stay small.
                let mut chunk = Vec::with_capacity(if r == 0 { 4 } else { CHUNK });
                chunk.push(Row { agg, id });
                self.chunks.push(chunk);
            }
        }
        self.len += 1;
        self.ids = self.ids.max(id as usize + 1);
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
    fn iter(&self) -> impl Iterator<Item = (u32, &Aggregate, Option<&Sketch>)> {
        self.chunks
            .iter()
            .flatten()
            .enumerate()
            .map(|(r, row)| (row.id, &row.agg, self.sketches.get(r)))
    }

    /// Renames every key id by `remap` (see [`Interner::compact`]).
    fn remap(&mut self, remap: &[u32]) {
        let mut renamed = Window::default();
        let mut sketches = std::mem::take(&mut self.sketches).into_iter();
        for row in self.chunks.iter().flatten() {
            let r = renamed.push(remap[row.id as usize], row.agg);
            if let Some(sketch) = sketches.next() {
                *renamed.sketch_mut(r) = sketch;
            }
        }
        *self = renamed;
    }

    fn bytes(&self) -> usize {
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
trait KeySource {
    /// Codes 3-5 for sample key reference `key`.
    fn check(&self, key: u32, interner: &Interner) -> Result<(), Rejection>;
    /// The key's id if it is interned, without interning it.
    fn lookup(&mut self, key: u32, interner: &Interner) -> Option<u32>;
    /// The key's id, interning it if needed.
    fn intern(&mut self, key: u32, interner: &mut Interner) -> u32;
}

/// A per-batch table of key strings; samples hold indexes into it.
struct KeyTable<'k, K> {
    keys: &'k [K],
    /// What the batch knows about each entry; valid keys are interned lazily,
    /// so keys whose samples are all late or rejected create no state.
    slots: Vec<BatchKey>,
}

impl<'k, K: AsRef<str>> KeyTable<'k, K> {
    fn new(keys: &'k [K], limits: &Limits) -> Self {
        // Codes 4 and 5 once per entry.
        let slots = keys
            .iter()
            .map(|key| match limits.check_key(key.as_ref()) {
                Ok(()) => BatchKey::Unresolved,
                Err(reason) => BatchKey::Invalid(reason),
            })
            .collect();
        Self { keys, slots }
    }
}

impl<K: AsRef<str>> KeySource for KeyTable<'_, K> {
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
        let id = interner.get(self.keys[key as usize].as_ref())?;
        *slot = BatchKey::Interned(id);
        Some(id)
    }

    #[inline]
    fn intern(&mut self, key: u32, interner: &mut Interner) -> u32 {
        let slot = &mut self.slots[key as usize];
        match *slot {
            BatchKey::Interned(id) => id,
            _ => {
                let id = interner.intern(self.keys[key as usize].as_ref());
                *slot = BatchKey::Interned(id);
                id
            }
        }
    }
}

/// Samples name keys by the ids [`Aggregator::pin_keys`] returned.
struct PinnedIds;

impl KeySource for PinnedIds {
    #[inline]
    fn check(&self, key: u32, interner: &Interner) -> Result<(), Rejection> {
        if interner.is_pinned(key) {
            Ok(())
        } else {
            Err(Rejection::UnknownKey)
        }
    }

    fn lookup(&mut self, key: u32, _: &Interner) -> Option<u32> {
        Some(key)
    }

    #[inline]
    fn intern(&mut self, key: u32, _: &mut Interner) -> u32 {
        key
    }
}

/// Windowed aggregation state of one partition.
#[derive(Debug)]
pub struct Aggregator {
    spec: WindowSpec,
    keys: Interner,
    /// Open windows by start, so the oldest (first to close) are at the front.
    windows: BTreeMap<i64, Window>,
    /// Multiset of the open windows' first offsets; its minimum is the low watermark.
    first_offsets: BTreeMap<i64, u32>,
    /// Number of open (key, window) aggregates: the sum of the `windows` map sizes.
    open_count: usize,
    stream_time: Option<i64>,
    late_total: u64,
    aggregated_total: u64,
    rejected_by_reason: [u64; Rejection::SLOTS],
    limits: Limits,
    /// Whether [`IngestOutcome::changes`] is reported.
    track_changes: bool,
    /// Coalesced change tracking: windows touched since the last
    /// [`Aggregator::take_changes`], as (start, key id); `None` when off.
    pending_changes: Option<FxHashSet<(i64, u32)>>,
    /// Per-window quantiles; `None`: no sketches.
    quantiles: Option<Quantiles>,
    /// With quantiles: the batch's sketch updates not applied yet, as
    /// (window start, [(row, value)]) buckets (a bucket whose start is `None`
    /// is free); see [`Aggregator::apply_sketch_updates`].
    sketch_updates: Vec<SketchUpdates>,
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
            open_count: 0,
            stream_time,
            late_total: 0,
            aggregated_total: 0,
            rejected_by_reason: [0; Rejection::SLOTS],
            limits: Limits::default(),
            track_changes: false,
            pending_changes: None,
            quantiles: None,
            sketch_updates: Vec::new(),
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
        self.pending_changes = on.then(FxHashSet::default);
        self
    }

    /// With coalesced change tracking: the state of every window created or
    /// updated since the last call (or the restore) that is still open, in
    /// the order of [`IngestOutcome::changes`]; forgets them. Empty when
    /// coalescing is off.
    pub fn take_changes(&mut self) -> WindowStates {
        match self.pending_changes.as_mut() {
            None => WindowStates::default(),
            Some(pending) => {
                let touched = std::mem::take(pending);
                self.touched_states(touched)
            }
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
        let mut table = KeyTable::new(keys, &self.limits);
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
        // (window start, key id) of every aggregate created or updated, once each.
        // Coalescing, they accumulate across batches until take_changes.
        let mut touched: Option<FxHashSet<(i64, u32)>> = match self.pending_changes.as_mut() {
            Some(pending) => Some(std::mem::take(pending)),
            None => self.track_changes.then(FxHashSet::default),
        };
        let samples = key_index.iter().zip(timestamps).zip(values).zip(offsets);
        for (i, (((&key, &ts), &value), &offset)) in (0u32..).zip(samples) {
            let checked = checks
                .value_and_time(ts, value)
                .and_then(|ts| source.check(key, &self.keys).map(|()| ts))
                .and_then(|ts| checks.not_future(ts));
            let ts = match checked {
                Ok(ts) => ts,
                Err(reason) => {
                    out.rejected_indexes.push(i);
                    out.rejected_reasons.push(reason.code());
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
            if let Some(max_open) = self.limits.max_open_windows
                && !self.has_room(source, key, ts, close_time, max_open, &mut out)
            {
                out.rejected_indexes.push(i);
                out.rejected_reasons.push(Rejection::WindowLimit.code());
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
            for start in self.spec.window_starts(ts) {
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
                            *self.first_offsets.entry(offset).or_default() += 1;
                            r
                        }
                    };
                    // With quantiles, the sample's sketch is its pane's: the row of its newest
                    // window, the one starting less than an advance before it.
                    if self.quantiles.is_some() && ts - start < self.spec.advance {
                        defer_sketch_update(&mut self.sketch_updates, start, r as u32, value);
                    }
                    if let Some(touched) = touched.as_mut() {
                        touched.insert((start, id));
                    }
                }
            }
            out.aggregated += 1;
        }

        self.aggregated_total += u64::from(out.aggregated);
        self.late_total += out.late_indexes.len() as u64;
        for &code in &out.rejected_reasons {
            self.rejected_by_reason[usize::from(code)] += 1;
        }
        if let Some(stream_time) = self.stream_time {
            self.close_windows(stream_time - self.spec.grace, &mut out.closed);
        }
        match (&mut self.pending_changes, touched) {
            (Some(pending), Some(touched)) => *pending = touched,
            (_, touched) => out.changes = touched.map(|touched| self.touched_states(touched)),
        }
        self.sweep_keys();
        Ok(out)
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

    /// States of the `touched` windows that are still open, in output order.
    fn touched_states(&self, touched: FxHashSet<(i64, u32)>) -> WindowStates {
        // Closing removes a prefix of the starts, so a touched window is still
        // open iff its start is not below the oldest open one.
        let Some(&oldest) = self.windows.keys().next() else {
            return WindowStates::default();
        };
        let mut rows: Vec<(i64, u32)> = touched
            .into_iter()
            .filter(|&(start, _)| start >= oldest)
            .collect();
        rows.sort_unstable_by(|a, b| {
            a.0.cmp(&b.0)
                .then_with(|| self.keys.name(a.1).cmp(self.keys.name(b.1)))
        });
        let mut states = WindowStates::with_capacity(rows.len());
        for group in rows.chunk_by(|a, b| a.0 == b.0) {
            let start = group[0].0;
            let window = &self.windows[&start];
            for (_, id) in group {
                let (agg, sketch) = window.get(*id).expect("a touched window holds its key");
                states.push_with_sketch(self.keys.name(*id), start, agg, self.sketch_of(sketch));
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
        // Keys are unique within a window, so an unstable sort is deterministic.
        rows.sort_unstable_by(|a, b| self.keys.name(a.0).cmp(self.keys.name(b.0)));
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
        let len = states.series_keys.len();
        let columns = [
            states.window_start,
            states.count,
            states.sum,
            states.compensation,
            states.min,
            states.max,
            states.first_offset,
        ];
        if columns.iter().any(|c| c.len() != len) {
            return Err(Error::InvalidRestore(format!(
                "seriesKeys, windowStart, count, sum, compensation, min, max and firstOffset \
                 must have equal length (got {len}, {}, {}, {}, {}, {}, {}, {})",
                columns[0].len(),
                columns[1].len(),
                columns[2].len(),
                columns[3].len(),
                columns[4].len(),
                columns[5].len(),
                columns[6].len()
            )));
        }
        let sketched = !states.sketch_ends.is_empty();
        if sketched {
            let ends = states.sketch_ends;
            let ordered = ends.windows(2).all(|w| w[0] <= w[1]);
            if ends.len() != len || !ordered || ends[len - 1] as usize != states.sketch_bytes.len()
            {
                return Err(Error::InvalidRestore(format!(
                    "sketchEnds must hold one non-decreasing end per row ({len}), the last \
                     equal to the length of sketchBytes ({})",
                    states.sketch_bytes.len()
                )));
            }
        }
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
        let mut first_offsets: BTreeMap<i64, u32> = BTreeMap::new();
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
                let bytes = match sketched {
                    true => {
                        let from = if i == 0 { 0 } else { states.sketch_ends[i - 1] };
                        &states.sketch_bytes[from as usize..states.sketch_ends[i] as usize]
                    }
                    false => &[][..],
                };
                if !bytes.is_empty() {
                    *window.sketch_mut(r) =
                        Sketch::decode(&quantiles.spec, bytes).map_err(|err| {
                            Error::InvalidRestore(format!("row {i} (key {key:?}): sketch: {err}"))
                        })?;
                }
            }
            keys.acquire(id);
            *first_offsets.entry(agg.first_offset).or_default() += 1;
        }
        self.keys = keys;
        self.windows = windows;
        self.first_offsets = first_offsets;
        self.open_count = len;
        self.stream_time = stream_time;
        if let Some(pending) = self.pending_changes.as_mut() {
            // What is restored is what the changelog holds already.
            pending.clear();
        }
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
            let mut panes: Vec<&Sketch> = Vec::new();
            for (id, agg, sketch) in self.by_key_name(&window) {
                closed.push(self.keys.name(id), start, end, agg);
                if let Some(quantiles) = &self.quantiles {
                    window_panes(&self.spec, &self.windows, start, id, sketch, &mut panes);
                    quantiles.push_estimates(agg, &panes, &mut closed.quantiles);
                }
                self.keys.release(id);
                release_offset(&mut self.first_offsets, agg.first_offset);
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
            if let Some(pending) = self.pending_changes.as_mut() {
                // A released key's windows have all closed: its changes are moot.
                *pending = pending
                    .drain()
                    .filter_map(|(start, id)| {
                        let id = remap[id as usize];
                        (id != FREE).then_some((start, id))
                    })
                    .collect();
            }
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
        let offsets = self.first_offsets.len() * size_of::<(i64, u32)>();
        size_of::<Self>() + self.keys.bytes_held() + windows + offsets
    }
}

/// The sketches of the samples of key `id` in window `start` (being closed,
/// its row's own `sketch`, that of its first pane, given): one per pane of
/// the window that holds a sample of the key, kept by the rows of the key in
/// the windows starting at each pane (all still open: they end later). A
/// pane without such a row holds no sample of the key. Their merge is the
/// sketch of the window's own samples (DDSketch merges exactly). Tumbling
/// windows have one pane.
fn window_panes<'a>(
    spec: &WindowSpec,
    windows: &'a BTreeMap<i64, Window>,
    start: i64,
    id: u32,
    sketch: Option<&'a Sketch>,
    panes: &mut Vec<&'a Sketch>,
) {
    panes.clear();
    panes.extend(sketch);
    for pane in (start + spec.advance..start + spec.size).step_by(spec.advance as usize) {
        if let Some((_, Some(other))) = windows.get(&pane).and_then(|w| w.get(id)) {
            panes.push(other);
        }
    }
}

/// Deferred sketch updates of one window start (`None`: a free bucket), as
/// (row, value).
type SketchUpdates = (Option<i64>, Vec<(u32, f64)>);

/// Records a sketch update of row `r` of window `start` in its bucket (few
/// window starts per batch: a short scan, newest first).
#[inline]
fn defer_sketch_update(buckets: &mut Vec<SketchUpdates>, start: i64, r: u32, value: f64) {
    if let Some((_, updates)) = buckets.iter_mut().rev().find(|(s, _)| *s == Some(start)) {
        updates.push((r, value));
        return;
    }
    match buckets.iter_mut().find(|(s, _)| s.is_none()) {
        Some(bucket) => {
            bucket.0 = Some(start);
            bucket.1.push((r, value));
        }
        None => buckets.push((Some(start), vec![(r, value)])),
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

/// The per-batch bounds of the sample checks (codes 1-6).
#[derive(Debug, Clone, Copy)]
struct SampleChecks {
    /// Lowest valid timestamp: `minEventTime`.
    min_ts: f64,
    /// Highest valid timestamp: the batch's `max_event_time`, or +Infinity.
    max_ts: f64,
}

impl SampleChecks {
    /// Codes 1 and 2; returns the timestamp as whole milliseconds.
    #[inline]
    fn value_and_time(&self, ts: f64, value: f64) -> Result<i64, Rejection> {
        if !value.is_finite() {
            return Err(Rejection::NonFiniteValue);
        }
        // NaN and ±Infinity have a NaN fractional part.
        if !(ts.fract() == 0.0 && ts >= self.min_ts && ts < SAFE_LIMIT) {
            return Err(Rejection::InvalidTimestamp);
        }
        Ok(ts as i64)
    }

    /// Code 6 (checked after the key's codes 3-5).
    #[inline]
    fn not_future(&self, ts: i64) -> Result<i64, Rejection> {
        // Exact: ts is below 2^53.
        if ts as f64 > self.max_ts {
            return Err(Rejection::FutureTimestamp);
        }
        Ok(ts)
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
    fn ingest<K: AsRef<str>>(
        agg: &mut Aggregator,
        keys: &[K],
        samples: &[(u32, f64, f64)],
    ) -> IngestOutcome {
        ingest_until(agg, keys, samples, None)
    }

    /// [`ingest`] with a `max_event_time`.
    fn ingest_until<K: AsRef<str>>(
        agg: &mut Aggregator,
        keys: &[K],
        samples: &[(u32, f64, f64)],
        max_event_time: Option<f64>,
    ) -> IngestOutcome {
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
            .ingest(
                keys,
                &key_index,
                &timestamps,
                &values,
                &offsets,
                max_event_time,
            )
            .expect("well-formed batch");
        assert_eq!(
            agg.open_windows(),
            agg.windows.values().map(Window::len).sum()
        );
        assert_key_counts(agg);
        let accounted =
            out.aggregated as usize + out.late_indexes.len() + out.rejected_indexes.len();
        assert_eq!(accounted, samples.len(), "every sample is classified once");
        out
    }

    /// The interner holds exactly the keys of open windows, each counted
    /// once per open aggregate, and its tables agree.
    fn assert_key_counts(agg: &Aggregator) {
        let keys = &agg.keys;
        let mut counts = vec![0u32; keys.names.len()];
        for window in agg.windows.values() {
            for (id, _, _) in window.iter() {
                counts[id as usize] += 1;
            }
        }
        assert_eq!(keys.refs.len(), keys.names.len());
        assert!(keys.unused.is_empty(), "swept at the end of every batch");
        let mut free = 0;
        for (id, (&refs, name)) in keys.refs.iter().zip(&keys.names).enumerate() {
            if refs == FREE {
                free += 1;
                assert_eq!(counts[id], 0, "free id {id} in an open window");
                assert!(name.is_empty() && keys.free.contains(&(id as u32)));
            } else {
                assert_eq!(refs, counts[id], "references of {name:?}");
                assert!(refs > 0, "{name:?} is held by no open window");
                assert_eq!(keys.get(name), Some(id as u32));
            }
        }
        assert_eq!(free, keys.free.len());
        assert_eq!(keys.len() + free, keys.names.len());
        assert!(keys.len() <= agg.open_windows());
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
            .ingest(&["a"], &[0, 0], &[1.0], &[1.0, 2.0], &[0.0, 1.0], None)
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
    fn keys_are_released_when_their_last_window_closes() {
        // Hopping 10/5: a key is held until the last of its windows closes.
        let mut agg = Aggregator::new(spec(10.0, Some(5.0), None));
        let fresh = agg.stats().bytes_held;
        // a and b in [0,10) and [5,15).
        ingest(&mut agg, &["a", "b"], &[(0, 5.0, 1.0), (1, 9.0, 1.0)]);
        let stats = agg.stats();
        assert_eq!((stats.open_windows, stats.series_keys), (4, 2));

        // Closes [0,10) and [5,15): a has no open window left, b opens [10,20) and [15,25).
        let out = ingest(&mut agg, &["b"], &[(0, 15.0, 1.0)]);
        assert_eq!(out.closed.len(), 4);
        let stats = agg.stats();
        assert_eq!((stats.open_windows, stats.series_keys), (2, 1));
        assert_eq!((agg.keys.get("a"), agg.keys.get("b")), (None, Some(1)));

        // Once every window closed, no key is held and the tables are empty again.
        let mut closed = ClosedWindows::default();
        agg.close_windows(i64::MAX, &mut closed);
        agg.sweep_keys();
        assert_key_counts(&agg);
        let stats = agg.stats();
        assert_eq!((stats.open_windows, stats.series_keys), (0, 0));
        assert_eq!(
            rows(&closed),
            [("b", 10.0, 20.0, 1.0, 1.0), ("b", 15.0, 25.0, 1.0, 1.0)]
        );
        assert_eq!(agg.keys.names.len(), 0);
        assert_eq!(stats.bytes_held, fresh);
    }

    #[test]
    fn ids_of_released_keys_are_reused() {
        // Every batch brings a new key and closes the previous key's window.
        let mut agg = Aggregator::new(spec(10.0, None, None));
        for b in 0..1_000u32 {
            let key = format!("key-{b}");
            ingest(&mut agg, &[key.as_str()], &[(0, f64::from(b) * 10.0, 1.0)]);
            let stats = agg.stats();
            assert_eq!((stats.open_windows, stats.series_keys), (1, 1), "batch {b}");
            // The previous key still held its id while this one was interned.
            assert_eq!(agg.keys.get(&key), Some(b % 2), "batch {b}");
            assert_eq!(agg.keys.names.len(), 2.min(b as usize + 1));
        }

        // Many keys at once, then few: the id table is compacted.
        let mut agg = Aggregator::new(spec(10.0, None, None));
        let keys: Vec<String> = (0..5_000).map(|k| format!("k{k}")).collect();
        let samples: Vec<(u32, f64, f64)> = (0..5_000).map(|k| (k, 5.0, 1.0)).collect();
        ingest(&mut agg, &keys, &samples);
        assert_eq!(agg.stats().series_keys, 5_000);
        let peak = agg.stats().bytes_held;
        let out = ingest(&mut agg, &keys[4_999..], &[(0, 15.0, 1.0)]);
        assert_eq!(out.closed.len(), 5_000);
        assert_eq!(agg.stats().series_keys, 1);
        assert_eq!(agg.keys.names.len(), 1, "compacted");
        assert_eq!(agg.keys.get("k4999"), Some(0));
        assert!(agg.stats().bytes_held * 20 < peak);
        let snapshot = agg.snapshot();
        assert_eq!(state_rows(&snapshot)[0].0, "k4999");
    }

    #[test]
    fn ids_stay_valid_when_keys_are_released_mid_batch() {
        // A full table closes due windows mid-batch (rule 7); the batch's
        // cached ids must not be handed to other keys before the batch ends.
        let limit = |max: f64| limited(spec(10.0, None, None), None, None, Some(max));
        let mut agg = limit(1.0);
        let out = ingest(
            &mut agg,
            &["a", "b"],
            &[
                (0, 0.0, 1.0),  // opens a@0
                (1, 10.0, 2.0), // full: closes a@0 (a unused now), opens b@10
                (0, 12.0, 4.0), // a@10 is new and the table is full: rejected
            ],
        );
        assert_eq!(rejections(&out), [(2, 7)]);
        assert_eq!(rows(&out.closed), [("a", 0.0, 10.0, 1.0, 1.0)]);
        let snapshot = agg.snapshot();
        assert_eq!(
            state_rows(&snapshot)
                .iter()
                .map(|r| (r.0, r.1, r.2))
                .collect::<Vec<_>>(),
            [("b", 10.0, 1.0)]
        );
        assert_eq!(snapshot.sum, [2.0], "b@10 did not take a's sample");
        assert_eq!(agg.stats().series_keys, 1);

        // A key whose last window closes mid-batch and that opens a new one
        // in the same batch keeps its id.
        let mut agg = limit(1.0);
        let out = ingest(
            &mut agg,
            &["a"],
            &[(0, 0.0, 1.0), (0, 10.0, 2.0), (0, 11.0, 4.0)],
        );
        assert_eq!(out.aggregated, 3);
        assert_eq!(rows(&out.closed), [("a", 0.0, 10.0, 1.0, 1.0)]);
        assert_eq!(agg.keys.get("a"), Some(0));
        assert_eq!(agg.snapshot().sum, [6.0]);
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
    fn advancing_stream_time_closes_due_windows_like_a_batch() {
        let mut agg =
            Aggregator::new(spec(10.0, Some(5.0), Some(2.0))).with_coalesced_changes(true);
        // Nothing seen yet: nothing to advance from.
        assert!(agg.advance_stream_time(100).is_empty());
        assert_eq!(agg.stream_time(), None);
        let out = ingest(
            &mut agg,
            &["a", "b"],
            &[(0, 3.0, 1.0), (1, 8.0, 2.0), (0, 12.0, 4.0)],
        );
        assert_eq!(out.closed.len(), 3); // [-5,5) and [0,10) at close time 10
        agg.take_changes();
        // Open: [5,15) and [10,20); close time 16 closes the first.
        let closed = agg.advance_stream_time(18);
        assert_eq!(
            rows(&closed),
            vec![("a", 5.0, 15.0, 1.0, 4.0), ("b", 5.0, 15.0, 1.0, 2.0)]
        );
        assert_eq!(agg.stream_time(), Some(18));
        assert_eq!(agg.stats().open_windows, 1);
        assert_eq!(agg.next_close_time(), Some(22)); // [10,20) + grace 2
        // Never backwards; the closed windows' samples are now late.
        assert!(agg.advance_stream_time(17).is_empty());
        assert_eq!(agg.stream_time(), Some(18));
        let late = ingest(&mut agg, &["a"], &[(0, 9.0, 1.0), (0, 19.0, 1.0)]);
        assert_eq!(late.late_indexes, vec![0]);
        let changes = agg.take_changes();
        assert_eq!(changes.window_start, vec![10.0, 15.0]);
        assert_eq!(agg.advance_stream_time(40).len(), 2);
        assert_eq!(agg.stats().open_windows, 0);
        assert_eq!(agg.stats().series_keys, 0);
        assert_eq!(agg.next_close_time(), None);
        assert!(agg.take_changes().is_empty());
    }

    /// Rows of window states as `(key, start, count, raw sum, compensation, first offset)`.
    fn state_rows(states: &WindowStates) -> Vec<(&str, f64, f64, f64, f64, f64)> {
        (0..states.len())
            .map(|i| {
                (
                    states.series_keys[i].as_str(),
                    states.window_start[i],
                    states.count[i],
                    states.sum[i],
                    states.compensation[i],
                    states.first_offset[i],
                )
            })
            .collect()
    }

    fn tracked(size: f64, advance: Option<f64>, grace: Option<f64>) -> Aggregator {
        Aggregator::new(spec(size, advance, grace)).with_change_tracking(true)
    }

    #[test]
    fn change_tracking_is_off_by_default() {
        let mut agg = Aggregator::new(spec(10.0, None, None));
        let out = ingest(&mut agg, &["a"], &[(0, 1.0, 1.0)]);
        assert_eq!(out.changes, None);
    }

    #[test]
    fn changes_hold_each_touched_open_window_once() {
        let mut agg = tracked(10.0, Some(5.0), None);
        // Offsets 0..: `ingest` numbers the samples of the run consecutively.
        let out = ingest(
            &mut agg,
            &["b", "a"],
            &[
                (0, 7.0, 1.0),  // b: [0,10) [5,15)
                (1, 8.0, 2.0),  // a: [0,10) [5,15)
                (0, 9.0, 4.0),  // b again: updates, still one row per window
                (1, 12.0, 8.0), // a: [5,15) [10,20); closes [0,10) at batch end
            ],
        );
        assert_eq!(
            rows(&out.closed),
            [("a", 0.0, 10.0, 1.0, 2.0), ("b", 0.0, 10.0, 2.0, 5.0)]
        );
        // Windows closed by the batch are only in `closed`.
        assert_eq!(
            state_rows(out.changes.as_ref().expect("tracking on")),
            [
                ("a", 5.0, 2.0, 10.0, 0.0, 1.0),
                ("b", 5.0, 2.0, 5.0, 0.0, 0.0),
                ("a", 10.0, 1.0, 8.0, 0.0, 3.0),
            ]
        );

        // Only windows of this batch's samples: b@5 is untouched, and [0,10) had closed.
        let out = ingest(&mut agg, &["a"], &[(0, 5.0, 16.0), (0, 13.0, 1.0)]);
        assert!(out.closed.is_empty());
        let changes = out.changes.expect("tracking on");
        assert_eq!(
            state_rows(&changes),
            [
                ("a", 5.0, 4.0, 27.0, 0.0, 1.0),
                ("a", 10.0, 2.0, 9.0, 0.0, 3.0)
            ]
        );
        assert_eq!((changes.min[0], changes.max[0]), (1.0, 16.0));

        // Late, rejected and empty batches change no window.
        let out = ingest(&mut agg, &["a"], &[(0, 1.0, 1.0), (0, 11.0, f64::NAN)]);
        assert_eq!(out.late_indexes, [0]);
        assert_eq!(out.changes, Some(WindowStates::default()));
        let out = ingest(&mut agg, &[] as &[&str], &[]);
        assert_eq!(out.changes, Some(WindowStates::default()));
    }

    #[test]
    fn a_window_opened_and_closed_in_one_batch_is_only_in_closed() {
        let mut agg = tracked(10.0, None, Some(2.0));
        let out = ingest(&mut agg, &["a", "b"], &[(0, 3.0, 1.0), (1, 25.0, 2.0)]);
        assert_eq!(rows(&out.closed), [("a", 0.0, 10.0, 1.0, 1.0)]);
        assert_eq!(
            state_rows(&out.changes.expect("tracking on")),
            [("b", 20.0, 1.0, 2.0, 0.0, 1.0)]
        );
    }

    #[test]
    fn changes_report_the_raw_sum_and_compensation() {
        let mut agg = tracked(10.0, None, None);
        let out = ingest(
            &mut agg,
            &["a"],
            &[(0, 1.0, 1e16), (0, 2.0, 1.0), (0, 3.0, -1e16)],
        );
        let changes = out.changes.expect("tracking on");
        // The raw running sum lost the 1; the compensation term kept it.
        assert_eq!(state_rows(&changes), [("a", 0.0, 3.0, 0.0, 1.0, 0.0)]);
        assert_eq!(agg.snapshot(), changes);
    }

    /// Deterministic pseudo-random numbers (SplitMix64) for the property tests.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    /// `(key index, timestamp, value)` samples of one batch.
    type Batch = Vec<(u32, f64, f64)>;

    /// Random out-of-order batches over `keys` keys, with some invalid samples:
    /// each batch is `(key table, samples)`.
    fn random_batches(seed: u64, keys: usize, batches: usize) -> (Vec<String>, Vec<Batch>) {
        let mut rng = Rng(seed);
        let names: Vec<String> = (0..keys).map(|k| format!("key-{k}")).collect();
        let mut clock = 1_000.0;
        let batches = (0..batches)
            .map(|_| {
                let len = 1 + rng.below(60) as usize;
                (0..len)
                    .map(|_| {
                        clock += rng.below(4) as f64;
                        let ts = if rng.below(5) == 0 {
                            (clock - rng.below(40) as f64).max(0.0)
                        } else {
                            clock
                        };
                        let value = match rng.below(20) {
                            0 => f64::NAN,
                            1 => 1e16,
                            2 => -1e16,
                            _ => rng.below(1_000) as f64 / 8.0 - 60.0,
                        };
                        (rng.below(keys as u64) as u32, ts, value)
                    })
                    .collect()
            })
            .collect();
        (names, batches)
    }

    /// Upserts `changes` and deletes `closed` into a (start, key) -> row map.
    fn apply(mirror: &mut BTreeMap<(i64, String), [u64; 7]>, out: &IngestOutcome) {
        let changes = out.changes.as_ref().expect("tracking on");
        let mut seen = std::collections::HashSet::new();
        for i in 0..changes.len() {
            let id = (
                changes.window_start[i] as i64,
                changes.series_keys[i].clone(),
            );
            assert!(
                seen.insert(id.clone()),
                "{id:?} reported twice in one batch"
            );
            let row = [
                changes.count[i],
                changes.sum[i],
                changes.compensation[i],
                changes.min[i],
                changes.max[i],
                changes.first_offset[i],
                0.0,
            ];
            mirror.insert(id, row.map(f64::to_bits));
        }
        for i in 0..out.closed.len() {
            let id = (
                out.closed.window_start[i] as i64,
                out.closed.series_keys[i].clone(),
            );
            assert!(!seen.contains(&id), "{id:?} is both changed and closed");
            mirror.remove(&id);
        }
    }

    /// A snapshot in the mirror's shape (start, then key in `str` order).
    fn mirror_of(states: &WindowStates) -> BTreeMap<(i64, String), [u64; 7]> {
        (0..states.len())
            .map(|i| {
                let id = (states.window_start[i] as i64, states.series_keys[i].clone());
                let row = [
                    states.count[i],
                    states.sum[i],
                    states.compensation[i],
                    states.min[i],
                    states.max[i],
                    states.first_offset[i],
                    0.0,
                ];
                (id, row.map(f64::to_bits))
            })
            .collect()
    }

    const GEOMETRIES: [(f64, Option<f64>, Option<f64>); 4] = [
        (10.0, None, None),
        (10.0, None, Some(7.0)),
        (12.0, Some(4.0), None),
        (12.0, Some(3.0), Some(5.0)),
    ];

    #[test]
    fn changes_compact_to_the_snapshot() {
        for (n, (size, advance, grace)) in GEOMETRIES.into_iter().enumerate() {
            let (keys, batches) = random_batches(n as u64, 12, 300);
            let mut agg = tracked(size, advance, grace);
            let mut mirror = BTreeMap::new();
            for batch in &batches {
                let out = ingest(&mut agg, &keys, batch);
                apply(&mut mirror, &out);
                let snapshot = agg.snapshot();
                assert_eq!(mirror, mirror_of(&snapshot));
                // The snapshot is in output order: start, then key.
                let order: Vec<_> = (0..snapshot.len())
                    .map(|i| (snapshot.window_start[i], &snapshot.series_keys[i]))
                    .collect();
                assert!(order.is_sorted(), "{order:?}");
            }
            assert!(agg.stats().late_total > 0 && agg.stats().open_windows > 0);
        }
    }

    #[test]
    fn coalesced_changes_compact_to_the_snapshot() {
        for (n, (size, advance, grace)) in GEOMETRIES.into_iter().enumerate() {
            let (keys, batches) = random_batches(50 + n as u64, 12, 300);
            let mut agg = Aggregator::new(spec(size, advance, grace)).with_coalesced_changes(true);
            let mut per_batch = tracked(size, advance, grace);
            let mut mirror = BTreeMap::new();
            let mut closed: Vec<(i64, String)> = Vec::new();
            let mut written = 0;
            for (b, batch) in batches.iter().enumerate() {
                let out = ingest(&mut agg, &keys, batch);
                assert_eq!(out.changes, None);
                // Coalescing changes what is reported, never a decision or a result.
                let reference = ingest(&mut per_batch, &keys, batch);
                assert_eq!(out.closed, reference.closed);
                assert_eq!(out.late_indexes, reference.late_indexes);
                closed.extend((0..out.closed.len()).map(|i| {
                    (
                        out.closed.window_start[i] as i64,
                        out.closed.series_keys[i].clone(),
                    )
                }));
                if b % 7 == 3 || b + 1 == batches.len() {
                    let changes = agg.take_changes();
                    written += changes.len();
                    let taken = IngestOutcome {
                        changes: Some(changes),
                        ..IngestOutcome::default()
                    };
                    apply(&mut mirror, &taken);
                    for id in closed.drain(..) {
                        assert!(
                            !mirror_of(taken.changes.as_ref().expect("set")).contains_key(&id),
                            "{id:?} is both changed and closed"
                        );
                        mirror.remove(&id);
                    }
                    assert_eq!(mirror, mirror_of(&agg.snapshot()));
                    assert_eq!(agg.take_changes(), WindowStates::default());
                }
            }
            // Each window is written at most once per take, not once per batch.
            assert!(written < batches.len() * 12, "{written} rows written");
        }
    }

    #[test]
    fn a_restore_forgets_coalesced_changes() {
        let mut agg = Aggregator::new(spec(10.0, None, None)).with_coalesced_changes(true);
        ingest(&mut agg, &["a"], &[(0, 1.0, 1.0)]);
        let snapshot = agg.snapshot();
        let mut copy = Aggregator::new(spec(10.0, None, None)).with_coalesced_changes(true);
        copy.restore(snapshot.view(), Some(1.0)).expect("valid");
        assert_eq!(copy.take_changes(), WindowStates::default());
        ingest(&mut copy, &["a"], &[(0, 2.0, 3.0)]);
        assert_eq!(
            state_rows(&copy.take_changes()),
            [("a", 0.0, 2.0, 4.0, 0.0, 0.0)]
        );
    }

    #[test]
    fn restore_from_a_snapshot_continues_identically() {
        for (n, (size, advance, grace)) in GEOMETRIES.into_iter().enumerate() {
            let (keys, batches) = random_batches(100 + n as u64, 12, 200);
            let mut original = tracked(size, advance, grace);
            let mut restored: Vec<Aggregator> = Vec::new();
            for (b, batch) in batches.iter().enumerate() {
                if b % 40 == 17 {
                    let snapshot = original.snapshot();
                    let mut copy = tracked(size, advance, grace);
                    let stream_time = original.stream_time().map(|t| t as f64);
                    copy.restore(snapshot.view(), stream_time)
                        .expect("valid states");
                    assert_eq!(copy.snapshot(), snapshot);
                    assert_eq!(copy.low_watermark(), original.low_watermark());
                    assert_eq!(copy.stats().open_windows, original.stats().open_windows);
                    restored.push(copy);
                }
                let expected = ingest(&mut original, &keys, batch);
                for copy in &mut restored {
                    // `ingest` derives offsets from the totals, which restart at 0
                    // after a restore: pass the original's offsets explicitly.
                    let key_index: Vec<u32> = batch.iter().map(|s| s.0).collect();
                    let ts: Vec<f64> = batch.iter().map(|s| s.1).collect();
                    let values: Vec<f64> = batch.iter().map(|s| s.2).collect();
                    let stats = original.stats();
                    let first = stats.aggregated_total + stats.late_total + stats.rejected_total
                        - batch.len() as u64;
                    let offsets: Vec<f64> = (0..batch.len())
                        .map(|i| (first + i as u64) as f64)
                        .collect();
                    let got = copy
                        .ingest(&keys, &key_index, &ts, &values, &offsets, None)
                        .expect("well-formed batch");
                    assert_eq!(got, expected, "batch {b}");
                    assert_eq!(copy.low_watermark(), original.low_watermark());
                    assert_eq!(copy.stream_time(), original.stream_time());
                    assert_eq!(copy.stats().open_windows, original.stats().open_windows);
                }
            }
            assert_eq!(restored.len(), 5);
        }
    }

    #[test]
    fn restored_compensation_gives_the_same_closed_sum() {
        let mut original = Aggregator::new(spec(10.0, None, None));
        ingest(
            &mut original,
            &["a"],
            &[(0, 1.0, 1e16), (0, 2.0, 1.0), (0, 3.0, -1e16)],
        );
        let mut copy = Aggregator::new(spec(10.0, None, None));
        copy.restore(original.snapshot().view(), Some(3.0))
            .expect("valid states");
        let samples = [(0, 4.0, 0.5), (0, 10.0, 0.0)];
        let out = ingest(&mut copy, &["a"], &samples);
        assert_eq!(rows(&out.closed), [("a", 0.0, 10.0, 4.0, 1.5)]);
        assert_eq!(out, ingest(&mut original, &["a"], &samples));
    }

    /// One valid window `a@10` (size 10, advance 5, grace 2) at stream time 20.
    fn one_state() -> WindowStates {
        WindowStates {
            series_keys: vec!["a".into()],
            window_start: vec![10.0],
            count: vec![2.0],
            sum: vec![3.0],
            compensation: vec![0.0],
            min: vec![1.0],
            max: vec![2.0],
            first_offset: vec![7.0],
            sketch_bytes: vec![],
            sketch_ends: vec![],
        }
    }

    fn restore_error(edit: impl FnOnce(&mut WindowStates), stream_time: Option<f64>) -> String {
        let mut states = one_state();
        edit(&mut states);
        let mut agg = Aggregator::new(spec(10.0, Some(5.0), Some(2.0)));
        let err = agg
            .restore(states.view(), stream_time)
            .expect_err("invalid states");
        assert!(matches!(err, Error::InvalidRestore(_)), "{err:?}");
        // Nothing was loaded, and the aggregator can still be restored.
        assert_eq!(agg.stats().open_windows, 0);
        assert_eq!(agg.stream_time(), None);
        agg.restore(one_state().view(), Some(20.0))
            .expect("valid states");
        err.to_string()
    }

    #[test]
    fn restore_validates_the_states() {
        let mut agg = Aggregator::new(spec(10.0, Some(5.0), Some(2.0)));
        agg.restore(one_state().view(), Some(20.0))
            .expect("valid states");
        assert_eq!(agg.low_watermark(), Some(7));
        assert_eq!((agg.stream_time(), agg.stats().open_windows), (Some(20), 1));

        type Edit = Box<dyn FnOnce(&mut WindowStates)>;
        let cases: Vec<(Edit, Option<f64>, &str)> = vec![
            (
                Box::new(|s| s.max.push(1.0)),
                Some(20.0),
                "must have equal length (got 1, 1, 1, 1, 1, 1, 2, 1)",
            ),
            (
                Box::new(|s| s.series_keys.clear()),
                Some(20.0),
                "equal length",
            ),
            (
                Box::new(|_| {}),
                None,
                "streamTime is null but 1 windows are given",
            ),
            (
                Box::new(|_| {}),
                Some(20.5),
                "streamTime must be null or an integer",
            ),
            (
                Box::new(|_| {}),
                Some(-1.0),
                "streamTime must be null or an integer",
            ),
            (
                Box::new(|s| s.window_start[0] = 12.0),
                Some(20.0),
                "row 0 (key \"a\"): windowStart must be an integer multiple of advanceMs (5)",
            ),
            (
                Box::new(|s| s.window_start[0] = 10.5),
                Some(20.0),
                "windowStart must be",
            ),
            (
                Box::new(|s| s.window_start[0] = f64::NAN),
                Some(20.0),
                "windowStart must be",
            ),
            (
                Box::new(|s| s.window_start[0] = -10.0),
                Some(20.0),
                "in (-sizeMs, streamTime] = (-10, 20]",
            ),
            (
                Box::new(|s| s.window_start[0] = 25.0),
                Some(20.0),
                "(got 25)",
            ),
            (
                Box::new(|_| {}),
                Some(22.0),
                "window [10, 20) had already closed at streamTime 22 (end <= streamTime - graceMs = 20)",
            ),
            (
                Box::new(|s| s.count[0] = 0.0),
                Some(20.0),
                "count must be an integer in [1, 2^53) (got 0)",
            ),
            (Box::new(|s| s.count[0] = 1.5), Some(20.0), "count must be"),
            (
                Box::new(|s| s.first_offset[0] = -1.0),
                Some(20.0),
                "firstOffset must be an integer in [0, 2^53) (got -1)",
            ),
            (
                Box::new(|s| s.first_offset[0] = 2f64.powi(53)),
                Some(20.0),
                "firstOffset must be",
            ),
            (
                Box::new(|s| s.min[0] = 3.0),
                Some(20.0),
                "min and max must be finite with min <= max (got min 3, max 2)",
            ),
            (
                Box::new(|s| s.max[0] = f64::INFINITY),
                Some(20.0),
                "min and max must be finite",
            ),
            (
                Box::new(|s| {
                    let row = one_state();
                    s.series_keys.extend(row.series_keys);
                    s.window_start.extend(row.window_start);
                    s.count.extend(row.count);
                    s.sum.extend(row.sum);
                    s.compensation.extend(row.compensation);
                    s.min.extend(row.min);
                    s.max.extend(row.max);
                    s.first_offset.extend(row.first_offset);
                }),
                Some(20.0),
                "row 1 (key \"a\"): window 10 appears twice",
            ),
        ];
        for (edit, stream_time, expected) in cases {
            let msg = restore_error(edit, stream_time);
            assert!(msg.starts_with("cannot restore: "), "{msg}");
            assert!(
                msg.contains(expected),
                "{msg:?} should contain {expected:?}"
            );
        }
        // The oldest window still open at streamTime 21 (close time 19) ends at 20;
        // the start may be negative for early timestamps.
        let mut states = one_state();
        states.window_start[0] = -5.0;
        let mut agg = Aggregator::new(spec(10.0, Some(5.0), Some(2.0)));
        agg.restore(states.view(), Some(2.0)).expect("valid states");
        // Sum and compensation are taken as they are: an overflowed sum is infinite.
        let mut states = one_state();
        (states.sum[0], states.compensation[0]) = (f64::INFINITY, f64::NAN);
        let mut agg = Aggregator::new(spec(10.0, Some(5.0), Some(2.0)));
        agg.restore(states.view(), Some(21.0))
            .expect("valid states");
        assert!(agg.snapshot().compensation[0].is_nan());
    }

    #[test]
    fn restore_needs_a_fresh_aggregator() {
        let mut agg = Aggregator::new(spec(10.0, Some(5.0), Some(2.0)));
        agg.restore(one_state().view(), Some(20.0))
            .expect("valid states");
        let err = agg.restore(one_state().view(), Some(20.0)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "cannot restore: the aggregator must be fresh (it holds 1 open windows and has \
             ingested 0 samples)"
        );

        // Having ingested samples counts, even if they opened no window.
        let mut agg = Aggregator::new(spec(10.0, None, None));
        ingest(&mut agg, &["a"], &[(0, 1.0, f64::NAN)]);
        let err = agg
            .restore(WindowStates::default().view(), None)
            .unwrap_err();
        assert!(err.to_string().contains("has ingested 1 samples"), "{err}");

        // An empty restore only sets the stream time, replacing one from construction.
        let mut agg = Aggregator::restored(spec(10.0, None, None), Some(50));
        agg.restore(WindowStates::default().view(), Some(30.0))
            .expect("valid");
        assert_eq!(agg.stream_time(), Some(30));
        agg.restore(WindowStates::default().view(), None)
            .expect("valid");
        assert_eq!(agg.stream_time(), None);
    }

    fn limits(
        spec: &WindowSpec,
        min_event_time: Option<f64>,
        max_key_bytes: Option<f64>,
        max_open_windows: Option<f64>,
    ) -> Result<Limits, Error> {
        Limits::new(spec, min_event_time, max_key_bytes, max_open_windows)
    }

    /// An aggregator with the given limits (`None`: the default).
    fn limited(
        spec: WindowSpec,
        min_event_time: Option<f64>,
        max_key_bytes: Option<f64>,
        max_open_windows: Option<f64>,
    ) -> Aggregator {
        let limits =
            limits(&spec, min_event_time, max_key_bytes, max_open_windows).expect("valid limits");
        Aggregator::new(spec).with_limits(limits)
    }

    /// `(index, reason)` of every rejected sample.
    fn rejections(out: &IngestOutcome) -> Vec<(u32, u8)> {
        out.rejected_indexes
            .iter()
            .copied()
            .zip(out.rejected_reasons.iter().copied())
            .collect()
    }

    #[test]
    fn limits_default_and_validate_naming_the_field() {
        let tumbling = spec(10.0, None, None);
        let defaults = limits(&tumbling, None, None, None).expect("defaults");
        assert_eq!(defaults, Limits::default());
        assert_eq!(
            (
                defaults.min_event_time(),
                defaults.max_key_bytes(),
                defaults.max_open_windows()
            ),
            (0, 1024, None)
        );
        let set =
            limits(&tumbling, Some(946_684_800_000.0), Some(1.0), Some(1.0)).expect("valid limits");
        assert_eq!(
            (
                set.min_event_time(),
                set.max_key_bytes(),
                set.max_open_windows()
            ),
            (946_684_800_000, 1, Some(1))
        );

        let error =
            |min: Option<f64>, bytes: Option<f64>, open: Option<f64>, s: &WindowSpec| match limits(
                s, min, bytes, open,
            ) {
                Err(err @ Error::InvalidConfig(_)) => err.to_string(),
                other => panic!("expected InvalidConfig, got {other:?}"),
            };
        for bad in [-1.0, 0.5, f64::NAN, f64::NEG_INFINITY, SAFE_LIMIT] {
            let msg = error(Some(bad), None, None, &tumbling);
            assert!(
                msg.contains("minEventTimeMs must be an integer >= 0"),
                "{msg}"
            );
        }
        for bad in [0.0, -1.0, 1.5, f64::NAN, f64::INFINITY] {
            let msg = error(None, Some(bad), None, &tumbling);
            assert!(msg.contains("maxKeyBytes must be an integer > 0"), "{msg}");
        }
        for bad in [0.0, -1.0, 2.5, f64::NAN, f64::INFINITY, SAFE_LIMIT] {
            let msg = error(None, None, Some(bad), &tumbling);
            assert!(
                msg.contains("maxOpenWindows must be null or an integer > 0"),
                "{msg}"
            );
        }
        // One hopping sample opens sizeMs / advanceMs windows: the bound must allow that.
        let hopping = spec(12.0, Some(3.0), None);
        let msg = error(None, None, Some(3.0), &hopping);
        assert_eq!(
            msg,
            "invalid window config: maxOpenWindows (3) must be at least sizeMs / advanceMs (4), \
             the windows one sample can open"
        );
        assert!(limits(&hopping, None, None, Some(4.0)).is_ok());
    }

    #[test]
    fn min_event_time_rejects_older_timestamps_as_invalid() {
        let mut agg = limited(spec(10.0, None, None), Some(1_000.0), None, None);
        let out = ingest(
            &mut agg,
            &["a"],
            &[
                (0, 999.0, 1.0),
                (0, 0.0, 1.0),
                (0, -0.0, 1.0),
                (0, 1_000.0, 1.0),
            ],
        );
        assert_eq!(rejections(&out), [(0, 2), (1, 2), (2, 2)]);
        assert_eq!((out.aggregated, agg.stream_time()), (1, Some(1_000)));
    }

    #[test]
    fn empty_and_long_keys_are_rejected_by_utf8_length() {
        // "é" is 1 char but 2 bytes; "😀" is 4 bytes.
        let keys = [
            "",
            "abc",
            "abcd",
            "\u{e9}\u{e9}",
            "a\u{e9}\u{e9}",
            "\u{1F600}",
        ];
        let mut agg = limited(spec(10.0, None, None), None, Some(4.0), None);
        let samples: Vec<(u32, f64, f64)> = (0..keys.len() as u32).map(|k| (k, 5.0, 1.0)).collect();
        let out = ingest(&mut agg, &keys, &samples);
        assert_eq!(rejections(&out), [(0, 4), (4, 5)]);
        assert_eq!(out.aggregated, 4);
        // Invalid keys are not interned.
        assert_eq!(agg.stats().series_keys, 4);

        // The default bound is 1024 bytes; an invalid key that no sample uses is harmless.
        let long = "k".repeat(1025);
        let mut agg = Aggregator::new(spec(10.0, None, None));
        let keys = [long.as_str(), &long[1..], ""];
        let out = ingest(&mut agg, &keys, &[(0, 5.0, 1.0), (1, 5.0, 1.0)]);
        assert_eq!(rejections(&out), [(0, 5)]);
        assert_eq!(out.aggregated, 1);
    }

    #[test]
    fn future_samples_are_rejected_and_do_not_move_stream_time() {
        let mut agg = Aggregator::new(spec(10.0, None, None));
        let out = ingest_until(&mut agg, &["a"], &[(0, 100.0, 1.0)], Some(100.0));
        assert_eq!(
            out.aggregated, 1,
            "a timestamp equal to maxEventTime is accepted"
        );
        let out = ingest_until(
            &mut agg,
            &["a"],
            &[
                (0, 1e15, 1.0),  // far future
                (0, 121.0, 1.0), // just past the bound
                (0, 105.0, 2.0), // would be late had either moved stream time
                (0, 120.0, 4.0), // on the bound
            ],
            Some(120.5),
        );
        assert_eq!(rejections(&out), [(0, 6), (1, 6)]);
        assert_eq!(out.aggregated, 2);
        assert_eq!(agg.stream_time(), Some(120));
        assert_eq!(rows(&out.closed), [("a", 100.0, 110.0, 2.0, 3.0)]);
        assert!(out.late_indexes.is_empty());

        // Without a bound nothing is from the future; a bound of -Infinity refuses all.
        let out = ingest_until(&mut agg, &["a"], &[(0, 1e12, 1.0)], None);
        assert_eq!(out.aggregated, 1);
        let out = ingest_until(&mut agg, &["a"], &[(0, 1e12, 1.0)], Some(f64::NEG_INFINITY));
        assert_eq!(rejections(&out), [(0, 6)]);
        let stats = agg.stats();
        assert_eq!(stats.rejected_by_reason, [0, 0, 0, 0, 0, 0, 3, 0]);
        assert_eq!(stats.rejected_total, 3);

        // NaN is no bound at all: an input error, and nothing changes.
        let err = agg
            .ingest(&["a"], &[0], &[5.0], &[1.0], &[0.0], Some(f64::NAN))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid batch: maxEventTime must be null or a number, not NaN"
        );
        assert_eq!(agg.stats(), stats);
    }

    #[test]
    fn the_lowest_applicable_code_wins() {
        let keys = ["", "toolong", "ok"];
        let mut agg = limited(spec(10.0, None, None), Some(10.0), Some(4.0), Some(1.0));
        ingest(&mut agg, &keys, &[(2, 10.0, 1.0)]); // fills the only window slot
        let nan = f64::NAN;
        let out = ingest_until(
            &mut agg,
            &keys,
            &[
                (9, nan, nan),           // 1 over 2, 3
                (0, 5.0, f64::INFINITY), // 1 over 2, 4
                (1, 5.0, 1.0),           // 2 (below minEventTimeMs) over 5
                (9, 10.5, 1.0),          // 2 over 3
                (9, 99.0, 1.0),          // 3 over 6
                (0, 99.0, 1.0),          // 4 over 6
                (1, 99.0, 1.0),          // 5 over 6
                (2, 99.0, 1.0),          // 6 over 7 (a new window would exceed the bound)
                (2, 12.0, 1.0),          // accepted: its window exists
            ],
            Some(50.0),
        );
        assert_eq!(
            rejections(&out),
            [
                (0, 1),
                (1, 1),
                (2, 2),
                (3, 2),
                (4, 3),
                (5, 4),
                (6, 5),
                (7, 6)
            ]
        );
        assert_eq!(out.aggregated, 1);
        let stats = agg.stats();
        assert_eq!(stats.rejected_by_reason, [0, 2, 2, 1, 1, 1, 1, 0]);
        assert_eq!(stats.rejected_total, 8);
        assert_eq!(stats.stream_time, Some(12));
    }

    #[test]
    fn window_limit_rejects_samples_needing_new_windows_whole() {
        // Hopping 10/5 with a long grace: nothing closes for a while. Two windows per sample.
        let mut agg = limited(spec(10.0, Some(5.0), Some(20.0)), None, None, Some(3.0));
        let keys = ["a", "b"];
        let out = ingest(
            &mut agg,
            &keys,
            &[
                (0, 7.0, 1.0),  // opens a@0, a@5: 2 open
                (1, 7.0, 1.0),  // b@0, b@5 would make 4: rejected
                (0, 12.0, 2.0), // a@5 exists, a@10 is new: 3 open
                (0, 8.0, 4.0),  // a@0 and a@5 exist: aggregated with a full table
                (0, 17.0, 8.0), // a@10 exists but a@15 is new: rejected whole
                (1, 1.0, 1.0),  // needs b@-5 and b@0: rejected
            ],
        );
        assert_eq!(rejections(&out), [(1, 7), (4, 7), (5, 7)]);
        assert_eq!(out.aggregated, 3);
        let snapshot = agg.snapshot();
        assert_eq!(
            state_rows(&snapshot)
                .iter()
                .map(|r| (r.0, r.1, r.2))
                .collect::<Vec<_>>(),
            // a@10 did not take the rejected sample at 17.
            [("a", 0.0, 2.0), ("a", 5.0, 3.0), ("a", 10.0, 1.0)]
        );
        let stats = agg.stats();
        assert_eq!(
            (stats.open_windows, stats.series_keys),
            (3, 1),
            "b is not interned"
        );
        assert_eq!(stats.rejected_by_reason[7], 3);
        // The rejected sample at 17 moved stream time, as a late one would.
        assert_eq!(stats.stream_time, Some(17));
    }

    #[test]
    fn window_limit_cannot_stall_stream_time() {
        // Tumbling 10, grace 5, room for one aggregate, held by a@0.
        let mut agg = limited(spec(10.0, None, Some(5.0)), None, None, Some(1.0));
        ingest(&mut agg, &["a"], &[(0, 1.0, 1.0)]);
        let out = ingest(
            &mut agg,
            &["a", "b"],
            &[
                (1, 12.0, 1.0), // close time 7: a@0 still open, b@10 does not fit
                (0, 9.0, 2.0),  // a@0 still takes samples
                (1, 14.0, 1.0), // close time 9: still no room
                (1, 15.0, 4.0), // close time 10: a@0 is due and closes now, b@10 fits
                (1, 16.0, 8.0), // b@10 exists
                (0, 17.0, 1.0), // a@10 would be a second aggregate
            ],
        );
        assert_eq!(rejections(&out), [(0, 7), (2, 7), (5, 7)]);
        assert_eq!(out.aggregated, 3);
        assert_eq!(rows(&out.closed), [("a", 0.0, 10.0, 2.0, 3.0)]);
        assert_eq!(agg.stream_time(), Some(17));
        assert_eq!(
            state_rows(&agg.snapshot()),
            [("b", 10.0, 2.0, 12.0, 0.0, 4.0)]
        );
        // The offsets of the early-closed window are released too.
        assert_eq!(agg.low_watermark(), Some(4));
    }

    #[test]
    fn window_limit_decisions_do_not_depend_on_batch_boundaries() {
        let (keys, batches) = random_batches(7, 12, 60);
        let samples: Vec<(u32, f64, f64)> = batches.concat();
        let make = || limited(spec(12.0, Some(4.0), Some(5.0)), None, None, Some(10.0));
        let mut whole = make();
        let all = ingest(&mut whole, &keys, &samples);
        let mut one_by_one = make();
        let mut closed = ClosedWindows::default();
        let mut rejected = Vec::new();
        let mut late = Vec::new();
        for (i, sample) in samples.iter().enumerate() {
            let out = ingest(&mut one_by_one, &keys, std::slice::from_ref(sample));
            rejected.extend(rejections(&out).iter().map(|&(_, r)| (i as u32, r)));
            late.extend(out.late_indexes.iter().map(|_| i as u32));
            for c in 0..out.closed.len() {
                let row = &out.closed;
                let agg = Aggregate {
                    first_offset: 0,
                    count: row.count[c] as u64,
                    sum: row.sum[c],
                    compensation: 0.0,
                    min: row.min[c],
                    max: row.max[c],
                };
                closed.push(
                    &row.series_keys[c],
                    row.window_start[c] as i64,
                    row.window_end[c] as i64,
                    &agg,
                );
            }
            assert!(one_by_one.stats().open_windows <= 10);
        }
        assert_eq!(rejections(&all), rejected);
        assert_eq!(all.late_indexes, late);
        assert_eq!(all.closed, closed);
        assert_eq!(whole.snapshot(), one_by_one.snapshot());
        assert!(
            rejected.iter().filter(|r| r.1 == 7).count() > 10,
            "the limit was hit"
        );
    }

    #[test]
    fn restore_may_exceed_the_window_limit() {
        let mut agg = limited(spec(10.0, Some(5.0), Some(2.0)), None, None, Some(2.0));
        let mut states = one_state();
        states.series_keys.extend(["b".into(), "c".into()]);
        for column in [
            &mut states.window_start,
            &mut states.count,
            &mut states.sum,
            &mut states.compensation,
            &mut states.min,
            &mut states.max,
            &mut states.first_offset,
        ] {
            column.extend([column[0], column[0]]);
        }
        agg.restore(states.view(), Some(20.0))
            .expect("valid states");
        assert_eq!(agg.stats().open_windows, 3);
        // Existing windows still aggregate; nothing new opens until windows close.
        // (a at 14: [5,15) is late, a@10 exists; d at 19 needs d@10 and d@15.)
        let out = ingest(&mut agg, &["a", "d"], &[(0, 14.0, 1.0), (1, 19.0, 1.0)]);
        assert_eq!(rejections(&out), [(1, 7)]);
        assert_eq!(out.aggregated, 1);
        // Stream time 22 closes the three windows at 10: d@15 and d@20 fit.
        let out = ingest(&mut agg, &["d"], &[(0, 22.0, 1.0)]);
        assert_eq!(out.aggregated, 1);
        assert_eq!(out.closed.len(), 3);
        assert_eq!(agg.stats().open_windows, 2);
    }

    /// Property test of [`Aggregator::ingest`] on hostile input.
    mod hostile {
        use super::*;
        use proptest::prelude::*;

        /// One batch: its `max_event_time`, its samples, and where to split it
        /// (a fraction of its length) for the batch-boundary check.
        type HostileBatch = (Option<f64>, Vec<(u32, f64, f64)>, f64);

        #[derive(Debug, Clone)]
        struct Case {
            /// (advance, size / advance, grace)
            geometry: (i64, i64, i64),
            min_event_time: f64,
            max_key_bytes: usize,
            /// Extra room above `size / advance`, for `maxOpenWindows`.
            max_open_extra: Option<i64>,
            track_changes: bool,
            keys: Vec<String>,
            batches: Vec<HostileBatch>,
        }

        const LIMIT: f64 = 9_007_199_254_740_992.0; // 2^53

        /// Event time advanced by each batch, so that windows open, fill up and close.
        const CLOCK_STEP: i64 = 16;

        /// A timestamp or `max_event_time`: relative to the batch's clock, or as is.
        #[derive(Debug, Clone, Copy)]
        enum Time {
            Clock(i64),
            Raw(f64),
        }

        impl Time {
            fn at(self, batch: usize) -> f64 {
                match self {
                    Time::Clock(delta) => (batch as i64 * CLOCK_STEP + delta) as f64,
                    Time::Raw(t) => t,
                }
            }
        }

        fn timestamp() -> impl Strategy<Value = Time> {
            prop_oneof![
                24 => (-6i64..24).prop_map(Time::Clock),
                1 => (0.0..160.0f64).prop_map(Time::Raw),
                1 => prop_oneof![
                    Just(-0.0),
                    Just(-1.0),
                    Just(f64::NAN),
                    Just(f64::INFINITY),
                    Just(f64::NEG_INFINITY),
                    Just(LIMIT),
                    Just(LIMIT - 1.0),
                    Just(1e300),
                    Just(-1e300),
                    proptest::num::f64::ANY,
                ]
                .prop_map(Time::Raw),
            ]
        }

        fn value() -> impl Strategy<Value = f64> {
            prop_oneof![
                40 => (-100i32..100).prop_map(f64::from),
                1 => Just(f64::NAN),
                1 => Just(f64::INFINITY),
                1 => Just(f64::NEG_INFINITY),
                1 => Just(f64::MAX),
                1 => Just(-f64::MAX),
                1 => proptest::num::f64::ANY,
            ]
        }

        fn max_event_time() -> impl Strategy<Value = Option<Time>> {
            prop_oneof![
                2 => Just(None),
                4 => (0i64..30).prop_map(|t| Some(Time::Clock(t))),
                1 => (0.0..200.0f64).prop_map(|t| Some(Time::Raw(t))),
                1 => prop_oneof![Just(f64::INFINITY), Just(f64::NEG_INFINITY), Just(-5.0)]
                    .prop_map(|t| Some(Time::Raw(t))),
            ]
        }

        fn case() -> impl Strategy<Value = Case> {
            let key = prop_oneof![1 => Just(String::new()), 6 => "[ab\u{e9}\u{1F600}]{1,5}"];
            let index = prop_oneof![24 => 0u32..3, 1 => 3u32..9, 1 => Just(u32::MAX)];
            let sample = (index, timestamp(), value());
            let batch = (
                max_event_time(),
                proptest::collection::vec(sample, 0..40),
                0.0..1.0f64,
            );
            (
                (1i64..=6, 1i64..=4, 0i64..=12),
                prop_oneof![Just(0.0), (0i64..24).prop_map(|t| t as f64)],
                3usize..=20,
                proptest::option::weighted(0.8, 0i64..8),
                any::<bool>(),
                proptest::collection::vec(key, 0..8),
                proptest::collection::vec(batch, 1..8),
            )
                .prop_map(
                    |(
                        geometry,
                        min_event_time,
                        max_key_bytes,
                        max_open_extra,
                        track_changes,
                        keys,
                        batches,
                    )| {
                        let batches = batches
                            .into_iter()
                            .enumerate()
                            .map(|(b, (max, samples, cut))| {
                                let samples = samples
                                    .into_iter()
                                    .map(|(key, ts, value)| (key, ts.at(b), value))
                                    .collect();
                                (max.map(|max| max.at(b)), samples, cut)
                            })
                            .collect();
                        Case {
                            geometry,
                            min_event_time,
                            max_key_bytes,
                            max_open_extra,
                            track_changes,
                            keys,
                            batches,
                        }
                    },
                )
        }

        /// Codes 1-6 straight from their definitions (not from `SampleChecks`).
        fn input_reason(
            case: &Case,
            (key, ts, value): (u32, f64, f64),
            max: Option<f64>,
        ) -> Option<u8> {
            let whole = ts.is_finite() && ts.trunc() == ts;
            if value.is_nan() || value.is_infinite() {
                Some(1)
            } else if !(whole && ts >= case.min_event_time && ts < LIMIT) {
                Some(2)
            } else if key as usize >= case.keys.len() {
                Some(3)
            } else if case.keys[key as usize].is_empty() {
                Some(4)
            } else if case.keys[key as usize].len() > case.max_key_bytes {
                Some(5)
            } else if max.is_some_and(|max| ts > max) {
                Some(6)
            } else {
                None
            }
        }

        /// Total sample count over some window states or closed windows.
        fn total(counts: &[f64]) -> u64 {
            counts.iter().map(|&c| c as u64).sum()
        }

        /// How one sample came out.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        enum Class {
            Aggregated,
            Late,
            Rejected(u8),
        }

        fn classify(out: &IngestOutcome, len: usize) -> Vec<Class> {
            let mut classes = vec![Class::Aggregated; len];
            for &i in &out.late_indexes {
                classes[i as usize] = Class::Late;
            }
            for (&i, &r) in out.rejected_indexes.iter().zip(&out.rejected_reasons) {
                assert_eq!(classes[i as usize], Class::Aggregated, "sample {i} twice");
                classes[i as usize] = Class::Rejected(r);
            }
            classes
        }

        fn check_case(case: &Case) {
            let (advance, per_sample, grace) = case.geometry;
            let size = advance * per_sample;
            let spec = spec(size as f64, Some(advance as f64), Some(grace as f64));
            let max_open = case
                .max_open_extra
                .map(|extra| (per_sample + extra) as usize);
            let limits = Limits::new(
                &spec,
                Some(case.min_event_time),
                Some(case.max_key_bytes as f64),
                max_open.map(|m| m as f64),
            )
            .expect("valid limits");
            let mut agg = Aggregator::new(spec)
                .with_limits(limits)
                .with_change_tracking(case.track_changes);
            // The same samples, each batch cut in two: every decision must be the same.
            let mut split = Aggregator::new(spec).with_limits(limits);
            let mut mirror = BTreeMap::new();
            let mut by_reason = [0u64; Rejection::SLOTS];
            for (b, (max_event_time, samples, cut)) in case.batches.iter().enumerate() {
                let before = total(&agg.snapshot().count);
                let mut stream_time = agg.stream_time();
                let out = ingest_until(&mut agg, &case.keys, samples, *max_event_time);
                assert_eq!(
                    out.aggregated as usize + out.late_indexes.len() + out.rejected_indexes.len(),
                    samples.len()
                );
                assert!(out.late_indexes.is_sorted() && out.rejected_indexes.is_sorted());
                let classes = classify(&out, samples.len());

                let mut additions = 0;
                for (i, (&sample, &class)) in samples.iter().zip(&classes).enumerate() {
                    let context = format!("batch {b} sample {i} {sample:?}: {class:?}");
                    if let Some(reason) = input_reason(case, sample, *max_event_time) {
                        assert_eq!(class, Class::Rejected(reason), "{context}");
                        by_reason[reason as usize] += 1;
                        continue;
                    }
                    // Passed codes 1-6: moves stream time, whatever comes next.
                    let ts = sample.1 as i64;
                    let now = stream_time.map_or(ts, |st| st.max(ts));
                    stream_time = Some(now);
                    let newest = ts - ts.rem_euclid(advance);
                    let open = (0..per_sample)
                        .map(|j| newest - j * advance)
                        .filter(|start| start + size > now - grace)
                        .count() as u64;
                    match class {
                        Class::Late => assert_eq!(open, 0, "{context}"),
                        Class::Aggregated => {
                            assert!((1..=per_sample as u64).contains(&open), "{context}");
                            additions += open;
                        }
                        Class::Rejected(7) => {
                            assert!(open > 0 && max_open.is_some(), "{context}");
                            by_reason[7] += 1;
                        }
                        Class::Rejected(_) => panic!("{context}: not an input problem"),
                    }
                }
                assert_eq!(agg.stream_time(), stream_time, "batch {b}");

                let snapshot = agg.snapshot();
                assert_eq!(
                    total(&snapshot.count) + total(&out.closed.count),
                    before + additions,
                    "batch {b}: every addition is in an open or a closed window"
                );
                let stats = agg.stats();
                assert_eq!(stats.open_windows, snapshot.len());
                let open_keys: std::collections::BTreeSet<&String> =
                    snapshot.series_keys.iter().collect();
                assert_eq!(stats.series_keys, open_keys.len(), "batch {b}: keys held");
                assert!(stats.series_keys <= stats.open_windows, "batch {b}");
                if let Some(max) = max_open {
                    assert!(
                        stats.open_windows <= max,
                        "batch {b}: {} open",
                        stats.open_windows
                    );
                }
                assert_eq!(stats.rejected_by_reason, by_reason);
                assert_eq!(stats.rejected_total, by_reason.iter().sum::<u64>());
                if let Some(now) = stream_time {
                    let close_time = now - grace;
                    for c in 0..out.closed.len() {
                        let start = out.closed.window_start[c];
                        assert_eq!(out.closed.window_end[c], start + size as f64);
                        assert!(out.closed.window_end[c] <= close_time as f64);
                    }
                    for &start in &snapshot.window_start {
                        assert!(start + size as f64 > close_time as f64);
                    }
                }
                let order: Vec<_> = (0..out.closed.len())
                    .map(|c| (out.closed.window_start[c], &out.closed.series_keys[c]))
                    .collect();
                assert!(order.windows(2).all(|w| w[0] < w[1]), "{order:?}");
                if case.track_changes {
                    apply(&mut mirror, &out);
                    assert_eq!(mirror, mirror_of(&snapshot), "batch {b}");
                }

                let at = (samples.len() as f64 * cut) as usize;
                let first = ingest_until(&mut split, &case.keys, &samples[..at], *max_event_time);
                let second = ingest_until(&mut split, &case.keys, &samples[at..], *max_event_time);
                let mut joined = classify(&first, at);
                joined.extend(classify(&second, samples.len() - at));
                assert_eq!(joined, classes, "batch {b} cut at {at}");
                let closed: Vec<_> = rows(&first.closed)
                    .into_iter()
                    .chain(rows(&second.closed))
                    .collect();
                let bits = |rows: Vec<(&str, f64, f64, f64, f64)>| -> Vec<(String, u64, u64)> {
                    rows.into_iter()
                        .map(|r| (r.0.to_owned(), r.1.to_bits(), r.4.to_bits()))
                        .collect()
                };
                assert_eq!(
                    bits(closed),
                    bits(rows(&out.closed)),
                    "batch {b} cut at {at}"
                );
                // Bitwise: an overflowed sum has a NaN compensation.
                assert_eq!(
                    mirror_of(&split.snapshot()),
                    mirror_of(&snapshot),
                    "batch {b} cut at {at}"
                );
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(1000))]

            #[test]
            fn ingest_classifies_every_hostile_sample_once(case in case()) {
                check_case(&case);
            }
        }
    }

    #[test]
    fn offsets_must_be_whole_and_match_the_columns() {
        let mut agg = Aggregator::new(spec(10.0, None, None));
        let err = agg
            .ingest(&["a"], &[0], &[1.0], &[1.0], &[0.5], None)
            .expect_err("fractional offset");
        assert!(err.to_string().contains("offsets"), "{err}");
    }

    /// Runs `batches` (key indexes into `names`) through `ingest` with the
    /// whole table and through `ingest_ids` with pinned keys.
    fn both_ways(
        spec: WindowSpec,
        limits: Limits,
        names: &[String],
        batches: &[Batch],
    ) -> (Vec<IngestOutcome>, Vec<IngestOutcome>, Aggregator) {
        let mut by_table = Aggregator::new(spec)
            .with_limits(limits)
            .with_change_tracking(true);
        let mut by_id = Aggregator::new(spec)
            .with_limits(limits)
            .with_change_tracking(true);
        let ids = by_id.pin_keys(names).expect("valid keys");
        let (mut a, mut b) = (vec![], vec![]);
        for (n, batch) in batches.iter().enumerate() {
            let offsets = vec![n as f64; batch.len()];
            let ts: Vec<f64> = batch.iter().map(|s| s.1).collect();
            let values: Vec<f64> = batch.iter().map(|s| s.2).collect();
            let index: Vec<u32> = batch.iter().map(|s| s.0).collect();
            let key_ids: Vec<u32> = index.iter().map(|&k| ids[k as usize]).collect();
            a.push(
                by_table
                    .ingest(names, &index, &ts, &values, &offsets, Some(5_000.0))
                    .unwrap(),
            );
            b.push(
                by_id
                    .ingest_ids(&key_ids, &ts, &values, &offsets, Some(5_000.0))
                    .unwrap(),
            );
        }
        assert_eq!(by_table.snapshot(), by_id.snapshot());
        (a, b, by_id)
    }

    #[test]
    fn pinned_ids_give_the_same_outcomes_as_key_tables() {
        for (seed, advance, max_open) in
            [(1, 10.0, None), (2, 5.0, Some(40.0)), (3, 20.0, Some(5.0))]
        {
            let (names, batches) = random_batches(seed, 30, 80);
            let spec = spec(20.0, Some(advance), Some(3.0));
            let limits = Limits::new(&spec, None, None, max_open).unwrap();
            let (a, b, _) = both_ways(spec, limits, &names, &batches);
            for (x, y) in a.iter().zip(&b) {
                assert_eq!(x.closed, y.closed);
                assert_eq!(x.changes, y.changes);
                assert_eq!(x.late_indexes, y.late_indexes);
                assert_eq!(x.rejected_indexes, y.rejected_indexes);
                assert_eq!(x.rejected_reasons, y.rejected_reasons);
                assert_eq!(x.aggregated, y.aggregated);
            }
        }
    }

    #[test]
    fn pinned_keys_stay_until_unpinned() {
        let mut agg = Aggregator::new(spec(10.0, None, None));
        let ids = agg.pin_keys(&["a", "b", "a"]).unwrap();
        assert_eq!(ids[0], ids[2], "one id per key, pinned twice");
        // Ids that are not pinned are unknown keys (code 3).
        let out = agg
            .ingest_ids(
                &[ids[1], 77, ids[0]],
                &[1.0, 2.0, 3.0],
                &[1.0, 2.0, 3.0],
                &[0.0; 3],
                None,
            )
            .unwrap();
        assert_eq!(out.rejected_indexes, [1]);
        assert_eq!(out.rejected_reasons, [Rejection::UnknownKey.code()]);
        // Closing every window keeps pinned keys (no open window holds them).
        let out = agg
            .ingest_ids(&[ids[1]], &[100.0], &[1.0], &[1.0], None)
            .unwrap();
        assert_eq!(out.closed.series_keys, ["a", "b"]);
        assert_eq!(agg.stats().series_keys, 2);
        agg.unpin_keys(&[ids[0]]).unwrap();
        assert_eq!(agg.stats().series_keys, 2, "a is still pinned once");
        let err = agg.unpin_keys(&[ids[0], ids[0]]).unwrap_err();
        assert!(err.to_string().contains("pinned 1 times"), "{err}");
        agg.unpin_keys(&[ids[0]]).unwrap();
        assert_eq!(
            agg.stats().series_keys,
            1,
            "a released, b held by its open window"
        );
        let out = agg
            .ingest_ids(&[ids[0]], &[101.0], &[1.0], &[2.0], None)
            .unwrap();
        assert_eq!(out.rejected_reasons, [Rejection::UnknownKey.code()]);
        assert!(
            agg.pin_keys(&["ok", ""])
                .unwrap_err()
                .to_string()
                .contains("keys[1]")
        );
        assert_eq!(agg.stats().series_keys, 1, "a refused pin pins nothing");
    }

    #[test]
    fn pinned_ids_survive_churn_that_would_compact() {
        // Many short-lived keys would renumber ids; pinned ones must keep theirs.
        let mut agg = Aggregator::new(spec(10.0, None, None));
        let pinned = agg.pin_keys(&["keep"]).unwrap()[0];
        for round in 0..50 {
            let names: Vec<String> = (0..20).map(|k| format!("churn-{round}-{k}")).collect();
            let index: Vec<u32> = (0..20).collect();
            let ts = vec![round as f64 * 100.0; 20];
            agg.ingest(&names, &index, &ts, &[1.0; 20], &[0.0; 20], None)
                .unwrap();
            let out = agg
                .ingest_ids(&[pinned], &[round as f64 * 100.0], &[1.0], &[0.0], None)
                .unwrap();
            assert_eq!(out.aggregated, 1, "round {round}");
        }
        assert!(agg.stats().series_keys <= 21);
    }

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

    /// Quantiles per window against exact ones, across hopping windows,
    /// restores from a snapshot, key renumbering and idle advances.
    mod quantiles {
        use super::*;
        use proptest::prelude::*;

        const KEYS: [&str; 3] = ["a", "b", "c"];

        fn aggregator(accuracy: f64) -> Aggregator {
            let quantiles = Quantiles::new(&[0.0, 0.01, 0.25, 0.5, 0.9, 0.99, 1.0], accuracy)
                .expect("valid quantiles");
            Aggregator::new(spec(10.0, Some(5.0), Some(3.0)))
                .with_quantiles(Some(quantiles))
                .with_coalesced_changes(true)
        }

        /// The documented semantics, independently: the values of every
        /// (key, window start) a sample joined.
        #[derive(Default)]
        struct Reference {
            stream_time: Option<i64>,
            values: BTreeMap<(String, i64), Vec<f64>>,
        }

        impl Reference {
            fn add(&mut self, key: &str, ts: i64, value: f64) {
                let st = self.stream_time.map_or(ts, |st| st.max(ts));
                self.stream_time = Some(st);
                let close = st - 3;
                let newest = ts - ts.rem_euclid(5);
                for start in [newest - 5, newest] {
                    if start + 10 > close && start <= ts {
                        self.values
                            .entry((key.to_owned(), start))
                            .or_default()
                            .push(value);
                    }
                }
            }
        }

        fn check_closed(closed: &ClosedWindows, reference: &Reference, accuracy: f64) {
            let qs = [0.0, 0.01, 0.25, 0.5, 0.9, 0.99, 1.0];
            for i in 0..closed.len() {
                let key = (closed.series_keys[i].clone(), closed.window_start[i] as i64);
                let mut exact = reference.values[&key].clone();
                assert_eq!(closed.count[i] as usize, exact.len(), "{key:?}");
                exact.sort_by(f64::total_cmp);
                for (j, &q) in qs.iter().enumerate() {
                    let estimate = closed.quantiles[i * qs.len() + j];
                    let x = exact[(q * (exact.len() - 1) as f64).floor() as usize];
                    let tiny = f64::MIN_POSITIVE;
                    let ok = (estimate - x).abs() <= accuracy * x.abs() * (1.0 + 1e-12)
                        || (x.abs() < tiny && estimate.abs() < tiny);
                    assert!(
                        ok,
                        "{key:?} q={q}: estimate {estimate}, exact {x}, values {exact:?}"
                    );
                }
            }
        }

        fn value() -> impl Strategy<Value = f64> {
            // Within SKETCH_DECADES per sign, so nothing collapses (the sketch's own tests
            // cover collapsing).
            prop_oneof![
                (1e-3..1e3f64, any::<bool>()).prop_map(|(v, neg)| if neg { -v } else { v }),
                (-12.0..12.0f64).prop_map(f64::exp), // heavy tail, 10 decades
                prop_oneof![Just(-5e6), Just(3.0)].prop_map(|v| v), // two clusters
                (0.9..1.1f64).prop_map(|v| 1e5 * v), // narrow
                Just(0.0),
                Just(4e-320), // subnormal
            ]
        }

        fn samples() -> impl Strategy<Value = Vec<(u32, i64, f64)>> {
            prop::collection::vec((0u32..3, 0i64..6, value()), 1..300).prop_map(|raw| {
                // Event time moves forward with some disorder, so windows close and some are late.
                raw.into_iter()
                    .enumerate()
                    .map(|(i, (k, jitter, v))| (k, i as i64 / 4 + 8 - jitter, v))
                    .collect()
            })
        }

        fn run(agg: &mut Aggregator, samples: &[(u32, i64, f64)], offset: usize) -> IngestOutcome {
            let key_index: Vec<u32> = samples.iter().map(|s| s.0).collect();
            let ts: Vec<f64> = samples.iter().map(|s| s.1 as f64).collect();
            let values: Vec<f64> = samples.iter().map(|s| s.2).collect();
            let offsets: Vec<f64> = (offset..offset + samples.len()).map(|o| o as f64).collect();
            agg.ingest(&KEYS, &key_index, &ts, &values, &offsets, None)
                .expect("valid batch")
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(200))]

            #[test]
            fn every_quantile_is_within_the_accuracy_across_restores(
                samples in samples(),
                accuracy in prop_oneof![Just(0.001), Just(0.01), Just(0.05)],
                cut in 0.0..1.0f64,
                split in 1usize..40,
            ) {
                let mut original = aggregator(accuracy);
                let mut reference = Reference::default();
                for &(k, ts, v) in &samples {
                    reference.add(KEYS[k as usize], ts, v);
                }
                let cut = (cut * samples.len() as f64) as usize;
                let (before, after) = samples.split_at(cut);
                for (b, batch) in before.chunks(split).enumerate() {
                    let out = run(&mut original, batch, b * split);
                    check_closed(&out.closed, &reference, accuracy);
                }
                // A restore from the snapshot continues bit for bit.
                let snapshot = original.snapshot();
                let mut restored = aggregator(accuracy);
                restored
                    .restore(snapshot.view(), original.stream_time().map(|t| t as f64))
                    .expect("restore");
                prop_assert_eq!(restored.snapshot(), snapshot);
                for (b, batch) in after.chunks(split).enumerate() {
                    let out = run(&mut original, batch, cut + b * split);
                    let again = run(&mut restored, batch, cut + b * split);
                    check_closed(&out.closed, &reference, accuracy);
                    prop_assert_eq!(&out.closed, &again.closed);
                }
                let end = 1_000;
                let last = original.advance_stream_time(end);
                check_closed(&last, &reference, accuracy);
                prop_assert_eq!(last, restored.advance_stream_time(end));
            }
        }

        #[test]
        fn quantiles_are_reported_in_the_configured_order() {
            let quantiles = Quantiles::new(&[0.9, 0.1, 0.5], 0.01).expect("valid");
            let mut agg = Aggregator::new(spec(10.0, None, None)).with_quantiles(Some(quantiles));
            let samples: Vec<(u32, f64, f64)> = (1..=100).map(|v| (0, 1.0, f64::from(v))).collect();
            ingest(&mut agg, &["a"], &samples);
            let closed = agg.advance_stream_time(100);
            // Ranks 89, 9 and 49: values 90, 10 and 50, within 1%.
            let want = [90.0, 10.0, 50.0];
            for (got, want) in closed.quantiles.iter().zip(want) {
                assert!((got - want).abs() <= 0.01 * want, "{:?}", closed.quantiles);
            }
        }

        #[test]
        fn windows_restored_without_sketches_report_no_quantiles() {
            let mut plain = Aggregator::new(spec(10.0, Some(5.0), Some(3.0)));
            ingest(&mut plain, &["a"], &[(0, 12.0, 1.0), (0, 13.0, 2.0)]);
            let states = plain.snapshot();
            assert!(states.sketch_ends.is_empty());
            let mut sketched = aggregator(0.01);
            sketched
                .restore(states.view(), Some(13.0))
                .expect("restore");
            ingest(&mut sketched, &["a"], &[(0, 14.0, 3.0)]);
            let unknown = |closed: &ClosedWindows| -> Vec<bool> {
                let rows = closed.quantiles.chunks(7);
                rows.map(|row| row.iter().all(|q| q.is_nan())).collect()
            };
            // [5,15) and [10,20) hold samples from before the sketches: no quantiles.
            let early = ingest(&mut sketched, &["a"], &[(0, 40.0, 4.0)]).closed;
            assert_eq!(early.window_start, vec![5.0, 10.0]);
            assert_eq!(unknown(&early), vec![true, true]);
            let late = sketched.advance_stream_time(100);
            assert_eq!(late.window_start, vec![35.0, 40.0]);
            assert_eq!(unknown(&late), vec![false, false]);
            assert_eq!(late.quantiles, vec![4.0; 14]);
            // Without quantiles nothing is reported and no sketch is kept.
            let mut off = Aggregator::new(spec(10.0, None, None));
            ingest(&mut off, &["a"], &[(0, 1.0, 1.0)]);
            assert!(off.snapshot().sketch_bytes.is_empty());
            assert!(off.advance_stream_time(100).quantiles.is_empty());
        }

        #[test]
        fn sketches_follow_their_keys_through_renumbering() {
            // Many keys come and go, so the interner compacts and renumbers the open windows.
            let mut agg = aggregator(0.01);
            let names: Vec<String> = (0..2_000).map(|i| format!("k{i}")).collect();
            let batch = |from: usize, ts: f64| -> (Vec<u32>, Vec<f64>, Vec<f64>, Vec<f64>) {
                let ids: Vec<u32> = (from..from + 500).map(|i| i as u32).collect();
                let values = ids.iter().map(|&i| f64::from(i)).collect();
                (ids.clone(), vec![ts; 500], values, vec![0.0; 500])
            };
            for (round, from) in [0usize, 500, 1_000, 1_500].into_iter().enumerate() {
                let (ids, ts, values, offsets) = batch(from, 20.0 * round as f64);
                let out = agg
                    .ingest(&names, &ids, &ts, &values, &offsets, None)
                    .expect("batch");
                for i in 0..out.closed.len() {
                    let own = names
                        .iter()
                        .position(|n| *n == out.closed.series_keys[i])
                        .expect("a known key") as f64;
                    // Each window holds one sample: every quantile is that value.
                    for q in &out.closed.quantiles[i * 7..(i + 1) * 7] {
                        assert!((q - own).abs() <= 0.01 * own, "{q} vs {own}");
                    }
                }
            }
        }
    }
}
