//! Go durations ("1h30m", "90s", "1.5h"): what the spec's duration fields hold and what the
//! CRD's CEL `duration()` admits. One parser for the operator and the workers.

use std::time::Duration;

/// A Go duration ("1h30m", "90s", "1.5h"), as the CRD's CEL rule admits them.
pub fn parse(text: &str) -> Option<Duration> {
    let mut rest = text;
    let mut total = 0.0_f64;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let number_end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
        let value: f64 = rest[..number_end].parse().ok()?;
        rest = &rest[number_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let seconds = match &rest[..unit_end] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        total += value * seconds;
        rest = &rest[unit_end..];
    }
    Duration::try_from_secs_f64(total).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_like_go() {
        let secs = |t: &str| parse(t).map(|d| d.as_secs_f64());
        assert_eq!(secs("24h"), Some(86400.0));
        assert_eq!(secs("1h30m"), Some(5400.0));
        assert_eq!(secs("1.5h"), Some(5400.0));
        assert_eq!(secs("90s"), Some(90.0));
        assert_eq!(secs("250ms"), Some(0.25));
        for bad in ["", "10", "tomorrow", "10 minutes", "5d", "h"] {
            assert_eq!(secs(bad), None, "{bad:?}");
        }
    }
}
