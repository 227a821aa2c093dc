//! MAC addresses: one type, parsed once, printed one way.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A 48-bit MAC address: a target's identity everywhere in rackcast (boot
/// policy, scheduler, API, CLI, agent). Printed lower-case with colons
/// (`aa:bb:cc:dd:ee:ff`), which is also its JSON and database form.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct MacAddr(pub [u8; 6]);

/// A string that is not a MAC address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a MAC address (want aa:bb:cc:dd:ee:ff)")]
pub struct MacParseError(pub String);

impl MacAddr {
    /// Parses the forms operators and firmware write: `aa:bb:cc:dd:ee:ff`,
    /// `AA-BB-CC-DD-EE-FF` (any case) and Cisco's `aabb.ccdd.eeff`;
    /// surrounding white space is ignored. Anything else is refused.
    pub fn parse(s: &str) -> Result<MacAddr, MacParseError> {
        let t = s.trim();
        let groups: Vec<&str> = if t.contains('.') {
            t.split('.').collect()
        } else {
            t.split([':', '-']).collect()
        };
        let (count, width) = if t.contains('.') { (3, 4) } else { (6, 2) };
        let uniform_sep = !(t.contains(':') && t.contains('-'));
        if groups.len() != count
            || !uniform_sep
            || !groups
                .iter()
                .all(|g| g.len() == width && g.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            return Err(MacParseError(s.to_string()));
        }
        let hex: String = groups.concat();
        let mut out = [0u8; 6];
        for (i, b) in out.iter_mut().enumerate() {
            *b = u8::from_str_radix(&hex[i * 2..i * 2 + 2], 16)
                .map_err(|_| MacParseError(s.to_string()))?;
        }
        Ok(MacAddr(out))
    }

    /// The first six bytes of a hardware address field (DHCP's chaddr), or
    /// `None` when it is shorter.
    pub fn from_slice(b: &[u8]) -> Option<MacAddr> {
        Some(MacAddr(b.get(..6)?.try_into().ok()?))
    }

    /// The six octets.
    pub fn octets(&self) -> [u8; 6] {
        self.0
    }

    /// Whether this can name a real NIC: not all zero (loopback) and not
    /// broadcast.
    pub fn is_real(&self) -> bool {
        self.0 != [0; 6] && self.0 != [0xff; 6]
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MacAddr({self})")
    }
}

impl FromStr for MacAddr {
    type Err = MacParseError;
    fn from_str(s: &str) -> Result<MacAddr, MacParseError> {
        MacAddr::parse(s)
    }
}

impl Serialize for MacAddr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for MacAddr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<MacAddr, D::Error> {
        let s = String::deserialize(d)?;
        MacAddr::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// In an OpenAPI document a MAC is the string it is on the wire. The
/// pattern is the form the server writes; requests name a MAC in a plain
/// string, so the other forms [`MacAddr::parse`] accepts stay accepted.
#[cfg(feature = "openapi")]
impl utoipa::PartialSchema for MacAddr {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, Type};
        ObjectBuilder::new()
            .schema_type(Type::String)
            .pattern(Some("^[0-9a-f]{2}(:[0-9a-f]{2}){5}$"))
            .examples(["52:54:00:ab:cd:01"])
            .description(Some("A MAC address, lower-case with colons."))
            .into()
    }
}

#[cfg(feature = "openapi")]
impl utoipa::ToSchema for MacAddr {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_written_form_is_one_address() {
        let want = "52:54:00:ab:cd:01";
        for s in [
            "52:54:00:ab:cd:01",
            "52:54:00:AB:CD:01",
            "52-54-00-ab-cd-01",
            " 52-54-00-AB-cd-01\n",
            "5254.00ab.cd01",
        ] {
            assert_eq!(MacAddr::parse(s).unwrap().to_string(), want, "{s:?}");
        }
    }

    #[test]
    fn malformed_is_refused() {
        for s in [
            "",
            "52:54:00:ab:cd",
            "52:54:00:ab:cd:01:02",
            "5:54:00:ab:cd:01",
            "52:54:00:ab:cd:0g",
            "52:54-00:ab:cd:01",
            "525400abcd01",
            "5254.00ab.cd0",
            "+2:54:00:ab:cd:01",
        ] {
            assert!(MacAddr::parse(s).is_err(), "{s:?}");
        }
    }

    #[test]
    fn json_is_the_display_form() {
        let m = MacAddr([2, 0, 0, 0, 0, 0x1f]);
        let j = serde_json::to_string(&m).unwrap();
        assert_eq!(j, "\"02:00:00:00:00:1f\"");
        assert_eq!(serde_json::from_str::<MacAddr>(&j).unwrap(), m);
        assert!(serde_json::from_str::<MacAddr>("\"nope\"").is_err());
    }

    #[test]
    fn real_macs() {
        assert!(MacAddr([2, 0, 0, 0, 0, 1]).is_real());
        assert!(!MacAddr([0; 6]).is_real());
        assert!(!MacAddr([0xff; 6]).is_real());
    }
}
