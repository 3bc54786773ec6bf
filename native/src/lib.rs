#![deny(clippy::all)]
//! Node-API bindings for the window core in [`window`]; this file only
//! converts between JS values and the core's types.

pub mod avro;
pub mod records;
pub mod sketch;
pub mod window;

use napi::bindgen_prelude::{Buffer, Either, Float64Array, Null, Uint8Array, Uint32Array};
use napi::{Error, Result, Status};
use napi_derive::napi;

use window::{
    Aggregator, ClosedWindows as CoreClosed, IngestOutcome, Limits, Quantiles, WindowSpec,
    WindowStates as CoreStates, WindowStatesView,
};

/// The single conversion point from core errors to JS errors.
fn map_error(err: window::Error) -> Error {
    let status = match err {
        window::Error::InvalidConfig(_)
        | window::Error::InvalidInput(_)
        | window::Error::InvalidRestore(_) => Status::InvalidArg,
        window::Error::Freed => Status::GenericFailure,
    };
    Error::new(status, err.to_string())
}

/// Window geometry, in milliseconds of event time, and bounds on hostile input.
#[napi(object, object_to_js = false)]
pub struct AggregatorConfig {
    /// Window length; an integer > 0.
    pub size_ms: f64,
    /// Distance between consecutive window starts; an integer with
    /// 0 < advanceMs <= sizeMs and sizeMs % advanceMs === 0. Defaults to sizeMs
    /// (tumbling windows); smaller values give hopping windows.
    pub advance_ms: Option<f64>,
    /// How long after its end a window still accepts samples; an integer >= 0, default 0.
    pub grace_ms: Option<f64>,
    /// Stream time to resume at (epoch ms), from a checkpoint; unset for a fresh partition.
    pub stream_time: Option<f64>,
    /// Report IngestResult.changes (the state of every window a batch created
    /// or updated that is still open), e.g. to write a changelog. Default false.
    pub track_changes: Option<bool>,
    /// Coalesce changes across batches instead (overrides trackChanges):
    /// IngestResult.changes is null and takeChanges() returns every window
    /// created or updated since its last call that is still open, once, so a
    /// window touched by many batches is written to a changelog once per
    /// commit. Default false.
    pub coalesce_changes: Option<bool>,
    /// Samples stamped before this (epoch ms) are rejected with reason 2, like
    /// other invalid timestamps: e.g. 946684800000 refuses anything before the
    /// year 2000. An integer >= 0; default 0.
    pub min_event_time_ms: Option<f64>,
    /// Samples whose series key is longer than this many UTF-8 bytes are
    /// rejected with reason 5. An integer > 0; default 1024.
    pub max_key_bytes: Option<f64>,
    /// Bound on open (series key, window) aggregates; null or unset for none.
    /// An integer >= sizeMs / advanceMs (the windows one sample can open).
    /// A sample that would need new aggregates beyond it is rejected whole
    /// (reason 7), before touching any window, and unlike reasons 1-6 still
    /// moves streamTime; samples whose windows all exist keep aggregating.
    /// See ingest().
    // An `Option` field alone takes `undefined` but not `null`.
    #[napi(ts_type = "number | null")]
    pub max_open_windows: Option<Either<f64, Null>>,
    /// Quantiles (each in [0, 1]) every closed window reports, estimated by a
    /// sketch (DDSketch) kept per open window; unset or empty: none.
    pub quantiles: Option<Vec<f64>>,
    /// Relative accuracy of the quantiles, in [1e-6, 0.5]; default 0.01: each
    /// estimate is within 1% of the exact value of its rank.
    pub quantile_accuracy: Option<f64>,
}

/// Closed (series key, window) aggregates as parallel columns. Rows are ordered
/// by windowStart, then by series key in code point order (UTF-8 byte order).
#[napi(object)]
pub struct ClosedWindows {
    pub series_keys: Vec<String>,
    /// Inclusive window start, epoch ms.
    pub window_start: Float64Array,
    /// Exclusive window end (windowStart + sizeMs), epoch ms.
    pub window_end: Float64Array,
    pub count: Float64Array,
    /// Compensated (Neumaier) sum.
    pub sum: Float64Array,
    pub mean: Float64Array,
    pub min: Float64Array,
    pub max: Float64Array,
    /// With the quantiles config: row-major, one estimate per configured
    /// quantile per row (row i's are [i * k, (i + 1) * k)); NaN when the
    /// window's sketch does not hold all its samples (restored from a state
    /// without sketches). Empty without quantiles.
    pub quantiles: Float64Array,
}

/// ClosedWindows as the binding returns them: the series keys cross as text, a few strings for
/// all rows instead of a string per row, and consumer/native.ts splits them into seriesKeys.
#[napi(object, object_from_js = false)]
pub struct PackedClosedWindows {
    /// The series keys one after the other, in segments of at most 2^28 UTF-16 code units
    /// (a JS string holds at most about 2^29).
    pub key_text: Vec<String>,
    /// Where each row's key ends in its segment, in UTF-16 code units; a segment's first key
    /// starts at 0.
    pub key_ends: Uint32Array,
    /// How many rows each segment of keyText holds.
    pub key_segment_rows: Uint32Array,
    /// Inclusive window start, epoch ms.
    pub window_start: Float64Array,
    /// Exclusive window end (windowStart + sizeMs), epoch ms.
    pub window_end: Float64Array,
    pub count: Float64Array,
    /// Compensated (Neumaier) sum.
    pub sum: Float64Array,
    pub mean: Float64Array,
    pub min: Float64Array,
    pub max: Float64Array,
    /// As in ClosedWindows.
    pub quantiles: Float64Array,
}

/// UTF-16 code units per keyText segment, at most.
const KEY_SEGMENT_UNITS: usize = 1 << 28;

/// Full state of open (series key, window) aggregates as parallel columns, in
/// the order of ClosedWindows (windowStart, then series key in code point
/// order). Returned by snapshot() and in IngestResult.changes, accepted by
/// restore() (in any row order). Keyed by (seriesKey, windowStart): upserting
/// each batch's changes and deleting its closed windows gives a compacted
/// changelog equal to snapshot().
#[napi(object)]
pub struct WindowStates {
    pub series_keys: Vec<String>,
    /// Inclusive window start, epoch ms; a multiple of advanceMs.
    pub window_start: Float64Array,
    /// Samples in the window; an integer >= 1.
    pub count: Float64Array,
    /// Raw running sum, without the compensation term (may be ±Infinity after overflow).
    pub sum: Float64Array,
    /// Neumaier compensation term: a closed window reports sum + compensation
    /// (just sum once that is infinite).
    pub compensation: Float64Array,
    pub min: Float64Array,
    pub max: Float64Array,
    /// Input offset of the window's first sample; the lowest one among open
    /// windows is the lowWatermark.
    pub first_offset: Float64Array,
    /// With quantiles: every row's sketch (its exact state, encoded: the
    /// sketch of the row's first pane, [windowStart, windowStart + advanceMs),
    /// which is the whole window when tumbling), one after the other; row i is sketchBytes[sketchEnds[i - 1] (0 for i = 0),
    /// sketchEnds[i]). Unset without quantiles (restore then starts every
    /// window's sketch empty: its quantiles are unknown, NaN).
    pub sketch_bytes: Option<Uint8Array>,
    pub sketch_ends: Option<Uint32Array>,
}

/// Outcome of one batch: every sample is exactly one of aggregated, late or rejected.
#[napi(object, object_from_js = false)]
pub struct IngestResult {
    pub aggregated: u32,
    pub late: u32,
    pub rejected: u32,
    /// Batch positions of late samples, ascending.
    pub late_indexes: Uint32Array,
    /// Batch positions of rejected samples, ascending.
    pub rejected_indexes: Uint32Array,
    /// Reason per rejected sample, parallel to rejectedIndexes; the lowest
    /// applicable code is reported:
    /// 1 = value not finite,
    /// 2 = timestamp not an integer in [minEventTimeMs, 2^53),
    /// 3 = keyIndex outside keys,
    /// 4 = empty series key,
    /// 5 = series key longer than maxKeyBytes UTF-8 bytes,
    /// 6 = timestamp > maxEventTime (from the future),
    /// 7 = would exceed maxOpenWindows.
    pub rejected_reasons: Uint8Array,
    /// Windows closed by this batch; each window is returned exactly once.
    pub closed: PackedClosedWindows,
    /// Only with trackChanges: the state after this batch of every window the
    /// batch created or updated and that is still open, once each (windows
    /// this batch closed are only in closed). Undefined when tracking is off.
    pub changes: Option<WindowStates>,
}

/// Counters and footprint of one aggregator.
// `use_nullable` so an unset streamTime is `null` rather than a missing property.
#[napi(object, object_from_js = false, use_nullable = true)]
pub struct AggregatorStats {
    /// Open (series key, window) aggregates.
    pub open_windows: f64,
    /// Series keys currently held: those of open windows. A key is dropped
    /// (and its memory reused) once its last open window closes, so this is
    /// never more than openWindows.
    pub series_keys: f64,
    pub late_total: f64,
    pub aggregated_total: f64,
    pub rejected_total: f64,
    /// Rejected samples by reason code: rejectedByReason[code] for codes 1-7
    /// (see IngestResult.rejectedReasons); length 8, entry 0 is always 0. The
    /// entries add up to rejectedTotal.
    pub rejected_by_reason: Float64Array,
    /// Estimate of native heap bytes held.
    pub bytes_held: f64,
    /// Maximum accepted event time so far, or null before the first one.
    pub stream_time: Option<f64>,
}

/// Samples as columns (the late or rejected samples of a decoded batch).
#[napi(object, object_from_js = false)]
pub struct SampleRows {
    pub series_keys: Vec<String>,
    /// Event time, epoch ms.
    pub event_times: Float64Array,
    pub values: Float64Array,
}

/// Outcome of ingestAvro: how each message decoded, and the ingest result of
/// the samples of the messages that did, in message order.
#[napi(object, object_from_js = false)]
pub struct AvroIngestResult {
    /// Samples decoded per message, in input order (0 for a refused message);
    /// result indexes count samples in this order.
    pub samples_per_message: Uint32Array,
    /// Source id per message ("" for a refused message).
    pub source_ids: Vec<String>,
    /// Indexes of the messages that could not be decoded, ascending; none of
    /// their samples was ingested.
    pub failed_messages: Uint32Array,
    /// Parallel to failedMessages: "malformed" or "too-many-samples".
    pub failure_kinds: Vec<String>,
    /// Parallel to failedMessages: what is wrong, with the byte position.
    pub failure_reasons: Vec<String>,
    pub result: IngestResult,
    /// The samples at result.lateIndexes.
    pub late_samples: SampleRows,
    /// The samples at result.rejectedIndexes.
    pub rejected_samples: SampleRows,
}

/// Results as Kafka records for the output topic: one run of records per
/// output partition.
#[napi(object, object_from_js = false)]
pub struct OutputRecords {
    /// Each run's output partition, ascending.
    pub partitions: Uint32Array,
    /// Records in each run.
    pub counts: Uint32Array,
    /// Where each run ends in bytes: run i is bytes[ends[i - 1] (0 for i = 0), ends[i]).
    pub ends: Uint32Array,
    /// Kafka record format v2 bodies (attributes 0, timestamp delta 0, no
    /// headers), offset deltas from 0 in each run.
    pub bytes: Buffer,
}

/// The results of closed windows (ClosedWindows one after the other) as
/// records keyed by series key, each on the partition (of `partitions`)
/// kafkajs' DefaultPartitioner would pick, in row order within a partition.
/// Values are Avro: window-aggregate.avsc; with `quantiles` (the quantiles the
/// aggregator was configured with) window-aggregate-quantiles.avsc. Throws
/// (code InvalidArg) on columns of unequal lengths or no partitions.
#[napi]
pub fn encode_results(
    closed: Vec<ClosedWindows>,
    partitions: u32,
    quantiles: Option<Vec<f64>>,
) -> Result<OutputRecords> {
    let invalid = |msg: String| map_error(window::Error::InvalidInput(msg));
    if partitions == 0 {
        return Err(invalid("an output topic has at least one partition".into()));
    }
    let asked = quantiles.as_deref();
    let k = asked.map_or(0, <[f64]>::len);
    for c in &closed {
        let n = c.series_keys.len();
        let columns = [
            &c.window_start,
            &c.window_end,
            &c.count,
            &c.sum,
            &c.mean,
            &c.min,
            &c.max,
        ];
        if columns.iter().any(|col| col.len() != n) || (k > 0 && c.quantiles.len() != n * k) {
            return Err(invalid(format!(
                "closed windows' columns must all have {n} rows (quantiles {n} x {k})"
            )));
        }
    }
    let results = closed.iter().flat_map(|c| {
        (0..c.series_keys.len()).map(move |i| records::WindowResult {
            series_key: &c.series_keys[i],
            window_start: c.window_start[i],
            window_end: c.window_end[i],
            count: c.count[i],
            sum: c.sum[i],
            mean: c.mean[i],
            min: c.min[i],
            max: c.max[i],
            quantiles: asked.map(|q| (q, &c.quantiles[i * k..(i + 1) * k])),
        })
    });
    let runs = records::result_records(results, partitions);
    let total: usize = runs.iter().map(|r| r.bytes.len()).sum();
    let mut bytes = Vec::with_capacity(total);
    let mut ends = Vec::with_capacity(runs.len());
    for run in &runs {
        bytes.extend_from_slice(&run.bytes);
        ends.push(u32::try_from(bytes.len()).map_err(|_| invalid("over 4 GiB of results".into()))?);
    }
    Ok(OutputRecords {
        partitions: Uint32Array::new(runs.iter().map(|r| r.partition).collect()),
        counts: Uint32Array::new(runs.iter().map(|r| r.count).collect()),
        ends: Uint32Array::new(ends),
        bytes: bytes.into(),
    })
}

/// Windows that closed: their start and series key (a ClosedWindows, or a part
/// of one, will do).
#[napi(object, object_to_js = false)]
pub struct ClosedKeys {
    pub series_keys: Vec<String>,
    pub window_start: Float64Array,
}

/// The changelog records of one partition, as one run in OutputRecords: an
/// upsert per row of `changes` (WindowStates one after the other; format in
/// consumer/changelog.ts), then a tombstone per closed window. Throws (code InvalidArg) on columns of
/// unequal lengths or sketch ends out of order.
#[napi]
pub fn encode_changelog(
    changes: Vec<WindowStates>,
    closed: Vec<ClosedKeys>,
    partition: u32,
) -> Result<OutputRecords> {
    let invalid = |msg: String| map_error(window::Error::InvalidInput(msg));
    let views: Vec<_> = changes.iter().map(WindowStates::view).collect();
    for v in &views {
        v.check_shape().map_err(invalid)?;
    }
    if closed
        .iter()
        .any(|c| c.series_keys.len() != c.window_start.len())
    {
        return Err(invalid(
            "closed keys' columns must have equal lengths".into(),
        ));
    }
    let states = views.iter().flat_map(|v| {
        (0..v.series_keys.len()).map(move |i| records::WindowState {
            series_key: &v.series_keys[i],
            window_start: v.window_start[i],
            count: v.count[i],
            sum: v.sum[i],
            compensation: v.compensation[i],
            min: v.min[i],
            max: v.max[i],
            first_offset: v.first_offset[i],
            sketch: v.sketch(i),
        })
    });
    let tombstones = closed.iter().flat_map(|c| {
        c.window_start
            .iter()
            .zip(&c.series_keys)
            .map(|(start, key)| (*start, key.as_str()))
    });
    let run = records::changelog_records(states, tombstones, partition);
    let end =
        u32::try_from(run.bytes.len()).map_err(|_| invalid("over 4 GiB of changelog".into()))?;
    Ok(OutputRecords {
        partitions: Uint32Array::new(vec![partition]),
        counts: Uint32Array::new(vec![run.count]),
        ends: Uint32Array::new(vec![end]),
        bytes: run.bytes.into(),
    })
}

impl From<CoreClosed> for PackedClosedWindows {
    fn from(c: CoreClosed) -> Self {
        let keys = c.series_keys.utf16_segments(KEY_SEGMENT_UNITS);
        // A key is at most maxKeyBytes long, so its end in a segment fits a u32.
        let key_ends = keys.ends.iter().map(|&end| end as u32).collect();
        Self {
            key_text: keys.segments.iter().map(|&text| text.to_owned()).collect(),
            key_ends: Uint32Array::new(key_ends),
            key_segment_rows: Uint32Array::new(keys.rows),
            window_start: Float64Array::new(c.window_start),
            window_end: Float64Array::new(c.window_end),
            count: Float64Array::new(c.count),
            sum: Float64Array::new(c.sum),
            mean: Float64Array::new(c.mean),
            min: Float64Array::new(c.min),
            max: Float64Array::new(c.max),
            quantiles: Float64Array::new(c.quantiles),
        }
    }
}

impl From<CoreStates> for WindowStates {
    fn from(s: CoreStates) -> Self {
        Self {
            series_keys: s.series_keys,
            window_start: Float64Array::new(s.window_start),
            count: Float64Array::new(s.count),
            sum: Float64Array::new(s.sum),
            compensation: Float64Array::new(s.compensation),
            min: Float64Array::new(s.min),
            max: Float64Array::new(s.max),
            first_offset: Float64Array::new(s.first_offset),
            sketch_bytes: (!s.sketch_ends.is_empty()).then(|| Uint8Array::new(s.sketch_bytes)),
            sketch_ends: (!s.sketch_ends.is_empty()).then(|| Uint32Array::new(s.sketch_ends)),
        }
    }
}

impl WindowStates {
    /// Borrows the columns (typed arrays from JS are not copied).
    fn view(&self) -> WindowStatesView<'_, String> {
        WindowStatesView {
            series_keys: &self.series_keys,
            window_start: &self.window_start,
            count: &self.count,
            sum: &self.sum,
            compensation: &self.compensation,
            min: &self.min,
            max: &self.max,
            first_offset: &self.first_offset,
            sketch_bytes: self.sketch_bytes.as_deref().unwrap_or(&[]),
            sketch_ends: self.sketch_ends.as_deref().unwrap_or(&[]),
        }
    }
}

impl From<IngestOutcome> for IngestResult {
    fn from(o: IngestOutcome) -> Self {
        // The core caps batches at u32::MAX samples, so the counts fit.
        Self {
            aggregated: o.aggregated,
            late: o.late_indexes.len() as u32,
            rejected: o.rejected_indexes.len() as u32,
            late_indexes: Uint32Array::new(o.late_indexes),
            rejected_indexes: Uint32Array::new(o.rejected_indexes),
            rejected_reasons: Uint8Array::new(o.rejected_reasons),
            closed: o.closed.into(),
            changes: o.changes.map(Into::into),
        }
    }
}

/// Event-time windowed aggregation (count, sum, min, max, mean per series key
/// and window) for one Kafka partition. State lives in native memory.
#[napi]
pub struct PartitionAggregator {
    /// `None` once freed.
    inner: Option<Aggregator>,
    /// The last batch's outcome until takeResult(), when it holds more than
    /// an aggregated count (see ingestDeferred).
    pending: Option<IngestOutcome>,
}

#[napi]
impl PartitionAggregator {
    /// Throws (code InvalidArg) if the config is invalid; the message names the field.
    #[napi(constructor)]
    pub fn new(config: AggregatorConfig) -> Result<Self> {
        let spec = WindowSpec::new(config.size_ms, config.advance_ms, config.grace_ms)
            .map_err(map_error)?;
        let stream_time = config
            .stream_time
            .map(|t| window::whole_ms("streamTime", t, 0, "an integer >= 0"))
            .transpose()
            .map_err(map_error)?;
        let limits = Limits::new(
            &spec,
            config.min_event_time_ms,
            config.max_key_bytes,
            match config.max_open_windows {
                Some(Either::A(n)) => Some(n),
                Some(Either::B(Null)) | None => None,
            },
        )
        .map_err(map_error)?;
        let quantiles = match config.quantiles.as_deref() {
            None | Some([]) => None,
            Some(qs) => Some(
                Quantiles::new(qs, config.quantile_accuracy.unwrap_or(0.01)).map_err(map_error)?,
            ),
        };
        let aggregator = Aggregator::restored(spec, stream_time)
            .with_quantiles(quantiles)
            .with_limits(limits)
            .with_change_tracking(config.track_changes.unwrap_or(false))
            .with_coalesced_changes(config.coalesce_changes.unwrap_or(false));
        Ok(Self {
            inner: Some(aggregator),
            pending: None,
        })
    }

    /// Processes one batch in order, then closes every window with
    /// end <= streamTime - graceMs. Returns whether the batch's IngestResult
    /// holds more than its aggregated count (a late or rejected sample, a
    /// closed window, or changes when trackChanges is on): if so,
    /// takeResult() returns it; if not, every sample was aggregated and
    /// nothing closed. A result object costs about 5 µs to build, so the
    /// common batch skips it; consumer/native.ts's ingest() returns the
    /// IngestResult either way.
    ///
    /// Sample i is (keys[keyIndex[i]], timestamps[i] in epoch ms, values[i]),
    /// read from input offset offsets[i]; keys is the batch's table of distinct
    /// series keys. keyIndex, timestamps, values and offsets must have equal
    /// length (else throws, code InvalidArg).
    ///
    /// Every sample is exactly one of aggregated, late or rejected. A sample
    /// is rejected with the lowest code that applies, checked in order:
    /// 1 value not finite; 2 timestamp not an integer in
    /// [minEventTimeMs, 2^53); 3 keyIndex outside keys; 4 empty series key;
    /// 5 series key longer than maxKeyBytes UTF-8 bytes; 6 timestamp greater
    /// than maxEventTime (e.g. wall clock + allowed skew; null or omitted: no
    /// bound; NaN throws InvalidArg). Codes 4 and 5 are decided once per entry
    /// of keys. A sample rejected with codes 1-6 changes nothing: a sample from
    /// the future does not move streamTime.
    ///
    /// Otherwise: streamTime = max(streamTime, ts), then
    /// closeTime = streamTime - graceMs. The sample's open windows are those
    /// with end > closeTime. It is late iff it has none, i.e. iff its newest
    /// window (start ts - ts % advanceMs) has end <= closeTime.
    /// Else, with maxOpenWindows set, if the sample needs new aggregates (its
    /// open windows that don't hold its key yet) and the open aggregates (not
    /// counting windows already due, end <= closeTime) plus the new ones would
    /// exceed maxOpenWindows, it is rejected whole with code 7: added to no
    /// window (not even existing ones), though its timestamp did move
    /// streamTime (so windows keep closing and the limit cannot stall the
    /// partition). Else it is aggregated: added to each of its open windows.
    /// So stats.openWindows never exceeds maxOpenWindows (unless restore()
    /// loaded more), samples for existing windows always aggregate, and (for
    /// the same maxEventTime) the outcome of each sample does not depend on how
    /// the samples are split into batches.
    #[napi(
        ts_args_type = "keys: Array<string>, keyIndex: Uint32Array, timestamps: Float64Array, \
                        values: Float64Array, offsets: Float64Array, maxEventTime?: number | null"
    )]
    pub fn ingest_deferred(
        &mut self,
        keys: Vec<String>,
        key_index: &[u32],
        timestamps: &[f64],
        values: &[f64],
        offsets: &[f64],
        max_event_time: Option<f64>,
    ) -> Result<bool> {
        let outcome = self
            .live_mut()?
            .ingest(
                &keys,
                key_index,
                timestamps,
                values,
                offsets,
                max_event_time,
            )
            .map_err(map_error)?;
        Ok(self.defer(outcome))
    }

    /// Interns series keys and pins them: each keeps the returned id until
    /// unpinKeys, so batches can name keys by id (ingestIds) instead of
    /// carrying their text across the boundary each time. Pins count: a key
    /// pinned twice needs two unpins. Throws (code InvalidArg, nothing
    /// pinned) if a key is empty or longer than maxKeyBytes UTF-8 bytes.
    #[napi]
    pub fn pin_keys(&mut self, keys: Vec<String>) -> Result<Uint32Array> {
        let ids = self.live_mut()?.pin_keys(&keys).map_err(map_error)?;
        Ok(Uint32Array::new(ids))
    }

    /// Drops one pin of each id; a key with no pin left and no open window
    /// is released (its id may be reused). Throws (code InvalidArg, nothing
    /// unpinned) if an id is given more times than it is pinned.
    #[napi]
    pub fn unpin_keys(&mut self, ids: &[u32]) -> Result<()> {
        self.live_mut()?.unpin_keys(ids).map_err(map_error)
    }

    /// ingestDeferred() with samples naming their series keys by pinned id
    /// (see pinKeys): sample i is (keyIds[i], timestamps[i], values[i]) read
    /// from offsets[i]. An id that is not pinned is rejected with code 3;
    /// codes 4 and 5 were checked by pinKeys. Otherwise exactly as
    /// ingestDeferred().
    #[napi(
        ts_args_type = "keyIds: Uint32Array, timestamps: Float64Array, values: Float64Array, \
                        offsets: Float64Array, maxEventTime?: number | null"
    )]
    pub fn ingest_ids_deferred(
        &mut self,
        key_ids: &[u32],
        timestamps: &[f64],
        values: &[f64],
        offsets: &[f64],
        max_event_time: Option<f64>,
    ) -> Result<bool> {
        let outcome = self
            .live_mut()?
            .ingest_ids(key_ids, timestamps, values, offsets, max_event_time)
            .map_err(map_error)?;
        Ok(self.defer(outcome))
    }

    /// The result of the last ingestDeferred or ingestIdsDeferred that
    /// returned true; throws (code GenericFailure) if there is none.
    #[napi]
    pub fn take_result(&mut self) -> Result<IngestResult> {
        self.pending.take().map(Into::into).ok_or_else(|| {
            Error::new(
                Status::GenericFailure,
                "no result to take: the last ingest aggregated every sample and closed nothing",
            )
        })
    }

    /// Decodes Avro TelemetryBatch values and ingests their samples, in one
    /// call and without a JS value per sample (see ingest() for the rules).
    ///
    /// Message i is values[bounds[i]..bounds[i + 1]], read from input offset
    /// offsets[i]; its Avro body starts bodyStarts[i] bytes in (5 after a
    /// Confluent header) and is walked with program node roots[i], compiled
    /// from its writer schema by consumer/native-decode.ts. A message that is
    /// not valid for its writer schema, or holds more than maxSamples
    /// samples, is refused whole (failedMessages) and the others are
    /// ingested. Throws (code InvalidArg) on a bad program or mismatched
    /// message columns. (consumer/native.ts wraps it as ingestAvro, with the keys split.)
    #[napi(
        js_name = "ingestAvroPacked",
        ts_args_type = "program: Uint32Array, values: Uint8Array, bounds: Uint32Array, \
                        bodyStarts: Uint32Array, roots: Uint32Array, offsets: Float64Array, \
                        maxSamples: number, maxEventTime?: number | null"
    )]
    #[allow(clippy::too_many_arguments)]
    pub fn ingest_avro(
        &mut self,
        program: &[u32],
        values: &[u8],
        bounds: &[u32],
        body_starts: &[u32],
        roots: &[u32],
        offsets: &[f64],
        max_samples: f64,
        max_event_time: Option<f64>,
    ) -> Result<AvroIngestResult> {
        let aggregator = self.live_mut()?;
        let invalid = |m: String| map_error(window::Error::InvalidInput(m));
        let program = avro::Program::parse(program).map_err(invalid)?;
        let n = roots.len();
        if bounds.len() != n + 1 || body_starts.len() != n || offsets.len() != n {
            return Err(invalid(format!(
                "bounds must have one more entry than roots, bodyStarts and offsets \
                 (got bounds {}, roots {n}, bodyStarts {}, offsets {})",
                bounds.len(),
                body_starts.len(),
                offsets.len()
            )));
        }
        let mut samples = avro::Samples::default();
        let mut per_message = Vec::with_capacity(n);
        let mut sample_offsets = Vec::new();
        let mut source_ids = Vec::with_capacity(n);
        let (mut failed, mut kinds, mut reasons) = (vec![], vec![], vec![]);
        for i in 0..n {
            let (start, end) = (bounds[i] as usize, bounds[i + 1] as usize);
            let body = body_starts[i] as usize;
            if start > end || end > values.len() || body > end - start || !program.has(roots[i]) {
                return Err(invalid(format!(
                    "message {i}: bounds {start}..{end} of {} bytes, body at {body}, root {}",
                    values.len(),
                    roots[i]
                )));
            }
            let value = &values[start..end];
            match avro::decode_message(
                &program,
                roots[i],
                value,
                body,
                max_samples as u64,
                &mut samples,
            ) {
                Ok(decoded) => {
                    per_message.push(decoded.samples as u32);
                    sample_offsets.resize(samples.len(), offsets[i]);
                    source_ids.push(decoded.source_id.to_owned());
                }
                Err(error) => {
                    per_message.push(0);
                    source_ids.push(String::new());
                    failed.push(i as u32);
                    kinds.push(
                        match error {
                            avro::DecodeError::Malformed(_) => "malformed",
                            avro::DecodeError::TooManySamples(_) => "too-many-samples",
                        }
                        .to_owned(),
                    );
                    reasons.push(error.to_string());
                }
            }
        }
        // Each sample's key is its own entry of the batch's key table: the core hashes each
        // once and resolves them all with their lookups overlapped, which costs less than
        // finding the distinct keys first (with many series, most of a batch's keys are).
        let key_index: Vec<u32> = (0..samples.keys.len() as u32).collect();
        let outcome = aggregator
            .ingest(
                &samples.keys,
                &key_index,
                &samples.timestamps,
                &samples.values,
                &sample_offsets,
                max_event_time,
            )
            .map_err(map_error)?;
        let rows = |indexes: &[u32]| SampleRows {
            series_keys: indexes
                .iter()
                .map(|&i| samples.keys[i as usize].to_owned())
                .collect(),
            event_times: Float64Array::new(
                indexes
                    .iter()
                    .map(|&i| samples.timestamps[i as usize])
                    .collect(),
            ),
            values: Float64Array::new(
                indexes
                    .iter()
                    .map(|&i| samples.values[i as usize])
                    .collect(),
            ),
        };
        let late_samples = rows(&outcome.late_indexes);
        let rejected_samples = rows(&outcome.rejected_indexes);
        Ok(AvroIngestResult {
            samples_per_message: Uint32Array::new(per_message),
            source_ids,
            failed_messages: Uint32Array::new(failed),
            failure_kinds: kinds,
            failure_reasons: reasons,
            result: outcome.into(),
            late_samples,
            rejected_samples,
        })
    }

    /// With coalesceChanges: the state of every window created or updated
    /// since the last call (or the restore) that is still open, ordered like
    /// IngestResult.changes; forgets them. Empty otherwise. Upserting them and
    /// deleting the windows closed since the last call keeps a changelog
    /// equal to snapshot().
    #[napi]
    pub fn take_changes(&mut self) -> Result<WindowStates> {
        Ok(self.live_mut()?.take_changes().into())
    }

    /// Moves streamTime forward to the given time without input (idle close)
    /// and returns the windows then due (end <= streamTime - graceMs), as a
    /// batch would. A time not above streamTime, or an aggregator that has
    /// seen no sample, changes nothing. Throws (code InvalidArg) unless it is
    /// an integer in [0, 2^53).
    /// (consumer/native.ts wraps it as advanceStreamTime, with the keys split.)
    #[napi(js_name = "advanceStreamTimePacked")]
    pub fn advance_stream_time(&mut self, stream_time: f64) -> Result<PackedClosedWindows> {
        let to =
            window::whole_ms("streamTime", stream_time, 0, "an integer >= 0").map_err(map_error)?;
        Ok(self.live_mut()?.advance_stream_time(to).into())
    }

    /// The state of every open window, ordered by windowStart, then series key.
    #[napi]
    pub fn snapshot(&self) -> Result<WindowStates> {
        Ok(self.live()?.snapshot().into())
    }

    /// Loads open windows (a snapshot(), or a changelog compacted from
    /// IngestResult.changes and closed) and the stream time they were taken at
    /// into this aggregator, which must be fresh: no open windows and no batch
    /// ingested (a config streamTime is fine, and replaced). Rows may come in
    /// any order. Afterwards the aggregator behaves exactly like the one the
    /// states came from: same lateness decisions, same closed windows bit for
    /// bit, same lowWatermark and stats.openWindows (totals restart at 0).
    /// Every row is loaded even beyond maxOpenWindows (e.g. after lowering
    /// it): new aggregates are then refused until enough windows close.
    ///
    /// Throws (code InvalidArg, nothing loaded) if the aggregator is not fresh,
    /// columns have unequal lengths, streamTime is not null or an integer in
    /// [0, 2^53), or is null while windows are given, or a row is invalid:
    /// windowStart not an integer multiple of advanceMs in
    /// (-sizeMs, streamTime], a window already closed
    /// (windowStart + sizeMs <= streamTime - graceMs), count not an integer
    /// >= 1, firstOffset not an integer in [0, 2^53), min/max not finite with
    /// min <= max, or a (seriesKey, windowStart) given twice.
    #[napi(ts_args_type = "states: WindowStates, streamTime: number | null")]
    pub fn restore(&mut self, states: WindowStates, stream_time: Option<f64>) -> Result<()> {
        self.live_mut()?
            .restore(states.view(), stream_time)
            .map_err(map_error)
    }

    /// Counters and footprint, computed on each access.
    #[napi(getter)]
    pub fn stats(&self) -> Result<AggregatorStats> {
        let s = self.live()?.stats();
        Ok(AggregatorStats {
            open_windows: s.open_windows as f64,
            series_keys: s.series_keys as f64,
            late_total: s.late_total as f64,
            aggregated_total: s.aggregated_total as f64,
            rejected_total: s.rejected_total as f64,
            rejected_by_reason: Float64Array::new(
                s.rejected_by_reason.iter().map(|&n| n as f64).collect(),
            ),
            bytes_held: s.bytes_held as f64,
            stream_time: s.stream_time.map(|t| t as f64),
        })
    }

    /// Maximum accepted event time so far (epoch ms), or null before the first one.
    #[napi(getter)]
    pub fn stream_time(&self) -> Result<Option<f64>> {
        Ok(self.live()?.stream_time().map(|t| t as f64))
    }

    /// The lowest input offset held in an open window, or null when none is
    /// open. Committing it (with the stream time) lets a new owner rebuild
    /// the open windows by replaying from there.
    #[napi(getter)]
    pub fn low_watermark(&self) -> Result<Option<f64>> {
        Ok(self.live()?.low_watermark().map(|o| o as f64))
    }

    /// The stream time at which the oldest open window closes (its end plus
    /// graceMs), or null when none is open: an idle advance to it or beyond
    /// publishes something.
    #[napi(getter)]
    pub fn next_close_time(&self) -> Result<Option<f64>> {
        Ok(self.live()?.next_close_time().map(|t| t as f64))
    }

    /// Drops all state now instead of waiting for garbage collection; any later
    /// call except free (a no-op) throws "aggregator has been freed".
    #[napi]
    pub fn free(&mut self) {
        self.inner = None;
        self.pending = None;
    }

    /// Keeps `outcome` for takeResult() unless every sample was aggregated and
    /// nothing closed or changed; returns whether it did. Building the result
    /// object costs about 5 µs (a dozen typed arrays), more than ingesting a
    /// 100-sample batch, so the common batch skips it.
    fn defer(&mut self, outcome: IngestOutcome) -> bool {
        let plain = outcome.late_indexes.is_empty()
            && outcome.rejected_indexes.is_empty()
            && outcome.closed.series_keys.is_empty()
            && outcome.changes.is_none();
        self.pending = (!plain).then_some(outcome);
        !plain
    }

    fn live(&self) -> Result<&Aggregator> {
        self.inner
            .as_ref()
            .ok_or_else(|| map_error(window::Error::Freed))
    }

    fn live_mut(&mut self) -> Result<&mut Aggregator> {
        self.inner
            .as_mut()
            .ok_or_else(|| map_error(window::Error::Freed))
    }
}
