//! The valid range of each number a user gives, in one place for every way it enters: command
//! line flags (as value parsers, so the error names the flag), configuration files, sweep specs
//! and the server's JSON. Each check returns what the range is; the caller names the flag
//! or key and the value: `NAME: VALUE is out of range; it takes RANGE`.

/// Samples one generation may ask for.
pub const MAX_SAMPLES: usize = 1_000_000;
/// Documents retrieved per response (eq. 2's k).
pub const MAX_K: usize = 64;
/// Seeds shown as demonstrations in one instruction prompt.
pub const MAX_DEMOS: usize = 64;
/// Tokens one request may ask the model to write.
pub const MAX_NEW_TOKENS: usize = 1 << 20;
/// Points on a linear-mode-connectivity line.
pub const MAX_POINTS: usize = 1001;
/// The rank of a LoRA adapter (trained or merged).
pub const MAX_RANK: usize = 1024;
/// Hours a sweep may be given.
pub const MAX_HOURS: f64 = 24.0 * 366.0;

/// The error of a value out of its range.
pub fn out_of_range(name: &str, value: impl std::fmt::Display, range: &str) -> String {
    format!("{name}: {value} is out of range; it takes {range}")
}

pub fn temperature(t: f64) -> Result<f64, &'static str> {
    if t.is_finite() && (0.0..=100.0).contains(&t) {
        Ok(t)
    } else {
        Err("a number from 0 (greedy) to 100")
    }
}

pub fn top_p(p: f64) -> Result<f64, &'static str> {
    if p.is_finite() && p > 0.0 && p <= 1.0 {
        Ok(p)
    } else {
        Err("a number above 0 and at most 1")
    }
}

pub fn top_k(k: usize) -> Result<usize, &'static str> {
    if k >= 1 {
        Ok(k)
    } else {
        Err("a whole number of at least 1")
    }
}

pub fn repetition_penalty(p: f64) -> Result<f64, &'static str> {
    if p.is_finite() && p > 0.0 && p <= 100.0 {
        Ok(p)
    } else {
        Err("a number above 0 and at most 100 (1 leaves the logits alone)")
    }
}

pub fn hours(h: f64) -> Result<f64, String> {
    if h.is_finite() && (0.0..=MAX_HOURS).contains(&h) {
        Ok(h)
    } else {
        Err(format!("a number of hours from 0 (start nothing) to {MAX_HOURS}"))
    }
}

/// A whole number from `min` to `max`.
pub fn count(n: usize, min: usize, max: usize) -> Result<usize, String> {
    if (min..=max).contains(&n) {
        Ok(n)
    } else {
        Err(format!("a whole number from {min} to {max}"))
    }
}

/// Value parsers for command-line flags: the text read, then the range checked; the error
/// printed names the flag.
pub mod flag {
    fn number<T: std::str::FromStr>(s: &str) -> Result<T, String> {
        s.trim().parse::<T>().map_err(|_| format!("{s:?} is not a number"))
    }

    fn ranged<T: std::str::FromStr + std::fmt::Display, R: std::fmt::Display>(
        s: &str,
        check: impl Fn(T) -> Result<T, R>,
    ) -> Result<T, String> {
        check(number(s)?).map_err(|r| format!("out of range; it takes {r}"))
    }

    pub fn temperature(s: &str) -> Result<f64, String> {
        ranged(s, super::temperature)
    }

    pub fn top_p(s: &str) -> Result<f64, String> {
        ranged(s, super::top_p)
    }

    pub fn top_k(s: &str) -> Result<usize, String> {
        ranged(s, super::top_k)
    }

    pub fn repetition_penalty(s: &str) -> Result<f32, String> {
        ranged(s, super::repetition_penalty).map(|p| p as f32)
    }

    pub fn hours(s: &str) -> Result<f64, String> {
        ranged(s, super::hours)
    }

    pub fn new_tokens(s: &str) -> Result<usize, String> {
        ranged(s, |n| super::count(n, 1, super::MAX_NEW_TOKENS))
    }

    pub fn samples(s: &str) -> Result<usize, String> {
        ranged(s, |n| super::count(n, 1, super::MAX_SAMPLES))
    }

    pub fn k(s: &str) -> Result<usize, String> {
        ranged(s, |n| super::count(n, 1, super::MAX_K))
    }

    pub fn points(s: &str) -> Result<usize, String> {
        ranged(s, |n| super::count(n, 2, super::MAX_POINTS))
    }

    pub fn rank(s: &str) -> Result<usize, String> {
        ranged(s, |n| super::count(n, 1, super::MAX_RANK))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meaningless_numbers_are_refused_with_their_range() {
        for bad in ["-1", "NaN", "inf", "101"] {
            assert!(flag::temperature(bad).is_err(), "{bad}");
        }
        for bad in ["2", "-1", "NaN", "0"] {
            assert!(flag::top_p(bad).is_err(), "{bad}");
        }
        for bad in ["-1", "0", "NaN"] {
            assert!(flag::repetition_penalty(bad).is_err(), "{bad}");
        }
        for bad in ["NaN", "-1", "inf"] {
            assert!(flag::hours(bad).is_err(), "{bad}");
        }
        assert_eq!(flag::new_tokens("0").unwrap_err(), "out of range; it takes a whole number from 1 to 1048576");
        assert!(flag::samples("18446744073709551615").is_err());
        assert!(flag::k("18446744073709551615").is_err());
        assert!(flag::points("18446744073709551615").is_err());
        assert!(flag::rank("100000").is_err());
        assert_eq!(flag::temperature("0.7"), Ok(0.7));
        assert_eq!(flag::top_p("1"), Ok(1.0));
        assert_eq!(flag::hours("0.5"), Ok(0.5));
    }
}
