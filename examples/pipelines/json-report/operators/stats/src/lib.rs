//! Summary statistics, an operator crate that depends on another operator (`numfmt`)
//! and on the farm's dependency set (`serde`).
use serde::Serialize;

#[derive(Debug, Serialize)]
pub struct Summary {
    pub count: usize,
    pub min: f64,
    pub max: f64,
    pub mean: String,
}

pub fn summarize(values: &[f64]) -> Summary {
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let mean = values.iter().sum::<f64>() / values.len() as f64;
    Summary { count: values.len(), min, max, mean: numfmt::two_decimals(mean) }
}
