use super::*;
use proptest::prelude::*;

const KEYS: [&str; 3] = ["a", "b", "c"];

fn aggregator(accuracy: f64) -> Aggregator {
    let quantiles =
        Quantiles::new(&[0.0, 0.01, 0.25, 0.5, 0.9, 0.99, 1.0], accuracy).expect("valid quantiles");
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
        let key = (
            closed.series_keys[i].to_owned(),
            closed.window_start[i] as i64,
        );
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
