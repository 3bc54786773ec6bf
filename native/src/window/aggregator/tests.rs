//! Tests of the whole [`Aggregator`]: window rules, change tracking, restore, limits and pinned
//! keys; the property tests are in `hostile` and `quantiles`.

use super::*;
use crate::window::interner::FREE;
use crate::window::test_support::{limits, spec};

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
    let first = agg.stats().aggregated_total + agg.stats().late_total + agg.stats().rejected_total;
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
    // The low watermark is the lowest first offset among the open rows.
    let lowest = agg.snapshot().first_offset.into_iter().reduce(f64::min);
    assert_eq!(agg.low_watermark().map(|o| o as f64), lowest);
    let accounted = out.aggregated as usize + out.late_indexes.len() + out.rejected_indexes.len();
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
            assert_eq!(keys.get(name.as_str()), Some(id as u32));
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
                &closed.series_keys[i],
                closed.window_start[i],
                closed.window_end[i],
                closed.count[i],
                closed.sum[i],
            )
        })
        .collect()
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

/// Closing follows the key order the interner keeps across windows (see `closing_order`), so
/// that order must follow keys that come, go, and hand their ids to keys that sort elsewhere.
#[test]
fn closed_keys_stay_in_key_order_as_keys_come_and_go() {
    let mut rng = Rng(11);
    let pool: Vec<String> = (0..24)
        .map(|k| format!("{}-{k}", (b'a' + (k * 7 % 26) as u8) as char))
        .collect();
    let mut agg = Aggregator::new(spec(10.0, None, None));
    let mut expected: Vec<String> = Vec::new();
    for w in 0..200u32 {
        // Most of the pool in one window, a different part each time; the same key twice.
        let picked: Vec<&str> = pool
            .iter()
            .filter(|_| rng.below(3) > 0)
            .map(String::as_str)
            .collect();
        let samples: Vec<(u32, f64, f64)> = (0..picked.len() as u32)
            .chain([0])
            .map(|k| (k, f64::from(w) * 10.0 + 1.0, 1.0))
            .collect();
        let out = ingest(&mut agg, &picked, &samples);
        let closed: Vec<&str> = out.closed.series_keys.iter().collect();
        assert_eq!(closed, expected, "window {}", w.saturating_sub(1));
        expected = picked.iter().map(|k| k.to_string()).collect();
        expected.sort();
        expected.dedup();
    }
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
    let mut agg = Aggregator::new(spec(10.0, Some(5.0), Some(2.0))).with_coalesced_changes(true);
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
            out.closed.series_keys[i].to_owned(),
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
                    out.closed.series_keys[i].to_owned(),
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
mod hostile;
mod tumbling;

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
    for (seed, advance, max_open) in [(1, 10.0, None), (2, 5.0, Some(40.0)), (3, 20.0, Some(5.0))] {
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

/// Quantiles per window against exact ones, across hopping windows,
/// restores from a snapshot, key renumbering and idle advances.
mod quantiles;
