//! Which quantiles windows report, and the pane sketches they are read from.

use std::collections::BTreeMap;

use super::aggregate::Aggregate;
use super::error::Error;
use super::rows::Window;
use super::spec::WindowSpec;
use crate::sketch::{MAX_RELATIVE_ACCURACY, MIN_RELATIVE_ACCURACY, Sketch, SketchSpec};

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

/// Which quantiles every window reports, and the sketch parameters.
#[derive(Debug, Clone)]
pub struct Quantiles {
    pub(super) spec: SketchSpec,
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
    pub(super) fn push_estimates(&self, agg: &Aggregate, panes: &[&Sketch], out: &mut Vec<f64>) {
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

/// The sketches of the samples of key `id` in window `start` (being closed,
/// its row's own `sketch`, that of its first pane, given): one per pane of
/// the window that holds a sample of the key, kept by the rows of the key in
/// the windows starting at each pane (all still open: they end later). A
/// pane without such a row holds no sample of the key. Their merge is the
/// sketch of the window's own samples (DDSketch merges exactly). Tumbling
/// windows have one pane.
pub(super) fn window_panes<'a>(
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
pub(super) type SketchUpdates = (Option<i64>, Vec<(u32, f64)>);

/// Records a sketch update of row `r` of window `start` in its bucket (few
/// window starts per batch: a short scan, newest first).
#[inline]
pub(super) fn defer_sketch_update(
    buckets: &mut Vec<SketchUpdates>,
    start: i64,
    r: u32,
    value: f64,
) {
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
