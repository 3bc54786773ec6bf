//! The tumbling loop ([`Aggregator::ingest_tumbling`]) against the general one, on batches made
//! for it: long, with few keys, mostly in order, some samples out of order across window ends,
//! some late or invalid, so that a batch moves between windows with additions pending.
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
    batches: Vec<Batch>,
}

#[derive(Debug, Clone, Copy)]
enum Tracking {
    Off,
    PerBatch,
    Coalesced,
}

const KEYS: [&str; 6] = ["a", "b", "c", "d", "", "e"];

fn case() -> impl Strategy<Value = Case> {
    let key = prop_oneof![40 => 0u32..4, 2 => Just(4u32), 1 => Just(5u32), 1 => Just(9u32)];
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
        .prop_map(|(size, grace, tracking, batches)| {
            let mut clock = 0i64;
            let batches = batches
                .into_iter()
                .map(|(samples, max)| {
                    let samples = samples
                        .into_iter()
                        .enumerate()
                        .map(|(i, (key, lag, value))| {
                            // The clock moves about 1 ms every 4 samples.
                            let now = clock + i as i64 / 4;
                            let ts = if lag < 0 {
                                0.5
                            } else {
                                (now - lag).max(0) as f64
                            };
                            (key, ts, value)
                        })
                        .collect::<Vec<_>>();
                    let max = max.map(|m| (clock + m) as f64);
                    clock += samples.len() as i64 / 4;
                    (samples, max)
                })
                .collect();
            Case {
                size,
                grace,
                tracking,
                batches,
            }
        })
}

fn aggregator(case: &Case) -> Aggregator {
    let spec = spec(case.size as f64, None, Some(case.grace as f64));
    let agg = Aggregator::new(spec).with_limits(limits(&spec, None, Some(4.0), None).unwrap());
    match case.tracking {
        Tracking::Off => agg,
        Tracking::PerBatch => agg.with_change_tracking(true),
        Tracking::Coalesced => agg.with_coalesced_changes(true),
    }
}

fn check(case: &Case) {
    let mut tumbling = aggregator(case);
    let mut general = aggregator(case);
    general.general_loop_only = true;
    for (b, (samples, max)) in case.batches.iter().enumerate() {
        let fast = ingest_until(&mut tumbling, &KEYS, samples, *max);
        let slow = ingest_until(&mut general, &KEYS, samples, *max);
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
