//! Decoding Avro `TelemetryBatch` values straight into sample columns, in
//! plain Rust (no Node-API types), so no JS object is built per sample.
//!
//! Schema resolution stays in JS: for each writer schema the service compiles
//! a [`Program`] (see `consumer/native-decode.ts`): a table of nodes saying,
//! for every writer type, how to walk its bytes and which values the reader
//! keeps (the series key, event time and value of each sample, the batch's
//! source id), with the Avro promotions already chosen (int/long/float to
//! double, int to long, bytes to string). Decoding is then a walk over the
//! bytes with the same bounds as the JS pre-scan in `consumer/decode.ts`:
//! every length, count and varint is checked against the bytes that remain,
//! strings the reader reads must be UTF-8, booleans 0 or 1, ints 32-bit, and a
//! block's byte size must match its items. avsc remains the reference decoder:
//! the two are tested to agree sample for sample.

use std::fmt;

/// Why a message could not be decoded; the whole message is refused.
#[derive(Debug, Clone, PartialEq)]
pub enum DecodeError {
    /// Not valid Avro for its writer schema.
    Malformed(String),
    /// The samples array holds more items than allowed.
    TooManySamples(u64),
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Malformed(m) => f.write_str(m),
            Self::TooManySamples(n) => write!(f, "batch has at least {n} samples"),
        }
    }
}

/// The numeric writer type of a value the reader reads as a double.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Number {
    Int,
    Long,
    Float,
    Double,
}

/// One writer type, and what the reader does with its value.
#[derive(Debug, Clone, PartialEq)]
pub enum Node {
    Null,
    Boolean,
    Int,
    Long,
    Float,
    Double,
    /// Bytes (or a string) the reader skips: not checked for UTF-8.
    Bytes,
    /// A string the reader reads but does not keep: must be UTF-8.
    Str,
    Fixed(u32),
    Enum(u32),
    Union(Vec<u32>),
    /// Array blocks; `min_bytes` is the smallest encoding of one item, which
    /// bounds the count a block may declare. `samples` marks the batch's
    /// sample array, whose items count against the sample limit.
    Array {
        item: u32,
        min_bytes: u32,
        samples: bool,
    },
    Map {
        value: u32,
        min_bytes: u32,
    },
    Record(Vec<u32>),
    /// A record the reader reads as a `Sample`: one sample once its fields are read.
    Sample(Vec<u32>),
    /// The sample's series key (a string or bytes, must be UTF-8).
    Key,
    /// The sample's event time, from an int or a long.
    Time {
        long: bool,
    },
    /// The sample's value.
    Value(Number),
    /// The batch's source id (a string or bytes, must be UTF-8).
    SourceId,
}

/// Compiled writer schemas: a node table; each message names its root node.
#[derive(Debug, Clone, PartialEq)]
pub struct Program {
    nodes: Vec<Node>,
}

const OP_NULL: u32 = 0;
const OP_BOOLEAN: u32 = 1;
const OP_INT: u32 = 2;
const OP_LONG: u32 = 3;
const OP_FLOAT: u32 = 4;
const OP_DOUBLE: u32 = 5;
const OP_BYTES: u32 = 6;
const OP_STRING: u32 = 7;
const OP_FIXED: u32 = 8;
const OP_ENUM: u32 = 9;
const OP_UNION: u32 = 10;
const OP_ARRAY: u32 = 11;
const OP_MAP: u32 = 12;
const OP_RECORD: u32 = 13;
const OP_SAMPLE: u32 = 14;
const OP_KEY: u32 = 15;
const OP_TIME_INT: u32 = 16;
const OP_TIME_LONG: u32 = 17;
const OP_VALUE_INT: u32 = 18;
const OP_VALUE_LONG: u32 = 19;
const OP_VALUE_FLOAT: u32 = 20;
const OP_VALUE_DOUBLE: u32 = 21;
const OP_SOURCE_ID: u32 = 22;

/// Deepest nesting of records, arrays, maps and unions walked; deeper values
/// are malformed (recursive schemas could otherwise exhaust the stack).
pub const MAX_DEPTH: u32 = 256;

impl Program {
    /// Parses the wire form: `[op, argCount, args...]` per node, node `i`
    /// being the `i`-th. Child references must name existing nodes.
    pub fn parse(words: &[u32]) -> Result<Self, String> {
        let mut nodes = Vec::new();
        let mut at = 0;
        while at < words.len() {
            let op = words[at];
            let argc = *words.get(at + 1).ok_or("program truncated")? as usize;
            let args = words
                .get(at + 2..at + 2 + argc)
                .ok_or("program truncated")?;
            let arg = |i: usize| {
                args.get(i)
                    .copied()
                    .ok_or_else(|| format!("node {} (op {op}) needs argument {i}", nodes.len()))
            };
            let node = match op {
                OP_NULL => Node::Null,
                OP_BOOLEAN => Node::Boolean,
                OP_INT => Node::Int,
                OP_LONG => Node::Long,
                OP_FLOAT => Node::Float,
                OP_DOUBLE => Node::Double,
                OP_BYTES => Node::Bytes,
                OP_STRING => Node::Str,
                OP_FIXED => Node::Fixed(arg(0)?),
                OP_ENUM => Node::Enum(arg(0)?),
                OP_UNION => Node::Union(args.to_vec()),
                OP_ARRAY => Node::Array {
                    item: arg(0)?,
                    min_bytes: arg(1)?,
                    samples: arg(2)? != 0,
                },
                OP_MAP => Node::Map {
                    value: arg(0)?,
                    min_bytes: arg(1)?,
                },
                OP_RECORD => Node::Record(args.to_vec()),
                OP_SAMPLE => Node::Sample(args.to_vec()),
                OP_KEY => Node::Key,
                OP_TIME_INT => Node::Time { long: false },
                OP_TIME_LONG => Node::Time { long: true },
                OP_VALUE_INT => Node::Value(Number::Int),
                OP_VALUE_LONG => Node::Value(Number::Long),
                OP_VALUE_FLOAT => Node::Value(Number::Float),
                OP_VALUE_DOUBLE => Node::Value(Number::Double),
                OP_SOURCE_ID => Node::SourceId,
                _ => return Err(format!("unknown op {op} at word {at}")),
            };
            nodes.push(node);
            at += 2 + argc;
        }
        let program = Self { nodes };
        for (i, node) in program.nodes.iter().enumerate() {
            let children: &[u32] = match node {
                Node::Union(c) | Node::Record(c) | Node::Sample(c) => c,
                Node::Array { item, .. } => std::slice::from_ref(item),
                Node::Map { value, .. } => std::slice::from_ref(value),
                _ => &[],
            };
            if let Some(bad) = children.iter().find(|&&c| !program.has(c)) {
                return Err(format!(
                    "node {i} refers to node {bad}, which does not exist"
                ));
            }
        }
        Ok(program)
    }

    /// Whether `node` exists (a valid root).
    pub fn has(&self, node: u32) -> bool {
        (node as usize) < self.nodes.len()
    }
}

/// Decoded samples of many messages, as columns; keys borrow the input bytes.
#[derive(Debug, Default)]
pub struct Samples<'a> {
    pub keys: Vec<&'a str>,
    pub timestamps: Vec<f64>,
    pub values: Vec<f64>,
}

impl Samples<'_> {
    pub fn len(&self) -> usize {
        self.values.len()
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    fn truncate(&mut self, len: usize) {
        self.keys.truncate(len);
        self.timestamps.truncate(len);
        self.values.truncate(len);
    }
}

/// One message decoded: its source id (empty when the writer has none).
#[derive(Debug, PartialEq)]
pub struct Decoded<'a> {
    pub source_id: &'a str,
    pub samples: usize,
}

/// Decodes one message value whose Avro body starts at `body`, appending its
/// samples to `out`; on error nothing is appended. Byte positions in errors
/// count from the start of `value`.
pub fn decode_message<'a>(
    program: &Program,
    root: u32,
    value: &'a [u8],
    body: usize,
    max_samples: u64,
    out: &mut Samples<'a>,
) -> Result<Decoded<'a>, DecodeError> {
    let before = out.len();
    let mut walk = Walk {
        program,
        buf: value,
        pos: body,
        items: 0,
        samples: 0,
        max_samples,
        out,
        key: "",
        time: f64::NAN,
        value: f64::NAN,
        source_id: "",
    };
    let result = walk.node(root, 0).and_then(|()| {
        if walk.pos == value.len() {
            Ok(())
        } else {
            Err(Fault::At(
                walk.pos,
                format!("{} trailing bytes", value.len() - walk.pos),
            ))
        }
    });
    let source_id = walk.source_id;
    match result {
        Ok(()) => Ok(Decoded {
            source_id,
            samples: out.len() - before,
        }),
        Err(fault) => {
            out.truncate(before);
            Err(match fault {
                Fault::TooManySamples(n) => DecodeError::TooManySamples(n),
                Fault::At(pos, what) => {
                    DecodeError::Malformed(format!("byte {pos} of {}: {what}", value.len()))
                }
                Fault::TooDeep => DecodeError::Malformed("nested too deeply".to_owned()),
            })
        }
    }
}

enum Fault {
    At(usize, String),
    TooManySamples(u64),
    TooDeep,
}

struct Walk<'p, 'a, 'o> {
    program: &'p Program,
    buf: &'a [u8],
    pos: usize,
    /// Array and map items so far (bounds zero-byte items by the message size).
    items: u64,
    samples: u64,
    max_samples: u64,
    out: &'o mut Samples<'a>,
    key: &'a str,
    time: f64,
    value: f64,
    source_id: &'a str,
}

impl<'a> Walk<'_, 'a, '_> {
    fn left(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn need(&self, bytes: u64, what: &str) -> Result<(), Fault> {
        if bytes > self.left() as u64 {
            return Err(Fault::At(
                self.pos,
                format!("{what} needs {bytes} bytes, {} left", self.left()),
            ));
        }
        Ok(())
    }

    /// A zig-zag varint of at most `max_bytes` bytes (5 for int, 10 for long),
    /// as the raw (still zig-zag encoded) unsigned value.
    fn varint(&mut self, max_bytes: usize) -> Result<u64, Fault> {
        let start = self.pos;
        let mut raw = 0u64;
        for i in 0..max_bytes {
            let Some(&b) = self.buf.get(start + i) else {
                return Err(Fault::At(start, "truncated varint".to_owned()));
            };
            if i == max_bytes - 1 && b > if max_bytes == 5 { 0x0f } else { 0x01 } {
                let what = if max_bytes == 5 { "an int" } else { "a long" };
                return Err(Fault::At(start, format!("varint overflows {what}")));
            }
            raw |= u64::from(b & 0x7f) << (7 * i);
            if b < 0x80 {
                self.pos = start + i + 1;
                return Ok(raw);
            }
        }
        unreachable!("the last byte is checked above")
    }

    fn signed(&mut self, max_bytes: usize) -> Result<i64, Fault> {
        let raw = self.varint(max_bytes)?;
        Ok((raw >> 1) as i64 ^ -((raw & 1) as i64))
    }

    /// An int or long as avsc reads it into a JS number: exact below 2^53,
    /// and rounded the way its float arithmetic rounds beyond (so both
    /// decoders agree on every value).
    fn number(&mut self, max_bytes: usize) -> Result<f64, Fault> {
        let start = self.pos;
        let raw = self.varint(max_bytes)?;
        let bytes = &self.buf[start..self.pos];
        if bytes.len() <= 4 {
            return Ok(((raw >> 1) as i64 ^ -((raw & 1) as i64)) as f64);
        }
        // Tap.readLong: 28 bits exactly, then float arithmetic.
        let mut f = (raw & 0x0fff_ffff) as f64;
        let mut scale = 268_435_456.0f64;
        for &b in &bytes[4..] {
            f += f64::from(b & 0x7f) * scale;
            scale *= 128.0;
        }
        // `f % 2.0 != 0.0` without a call to fmod: below 2^53 `f` is an exact
        // integer, and every float from 2^53 up is even.
        let odd = f < 9_007_199_254_740_992.0 && (f as u64) & 1 == 1;
        Ok(if odd { -(f + 1.0) } else { f } / 2.0)
    }

    fn length(&mut self, what: &str) -> Result<usize, Fault> {
        let at = self.pos;
        let n = self.signed(10)?;
        if n < 0 {
            return Err(Fault::At(at, format!("negative {what} length {n}")));
        }
        self.need(n as u64, what)?;
        Ok(n as usize)
    }

    fn text(&mut self, what: &str) -> Result<&'a str, Fault> {
        let len = self.length(what)?;
        let bytes = &self.buf[self.pos..self.pos + len];
        let text = std::str::from_utf8(bytes)
            .map_err(|_| Fault::At(self.pos, "string is not valid UTF-8".to_owned()))?;
        self.pos += len;
        Ok(text)
    }

    fn fixed(&mut self, size: usize, what: &str) -> Result<&'a [u8], Fault> {
        self.need(size as u64, what)?;
        let bytes = &self.buf[self.pos..self.pos + size];
        self.pos += size;
        Ok(bytes)
    }

    fn node(&mut self, id: u32, depth: u32) -> Result<(), Fault> {
        let program = self.program;
        match &program.nodes[id as usize] {
            Node::Null => {}
            Node::Boolean => match self.buf.get(self.pos) {
                None => return Err(Fault::At(self.pos, "truncated boolean".to_owned())),
                Some(&b) if b > 1 => {
                    return Err(Fault::At(self.pos, format!("boolean byte 0x{b:x}")));
                }
                Some(_) => self.pos += 1,
            },
            Node::Int => {
                self.varint(5)?;
            }
            Node::Long => {
                self.varint(10)?;
            }
            Node::Float => {
                self.fixed(4, "float")?;
            }
            Node::Double => {
                self.fixed(8, "double")?;
            }
            Node::Bytes => {
                let len = self.length("bytes")?;
                self.pos += len;
            }
            Node::Str => {
                self.text("string")?;
            }
            Node::Fixed(size) => {
                self.fixed(*size as usize, &format!("fixed({size})"))?;
            }
            Node::Enum(symbols) => {
                let at = self.pos;
                let index = self.signed(5)?;
                if index < 0 || index >= i64::from(*symbols) {
                    return Err(Fault::At(
                        at,
                        format!("enum index {index} not in [0, {symbols})"),
                    ));
                }
            }
            Node::Union(branches) => {
                let depth = deeper(depth)?;
                let at = self.pos;
                let index = self.signed(5)?;
                let branch = usize::try_from(index)
                    .ok()
                    .and_then(|i| branches.get(i))
                    .ok_or_else(|| {
                        Fault::At(
                            at,
                            format!("union index {index} not in [0, {})", branches.len()),
                        )
                    })?;
                self.node(*branch, depth)?;
            }
            Node::Array {
                item,
                min_bytes,
                samples,
            } => {
                let depth = deeper(depth)?;
                self.blocks(depth, "array", u64::from(*min_bytes), *samples, |w, d| {
                    w.node(*item, d)
                })?;
            }
            Node::Map { value, min_bytes } => {
                let depth = deeper(depth)?;
                self.blocks(depth, "map", 1 + u64::from(*min_bytes), false, |w, d| {
                    w.text("string")?;
                    w.node(*value, d)
                })?;
            }
            Node::Record(fields) => {
                let depth = deeper(depth)?;
                for &field in fields {
                    self.node(field, depth)?;
                }
            }
            Node::Sample(fields) => {
                let depth = deeper(depth)?;
                for &field in fields {
                    self.node(field, depth)?;
                }
                self.out.keys.push(self.key);
                self.out.timestamps.push(self.time);
                self.out.values.push(self.value);
            }
            Node::Key => self.key = self.text("string")?,
            Node::Time { long } => {
                let at = self.pos;
                let t = self.number(if *long { 10 } else { 5 })?;
                // avsc refuses longs it cannot hold exactly.
                if !(-9_007_199_254_740_990.0..=9_007_199_254_740_990.0).contains(&t) {
                    return Err(Fault::At(at, "potential precision loss".to_owned()));
                }
                self.time = t;
            }
            Node::Value(number) => {
                self.value = match number {
                    Number::Int => self.number(5)?,
                    Number::Long => self.number(10)?,
                    Number::Float => {
                        let b = self.fixed(4, "float")?;
                        f64::from(f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    }
                    Number::Double => {
                        let b = self.fixed(8, "double")?;
                        f64::from_le_bytes(b.try_into().expect("8 bytes"))
                    }
                }
            }
            Node::SourceId => self.source_id = self.text("string")?,
        }
        Ok(())
    }

    /// Array or map blocks: `count items`, or `-count size items`, ..., then 0.
    fn blocks(
        &mut self,
        depth: u32,
        what: &str,
        item_bytes: u64,
        samples: bool,
        mut item: impl FnMut(&mut Self, u32) -> Result<(), Fault>,
    ) -> Result<(), Fault> {
        loop {
            let at = self.pos;
            let count = self.signed(10)?;
            if count == 0 {
                return Ok(());
            }
            let mut end = None;
            let count = if count < 0 {
                let size = self.length(&format!("{what} block"))?;
                end = Some(self.pos + size);
                count.unsigned_abs()
            } else {
                count as u64
            };
            let left = self.left() as u64;
            if count.saturating_mul(item_bytes) > left
                || self.items.saturating_add(count) > self.buf.len() as u64
            {
                return Err(Fault::At(
                    at,
                    format!("{what} block of {count} items cannot fit in {left} bytes"),
                ));
            }
            self.items += count;
            if samples {
                self.samples += count;
                if self.samples > self.max_samples {
                    return Err(Fault::TooManySamples(self.samples));
                }
            }
            for _ in 0..count {
                item(self, depth)?;
            }
            if let Some(end) = end.filter(|&end| end != self.pos) {
                return Err(Fault::At(
                    at,
                    format!(
                        "{what} block size says it ends at byte {end}, items end at {}",
                        self.pos
                    ),
                ));
            }
        }
    }
}

fn deeper(depth: u32) -> Result<u32, Fault> {
    if depth >= MAX_DEPTH {
        Err(Fault::TooDeep)
    } else {
        Ok(depth + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The current reader schema written as is: sourceId, samples[seriesKey, eventTime, value].
    #[rustfmt::skip]
    fn current() -> Program {
        Program::parse(&[
            OP_RECORD, 2, 1, 2, // 0: TelemetryBatch
            OP_SOURCE_ID, 0, // 1
            OP_ARRAY, 3, 3, 10, 1, // 2: samples (min bytes: 1 + 1 + 8)
            OP_SAMPLE, 3, 4, 5, 6, // 3
            OP_KEY, 0, // 4
            OP_TIME_LONG, 0, // 5
            OP_VALUE_DOUBLE, 0, // 6
        ])
        .unwrap()
    }

    fn zigzag(n: i64, out: &mut Vec<u8>) {
        let mut z = ((n << 1) ^ (n >> 63)) as u64;
        loop {
            let b = (z & 0x7f) as u8;
            z >>= 7;
            if z == 0 {
                out.push(b);
                return;
            }
            out.push(b | 0x80);
        }
    }

    fn string(s: &str, out: &mut Vec<u8>) {
        zigzag(s.len() as i64, out);
        out.extend_from_slice(s.as_bytes());
    }

    fn batch(source: &str, samples: &[(&str, i64, f64)]) -> Vec<u8> {
        let mut out = vec![];
        string(source, &mut out);
        if !samples.is_empty() {
            zigzag(samples.len() as i64, &mut out);
            for (k, t, v) in samples {
                string(k, &mut out);
                zigzag(*t, &mut out);
                out.extend_from_slice(&v.to_le_bytes());
            }
        }
        out.push(0);
        out
    }

    #[test]
    fn decodes_samples_and_source() {
        let program = current();
        let bytes = batch("dev-1", &[("a", 1_700_000_000_000, 1.5), ("bé", -3, -0.25)]);
        let mut out = Samples::default();
        let d = decode_message(&program, 0, &bytes, 0, 100, &mut out).unwrap();
        assert_eq!(
            d,
            Decoded {
                source_id: "dev-1",
                samples: 2
            }
        );
        assert_eq!(out.keys, ["a", "bé"]);
        assert_eq!(out.timestamps, [1_700_000_000_000.0, -3.0]);
        assert_eq!(out.values, [1.5, -0.25]);
    }

    #[test]
    fn refuses_bad_bytes_and_appends_nothing() {
        let program = current();
        let good = batch("s", &[("a", 1, 1.0), ("b", 2, 2.0)]);
        let mut out = Samples::default();
        decode_message(&program, 0, &good, 0, 100, &mut out).unwrap();
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (good[..good.len() - 3].to_vec(), "needs 8 bytes"),
            ([good.clone(), vec![7]].concat(), "1 trailing bytes"),
            (
                vec![
                    2, b'x', 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x7f,
                ],
                "varint overflows a long",
            ),
            (vec![2, b'x', 0xc8, 0x01], "cannot fit"),
        ];
        for (bytes, expected) in &cases {
            let err = decode_message(&program, 0, bytes, 0, 100, &mut out).unwrap_err();
            assert!(
                matches!(&err, DecodeError::Malformed(m) if m.contains(expected)),
                "{err:?}"
            );
            assert_eq!(out.len(), 2, "a refused message appends nothing");
        }
        let mut bad_utf8 = batch("s", &[("ab", 1, 1.0)]);
        let at = bad_utf8.iter().position(|&b| b == b'a').unwrap();
        bad_utf8[at] = 0xc3;
        bad_utf8[at + 1] = 0x28;
        let err = decode_message(&program, 0, &bad_utf8, 0, 100, &mut out).unwrap_err();
        assert!(matches!(err, DecodeError::Malformed(m) if m.contains("UTF-8")));
    }

    #[test]
    fn bounds_samples() {
        let program = current();
        let bytes = batch("s", &[("a", 1, 1.0), ("b", 2, 2.0), ("c", 3, 3.0)]);
        let mut out = Samples::default();
        let err = decode_message(&program, 0, &bytes, 0, 2, &mut out).unwrap_err();
        assert_eq!(err, DecodeError::TooManySamples(3));
    }

    #[test]
    fn reads_promoted_numbers_like_avsc() {
        // Time as an int, value as a long.
        #[rustfmt::skip]
        let program = Program::parse(&[
            OP_RECORD, 2, 1, 2,
            OP_SOURCE_ID, 0,
            OP_ARRAY, 3, 3, 3, 1,
            OP_SAMPLE, 3, 4, 5, 6,
            OP_KEY, 0,
            OP_TIME_INT, 0,
            OP_VALUE_LONG, 0,
        ])
        .unwrap();
        let mut bytes = vec![0, 2];
        string("k", &mut bytes);
        zigzag(-7, &mut bytes);
        zigzag((1i64 << 53) + 1, &mut bytes);
        bytes.push(0);
        let mut out = Samples::default();
        decode_message(&program, 0, &bytes, 0, 10, &mut out).unwrap();
        assert_eq!(out.timestamps, [-7.0]);
        // 2^53 + 1 rounds as avsc's float arithmetic does.
        assert_eq!(out.values, [9_007_199_254_740_992.0]);
    }

    #[test]
    fn parse_checks_references() {
        assert!(Program::parse(&[OP_RECORD, 1, 5]).is_err());
        assert!(Program::parse(&[99, 0]).is_err());
        assert!(Program::parse(&[OP_ARRAY, 2, 0]).is_err());
    }
}
