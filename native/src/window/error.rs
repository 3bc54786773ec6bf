//! Errors, and why a sample was rejected.

use std::fmt;

#[cfg(doc)]
use super::Aggregator;

/// Errors from configuration or batch shape; per-sample problems are
/// reported as [`Rejection`]s instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// A config field is invalid; the message names the field.
    InvalidConfig(String),
    /// The batch columns are malformed (e.g. unequal lengths).
    InvalidInput(String),
    /// [`Aggregator::restore`] was given invalid window states, or the
    /// aggregator is not fresh.
    InvalidRestore(String),
    /// The aggregator was released by its owner and can no longer be used.
    Freed,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::InvalidConfig(msg) => write!(f, "invalid window config: {msg}"),
            Error::InvalidInput(msg) => write!(f, "invalid batch: {msg}"),
            Error::InvalidRestore(msg) => write!(f, "cannot restore: {msg}"),
            Error::Freed => f.write_str("aggregator has been freed"),
        }
    }
}

impl std::error::Error for Error {}

/// Why a sample was rejected; the discriminant is the reason code reported to
/// JS. When several apply, the lowest code is reported (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Rejection {
    /// The value is NaN or ±Infinity.
    NonFiniteValue = 1,
    /// The timestamp is not an integer in `[minEventTime, 2^53)`.
    InvalidTimestamp = 2,
    /// The key index is outside the batch's key table.
    UnknownKey = 3,
    /// The series key is empty.
    EmptyKey = 4,
    /// The series key is longer than `maxKeyBytes` UTF-8 bytes.
    KeyTooLong = 5,
    /// The timestamp is greater than the batch's `max_event_time`.
    FutureTimestamp = 6,
    /// Aggregating the sample would exceed `maxOpenWindows`.
    WindowLimit = 7,
}

impl Rejection {
    /// Every reason, by ascending code (precedence order).
    pub const ALL: [Rejection; 7] = [
        Rejection::NonFiniteValue,
        Rejection::InvalidTimestamp,
        Rejection::UnknownKey,
        Rejection::EmptyKey,
        Rejection::KeyTooLong,
        Rejection::FutureTimestamp,
        Rejection::WindowLimit,
    ];

    /// Length of an array indexed by code (index 0 is unused).
    pub const SLOTS: usize = Rejection::ALL.len() + 1;

    pub fn code(self) -> u8 {
        self as u8
    }
}
