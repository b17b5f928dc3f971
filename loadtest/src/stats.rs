//! Percentile summaries of latency series.

use push0_runtime::metrics::percentile;
use serde::Serialize;

/// p50/p90/p99/max of a series, in microseconds.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Pct {
    pub n: usize,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub max: u64,
}

impl Pct {
    pub fn of(mut values: Vec<u64>) -> Self {
        values.sort_unstable();
        Self {
            n: values.len(),
            p50: percentile(&values, 0.5),
            p90: percentile(&values, 0.9),
            p99: percentile(&values, 0.99),
            max: values.last().copied().unwrap_or(0),
        }
    }

    /// The four figures as milliseconds with two decimals, for tables.
    pub fn ms_cells(&self) -> Vec<String> {
        [self.p50, self.p90, self.p99, self.max]
            .iter()
            .map(|v| ms(*v))
            .collect()
    }
}

/// Microseconds shown as milliseconds.
pub fn ms(us: u64) -> String {
    format!("{:.2}", us as f64 / 1000.0)
}

pub fn ratio(a: u64, b: u64) -> f64 {
    a as f64 / b.max(1) as f64
}
