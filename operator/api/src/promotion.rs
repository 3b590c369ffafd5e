//! The promotion gate's rule, one place for the operator (a CameraTuning's candidate) and the
//! standalone run's report (what the operator would have done).

/// Whether a candidate clears `min_improvement` (`spec.rollout.minImprovement`): its mAP gain over
/// the model it started from on the same eval split, or, where the trainer bounded it, the one-sided
/// 95% lower bound of that gain over the split's images (a paired bootstrap), whichever is lower.
/// On a small split the mean gain can rest on a few lucky images; the bound is what the images
/// support. A candidate that scores exactly as its start (gain 0 in every draw) clears a margin of
/// 0, and a margin of -1 deploys every candidate.
pub fn clears(gain: f64, gain_lower_bound: Option<f64>, min_improvement: f64) -> bool {
    supported_gain(gain, gain_lower_bound) >= min_improvement
}

/// The gain the gate holds against the margin.
pub fn supported_gain(gain: f64, gain_lower_bound: Option<f64>) -> f64 {
    gain_lower_bound.map_or(gain, |low| low.min(gain))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gain_clears_the_margin_only_as_far_as_its_lower_bound_does() {
        assert!(clears(0.05, Some(0.02), 0.01));
        assert!(!clears(0.05, Some(-0.01), 0.01));
        assert!(clears(0.05, None, 0.01), "without a bound the mean gain decides");
        assert!(!clears(0.005, None, 0.01));
    }

    #[test]
    fn a_bound_above_the_gain_does_not_raise_it() {
        assert_eq!(supported_gain(0.01, Some(0.03)), 0.01);
    }

    #[test]
    fn a_tie_clears_a_margin_of_nothing_and_every_candidate_clears_minus_one() {
        assert!(clears(0.0, Some(0.0), 0.0));
        assert!(clears(-0.3, Some(-0.5), -1.0));
    }
}
