//! Human sizes with binary suffixes: `4096`, `4K`, `4M`, `1T`, `1TiB`.

use std::fmt;

/// Parses a size such as `4M` or `1T` (binary multiples, case-insensitive,
/// an optional `B`/`iB` after the suffix).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    if t.is_empty() {
        return Err("empty size".into());
    }
    if t.starts_with('-') {
        return Err(format!("{text:?} is negative"));
    }
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, suffix) = t.split_at(split);
    if digits.is_empty() {
        return Err(format!("{text:?} is not a size (expected e.g. 4M, 1T, 4096)"));
    }
    let shift = match suffix.to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        "p" | "pb" | "pib" => 50,
        "e" | "eb" | "eib" => 60,
        _ => return Err(format!("{text:?} has an unknown suffix {suffix:?} (use K, M, G, T, P)")),
    };
    let n: u64 = digits.parse().map_err(|_| format!("{text:?} is too large"))?;
    n.checked_mul(1u64 << shift).ok_or_else(|| format!("{text:?} is too large"))
}

/// Displays a byte count in the largest binary unit that divides it exactly.
pub struct Size(pub u64);

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(&str, u32); 6] = [("E", 60), ("P", 50), ("T", 40), ("G", 30), ("M", 20), ("K", 10)];
        for (unit, shift) in UNITS {
            if self.0 >= 1 << shift && self.0.is_multiple_of(1 << shift) {
                return write!(f, "{}{unit}", self.0 >> shift);
            }
        }
        write!(f, "{}", self.0)
    }
}

/// Displays a byte count approximately, for humans (`1.5 GiB`).
pub struct Approx(pub u64);

impl fmt::Display for Approx {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [&str; 7] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
        let mut value = self.0 as f64;
        let mut unit = 0;
        while value >= 1024.0 && unit + 1 < UNITS.len() {
            value /= 1024.0;
            unit += 1;
        }
        if unit == 0 { write!(f, "{} B", self.0) } else { write!(f, "{value:.1} {}", UNITS[unit]) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_binary_suffixes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("4K"), Ok(4096));
        assert_eq!(parse_size("4k"), Ok(4096));
        assert_eq!(parse_size("4M"), Ok(4 << 20));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("1T"), Ok(1 << 40));
        assert_eq!(parse_size("1TiB"), Ok(1 << 40));
        assert_eq!(parse_size("2MB"), Ok(2 << 20));
    }

    #[test]
    fn rejects_garbage() {
        for bad in ["", "-1", "-4M", "M", "4X", "4.5M", "99999999999999999999", "17E", "1 M"] {
            assert!(parse_size(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn displays_exact_units() {
        assert_eq!(Size(4 << 20).to_string(), "4M");
        assert_eq!(Size(1 << 40).to_string(), "1T");
        assert_eq!(Size(1536).to_string(), "1536");
        assert_eq!(Size(4 << 60).to_string(), "4E");
        assert_eq!(Approx(4 << 60).to_string(), "4.0 EiB");
        assert_eq!(Approx(1536).to_string(), "1.5 KiB");
    }
}
