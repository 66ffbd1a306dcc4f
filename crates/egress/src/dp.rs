//! Differential privacy for aggregate releases: exact discrete Laplace noise, from the system's
//! secure randomness (aws-lc-rs), with no floating point in the sampler.
//!
//! The sampler is Algorithm 2 of Canonne, Kamath and Steinke, "The Discrete Gaussian for
//! Differential Privacy" (NeurIPS 2020), built on their Algorithm 1 for Bernoulli(exp(-γ)) with
//! rational γ: integer arithmetic and uniform draws only, so that the noise's distribution is
//! exactly the one the privacy proof assumes (floating-point Laplace noise leaks through the
//! gaps between doubles: Mironov, CCS 2012). It is what OpenDP's `make_laplace` on integers
//! samples; OpenDP itself is not used here because its secure randomness needs OpenSSL, a second
//! crypto library beside aws-lc-rs, and its default randomness is documented as not secure.
//!
//! **Accounting.** A release of counts (or clamped sums) over a grid of groups whose L1
//! sensitivity is Δ (how much one privacy unit, a subject with their records bounded to a
//! number per subject, can change all the cells together), with discrete Laplace noise of scale
//! b in every cell, is ε-differentially private with ε = Δ / b (pure DP, δ = 0). A release asks
//! for ε; the scale is b = Δ / ε, as a rational.

use aws_lc_rs::rand::{SecureRandom, SystemRandom};

/// The randomness failed, or a draw did not fit in 64 bits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the system's secure randomness failed, or a noise draw did not fit in 64 bits")]
pub struct RandomnessFailed;

/// A source of uniform integers from the system's secure randomness.
pub struct Uniform {
    random: SystemRandom,
}

impl Default for Uniform {
    fn default() -> Self {
        Self { random: SystemRandom::new() }
    }
}

impl Uniform {
    /// A uniform integer in `[0, bound)`, by rejection (no modulo bias); `bound` at least 1.
    pub fn below(&self, bound: u64) -> Result<u64, RandomnessFailed> {
        if bound <= 1 {
            return Ok(0);
        }
        // The largest multiple of `bound` that fits: draws at or above it are rejected.
        let zone = u64::MAX - (u64::MAX % bound);
        loop {
            let mut bytes = [0u8; 8];
            self.random.fill(&mut bytes).map_err(|_| RandomnessFailed)?;
            let draw = u64::from_le_bytes(bytes);
            if draw < zone {
                return Ok(draw % bound);
            }
        }
    }

    /// Bernoulli(n / d), for 0 <= n <= d and d >= 1.
    pub fn bernoulli(&self, n: u64, d: u64) -> Result<bool, RandomnessFailed> {
        Ok(self.below(d)? < n)
    }

    /// Bernoulli(exp(-n / d)) for n >= 0, d >= 1 (CKS20, Algorithm 1).
    pub fn bernoulli_exp(&self, n: u64, d: u64) -> Result<bool, RandomnessFailed> {
        if n <= d {
            return self.bernoulli_exp_at_most_one(n, d);
        }
        // exp(-γ) = exp(-1)^floor(γ) · exp(-(γ - floor(γ))).
        for _ in 0..n / d {
            if !self.bernoulli_exp_at_most_one(1, 1)? {
                return Ok(false);
            }
        }
        self.bernoulli_exp_at_most_one(n % d, d)
    }

    /// Bernoulli(exp(-γ)) for γ = n / d in [0, 1].
    fn bernoulli_exp_at_most_one(&self, n: u64, d: u64) -> Result<bool, RandomnessFailed> {
        let mut k: u64 = 1;
        loop {
            // Bernoulli(γ / k) = Bernoulli(n / (d·k)).
            let Some(dk) = d.checked_mul(k) else { return Ok(k % 2 == 1) };
            if !self.bernoulli(n, dk)? {
                return Ok(k % 2 == 1);
            }
            k += 1;
        }
    }

    /// A draw of the discrete Laplace distribution of scale `t / s` (P(y) ∝ exp(-|y|·s/t)),
    /// for s, t >= 1 (CKS20, Algorithm 2).
    pub fn discrete_laplace(&self, s: u64, t: u64) -> Result<i64, RandomnessFailed> {
        let (s, t) = (s.max(1), t.max(1));
        loop {
            let u = self.below(t)?;
            if !self.bernoulli_exp(u, t)? {
                continue;
            }
            let mut v: u64 = 0;
            while self.bernoulli_exp(1, 1)? {
                v += 1;
            }
            // No saturation anywhere: a draw that does not fit is an error, never a clipped
            // (and so revealing) value. At the scales a release allows it cannot happen.
            let x = t.checked_mul(v).and_then(|tv| tv.checked_add(u)).ok_or(RandomnessFailed)?;
            let y = x / s;
            let negative = self.bernoulli(1, 2)?;
            if negative && y == 0 {
                continue;
            }
            let y = i64::try_from(y).map_err(|_| RandomnessFailed)?;
            return Ok(if negative { -y } else { y });
        }
    }
}

/// A positive rational, as epsilon and noise scales are written here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rational {
    /// The numerator.
    pub n: u64,
    /// The denominator.
    pub d: u64,
}

impl Rational {
    /// Epsilon from its decimal (up to 6 places), which must be above 0 and at most 100.
    pub fn epsilon(value: f64) -> Option<Self> {
        if !value.is_finite() || value <= 0.0 || value > 100.0 {
            return None;
        }
        let n = (value * 1_000_000.0).round();
        (n >= 1.0).then(|| Self { n: n as u64, d: 1_000_000 }.reduced())
    }

    /// The value as a double, for accounting and display.
    pub fn value(self) -> f64 {
        self.n as f64 / self.d as f64
    }

    fn reduced(self) -> Self {
        let gcd = gcd(self.n, self.d).max(1);
        Self { n: self.n / gcd, d: self.d / gcd }
    }
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// The discrete Laplace scale for a release of L1 sensitivity `sensitivity` at `epsilon`:
/// b = Δ / ε, as the (s, t) of [`Uniform::discrete_laplace`] (scale t / s).
pub fn laplace_scale(sensitivity: u64, epsilon: Rational) -> Option<(u64, u64)> {
    // b = Δ / (n / d) = Δ·d / n: t = Δ·d, s = n. A scale that does not fit is refused, never
    // saturated (which would give less noise than the accounting says).
    let t = sensitivity.max(1).checked_mul(epsilon.d)?;
    (t <= MAX_SCALE_NUMERATOR).then_some((epsilon.n.max(1), t))
}

/// The largest numerator t of a scale t / s: with it, a draw u + t·v fits in 64 bits unless v
/// (geometric, P(v >= k) = e^-k) passes 100,000.
pub const MAX_SCALE_NUMERATOR: u64 = 1 << 40;

/// The largest magnitude a sum's clamp may have: with at most 100 records per subject and
/// epsilon to a millionth, the scale's numerator stays under [`MAX_SCALE_NUMERATOR`].
pub const MAX_CLAMP: i64 = 10_000;

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn uniform_draws_stay_below_their_bound_and_cover_it() {
        let u = Uniform::default();
        let mut seen = [0u32; 7];
        for _ in 0..7_000 {
            let x = u.below(7).unwrap();
            seen[usize::try_from(x).unwrap()] += 1;
        }
        // Each value about 1,000 times; far outside 700..1,300 would take a broken sampler.
        assert!(seen.iter().all(|&n| (700..1_300).contains(&n)), "{seen:?}");
        assert_eq!(u.below(1).unwrap(), 0);
    }

    #[test]
    fn bernoulli_of_exp_has_its_rate() {
        let u = Uniform::default();
        for (n, d) in [(1, 2), (1, 1), (5, 2)] {
            let p = (-(n as f64) / d as f64).exp();
            let trials = 20_000;
            let hits = (0..trials).filter(|_| u.bernoulli_exp(n, d).unwrap()).count() as f64;
            let sd = (p * (1.0 - p) / f64::from(trials)).sqrt();
            assert!((hits / f64::from(trials) - p).abs() < 5.0 * sd, "exp(-{n}/{d}): {}", hits / f64::from(trials));
        }
        assert!(u.bernoulli_exp(0, 1).unwrap(), "exp(0) = 1");
    }

    #[test]
    fn discrete_laplace_is_centred_with_its_variance() {
        let u = Uniform::default();
        // Scale b = 2 (t = 2, s = 1): variance 2·e^(-1/b) / (1 - e^(-1/b))^2.
        let q = (-0.5f64).exp();
        let variance = 2.0 * q / (1.0 - q).powi(2);
        let draws: Vec<f64> = (0..40_000).map(|_| u.discrete_laplace(1, 2).unwrap() as f64).collect();
        let mean = draws.iter().sum::<f64>() / draws.len() as f64;
        let var = draws.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / draws.len() as f64;
        assert!(mean.abs() < 0.15, "mean {mean}");
        assert!((var / variance - 1.0).abs() < 0.1, "variance {var}, expected {variance}");
        // P(0) = (1 - q) / (1 + q).
        let zeros = draws.iter().filter(|x| **x == 0.0).count() as f64 / draws.len() as f64;
        assert!((zeros - (1.0 - q) / (1.0 + q)).abs() < 0.02, "P(0) {zeros}");
    }

    #[test]
    fn epsilon_and_scale_are_exact_rationals() {
        let e = Rational::epsilon(0.25).unwrap();
        assert_eq!(e, Rational { n: 1, d: 4 });
        assert_eq!(laplace_scale(3, e), Some((1, 12)), "b = 3 / 0.25 = 12");
        assert_eq!(laplace_scale(1 << 63, e), None, "a scale that does not fit is refused");
        assert!(laplace_scale(100 * MAX_CLAMP as u64, Rational::epsilon(0.000_001).unwrap()).is_some());
        assert!(Rational::epsilon(0.0).is_none() && Rational::epsilon(-1.0).is_none());
        assert!(Rational::epsilon(f64::NAN).is_none() && Rational::epsilon(1e9).is_none());
        assert!(Rational::epsilon(1e-9).is_none(), "below a millionth");
    }
}
