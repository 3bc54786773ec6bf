//! What the aggregator returns: closed windows, window states, batch outcomes and counters.

use super::aggregate::Aggregate;
use super::error::Rejection;
use crate::sketch::{Sketch, SketchSpec};

#[cfg(doc)]
use super::{Aggregator, Quantiles};

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
    pub(super) fn push(&mut self, key: &str, start: i64, end: i64, agg: &Aggregate) {
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
    pub(super) fn with_capacity(rows: usize) -> Self {
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
    pub(super) fn push_with_sketch(
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

impl<K> WindowStatesView<'_, K> {
    /// Whether the columns have one entry per row and the sketch ends (if
    /// any) one non-decreasing end per row, the last at the end of the bytes;
    /// the message says what is wrong.
    pub fn check_shape(&self) -> Result<(), String> {
        let len = self.series_keys.len();
        let columns = [
            self.window_start,
            self.count,
            self.sum,
            self.compensation,
            self.min,
            self.max,
            self.first_offset,
        ];
        if columns.iter().any(|c| c.len() != len) {
            return Err(format!(
                "seriesKeys, windowStart, count, sum, compensation, min, max and firstOffset \
                 must have equal length (got {len}, {}, {}, {}, {}, {}, {}, {})",
                columns[0].len(),
                columns[1].len(),
                columns[2].len(),
                columns[3].len(),
                columns[4].len(),
                columns[5].len(),
                columns[6].len()
            ));
        }
        let ends = self.sketch_ends;
        if !ends.is_empty()
            && (ends.len() != len
                || !ends.windows(2).all(|w| w[0] <= w[1])
                || ends[len - 1] as usize != self.sketch_bytes.len())
        {
            return Err(format!(
                "sketchEnds must hold one non-decreasing end per row ({len}), the last \
                 equal to the length of sketchBytes ({})",
                self.sketch_bytes.len()
            ));
        }
        Ok(())
    }

    /// Row `i`'s encoded sketch (empty when the rows have none); the shape
    /// must have been checked.
    pub fn sketch(&self, i: usize) -> &[u8] {
        match self.sketch_ends {
            [] => &[],
            ends => {
                let from = if i == 0 { 0 } else { ends[i - 1] as usize };
                &self.sketch_bytes[from..ends[i] as usize]
            }
        }
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
