//! Test helpers shared by the tests of several parts.

use super::{Error, Limits, WindowSpec};

pub(super) fn spec(size: f64, advance: Option<f64>, grace: Option<f64>) -> WindowSpec {
    WindowSpec::new(size, advance, grace).expect("valid spec")
}

pub(super) fn limits(
    spec: &WindowSpec,
    min_event_time: Option<f64>,
    max_key_bytes: Option<f64>,
    max_open_windows: Option<f64>,
) -> Result<Limits, Error> {
    Limits::new(spec, min_event_time, max_key_bytes, max_open_windows)
}
