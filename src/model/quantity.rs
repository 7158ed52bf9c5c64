//! Kubernetes resource quantities, parsed only as far as prenv needs to add them up for quotas.

use std::fmt;

const MEBI: u64 = 1 << 20;
const GIBI: u64 = 1 << 30;

/// CPU in millicores (`300m`, `1`, `1.5`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Cpu(pub u64);

/// Memory or storage in bytes (`512Mi`, `1Gi`, `64Ki`, `1000000`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Bytes(pub u64);

impl Cpu {
    /// Parses `250m`, `2` or `0.5`; anything finer than a millicore is refused.
    pub fn parse(s: &str) -> Option<Cpu> {
        if let Some(milli) = s.strip_suffix('m') {
            return digits(milli).map(Cpu);
        }
        let (whole, frac) = s.split_once('.').unwrap_or((s, ""));
        if frac.len() > 3 {
            return None;
        }
        let whole = digits(whole)?;
        let frac = if frac.is_empty() {
            0
        } else {
            digits(frac)? * 10u64.pow(3 - frac.len() as u32)
        };
        whole.checked_mul(1000)?.checked_add(frac).map(Cpu)
    }
}

impl Bytes {
    /// Parses a plain byte count or one with a binary suffix (`Ki`, `Mi`, `Gi`, `Ti`).
    pub fn parse(s: &str) -> Option<Bytes> {
        const SUFFIXES: [(&str, u64); 4] = [("Ki", 1 << 10), ("Mi", MEBI), ("Gi", GIBI), ("Ti", 1 << 40)];
        for (suffix, unit) in SUFFIXES {
            if let Some(n) = s.strip_suffix(suffix) {
                return digits(n)?.checked_mul(unit).map(Bytes);
            }
        }
        digits(s).map(Bytes)
    }
}

fn digits(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

impl fmt::Display for Cpu {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_multiple_of(1000) {
            write!(f, "{}", self.0 / 1000)
        } else {
            write!(f, "{}m", self.0)
        }
    }
}

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            0 => write!(f, "0"),
            n if n.is_multiple_of(GIBI) => write!(f, "{}Gi", n / GIBI),
            n if n.is_multiple_of(MEBI) => write!(f, "{}Mi", n / MEBI),
            n if n.is_multiple_of(1024) => write!(f, "{}Ki", n / 1024),
            n => write!(f, "{n}"),
        }
    }
}

impl std::ops::Add for Cpu {
    type Output = Cpu;
    fn add(self, o: Cpu) -> Cpu {
        Cpu(self.0.saturating_add(o.0))
    }
}

impl std::ops::Add for Bytes {
    type Output = Bytes;
    fn add(self, o: Bytes) -> Bytes {
        Bytes(self.0.saturating_add(o.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_parse_and_print_back_in_canonical_form() {
        let cpu = |s: &str| Cpu::parse(s).map(|c| c.to_string());
        let bytes = |s: &str| Bytes::parse(s).map(|b| b.to_string());
        // (parser, input, canonical form or None for a refusal)
        type Parse<'a> = &'a dyn Fn(&str) -> Option<String>;
        let table: &[(Parse<'_>, &str, Option<&str>)] = &[
            (&cpu, "300m", Some("300m")),
            (&cpu, "1", Some("1")),
            (&cpu, "1.5", Some("1500m")),
            (&cpu, "0.25", Some("250m")),
            (&bytes, "512Mi", Some("512Mi")),
            (&bytes, "1024Mi", Some("1Gi")),
            (&bytes, "64Ki", Some("64Ki")),
            (&bytes, "1000", Some("1000")),
        ];
        for (parse, input, want) in table {
            assert_eq!(parse(input).as_deref(), *want, "{input}");
        }
        for input in ["", "m", "1.0005", "-1", "1e3", "abc"] {
            assert_eq!(Cpu::parse(input), None, "{input}");
        }
        for input in ["", "1G", "Mi", "1.5Gi", "-1Mi"] {
            assert_eq!(Bytes::parse(input), None, "{input}");
        }
    }

    #[test]
    fn quantities_add_up() {
        assert_eq!((Cpu(300) + Cpu(500)).to_string(), "800m");
        assert_eq!((Bytes(512 * MEBI) + Bytes(GIBI)).to_string(), "1536Mi");
    }
}
