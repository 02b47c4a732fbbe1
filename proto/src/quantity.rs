//! Resource quantities in the Kubernetes notation.
//!
//! CPU is counted in millicores: `500m`, `0.5`, `2` (= `2000m`).
//! Memory is counted in bytes: `256Mi`, `1Gi`, `1G`, `129e6`, `128974848`.
//! Extended resources (`gpu`) are whole units: `1`, `4`.
//!
//! Parsing is exact (integer arithmetic, no floating point): a value that is
//! not a whole number of the base unit (`0.0001` CPU, `1.5` bytes) is an error,
//! never silently rounded.

use std::fmt;

/// Why a string is not a quantity. Displays as `"5x" is not a quantity: …`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuantityError {
    input: String,
    reason: String,
}

impl fmt::Display for QuantityError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?} is not a quantity: {}", self.input, self.reason)
    }
}

impl std::error::Error for QuantityError {}

/// The base unit a quantity is converted to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unit {
    Millicores,
    Bytes,
    Units,
}

impl Unit {
    /// Power of ten from "one plain number" to the base unit (1 core = 10^3 m).
    fn pow10(self) -> i32 {
        match self {
            Unit::Millicores => 3,
            Unit::Bytes | Unit::Units => 0,
        }
    }

    fn hint(self) -> &'static str {
        match self {
            Unit::Millicores => "CPU is counted in whole millicores, e.g. 500m or 2",
            Unit::Bytes => "memory is counted in whole bytes, e.g. 256Mi, 1Gi or 1G",
            Unit::Units => "extended resources are counted in whole units, e.g. 1",
        }
    }
}

/// Parses a CPU quantity into millicores.
pub fn parse_cpu(input: &str) -> Result<i64, QuantityError> {
    parse(input, Unit::Millicores)
}

/// Parses a memory quantity into bytes.
pub fn parse_memory(input: &str) -> Result<i64, QuantityError> {
    parse(input, Unit::Bytes)
}

/// Parses a whole count (extended resources such as `gpu`).
pub fn parse_count(input: &str) -> Result<i64, QuantityError> {
    parse(input, Unit::Units)
}

/// Prints millicores the way Kubernetes does: `2` for whole cores, else `500m`.
pub fn format_cpu(millis: i64) -> String {
    if millis % 1000 == 0 {
        (millis / 1000).to_string()
    } else {
        format!("{millis}m")
    }
}

/// Prints bytes with the largest binary suffix that divides them exactly
/// (`256Mi`, `1Gi`), else the largest exact decimal suffix (`1G`), else bytes.
pub fn format_memory(bytes: i64) -> String {
    if bytes == 0 {
        return "0".to_string();
    }
    const BINARY: [(&str, i64); 6] = [
        ("Ei", 1 << 60),
        ("Pi", 1 << 50),
        ("Ti", 1 << 40),
        ("Gi", 1 << 30),
        ("Mi", 1 << 20),
        ("Ki", 1 << 10),
    ];
    const DECIMAL: [(&str, i64); 6] = [
        ("E", 1_000_000_000_000_000_000),
        ("P", 1_000_000_000_000_000),
        ("T", 1_000_000_000_000),
        ("G", 1_000_000_000),
        ("M", 1_000_000),
        ("k", 1_000),
    ];
    for (suffix, size) in BINARY.iter().chain(DECIMAL.iter()) {
        if bytes % size == 0 {
            return format!("{}{suffix}", bytes / size);
        }
    }
    bytes.to_string()
}

/// Prints bytes rounded for a table column: `1.5Gi`, `300Mi`, `512Ki`, `12`.
pub fn format_memory_short(bytes: i64) -> String {
    const UNITS: [(&str, i64); 5] = [
        ("Pi", 1 << 50),
        ("Ti", 1 << 40),
        ("Gi", 1 << 30),
        ("Mi", 1 << 20),
        ("Ki", 1 << 10),
    ];
    for (suffix, size) in UNITS {
        if bytes.abs() >= size {
            let value = bytes as f64 / size as f64;
            return if value >= 10.0 || bytes % size == 0 {
                format!("{value:.0}{suffix}")
            } else {
                format!("{value:.1}{suffix}")
            };
        }
    }
    bytes.to_string()
}

fn parse(input: &str, unit: Unit) -> Result<i64, QuantityError> {
    let fail = |reason: String| QuantityError {
        input: input.to_string(),
        reason,
    };
    let s = input.trim();
    if s.is_empty() {
        return Err(fail("it is empty".into()));
    }
    let (negative, s) = match s.as_bytes()[0] {
        b'-' => (true, &s[1..]),
        b'+' => (false, &s[1..]),
        _ => (false, s),
    };

    // Mantissa: digits with an optional decimal point.
    let mut mantissa: u128 = 0;
    let mut scale: i32 = 0; // digits after the point
    let mut digits = 0usize;
    let mut seen_point = false;
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        if c.is_ascii_digit() {
            mantissa = mantissa
                .checked_mul(10)
                .and_then(|m| m.checked_add(u128::from(c - b'0')))
                .ok_or_else(|| fail("it is too large".into()))?;
            digits += 1;
            if seen_point {
                scale += 1;
            }
        } else if c == b'.' && !seen_point {
            seen_point = true;
        } else {
            break;
        }
        i += 1;
    }
    if digits == 0 {
        return Err(fail(format!(
            "it does not start with a number; {}",
            unit.hint()
        )));
    }
    let mut rest = &s[i..];

    // Exponent: `e`/`E` followed by an optionally signed integer. A bare `E` is
    // the exa suffix instead.
    let mut exponent: i32 = 0;
    if let Some(after) = rest.strip_prefix(['e', 'E']) {
        let (sign, body) = match after.as_bytes().first() {
            Some(b'-') => (-1, &after[1..]),
            Some(b'+') => (1, &after[1..]),
            _ => (1, after),
        };
        let end = body.bytes().take_while(u8::is_ascii_digit).count();
        if end > 0 {
            let value: i32 = body[..end]
                .parse()
                .ok()
                .filter(|v: &i32| *v <= 40)
                .ok_or_else(|| fail("its exponent is too large".into()))?;
            exponent = sign * value;
            rest = &body[end..];
        }
    }

    let (binary_multiplier, suffix_pow10): (u128, i32) = match rest {
        "" => (1, 0),
        "m" => (1, -3),
        "k" => (1, 3),
        "M" => (1, 6),
        "G" => (1, 9),
        "T" => (1, 12),
        "P" => (1, 15),
        "E" => (1, 18),
        "Ki" => (1 << 10, 0),
        "Mi" => (1 << 20, 0),
        "Gi" => (1 << 30, 0),
        "Ti" => (1 << 40, 0),
        "Pi" => (1 << 50, 0),
        "Ei" => (1 << 60, 0),
        other => {
            return Err(fail(format!("unknown suffix {other:?}; {}", unit.hint())));
        }
    };

    let value = mantissa
        .checked_mul(binary_multiplier)
        .ok_or_else(|| fail("it is too large".into()))?;
    let pow = exponent + suffix_pow10 + unit.pow10() - scale;
    let value = if pow >= 0 {
        10u128
            .checked_pow(pow as u32)
            .and_then(|p| value.checked_mul(p))
            .ok_or_else(|| fail("it is too large".into()))?
    } else {
        let divisor = 10u128
            .checked_pow((-pow) as u32)
            .ok_or_else(|| fail(format!("it is too precise; {}", unit.hint())))?;
        if value % divisor != 0 {
            return Err(fail(format!("it is too precise; {}", unit.hint())));
        }
        value / divisor
    };
    let value = i64::try_from(value).map_err(|_| fail("it is too large".into()))?;
    Ok(if negative { -value } else { value })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn cpu_forms() {
        assert_eq!(parse_cpu("500m"), Ok(500));
        assert_eq!(parse_cpu("2"), Ok(2000));
        assert_eq!(parse_cpu("0.5"), Ok(500));
        assert_eq!(parse_cpu("1.25"), Ok(1250));
        assert_eq!(parse_cpu(".1"), Ok(100));
        assert_eq!(parse_cpu("1e3m"), Ok(1000));
        assert_eq!(parse_cpu("-1"), Ok(-1000));
        assert_eq!(parse_cpu(" 3 "), Ok(3000));
    }

    #[test]
    fn memory_forms() {
        assert_eq!(parse_memory("256Mi"), Ok(256 << 20));
        assert_eq!(parse_memory("1Gi"), Ok(1 << 30));
        assert_eq!(parse_memory("1.5Gi"), Ok(3 << 29));
        assert_eq!(parse_memory("1G"), Ok(1_000_000_000));
        assert_eq!(parse_memory("129e6"), Ok(129_000_000));
        assert_eq!(parse_memory("128974848"), Ok(128_974_848));
        assert_eq!(parse_memory("1k"), Ok(1000));
        assert_eq!(parse_memory("2E"), Ok(2_000_000_000_000_000_000));
    }

    #[test]
    fn rejects_with_a_reason() {
        let err = parse_cpu("5x").unwrap_err().to_string();
        assert!(err.starts_with("\"5x\" is not a quantity"), "{err}");
        assert!(err.contains("unknown suffix \"x\""), "{err}");
        assert!(parse_cpu("").is_err());
        assert!(parse_cpu("m").is_err());
        assert!(
            parse_cpu("0.0001")
                .unwrap_err()
                .to_string()
                .contains("too precise")
        );
        assert!(parse_memory("1.5").is_err());
        assert!(parse_memory("100m").is_err()); // 0.1 byte
        assert!(parse_memory("1.2.3").is_err());
        assert!(parse_memory("99999999999999999999999Ei").is_err());
        assert!(parse_memory("16Ei").is_err()); // beyond i64
        assert!(parse_count("1.5").is_err());
        assert_eq!(parse_count("4"), Ok(4));
    }

    #[test]
    fn formats_like_kubernetes() {
        assert_eq!(format_cpu(500), "500m");
        assert_eq!(format_cpu(2000), "2");
        assert_eq!(format_cpu(1500), "1500m");
        assert_eq!(format_memory(256 << 20), "256Mi");
        assert_eq!(format_memory(1 << 30), "1Gi");
        assert_eq!(format_memory(1_000_000_000), "1G");
        assert_eq!(format_memory(1001), "1001");
        assert_eq!(format_memory_short(3 << 29), "1.5Gi");
        assert_eq!(format_memory_short(300 << 20), "300Mi");
    }

    proptest! {
        #[test]
        fn cpu_round_trips(millis in 0i64..=1_000_000_000_000) {
            prop_assert_eq!(parse_cpu(&format_cpu(millis)), Ok(millis));
        }

        #[test]
        fn memory_round_trips(bytes in 0i64..=i64::MAX) {
            prop_assert_eq!(parse_memory(&format_memory(bytes)), Ok(bytes));
        }

        #[test]
        fn never_panics(s in "\\PC{0,20}") {
            let _ = parse_cpu(&s);
            let _ = parse_memory(&s);
        }
    }
}
