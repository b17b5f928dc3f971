//! Latency distributions for the simulated prover: `fixed:200ms`, `uniform:100ms..300ms`,
//! `lognormal:7s,0.4` (median and sigma of the underlying normal).

use std::str::FromStr;
use std::time::Duration;

use rand::Rng;
use rand_distr::{Distribution, LogNormal};

#[derive(Debug, Clone, PartialEq)]
pub enum Latency {
    Fixed(Duration),
    Uniform(Duration, Duration),
    LogNormal { median: Duration, sigma: f64 },
}

impl Latency {
    pub fn sample(&self, rng: &mut impl Rng) -> Duration {
        match self {
            Latency::Fixed(d) => *d,
            Latency::Uniform(lo, hi) => {
                if hi <= lo {
                    *lo
                } else {
                    rng.random_range(*lo..=*hi)
                }
            }
            Latency::LogNormal { median, sigma } => {
                let mu = median.as_secs_f64().max(1e-9).ln();
                match LogNormal::new(mu, *sigma) {
                    // Capped so one freak sample cannot stall a benchmark.
                    Ok(d) => {
                        Duration::from_secs_f64(d.sample(rng).min(median.as_secs_f64() * 20.0))
                    }
                    Err(_) => *median,
                }
            }
        }
    }
}

impl std::fmt::Display for Latency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Latency::Fixed(d) => write!(f, "fixed:{}", humantime::format_duration(*d)),
            Latency::Uniform(a, b) => write!(
                f,
                "uniform:{}..{}",
                humantime::format_duration(*a),
                humantime::format_duration(*b)
            ),
            Latency::LogNormal { median, sigma } => {
                write!(
                    f,
                    "lognormal:{},{sigma}",
                    humantime::format_duration(*median)
                )
            }
        }
    }
}

impl FromStr for Latency {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let duration = |v: &str| {
            humantime::parse_duration(v.trim()).map_err(|e| format!("bad duration {v:?}: {e}"))
        };
        let (kind, rest) = s.split_once(':').ok_or_else(|| {
            format!("expected fixed:D, uniform:A..B or lognormal:MEDIAN,SIGMA, got {s:?}")
        })?;
        match kind {
            "fixed" => Ok(Latency::Fixed(duration(rest)?)),
            "uniform" => {
                let (a, b) = rest
                    .split_once("..")
                    .ok_or_else(|| format!("uniform needs A..B, got {rest:?}"))?;
                let (a, b) = (duration(a)?, duration(b)?);
                if b < a {
                    return Err(format!("uniform range {rest:?} is empty"));
                }
                Ok(Latency::Uniform(a, b))
            }
            "lognormal" => {
                let (m, sigma) = rest
                    .split_once(',')
                    .ok_or_else(|| format!("lognormal needs MEDIAN,SIGMA, got {rest:?}"))?;
                let sigma: f64 = sigma
                    .trim()
                    .parse()
                    .map_err(|e| format!("bad sigma {sigma:?}: {e}"))?;
                if !(0.0..=5.0).contains(&sigma) {
                    return Err(format!("sigma must be 0 to 5, got {sigma}"));
                }
                Ok(Latency::LogNormal {
                    median: duration(m)?,
                    sigma,
                })
            }
            other => Err(format!("unknown distribution {other:?}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_kind() {
        assert_eq!(
            "fixed:200ms".parse(),
            Ok(Latency::Fixed(Duration::from_millis(200)))
        );
        assert_eq!(
            "uniform:1ms..3ms".parse(),
            Ok(Latency::Uniform(
                Duration::from_millis(1),
                Duration::from_millis(3)
            ))
        );
        assert_eq!(
            "lognormal:7s,0.4".parse(),
            Ok(Latency::LogNormal {
                median: Duration::from_secs(7),
                sigma: 0.4
            })
        );
        assert!("gauss:1s".parse::<Latency>().is_err());
        assert!("uniform:3ms..1ms".parse::<Latency>().is_err());
    }

    #[test]
    fn samples_stay_in_range() {
        let mut rng = rand::rng();
        let u = Latency::Uniform(Duration::from_millis(10), Duration::from_millis(20));
        for _ in 0..1000 {
            let d = u.sample(&mut rng);
            assert!(d >= Duration::from_millis(10) && d <= Duration::from_millis(20));
        }
        let l = Latency::LogNormal {
            median: Duration::from_millis(100),
            sigma: 0.3,
        };
        let mut samples: Vec<Duration> = (0..2001).map(|_| l.sample(&mut rng)).collect();
        samples.sort();
        let median = samples[1000].as_secs_f64();
        assert!((0.08..0.12).contains(&median), "median {median}");
    }
}
