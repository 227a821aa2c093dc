//! What the Redfish driver asks for: the reset types that carry out a
//! power action (from those the BMC allows) and the one-time boot PATCH.

use serde_json::{json, Value};

use crate::{BmcError, PowerOp};

/// Reset types assumed when the BMC lists none: those every Redfish
/// implementation seen has (PowerCycle is not one of them).
const ASSUMED_RESETS: [&str; 3] = ["On", "ForceOff", "ForceRestart"];

/// The reset types that carry out `op`, in order, from those `allowed`.
pub(crate) fn reset_steps(
    op: PowerOp,
    allowed: Option<&[String]>,
) -> Result<Vec<&'static str>, BmcError> {
    let ok = |t: &&str| match allowed {
        Some(a) => a.iter().any(|x| x == t),
        None => ASSUMED_RESETS.contains(t),
    };
    let on = ["On", "ForceOn"].into_iter().find(ok);
    let steps = match op {
        PowerOp::On => on.map(|t| vec![t]),
        PowerOp::Off => ok(&"ForceOff").then(|| vec!["ForceOff"]),
        PowerOp::Cycle => ["PowerCycle", "ForceRestart"]
            .into_iter()
            .find(ok)
            .map(|t| vec![t])
            .or_else(|| Some(vec!["ForceOff", on?]).filter(|_| ok(&"ForceOff"))),
    };
    steps.ok_or_else(|| {
        BmcError::Unsupported(format!(
            "the BMC has no reset type for {op:?}: it allows {}",
            allowed.map(|a| a.join(", ")).unwrap_or_default()
        ))
    })
}

/// The PATCH that boots `target` once, in the boot mode the system
/// reports (UEFI stays UEFI); no mode when it reports none, as some BMCs
/// fail on a mode they cannot change (sushy-tools' libvirt driver).
pub(crate) fn boot_patch(target: &str, system: &Value) -> Value {
    let mut boot = json!({
        "BootSourceOverrideTarget": target,
        "BootSourceOverrideEnabled": "Once",
    });
    if let Some(mode) = system["Boot"]["BootSourceOverrideMode"].as_str() {
        boot["BootSourceOverrideMode"] = mode.into();
    }
    json!({ "Boot": boot })
}

/// A JSON array of strings.
pub(crate) fn strings(v: &Value) -> Option<Vec<String>> {
    v.as_array().map(|a| {
        a.iter()
            .filter_map(Value::as_str)
            .map(str::to_string)
            .collect()
    })
}

/// The `ResetType` values an ActionInfo resource allows.
pub(crate) fn action_info_resets(info: &Value) -> Option<Vec<String>> {
    info["Parameters"]
        .as_array()?
        .iter()
        .find(|p| p["Name"] == "ResetType")
        .and_then(|p| strings(&p["AllowableValues"]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn reset_types_follow_what_the_bmc_allows() {
        let sushy = list(&[
            "On",
            "ForceOff",
            "GracefulShutdown",
            "GracefulRestart",
            "ForceRestart",
            "Nmi",
            "ForceOn",
        ]);
        let s = |op, a: Option<&[String]>| reset_steps(op, a).unwrap();
        assert_eq!(s(PowerOp::On, Some(&sushy)), ["On"]);
        assert_eq!(s(PowerOp::Off, Some(&sushy)), ["ForceOff"]);
        assert_eq!(s(PowerOp::Cycle, Some(&sushy)), ["ForceRestart"]);
        let full = list(&["PowerCycle", "ForceRestart", "On", "ForceOff"]);
        assert_eq!(s(PowerOp::Cycle, Some(&full)), ["PowerCycle"]);
        let bare = list(&["ForceOn", "ForceOff"]);
        assert_eq!(s(PowerOp::On, Some(&bare)), ["ForceOn"]);
        assert_eq!(s(PowerOp::Cycle, Some(&bare)), ["ForceOff", "ForceOn"]);
        assert_eq!(s(PowerOp::Cycle, None), ["ForceRestart"]);
        assert_eq!(s(PowerOp::On, None), ["On"]);
        let e = reset_steps(PowerOp::Off, Some(&list(&["On"]))).unwrap_err();
        assert!(
            matches!(e, BmcError::Unsupported(_)) && e.to_string().contains("allows On"),
            "{e}"
        );
        assert!(reset_steps(PowerOp::Cycle, Some(&list(&["On", "Nmi"]))).is_err());
    }

    #[test]
    fn the_boot_patch_keeps_a_reported_mode_only() {
        let legacy = json!({"Boot": {"BootSourceOverrideTarget": "Hdd"}});
        assert_eq!(
            boot_patch("Pxe", &legacy),
            json!({"Boot": {"BootSourceOverrideTarget": "Pxe", "BootSourceOverrideEnabled": "Once"}})
        );
        let uefi = json!({"Boot": {"BootSourceOverrideMode": "UEFI"}});
        assert_eq!(
            boot_patch("Hdd", &uefi)["Boot"]["BootSourceOverrideMode"],
            "UEFI"
        );
    }

    #[test]
    fn action_info_lists_reset_types() {
        let info = json!({"Parameters": [
            {"Name": "Other", "AllowableValues": ["x"]},
            {"Name": "ResetType", "AllowableValues": ["On", "ForceOff", "PowerCycle"]}
        ]});
        assert_eq!(
            action_info_resets(&info).unwrap(),
            ["On", "ForceOff", "PowerCycle"]
        );
        assert_eq!(action_info_resets(&json!({})), None);
    }
}
