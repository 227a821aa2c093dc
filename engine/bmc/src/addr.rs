//! Parsing BMC addresses: `redfish://HOST[:PORT][/redfish/v1/Systems/ID]`,
//! `ipmi://HOST[:PORT]`, `wol`.

use super::BmcAddr;

/// A BMC address that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("BMC address {input:?}: {why} (redfish://HOST[:PORT][/redfish/v1/Systems/ID], ipmi://HOST[:PORT] or wol)")]
pub struct AddrError {
    input: String,
    why: &'static str,
}

pub(crate) fn parse(s: &str) -> Result<BmcAddr, AddrError> {
    let err = |why| AddrError {
        input: s.to_string(),
        why,
    };
    if s.eq_ignore_ascii_case("wol") {
        return Ok(BmcAddr::Wol);
    }
    let (scheme, rest) = s.split_once("://").ok_or_else(|| err("no scheme"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], Some(&rest[i..])),
        None => (rest, None),
    };
    if authority.contains('@') {
        return Err(err("give the user with --bmc-user, not in the address"));
    }
    let (host, port) = host_port(authority).ok_or_else(|| err("bad host or port"))?;
    match scheme.to_ascii_lowercase().as_str() {
        "redfish" | "redfish+https" => {
            let system = match path {
                None | Some("/") => None,
                Some(p) if p.starts_with("/redfish/v1/Systems/") && p.len() > 20 => {
                    Some(p.trim_end_matches('/').to_string())
                }
                Some(_) => return Err(err("the path must be /redfish/v1/Systems/ID")),
            };
            Ok(BmcAddr::Redfish { host, port, system })
        }
        "ipmi" => {
            if path.is_some_and(|p| p != "/") {
                return Err(err("an IPMI address has no path"));
            }
            Ok(BmcAddr::Ipmi { host, port })
        }
        _ => Err(err("unknown scheme")),
    }
}

/// `HOST`, `HOST:PORT`, `[V6]`, `[V6]:PORT`.
fn host_port(a: &str) -> Option<(String, Option<u16>)> {
    let (host, port) = if let Some(rest) = a.strip_prefix('[') {
        let (h, after) = rest.split_once(']')?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':')?),
        };
        (h, port)
    } else {
        match a.rsplit_once(':') {
            Some((h, p)) if !h.contains(':') => (h, Some(p)),
            Some(_) => return None,
            None => (a, None),
        }
    };
    if host.is_empty()
        || !host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ".-_:".contains(c))
    {
        return None;
    }
    let port = match port {
        Some(p) => Some(p.parse::<u16>().ok().filter(|p| *p != 0)?),
        None => None,
    };
    Some((host.to_string(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse_and_print_back() {
        for s in [
            "redfish://10.0.0.5",
            "redfish://bmc-12.example:8443/redfish/v1/Systems/1",
            "redfish://[fd00::5]:443",
            "ipmi://10.0.0.6",
            "ipmi://10.0.0.6:6230",
            "wol",
        ] {
            let a: BmcAddr = s.parse().unwrap();
            assert_eq!(a.to_string(), s);
        }
        assert_eq!(
            parse("redfish://h/redfish/v1/Systems/abc").unwrap(),
            BmcAddr::Redfish {
                host: "h".into(),
                port: None,
                system: Some("/redfish/v1/Systems/abc".into())
            }
        );
    }

    #[test]
    fn bad_addresses_are_refused_with_the_reason() {
        for (s, why) in [
            ("10.0.0.5", "no scheme"),
            ("http://10.0.0.5", "unknown scheme"),
            ("redfish://u:p@h", "--bmc-user"),
            ("redfish://h:99999", "bad host"),
            ("redfish://h/other", "/redfish/v1/Systems/ID"),
            ("ipmi://h/x", "no path"),
            ("ipmi://", "bad host"),
        ] {
            let e = parse(s).unwrap_err().to_string();
            assert!(e.contains(why), "{s}: {e}");
        }
    }
}
