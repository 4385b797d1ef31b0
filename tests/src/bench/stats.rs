//! Medians and interleaved rounds.

/// Median of `values` (mean of the two middle values for an even count); `None` when empty
/// or when any value is not finite.
pub fn median(values: &[f64]) -> Option<f64> {
    if values.is_empty() || values.iter().any(|v| !v.is_finite()) {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    Some(if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    })
}

/// The `q`-quantile (0..=1) of `values` by nearest rank; `None` when empty.
pub fn quantile(values: &[f64], q: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = (q.clamp(0.0, 1.0) * v.len() as f64).ceil() as usize;
    Some(v[rank.clamp(1, v.len()) - 1])
}

/// What one variant of an interleaved comparison produced over all rounds.
#[derive(Debug, Clone, PartialEq)]
pub struct VariantRuns {
    /// The variant's name.
    pub name: String,
    /// One value per round that succeeded, in round order.
    pub values: Vec<f64>,
    /// The first error, if a round failed (later rounds of that variant are skipped).
    pub error: Option<String>,
}

/// Runs `rounds` rounds of every variant in turn (A B C A B C ...): `run(variant_index,
/// round)` returns one value or an error. A variant that fails once is skipped for the rest
/// of the comparison (its error is kept), so a broken alternative cannot stall the bench.
pub fn interleave<F>(names: &[&str], rounds: usize, mut run: F) -> Vec<VariantRuns>
where
    F: FnMut(usize, usize) -> Result<f64, String>,
{
    let mut out: Vec<VariantRuns> = names
        .iter()
        .map(|n| VariantRuns {
            name: (*n).to_string(),
            values: Vec::new(),
            error: None,
        })
        .collect();
    for round in 0..rounds {
        for (i, slot) in out.iter_mut().enumerate() {
            if slot.error.is_some() {
                continue;
            }
            match run(i, round) {
                Ok(v) => slot.values.push(v),
                Err(e) => slot.error = Some(e),
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_odd_even_and_empty() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[1.0, f64::NAN]), None);
    }

    #[test]
    fn quantile_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&v, 0.5), Some(50.0));
        assert_eq!(quantile(&v, 0.99), Some(99.0));
        assert_eq!(quantile(&v, 1.0), Some(100.0));
        assert_eq!(quantile(&v, 0.0), Some(1.0));
        assert_eq!(quantile(&[], 0.5), None);
    }

    #[test]
    fn interleave_alternates_and_drops_failed_variants() {
        let mut order = Vec::new();
        let runs = interleave(&["a", "b", "c"], 3, |i, round| {
            order.push((i, round));
            if i == 1 && round == 1 {
                Err("b broke".into())
            } else {
                Ok((i * 10 + round) as f64)
            }
        });
        assert_eq!(
            order,
            vec![
                (0, 0),
                (1, 0),
                (2, 0),
                (0, 1),
                (1, 1),
                (2, 1),
                (0, 2),
                (2, 2)
            ]
        );
        assert_eq!(runs[0].values, vec![0.0, 1.0, 2.0]);
        assert_eq!(runs[1].values, vec![10.0]);
        assert_eq!(runs[1].error.as_deref(), Some("b broke"));
        assert_eq!(runs[2].values, vec![20.0, 21.0, 22.0]);
    }
}
