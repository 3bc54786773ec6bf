//! The tumbling loop ([`Aggregator::ingest_tumbling`]) against the general one, on batches made
//! for it: long, with few keys, mostly in order, some samples out of order across window ends,
//! some late or invalid, so that a batch moves between windows with additions pending. Wide
//! cases have enough keys for a window's dense index, and batches whose samples are all valid:
//! those take the runs of [`Window::add_run`].
use super::hostile::closed_bits;
use super::*;
use proptest::prelude::*;

/// A batch: (key, event time, value) samples and its `max_event_time`.
type Batch = (Vec<(u32, f64, f64)>, Option<f64>);

#[derive(Debug, Clone)]
struct Case {
    size: i64,
    grace: i64,
    tracking: Tracking,
    /// Samples name their keys by pinned id ([`Aggregator::ingest_ids`]) instead of a key table.
    by_id: bool,
    batches: Vec<Batch>,
}

#[derive(Debug, Clone, Copy)]
enum Tracking {
    Off,
    PerBatch,
    Coalesced,
}

/// Keys `0..VALID_KEYS` are valid; then an empty one and one too long (`maxKeyBytes` 4); a
/// sample naming key 99 names no key (by id: an unpinned one).
const VALID_KEYS: u32 = 40;
const EMPTY_KEY: u32 = VALID_KEYS;
const LONG_KEY: u32 = VALID_KEYS + 1;
const NO_KEY: u32 = 99;

fn keys() -> Vec<String> {
    (0..VALID_KEYS)
        .map(|k| format!("k{k}"))
        .chain([String::new(), "long!".to_owned()])
        .collect()
}

fn case() -> impl Strategy<Value = Case> {
    (any::<bool>(), any::<bool>()).prop_flat_map(|(wide, by_id)| case_of(wide, by_id))
}

/// `wide`: 40 keys instead of 4, and half the batches all valid.
fn case_of(wide: bool, by_id: bool) -> impl Strategy<Value = Case> {
    let valid = if wide { VALID_KEYS } else { 4 };
    let per_ms = if wide { 16 } else { 4 };
    let key = prop_oneof![
        40 => 0..valid,
        2 => Just(EMPTY_KEY),
        1 => Just(LONG_KEY),
        1 => Just(NO_KEY)
    ];
    // Behind the batch's clock by up to 12 ms, mostly a little; now and then invalid.
    let lag = prop_oneof![30 => 0i64..3, 6 => 0i64..12, 1 => Just(-1)];
    let value = prop_oneof![
        40 => (-1000i32..1000).prop_map(|v| f64::from(v) / 8.0),
        1 => Just(f64::NAN),
        1 => Just(1e308),
        1 => Just(-1e308),
    ];
    let batch = (
        proptest::collection::vec((key, lag, value), 0..300),
        proptest::option::weighted(0.2, 0i64..40),
        proptest::bool::weighted(if wide { 0.5 } else { 0.0 }),
    );
    (
        1i64..=8,
        0i64..=6,
        prop_oneof![
            Just(Tracking::Off),
            Just(Tracking::PerBatch),
            Just(Tracking::Coalesced)
        ],
        proptest::collection::vec(batch, 1..6),
    )
        .prop_map(move |(size, grace, tracking, batches)| {
            let mut clock = 0i64;
            let batches = batches
                .into_iter()
                .map(|(samples, max, all_valid)| {
                    let max = if all_valid { None } else { max };
                    let samples = samples
                        .into_iter()
                        .map(|(key, lag, value)| {
                            if all_valid {
                                // The same draw, made valid.
                                let value = if value.is_nan() { 0.5 } else { value };
                                (key % valid, lag.max(0), value)
                            } else {
                                (key, lag, value)
                            }
                        })
                        .enumerate()
                        .map(|(i, (key, lag, value))| {
                            // The clock moves about 1 ms every 4 samples (wide: every 16, so
                            // that windows hold more keys than a hashed index does).
                            let now = clock + i as i64 / per_ms;
                            let ts = if lag < 0 {
                                0.5
                            } else {
                                (now - lag).max(0) as f64
                            };
                            (key, ts, value)
                        })
                        .collect::<Vec<_>>();
                    let max = max.map(|m| (clock + m) as f64);
                    clock += samples.len() as i64 / per_ms;
                    (samples, max)
                })
                .collect();
            Case {
                size,
                grace,
                tracking,
                by_id,
                batches,
            }
        })
}

fn aggregator(case: &Case) -> Aggregator {
    let spec = spec(case.size as f64, None, Some(case.grace as f64));
    let agg = Aggregator::new(spec).with_limits(limits(&spec, None, Some(4.0), None).unwrap());
    let mut agg = match case.tracking {
        Tracking::Off => agg,
        Tracking::PerBatch => agg.with_change_tracking(true),
        Tracking::Coalesced => agg.with_coalesced_changes(true),
    };
    if case.by_id {
        let ids = agg.pin_keys(&keys()[..VALID_KEYS as usize]).unwrap();
        assert!(ids.iter().copied().eq(0..VALID_KEYS));
    }
    agg
}

/// Ingests `samples` by key table, or by pinned id (an invalid key is then an unpinned id).
fn ingest(
    agg: &mut Aggregator,
    by_id: bool,
    samples: &[(u32, f64, f64)],
    max: Option<f64>,
) -> IngestOutcome {
    if !by_id {
        return ingest_until(agg, &keys(), samples, max);
    }
    let ids: Vec<(u32, f64, f64)> = samples
        .iter()
        .map(|&(key, ts, value)| (key.min(NO_KEY), ts, value))
        .collect();
    let key_ids: Vec<u32> = ids.iter().map(|s| s.0).collect();
    let timestamps: Vec<f64> = ids.iter().map(|s| s.1).collect();
    let values: Vec<f64> = ids.iter().map(|s| s.2).collect();
    let first = agg.stats().aggregated_total + agg.stats().late_total + agg.stats().rejected_total;
    let offsets: Vec<f64> = (0..ids.len()).map(|i| (first + i as u64) as f64).collect();
    agg.ingest_ids(&key_ids, &timestamps, &values, &offsets, max)
        .expect("well-formed batch")
}

fn check(case: &Case) {
    let mut tumbling = aggregator(case);
    let mut general = aggregator(case);
    general.general_loop_only = true;
    for (b, (samples, max)) in case.batches.iter().enumerate() {
        let fast = ingest(&mut tumbling, case.by_id, samples, *max);
        let slow = ingest(&mut general, case.by_id, samples, *max);
        assert_eq!(fast.aggregated, slow.aggregated, "batch {b}");
        assert_eq!(fast.late_indexes, slow.late_indexes, "batch {b}");
        assert_eq!(fast.rejected_indexes, slow.rejected_indexes, "batch {b}");
        assert_eq!(fast.rejected_reasons, slow.rejected_reasons, "batch {b}");
        assert_eq!(
            closed_bits(&fast.closed),
            closed_bits(&slow.closed),
            "batch {b}"
        );
        assert_eq!(
            fast.changes.as_ref().map(mirror_of),
            slow.changes.as_ref().map(mirror_of),
            "batch {b}"
        );
        if b % 2 == 1 {
            assert_eq!(
                mirror_of(&tumbling.take_changes()),
                mirror_of(&general.take_changes()),
                "batch {b}"
            );
        }
        assert_eq!(
            mirror_of(&tumbling.snapshot()),
            mirror_of(&general.snapshot())
        );
        assert_eq!(tumbling.stats(), general.stats(), "batch {b}");
        assert_eq!(
            tumbling.low_watermark(),
            general.low_watermark(),
            "batch {b}"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    #[test]
    fn the_tumbling_loop_decides_and_adds_as_the_general_one(case in case()) {
        check(&case);
    }
}
