//! Medians, percentiles and the rows of the performance table.

/// The median; 0 for no samples.
pub fn median(samples: &[f64]) -> f64 {
    percentile(samples, 50.0)
}

/// The nearest-rank percentile `p` (0..=100) of `samples`; 0 for no samples.
pub fn percentile(samples: &[f64], p: f64) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// One line of the table.
#[derive(Debug, Clone)]
pub struct Row {
    pub number: u32,
    pub what: String,
    pub measured: String,
    pub goal: String,
    /// None when the comparison could not run here.
    pub met: Option<bool>,
}

impl Row {
    pub fn skipped(number: u32, what: &str, why: &str) -> Row {
        Row { number, what: what.into(), measured: format!("not measured: {why}"), goal: String::new(), met: None }
    }
}

/// The table, as Markdown.
pub fn table(rows: &[Row]) -> String {
    let mut out =
        String::from("| # | what | measured (medians unless named) | goal | met |\n| --- | --- | --- | --- | --- |\n");
    for row in rows {
        let met = match row.met {
            Some(true) => "yes",
            Some(false) => "no",
            None => "—",
        };
        out.push_str(&format!("| {} | {} | {} | {} | {met} |\n", row.number, row.what, row.measured, row.goal));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let samples: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&samples, 99.0), 99.0);
        assert_eq!(percentile(&samples, 100.0), 100.0);
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[]), 0.0);
    }
}
