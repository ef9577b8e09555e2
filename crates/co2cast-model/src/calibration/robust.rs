//! Robust (Huber) regression for the small models fitted in calibration: `y = φ·x + μ`
//! with either parameter optionally fixed at zero.

/// Which parameters are free.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Free {
    pub slope: bool,
    pub intercept: bool,
}

/// Fitted `(slope, intercept)`.
pub fn huber_fit(x: &[f64], y: &[f64], free: Free) -> (f64, f64) {
    assert_eq!(x.len(), y.len());
    let n = x.len();
    if n == 0 || (!free.slope && !free.intercept) {
        return (0.0, 0.0);
    }
    let mut w = vec![1.0; n];
    let (mut b, mut a) = (0.0, 0.0);
    for _ in 0..50 {
        (b, a) = weighted_ls(x, y, &w, free);
        let r: Vec<f64> = (0..n).map(|i| y[i] - b * x[i] - a).collect();
        let scale = mad(&r).max(1e-9);
        let c = 1.345 * scale;
        let mut changed = 0.0f64;
        for i in 0..n {
            let nw = if r[i].abs() <= c { 1.0 } else { c / r[i].abs() };
            changed = changed.max((nw - w[i]).abs());
            w[i] = nw;
        }
        if changed < 1e-6 {
            break;
        }
    }
    (b, a)
}

fn weighted_ls(x: &[f64], y: &[f64], w: &[f64], free: Free) -> (f64, f64) {
    let sw: f64 = w.iter().sum();
    let swx: f64 = w.iter().zip(x).map(|(w, x)| w * x).sum();
    let swy: f64 = w.iter().zip(y).map(|(w, y)| w * y).sum();
    let swxx: f64 = w.iter().zip(x).map(|(w, x)| w * x * x).sum();
    let swxy: f64 = (0..x.len()).map(|i| w[i] * x[i] * y[i]).sum();
    match (free.slope, free.intercept) {
        (true, true) => {
            let det = sw * swxx - swx * swx;
            if det.abs() < 1e-12 {
                return (0.0, swy / sw);
            }
            let b = (sw * swxy - swx * swy) / det;
            (b, (swy - b * swx) / sw)
        }
        (true, false) => (if swxx > 1e-12 { swxy / swxx } else { 0.0 }, 0.0),
        (false, true) => (0.0, swy / sw),
        (false, false) => (0.0, 0.0),
    }
}

/// Median absolute deviation scaled to a normal standard deviation.
pub fn mad(v: &[f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let m = median(v);
    let dev: Vec<f64> = v.iter().map(|x| (x - m).abs()).collect();
    1.4826 * median(&dev)
}

pub fn median(v: &[f64]) -> f64 {
    quantile(v, 0.5)
}

/// Linear-interpolation quantile (Hyndman–Fan type 7) of unsorted data.
pub fn quantile(v: &[f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s: Vec<f64> = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    quantile_sorted(&s, q)
}

pub fn quantile_sorted(s: &[f64], q: f64) -> f64 {
    if s.is_empty() {
        return f64::NAN;
    }
    let h = (s.len() - 1) as f64 * q.clamp(0.0, 1.0);
    let lo = h.floor() as usize;
    let hi = h.ceil() as usize;
    s[lo] + (h - lo as f64) * (s[hi] - s[lo])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovers_line_despite_outliers() {
        let x: Vec<f64> = (0..40).map(|i| i as f64 / 10.0).collect();
        let mut y: Vec<f64> = x.iter().map(|x| 0.7 * x + 0.05).collect();
        y[3] += 5.0;
        y[17] -= 4.0;
        let (b, a) = huber_fit(&x, &y, Free { slope: true, intercept: true });
        assert!((b - 0.7).abs() < 0.01 && (a - 0.05).abs() < 0.02, "{b} {a}");
        let (b0, _) = huber_fit(&x, &y, Free { slope: true, intercept: false });
        assert!(b0 > 0.6);
        assert_eq!(quantile(&[3.0, 1.0, 2.0], 0.5), 2.0);
        assert_eq!(quantile(&[1.0, 2.0], 0.25), 1.25);
    }
}
