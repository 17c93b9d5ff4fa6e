//! One reading of a network, shared by every op that names addresses
//! (`nginx.deny`, `waf.block`) and by the CLI's CIDR params, so an address
//! the CLI accepts is one the providers accept, written the same way.

use std::net::IpAddr;

/// Why text is not a network the agent will act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    /// Not an address, or a bad prefix length.
    #[error("{text:?} is not a CIDR: {why}")]
    Malformed { text: String, why: &'static str },
    /// `/0`: every address of its family. Always refused: no emergency
    /// needs it, and a typo must not shut everyone out.
    #[error("{text:?} would match every address")]
    Everything { text: String },
}

/// A parsed network: canonical text (masked to the network address) and
/// its family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cidr {
    pub text: String,
    pub ipv4: bool,
}

/// Parses `a.b.c.d/n`, `x:y::/n` or a bare address (a host network) into
/// its canonical form, e.g. `10.1.2.3/8` into `10.0.0.0/8`.
pub fn canonical(s: &str) -> Result<Cidr, CidrError> {
    let shown: String = s.chars().take(64).collect();
    let bad = |why| CidrError::Malformed {
        text: shown.clone(),
        why,
    };
    if s.is_empty() || s.len() > 64 {
        return Err(bad("wrong length"));
    }
    if !s
        .chars()
        .all(|c| c.is_ascii_hexdigit() || matches!(c, '.' | ':' | '/'))
    {
        return Err(bad("bad address"));
    }
    let (addr, len) = match s.split_once('/') {
        Some((a, l)) => (a, Some(l)),
        None => (s, None),
    };
    let ip: IpAddr = addr.parse().map_err(|_| bad("bad address"))?;
    let max: u8 = if ip.is_ipv4() { 32 } else { 128 };
    let len = match len {
        None => max,
        Some(l) => {
            if l.is_empty()
                || l.len() > 3
                || !l.bytes().all(|b| b.is_ascii_digit())
                || (l.len() > 1 && l.starts_with('0'))
            {
                return Err(bad("bad prefix length"));
            }
            let n: u8 = l.parse().map_err(|_| bad("bad prefix length"))?;
            if n > max {
                return Err(bad(if max == 32 {
                    "prefix length over 32"
                } else {
                    "prefix length over 128"
                }));
            }
            n
        }
    };
    if len == 0 {
        return Err(CidrError::Everything { text: shown });
    }
    let net = match ip {
        IpAddr::V4(v4) => IpAddr::V4((u32::from(v4) & (u32::MAX << (32 - u32::from(len)))).into()),
        IpAddr::V6(v6) => {
            IpAddr::V6((u128::from(v6) & (u128::MAX << (128 - u32::from(len)))).into())
        }
    };
    Ok(Cidr {
        text: format!("{net}/{len}"),
        ipv4: ip.is_ipv4(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks_are_masked_and_nonsense_is_refused() {
        assert_eq!(canonical("10.1.2.3/8").unwrap().text, "10.0.0.0/8");
        assert_eq!(canonical("192.0.2.7").unwrap().text, "192.0.2.7/32");
        assert_eq!(canonical("2001:db8::1/32").unwrap().text, "2001:db8::/32");
        assert!(!canonical("::1").unwrap().ipv4);
        for bad in [
            "",
            "abc",
            "10.0.0.0/33",
            "10.0.0.0/08",
            "1.2.3.4/",
            "::/129",
        ] {
            assert!(
                matches!(canonical(bad), Err(CidrError::Malformed { .. })),
                "{bad}"
            );
        }
        assert!(matches!(
            canonical("0.0.0.0/0"),
            Err(CidrError::Everything { .. })
        ));
    }
}
