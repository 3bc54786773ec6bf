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

#[cfg(doc)]
use crate::sketch::Sketch;

mod aggregate;
mod aggregator;
mod error;
mod id_table;
mod interner;
mod keys;
mod limits;
mod outcome;
mod quantiles;
mod rows;
mod spec;
#[cfg(test)]
mod test_support;

pub use aggregate::Aggregate;
pub use aggregator::Aggregator;
pub use error::{Error, Rejection};
pub use limits::{DEFAULT_MAX_KEY_BYTES, Limits};
pub use outcome::{
    ClosedWindows, IngestOutcome, KeyColumn, KeySegments, Stats, WindowStates, WindowStatesView,
};
pub use quantiles::{Quantiles, SKETCH_DECADES, sketch_max_bins};
pub use spec::{WindowSpec, whole_ms};
