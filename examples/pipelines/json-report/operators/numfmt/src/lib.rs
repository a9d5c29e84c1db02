//! Number formatting for reports.

/// `value` rounded to two decimals, as text.
pub fn two_decimals(value: f64) -> String {
    format!("{value:.2}")
}
