//! Helpers shared by the benchmarks.

/// The environment counts to measure: `PRENV_BENCH_SIZES` (numbers separated by commas), else
/// `default`.
pub fn sizes(default: &str) -> Vec<u64> {
    std::env::var("PRENV_BENCH_SIZES")
        .unwrap_or_else(|_| default.into())
        .split(',')
        .map(|n| {
            n.trim()
                .parse()
                .expect("PRENV_BENCH_SIZES: numbers separated by commas")
        })
        .collect()
}
