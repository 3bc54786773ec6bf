//! Bounds on hostile input, and the checks of each sample against them.

use super::error::{Error, Rejection};
use super::spec::{WindowSpec, whole_ms};

/// Exclusive upper bound for timestamps and config values: 2^53, beyond which
/// a JS number no longer represents every integer.
pub(super) const SAFE_LIMIT: f64 = 9_007_199_254_740_992.0;

/// Default for [`Limits`]' `max_key_bytes`.
pub const DEFAULT_MAX_KEY_BYTES: usize = 1024;

/// Bounds on hostile input (rejection codes 2, 5 and 7); the defaults accept
/// everything the window rules can handle except keys over 1024 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Lowest accepted event time (code 2 below it).
    pub(super) min_event_time: i64,
    /// Longest accepted series key in UTF-8 bytes (code 5 above it).
    pub(super) max_key_bytes: usize,
    /// Bound on open (key, window) aggregates (code 7); `None` for no bound.
    pub(super) max_open_windows: Option<usize>,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            min_event_time: 0,
            max_key_bytes: DEFAULT_MAX_KEY_BYTES,
            max_open_windows: None,
        }
    }
}

impl Limits {
    /// Validates JS-number-shaped config: `minEventTimeMs` an integer in
    /// `[0, 2^53)` (default 0), `maxKeyBytes` an integer in `[1, 2^53)`
    /// (default 1024) and `maxOpenWindows` `None` (no bound) or an integer in
    /// `[size / advance, 2^53)`: one sample may open `size / advance` windows,
    /// so a smaller bound could refuse every sample of a new key.
    pub fn new(
        spec: &WindowSpec,
        min_event_time: Option<f64>,
        max_key_bytes: Option<f64>,
        max_open_windows: Option<f64>,
    ) -> Result<Self, Error> {
        let min_event_time = match min_event_time {
            None => 0,
            Some(t) => whole_ms("minEventTimeMs", t, 0, "an integer >= 0")?,
        };
        let max_key_bytes = match max_key_bytes {
            None => DEFAULT_MAX_KEY_BYTES,
            Some(n) => whole_ms("maxKeyBytes", n, 1, "an integer > 0")? as usize,
        };
        let max_open_windows = match max_open_windows {
            None => None,
            Some(n) => {
                let n = whole_ms("maxOpenWindows", n, 1, "null or an integer > 0")?;
                let per_sample = spec.size / spec.advance;
                if n < per_sample {
                    return Err(Error::InvalidConfig(format!(
                        "maxOpenWindows ({n}) must be at least sizeMs / advanceMs \
                         ({per_sample}), the windows one sample can open"
                    )));
                }
                Some(n as usize)
            }
        };
        Ok(Self {
            min_event_time,
            max_key_bytes,
            max_open_windows,
        })
    }

    pub fn min_event_time(&self) -> i64 {
        self.min_event_time
    }

    pub fn max_key_bytes(&self) -> usize {
        self.max_key_bytes
    }

    pub fn max_open_windows(&self) -> Option<usize> {
        self.max_open_windows
    }

    /// Codes 4 and 5 for one entry of a batch's key table.
    pub(super) fn check_key(&self, key: &str) -> Result<(), Rejection> {
        if key.is_empty() {
            Err(Rejection::EmptyKey)
        } else if key.len() > self.max_key_bytes {
            Err(Rejection::KeyTooLong)
        } else {
            Ok(())
        }
    }
}

/// An integer in `[0, 2^53)`: exactly representable as a JS number.
pub(super) fn is_safe_whole(x: f64) -> bool {
    (0.0..SAFE_LIMIT).contains(&x) && is_whole_in_range(x)
}

/// Whether every `x` is [`is_safe_whole`], in a loop the compiler vectorizes (no early exit,
/// no conversion to integer): offsets are checked for a whole batch before its samples.
#[allow(clippy::manual_range_contains)] // `contains` short-circuits: a branch per value
pub(super) fn all_safe_whole(xs: &[f64]) -> bool {
    // Below 2^52, adding and removing 2^52 rounds to a whole number (round to nearest), so only
    // whole numbers come back unchanged; from 2^52 on, every f64 is whole.
    const TWO_52: f64 = 4_503_599_627_370_496.0;
    xs.iter().fold(true, |ok, &x| {
        ok & (x >= 0.0) & (x < SAFE_LIMIT) & ((x >= TWO_52) | ((x + TWO_52) - TWO_52 == x))
    })
}

/// Whether `x`, known to be in `(-2^63, 2^63)`, is an integer: `x.fract() == 0.0`
/// without a call to `trunc` (x86-64's baseline has no rounding instruction).
#[inline]
fn is_whole_in_range(x: f64) -> bool {
    (x as i64) as f64 == x
}

/// The per-batch bounds of the sample checks (codes 1-6).
#[derive(Debug, Clone, Copy)]
pub(super) struct SampleChecks {
    /// Lowest valid timestamp: `minEventTime`.
    pub(super) min_ts: f64,
    /// Highest valid timestamp: the batch's `max_event_time`, or +Infinity.
    pub(super) max_ts: f64,
}

impl SampleChecks {
    /// Codes 1 and 2; returns the timestamp as whole milliseconds.
    #[inline]
    pub(super) fn value_and_time(&self, ts: f64, value: f64) -> Result<i64, Rejection> {
        if !value.is_finite() {
            return Err(Rejection::NonFiniteValue);
        }
        // NaN fails the range check.
        if !(ts >= self.min_ts && ts < SAFE_LIMIT && is_whole_in_range(ts)) {
            return Err(Rejection::InvalidTimestamp);
        }
        Ok(ts as i64)
    }

    /// Whether every sample `(timestamps[i], values[i])` passes codes 1, 2 and 6, in a loop the
    /// compiler vectorizes (as [`all_safe_whole`]): a batch that does needs no per-sample check.
    #[allow(clippy::manual_range_contains)] // `contains` short-circuits: a branch per value
    pub(super) fn all_pass(&self, timestamps: &[f64], values: &[f64]) -> bool {
        const TWO_52: f64 = 4_503_599_627_370_496.0;
        let (min_ts, max_ts) = (self.min_ts, self.max_ts);
        // `min_ts` is at least 0, so as in all_safe_whole only whole numbers survive the 2^52
        // round trip; NaN fails every comparison.
        timestamps.iter().zip(values).fold(true, |ok, (&t, &v)| {
            ok & v.is_finite()
                & (t >= min_ts)
                & (t < SAFE_LIMIT)
                & (t <= max_ts)
                & ((t >= TWO_52) | ((t + TWO_52) - TWO_52 == t))
        })
    }

    /// Code 6 (checked after the key's codes 3-5).
    #[inline]
    pub(super) fn not_future(&self, ts: i64) -> Result<i64, Rejection> {
        // Exact: ts is below 2^53.
        if ts as f64 > self.max_ts {
            return Err(Rejection::FutureTimestamp);
        }
        Ok(ts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::window::test_support::{limits, spec};
    use proptest::prelude::*;

    /// `all_safe_whole` agrees with `is_safe_whole` on each value alone.
    fn agrees(x: f64) {
        assert_eq!(all_safe_whole(&[x]), is_safe_whole(x), "{x:e}");
        assert_eq!(all_safe_whole(&[1.0, x, 2.0]), is_safe_whole(x), "{x:e}");
    }

    #[test]
    fn all_safe_whole_agrees_at_the_edges() {
        let two_52 = 4_503_599_627_370_496.0;
        for x in [
            0.0,
            -0.0,
            0.5,
            1.0,
            -1.0,
            1.5,
            2.5,
            two_52 - 1.0,
            two_52 - 0.5,
            two_52,
            two_52 + 1.0,
            SAFE_LIMIT - 1.0,
            SAFE_LIMIT,
            SAFE_LIMIT + 2.0,
            f64::MIN_POSITIVE,
            f64::EPSILON,
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::MAX,
            1e300,
            -1e-300,
        ] {
            agrees(x);
        }
        assert!(all_safe_whole(&[]));
    }

    proptest! {
        #[test]
        fn all_safe_whole_agrees_with_is_safe_whole(x in proptest::num::f64::ANY, y in 0.0..SAFE_LIMIT) {
            agrees(x);
            agrees(y);
            agrees(y.trunc());
        }
    }

    /// `all_pass` agrees with the per-sample checks (codes 1, 2 and 6), alone and among passes.
    fn all_pass_agrees(checks: &SampleChecks, ts: f64, value: f64) {
        let one = checks
            .value_and_time(ts, value)
            .and_then(|ts| checks.not_future(ts))
            .is_ok();
        assert_eq!(checks.all_pass(&[ts], &[value]), one, "{ts:e}, {value:e}");
        let (good_ts, good_value) = (checks.min_ts, 1.0);
        assert_eq!(
            checks.all_pass(&[good_ts, ts, good_ts], &[good_value, value, good_value]),
            one,
            "{ts:e}, {value:e}"
        );
    }

    proptest! {
        #[test]
        fn all_pass_agrees_with_the_sample_checks(
            min_ts in prop_oneof![Just(0i64), 0i64..1_000, Just((1 << 53) - 1)],
            max_ts in prop_oneof![
                Just(f64::INFINITY),
                -10.0..2_000.0f64,
                (0i64..2_000).prop_map(|t| t as f64)
            ],
            ts in prop_oneof![
                proptest::num::f64::ANY,
                (-10i64..2_000).prop_map(|t| t as f64),
                Just(SAFE_LIMIT - 1.0),
                Just(SAFE_LIMIT),
                Just(4_503_599_627_370_496.5)
            ],
            value in prop_oneof![4 => -1e6..1e6f64, 1 => proptest::num::f64::ANY],
        ) {
            let checks = SampleChecks { min_ts: min_ts as f64, max_ts };
            all_pass_agrees(&checks, ts, value);
            all_pass_agrees(&checks, max_ts.floor(), value);
            all_pass_agrees(&checks, max_ts.floor() + 1.0, value);
            all_pass_agrees(&checks, min_ts as f64 - 1.0, value);
        }
    }

    #[test]
    fn limits_default_and_validate_naming_the_field() {
        let tumbling = spec(10.0, None, None);
        let defaults = limits(&tumbling, None, None, None).expect("defaults");
        assert_eq!(defaults, Limits::default());
        assert_eq!(
            (
                defaults.min_event_time(),
                defaults.max_key_bytes(),
                defaults.max_open_windows()
            ),
            (0, 1024, None)
        );
        let set =
            limits(&tumbling, Some(946_684_800_000.0), Some(1.0), Some(1.0)).expect("valid limits");
        assert_eq!(
            (
                set.min_event_time(),
                set.max_key_bytes(),
                set.max_open_windows()
            ),
            (946_684_800_000, 1, Some(1))
        );

        let error =
            |min: Option<f64>, bytes: Option<f64>, open: Option<f64>, s: &WindowSpec| match limits(
                s, min, bytes, open,
            ) {
                Err(err @ Error::InvalidConfig(_)) => err.to_string(),
                other => panic!("expected InvalidConfig, got {other:?}"),
            };
        for bad in [-1.0, 0.5, f64::NAN, f64::NEG_INFINITY, SAFE_LIMIT] {
            let msg = error(Some(bad), None, None, &tumbling);
            assert!(
                msg.contains("minEventTimeMs must be an integer >= 0"),
                "{msg}"
            );
        }
        for bad in [0.0, -1.0, 1.5, f64::NAN, f64::INFINITY] {
            let msg = error(None, Some(bad), None, &tumbling);
            assert!(msg.contains("maxKeyBytes must be an integer > 0"), "{msg}");
        }
        for bad in [0.0, -1.0, 2.5, f64::NAN, f64::INFINITY, SAFE_LIMIT] {
            let msg = error(None, None, Some(bad), &tumbling);
            assert!(
                msg.contains("maxOpenWindows must be null or an integer > 0"),
                "{msg}"
            );
        }
        // One hopping sample opens sizeMs / advanceMs windows: the bound must allow that.
        let hopping = spec(12.0, Some(3.0), None);
        let msg = error(None, None, Some(3.0), &hopping);
        assert_eq!(
            msg,
            "invalid window config: maxOpenWindows (3) must be at least sizeMs / advanceMs (4), \
             the windows one sample can open"
        );
        assert!(limits(&hopping, None, None, Some(4.0)).is_ok());
    }
}
