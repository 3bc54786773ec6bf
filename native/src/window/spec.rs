//! Window geometry.

use super::error::Error;
use super::limits::SAFE_LIMIT;

/// Validated window geometry, all in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowSpec {
    pub(super) size: i64,
    pub(super) advance: i64,
    pub(super) grace: i64,
}

impl WindowSpec {
    /// Validates JS-number-shaped config: `advance` defaults to `size`
    /// (tumbling) and `grace` to 0.
    pub fn new(size: f64, advance: Option<f64>, grace: Option<f64>) -> Result<Self, Error> {
        let size = whole_ms("sizeMs", size, 1, "an integer > 0")?;
        let advance = match advance {
            None => size,
            Some(advance) => whole_ms("advanceMs", advance, 1, "an integer > 0")?,
        };
        if advance > size {
            return Err(Error::InvalidConfig(format!(
                "advanceMs ({advance}) must not exceed sizeMs ({size})"
            )));
        }
        if size % advance != 0 {
            return Err(Error::InvalidConfig(format!(
                "sizeMs ({size}) must be a multiple of advanceMs ({advance}) so every \
                 timestamp falls in the same number of windows"
            )));
        }
        let grace = whole_ms("graceMs", grace.unwrap_or(0.0), 0, "an integer >= 0")?;
        Ok(Self {
            size,
            advance,
            grace,
        })
    }

    pub fn size(&self) -> i64 {
        self.size
    }

    pub fn advance(&self) -> i64 {
        self.advance
    }

    pub fn grace(&self) -> i64 {
        self.grace
    }

    /// Start of the newest window containing `ts`.
    pub fn newest_start(&self, ts: i64) -> i64 {
        ts - ts.rem_euclid(self.advance)
    }

    /// Starts of all `size / advance` windows containing `ts`, oldest first.
    pub fn window_starts(&self, ts: i64) -> impl Iterator<Item = i64> + Clone + use<> {
        self.starts_up_to(self.newest_start(ts))
    }

    /// Starts of the `size / advance` windows whose newest is `newest`, oldest first.
    pub(super) fn starts_up_to(&self, newest: i64) -> impl Iterator<Item = i64> + Clone + use<> {
        // `advance` is validated positive, so the cast is lossless.
        (newest - self.size + self.advance..=newest).step_by(self.advance as usize)
    }
}

/// The last pane (`[start, start + advance)`) a timestamp fell in, so that
/// consecutive samples of one pane find their newest window start without
/// a division.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Pane {
    start: Option<i64>,
}

impl Pane {
    /// [`WindowSpec::newest_start`] of `ts`, for any `ts`.
    #[inline]
    pub(super) fn newest_start(&mut self, spec: &WindowSpec, ts: i64) -> i64 {
        match self.start {
            // Wrapping: a `ts` before the pane, or too far after it to subtract,
            // compares as a huge distance and misses.
            Some(start) if (ts.wrapping_sub(start) as u64) < spec.advance as u64 => start,
            _ => *self.start.insert(spec.newest_start(ts)),
        }
    }
}

/// Converts a config number to whole milliseconds in `[min, 2^53)`.
pub fn whole_ms(field: &str, value: f64, min: i64, expected: &str) -> Result<i64, Error> {
    if value.fract() == 0.0 && value >= min as f64 && value < SAFE_LIMIT {
        Ok(value as i64)
    } else {
        Err(Error::InvalidConfig(format!(
            "{field} must be {expected} and < 2^53 (got {value})"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::window::test_support::spec;

    fn config_error(size: f64, advance: Option<f64>, grace: Option<f64>) -> String {
        match WindowSpec::new(size, advance, grace) {
            Err(err @ Error::InvalidConfig(_)) => err.to_string(),
            other => panic!("expected InvalidConfig, got {other:?}"),
        }
    }

    #[test]
    fn config_defaults_to_tumbling_without_grace() {
        let s = spec(10.0, None, None);
        assert_eq!((s.size(), s.advance(), s.grace()), (10, 10, 0));
        let s = spec(60_000.0, Some(15_000.0), Some(5_000.0));
        assert_eq!((s.size(), s.advance(), s.grace()), (60_000, 15_000, 5_000));
    }

    #[test]
    fn config_errors_name_the_field() {
        for bad in [0.0, -5.0, 1.5, f64::NAN, f64::INFINITY, SAFE_LIMIT] {
            assert!(config_error(bad, None, None).contains("sizeMs"), "{bad}");
        }
        for bad in [0.0, -1.0, 2.5, f64::NAN] {
            assert!(config_error(10.0, Some(bad), None).contains("advanceMs"));
        }
        for bad in [-1.0, 0.5, f64::NAN, f64::INFINITY] {
            assert!(config_error(10.0, None, Some(bad)).contains("graceMs"));
        }
        assert!(config_error(10.0, Some(20.0), None).contains("advanceMs (20)"));
        let msg = config_error(10.0, Some(3.0), None);
        assert!(
            msg.contains("sizeMs (10) must be a multiple of advanceMs (3)"),
            "{msg}"
        );
        // Zero grace is explicitly allowed.
        assert_eq!(spec(10.0, None, Some(0.0)).grace(), 0);
    }

    #[test]
    fn tumbling_window_membership() {
        let s = spec(10.0, None, None);
        assert_eq!(s.window_starts(0).collect::<Vec<_>>(), [0]);
        assert_eq!(s.window_starts(9).collect::<Vec<_>>(), [0]);
        assert_eq!(s.window_starts(10).collect::<Vec<_>>(), [10]);
        assert_eq!(s.window_starts(1_234).collect::<Vec<_>>(), [1_230]);
    }

    #[test]
    fn hopping_window_membership_at_boundaries() {
        let s = spec(10.0, Some(5.0), None);
        assert_eq!(s.window_starts(7).collect::<Vec<_>>(), [0, 5]);
        // A window's start is inclusive, its end exclusive.
        assert_eq!(s.window_starts(5).collect::<Vec<_>>(), [0, 5]);
        assert_eq!(s.window_starts(10).collect::<Vec<_>>(), [5, 10]);
        assert_eq!(s.window_starts(14).collect::<Vec<_>>(), [5, 10]);
        // Early timestamps also belong to windows that start before the epoch.
        assert_eq!(s.window_starts(4).collect::<Vec<_>>(), [-5, 0]);
        let s = spec(60.0, Some(15.0), None);
        assert_eq!(s.window_starts(100).collect::<Vec<_>>(), [45, 60, 75, 90]);
    }
}
