//! Monthly totals to daily values without artificial steps.
//!
//! Spreading each month's total by calendar factors alone makes a staircase: every month is
//! flat at its own level, and 1 June jumps above 31 May although no daily data says so. The
//! proportional first-difference Denton method (Denton 1971; as used by statistical offices
//! for benchmarking) instead finds daily values `x_d = f_d · z_d` that add up to each month's
//! total exactly while the ratio `z` to the daily indicator `f` (calendar factors, or a daily
//! proxy) moves as smoothly as the totals allow: it minimises `Σ (z_d − z_{d−1})²` subject to
//! the monthly sums. Weekday and holiday patterns come from `f`; the level glides across
//! month boundaries instead of jumping.
//!
//! Solved without forming the daily system: with `z_d = z_0 + Σ_{k<d} δ_k`, minimising `Σ δ²`
//! under the `M` month constraints gives `δ = Bᵀμ` and an `(M + 1)`-square system for `μ`
//! and `z_0`, built in `O(days · M²)`.

/// Daily values for consecutive months: `totals[m]` spread over `lengths[m]` days following
/// `indicator` (one positive value per day). Each month's days sum to its total (to rounding).
pub fn denton(totals: &[f64], lengths: &[usize], indicator: &[f64]) -> Vec<f64> {
    assert_eq!(totals.len(), lengths.len(), "one length per month");
    let n: usize = lengths.iter().sum();
    assert_eq!(indicator.len(), n, "one indicator value per day");
    let m = totals.len();
    if m == 0 {
        return Vec::new();
    }
    let f: Vec<f64> = indicator.iter().map(|x| if x.is_finite() && *x > 0.0 { *x } else { 1e-9 }).collect();
    let starts: Vec<usize> = lengths.iter().scan(0, |acc, l| {
        let s = *acc;
        *acc += l;
        Some(s)
    }).collect();
    let month_of: Vec<usize> = (0..m).flat_map(|i| std::iter::repeat_n(i, lengths[i])).collect();
    let fsum: Vec<f64> = (0..m).map(|i| f[starts[i]..starts[i] + lengths[i]].iter().sum()).collect();
    // suffix[d] = Σ f over days d.. of d's month.
    let mut suffix = vec![0.0; n];
    for i in 0..m {
        let mut acc = 0.0;
        for d in (starts[i]..starts[i] + lengths[i]).rev() {
            acc += f[d];
            suffix[d] = acc;
        }
    }
    // B[month][k] for δ_k (k = 0..n−1, moving day k+1 onwards): months after day k+1's month
    // see their whole f, day k+1's month its suffix from k+1, earlier months nothing.
    let b_at = |k: usize, row: &mut Vec<f64>| {
        row.iter_mut().for_each(|x| *x = 0.0);
        let d = k + 1;
        let md = month_of[d];
        row[md] = suffix[d];
        row[(md + 1)..m].copy_from_slice(&fsum[(md + 1)..m]);
    };
    // System [[BBᵀ, F], [Fᵀ, 0]] · [μ; z0] = [totals; 0].
    let size = m + 1;
    let mut a = vec![vec![0.0; size]; size];
    let mut row = vec![0.0; m];
    for k in 0..n.saturating_sub(1) {
        b_at(k, &mut row);
        let first = month_of[k + 1];
        for i in first..m {
            for j in first..m {
                a[i][j] += row[i] * row[j];
            }
        }
    }
    for i in 0..m {
        a[i][m] = fsum[i];
        a[m][i] = fsum[i];
    }
    let mut rhs: Vec<f64> = totals.to_vec();
    rhs.push(0.0);
    let sol = solve_dense(a, rhs);
    let (mu, z0) = (&sol[..m], sol[m]);
    let mut x = vec![0.0; n];
    let mut z = z0;
    for d in 0..n {
        if d > 0 {
            b_at(d - 1, &mut row);
            z += row.iter().zip(mu).map(|(b, u)| b * u).sum::<f64>();
        }
        x[d] = f[d] * z;
    }
    // Exact totals, and no negative day (possible only next to a month far smaller than its
    // neighbours): clamp and rescale within the month.
    for i in 0..m {
        let days = &mut x[starts[i]..starts[i] + lengths[i]];
        days.iter_mut().for_each(|v| *v = v.max(0.0));
        let s: f64 = days.iter().sum();
        if s > 0.0 {
            let k = totals[i] / s;
            days.iter_mut().for_each(|v| *v *= k);
        } else {
            let fs: f64 = f[starts[i]..starts[i] + lengths[i]].iter().sum();
            for (v, fd) in days.iter_mut().zip(&f[starts[i]..starts[i] + lengths[i]]) {
                *v = totals[i] * fd / fs;
            }
        }
    }
    x
}

/// Daily values for consecutive months, each month's days taken from the Denton path through
/// it and its two neighbours. Smooth across boundaries like [`denton`], and local: a month's
/// total moves only its own days and its neighbours' (a path through a whole year would move
/// every day of it, and a streaming job would revise the year for each new month).
pub fn denton_local(totals: &[f64], lengths: &[usize], indicator: &[f64]) -> Vec<f64> {
    let starts: Vec<usize> = lengths.iter().scan(0, |acc, l| {
        let s = *acc;
        *acc += l;
        Some(s)
    }).collect();
    let mut out = Vec::with_capacity(indicator.len());
    for i in 0..totals.len() {
        let (lo, hi) = (i.saturating_sub(1), (i + 1).min(totals.len() - 1));
        let window = denton(&totals[lo..=hi], &lengths[lo..=hi], &indicator[starts[lo]..starts[hi] + lengths[hi]]);
        let offset = starts[i] - starts[lo];
        out.extend_from_slice(&window[offset..offset + lengths[i]]);
    }
    out
}

/// Gaussian elimination with partial pivoting on a small dense system.
fn solve_dense(mut a: Vec<Vec<f64>>, mut b: Vec<f64>) -> Vec<f64> {
    let n = b.len();
    for c in 0..n {
        let p = (c..n).max_by(|i, j| a[*i][c].abs().total_cmp(&a[*j][c].abs())).expect("rows");
        a.swap(c, p);
        b.swap(c, p);
        let piv = a[c][c];
        if piv.abs() < 1e-300 {
            continue;
        }
        for r in (c + 1)..n {
            let f = a[r][c] / piv;
            if f != 0.0 {
                for k in c..n {
                    a[r][k] -= f * a[c][k];
                }
                b[r] -= f * b[c];
            }
        }
    }
    let mut x = vec![0.0; n];
    for r in (0..n).rev() {
        let s: f64 = ((r + 1)..n).map(|k| a[r][k] * x[k]).sum();
        x[r] = if a[r][r].abs() < 1e-300 { 0.0 } else { (b[r] - s) / a[r][r] };
    }
    x
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::calendar::{DayFactorTable, HolidayCalendar, days_of_month};
    use crate::domain::Sector;
    use proptest::prelude::*;

    /// Months `first..first+len` of a year with their calendar indicator for `sector`.
    fn calendar(year: i32, first: u32, len: u32, sector: Sector) -> (Vec<usize>, Vec<f64>, Vec<chrono::NaiveDate>) {
        let (hc, df) = (HolidayCalendar::official(), DayFactorTable::bundled());
        let mut lengths = Vec::new();
        let mut f = Vec::new();
        let mut days = Vec::new();
        for m in first..first + len {
            let d: Vec<_> = days_of_month(year, m).collect();
            lengths.push(d.len());
            f.extend(d.iter().map(|d| df.factor(sector, &hc, *d)));
            days.extend(d);
        }
        (lengths, f, days)
    }

    fn mean(v: &[f64]) -> f64 {
        v.iter().sum::<f64>() / v.len() as f64
    }

    #[test]
    fn a_constant_daily_rate_stays_constant() {
        let lengths = vec![31, 28, 31, 30];
        let totals: Vec<f64> = lengths.iter().map(|l| 2.0 * *l as f64).collect();
        let x = denton(&totals, &lengths, &vec![1.0; 120]);
        assert!(x.iter().all(|v| (v - 2.0).abs() < 1e-9), "{x:?}");
    }

    proptest! {
        /// Monthly sums are kept to rounding, and where no daily proxy exists (a calendar
        /// indicator) the level moves across a month boundary by no more than twice the
        /// largest week-to-week change inside the two months, plus 1 %.
        #[test]
        fn keeps_monthly_totals_and_has_no_steps_at_month_boundaries(
            year in 2016i32..2024,
            sector in prop::sample::select(Sector::ALL.to_vec()),
            changes in prop::collection::vec(-0.15f64..0.15, 11),
            level in 0.01f64..100.0,
        ) {
            let (lengths, f, days) = calendar(year, 1, 12, sector);
            let mut totals = Vec::new();
            let mut rate = level;
            for (i, l) in lengths.iter().enumerate() {
                if i > 0 { rate *= 1.0 + changes[i - 1]; }
                totals.push(rate * *l as f64);
            }
            for x in [denton(&totals, &lengths, &f), denton_local(&totals, &lengths, &f)] {
            let mut start = 0;
            for (t, l) in totals.iter().zip(&lengths) {
                let s: f64 = x[start..start + l].iter().sum();
                prop_assert!((s - t).abs() <= 1e-9 * t.abs().max(1e-12), "{} vs {}", s, t);
                start += l;
            }
            let hc = HolidayCalendar::official();
            let mut start = 0;
            for w in lengths.windows(2) {
                let b = start + w[0];
                // The long holidays (Spring Festival, National Day) move a whole week.
                let near_holiday = days[b.saturating_sub(10)..(b + 10).min(days.len())].iter().any(|d| hc.day_kind(*d) == crate::calendar::DayKind::Holiday);
                if !near_holiday && b >= 7 && b + 7 <= x.len() {
                    let before = mean(&x[b - 7..b]);
                    let after = mean(&x[b..b + 7]);
                    let inside: Vec<f64> = (start + 7..b + w[1] - 7).map(|i| (mean(&x[i..i + 7]) - mean(&x[i - 7..i])).abs()).collect();
                    let largest = inside.iter().copied().fold(0.0, f64::max);
                    prop_assert!((after - before).abs() <= 2.0 * largest + 0.01 * before, "boundary at day {}: {} → {} (largest inside {})", b, before, after, largest);
                }
                start += w[0];
            }
            }
        }

        /// A month's total moves only its own days and its neighbours'.
        #[test]
        fn a_month_moves_only_its_neighbourhood(month in 0usize..12, factor in 0.5f64..2.0) {
            let (lengths, f, _) = calendar(2019, 1, 12, Sector::Industry);
            let totals: Vec<f64> = lengths.iter().map(|l| 3.0 * *l as f64).collect();
            let mut changed = totals.clone();
            changed[month] *= factor;
            let (a, b) = (denton_local(&totals, &lengths, &f), denton_local(&changed, &lengths, &f));
            let mut start = 0;
            for (i, l) in lengths.iter().enumerate() {
                if i + 1 < month || i > month + 1 {
                    prop_assert_eq!(&a[start..start + l], &b[start..start + l], "month {} moved by month {}", i, month);
                }
                start += l;
            }
        }

        /// A daily proxy, where one exists, shapes the days: with totals that are the proxy's
        /// own month sums times a smooth level, the days follow the proxy.
        #[test]
        fn follows_a_daily_proxy(noise in prop::collection::vec(0.7f64..1.3, 90)) {
            let lengths = vec![31usize, 28, 31];
            let totals: Vec<f64> = {
                let mut s = 0;
                lengths.iter().map(|l| { let t: f64 = noise[s..s + l].iter().sum(); s += l; t }).collect()
            };
            let x = denton(&totals, &lengths, &noise);
            for (a, b) in x.iter().zip(&noise) {
                prop_assert!((a - b).abs() < 1e-6 * b, "{} vs {}", a, b);
            }
        }
    }
}
