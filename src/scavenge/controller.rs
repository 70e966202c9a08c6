//! The proportional-integral controller that paces the background
//! scavenger (Go's `piController`, as tuned in `mgcscavenge.go`).
//!
//! Its input is the fraction of the machine's CPU time the scavenger used
//! in the last period, its setpoint the fraction it may use, and its output
//! the ratio of time worked to time slept. An output that grows with the
//! input error (rather than a sleep time, which would shrink) keeps the
//! loop's response direct and easy to reason about.
//!
//! Anti-windup: when the output is clamped to its bounds, the integral is
//! driven back by the clamped excess over a reset time, so a long period at
//! a bound does not leave a huge integral to unwind. When the arithmetic
//! overflows (an input of absurd size), the controller resets and reports
//! failure; the caller then sleeps a conservative amount for a cooldown.

/// A PI controller with output bounds and back-calculation anti-windup.
#[derive(Clone, Copy, Debug)]
pub struct PiController {
    /// Proportional gain.
    kp: f64,
    /// Integral time constant (ns).
    ti: f64,
    /// Reset time for anti-windup (ns).
    tt: f64,
    /// Output bounds.
    min: f64,
    max: f64,
    /// The integral term so far.
    integral: f64,
}

impl PiController {
    /// The scavenger's controller: Go's gains (tuned loosely by
    /// Ziegler-Nichols), a one-second reset time, and a work:sleep ratio
    /// between 1:1000 and 1000:1.
    pub const fn scavenger() -> Self {
        PiController { kp: 0.3375, ti: 3.2e6, tt: 1e9, min: 0.001, max: 1000.0, integral: 0.0 }
    }

    /// The next output for `input` against `setpoint` over a period of
    /// `period` nanoseconds, or `None` if the controller broke down (it has
    /// then reset itself).
    pub fn next(&mut self, input: f64, setpoint: f64, period: f64) -> Option<f64> {
        let error = setpoint - input;
        let raw = self.kp * error + self.integral;
        if !raw.is_finite() {
            self.reset();
            return None;
        }
        let output = raw.clamp(self.min, self.max);
        self.integral += (self.kp * period / self.ti) * error + (period / self.tt) * (output - raw);
        if !self.integral.is_finite() {
            self.reset();
            return None;
        }
        Some(output)
    }

    /// Starts the integral at `output`, so that the first outputs stay near
    /// a known good value instead of climbing from zero.
    pub fn prime(&mut self, output: f64) {
        self.integral = output;
    }

    /// Forgets the accumulated integral.
    pub fn reset(&mut self) {
        self.integral = 0.0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A simulated scavenger: each period it works 1 ms and sleeps
    /// `1 ms / ratio`. Returns the CPU fraction it used averaged over time
    /// (the integral action's promise; with these gains single periods
    /// swing around the target, as Go's do).
    fn simulate(cpus: f64, target: f64, periods: usize) -> f64 {
        let mut c = PiController::scavenger();
        let mut ratio = 0.001;
        let (mut worked_total, mut elapsed) = (0.0, 0.0);
        for i in 0..periods {
            let worked = 1e6;
            let slept = worked / ratio;
            let fraction = worked / ((worked + slept) * cpus);
            if i >= periods / 3 {
                worked_total += worked;
                elapsed += worked + slept;
            }
            ratio = c.next(fraction, target, worked + slept).expect("controller failed");
        }
        worked_total / elapsed / cpus
    }

    #[test]
    fn averages_the_target_fraction() {
        for (cpus, target, tolerance) in [(2.0, 0.01, 0.05), (1.0, 0.01, 0.05), (8.0, 0.05, 0.05), (2.0, 0.001, 0.25)] {
            let f = simulate(cpus, target, 3000);
            assert!((f - target).abs() < target * tolerance, "cpus {cpus} target {target}: averaged {f}");
        }
    }

    #[test]
    fn output_is_clamped_and_windup_is_bounded() {
        let mut c = PiController::scavenger();
        // A long stretch far below target pins the output at the maximum.
        let mut out = 0.0;
        for _ in 0..1000 {
            out = c.next(0.0, 1.0, 1e9).unwrap();
        }
        assert_eq!(out, 1000.0);
        // Then far above target: the output must leave the maximum within a
        // few periods (without anti-windup the integral would take about a
        // thousand to unwind).
        let mut steps = 0;
        while c.next(1.0, 0.0, 1e9).unwrap() > 1.0 {
            steps += 1;
            assert!(steps < 20, "wound up");
        }
    }

    #[test]
    fn overflow_resets_and_reports() {
        let mut c = PiController::scavenger();
        assert_eq!(c.next(f64::INFINITY, 0.01, 1e6), None);
        assert_eq!(c.next(f64::NAN, 0.01, 1e6), None);
        // After the reset it works again.
        assert!(c.next(0.005, 0.01, 1e6).is_some());
    }
}
