//! Small, deterministic forecasting models: damped-trend exponential smoothing (ETS(A,Ad,N),
//! Holt's method with a damped trend) for dense invocation series, and an AR(1) model
//! (ARIMA(1,0,0)) for idle times beyond the histogram range.

/// ETS(A,Ad,N): level, damped trend, additive errors. Parameters are chosen by a grid search
/// minimising the one-step-ahead squared error on the series it is fitted to.
#[derive(Debug, Clone, PartialEq)]
pub struct DampedHolt {
    alpha: f64,
    beta: f64,
    phi: f64,
    level: f64,
    trend: f64,
}

const ALPHAS: [f64; 5] = [0.05, 0.1, 0.2, 0.4, 0.7];
const BETAS: [f64; 3] = [0.0, 0.05, 0.2];
const PHIS: [f64; 3] = [0.8, 0.9, 0.98];

impl DampedHolt {
    /// Fits to `series` (oldest first) and returns the model with its state at the end of it.
    /// `None` for fewer than 3 points.
    pub fn fit(series: &[f64]) -> Option<DampedHolt> {
        if series.len() < 3 {
            return None;
        }
        let mut best: Option<(f64, DampedHolt)> = None;
        for &alpha in &ALPHAS {
            for &beta in &BETAS {
                for &phi in &PHIS {
                    let mut m = DampedHolt {
                        alpha,
                        beta,
                        phi,
                        level: series[0],
                        trend: series[1] - series[0],
                    };
                    let mut sse = 0.0;
                    for &y in &series[1..] {
                        let e = y - m.forecast(1);
                        sse += e * e;
                        m.update(y);
                    }
                    if best.as_ref().is_none_or(|(b, _)| sse < *b) {
                        best = Some((sse, m));
                    }
                }
            }
        }
        best.map(|(_, m)| m)
    }

    /// Takes in the next observation.
    pub fn update(&mut self, y: f64) {
        let prev_level = self.level;
        self.level = self.alpha * y + (1.0 - self.alpha) * (prev_level + self.phi * self.trend);
        self.trend =
            self.beta * (self.level - prev_level) + (1.0 - self.beta) * self.phi * self.trend;
    }

    /// Forecast `h` steps ahead.
    pub fn forecast(&self, h: u32) -> f64 {
        let mut damp = 0.0;
        let mut p = 1.0;
        for _ in 0..h {
            p *= self.phi;
            damp += p;
        }
        self.level + damp * self.trend
    }
}

/// One-step prediction of an AR(1) model fitted by least squares to `xs` (oldest first); the
/// mean for fewer than 3 points. `None` when `xs` is empty.
pub fn ar1_predict(xs: &[f64]) -> Option<f64> {
    let last = *xs.last()?;
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / n;
    if xs.len() < 3 {
        return Some(mean);
    }
    let mut num = 0.0;
    let mut den = 0.0;
    for w in xs.windows(2) {
        num += (w[1] - mean) * (w[0] - mean);
    }
    for x in xs {
        den += (x - mean) * (x - mean);
    }
    let phi = if den > 0.0 {
        (num / den).clamp(-0.99, 0.99)
    } else {
        0.0
    };
    Some((mean + phi * (last - mean)).max(0.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holt_follows_a_trend_and_a_level() {
        let series: Vec<f64> = (0..100).map(|i| 10.0 + 0.5 * i as f64).collect();
        let m = DampedHolt::fit(&series).expect("fits");
        let f = m.forecast(1);
        assert!((f - 60.0).abs() < 2.0, "forecast {f}");
        let flat = vec![7.0; 50];
        let m = DampedHolt::fit(&flat).expect("fits");
        assert!((m.forecast(5) - 7.0).abs() < 1e-6);
        assert!(DampedHolt::fit(&[1.0, 2.0]).is_none());
    }

    #[test]
    fn ar1_predicts_mean_reversion() {
        assert_eq!(ar1_predict(&[]), None);
        assert_eq!(ar1_predict(&[300.0, 310.0]), Some(305.0));
        let p = ar1_predict(&[300.0, 300.0, 300.0, 300.0]).expect("some");
        assert!((p - 300.0).abs() < 1e-9);
        let alt = ar1_predict(&[100.0, 500.0, 100.0, 500.0, 100.0]).expect("some");
        assert!(
            alt > 300.0,
            "alternating series predicts the high value next: {alt}"
        );
    }
}
