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

/// Parses a quantity into thousandths of its unit.
pub fn parse_milli(s: &str) -> Result<Milli, QuantityError> {
    let q = s.trim();
    if q.is_empty() {
        return Err(QuantityError::Empty(s.into()));
    }
    let overflow = || QuantityError::Overflow(s.into());
    let (negative, rest) = match q.as_bytes()[0] {
        b'-' => (true, &q[1..]),
        b'+' => (false, &q[1..]),
        _ => (false, q),
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
    let mut mantissa: i128 = 0;
    for d in int_part.bytes().chain(frac_part.bytes()) {
        mantissa = mantissa
            .checked_mul(10)
            .and_then(|m| m.checked_add(i128::from(d - b'0')))
            .ok_or_else(overflow)?;
    }
    // value = mantissa * 10^(dec_exp) * 2^bin_exp
    let mut dec_exp: i32 = -(frac_part.len() as i32);
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
            let exp: i32 = e[1..]
                .parse()
                .map_err(|_| QuantityError::Suffix(s.into(), suffix.into()))?;
            if exp.abs() > 30 {
                return Err(overflow());
            }
            dec_exp += exp;
        }
        _ => return Err(QuantityError::Suffix(s.into(), suffix.into())),
    }
    // To thousandths.
    dec_exp += 3;
    let mut v = mantissa
        .checked_mul(1i128 << bin_exp)
        .ok_or_else(overflow)?;
    if dec_exp >= 0 {
        v = 10i128
            .checked_pow(dec_exp as u32)
            .and_then(|p| v.checked_mul(p))
            .ok_or_else(overflow)?;
    } else {
        let Some(div) = 10i128.checked_pow((-dec_exp) as u32) else {
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
}
