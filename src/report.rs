//! Experiment reports: per segment with a holdout, the conversion rate of
//! each arm and the lift of treatment over holdout with a 95% confidence
//! interval — "did personalizing on this segment change anything?".
//!
//! The interval is the usual one for a ratio of two proportions: normal on
//! the log of the risk ratio, with standard error
//! `sqrt(1/x_t − 1/n_t + 1/x_h − 1/n_h)`.

use crate::experiments::ExperimentCounts;
use crate::telemetry::{CONVERTED_METRIC, ENTERED_METRIC};
use std::collections::BTreeMap;

/// z for a two-sided 95% interval.
const Z_95: f64 = 1.959_963_984_540_054;

/// The lift of treatment over holdout.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Lift {
    /// Share (0 to 1) of the treatment arm's entries that converted.
    pub treatment_rate: f64,
    /// Share (0 to 1) of the holdout arm's entries that converted.
    pub holdout_rate: f64,
    /// `treatment_rate / holdout_rate − 1`.
    pub lift: f64,
    /// 95% interval of the lift.
    pub low: f64,
    /// Upper end of the lift's 95% interval; an interval containing 0 means no
    /// measurable effect.
    pub high: f64,
}

/// The lift of `treatment` over `holdout`, each `(entered, converted)`;
/// `None` until both arms have entries and conversions.
pub fn lift(treatment: (u64, u64), holdout: (u64, u64)) -> Option<Lift> {
    let ((n_t, x_t), (n_h, x_h)) = (treatment, holdout);
    if n_t == 0 || n_h == 0 || x_t == 0 || x_h == 0 {
        return None;
    }
    let (n_t, x_t, n_h, x_h) = (n_t as f64, x_t as f64, n_h as f64, x_h as f64);
    let (treatment_rate, holdout_rate) = (x_t / n_t, x_h / n_h);
    let ratio = treatment_rate / holdout_rate;
    let standard_error = (1.0 / x_t - 1.0 / n_t + 1.0 / x_h - 1.0 / n_h).max(0.0).sqrt();
    Some(Lift {
        treatment_rate,
        holdout_rate,
        lift: ratio - 1.0,
        low: (ratio.ln() - Z_95 * standard_error).exp() - 1.0,
        high: (ratio.ln() + Z_95 * standard_error).exp() - 1.0,
    })
}

/// Reads the counts back from Prometheus text (a `/metrics` scrape).
pub fn parse_metrics(text: &str) -> Vec<ExperimentCounts> {
    let mut by_segment: BTreeMap<String, ExperimentCounts> = BTreeMap::new();
    for line in text.lines().filter(|line| !line.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else { continue };
        let Ok(value) = value.parse::<f64>() else { continue };
        let Some((name, labels)) = series.split_once('{') else { continue };
        if name != ENTERED_METRIC && name != CONVERTED_METRIC {
            continue;
        }
        let label = |key: &str| {
            labels.split(',').find_map(|pair| {
                let (label_key, label_value) = pair.split_once('=')?;
                (label_key.trim() == key).then(|| label_value.trim_matches(|c| c == '"' || c == '}').to_owned())
            })
        };
        let (Some(segment), Some(arm)) = (label("segment"), label("arm")) else { continue };
        let counts = by_segment.entry(segment.clone()).or_insert(ExperimentCounts {
            segment,
            treatment: (0, 0),
            holdout: (0, 0),
        });
        let pair = if arm == "holdout" { &mut counts.holdout } else { &mut counts.treatment };
        if name == ENTERED_METRIC {
            pair.0 = value as u64;
        } else {
            pair.1 = value as u64;
        }
    }
    by_segment.into_values().collect()
}

/// The report as a table a marketer can read.
pub fn render(counts: &[ExperimentCounts]) -> String {
    if counts.is_empty() {
        return "no segment runs an experiment (set `holdout` on a segment)\n".to_owned();
    }
    let percent = |value: f64| format!("{:+.1}%", value * 100.0);
    let mut out = format!(
        "{:<20} {:>18} {:>18} {:>9} {:>22}\n",
        "segment", "treatment conv.", "holdout conv.", "lift", "95% interval"
    );
    for experiment in counts {
        let arm = |(entered, converted): (u64, u64)| {
            let rate = if entered == 0 { 0.0 } else { converted as f64 / entered as f64 * 100.0 };
            format!("{converted}/{entered} {rate:.1}%")
        };
        let (lift_text, interval) = match lift(experiment.treatment, experiment.holdout) {
            Some(lift) => (percent(lift.lift), format!("{} to {}", percent(lift.low), percent(lift.high))),
            None => ("n/a".to_owned(), "not enough data".to_owned()),
        };
        out.push_str(&format!(
            "{:<20} {:>18} {:>18} {:>9} {:>22}\n",
            experiment.segment,
            arm(experiment.treatment),
            arm(experiment.holdout),
            lift_text,
            interval
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lift_and_its_interval_follow_the_log_risk_ratio() {
        let lift = lift((10_000, 1_300), (10_000, 1_000)).unwrap();
        assert!((lift.lift - 0.3).abs() < 1e-12);
        // se = sqrt(1/1300 - 1/10000 + 1/1000 - 1/10000) = 0.039612...
        assert!((lift.low - 0.202_885).abs() < 1e-5, "{lift:?}");
        assert!((lift.high - 0.404_955).abs() < 1e-5, "{lift:?}");
        assert_eq!(super::lift((10, 0), (10, 3)), None, "no conversions in an arm: no lift yet");
    }

    #[test]
    fn counts_survive_a_round_trip_through_prometheus_text() {
        let text = "# TYPE tactful_experiment_entered_total counter\n\
            tactful_experiment_entered_total{segment=\"high_value\",arm=\"treatment\"} 900\n\
            tactful_experiment_entered_total{segment=\"high_value\",arm=\"holdout\"} 100\n\
            tactful_experiment_converted_total{segment=\"high_value\",arm=\"treatment\"} 90\n\
            tactful_experiment_converted_total{segment=\"high_value\",arm=\"holdout\"} 7\n\
            tactful_records_applied_total{kind=\"browse\"} 5\n";
        assert_eq!(
            parse_metrics(text),
            vec![ExperimentCounts { segment: "high_value".to_owned(), treatment: (900, 90), holdout: (100, 7) }]
        );
        let table = render(&parse_metrics(text));
        assert!(table.contains("high_value"), "{table}");
        assert!(table.contains("90/900 10.0%"), "{table}");
        assert!(table.contains("7/100 7.0%"), "{table}");
        assert!(table.contains("+42.9%"), "{table}");
    }
}
