//! Output records built natively: a closed window's result as its Avro value
//! (schemas/window-aggregate*.avsc) inside a Kafka record (format v2), placed
//! on the output partition kafkajs' DefaultPartitioner (Java's murmur2) would
//! pick for its key. Building them in JS cost about 2.6 µs per result
//! (an object, an avsc encode, a kafkajs Record and its partition hash); here
//! it is one pass over the columns into one buffer per partition.

/// One closed window's result, borrowed from the aggregator's columns.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WindowResult<'a> {
    pub series_key: &'a str,
    pub window_start: f64,
    pub window_end: f64,
    pub count: f64,
    pub sum: f64,
    pub mean: f64,
    pub min: f64,
    pub max: f64,
    /// `Some` with the quantiles config: the asked quantiles and this row's
    /// estimates (one each; any NaN means unknown, written as no quantiles).
    pub quantiles: Option<(&'a [f64], &'a [f64])>,
}

/// The records of one output partition: Kafka record format v2 bodies one
/// after the other, offset deltas from 0, timestamp deltas 0.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PartitionRecords {
    pub partition: u32,
    pub count: u32,
    pub bytes: Vec<u8>,
}

/// Kafka's murmur2 (`org.apache.kafka.common.utils.Utils.murmur2`), as
/// kafkajs' DefaultPartitioner computes it.
pub fn murmur2(data: &[u8]) -> i32 {
    const M: u32 = 0x5bd1_e995;
    let mut h: u32 = 0x9747_b28c ^ data.len() as u32;
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> 24;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M) ^ k;
    }
    let tail = chunks.remainder();
    if !tail.is_empty() {
        // Sign-extended bytes would differ from Java's only above 0x7f in the
        // top byte; Java masks each with 0xff, as this does.
        for (i, &b) in tail.iter().enumerate().rev() {
            h ^= u32::from(b) << (8 * i);
        }
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// The partition of a keyed record among `partitions` (> 0):
/// `toPositive(murmur2(key)) % partitions`, as Kafka's and kafkajs' default
/// partitioners place keyed records.
pub fn partition_for(key: &[u8], partitions: u32) -> u32 {
    (murmur2(key) & 0x7fff_ffff) as u32 % partitions
}

/// Zigzag varint (Kafka's varint/varlong and Avro's int/long).
fn put_varint(out: &mut Vec<u8>, value: i64) {
    let mut v = ((value << 1) ^ (value >> 63)) as u64;
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn varint_len(value: i64) -> usize {
    let v = ((value << 1) ^ (value >> 63)) as u64;
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

/// A double as JS writes it: every NaN as the canonical quiet NaN.
fn put_double(out: &mut Vec<u8>, value: f64) {
    let value = if value.is_nan() { f64::NAN } else { value };
    out.extend_from_slice(&value.to_le_bytes());
}

/// The result's Avro value: window-aggregate.avsc, or with `quantiles`
/// window-aggregate-quantiles.avsc. Times and count are whole numbers below
/// 2^53, as the aggregator reports them.
pub fn put_window_aggregate(out: &mut Vec<u8>, r: &WindowResult<'_>) {
    put_varint(out, r.series_key.len() as i64);
    out.extend_from_slice(r.series_key.as_bytes());
    put_varint(out, r.window_start as i64);
    put_varint(out, r.window_end as i64);
    put_varint(out, r.count as i64);
    put_double(out, r.sum);
    put_double(out, r.mean);
    put_double(out, r.min);
    put_double(out, r.max);
    if let Some((asked, values)) = r.quantiles {
        if !asked.is_empty() && !values.iter().any(|v| v.is_nan()) {
            put_varint(out, asked.len() as i64);
            for (q, v) in asked.iter().zip(values) {
                put_double(out, *q);
                put_double(out, *v);
            }
        }
        // The array's end (or the whole of an empty one).
        out.push(0);
    }
}

/// Appends one Kafka record (format v2: attributes 0, timestamp delta 0,
/// no headers) with this key and value (`None`: a tombstone).
pub fn put_record(out: &mut Vec<u8>, offset_delta: u32, key: &[u8], value: Option<&[u8]>) {
    let k = key.len() as i64;
    let v = value.map_or(-1, |v| v.len() as i64);
    let body = 2 // attributes, timestamp delta
        + varint_len(i64::from(offset_delta))
        + varint_len(k)
        + key.len()
        + varint_len(v)
        + value.map_or(0, <[u8]>::len)
        + 1; // header count
    put_varint(out, body as i64);
    out.push(0);
    out.push(0);
    put_varint(out, i64::from(offset_delta));
    put_varint(out, k);
    out.extend_from_slice(key);
    put_varint(out, v);
    if let Some(value) = value {
        out.extend_from_slice(value);
    }
    out.push(0);
}

/// One open window's state, borrowed from the aggregator's columns, for the
/// changelog (its format is written in consumer/changelog.ts).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WindowState<'a> {
    pub series_key: &'a str,
    pub window_start: f64,
    pub count: f64,
    pub sum: f64,
    pub compensation: f64,
    pub min: f64,
    pub max: f64,
    pub first_offset: f64,
    /// The window's quantile sketch, encoded; empty without quantiles.
    pub sketch: &'a [u8],
}

/// A changelog window key: `W`, the window start as int64 big-endian, the
/// series key as UTF-8.
fn put_window_key(out: &mut Vec<u8>, window_start: f64, series_key: &str) {
    out.push(b'W');
    out.extend_from_slice(&(window_start as i64).to_be_bytes());
    out.extend_from_slice(series_key.as_bytes());
}

/// Changelog window format versions: without a sketch, and with one after
/// the fixed fields.
const WINDOW_VERSION: u8 = 1;
const WINDOW_SKETCH_VERSION: u8 = 2;

/// The changelog records of one partition, in order: an upsert per window
/// state, then a tombstone per closed window (start, series key).
pub fn changelog_records<'a>(
    states: impl IntoIterator<Item = WindowState<'a>>,
    closed: impl IntoIterator<Item = (f64, &'a str)>,
    partition: u32,
) -> PartitionRecords {
    let mut records = PartitionRecords {
        partition,
        ..Default::default()
    };
    let (mut key, mut value) = (Vec::with_capacity(64), Vec::with_capacity(64));
    for w in states {
        key.clear();
        put_window_key(&mut key, w.window_start, w.series_key);
        value.clear();
        value.push(if w.sketch.is_empty() {
            WINDOW_VERSION
        } else {
            WINDOW_SKETCH_VERSION
        });
        for v in [w.count, w.sum, w.compensation, w.min, w.max, w.first_offset] {
            put_double(&mut value, v);
        }
        value.extend_from_slice(w.sketch);
        put_record(&mut records.bytes, records.count, &key, Some(&value));
        records.count += 1;
    }
    for (start, series_key) in closed {
        key.clear();
        put_window_key(&mut key, start, series_key);
        put_record(&mut records.bytes, records.count, &key, None);
        records.count += 1;
    }
    records
}

/// The results as records keyed by series key, grouped by output partition
/// (ascending), each partition's in the order given.
pub fn result_records<'a>(
    results: impl IntoIterator<Item = WindowResult<'a>>,
    partitions: u32,
) -> Vec<PartitionRecords> {
    assert!(partitions > 0, "a topic has at least one partition");
    let mut by_partition: Vec<PartitionRecords> = Vec::new();
    // Output partition p's index in by_partition, or u32::MAX.
    let mut slot = vec![u32::MAX; partitions as usize];
    let mut value = Vec::with_capacity(128);
    for r in results {
        let key = r.series_key.as_bytes();
        let p = partition_for(key, partitions);
        let s = &mut slot[p as usize];
        if *s == u32::MAX {
            *s = by_partition.len() as u32;
            by_partition.push(PartitionRecords {
                partition: p,
                ..Default::default()
            });
        }
        let records = &mut by_partition[*s as usize];
        value.clear();
        put_window_aggregate(&mut value, &r);
        put_record(&mut records.bytes, records.count, key, Some(&value));
        records.count += 1;
    }
    by_partition.sort_unstable_by_key(|r| r.partition);
    by_partition
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Java's `Utils.murmur2` of these strings' UTF-8, as kafkajs computes it.
    #[test]
    fn murmur2_matches_kafka() {
        let cases: [(&str, i32); 8] = [
            ("21", -973_932_308),
            ("foobar", -790_332_482),
            ("a-little-bit-long-string", -985_981_536),
            ("a-little-bit-longer-string", -1_486_304_829),
            (
                "lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58_897_971,
            ),
            ("abc", 479_470_107),
            // Tails with bytes above 0x7f (UTF-8 of "éx" and "ÿþý").
            ("\u{e9}x", 1_023_386_859),
            ("\u{ff}\u{fe}\u{fd}", -827_240_790),
        ];
        for (key, hash) in cases {
            assert_eq!(murmur2(key.as_bytes()), hash, "{key}");
        }
        assert_eq!(partition_for(b"foobar", 1), 0);
        assert_eq!(
            partition_for(b"foobar", 7),
            ((-790_332_482i32 & 0x7fff_ffff) as u32) % 7
        );
    }

    #[test]
    fn varints_are_zigzag_and_sized() {
        for (value, bytes) in [
            (0i64, vec![0u8]),
            (-1, vec![1]),
            (1, vec![2]),
            (63, vec![126]),
            (64, vec![128, 1]),
            (-65, vec![129, 1]),
            (1_700_000_000_000, vec![128, 160, 171, 254, 249, 98]),
        ] {
            let mut out = Vec::new();
            put_varint(&mut out, value);
            assert_eq!(out, bytes, "{value}");
            assert_eq!(varint_len(value), bytes.len(), "{value}");
        }
        for value in [i64::MIN, i64::MAX, 1 << 53, -(1 << 53)] {
            let mut out = Vec::new();
            put_varint(&mut out, value);
            assert_eq!(varint_len(value), out.len(), "{value}");
        }
    }

    fn result<'a>(key: &'a str, quantiles: Option<(&'a [f64], &'a [f64])>) -> WindowResult<'a> {
        WindowResult {
            series_key: key,
            window_start: 1_700_000_000_000.0,
            window_end: 1_700_000_001_000.0,
            count: 3.0,
            sum: 6.5,
            mean: 6.5 / 3.0,
            min: -1.0,
            max: f64::NAN,
            quantiles,
        }
    }

    #[test]
    fn window_aggregate_is_avro() {
        let mut out = Vec::new();
        put_window_aggregate(&mut out, &result("é", None));
        let mut want = vec![4, 0xc3, 0xa9, 128, 160, 171, 254, 249, 98];
        want.extend([208, 175, 171, 254, 249, 98, 6]);
        for v in [6.5, 6.5 / 3.0, -1.0] {
            want.extend(f64::to_le_bytes(v));
        }
        want.extend(0x7ff8_0000_0000_0000u64.to_le_bytes());
        assert_eq!(out, want);

        let asked = [0.5, 0.99];
        let mut with = Vec::new();
        put_window_aggregate(&mut with, &result("é", Some((&asked, &[1.0, 2.0]))));
        assert_eq!(&with[..want.len()], &want[..]);
        let mut tail = vec![4u8];
        for v in [0.5, 1.0, 0.99, 2.0] {
            tail.extend(f64::to_le_bytes(v));
        }
        tail.push(0);
        assert_eq!(&with[want.len()..], &tail[..]);

        let mut unknown = Vec::new();
        put_window_aggregate(&mut unknown, &result("é", Some((&asked, &[1.0, f64::NAN]))));
        assert_eq!(&unknown[..want.len()], &want[..]);
        assert_eq!(&unknown[want.len()..], &[0]);
    }

    #[test]
    fn changelog_records_are_upserts_then_tombstones() {
        let state = |key, sketch| WindowState {
            series_key: key,
            window_start: -1_000.0,
            count: 2.0,
            sum: 3.0,
            compensation: 0.0,
            min: 1.0,
            max: 2.0,
            first_offset: 7.0,
            sketch,
        };
        let sketch = [9u8, 8, 7];
        let run = changelog_records([state("a", &[]), state("b", &sketch)], [(5.0, "c")], 3);
        assert_eq!((run.partition, run.count), (3, 3));
        let key = |start: i64, k: &str| {
            let mut v = vec![b'W'];
            v.extend(start.to_be_bytes());
            v.extend(k.as_bytes());
            v
        };
        let value = |version: u8, sketch: &[u8]| {
            let mut v = vec![version];
            for x in [2.0f64, 3.0, 0.0, 1.0, 2.0, 7.0] {
                v.extend(x.to_le_bytes());
            }
            v.extend(sketch);
            v
        };
        let mut want = Vec::new();
        put_record(&mut want, 0, &key(-1_000, "a"), Some(&value(1, &[])));
        put_record(&mut want, 1, &key(-1_000, "b"), Some(&value(2, &sketch)));
        put_record(&mut want, 2, &key(5, "c"), None);
        assert_eq!(run.bytes, want);
        // A tombstone's value length is -1 (zigzag 1), then no header.
        assert_eq!(&want[want.len() - 2..], &[1, 0]);
    }

    #[test]
    fn records_are_framed_and_grouped_by_partition() {
        let keys = ["a", "b", "c", "d", "e", "f", "g", "h"];
        let grouped = result_records(keys.iter().map(|k| result(k, None)), 3);
        assert!(grouped.windows(2).all(|w| w[0].partition < w[1].partition));
        assert_eq!(grouped.iter().map(|g| g.count).sum::<u32>(), 8);
        for group in &grouped {
            // Walk the records back: length, attributes, deltas, key, value, headers.
            let (mut at, mut n) = (0, 0);
            let mut want_keys = keys
                .iter()
                .filter(|k| partition_for(k.as_bytes(), 3) == group.partition);
            while at < group.bytes.len() {
                let len = (group.bytes[at] >> 1) as usize;
                let body = &group.bytes[at + 1..at + 1 + len];
                assert_eq!(&body[..3], &[0, 0, (n as u8) << 1]);
                let key_len = (body[3] >> 1) as usize;
                let key = std::str::from_utf8(&body[4..4 + key_len]).unwrap();
                assert_eq!(Some(&key), want_keys.next());
                let mut value = Vec::new();
                put_window_aggregate(&mut value, &result(key, None));
                assert_eq!(body[4 + key_len] as usize, value.len() << 1);
                assert_eq!(&body[5 + key_len..len - 1], &value[..]);
                assert_eq!(body[len - 1], 0);
                at += 1 + len;
                n += 1;
            }
            assert_eq!(n, group.count);
            assert_eq!(want_keys.next(), None);
        }
    }
}
