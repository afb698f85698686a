//! Kubernetes resource quantities ("100m", "1.5", "128Mi", "1G", "1e3") as exact integers, so
//! the scheduler can add up requests and compare them with a node's allocatable.

use thiserror::Error;

/// Why a quantity string could not be read.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum QuantityError {
    #[error("quantity {0:?} is empty")]
    Empty(String),
    #[error("quantity {0:?} is not a number")]
    Malformed(String),
    #[error("quantity {0:?} has an unknown suffix {1:?}")]
    Suffix(String, String),
    #[error("quantity {0:?} is out of range")]
    Overflow(String),
}

/// A quantity in thousandths of its unit (millicores for cpu, millibytes for memory),
/// rounded up like Kubernetes' `MilliValue`.
pub type Milli = i128;

/// The largest exponent (`1e40`, `1e-40`) a quantity may have: with a bigger one it fits no
/// i128 of thousandths, or rounds to one thousandth whatever its digits (Kubernetes itself
/// caps exponents far lower for values it can store).
pub const MAX_EXPONENT: i64 = 40;

/// Parses a quantity into thousandths of its unit. Every step is checked: values beyond an
/// i128 of thousandths and absurd exponents are [`QuantityError::Overflow`], never a panic.
pub fn parse_milli(s: &str) -> Result<Milli, QuantityError> {
    let q = s.trim();
    if q.is_empty() {
        return Err(QuantityError::Empty(s.into()));
    }
    let overflow = || QuantityError::Overflow(s.into());
    let (negative, rest) = match q.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, q.strip_prefix('+').unwrap_or(q)),
    };
    // The number: digits with at most one decimal point.
    let num_end = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(rest.len());
    let (number, suffix) = rest.split_at(num_end);
    let (int_part, frac_part) = number.split_once('.').unwrap_or((number, ""));
    if int_part.is_empty() && frac_part.is_empty() || frac_part.contains('.') {
        return Err(QuantityError::Malformed(s.into()));
    }
    // Zeros that do not change the value do not count against the range.
    let int_part = int_part.trim_start_matches('0');
    let frac_part = frac_part.trim_end_matches('0');
    let mut mantissa: i128 = 0;
    for d in int_part.bytes().chain(frac_part.bytes()) {
        mantissa = mantissa
            .checked_mul(10)
            .and_then(|m| m.checked_add(i128::from(d.wrapping_sub(b'0'))))
            .ok_or_else(overflow)?;
    }
    // value = mantissa * 10^(dec_exp) * 2^bin_exp. The fraction's length is capped (any
    // fraction that long is far below a thousandth) so that the exponent sums cannot overflow.
    let mut dec_exp: i64 = -i64::try_from(frac_part.len())
        .unwrap_or(i64::MAX)
        .min(1 << 40);
    let mut bin_exp: u32 = 0;
    match suffix {
        "" => {}
        "n" => dec_exp -= 9,
        "u" => dec_exp -= 6,
        "m" => dec_exp -= 3,
        "k" => dec_exp += 3,
        "M" => dec_exp += 6,
        "G" => dec_exp += 9,
        "T" => dec_exp += 12,
        "P" => dec_exp += 15,
        "E" => dec_exp += 18,
        "Ki" => bin_exp = 10,
        "Mi" => bin_exp = 20,
        "Gi" => bin_exp = 30,
        "Ti" => bin_exp = 40,
        "Pi" => bin_exp = 50,
        "Ei" => bin_exp = 60,
        e if e.starts_with(['e', 'E']) => {
            let digits = &e[1..];
            let unsigned = digits.strip_prefix(['-', '+']).unwrap_or(digits);
            if unsigned.is_empty() || !unsigned.bytes().all(|b| b.is_ascii_digit()) {
                return Err(QuantityError::Suffix(s.into(), suffix.into()));
            }
            // Any number of digits is an exponent; one too large for i64 is as absurd as
            // one beyond MAX_EXPONENT.
            let exp: i64 = digits.parse().map_err(|_| overflow())?;
            if exp.unsigned_abs() > MAX_EXPONENT.unsigned_abs() {
                return Err(overflow());
            }
            dec_exp += exp;
        }
        _ => return Err(QuantityError::Suffix(s.into(), suffix.into())),
    }
    if mantissa == 0 {
        // Zero whatever the exponent.
        return Ok(0);
    }
    // To thousandths.
    dec_exp += 3;
    let mut v = mantissa
        .checked_mul(1i128 << bin_exp)
        .ok_or_else(overflow)?;
    let pow = u32::try_from(dec_exp.unsigned_abs()).ok();
    if dec_exp >= 0 {
        v = pow
            .and_then(|p| 10i128.checked_pow(p))
            .and_then(|p| v.checked_mul(p))
            .ok_or_else(overflow)?;
    } else {
        let Some(div) = pow.and_then(|p| 10i128.checked_pow(p)) else {
            // Smaller than any thousandth: rounds up to one unless zero.
            return Ok(i128::from(v != 0 && !negative));
        };
        // Round up (towards +infinity), as Kubernetes does for MilliValue.
        let rounded = v / div + i128::from(v % div != 0 && !negative);
        v = rounded;
    }
    Ok(if negative { -v } else { v })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_forms() {
        assert_eq!(parse_milli("100m"), Ok(100));
        assert_eq!(parse_milli("1"), Ok(1000));
        assert_eq!(parse_milli("0.5"), Ok(500));
        assert_eq!(parse_milli(".25"), Ok(250));
        assert_eq!(parse_milli("2."), Ok(2000));
        assert_eq!(parse_milli("1500m"), Ok(1500));
        assert_eq!(parse_milli("0"), Ok(0));
        assert_eq!(parse_milli("250000u"), Ok(250));
        assert_eq!(parse_milli("1n"), Ok(1), "rounds up to one milli");
        assert_eq!(parse_milli("0.0001"), Ok(1), "rounds up");
        assert_eq!(parse_milli("+3"), Ok(3000));
        assert_eq!(parse_milli("-1"), Ok(-1000));
    }

    #[test]
    fn memory_forms() {
        assert_eq!(parse_milli("128Mi"), Ok(128 * 1024 * 1024 * 1000));
        assert_eq!(parse_milli("1Ki"), Ok(1024 * 1000));
        assert_eq!(parse_milli("1.5Gi"), Ok(1536 * 1024 * 1024 * 1000));
        assert_eq!(parse_milli("1G"), Ok(1_000_000_000 * 1000));
        assert_eq!(parse_milli("1k"), Ok(1_000_000));
        assert_eq!(parse_milli("1M"), Ok(1_000_000_000));
        assert_eq!(parse_milli("1e3"), Ok(1_000_000));
        assert_eq!(parse_milli("1E3"), Ok(1_000_000));
        assert_eq!(parse_milli("12e-3"), Ok(12));
        assert_eq!(parse_milli("1Ei"), Ok((1i128 << 60) * 1000));
        assert_eq!(parse_milli("8E"), Ok(8_000_000_000_000_000_000_000));
    }

    #[test]
    fn rejects_garbage() {
        assert!(matches!(parse_milli(""), Err(QuantityError::Empty(_))));
        assert!(matches!(
            parse_milli("Mi"),
            Err(QuantityError::Malformed(_))
        ));
        assert!(matches!(
            parse_milli("1.2.3"),
            Err(QuantityError::Malformed(_))
        ));
        assert!(matches!(parse_milli("10X"), Err(QuantityError::Suffix(..))));
        assert!(matches!(parse_milli("1e"), Err(QuantityError::Suffix(..))));
        assert!(matches!(
            parse_milli("1e99"),
            Err(QuantityError::Overflow(_))
        ));
        assert!(matches!(
            parse_milli("999999999999999999999999999999999999999999"),
            Err(QuantityError::Overflow(_))
        ));
    }

    #[test]
    fn extreme_values_never_panic() {
        let overflow = |q: &str| matches!(parse_milli(q), Err(QuantityError::Overflow(_)));
        // Exponents at and beyond the integer limits: rejected, not overflowed.
        for q in [
            "1e-2147483648",
            "-1e-2147483648",
            "1e2147483647",
            "1e-9223372036854775808",
            "1e9223372036854775807",
            "1e99999999999999999999999999",
            "1e-99999999999999999999999999",
            "1E-41",
            "1e41",
            "1e40",
        ] {
            assert!(overflow(q), "{q}: {:?}", parse_milli(q));
        }
        assert_eq!(parse_milli("1e-40"), Ok(1), "within range, rounds up");
        assert_eq!(parse_milli("-1e-40"), Ok(0), "rounds towards +infinity");
        assert_eq!(parse_milli("1e+3"), Ok(1_000_000));
        assert_eq!(parse_milli("1e35"), Ok(10i128.pow(38)));
        assert_eq!(parse_milli("0e40"), Ok(0));
        assert!(matches!(parse_milli("1e-"), Err(QuantityError::Suffix(..))));
        assert!(matches!(
            parse_milli("1e--3"),
            Err(QuantityError::Suffix(..))
        ));
        assert!(matches!(
            parse_milli("1e3x"),
            Err(QuantityError::Suffix(..))
        ));
        // Around i128::MAX thousandths.
        let max_units = i128::MAX / 1000;
        assert_eq!(parse_milli(&max_units.to_string()), Ok(max_units * 1000));
        assert_eq!(parse_milli(&format!("-{max_units}")), Ok(-max_units * 1000));
        assert!(overflow(&(max_units + 1).to_string()));
        assert!(overflow(&i128::MAX.to_string()));
        assert!(overflow(&format!("-{}", i128::MAX)));
        assert!(overflow("1000000000000000000000000000000000000Ei"));
        // Zeros that do not change the value do not overflow it.
        assert_eq!(parse_milli(&format!("0.1{}", "0".repeat(100))), Ok(100));
        assert_eq!(parse_milli(&format!("{}2", "0".repeat(100))), Ok(2000));
        assert_eq!(parse_milli(&format!("0.{}1", "0".repeat(100))), Ok(1));
        assert_eq!(parse_milli(&format!("-0.{}1", "0".repeat(100))), Ok(0));
        assert!(matches!(parse_milli("-"), Err(QuantityError::Malformed(_))));
        assert!(matches!(parse_milli("+"), Err(QuantityError::Malformed(_))));
        assert!(matches!(
            parse_milli("--1"),
            Err(QuantityError::Malformed(_))
        ));
        assert!(matches!(parse_milli("1é"), Err(QuantityError::Suffix(..))));
    }
}
