//! Reading ipmitool: its exit code is not enough (`chassis bootdev`
//! exits 0 after a failure), and with `-v` it says why a session failed,
//! which tells a refused login from a BMC that does not answer.

use super::CIPHER_SUITE;
use crate::{BmcError, PowerState};

/// What `-v` prints on every call (PICMG discovery, registry loading);
/// dropped from error messages.
const NOISE: [&str; 4] = [
    "Loading IANA PEN Registry",
    "Running Get VSO Capabilities",
    "Invalid completion code received: Invalid command",
    "Discovered IPMB address",
];

/// The result of one ipmitool run. Not only its exit code: `chassis
/// bootdev` exits 0 after "Set Chassis Boot Parameter 5 failed: ...", so
/// any stderr line saying "fail" or "Error" is a failure too.
pub(crate) fn outcome(
    what: &str,
    code: i32,
    stdout: String,
    stderr: &str,
) -> Result<String, BmcError> {
    let lines: Vec<&str> = stderr
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !NOISE.iter().any(|n| l.starts_with(n)))
        .collect();
    let failed = lines
        .iter()
        .any(|l| l.to_ascii_lowercase().contains("fail") || l.contains("Error"));
    if code == 0 && !failed {
        return Ok(stdout);
    }
    let detail = if lines.is_empty() {
        format!("ipmitool exited with {code}")
    } else {
        lines.join("; ")
    };
    let has = |s: &str| lines.iter().any(|l| l.contains(s));
    // -v names the refused step: RAKP 2 fails on a wrong password
    // ("HMAC is invalid") or an unknown user ("unauthorized name").
    if has("HMAC is invalid")
        || has("unauthorized name")
        || has("unauthorized role")
        || has("Insufficient privilege")
    {
        return Err(BmcError::Auth(format!("{what}: {detail}")));
    }
    if has("invalid authentication algorithm")
        || has("invalid integrity algorithm")
        || has("invalid confidentiality algorithm")
    {
        return Err(BmcError::Unsupported(format!(
            "{what}: the BMC does not accept RMCP+ cipher suite {CIPHER_SUITE}: {detail}"
        )));
    }
    if has("Unable to establish") || has("Get Auth Capabilities error") {
        return Err(BmcError::Unreachable(format!("{what}: {detail}")));
    }
    Err(BmcError::Refused {
        what: what.to_string(),
        detail,
    })
}

/// "Chassis Power is on|off".
pub(crate) fn parse_status(out: &str) -> Result<PowerState, BmcError> {
    match out.trim() {
        "Chassis Power is on" => Ok(PowerState::On),
        "Chassis Power is off" => Ok(PowerState::Off),
        other => Err(BmcError::Protocol(format!(
            "chassis power status said {other:?}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_are_classified_from_ipmitools_words() {
        let ok = outcome(
            "chassis power status",
            0,
            "Chassis Power is on\n".into(),
            "Loading IANA PEN Registry...\nRunning Get VSO Capabilities my_addr 0x20, transit 0, target 0x20\nInvalid completion code received: Invalid command\nDiscovered IPMB address 0x0\n",
        )
        .unwrap();
        assert_eq!(parse_status(&ok).unwrap(), PowerState::On);
        // Exit 0, but the boot flags were not set.
        let e = outcome(
            "chassis bootdev pxe",
            0,
            "".into(),
            "Set Chassis Boot Parameter 5 failed: Unspecified error\n",
        )
        .unwrap_err();
        assert!(matches!(e, BmcError::Refused { .. }), "{e:?}");
        assert!(e.to_string().contains("Parameter 5 failed"), "{e}");
        let auth = |stderr: &str| outcome("x", 1, "".into(), stderr).unwrap_err();
        assert!(matches!(
            auth("> RAKP 2 HMAC is invalid\nError: Unable to establish IPMI v2 / RMCP+ session\n"),
            BmcError::Auth(_)
        ));
        assert!(matches!(
            auth("RAKP 2 message indicates an error : unauthorized name\nError: Unable to establish IPMI v2 / RMCP+ session\n"),
            BmcError::Auth(_)
        ));
        assert!(matches!(
            auth("Get Auth Capabilities error\nError issuing Get Channel Authentication Capabilities request\nError: Unable to establish IPMI v2 / RMCP+ session\n"),
            BmcError::Unreachable(_)
        ));
        assert!(matches!(
            auth("Error in open session response message : invalid authentication algorithm\nError: Unable to establish IPMI v2 / RMCP+ session\n"),
            BmcError::Unsupported(_)
        ));
        assert!(matches!(auth(""), BmcError::Refused { .. }));
        assert!(parse_status("Chassis Power is sideways").is_err());
    }
}
