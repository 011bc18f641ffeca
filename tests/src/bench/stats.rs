//! Percentiles of latency samples.
//!
//! Two definitions are in use and each program keeps its own, so that its figures stay
//! comparable with the ones it reported before (BENCHMARKS.md quotes both):
//! - [`nearest_rank`] (`bench_append`, like `pg_peer.sh`): the smallest sample with at least
//!   `p`% of the samples at or below it;
//! - [`rounded_index`] (`bench_wallet`): the sample at index `round((n - 1) * p)`.
//!
//! They differ by at most one sample's rank.

/// The nearest-rank percentile `p` (0-100) of `sorted` (ascending); 0 when empty.
pub fn nearest_rank(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// The sample at index `round((n - 1) * p)` of `sorted` (ascending), `p` a fraction (0-1);
/// 0 when empty.
pub fn rounded_index(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both definitions on 1..=100, where they agree at the median and differ at p99 by at most
    /// one rank, and on an empty slice.
    #[test]
    fn percentiles_of_one_to_a_hundred() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(nearest_rank(&v, 50.0), 50);
        assert_eq!(nearest_rank(&v, 99.0), 99);
        assert_eq!(nearest_rank(&v, 100.0), 100);
        assert_eq!(rounded_index(&v, 0.50), 51);
        assert_eq!(rounded_index(&v, 0.99), 99);
        assert_eq!(nearest_rank(&[], 50.0), 0);
        assert_eq!(rounded_index(&[], 0.5), 0);
    }
}
