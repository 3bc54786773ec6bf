//! Throughput of the plain-Rust core, without Node: per-batch key tables
//! (`ingest`) against pinned key ids (`ingest_ids`). For profiling with perf:
//! `cargo build --release --example core_speed && perf record -g target/release/examples/core_speed`
//! (`KWA_QUANTILES=1`: with quantiles p50/p90/p99 at 1% on values over four decades;
//! `KWA_KEYS=1000000`: that many series, default 10k; `KWA_BATCH=1000`: samples
//! per batch, default 10k; `KWA_STEADY=1`: every series' window opened by an
//! untimed fill, then 10 samples per series within it, as
//! bench:core's steady-state rows; `KWA_PACKED=1`: key tables as `ingestAvro`
//! makes them, an entry per sample, the texts one after another in one buffer.)
use kwa_native::window::{Aggregator, Quantiles, WindowSpec};
use std::time::Instant;

fn main() {
    let keys_n: usize = std::env::var("KWA_KEYS").map_or(10_000, |k| k.parse().unwrap());
    let names: Vec<String> = (0..keys_n).map(|i| format!("series-{i:06}")).collect();
    let steady = std::env::var_os("KWA_STEADY").is_some();
    let n = if steady { 10 * keys_n } else { 10_000_000usize };
    // Steady: all in one window (T0 is 20 s into it; 30 s of event time), after the fill.
    let (t0, ms_per_sample) = if steady {
        (
            1_700_000_000_000f64 - 1_700_000_000_000f64 % 60_000.0 + 20_000.0,
            30_000.0 / n as f64,
        )
    } else {
        (1_700_000_000_000f64, 0.06)
    };
    let batch: usize = std::env::var("KWA_BATCH").map_or(10_000, |b| b.parse().unwrap());
    let quantiles = std::env::var_os("KWA_QUANTILES").is_some();
    // KWA_CHANGES=1: coalesced change tracking (exactly once), changes taken every 10 batches.
    let changes = std::env::var_os("KWA_CHANGES").is_some();
    let with_quantiles = |agg: Aggregator| {
        agg.with_quantiles(quantiles.then(|| Quantiles::new(&[0.5, 0.9, 0.99], 0.01).unwrap()))
            .with_coalesced_changes(changes)
    };
    let mut seed = 42u64;
    let mut rnd = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed >> 11) as f64 / (1u64 << 53) as f64
    };
    // Per batch: key table, key index, global key, timestamps, values, offsets.
    type Batch<'a> = (
        Vec<&'a str>,
        Vec<u32>,
        Vec<u32>,
        Vec<f64>,
        Vec<f64>,
        Vec<f64>,
    );
    let packed = std::env::var_os("KWA_PACKED").is_some();
    // KWA_PACKED: each batch's key texts in one buffer (as in the Avro messages).
    let mut buffers: Vec<String> = vec![];
    let mut batches: Vec<Batch> = vec![];
    for s in (0..n).step_by(batch) {
        let mut local = vec![u32::MAX; keys_n];
        let (mut keys, mut ki, mut gk) = (vec![], vec![], vec![]);
        let (mut ts, mut vs, mut os) = (vec![], vec![], vec![]);
        for i in 0..batch {
            let g = s + i;
            let k = (rnd() * keys_n as f64) as usize;
            if local[k] == u32::MAX {
                local[k] = keys.len() as u32;
                keys.push(names[k].as_str());
            }
            ki.push(local[k]);
            gk.push(k as u32);
            let mut t = t0 + ((g as f64) * ms_per_sample).floor();
            if rnd() < 0.01 {
                t -= (rnd() * 1000.0).floor();
            }
            ts.push(t);
            vs.push(if quantiles {
                10f64.powf(4.0 * rnd())
            } else {
                (rnd() * 10000.0).round() / 100.0
            });
            os.push(g as f64);
        }
        if packed {
            buffers.push(gk.iter().map(|&k| names[k as usize].as_str()).collect());
        }
        batches.push((keys, ki, gk, ts, vs, os));
    }
    if packed {
        for (b, buffer) in batches.iter_mut().zip(&buffers) {
            let mut at = 0;
            b.0 =
                b.2.iter()
                    .map(|&k| {
                        let len = names[k as usize].len();
                        at += len;
                        &buffer[at - len..at]
                    })
                    .collect();
            b.1 = (0..b.2.len() as u32).collect();
        }
    }
    let tumbling_only = std::env::var_os("KWA_TUMBLING_ONLY").is_some();
    // The untimed fill: one sample per series at t0.
    let fill_ts = vec![t0; keys_n];
    let fill_values = vec![1.0; keys_n];
    let fill_offsets: Vec<f64> = (0..keys_n).map(|k| (n + k) as f64).collect();
    let fill = |agg: &mut Aggregator, ids: Option<&[u32]>| {
        if !steady {
            return;
        }
        match ids {
            Some(ids) => agg.ingest_ids(ids, &fill_ts, &fill_values, &fill_offsets, None),
            None => {
                let index: Vec<u32> = (0..keys_n as u32).collect();
                agg.ingest(&names, &index, &fill_ts, &fill_values, &fill_offsets, None)
            }
        }
        .unwrap();
    };
    for (size, adv) in [(60_000.0, 60_000.0), (60_000.0, 15_000.0)] {
        if (tumbling_only || steady) && adv < size {
            continue;
        }
        let spec = || WindowSpec::new(size, Some(adv), Some(2000.0)).unwrap();
        let mut agg = with_quantiles(Aggregator::new(spec()));
        fill(&mut agg, None);
        let t = Instant::now();
        // KWA_IDS_ONLY=1: only the pinned-id path (for perf).
        if std::env::var_os("KWA_IDS_ONLY").is_none() {
            for (b, (keys, ki, _, ts, vs, os)) in batches.iter().enumerate() {
                agg.ingest(keys, ki, ts, vs, os, None).unwrap();
                if changes && b % 10 == 9 {
                    agg.take_changes();
                }
            }
        }
        let table = n as f64 / t.elapsed().as_secs_f64() / 1e6;
        // KWA_TABLES_ONLY=1: only the key-table path (for perf).
        if std::env::var_os("KWA_TABLES_ONLY").is_some() {
            println!("{size}/{adv}: key tables {table:.1}M samples/s");
            continue;
        }
        let mut agg = with_quantiles(Aggregator::new(spec()));
        let ids = agg.pin_keys(&names).unwrap();
        fill(&mut agg, Some(&ids));
        let id_batches: Vec<Vec<u32>> = batches
            .iter()
            .map(|b| b.2.iter().map(|&k| ids[k as usize]).collect())
            .collect();
        let t = Instant::now();
        for (b, ((_, _, _, ts, vs, os), kid)) in batches.iter().zip(&id_batches).enumerate() {
            agg.ingest_ids(kid, ts, vs, os, None).unwrap();
            if changes && b % 10 == 9 {
                agg.take_changes();
            }
        }
        let pinned = n as f64 / t.elapsed().as_secs_f64() / 1e6;
        println!(
            "{size}/{adv}: key tables {table:.1}M samples/s, pinned ids {pinned:.1}M samples/s"
        );
    }
}
