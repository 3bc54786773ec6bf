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
fn input_reason(case: &Case, (key, ts, value): (u32, f64, f64), max: Option<f64>) -> Option<u8> {
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

/// Closed windows, every number as its bits (NaN compares equal to itself).
pub(super) fn closed_bits(closed: &ClosedWindows) -> Vec<(String, [u64; 7])> {
    (0..closed.len())
        .map(|i| {
            let row = [
                closed.window_start[i],
                closed.window_end[i],
                closed.count[i],
                closed.sum[i],
                closed.mean[i],
                closed.min[i],
                closed.max[i],
            ];
            (closed.series_keys[i].to_owned(), row.map(f64::to_bits))
        })
        .collect()
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
    // The same samples through the general loop only (the other takes the tumbling one where it
    // can): bit for bit the same outcomes and states.
    let mut general = Aggregator::new(spec)
        .with_limits(limits)
        .with_change_tracking(case.track_changes);
    general.general_loop_only = true;
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
        let by_general = ingest_until(&mut general, &case.keys, samples, *max_event_time);
        assert_eq!(classify(&by_general, samples.len()), classes, "batch {b}");
        assert_eq!(
            closed_bits(&by_general.closed),
            closed_bits(&out.closed),
            "batch {b}"
        );
        assert_eq!(
            by_general.changes.as_ref().map(mirror_of),
            out.changes.as_ref().map(mirror_of),
            "batch {b}"
        );
        assert_eq!(mirror_of(&general.snapshot()), mirror_of(&agg.snapshot()));
        assert_eq!(general.stats(), agg.stats(), "batch {b}");

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
        let open_keys: std::collections::BTreeSet<&String> = snapshot.series_keys.iter().collect();
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
