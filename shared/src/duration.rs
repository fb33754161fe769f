//! Parsing of human durations such as `5s`, `500ms`, `1.5s` or `2m` for command-line flags.

use std::time::Duration;

/// Parses a positive duration with a unit (`ms`, `s`, `m`, `h`).
pub fn parse(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let scale = match unit {
        "ms" => 0.001,
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        "" => return Err(format!("'{text}' has no unit; write e.g. 5s, 500ms or 2m")),
        _ => {
            return Err(format!("'{text}' has an unknown unit '{unit}'; use ms, s, m or h"));
        }
    };
    let value: f64 = number.parse().map_err(|_| format!("'{text}' is not a number with a unit, e.g. 5s"))?;
    let secs = value * scale;
    if !secs.is_finite() || secs <= 0.0 || secs > 7.0 * 86400.0 {
        return Err(format!("'{text}' must be more than 0 and at most a week"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Writes a duration the way [`parse`] reads it: `10s`, `500ms`, `2m`.
pub fn format(d: Duration) -> String {
    let ms = d.as_millis();
    match ms {
        ms if ms > 0 && ms % 60_000 == 0 => format!("{}m", ms / 60_000),
        ms if ms % 1000 == 0 => format!("{}s", ms / 1000),
        ms => format!("{ms}ms"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_units() {
        assert_eq!(parse("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse("2m"), Ok(Duration::from_secs(120)));
    }

    #[test]
    fn formats_what_it_parses() {
        for text in ["10s", "500ms", "2m", "1500ms"] {
            assert_eq!(format(parse(text).unwrap()), text);
        }
    }

    #[test]
    fn rejects_bad_input() {
        for bad in ["", "5", "5x", "s", "-1s", "0s", "1.2.3s", "9999h"] {
            assert!(parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }
}
