//! Robust statistics: median, MAD, robust z-scores and a two-window shift test.
//!
//! MAD is scaled by 1.4826 so that it estimates the standard deviation of normal data. Every
//! score adds an absolute `floor` to the spread, so an idle, perfectly flat series (MAD = 0)
//! does not turn a tiny wobble into an infinite z-score.

/// Scale from MAD to a standard deviation for normal data.
const MAD_SCALE: f64 = 1.4826;

/// Median of `values` (reorders them); `None` when empty.
pub(crate) fn median(values: &mut [f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let n = values.len();
    Some(if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    })
}

/// Median and scaled MAD of `values`.
pub(crate) fn median_mad(values: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    let mut v: Vec<f64> = values.collect();
    let med = median(&mut v)?;
    let mut dev: Vec<f64> = v.iter().map(|x| (x - med).abs()).collect();
    let mad = median(&mut dev)?;
    Some((med, mad * MAD_SCALE))
}

/// A value compared with a reference set.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Score {
    pub median: f64,
    pub spread: f64,
    pub z: f64,
}

/// Robust z-score of `x` against `reference`, with `floor` added to the spread.
pub(crate) fn robust_z(x: f64, reference: impl Iterator<Item = f64>, floor: f64) -> Option<Score> {
    let (median, spread) = median_mad(reference)?;
    Some(Score {
        median,
        spread,
        z: (x - median) / (spread + floor),
    })
}

/// A level shift between two adjacent windows.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Shift {
    pub before: f64,
    pub after: f64,
    pub z: f64,
}

/// Two-window median shift test on the tail of `series`: the median of the last `recent`
/// values against the median of the `reference` values before them, in units of the reference
/// window's robust spread (+ `floor`). `None` while the series is shorter than both windows.
pub(crate) fn shift(series: &[f64], reference: usize, recent: usize, floor: f64) -> Option<Shift> {
    let n = series.len();
    if recent == 0 || reference == 0 || n < reference + recent {
        return None;
    }
    let (before, spread) = median_mad(series[n - recent - reference..n - recent].iter().copied())?;
    let mut tail = series[n - recent..].to_vec();
    let after = median(&mut tail)?;
    Some(Shift {
        before,
        after,
        z: (after - before) / (spread + floor),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_odd_even_empty() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&mut [4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&mut []), None);
    }

    #[test]
    fn mad_ignores_one_outlier() {
        let (m, s) = median_mad([1.0, 1.0, 2.0, 2.0, 1000.0].into_iter()).unwrap();
        assert_eq!(m, 2.0);
        assert!((s - 1.4826).abs() < 1e-9);
    }

    #[test]
    fn flat_series_uses_the_floor() {
        let s = robust_z(1.0, [0.0; 10].into_iter(), 0.5).unwrap();
        assert_eq!(s.z, 2.0);
    }

    #[test]
    fn shift_sees_a_step() {
        let mut v = vec![1.0; 30];
        v.extend([5.0; 10]);
        let s = shift(&v, 30, 10, 0.1).unwrap();
        assert_eq!((s.before, s.after), (1.0, 5.0));
        assert!(s.z > 30.0);
        assert!(shift(&v[..39], 30, 10, 0.1).is_none());
    }
}
