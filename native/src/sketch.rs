//! Mergeable relative-error quantile sketch: DDSketch (Masson, Rim & Lee,
//! "DDSketch: A Fast and Fully-Mergeable Quantile Sketch with Relative-Error
//! Guarantees", VLDB 2019), in plain Rust.
//!
//! The parameters live in a [`SketchSpec`] shared by all the sketches of an
//! aggregator (they are not stored per sketch); every call that needs them
//! takes the spec, and all sketches that are merged must use the same one.
//!
//! # Guarantee
//!
//! Write `α` for `relative_accuracy` and `min_indexable` for
//! [`SketchSpec::min_indexable`] (= `f64::MIN_POSITIVE`, the smallest normal
//! `f64`, about `2.2e-308`).
//!
//! * **Bins.** Every finite `x` with `|x| >= min_indexable` falls in a bin whose
//!   reported value `v` (with the sign of `x`) satisfies `|v - x| <= α·|x|`,
//!   exactly, in floating point, over the whole `f64` range up to `±f64::MAX`.
//!   Values with `|x| < min_indexable` (`0.0`, `-0.0`, subnormals) are counted
//!   in a zero bucket and **reported as `0`**.
//! * **Quantiles.** For `n` samples and `q` in `[0, 1]`,
//!   [`quantile`](Sketch::quantile) estimates the element `x_r` of 0-based rank
//!   `r = floor(q·(n - 1))` of the sorted samples: it walks the bins in value
//!   order and reports the value of the bin that holds the `r`-th sample. Bins
//!   are ordered like the values, so while nothing was collapsed (see below) the
//!   estimate is within `α·|x_r|` of `x_r` (`0` if `|x_r| < min_indexable`).
//!
//! # Bounded size: collapsing the lowest values
//!
//! Each store (positive values; negative values by magnitude) holds a dense
//! run of at most `max_bins` consecutive bins. When a sample or a merge would
//! make a store span more, the bins of the **lowest values** are folded, as in
//! DDSketch's collapsing-lowest store: in the positive store the smallest
//! bins fold into the lowest kept bin; in the negative store the largest
//! magnitudes (the most negative values) fold into the largest kept magnitude.
//! A folded sample is then reported too high (never too low). Once a store has
//! folded samples its lowest bin never moves down again, so all folded samples
//! of a store sit in its lowest-value bin.
//!
//! [`collapsed`](Sketch::collapsed) counts the samples that are not in their
//! own bin (0 when the bound was never hit). Let `c` =
//! [`min_guaranteed_rank`](Sketch::min_guaranteed_rank), the number of samples
//! at or below the highest bin holding folded samples (0 when none). **Every
//! quantile whose rank `r = floor(q·(n - 1)) >= c` keeps the guarantee**
//! `|estimate - x_r| <= α·|x_r|`: bins above that one hold exactly the samples
//! whose own bin is above it. High quantiles are therefore kept; at `α = 1%`
//! and `max_bins = 2048`, one store covers values over a factor of about
//! `e^40 ≈ 4·10^17` before anything collapses.
//!
//! Bin counts do not depend on the order of the samples nor on how they are
//! split between merged sketches: merging sketches of parts equals the sketch
//! of the whole, bit for bit.
//!
//! # Index mapping
//!
//! sketches-java's `CubicallyInterpolatedMapping`: for `x = 2^e·(1 + s)` with
//! `s` in `[0, 1)` (from the bits of `x`, no `ln`),
//! `index(x) = floor(m·(e + P(s)))`, `P(s) = (6/35)s³ - (3/5)s² + (10/7)s`.
//! `e + P(s)` is continuous, increasing, exact at powers of two, and its
//! derivative with respect to `ln x` is at least `10/7`, so with
//! `m = 0.7 / ln((1 + α')/(1 - α'))` a bin spans at most a ratio
//! `hi/lo <= (1 + α')/(1 - α')`. The bin's reported value is the harmonic mean
//! `2·lo·hi/(lo + hi)`, within `(hi - lo)/(hi + lo) <= α'` of any value in
//! `[lo, hi]`. `α' = α·(1 - 10⁻⁴)` leaves room for floating-point rounding
//! (about `10⁻¹²` relative near `f64::MAX`), so the bound `α` holds exactly;
//! this costs about 1% more bins than the optimal `ln`-based mapping.
//!
//! # Memory
//!
//! A sketch is 48 bytes inline and allocates nothing until a non-zero sample
//! arrives. Each non-empty store then owns one block ([`Sketch::heap_bytes`]):
//! 8 bytes (its collapsed count) and a dense counter array over exactly its
//! `[lowest bin, highest bin]`, reallocated to the range needed when a sample
//! falls outside (never preallocated). All counters of a store share one
//! width, the smallest of 1, 2, 4 or 8 bytes that holds its largest count,
//! widened when a counter would overflow. Example: values spanning 1..10^4 at
//! `α = 1%` take 466 bins, so 48 + 8 + 466 bytes while counts stay below 256
//! and 48 + 8 + 932 = 988 bytes below 65536.
//!
//! # Encoding
//!
//! [`Sketch::encode`] writes the exact state; integers are unsigned LEB128
//! varints (minimal length), offsets zigzag-encoded:
//!
//! ```text
//! u8       version (= 1)
//! f64 LE   relative_accuracy of the spec that wrote it
//! varint   max_bins of that spec
//! varint   zero count
//! 2 ×      store: negative (bins indexed by -index(|x|)), then positive:
//!   varint   number of bins k
//!   if k > 0:
//!     zigzag   index of the first bin
//!     varint   collapsed samples of this store (all in its first bin)
//!     k ×      varint count (first and last non-zero)
//! ```
//!
//! An empty sketch takes 13 bytes with `max_bins < 128`, 14 below 16384.
//! [`Sketch::decode`] with a different spec converts (see there).

use std::fmt;

/// Smallest accepted `relative_accuracy` (bin indexes must stay within ±2^29).
pub const MIN_RELATIVE_ACCURACY: f64 = 1e-6;
/// Largest accepted `relative_accuracy`.
pub const MAX_RELATIVE_ACCURACY: f64 = 0.5;
/// Smallest accepted `max_bins`.
pub const MIN_MAX_BINS: usize = 16;
/// Largest accepted `max_bins` (per store).
pub const MAX_MAX_BINS: usize = 1 << 24;

/// Version byte of [`Sketch::encode`].
const VERSION: u8 = 1;
/// `α' = α·(1 - SAFETY)`: the margin that absorbs floating-point rounding.
const SAFETY: f64 = 1e-4;

// Cubic interpolation of log2 on [1, 2): P(s) = A s³ + B s² + C s.
const A: f64 = 6.0 / 35.0;
const B: f64 = -3.0 / 5.0;
const C: f64 = 10.0 / 7.0;

const SIGN_MASK: u64 = 1 << 63;
const MANTISSA_MASK: u64 = (1 << 52) - 1;
const ONE_BITS: u64 = 0x3ff0_0000_0000_0000;
/// `f64::MIN_POSITIVE.to_bits()`: magnitudes with smaller bits are zero or subnormal.
const MIN_NORMAL_BITS: u64 = 1 << 52;

/// Errors of [`SketchSpec::new`] and [`Sketch::decode`].
#[derive(Debug, Clone, PartialEq)]
pub enum SketchError {
    /// `relative_accuracy` outside `[MIN_RELATIVE_ACCURACY, MAX_RELATIVE_ACCURACY]` or NaN.
    InvalidRelativeAccuracy(f64),
    /// `max_bins` outside `[MIN_MAX_BINS, MAX_MAX_BINS]`.
    InvalidMaxBins(u64),
    /// The encoded sketch ends early.
    Truncated,
    /// The encoded sketch starts with an unknown version byte.
    UnsupportedVersion(u8),
    /// The encoded sketch is not one [`Sketch::encode`] writes.
    Malformed(&'static str),
}

impl fmt::Display for SketchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvalidRelativeAccuracy(a) => write!(
                f,
                "sketch relative accuracy must be in [{MIN_RELATIVE_ACCURACY}, {MAX_RELATIVE_ACCURACY}], got {a}"
            ),
            Self::InvalidMaxBins(n) => write!(
                f,
                "sketch max bins must be an integer in [{MIN_MAX_BINS}, {MAX_MAX_BINS}], got {n}"
            ),
            Self::Truncated => f.write_str("encoded sketch is truncated"),
            Self::UnsupportedVersion(v) => {
                write!(
                    f,
                    "encoded sketch has unsupported version {v} (expected {VERSION})"
                )
            }
            Self::Malformed(what) => write!(f, "malformed encoded sketch: {what}"),
        }
    }
}

impl std::error::Error for SketchError {}

/// Shared, per-aggregator sketch parameters (not stored per sketch).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SketchSpec {
    relative_accuracy: f64,
    max_bins: usize,
    /// `m` of the module doc: bin index = floor(m · approx_log2(|x|)).
    multiplier: f64,
    /// Bin of `min_indexable` (the lowest bin).
    min_index: i32,
    /// Bin of `f64::MAX` (the highest bin).
    max_index: i32,
}

impl SketchSpec {
    /// `relative_accuracy` in `[1e-6, 0.5]` (e.g. `0.01`); `max_bins` in
    /// `[16, 2^24]`: the bound on the bins of ONE store (positive or negative).
    pub fn new(relative_accuracy: f64, max_bins: usize) -> Result<Self, SketchError> {
        if !(MIN_RELATIVE_ACCURACY..=MAX_RELATIVE_ACCURACY).contains(&relative_accuracy) {
            return Err(SketchError::InvalidRelativeAccuracy(relative_accuracy));
        }
        if !(MIN_MAX_BINS..=MAX_MAX_BINS).contains(&max_bins) {
            return Err(SketchError::InvalidMaxBins(max_bins as u64));
        }
        let a = relative_accuracy * (1.0 - SAFETY);
        // ln((1 + a) / (1 - a)) without cancellation for small a.
        let multiplier = 0.7 / (a.ln_1p() - (-a).ln_1p());
        let mut spec = SketchSpec {
            relative_accuracy,
            max_bins,
            multiplier,
            min_index: 0,
            max_index: i32::MAX,
        };
        spec.min_index = spec.index(MIN_NORMAL_BITS);
        spec.max_index = spec.index(f64::MAX.to_bits());
        debug_assert!(spec.max_index < 1 << 29 && spec.min_index > -(1 << 29));
        Ok(spec)
    }

    /// The relative accuracy `α` guaranteed for every indexable value.
    pub fn relative_accuracy(&self) -> f64 {
        self.relative_accuracy
    }

    /// The bound on the number of bins of one store.
    pub fn max_bins(&self) -> usize {
        self.max_bins
    }

    /// `f64::MIN_POSITIVE` (the smallest normal `f64`, about `2.2e-308`):
    /// values with a smaller magnitude (zeros, subnormals) are counted as zero
    /// and reported as `0`.
    pub fn min_indexable(&self) -> f64 {
        f64::MIN_POSITIVE
    }

    /// Bin index of a magnitude given by its bits (normal, i.e. `bits >=
    /// MIN_NORMAL_BITS`, and without sign bit). Non-finite input lands in
    /// the highest bin.
    #[inline(always)]
    fn index(&self, bits: u64) -> i32 {
        let e = ((bits >> 52) as i64 - 1023) as f64;
        let s = f64::from_bits((bits & MANTISSA_MASK) | ONE_BITS) - 1.0;
        let y = (((A * s + B) * s + C) * s + e) * self.multiplier;
        // floor(y), |y| < 2^31, without a libm call or a saturating cast:
        // adding 1.5·2^52 rounds y to an integer held in the low mantissa bits.
        const ROUND: f64 = 6_755_399_441_055_744.0;
        let r = y + ROUND;
        let i = r.to_bits() as i32 - i32::from(r - ROUND > y);
        i.min(self.max_index)
    }

    /// Reported magnitude of bin `i` (in `[min_index, max_index]`): the
    /// harmonic mean of its bounds, clamped to the normal `f64` range.
    fn bin_value(&self, i: i64) -> f64 {
        let lo = approx_exp2(i as f64 / self.multiplier);
        let hi = approx_exp2((i + 1) as f64 / self.multiplier);
        // 2·lo·hi/(lo + hi) without overflow.
        (lo * (2.0 / (1.0 + lo / hi))).min(f64::MAX)
    }
}

/// Inverse of `e + P(s)`, clamped to `[f64::MIN_POSITIVE, f64::MAX]`.
fn approx_exp2(y: f64) -> f64 {
    let e = y.floor();
    if e < -1022.0 {
        return f64::MIN_POSITIVE;
    }
    if e > 1023.0 {
        return f64::MAX;
    }
    let s = inverse_cubic(y - e);
    let power = f64::from_bits(((e as i64 + 1023) as u64) << 52);
    (power * (1.0 + s)).min(f64::MAX)
}

/// The `s` in `[0, 1]` with `P(s) = t`, for `t` in `[0, 1)` (Cardano's formula).
fn inverse_cubic(t: f64) -> f64 {
    const D0: f64 = B * B - 3.0 * A * C;
    const D1: f64 = 2.0 * B * B * B - 9.0 * A * B * C;
    let d1 = D1 - 27.0 * A * A * t;
    let p = ((d1 - (d1 * d1 - 4.0 * D0 * D0 * D0).sqrt()) / 2.0).cbrt();
    (-(B + p + D0 / p) / (3.0 * A)).clamp(0.0, 1.0)
}

/// A hint to load the cache line holding `at`; no effect on the program's
/// meaning (a no-op where the architecture has no such hint here).
#[inline(always)]
pub fn prefetch_read<T>(at: &T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch never faults and changes no memory; `at` is a valid reference anyway.
    #[allow(unused_unsafe)]
    unsafe {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        _mm_prefetch::<_MM_HINT_T0>(std::ptr::from_ref(at).cast::<i8>());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = at;
}

/// [`prefetch_read`] of every cache line `at` spans (a `T` of at most two lines).
#[inline(always)]
pub fn prefetch_lines<T>(at: &T) {
    const { assert!(size_of::<T>() > 0 && size_of::<T>() <= 64) };
    prefetch_read(at);
    let last = std::ptr::from_ref(at)
        .cast::<u8>()
        .wrapping_add(size_of::<T>() - 1);
    // SAFETY: `last` is the last byte of `*at`, a valid reference.
    prefetch_read(unsafe { &*last });
}

thread_local! {
    /// Scratch for [`with_summed_bins`], reused so that reading a window's
    /// quantiles allocates nothing.
    static SUMMED_BINS: std::cell::RefCell<Vec<u64>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Calls `f` with the first bin and the per-bin sums of one store (`store`)
/// over all `parts`: the counts of their merge when it folds nothing.
fn with_summed_bins<'a>(
    parts: &[&'a Sketch],
    store: fn(&'a Sketch) -> View<'a>,
    f: impl FnOnce(i64, &[u64]),
) {
    let views = || parts.iter().map(|&p| store(p)).filter(|v| !v.is_empty());
    let Some(lo) = views().map(|v| v.lo()).min() else {
        return;
    };
    let hi = views().map(|v| v.hi()).max().unwrap_or(lo);
    SUMMED_BINS.with_borrow_mut(|sums| {
        sums.clear();
        sums.resize((hi - lo + 1) as usize, 0);
        for v in views() {
            let at = &mut sums[(v.lo() - lo) as usize..];
            for (k, sum) in at.iter_mut().take(v.len()).enumerate() {
                *sum = sum.saturating_add(v.get(k));
            }
        }
        f(lo, sums);
    });
}

/// Smallest counter width (log2 of bytes) that holds `v`.
#[inline]
fn shift_for(v: u64) -> u8 {
    if v <= u64::from(u8::MAX) {
        0
    } else if v <= u64::from(u16::MAX) {
        1
    } else if v <= u64::from(u32::MAX) {
        2
    } else {
        3
    }
}

/// Largest count a counter of width `shift` holds.
#[inline]
fn max_for(shift: u8) -> u64 {
    u64::MAX >> (64 - (8 << shift))
}

/// Reads the counter at byte `at` of `bytes`.
#[inline(always)]
fn read(bytes: &[u8], shift: u8, at: usize) -> u64 {
    match shift {
        0 => u64::from(bytes[at]),
        1 => u64::from(u16::from_ne_bytes([bytes[at], bytes[at + 1]])),
        2 => {
            let mut b = [0; 4];
            b.copy_from_slice(&bytes[at..at + 4]);
            u64::from(u32::from_ne_bytes(b))
        }
        _ => {
            let mut b = [0; 8];
            b.copy_from_slice(&bytes[at..at + 8]);
            u64::from_ne_bytes(b)
        }
    }
}

/// Writes `v`, which must fit the width, at byte `at` of `bytes`.
#[inline(always)]
fn write(bytes: &mut [u8], shift: u8, at: usize, v: u64) {
    debug_assert!(v <= max_for(shift));
    match shift {
        0 => bytes[at] = v as u8,
        1 => bytes[at..at + 2].copy_from_slice(&(v as u16).to_ne_bytes()),
        2 => bytes[at..at + 4].copy_from_slice(&(v as u32).to_ne_bytes()),
        _ => bytes[at..at + 8].copy_from_slice(&v.to_ne_bytes()),
    }
}

/// Bytes before the counters in a store's block: its collapsed count (u64 LE).
const PREFIX: usize = 8;

/// A store's first bin and counter width, packed: bits 0..30 the first bin
/// (30-bit two's complement; bins are within ±2^29), bits 30..32 log2 of
/// the counter width in bytes. 0 for an empty store.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Meta(u32);

impl Meta {
    fn new(offset: i64, shift: u8) -> Meta {
        debug_assert!(offset.abs() < 1 << 29 && shift < 4);
        Meta((offset as u32 & 0x3fff_ffff) | (u32::from(shift) << 30))
    }

    #[inline]
    fn offset(self) -> i64 {
        i64::from(((self.0 << 2) as i32) >> 2)
    }

    #[inline]
    fn shift(self) -> u8 {
        (self.0 >> 30) as u8
    }
}

/// Read access to a collapsing-lowest store: dense counters over bins
/// `[lo, hi]`. The negative store uses bin `-index(|x|)`, so that in both
/// stores lower bins are lower values.
///
/// The block is empty for an empty store, else its collapsed count then the
/// counters (native endian). Invariants: the first and last counters are
/// non-zero; the width is the smallest that holds the largest counter; the
/// collapsed samples are all in the first bin. So equal contents compare equal.
#[derive(Clone, Copy)]
struct View<'a> {
    block: &'a [u8],
    meta: Meta,
}

impl View<'_> {
    #[inline]
    fn len(&self) -> usize {
        self.block.len().saturating_sub(PREFIX) >> self.meta.shift()
    }

    fn is_empty(&self) -> bool {
        self.block.is_empty()
    }

    #[inline]
    fn get(&self, k: usize) -> u64 {
        let shift = self.meta.shift();
        read(self.block, shift, PREFIX + (k << shift))
    }

    fn lo(&self) -> i64 {
        self.meta.offset()
    }

    fn hi(&self) -> i64 {
        self.lo() + self.len() as i64 - 1
    }

    fn collapsed(&self) -> u64 {
        match self.block.first_chunk::<PREFIX>() {
            Some(b) => u64::from_le_bytes(*b),
            None => 0,
        }
    }

    /// Count of bin `j`, 0 outside the range.
    #[inline]
    fn at(&self, j: i64) -> u64 {
        if j < self.lo() || j > self.hi() {
            0
        } else {
            self.get((j - self.lo()) as usize)
        }
    }

    fn total(&self) -> u64 {
        self.sum_below(i64::MAX)
    }

    /// Sum of the bins below `j`.
    fn sum_below(&self, j: i64) -> u64 {
        let end = j.saturating_sub(self.lo()).clamp(0, self.len() as i64) as usize;
        (0..end).fold(0u64, |t, k| t.saturating_add(self.get(k)))
    }

    /// Lowest bin that may not move down: the first bin once samples were folded.
    fn collapse_floor(&self) -> Option<i64> {
        (self.collapsed() > 0).then(|| self.lo())
    }
}

/// Lowest bin kept when a store spans `[lo, hi]` (before folding).
fn kept_lo(lo: i64, hi: i64, max_bins: usize, floor: Option<i64>) -> i64 {
    let by_bound = hi - (max_bins as i64 - 1);
    lo.max(by_bound).max(floor.unwrap_or(i64::MIN))
}

/// Write access to a store (see [`View`]).
struct Store<'a> {
    block: &'a mut Box<[u8]>,
    meta: &'a mut Meta,
}

impl Store<'_> {
    fn view(&self) -> View<'_> {
        View {
            block: self.block,
            meta: *self.meta,
        }
    }

    fn set(&mut self, k: usize, v: u64) {
        let shift = self.meta.shift();
        write(self.block, shift, PREFIX + (k << shift), v);
    }

    fn set_collapsed(&mut self, collapsed: u64) {
        if let Some(b) = self.block.first_chunk_mut::<PREFIX>() {
            *b = collapsed.to_le_bytes();
        }
    }

    /// Adds one sample to bin `idx`: the hot path.
    #[inline(always)]
    fn add_one(&mut self, idx: i32, max_bins: usize) {
        let meta = *self.meta;
        let shift = meta.shift();
        let k = (i64::from(idx) - meta.offset()) as u64;
        let len = self.block.len().saturating_sub(PREFIX) >> shift;
        if k < len as u64 {
            let at = PREFIX + ((k as usize) << shift);
            if shift == 0 {
                let c = &mut self.block[at];
                if *c != u8::MAX {
                    *c += 1;
                    return;
                }
            } else {
                let v = read(self.block, shift, at);
                if v < max_for(shift) {
                    write(self.block, shift, at, v + 1);
                    return;
                }
            }
        }
        self.add(i64::from(idx), 1, max_bins);
    }

    /// Adds `n` samples to bin `idx`, growing, widening and collapsing as needed.
    fn add(&mut self, idx: i64, n: u64, max_bins: usize) {
        if n == 0 {
            return;
        }
        let s = self.view();
        if s.is_empty() {
            let shift = shift_for(n);
            let mut block = vec![0u8; PREFIX + (1 << shift)].into_boxed_slice();
            write(&mut block, shift, PREFIX, n);
            *self.block = block;
            *self.meta = Meta::new(idx, shift);
            return;
        }
        let (lo, hi) = (s.lo(), s.hi());
        let new_hi = hi.max(idx);
        let kept = kept_lo(lo.min(idx), new_hi, max_bins, s.collapse_floor());
        let folded = s.sum_below(kept);
        // Folding makes every sample below `kept` (earlier folded ones included) collapsed.
        let mut collapsed = if kept > lo { folded } else { s.collapsed() };
        let target = if idx < kept {
            collapsed = collapsed.saturating_add(n);
            kept
        } else {
            idx
        };
        let kept_count = s.at(kept).saturating_add(folded);
        let target_count = if target == kept {
            kept_count.saturating_add(n)
        } else {
            s.at(target).saturating_add(n)
        };
        let shift = s
            .meta
            .shift()
            .max(shift_for(kept_count))
            .max(shift_for(target_count));
        self.relayout(kept, new_hi, shift);
        self.set(0, kept_count);
        self.set((target - kept) as usize, target_count);
        self.set_collapsed(collapsed);
    }

    /// Merges `other` (built with the same `max_bins`) into this store.
    fn merge(&mut self, other: View<'_>, max_bins: usize) {
        if other.is_empty() {
            return;
        }
        if self.view().is_empty() {
            *self.block = other.block.into();
            *self.meta = other.meta;
            return;
        }
        let s = self.view();
        let (alo, blo) = (s.lo(), other.lo());
        let new_hi = s.hi().max(other.hi());
        let floor = match (s.collapse_floor(), other.collapse_floor()) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        let kept = kept_lo(alo.min(blo), new_hi, max_bins, floor);
        let (fa, fb) = (s.sum_below(kept), other.sum_below(kept));
        // A store's folded samples are in its first bin: counted in its sum
        // below `kept` if that bin is folded now, else still in bin `kept`.
        let ca = if alo < kept { fa } else { s.collapsed() };
        let cb = if blo < kept { fb } else { other.collapsed() };
        let folded = fa.saturating_add(fb);
        let merged = |j: i64| {
            let v = s.at(j).saturating_add(other.at(j));
            if j == kept {
                v.saturating_add(folded)
            } else {
                v
            }
        };
        let max = (kept..=new_hi).map(merged).max().unwrap_or(0);
        let shift = s.meta.shift().max(shift_for(max));
        if kept == alo && new_hi == s.hi() && shift == s.meta.shift() {
            // In place: the bins `other` covers, and the first one.
            for j in blo.max(kept)..=other.hi() {
                let k = (j - kept) as usize;
                let v = self.view().get(k).saturating_add(other.at(j));
                self.set(k, v);
            }
            let v = self.view().get(0).saturating_add(fb);
            self.set(0, v);
        } else {
            let values: Vec<u64> = (kept..=new_hi).map(merged).collect();
            self.relayout(kept, new_hi, shift);
            for (k, v) in values.into_iter().enumerate() {
                self.set(k, v);
            }
        }
        self.set_collapsed(ca.saturating_add(cb));
    }

    /// Re-lays the counters over bins `[lo, hi]` with width `shift`, keeping
    /// the counts of the bins in both ranges, zeroing the others.
    fn relayout(&mut self, lo: i64, hi: i64, shift: u8) {
        let s = self.view();
        if lo == s.lo() && hi == s.hi() && shift == s.meta.shift() {
            return;
        }
        let len = (hi - lo + 1) as usize;
        if lo == s.lo() && shift == s.meta.shift() && hi > s.hi() {
            // Growing upwards (the common case): extend, often in place.
            let mut block = std::mem::take(self.block).into_vec();
            let size = PREFIX + (len << shift);
            block.reserve_exact(size - block.len());
            block.resize(size, 0);
            *self.block = block.into_boxed_slice();
            return;
        }
        let mut block = vec![0u8; PREFIX + (len << shift)].into_boxed_slice();
        block[..PREFIX].copy_from_slice(&s.collapsed().to_le_bytes());
        let (from, to) = (lo.max(s.lo()), hi.min(s.hi()));
        if from <= to {
            let src = (from - s.lo()) as usize;
            let dst = (from - lo) as usize;
            let n = (to - from + 1) as usize;
            let old = s.meta.shift();
            if shift == old {
                block[PREFIX + (dst << shift)..PREFIX + ((dst + n) << shift)].copy_from_slice(
                    &s.block[PREFIX + (src << shift)..PREFIX + ((src + n) << shift)],
                );
            } else {
                for k in 0..n {
                    let v = read(s.block, old, PREFIX + ((src + k) << old));
                    write(&mut block, shift, PREFIX + ((dst + k) << shift), v);
                }
            }
        }
        *self.block = block;
        *self.meta = Meta::new(lo, shift);
    }
}

/// A DDSketch: mergeable quantile estimates with relative error
/// [`SketchSpec::relative_accuracy`] (see the module doc for the exact
/// guarantee). `Default` is the empty sketch, which does not allocate.
/// 48 bytes inline plus, per non-empty store, 8 bytes and its counters.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sketch {
    /// All samples; the zero bucket is `count` minus the stores' totals.
    count: u64,
    /// Negative values, bin `-index(|x|)` (see [`View`]).
    neg: Box<[u8]>,
    /// Positive values, bin `index(x)`.
    pos: Box<[u8]>,
    neg_meta: Meta,
    pos_meta: Meta,
}

impl Sketch {
    fn neg(&self) -> View<'_> {
        View {
            block: &self.neg,
            meta: self.neg_meta,
        }
    }

    fn pos(&self) -> View<'_> {
        View {
            block: &self.pos,
            meta: self.pos_meta,
        }
    }

    fn neg_mut(&mut self) -> Store<'_> {
        Store {
            block: &mut self.neg,
            meta: &mut self.neg_meta,
        }
    }

    fn pos_mut(&mut self) -> Store<'_> {
        Store {
            block: &mut self.pos,
            meta: &mut self.pos_meta,
        }
    }

    fn zero(&self) -> u64 {
        self.count
            .saturating_sub(self.pos().total())
            .saturating_sub(self.neg().total())
    }

    /// Adds one sample. `value` must be finite (the caller checks; in release
    /// builds ±infinity and NaN land in the extreme bin and read as ±`f64::MAX`).
    /// Zeros, `-0.0` and subnormals go to the zero bucket.
    #[inline]
    pub fn add(&mut self, spec: &SketchSpec, value: f64) {
        debug_assert!(value.is_finite(), "sketch value must be finite");
        self.count = self.count.saturating_add(1);
        let bits = value.to_bits();
        let magnitude = bits & !SIGN_MASK;
        if magnitude < MIN_NORMAL_BITS {
            return;
        }
        let idx = spec.index(magnitude);
        if bits & SIGN_MASK == 0 {
            self.pos_mut().add_one(idx, spec.max_bins);
        } else {
            self.neg_mut().add_one(-idx, spec.max_bins);
        }
    }

    /// Hints the CPU to load the counter that [`add`](Self::add) of `value`
    /// will increment (the sketch itself should be in cache by now): a caller
    /// updating many sketches issues it a few samples ahead, so that their
    /// cache misses overlap instead of queueing. Changes nothing.
    #[inline(always)]
    pub fn prefetch(&self, spec: &SketchSpec, value: f64) {
        let bits = value.to_bits();
        let magnitude = bits & !SIGN_MASK;
        if magnitude < MIN_NORMAL_BITS {
            return;
        }
        let idx = spec.index(magnitude);
        let (block, meta, idx) = if bits & SIGN_MASK == 0 {
            (&self.pos, self.pos_meta, idx)
        } else {
            (&self.neg, self.neg_meta, -idx)
        };
        let k = (i64::from(idx) - meta.offset()) as u64;
        // Outside the store (k wrapped around): no counter to load.
        let at = (k << meta.shift()).wrapping_add(PREFIX as u64);
        if let Some(counter) = block.get(at as usize) {
            prefetch_read(counter);
        }
    }

    /// Adds `n` samples of value `value` (same rules as [`add`](Self::add)).
    pub fn add_n(&mut self, spec: &SketchSpec, value: f64, n: u64) {
        debug_assert!(value.is_finite(), "sketch value must be finite");
        self.count = self.count.saturating_add(n);
        let bits = value.to_bits();
        let magnitude = bits & !SIGN_MASK;
        if magnitude < MIN_NORMAL_BITS {
            return;
        }
        let idx = i64::from(spec.index(magnitude));
        if bits & SIGN_MASK == 0 {
            self.pos_mut().add(idx, n, spec.max_bins);
        } else {
            self.neg_mut().add(-idx, n, spec.max_bins);
        }
    }

    /// Adds the samples of `other`, which must have been built with the same
    /// spec. The result equals the sketch of all the samples (bin counts and
    /// [`collapsed`](Self::collapsed) included).
    pub fn merge(&mut self, spec: &SketchSpec, other: &Sketch) {
        self.count = self.count.saturating_add(other.count);
        self.pos_mut().merge(other.pos(), spec.max_bins);
        self.neg_mut().merge(other.neg(), spec.max_bins);
    }

    /// Number of samples.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// True when no sample was added.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Estimate of the sample of 0-based rank `floor(q·(count - 1))` in sorted
    /// order (so `q = 0` is the minimum's bin, `q = 1` the maximum's). `None`
    /// when the sketch is empty, or when `q` is NaN or outside `[0, 1]` (not
    /// clamped). Cost: one pass over the bins.
    pub fn quantile(&self, spec: &SketchSpec, q: f64) -> Option<f64> {
        if !(0.0..=1.0).contains(&q) || self.count == 0 {
            return None;
        }
        let last = self.count - 1;
        let rank = ((q * last as f64).floor() as u64).min(last);
        // From the lowest value up through the negative store ...
        let neg = self.neg();
        let mut seen = 0u64;
        for k in 0..neg.len() {
            seen = seen.saturating_add(neg.get(k));
            if rank < seen {
                return Some(-spec.bin_value(-(neg.lo() + k as i64)));
            }
        }
        // ... and from the highest value down through the positive store.
        let pos = self.pos();
        let from_top = last - rank;
        let mut seen = 0u64;
        for k in (0..pos.len()).rev() {
            seen = seen.saturating_add(pos.get(k));
            if from_top < seen {
                return Some(spec.bin_value(pos.lo() + k as i64));
            }
        }
        Some(0.0)
    }

    /// [`quantile`](Self::quantile) of each of `qs`, which must be ascending,
    /// appended to `out` (NaN where it would be `None`), in one pass over the
    /// bins instead of one per quantile.
    pub fn quantiles_into(&self, spec: &SketchSpec, qs: &[f64], out: &mut Vec<f64>) {
        Self::merged_quantiles_into(spec, &[self], qs, out);
    }

    /// [`quantiles_into`](Self::quantiles_into) of the merge of `parts` (all
    /// built with `spec`), without building it when the merge would fold no
    /// bin (no part has collapsed samples, and each store's bins over all
    /// parts fit `max_bins`): the bins are summed on the fly, so the result is
    /// the merged sketch's. Otherwise the parts are merged first.
    pub fn merged_quantiles_into(
        spec: &SketchSpec,
        parts: &[&Sketch],
        qs: &[f64],
        out: &mut Vec<f64>,
    ) {
        debug_assert!(qs.windows(2).all(|w| w[0] <= w[1]), "quantiles ascending");
        let count = parts.iter().fold(0u64, |n, p| n.saturating_add(p.count));
        if qs.is_empty() {
            return;
        }
        if count == 0 || qs.iter().any(|q| !(0.0..=1.0).contains(q)) {
            out.extend(qs.iter().map(|_| f64::NAN));
            return;
        }
        if parts.len() > 1 {
            let fits = |views: &mut dyn Iterator<Item = View<'_>>| {
                let (mut lo, mut hi, mut collapsed) = (i64::MAX, i64::MIN, false);
                for v in views.filter(|v| !v.is_empty()) {
                    (lo, hi) = (lo.min(v.lo()), hi.max(v.hi()));
                    collapsed |= v.collapsed() > 0;
                }
                !collapsed && (lo > hi || (hi - lo) < spec.max_bins as i64)
            };
            if !fits(&mut parts.iter().map(|p| p.neg()))
                || !fits(&mut parts.iter().map(|p| p.pos()))
            {
                let mut merged = parts[0].clone();
                for part in &parts[1..] {
                    merged.merge(spec, part);
                }
                return merged.quantiles_into(spec, qs, out);
            }
        }
        let last = count - 1;
        let from = out.len();
        out.extend(qs.iter().map(|_| 0.0)); // the zero bucket's value, unless found below
        let rank = |i: usize| ((qs[i] * last as f64).floor() as u64).min(last);
        let mut next = 0;
        let mut top = qs.len();
        // The lowest ranks from the lowest value up through the negative store
        // (its bins ascend with the value) ...
        with_summed_bins(parts, Sketch::neg, |lo, sums| {
            let mut seen = 0u64;
            let mut next_rank = rank(0);
            for (j, &c) in (lo..).zip(sums) {
                seen = seen.saturating_add(c);
                while next_rank < seen {
                    out[from + next] = -spec.bin_value(-j);
                    next += 1;
                    if next == top {
                        return;
                    }
                    next_rank = rank(next);
                }
            }
        });
        if next == top {
            return;
        }
        // ... the highest ones from the highest value down through the positive store; the
        // ranks in neither are in the zero bucket.
        with_summed_bins(parts, Sketch::pos, |lo, sums| {
            let mut seen = 0u64;
            let mut from_top = last - rank(top - 1);
            for (k, &c) in sums.iter().enumerate().rev() {
                let j = lo + k as i64;
                seen = seen.saturating_add(c);
                while from_top < seen {
                    out[from + top - 1] = spec.bin_value(j);
                    top -= 1;
                    if top == next {
                        return;
                    }
                    from_top = last - rank(top - 1);
                }
            }
        });
    }

    /// Samples that are not in their own bin because of `max_bins` (0 when the
    /// bound was never hit).
    pub fn collapsed(&self) -> u64 {
        self.pos()
            .collapsed()
            .saturating_add(self.neg().collapsed())
    }

    /// Number of samples at or below the highest bin holding collapsed samples
    /// (0 when nothing collapsed): every quantile whose rank
    /// `floor(q·(count - 1))` is at least this keeps the relative-accuracy
    /// guarantee.
    pub fn min_guaranteed_rank(&self) -> u64 {
        let (pos, neg) = (self.pos(), self.neg());
        if pos.collapsed() > 0 {
            self.count
                .saturating_sub(pos.total())
                .saturating_add(pos.get(0))
        } else if neg.collapsed() > 0 {
            neg.get(0)
        } else {
            0
        }
    }

    /// Number of bins held (both stores; the zero bucket not counted).
    pub fn bins(&self) -> usize {
        self.pos().len() + self.neg().len()
    }

    /// Heap bytes owned (the stores' blocks; their capacity is their length).
    /// Add `size_of::<Sketch>()` (48) for the total.
    pub fn heap_bytes(&self) -> usize {
        self.pos.len() + self.neg.len()
    }

    /// Appends the exact state, with the spec's accuracy and `max_bins` (format
    /// in the module doc).
    pub fn encode(&self, spec: &SketchSpec, out: &mut Vec<u8>) {
        out.push(VERSION);
        out.extend_from_slice(&spec.relative_accuracy.to_le_bytes());
        put_varint(out, spec.max_bins as u64);
        put_varint(out, self.zero());
        for store in [self.neg(), self.pos()] {
            put_varint(out, store.len() as u64);
            if !store.is_empty() {
                let o = store.lo();
                put_varint(out, ((o << 1) ^ (o >> 63)) as u64);
                put_varint(out, store.collapsed());
                for k in 0..store.len() {
                    put_varint(out, store.get(k));
                }
            }
        }
    }

    /// Decodes bytes written by [`encode`](Self::encode).
    ///
    /// * Written with the same spec: the identical sketch (equal, and encoding
    ///   to the same bytes).
    /// * Written with another `relative_accuracy` or `max_bins`: converted,
    ///   adding each bin's reported value with its count into a sketch of
    ///   `spec` (collapsing if `spec.max_bins` is smaller). With a different
    ///   accuracy every value is then only within about `α_old + α_new`
    ///   (exactly `α_old + α_new + α_old·α_new`) of its sample; a different
    ///   `max_bins` alone changes no value. Folded samples stay counted in
    ///   [`collapsed`](Self::collapsed).
    ///
    /// Truncated, malformed or hostile input gives an error, never a panic;
    /// memory is bounded by 8 bytes per input byte (and by `spec.max_bins`).
    pub fn decode(spec: &SketchSpec, bytes: &[u8]) -> Result<Sketch, SketchError> {
        let mut r = Reader { bytes, pos: 0 };
        let version = r.byte()?;
        if version != VERSION {
            return Err(SketchError::UnsupportedVersion(version));
        }
        let mut accuracy = [0u8; 8];
        for b in &mut accuracy {
            *b = r.byte()?;
        }
        let accuracy = f64::from_le_bytes(accuracy);
        let max_bins = r.varint()?;
        let written = usize::try_from(max_bins)
            .ok()
            .and_then(|m| SketchSpec::new(accuracy, m).ok())
            .ok_or(SketchError::Malformed(
                "invalid relative accuracy or max bins",
            ))?;
        let zero = r.varint()?;
        let neg = DecodedStore::read(&mut r, &written, true)?;
        let pos = DecodedStore::read(&mut r, &written, false)?;
        if r.pos != bytes.len() {
            return Err(SketchError::Malformed("trailing bytes"));
        }
        let count = zero
            .checked_add(neg.total)
            .and_then(|c| c.checked_add(pos.total))
            .ok_or(SketchError::Malformed("total count overflows"))?;
        let mut sketch = Sketch {
            count,
            ..Sketch::default()
        };
        let same_mapping = written.relative_accuracy.to_bits() == spec.relative_accuracy.to_bits();
        if same_mapping && written.max_bins == spec.max_bins {
            (sketch.neg, sketch.neg_meta) = neg.block();
            (sketch.pos, sketch.pos_meta) = pos.block();
            return Ok(sketch);
        }
        for (src, sign) in [(&neg, -1), (&pos, 1)] {
            let mut dst = if sign < 0 {
                sketch.neg_mut()
            } else {
                sketch.pos_mut()
            };
            // Bins in ascending order, so the first (which holds the folded
            // samples) goes first and later ones fold it if needed.
            for (k, &n) in src.counts.iter().enumerate() {
                let j = i64::from(src.offset) + k as i64;
                let idx = if same_mapping {
                    j
                } else {
                    let v = written.bin_value(sign * j);
                    sign * i64::from(spec.index(v.to_bits()))
                };
                dst.add(idx, n, spec.max_bins);
                if k == 0 {
                    dst.set_collapsed(src.collapsed);
                }
            }
        }
        Ok(sketch)
    }
}

struct DecodedStore {
    offset: i32,
    counts: Vec<u64>,
    collapsed: u64,
    total: u64,
}

impl DecodedStore {
    /// The store's block and meta (see [`View`]).
    fn block(&self) -> (Box<[u8]>, Meta) {
        if self.counts.is_empty() {
            return (Box::default(), Meta::default());
        }
        let shift = shift_for(self.counts.iter().copied().max().unwrap_or(0));
        let mut block = vec![0u8; PREFIX + (self.counts.len() << shift)].into_boxed_slice();
        block[..PREFIX].copy_from_slice(&self.collapsed.to_le_bytes());
        for (k, &v) in self.counts.iter().enumerate() {
            write(&mut block, shift, PREFIX + (k << shift), v);
        }
        (block, Meta::new(i64::from(self.offset), shift))
    }

    fn read(r: &mut Reader<'_>, spec: &SketchSpec, negative: bool) -> Result<Self, SketchError> {
        let len = r.varint()?;
        if len == 0 {
            return Ok(DecodedStore {
                offset: 0,
                counts: Vec::new(),
                collapsed: 0,
                total: 0,
            });
        }
        // Each count takes at least one byte: bounds the allocation by the input.
        if len > spec.max_bins as u64 {
            return Err(SketchError::Malformed("more bins than max bins"));
        }
        if len > (r.bytes.len() - r.pos) as u64 {
            return Err(SketchError::Truncated);
        }
        let z = r.varint()?;
        let offset = (z >> 1) as i64 ^ -((z & 1) as i64);
        let (min, max) = if negative {
            (-i64::from(spec.max_index), -i64::from(spec.min_index))
        } else {
            (i64::from(spec.min_index), i64::from(spec.max_index))
        };
        if offset < min || offset > max || offset + len as i64 - 1 > max {
            return Err(SketchError::Malformed("bin index out of range"));
        }
        let collapsed = r.varint()?;
        let mut counts = Vec::with_capacity(len as usize);
        let mut total = 0u64;
        for _ in 0..len {
            let c = r.varint()?;
            total = total
                .checked_add(c)
                .ok_or(SketchError::Malformed("total count overflows"))?;
            counts.push(c);
        }
        if counts[0] == 0 || counts[counts.len() - 1] == 0 {
            return Err(SketchError::Malformed("empty first or last bin"));
        }
        if collapsed > counts[0] {
            return Err(SketchError::Malformed(
                "more collapsed samples than the first bin holds",
            ));
        }
        Ok(DecodedStore {
            offset: offset as i32,
            counts,
            collapsed,
            total,
        })
    }
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn byte(&mut self) -> Result<u8, SketchError> {
        let b = *self.bytes.get(self.pos).ok_or(SketchError::Truncated)?;
        self.pos += 1;
        Ok(b)
    }

    /// A minimal-length LEB128 `u64`.
    fn varint(&mut self) -> Result<u64, SketchError> {
        let mut v = 0u64;
        let mut shift = 0u32;
        loop {
            let b = self.byte()?;
            if shift == 63 && b > 1 {
                return Err(SketchError::Malformed("varint overflows 64 bits"));
            }
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                if b == 0 && shift > 0 {
                    return Err(SketchError::Malformed("varint not minimal"));
                }
                return Ok(v);
            }
            shift += 7;
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn quantiles_in_one_pass_equal_each_quantile() {
        use super::*;
        let spec = SketchSpec::new(0.01, 64).expect("spec");
        let mut seed = 7u64;
        for n in [1usize, 2, 3, 10, 1000] {
            let mut sketch = Sketch::default();
            for _ in 0..n {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let u = (seed >> 11) as f64 / (1u64 << 53) as f64;
                // Mixed signs, zeros, and a range wide enough to collapse at 64 bins.
                let v = match seed % 7 {
                    0 => 0.0,
                    1 | 2 => -(10f64.powf(6.0 * u)),
                    _ => 10f64.powf(6.0 * u - 2.0),
                };
                sketch.add(&spec, v);
            }
            let qs = [0.0, 0.001, 0.1, 0.25, 0.5, 0.5, 0.75, 0.9, 0.99, 1.0];
            let mut one_pass = vec![];
            sketch.quantiles_into(&spec, &qs, &mut one_pass);
            let each: Vec<f64> = qs
                .iter()
                .map(|&q| sketch.quantile(&spec, q).expect("q"))
                .collect();
            assert_eq!(one_pass, each, "n={n}");
        }
        let mut out = vec![];
        Sketch::default().quantiles_into(&spec, &[0.5, 0.9], &mut out);
        assert!(out.iter().all(|v| v.is_nan()) && out.len() == 2);
    }

    #[test]
    fn quantiles_of_parts_equal_those_of_their_merge() {
        use super::*;
        let mut seed = 11u64;
        let mut next = || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 11) as f64 / (1u64 << 53) as f64
        };
        // 64 bins: wide parts collapse (the merge path); 4096: they are summed on the fly.
        for max_bins in [64, 4096] {
            let spec = SketchSpec::new(0.01, max_bins).expect("spec");
            for trial in 0..200 {
                let parts: Vec<Sketch> = (0..1 + trial % 5)
                    .map(|p| {
                        let mut sketch = Sketch::default();
                        for _ in 0..(trial * 7 + p * 13) % 50 {
                            let u = next();
                            let decades = if trial % 3 == 0 { 8.0 } else { 2.0 };
                            let v = match (next() * 6.0) as u32 {
                                0 => 0.0,
                                1 => -(10f64.powf(decades * u)),
                                _ => 10f64.powf(decades * u - 1.0),
                            };
                            sketch.add(&spec, v);
                        }
                        sketch
                    })
                    .collect();
                let mut merged = parts[0].clone();
                for part in &parts[1..] {
                    merged.merge(&spec, part);
                }
                let qs = [0.0, 0.01, 0.3, 0.5, 0.5, 0.9, 0.99, 1.0];
                let (mut want, mut got) = (vec![], vec![]);
                merged.quantiles_into(&spec, &qs, &mut want);
                let refs: Vec<&Sketch> = parts.iter().collect();
                Sketch::merged_quantiles_into(&spec, &refs, &qs, &mut got);
                let same = want
                    .iter()
                    .zip(&got)
                    .all(|(a, b)| a == b || (a.is_nan() && b.is_nan()));
                assert!(
                    same,
                    "max_bins {max_bins} trial {trial}: {got:?} vs {want:?}"
                );
            }
        }
    }

    use super::*;
    use proptest::prelude::*;

    const QS: [f64; 8] = [0.0, 0.01, 0.25, 0.5, 0.9, 0.99, 0.999, 1.0];

    fn spec(alpha: f64, max_bins: usize) -> SketchSpec {
        SketchSpec::new(alpha, max_bins).unwrap()
    }

    fn sketch_of(spec: &SketchSpec, values: &[f64]) -> Sketch {
        let mut s = Sketch::default();
        for &v in values {
            s.add(spec, v);
        }
        s
    }

    fn sorted(values: &[f64]) -> Vec<f64> {
        let mut v = values.to_vec();
        v.sort_by(f64::total_cmp);
        v
    }

    /// The rank `quantile` uses.
    fn rank(n: usize, q: f64) -> usize {
        ((q * (n - 1) as f64).floor() as usize).min(n - 1)
    }

    /// `est` is within `alpha` of `exact` (0 for non-indexable `exact`).
    fn within(alpha: f64, est: f64, exact: f64) -> bool {
        if exact.abs() < f64::MIN_POSITIVE {
            est == 0.0
        } else {
            (est - exact).abs() <= alpha * exact.abs() * (1.0 + 1e-12)
        }
    }

    /// Checks every q of `QS` and `extra` against the sorted samples, for the
    /// ranks from `min_rank` on; below it the estimate must not be too low.
    fn check_quantiles(
        spec: &SketchSpec,
        alpha: f64,
        s: &Sketch,
        values: &[f64],
        extra: &[f64],
    ) -> Result<(), TestCaseError> {
        let sorted = sorted(values);
        let min_rank = s.min_guaranteed_rank() as usize;
        prop_assert_eq!(s.count(), values.len() as u64);
        for &q in QS.iter().chain(extra) {
            let r = rank(sorted.len(), q);
            let exact = if sorted[r].abs() < f64::MIN_POSITIVE {
                0.0
            } else {
                sorted[r]
            };
            let est = s.quantile(spec, q).unwrap();
            if r >= min_rank {
                prop_assert!(
                    within(alpha, est, exact),
                    "q={} rank={} est={:e} exact={:e} alpha={}",
                    q,
                    r,
                    est,
                    exact,
                    alpha
                );
            } else {
                prop_assert!(
                    est >= exact - alpha * exact.abs() * (1.0 + 1e-12),
                    "collapsed rank {} under-estimated: est={:e} exact={:e}",
                    r,
                    est,
                    exact
                );
            }
        }
        Ok(())
    }

    fn encoded(spec: &SketchSpec, s: &Sketch) -> Vec<u8> {
        let mut out = Vec::new();
        s.encode(spec, &mut out);
        out
    }

    /// Deterministic uniform draws in [0, 1) (splitmix64).
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> f64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            (z >> 11) as f64 / (1u64 << 53) as f64
        }
    }

    fn log_uniform(n: usize, lo: f64, hi: f64, seed: u64) -> Vec<f64> {
        let mut rng = Rng(seed);
        (0..n)
            .map(|_| (lo.ln() + rng.next() * (hi.ln() - lo.ln())).exp())
            .collect()
    }

    // ---- spec and mapping ----

    #[test]
    fn spec_rejects_bad_parameters() {
        for a in [0.0, -0.01, 0.5000001, 1e-7, f64::NAN, f64::INFINITY] {
            let err = SketchSpec::new(a, 2048).unwrap_err();
            assert_eq!(
                err.to_string(),
                format!("sketch relative accuracy must be in [0.000001, 0.5], got {a}")
            );
        }
        for n in [0, 15, MAX_MAX_BINS + 1] {
            let err = SketchSpec::new(0.01, n).unwrap_err();
            assert!(err.to_string().contains("max bins"), "{err}");
        }
        let s = spec(0.01, 16);
        assert_eq!(s.relative_accuracy(), 0.01);
        assert_eq!(s.max_bins(), 16);
        assert_eq!(s.min_indexable(), f64::MIN_POSITIVE);
        spec(MIN_RELATIVE_ACCURACY, MAX_MAX_BINS);
        spec(MAX_RELATIVE_ACCURACY, MIN_MAX_BINS);
    }

    /// The value reported for the bin of `x` (positive, normal).
    fn reported(spec: &SketchSpec, x: f64) -> f64 {
        spec.bin_value(i64::from(spec.index(x.to_bits())))
    }

    fn assert_mapping(spec: &SketchSpec, x: f64) {
        let i = spec.index(x.to_bits());
        assert!(spec.min_index <= i && i <= spec.max_index, "{x:e} -> {i}");
        let v = reported(spec, x);
        assert!(
            (v - x).abs() <= spec.relative_accuracy * x,
            "alpha={} x={x:e} bin={i} reported={v:e} error={:e}",
            spec.relative_accuracy,
            ((v - x) / x).abs()
        );
    }

    #[test]
    fn mapping_holds_at_bin_boundaries_and_range_ends() {
        for alpha in [1e-6, 1e-4, 0.001, 0.01, 0.05, 0.2, 0.5] {
            let sp = spec(alpha, 2048);
            let mut rng = Rng(alpha.to_bits());
            let span = (sp.max_index - sp.min_index) as f64;
            for _ in 0..2000 {
                let i = sp.min_index + 1 + (rng.next() * (span - 1.0)) as i32;
                let lo = approx_exp2(f64::from(i) / sp.multiplier);
                for x in [lo.next_down(), lo, lo.next_up()] {
                    assert_mapping(&sp, x);
                }
            }
            let mut x = f64::MIN_POSITIVE;
            let mut y = f64::MAX;
            for _ in 0..1000 {
                assert_mapping(&sp, x);
                assert_mapping(&sp, y);
                x = x.next_up();
                y = y.next_down();
            }
            for e in -1022..=1023 {
                let p = 2f64.powi(e);
                assert_mapping(&sp, p);
                assert_mapping(&sp, p.next_down().max(f64::MIN_POSITIVE));
            }
            assert_eq!(sp.index(f64::MAX.to_bits()), sp.max_index);
            assert_eq!(sp.index(f64::INFINITY.to_bits()), sp.max_index);
            assert_eq!(sp.index(f64::NAN.to_bits()), sp.max_index);
        }
    }

    #[test]
    fn inverse_cubic_inverts_the_polynomial() {
        for k in 0..=1000 {
            let s = f64::from(k) / 1000.0;
            let t = ((A * s + B) * s + C) * s;
            if t < 1.0 {
                assert!((inverse_cubic(t) - s).abs() < 1e-14, "s={s}");
            }
        }
    }

    // ---- sketch basics ----

    #[test]
    fn empty_sketch() {
        let sp = spec(0.01, 2048);
        let s = Sketch::default();
        assert_eq!(std::mem::size_of::<Sketch>(), 48);
        assert_eq!(s.count(), 0);
        assert!(s.is_empty());
        assert_eq!(s.quantile(&sp, 0.5), None);
        assert_eq!(s.collapsed(), 0);
        assert_eq!(s.min_guaranteed_rank(), 0);
        assert_eq!(s.heap_bytes(), 0);
        assert_eq!(s.bins(), 0);
        let bytes = encoded(&sp, &s);
        assert_eq!(bytes.len(), 14); // max_bins 2048 takes 2 bytes
        assert_eq!(Sketch::decode(&sp, &bytes).unwrap(), s);
        let mut m = Sketch::default();
        m.merge(&sp, &s);
        assert_eq!(m, s);
    }

    #[test]
    fn single_samples() {
        let sp = spec(0.01, 2048);
        let values = [
            1.0,
            -1.0,
            0.0,
            -0.0,
            5e-324,
            -5e-324,
            f64::MIN_POSITIVE / 2.0,
            f64::MIN_POSITIVE,
            -f64::MIN_POSITIVE,
            f64::MAX,
            -f64::MAX,
            123.456,
            -1e-300,
            1e300,
        ];
        for v in values {
            let s = sketch_of(&sp, &[v]);
            assert_eq!(s.count(), 1);
            for q in QS {
                let est = s.quantile(&sp, q).unwrap();
                assert!(within(0.01, est, v), "v={v:e} est={est:e}");
                if v.abs() < f64::MIN_POSITIVE {
                    assert_eq!(est.to_bits(), 0.0f64.to_bits());
                } else {
                    assert_eq!(est.is_sign_negative(), v < 0.0);
                }
            }
            assert_eq!(s.bins(), usize::from(v.abs() >= f64::MIN_POSITIVE));
        }
    }

    #[test]
    fn constant_values_and_extreme_quantiles() {
        let sp = spec(0.01, 2048);
        let s = sketch_of(&sp, &[42.0; 1000]);
        assert_eq!(s.bins(), 1);
        for q in QS {
            assert!(within(0.01, s.quantile(&sp, q).unwrap(), 42.0));
        }
        let values: Vec<f64> = (1..=100).map(f64::from).collect();
        let s = sketch_of(&sp, &values);
        assert!(within(0.01, s.quantile(&sp, 0.0).unwrap(), 1.0));
        assert!(within(0.01, s.quantile(&sp, 1.0).unwrap(), 100.0));
        assert!(within(0.01, s.quantile(&sp, 0.5).unwrap(), 50.0)); // rank floor(0.5·99) = 49
        for q in [-0.0001, 1.0001, f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            assert_eq!(s.quantile(&sp, q), None, "q={q}");
        }
        assert_eq!(s.quantile(&sp, -0.0), s.quantile(&sp, 0.0));
    }

    #[test]
    fn mixed_signs_and_zeros_walk_in_value_order() {
        let sp = spec(0.01, 2048);
        let values = [-1000.0, -1.0, -0.0, 0.0, 1e-320, 2.0, 3000.0];
        let s = sketch_of(&sp, &values);
        for (r, &v) in values.iter().enumerate() {
            let q = r as f64 / 6.0;
            assert_eq!(rank(7, q), r);
            assert!(within(0.01, s.quantile(&sp, q).unwrap(), v));
        }
    }

    #[test]
    fn counters_widen_in_place() {
        let sp = spec(0.01, 2048);
        let header = PREFIX;
        let mut s = Sketch::default();
        s.add(&sp, 1.0);
        for _ in 0..70_000 {
            s.add(&sp, 1000.0);
        }
        let bins = s.bins();
        assert_eq!(s.heap_bytes(), header + 4 * bins); // 70_001 > 65535: 4-byte counters
        assert_eq!(s.pos().get(0), 1);
        assert_eq!(s.pos().get(bins - 1), 70_000);
        assert_eq!(s.count(), 70_001);
        assert!(within(0.01, s.quantile(&sp, 0.0).unwrap(), 1.0));
        assert!(within(0.01, s.quantile(&sp, 1.0).unwrap(), 1000.0));

        let mut t = Sketch::default();
        for _ in 0..300 {
            t.add(&sp, -5.0);
        }
        assert_eq!(t.heap_bytes(), header + 2);
        t.add_n(&sp, -5.0, u64::from(u32::MAX));
        assert_eq!(t.heap_bytes(), header + 8);
        assert_eq!(t.count(), 300 + u64::from(u32::MAX));
        assert!(within(0.01, t.quantile(&sp, 0.5).unwrap(), -5.0));
        // Same state however the counts arrived.
        let mut u = Sketch::default();
        u.add_n(&sp, -5.0, 300 + u64::from(u32::MAX));
        assert_eq!(t, u);
        assert_eq!(Sketch::decode(&sp, &encoded(&sp, &t)).unwrap(), t);
    }

    #[test]
    fn collapse_keeps_high_quantiles() {
        let sp = spec(0.01, 16);
        let values: Vec<f64> = (1..=1000).map(f64::from).collect();
        let s = sketch_of(&sp, &values);
        let pos = s.pos();
        assert_eq!(pos.len(), 16);
        // Collapsed: exactly the samples whose own bin is below the lowest kept one.
        let below = values
            .iter()
            .filter(|v| i64::from(sp.index(v.to_bits())) < pos.lo())
            .count() as u64;
        assert!(below > 700, "{below}");
        assert_eq!(s.collapsed(), below);
        assert_eq!(s.min_guaranteed_rank(), pos.get(0));
        let c = s.min_guaranteed_rank() as usize;
        for r in 0..values.len() {
            let q = r as f64 / 999.0;
            let est = s.quantile(&sp, q).unwrap();
            if rank(1000, q) >= c {
                assert!(within(0.01, est, values[rank(1000, q)]), "r={r}");
            } else {
                // Folded samples read high; the first kept bin's own samples are within alpha.
                let exact = values[rank(1000, q)];
                assert!(est > exact || within(0.01, est, exact));
            }
        }
        // Any insertion order, and merging in pieces, give the same sketch.
        let rev: Vec<f64> = values.iter().rev().copied().collect();
        assert_eq!(sketch_of(&sp, &rev), s);
        let mut m = sketch_of(&sp, &values[500..]);
        m.merge(&sp, &sketch_of(&sp, &values[..500]));
        assert_eq!(m, s);

        // Negative values: the most negative collapse; the highest (closest to 0) are kept.
        let neg: Vec<f64> = values.iter().map(|v| -v).collect();
        let s = sketch_of(&sp, &neg);
        let first = s.neg().lo();
        let below = values
            .iter()
            .filter(|v| -i64::from(sp.index(v.to_bits())) < first)
            .count() as u64;
        assert_eq!(below, 999); // only -1 is within 16 bins of the top
        assert_eq!(s.collapsed(), below);
        let sorted = sorted(&neg);
        let c = s.min_guaranteed_rank() as usize;
        assert_eq!(c as u64, s.neg().get(0));
        assert!(within(0.01, s.quantile(&sp, 1.0).unwrap(), -1.0));
        for r in 0..1000 {
            let q = r as f64 / 999.0;
            let est = s.quantile(&sp, q).unwrap();
            let exact = sorted[rank(1000, q)];
            if rank(1000, q) >= c {
                assert!(within(0.01, est, exact), "r={r}");
            } else {
                assert!(est > exact || within(0.01, est, exact));
            }
        }
    }

    #[test]
    fn collapsed_store_never_extends_below_its_folded_bin() {
        // Converting to a larger max_bins keeps the folded samples in the first bin.
        let small = spec(0.01, 16);
        let big = spec(0.01, 4096);
        let s = sketch_of(&small, &(1..=1000).map(f64::from).collect::<Vec<_>>());
        let mut t = Sketch::decode(&big, &encoded(&small, &s)).unwrap();
        assert_eq!(t.collapsed(), s.collapsed());
        let first = t.pos().lo();
        t.add(&big, 0.001);
        assert_eq!(t.pos().lo(), first);
        assert_eq!(t.collapsed(), s.collapsed() + 1);
        assert_eq!(Sketch::decode(&big, &encoded(&big, &t)).unwrap(), t);
    }

    // ---- memory ----

    #[test]
    fn four_decades_at_one_percent_fit_in_one_kib() {
        let sp = spec(0.01, 2048);
        let values = log_uniform(100_000, 1.0, 1e4, 7);
        let s = sketch_of(&sp, &values);
        assert!((460..=470).contains(&s.bins()), "{}", s.bins());
        assert!(s.heap_bytes() + std::mem::size_of::<Sketch>() <= 1024);
        // 1-byte counters while counts stay under 256.
        let small = sketch_of(&sp, &values[..10_000]);
        assert_eq!(small.heap_bytes(), PREFIX + small.bins());
        assert!(small.heap_bytes() + std::mem::size_of::<Sketch>() <= 560);
        // Small sketches stay small.
        // Three samples: the bins between them (35 per factor of 2 at 1%).
        let span = sp.index(3f64.to_bits()) - sp.index(1f64.to_bits()) + 1;
        assert_eq!(span, 56);
        assert_eq!(
            sketch_of(&sp, &[1.0, 2.0, 3.0]).heap_bytes(),
            PREFIX + span as usize
        );
        assert_eq!(sketch_of(&sp, &[1.0]).heap_bytes(), PREFIX + 1);
    }

    // ---- encoding ----

    fn sample_sketch(sp: &SketchSpec) -> Sketch {
        let mut s = sketch_of(sp, &log_uniform(5000, 1e-3, 1e9, 3));
        let neg: Vec<f64> = log_uniform(300, 1e-2, 1e2, 4).iter().map(|v| -v).collect();
        for v in neg {
            s.add(sp, v);
        }
        s.add(sp, 0.0);
        s.add(sp, -0.0);
        s.add_n(sp, 7.0, 100_000);
        s
    }

    #[test]
    fn encode_decode_round_trip() {
        for sp in [spec(0.01, 2048), spec(0.01, 16), spec(0.001, 64)] {
            let s = sample_sketch(&sp);
            let bytes = encoded(&sp, &s);
            assert_eq!(bytes[0], VERSION);
            let d = Sketch::decode(&sp, &bytes).unwrap();
            assert_eq!(d, s);
            assert_eq!(encoded(&sp, &d), bytes);
            assert_eq!(d.collapsed(), s.collapsed());
            assert_eq!(sp.max_bins() == 2048, s.collapsed() == 0);
        }
    }

    #[test]
    fn decode_with_another_spec_converts() {
        let values: Vec<f64> = log_uniform(3000, 1e-3, 1e6, 5)
            .into_iter()
            .enumerate()
            .map(|(i, v)| if i % 3 == 0 { -v } else { v })
            .chain([0.0, 0.0])
            .collect();
        for (a1, a2) in [(0.01, 0.05), (0.01, 0.001), (0.05, 0.01), (0.001, 0.001)] {
            let (s1, s2) = (spec(a1, 1 << 16), spec(a2, 1 << 15));
            let s = sketch_of(&s1, &values);
            let d = Sketch::decode(&s2, &encoded(&s1, &s)).unwrap();
            assert_eq!(d.count(), s.count());
            assert_eq!(d.collapsed(), 0);
            check_quantiles(&s2, a1 + a2 + a1 * a2, &d, &values, &[]).unwrap();
            // Re-encoding with the new spec is stable.
            let e = encoded(&s2, &d);
            assert_eq!(Sketch::decode(&s2, &e).unwrap(), d);
        }
        // Same accuracy, smaller max_bins: the same bins, collapsed as if built so.
        let (wide, narrow) = (spec(0.01, 4096), spec(0.01, 32));
        let s = sketch_of(&wide, &values);
        let d = Sketch::decode(&narrow, &encoded(&wide, &s)).unwrap();
        assert_eq!(d, sketch_of(&narrow, &values));
        assert!(d.collapsed() > 0);
    }

    fn header(sp: &SketchSpec) -> Vec<u8> {
        let mut out = vec![VERSION];
        out.extend_from_slice(&sp.relative_accuracy.to_le_bytes());
        put_varint(&mut out, sp.max_bins as u64);
        out
    }

    #[test]
    fn decode_rejects_bad_input() {
        let sp = spec(0.01, 2048);
        let bytes = encoded(&sp, &sample_sketch(&sp));
        for n in 0..bytes.len() {
            assert!(Sketch::decode(&sp, &bytes[..n]).is_err(), "prefix {n}");
        }
        assert_eq!(Sketch::decode(&sp, &[]), Err(SketchError::Truncated));
        let mut v2 = bytes.clone();
        v2[0] = 2;
        assert_eq!(
            Sketch::decode(&sp, &v2),
            Err(SketchError::UnsupportedVersion(2))
        );
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert!(Sketch::decode(&sp, &trailing).is_err());

        let h = header(&sp);
        let cases: Vec<(Vec<u8>, &str)> = vec![
            // zero count, huge bin count for the negative store
            (
                [&h[..], &[0, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x40]].concat(),
                "max bins",
            ),
            // bin count within max_bins but beyond the input
            ([&h[..], &[0, 0x80, 0x10, 0]].concat(), "truncated"),
            // 11-byte varint
            ([&h[..], &[0xff; 10], &[1]].concat(), "varint"),
            // non-minimal varint
            ([&h[..], &[0x80, 0x00, 0, 0]].concat(), "varint"),
            // first bin empty
            ([&h[..], &[0, 0, 2, 0, 0, 0, 1]].concat(), "empty"),
            // more collapsed than the first bin
            ([&h[..], &[0, 0, 1, 0, 5, 1]].concat(), "collapsed"),
            // bin index out of range
            (
                [&h[..], &[0, 0, 1, 0xfe, 0xff, 0xff, 0xff, 0x0f, 0, 1]].concat(),
                "range",
            ),
            // total overflow
            (
                [
                    &h[..],
                    &[
                        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01, 0, 1, 0, 0, 1,
                    ],
                ]
                .concat(),
                "overflow",
            ),
        ];
        for (bytes, what) in cases {
            let err = Sketch::decode(&sp, &bytes).unwrap_err();
            assert!(err.to_string().contains(what), "{what}: {err}");
        }
        // Hostile spec in the header.
        let mut bad = vec![VERSION];
        bad.extend_from_slice(&f64::NAN.to_le_bytes());
        bad.extend_from_slice(&[16, 0, 0, 0]);
        assert!(Sketch::decode(&sp, &bad).is_err());
        let mut bad = vec![VERSION];
        bad.extend_from_slice(&0.01f64.to_le_bytes());
        put_varint(&mut bad, u64::MAX);
        bad.extend_from_slice(&[0, 0, 0]);
        assert!(Sketch::decode(&sp, &bad).is_err());
        // Deterministic garbage.
        let mut rng = Rng(99);
        for _ in 0..2000 {
            let n = (rng.next() * 64.0) as usize;
            let mut g: Vec<u8> = (0..n).map(|_| (rng.next() * 256.0) as u8).collect();
            if rng.next() < 0.5 {
                g.splice(0..0, h.iter().copied());
            }
            let _ = Sketch::decode(&sp, &g);
        }
    }

    // ---- property tests ----

    fn lognormal(mu: f64, sigma: f64, u1: f64, u2: f64) -> f64 {
        let z = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
        (mu + sigma * z).exp()
    }

    fn finite() -> impl Strategy<Value = f64> {
        use proptest::num::f64::{NEGATIVE, NORMAL, POSITIVE, SUBNORMAL, ZERO};
        prop_oneof![
            (POSITIVE | NEGATIVE | NORMAL | SUBNORMAL | ZERO),
            Just(f64::MAX),
            Just(-f64::MAX),
            Just(f64::MIN_POSITIVE),
        ]
    }

    /// Windows from several distributions.
    fn window() -> impl Strategy<Value = Vec<f64>> {
        use proptest::collection::vec;
        let n = 1usize..400;
        let normal = (1e-12f64..1.0, 0.0f64..1.0);
        prop_oneof![
            vec(0.0f64..1000.0, n.clone()),
            vec(-1e6f64..1e6, n.clone()),
            (-20.0f64..20.0, 2.0f64..3.0, vec(normal.clone(), n.clone())).prop_map(
                |(mu, sigma, u)| u
                    .into_iter()
                    .map(|(a, b)| lognormal(mu, sigma, a, b))
                    .collect()
            ),
            (
                -5.0f64..5.0,
                2.0f64..3.0,
                vec((normal.clone(), any::<bool>()), n.clone())
            )
                .prop_map(|(mu, sigma, u)| u
                    .into_iter()
                    .map(|((a, b), neg)| {
                        let v = lognormal(mu, sigma, a, b);
                        if neg { -v } else { v }
                    })
                    .collect()),
            vec((normal.clone(), any::<bool>()), n.clone()).prop_map(|u| u
                .into_iter()
                .map(|((a, b), hi)| if hi {
                    lognormal(1e6f64.ln(), 0.1, a, b)
                } else {
                    lognormal(1e-3f64.ln(), 0.1, a, b)
                })
                .collect()),
            (finite(), n.clone()).prop_map(|(v, n)| vec![v; n]),
            finite().prop_map(|v| vec![v]),
            vec(
                prop_oneof![
                    Just(0.0),
                    Just(-0.0),
                    Just(5e-324),
                    Just(-1e-310),
                    normal.prop_map(|(a, b)| lognormal(0.0, 2.0, a, b)),
                    (-100.0f64..100.0),
                ],
                n.clone()
            ),
            // Anywhere in the f64 range (few samples: up to ~1.5M bins at 0.1%).
            vec(finite(), 1..12),
        ]
    }

    fn alpha() -> impl Strategy<Value = f64> {
        prop::sample::select(vec![0.001, 0.01, 0.05])
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn mapping_guarantee_over_the_whole_range(
            log_alpha in MIN_RELATIVE_ACCURACY.ln()..MAX_RELATIVE_ACCURACY.ln(),
            exponent in prop_oneof![1u64..=2046, Just(1u64), Just(2046u64)],
            mantissa in prop_oneof![any::<u64>(), 0u64..64, (MANTISSA_MASK - 64)..=MANTISSA_MASK],
        ) {
            let alpha = log_alpha.exp().clamp(MIN_RELATIVE_ACCURACY, MAX_RELATIVE_ACCURACY);
            let sp = spec(alpha, 2048);
            let x = f64::from_bits((exponent << 52) | (mantissa & MANTISSA_MASK));
            let i = sp.index(x.to_bits());
            prop_assert!(sp.min_index <= i && i <= sp.max_index);
            let v = reported(&sp, x);
            prop_assert!((v - x).abs() <= alpha * x, "alpha={} x={:e} v={:e}", alpha, x, v);
            // Negative values use the same bins.
            let s = sketch_of(&sp, &[-x]);
            prop_assert_eq!(s.quantile(&sp, 0.5), Some(-v));
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        #[test]
        fn quantiles_within_relative_accuracy(
            alpha in alpha(),
            values in window(),
            extra in proptest::collection::vec(0.0f64..=1.0, 0..6),
        ) {
            let sp = spec(alpha, MAX_MAX_BINS);
            let s = sketch_of(&sp, &values);
            prop_assert_eq!(s.collapsed(), 0);
            prop_assert_eq!(s.min_guaranteed_rank(), 0);
            check_quantiles(&sp, alpha, &s, &values, &extra)?;
            // Exact state survives encoding.
            let bytes = encoded(&sp, &s);
            let d = Sketch::decode(&sp, &bytes).unwrap();
            prop_assert_eq!(&d, &s);
            prop_assert_eq!(encoded(&sp, &d), bytes);
        }

        #[test]
        fn collapsed_sketches_keep_guaranteed_ranks(
            alpha in alpha(),
            max_bins in prop::sample::select(vec![16usize, 40, 200]),
            values in window(),
            extra in proptest::collection::vec(0.0f64..=1.0, 0..6),
        ) {
            let sp = spec(alpha, max_bins);
            let s = sketch_of(&sp, &values);
            check_quantiles(&sp, alpha, &s, &values, &extra)?;
            // collapsed() = samples whose own bin is below the store's first bin.
            let mut expected = 0;
            {
                let (pos, neg) = (s.pos(), s.neg());
                prop_assert!(pos.len() <= max_bins && neg.len() <= max_bins);
                for &v in &values {
                    if v.abs() >= f64::MIN_POSITIVE {
                        let i = i64::from(sp.index(v.abs().to_bits()));
                        let (j, store) = if v > 0.0 { (i, &pos) } else { (-i, &neg) };
                        expected += u64::from(j < store.lo());
                    }
                }
            }
            prop_assert_eq!(s.collapsed(), expected);
            let d = Sketch::decode(&sp, &encoded(&sp, &s)).unwrap();
            prop_assert_eq!(d, s);
        }

        #[test]
        fn merge_of_parts_equals_sketch_of_whole(
            alpha in alpha(),
            max_bins in prop::sample::select(vec![16usize, 64, 4096]),
            values in window(),
            cut in any::<prop::sample::Index>(),
            cut2 in any::<prop::sample::Index>(),
        ) {
            let sp = spec(alpha, max_bins);
            let whole = sketch_of(&sp, &values);
            let (a, b) = values.split_at(cut.index(values.len() + 1));
            let (b, c) = b.split_at(cut2.index(b.len() + 1));
            let mut m = sketch_of(&sp, a);
            m.merge(&sp, &sketch_of(&sp, b));
            m.merge(&sp, &sketch_of(&sp, c));
            prop_assert_eq!(&m, &whole);
            let mut m2 = sketch_of(&sp, c);
            m2.merge(&sp, &sketch_of(&sp, a));
            m2.merge(&sp, &sketch_of(&sp, b));
            prop_assert_eq!(&m2, &whole);
            let mut m3 = Sketch::default();
            m3.merge(&sp, &whole);
            m3.merge(&sp, &Sketch::default());
            prop_assert_eq!(&m3, &whole);
            if max_bins == 4096 && whole.collapsed() == 0 {
                check_quantiles(&sp, alpha, &m, &values, &[])?;
            }
        }

        #[test]
        fn conversion_between_specs_keeps_combined_accuracy(
            a1 in alpha(),
            a2 in alpha(),
            values in window(),
        ) {
            let (s1, s2) = (spec(a1, MAX_MAX_BINS), spec(a2, MAX_MAX_BINS));
            let s = sketch_of(&s1, &values);
            let d = Sketch::decode(&s2, &encoded(&s1, &s)).unwrap();
            check_quantiles(&s2, a1 + a2 + a1 * a2, &d, &values, &[])?;
        }

        #[test]
        fn decode_never_panics(
            garbage in proptest::collection::vec(any::<u8>(), 0..64),
            values in proptest::collection::vec(-1e3f64..1e3, 0..50),
            flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
            cut in any::<prop::sample::Index>(),
        ) {
            let sp = spec(0.01, 64);
            let _ = Sketch::decode(&sp, &garbage);
            let mut bytes = encoded(&sp, &sketch_of(&sp, &values));
            for (at, b) in flips {
                let i = at.index(bytes.len());
                bytes[i] ^= b;
            }
            bytes.truncate(cut.index(bytes.len() + 1));
            if let Ok(d) = Sketch::decode(&sp, &bytes) {
                // Whatever decodes is a usable sketch that round-trips.
                let _ = d.quantile(&sp, 0.5);
                let again = Sketch::decode(&sp, &encoded(&sp, &d)).unwrap();
                prop_assert_eq!(again, d);
            }
        }
    }
}
