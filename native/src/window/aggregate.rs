//! The running statistics of one (series key, window).

/// Running statistics of one (series key, window); the sum uses Neumaier's
/// compensated summation so large values of opposite sign don't swallow small ones.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Aggregate {
    /// Input offset of the first sample: a replay from the lowest such offset
    /// among open windows rebuilds every one of them.
    pub(super) first_offset: i64,
    pub(super) count: u64,
    pub(super) sum: f64,
    pub(super) compensation: f64,
    pub(super) min: f64,
    pub(super) max: f64,
}

impl Aggregate {
    pub(super) fn new(value: f64, offset: i64) -> Self {
        Self {
            first_offset: offset,
            count: 1,
            sum: value,
            compensation: 0.0,
            min: value,
            max: value,
        }
    }

    pub(super) fn add(&mut self, value: f64) {
        let total = self.sum + value;
        // Recover the low-order bits lost by whichever operand is smaller.
        self.compensation += if self.sum.abs() >= value.abs() {
            (self.sum - total) + value
        } else {
            (value - total) + self.sum
        };
        self.sum = total;
        self.count += 1;
        // A select, not `f64::min`/`max`: neither side is ever NaN (values are checked, restored
        // extremes too), and then they agree; this compiles to one `minsd`/`maxsd` each.
        debug_assert!(!value.is_nan() && !self.min.is_nan() && !self.max.is_nan());
        self.min = if value < self.min { value } else { self.min };
        self.max = if value > self.max { value } else { self.max };
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    /// Compensated sum; an overflowed (infinite) sum is returned as is, since
    /// its compensation term is meaningless (NaN).
    pub fn sum(&self) -> f64 {
        if self.sum.is_finite() {
            self.sum + self.compensation
        } else {
            self.sum
        }
    }

    pub fn mean(&self) -> f64 {
        self.sum() / self.count as f64
    }

    pub fn min(&self) -> f64 {
        self.min
    }

    pub fn max(&self) -> f64 {
        self.max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overflowing_sum_reports_infinity() {
        let mut a = Aggregate::new(f64::MAX, 0);
        a.add(f64::MAX);
        assert_eq!(a.sum(), f64::INFINITY);
    }
}
