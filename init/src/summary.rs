//! The console summary: one line per stage with its status and time, and the reason of any
//! failure, then what ran alongside the stages (`in parallel:` lines; a stage's time is its
//! own), printed when the pipeline has gone as far as it can.

use std::time::Duration;

use crate::log;
use crate::outcome::{Outcome, StageResult};

/// The summary lines, without the log prefix.
pub fn lines(
    results: &[StageResult],
    since_start: Duration,
    in_parallel: &[String],
) -> Vec<(bool, String)> {
    let mut out = vec![(
        false,
        format!(
            "boot summary ({:.2} s since init start):",
            since_start.as_secs_f64()
        ),
    )];
    for r in results {
        let status = r.status().console_word();
        let (reason, failed) = match &r.outcome {
            Some(Outcome::Failed(why)) => (format!("  {why}"), true),
            Some(Outcome::DoneEarlier) => (
                "  (first-boot stage passed in an earlier boot)".into(),
                false,
            ),
            Some(Outcome::Passed) | None => (String::new(), false),
        };
        let time = if r.outcome.is_some() {
            format!("{:>7.3} s", r.seconds)
        } else {
            format!("{:>9}", "-")
        };
        out.push((
            failed,
            format!("  {:<11} {:<13} {time}{reason}", r.stage.name(), status),
        ));
    }
    for p in in_parallel {
        out.push((false, format!("  in parallel: {p}")));
    }
    out
}

/// Prints the summary on the console (failures as errors).
pub fn print(results: &[StageResult], since_start: Duration, in_parallel: &[String]) {
    for (failed, line) in lines(results, since_start, in_parallel) {
        if failed {
            log::error(line);
        } else {
            log::info(line);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use imrs_config::stage::Stage;

    #[test]
    fn one_line_per_stage_with_reason() {
        let r = |stage, outcome, seconds| StageResult {
            stage,
            outcome,
            seconds,
        };
        let results = vec![
            r(Stage::Platform, Some(Outcome::Passed), 0.25),
            r(
                Stage::Site,
                Some(Outcome::Failed("no site config".into())),
                0.01,
            ),
            r(Stage::Hardware, None, 0.0),
        ];
        let l = lines(
            &results,
            Duration::from_millis(1500),
            &["BIRD started early".to_string()],
        );
        assert_eq!(l.len(), 5);
        assert_eq!(l[0].1, "boot summary (1.50 s since init start):");
        assert_eq!(
            l[1],
            (false, "  platform    PASSED          0.250 s".to_string())
        );
        assert_eq!(
            l[2],
            (
                true,
                "  site        FAILED          0.010 s  no site config".to_string()
            )
        );
        assert_eq!(
            l[3],
            (false, "  hardware    not reached           -".to_string())
        );
        assert_eq!(l[4].1, "  in parallel: BIRD started early");
    }
}
