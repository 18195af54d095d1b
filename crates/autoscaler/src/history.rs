//! Per-function invocation history: per-bin counts and peak concurrency (a bounded series for
//! forecasting) and the idle-time histogram (idle time = bins between two bins with
//! invocations, as in *Serverless in the Wild*).

use std::collections::{BTreeMap, VecDeque};

/// Bins kept in the series (4 hours of minutes).
pub const SERIES_CAP: usize = 240;
/// Active bins whose peak concurrency is remembered.
const ACTIVE_PEAKS: usize = 5;
/// Recent idle times kept for the AR(1) model.
const RECENT_ITS: usize = 32;

/// Idle times in bins, with a fixed range; longer ones are counted as out of bounds.
#[derive(Debug, Clone, Default)]
pub struct IdleHistogram {
    /// Idle time (bins, >= 1) -> count, for idle times within the range.
    counts: BTreeMap<u32, u32>,
    in_range: u32,
    oob: u32,
    sum_sq: u64,
    /// Recent idle times (in or out of range), oldest first.
    recent: VecDeque<u32>,
    /// Increases with every observation (cache key for derived windows).
    pub version: u64,
}

impl IdleHistogram {
    /// Records one idle time of `it` bins; `range` is the histogram range in bins.
    pub fn record(&mut self, it: u32, range: u32) {
        if it <= range {
            let c = self.counts.entry(it).or_insert(0);
            // sum of squares of bucket counts: (c+1)^2 - c^2 = 2c + 1
            self.sum_sq += 2 * u64::from(*c) + 1;
            *c += 1;
            self.in_range += 1;
        } else {
            self.oob += 1;
        }
        if self.recent.len() == RECENT_ITS {
            self.recent.pop_front();
        }
        self.recent.push_back(it);
        self.version += 1;
    }

    /// Idle times within the range.
    pub fn in_range(&self) -> u32 {
        self.in_range
    }

    /// Idle times beyond the range.
    pub fn out_of_bounds(&self) -> u32 {
        self.oob
    }

    /// All idle times seen.
    pub fn total(&self) -> u32 {
        self.in_range + self.oob
    }

    /// Recent idle times, oldest first.
    pub fn recent(&self) -> impl Iterator<Item = u32> + '_ {
        self.recent.iter().copied()
    }

    /// The smallest idle time `v` with at least `pct`% of the in-range idle times <= `v`.
    pub fn percentile(&self, pct: f64) -> Option<u32> {
        if self.in_range == 0 {
            return None;
        }
        let need = ((pct / 100.0) * f64::from(self.in_range)).ceil().max(1.0) as u64;
        let mut acc = 0u64;
        for (&it, &c) in &self.counts {
            acc += u64::from(c);
            if acc >= need {
                return Some(it);
            }
        }
        self.counts.keys().next_back().copied()
    }

    /// The pre-warm/keep-alive window `(start, end)` in bins (loaded from `start` through `end`
    /// bins after the last invocation; `start == 0`: kept from the end of the execution) that
    /// minimises, over the recorded idle times, idle bins plus `cold_cost_bins` per cold start.
    /// `None` when no window beats unloading right away (or no idle time is in range).
    pub fn cost_optimal_window(&self, cold_cost_bins: f64) -> Option<(u32, u32)> {
        if self.in_range == 0 {
            return None;
        }
        let vals: Vec<(f64, f64)> = self
            .counts
            .iter()
            .map(|(&v, &c)| (f64::from(v), f64::from(c)))
            .collect();
        let k = vals.len();
        // prefix count and prefix sum of values (over sorted distinct values)
        let mut pc = vec![0.0; k + 1];
        let mut ps = vec![0.0; k + 1];
        for (j, &(v, c)) in vals.iter().enumerate() {
            pc[j + 1] = pc[j] + c;
            ps[j + 1] = ps[j] + c * v;
        }
        let total = pc[k] + f64::from(self.oob);
        let mut best_cost = cold_cost_bins * total; // no window: every invocation cold
        let mut best = None;
        // start candidates: 0 or a recorded value; end: a recorded value >= start
        for si in 0..=k {
            // si == k means start 0; otherwise start = vals[si]
            // A start of 1 bin is no pre-warm at all (the instance is kept through the
            // invocation's bin anyway): only 0 or >= 2.
            if si < k && vals[si].0 < 2.0 {
                continue;
            }
            let (start, first) = if si == k { (0.0, 0) } else { (vals[si].0, si) };
            let cold_before = pc[first];
            for ei in first..k {
                let end = vals[ei].0;
                let inside = pc[ei + 1] - pc[first];
                // idle from the load (or the end of the execution) to the arrival, which comes
                // on average half-way through its bin
                let inside_idle = (ps[ei + 1] - ps[first]) - start * inside
                    + if start == 0.0 { 0.0 } else { 0.5 * inside };
                let after = total - pc[ei + 1];
                let span = end - start + if start == 0.0 { 0.5 } else { 1.0 };
                let cost = cold_cost_bins * (cold_before + after) + inside_idle + after * span;
                if cost < best_cost {
                    best_cost = cost;
                    best = Some((start as u32, end as u32));
                }
            }
            if si == k {
                break;
            }
        }
        best
    }

    /// Coefficient of variation of the bucket counts over `range` one-bin buckets.
    pub fn bucket_cv(&self, range: u32) -> f64 {
        if self.in_range == 0 || range == 0 {
            return 0.0;
        }
        let r = f64::from(range);
        let mean = f64::from(self.in_range) / r;
        let var = (self.sum_sq as f64 / r - mean * mean).max(0.0);
        var.sqrt() / mean
    }
}

/// One closed bin.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct BinStat {
    /// Invocations in the bin.
    pub count: u64,
    /// Peak concurrency reported in the bin.
    pub peak: u32,
}

/// The history of one function.
#[derive(Debug, Clone, Default)]
pub struct History {
    /// Bin currently being filled and what it holds so far.
    cur_bin: Option<u64>,
    cur: BinStat,
    /// Bin of the most recent invocation.
    pub last_active_bin: Option<u64>,
    /// Closed bins, oldest first, at most [`SERIES_CAP`].
    pub series: VecDeque<BinStat>,
    /// Bins closed since the start.
    pub bins_closed: u64,
    /// Idle times.
    pub idle: IdleHistogram,
    /// Peak concurrency of the last few bins with invocations (newest last).
    active_peaks: VecDeque<u32>,
}

impl History {
    /// Adds what happened during a tick ending in bin `bin`. Closes earlier bins first.
    /// `range` is the idle-time histogram range in bins.
    pub fn observe(&mut self, bin: u64, invocations: u64, peak: u32, range: u32) {
        self.advance(bin);
        if invocations > 0 {
            if self.last_active_bin != Some(bin) {
                if let Some(a) = self.last_active_bin {
                    if bin > a {
                        let it = u32::try_from(bin - a).unwrap_or(u32::MAX);
                        self.idle.record(it, range);
                    }
                }
                self.last_active_bin = Some(bin);
            }
            self.cur.count += invocations;
        }
        self.cur.peak = self.cur.peak.max(peak);
    }

    /// Closes every bin before `bin`.
    pub fn advance(&mut self, bin: u64) {
        match self.cur_bin {
            None => self.cur_bin = Some(bin),
            Some(c) if bin > c => {
                self.push(self.cur);
                let gap = (bin - c - 1).min(SERIES_CAP as u64);
                for _ in 0..gap {
                    self.push(BinStat::default());
                }
                self.bins_closed += bin - c - 1 - gap;
                self.cur = BinStat::default();
                self.cur_bin = Some(bin);
            }
            Some(_) => {}
        }
    }

    /// Peak concurrency of a burst: the highest of the last few active bins (the open one too).
    pub fn burst_peak(&self) -> u32 {
        self.active_peaks
            .iter()
            .copied()
            .max()
            .unwrap_or(0)
            .max(self.cur.peak)
    }

    fn push(&mut self, s: BinStat) {
        if s.count > 0 {
            if self.active_peaks.len() == ACTIVE_PEAKS {
                self.active_peaks.pop_front();
            }
            self.active_peaks.push_back(s.peak);
        }
        if self.series.len() == SERIES_CAP {
            self.series.pop_front();
        }
        self.series.push_back(s);
        self.bins_closed += 1;
    }

    /// Share of bins with invocations among the last `n` closed bins (0 with fewer than `n`).
    pub fn active_fraction(&self, n: usize) -> f64 {
        if self.series.len() < n || n == 0 {
            return 0.0;
        }
        let active = self
            .series
            .iter()
            .rev()
            .take(n)
            .filter(|s| s.count > 0)
            .count();
        active as f64 / n as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_times_are_bins_between_active_bins() {
        let mut h = History::default();
        for bin in [0u64, 1, 1, 5, 15] {
            h.observe(bin, 1, 1, 240);
        }
        h.observe(300, 2, 1, 240);
        assert_eq!(h.idle.in_range(), 3); // 1, 4, 10
        assert_eq!(h.idle.out_of_bounds(), 1); // 285
        assert_eq!(h.idle.recent().collect::<Vec<_>>(), [1, 4, 10, 285]);
        assert_eq!(h.idle.percentile(5.0), Some(1));
        assert_eq!(h.idle.percentile(99.0), Some(10));
        assert_eq!(h.last_active_bin, Some(300));
        // bins 0..=15 closed, then a gap capped at the series length
        assert_eq!(h.series.len(), SERIES_CAP);
        assert_eq!(h.bins_closed, 300);
    }

    #[test]
    fn cost_optimal_window_prewarms_periodic_and_skips_rare_outliers() {
        let mut h = IdleHistogram::default();
        for _ in 0..50 {
            h.record(30, 240);
        }
        // a timer every 30 bins: load at 30, nothing else
        assert_eq!(h.cost_optimal_window(10.0), Some((30, 30)));
        // mostly 1..=3, one 200: keep through 3, do not wait for the outlier
        let mut h = IdleHistogram::default();
        for i in 0..60 {
            h.record(1 + i % 3, 240);
        }
        h.record(200, 240);
        assert_eq!(h.cost_optimal_window(20.0), Some((0, 3)));
        // a cold start is cheaper than any waiting: no window
        let mut h = IdleHistogram::default();
        for i in 0..20 {
            h.record(10 + 7 * i, 240);
        }
        assert_eq!(h.cost_optimal_window(0.4), None);
    }

    #[test]
    fn cv_separates_concentrated_from_uniform() {
        let mut conc = IdleHistogram::default();
        let mut uni = IdleHistogram::default();
        for i in 0..240u32 {
            conc.record(60, 240);
            uni.record(i + 1, 240);
        }
        assert!(conc.bucket_cv(240) > 10.0);
        assert!(uni.bucket_cv(240) < 0.01);
    }
}
