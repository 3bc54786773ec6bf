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
    pub series_keys: KeyColumn,
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
        self.series_keys.push(key);
        self.window_start.push(start as f64);
        self.window_end.push(end as f64);
        self.count.push(agg.count() as f64);
        self.sum.push(agg.sum());
        self.mean.push(agg.mean());
        self.min.push(agg.min());
        self.max.push(agg.max());
    }

    /// Room for `rows` more rows (and `quantiles` more estimates), so a large window's columns
    /// are allocated once instead of copied as they double.
    pub(super) fn reserve(&mut self, rows: usize, quantiles: usize) {
        for column in [
            &mut self.window_start,
            &mut self.window_end,
            &mut self.count,
            &mut self.sum,
            &mut self.mean,
            &mut self.min,
            &mut self.max,
        ] {
            column.reserve(rows);
        }
        self.series_keys.ends.reserve(rows);
        self.quantiles.reserve(quantiles);
    }

    pub fn len(&self) -> usize {
        self.series_keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.series_keys.is_empty()
    }
}

/// A column of series keys, one after the other in one text: closing a window allocates no
/// string per row, and the binding hands JS the text whole (see `consumer/native.ts`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyColumn {
    text: String,
    /// Where each key ends in `text`: key `i` is `text[ends[i - 1]..ends[i]]` (from 0 for the
    /// first).
    ends: Vec<usize>,
}

impl KeyColumn {
    pub fn push(&mut self, key: &str) {
        self.text.push_str(key);
        self.ends.push(self.text.len());
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Key `i`, if there are more than `i`.
    pub fn get(&self, i: usize) -> Option<&str> {
        let end = *self.ends.get(i)?;
        let start = i.checked_sub(1).map_or(0, |before| self.ends[before]);
        Some(&self.text[start..end])
    }

    pub fn iter(&self) -> impl ExactSizeIterator<Item = &str> + '_ {
        (0..self.len()).map(|i| &self[i])
    }

    /// The keys for JS: the text in segments of whole keys, each at most `max_units` UTF-16 code
    /// units unless one key alone is longer; where each key ends in its segment, in UTF-16 code
    /// units; and how many keys each segment holds.
    pub fn utf16_segments(&self, max_units: usize) -> KeySegments<'_> {
        let mut out = KeySegments {
            segments: Vec::new(),
            ends: Vec::with_capacity(self.len()),
            rows: Vec::new(),
        };
        // The open segment: bytes [from, at), `units` long, `rows` keys.
        let (mut from, mut at, mut units, mut rows) = (0, 0, 0, 0u32);
        for &end in &self.ends {
            let key = &self.text[at..end];
            // ASCII keys (the usual case) are as long in UTF-16 as in UTF-8.
            let length = if key.is_ascii() {
                key.len()
            } else {
                key.encode_utf16().count()
            };
            if units + length > max_units && rows > 0 {
                out.segments.push(&self.text[from..at]);
                out.rows.push(rows);
                (from, units, rows) = (at, 0, 0);
            }
            units += length;
            rows += 1;
            out.ends.push(units);
            at = end;
        }
        if rows > 0 {
            out.segments.push(&self.text[from..]);
            out.rows.push(rows);
        }
        out
    }
}

/// [`KeyColumn::utf16_segments`].
#[derive(Debug, PartialEq)]
pub struct KeySegments<'a> {
    pub segments: Vec<&'a str>,
    /// Per key, where it ends in its segment, in UTF-16 code units.
    pub ends: Vec<usize>,
    /// Keys per segment.
    pub rows: Vec<u32>,
}

impl std::ops::Index<usize> for KeyColumn {
    type Output = str;

    fn index(&self, i: usize) -> &str {
        self.get(i).expect("key index in bounds")
    }
}

impl<S: AsRef<str>> FromIterator<S> for KeyColumn {
    fn from_iter<I: IntoIterator<Item = S>>(keys: I) -> Self {
        let mut column = Self::default();
        for key in keys {
            column.push(key.as_ref());
        }
        column
    }
}

impl<S: AsRef<str>, const N: usize> PartialEq<[S; N]> for KeyColumn {
    fn eq(&self, other: &[S; N]) -> bool {
        self.len() == N && self.iter().zip(other).all(|(a, b)| a == b.as_ref())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_column_holds_each_key_as_itself() {
        let keys: KeyColumn = ["a", "é", "😀x", "bcd"].into_iter().collect();
        assert_eq!(keys.len(), 4);
        assert_eq!((&keys[1], &keys[2], keys.get(4)), ("é", "😀x", None));
        assert_eq!(keys.iter().collect::<Vec<_>>(), ["a", "é", "😀x", "bcd"]);
        assert_eq!(keys, ["a", "é", "😀x", "bcd"]);
        assert_ne!(keys, ["a", "é", "😀x"]);
        assert!(KeyColumn::default().is_empty());
    }

    /// Ends count UTF-16 code units (a JS string's length), from each segment's start; a segment
    /// holds whole keys, and a key longer than a segment gets one of its own.
    #[test]
    fn key_segments_count_utf16_units_and_split_between_keys() {
        let keys: KeyColumn = ["a", "é", "😀x", "bcd"].into_iter().collect();
        assert_eq!(
            keys.utf16_segments(1 << 28),
            KeySegments {
                segments: vec!["aé😀xbcd"],
                ends: vec![1, 2, 5, 8],
                rows: vec![4],
            }
        );
        for max_units in [2, 3] {
            assert_eq!(
                keys.utf16_segments(max_units),
                KeySegments {
                    segments: vec!["aé", "😀x", "bcd"],
                    ends: vec![1, 2, 3, 3],
                    rows: vec![2, 1, 1],
                },
                "{max_units}"
            );
        }
        let empty = KeyColumn::default();
        let none = empty.utf16_segments(1);
        assert!(none.segments.is_empty() && none.ends.is_empty() && none.rows.is_empty());
    }
}
