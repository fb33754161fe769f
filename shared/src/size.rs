//! Sizes on the command line: `25MB`, `10MiB`, `500kB`, or bytes.

/// Parses a size into bytes; the error is one line for the user.
pub fn parse(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let bad = || format!("'{s}' is not a size such as 25MB");
    let n: f64 = num.parse().map_err(|_| bad())?;
    let scale = match unit.trim() {
        "" | "B" => 1.0,
        "kB" | "KB" => 1e3,
        "MB" => 1e6,
        "GB" => 1e9,
        "KiB" => 1024.0,
        "MiB" => 1024.0 * 1024.0,
        "GiB" => 1024.0 * 1024.0 * 1024.0,
        u => return Err(format!("'{s}': unknown unit '{u}' (B, kB, MB, GB, KiB, MiB, GiB)")),
    };
    if n <= 0.0 {
        return Err(format!("'{s}': a size must be more than 0"));
    }
    Ok((n * scale) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_with_and_without_units() {
        assert_eq!(parse("25MB"), Ok(25_000_000));
        assert_eq!(parse("10MiB"), Ok(10 * 1024 * 1024));
        assert_eq!(parse("1.5kB"), Ok(1500));
        assert_eq!(parse("4096"), Ok(4096));
        assert!(parse("25XB").unwrap_err().contains("unknown unit"));
        assert!(parse("MB").unwrap_err().contains("not a size"));
        assert!(parse("0MB").unwrap_err().contains("more than 0"));
    }
}
