//! The words of power control, shared by the scheduler, the API, the CLI
//! and the BMC drivers.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A power action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "kebab-case")]
pub enum PowerOp {
    /// Power on (nothing when on).
    On,
    /// Power off at once (not a graceful shutdown).
    Off,
    /// Off then on (a reset when the BMC has no power cycle); a machine
    /// that is off is powered on.
    Cycle,
}

/// What the BMC says the power is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "kebab-case")]
pub enum PowerState {
    /// On.
    On,
    /// Off.
    Off,
    /// The BMC cannot tell (Wake-on-LAN never can).
    Unknown,
}

/// A one-time boot device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "kebab-case")]
pub enum BootDevice {
    /// Network boot (PXE / UEFI network).
    Pxe,
    /// The local disk.
    Disk,
}

/// A word that is none of the allowed ones.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{got:?}: expected one of {allowed}")]
pub struct WordError {
    got: String,
    allowed: &'static str,
}

macro_rules! words {
    ($t:ty, $allowed:literal, $($v:ident = $w:literal),+) => {
        impl $t {
            /// The word the API and the CLI use.
            pub fn word(self) -> &'static str {
                match self { $(Self::$v => $w),+ }
            }
        }
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.word())
            }
        }
        impl FromStr for $t {
            type Err = WordError;
            fn from_str(s: &str) -> Result<Self, WordError> {
                match s.to_ascii_lowercase().as_str() {
                    $($w => Ok(Self::$v),)+
                    _ => Err(WordError { got: s.to_string(), allowed: $allowed }),
                }
            }
        }
    };
}

words!(
    PowerOp,
    "on, off, cycle",
    On = "on",
    Off = "off",
    Cycle = "cycle"
);
words!(
    PowerState,
    "on, off, unknown",
    On = "on",
    Off = "off",
    Unknown = "unknown"
);
words!(BootDevice, "pxe, disk", Pxe = "pxe", Disk = "disk");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_round_trip_in_text_and_json() {
        for op in [PowerOp::On, PowerOp::Off, PowerOp::Cycle] {
            assert_eq!(op.word().parse::<PowerOp>().unwrap(), op);
            assert_eq!(serde_json::to_string(&op).unwrap(), format!("\"{op}\""));
        }
        assert_eq!("PXE".parse::<BootDevice>().unwrap(), BootDevice::Pxe);
        let e = "reboot".parse::<PowerOp>().unwrap_err().to_string();
        assert!(e.contains("on, off, cycle"), "{e}");
    }
}
