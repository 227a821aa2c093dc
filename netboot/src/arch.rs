//! Client classification: architecture from raw option 93, and what kind of
//! boot client is asking.
//!
//! Option 93 values follow the IANA "Processor Architecture Types" registry,
//! i.e. RFC 4578 *with its erratum*: 7 is x64 UEFI and 9 is EBC (the RFC text
//! has them swapped, and so do some libraries' enum names, which is why only
//! the raw number is trusted here).

use std::fmt;

/// Client system architecture, from the raw option 93 value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClientArch {
    /// 0: x86 BIOS (legacy PXE).
    X86Bios,
    /// 6: 32-bit x86 UEFI.
    X86Uefi,
    /// 7: x64 UEFI (the erratum's value; the RFC text says 9).
    X64Uefi,
    /// 9: EFI byte code.
    Ebc,
    /// 10: 32-bit ARM UEFI.
    Arm32Uefi,
    /// 11: 64-bit ARM UEFI.
    Arm64Uefi,
    /// 15: 32-bit x86 UEFI HTTP boot.
    X86UefiHttp,
    /// 16: x64 UEFI HTTP boot.
    X64UefiHttp,
    /// 17: EBC HTTP boot.
    EbcHttp,
    /// 18: 32-bit ARM UEFI HTTP boot.
    Arm32UefiHttp,
    /// 19: 64-bit ARM UEFI HTTP boot.
    Arm64UefiHttp,
    /// 20: x86 BIOS HTTP boot.
    X86BiosHttp,
    /// 27: 64-bit RISC-V UEFI.
    RiscV64Uefi,
    /// 28: 64-bit RISC-V UEFI HTTP boot.
    RiscV64UefiHttp,
    /// Any other registry value, kept raw.
    Other(u16),
}

impl ClientArch {
    /// Classifies a raw option 93 value.
    pub fn from_raw(raw: u16) -> Self {
        match raw {
            0 => Self::X86Bios,
            6 => Self::X86Uefi,
            7 => Self::X64Uefi,
            9 => Self::Ebc,
            10 => Self::Arm32Uefi,
            11 => Self::Arm64Uefi,
            15 => Self::X86UefiHttp,
            16 => Self::X64UefiHttp,
            17 => Self::EbcHttp,
            18 => Self::Arm32UefiHttp,
            19 => Self::Arm64UefiHttp,
            20 => Self::X86BiosHttp,
            27 => Self::RiscV64Uefi,
            28 => Self::RiscV64UefiHttp,
            n => Self::Other(n),
        }
    }

    /// The raw option 93 value.
    pub fn raw(self) -> u16 {
        match self {
            Self::X86Bios => 0,
            Self::X86Uefi => 6,
            Self::X64Uefi => 7,
            Self::Ebc => 9,
            Self::Arm32Uefi => 10,
            Self::Arm64Uefi => 11,
            Self::X86UefiHttp => 15,
            Self::X64UefiHttp => 16,
            Self::EbcHttp => 17,
            Self::Arm32UefiHttp => 18,
            Self::Arm64UefiHttp => 19,
            Self::X86BiosHttp => 20,
            Self::RiscV64Uefi => 27,
            Self::RiscV64UefiHttp => 28,
            Self::Other(n) => n,
        }
    }

    /// True for the "boot from HTTP" registry values.
    pub fn is_http_boot(self) -> bool {
        matches!(
            self,
            Self::X86UefiHttp
                | Self::X64UefiHttp
                | Self::EbcHttp
                | Self::Arm32UefiHttp
                | Self::Arm64UefiHttp
                | Self::X86BiosHttp
                | Self::RiscV64UefiHttp
        )
    }

    /// True when the firmware is BIOS (the local-disk script then uses `sanboot`).
    pub fn is_bios(self) -> bool {
        matches!(self, Self::X86Bios | Self::X86BiosHttp)
    }

    /// The same machine's architecture with HTTP folded away, so config keys
    /// name a platform once (`x64-uefi` covers PXE and HTTP boot).
    pub fn platform(self) -> Self {
        match self {
            Self::X86UefiHttp => Self::X86Uefi,
            Self::X64UefiHttp => Self::X64Uefi,
            Self::EbcHttp => Self::Ebc,
            Self::Arm32UefiHttp => Self::Arm32Uefi,
            Self::Arm64UefiHttp => Self::Arm64Uefi,
            Self::X86BiosHttp => Self::X86Bios,
            Self::RiscV64UefiHttp => Self::RiscV64Uefi,
            a => a,
        }
    }

    /// Short stable name used in config files and logs (`bios`, `x64-uefi`, ...).
    pub fn name(self) -> String {
        match self {
            Self::X86Bios => "bios".into(),
            Self::X86Uefi => "x86-uefi".into(),
            Self::X64Uefi => "x64-uefi".into(),
            Self::Ebc => "ebc".into(),
            Self::Arm32Uefi => "arm32-uefi".into(),
            Self::Arm64Uefi => "arm64-uefi".into(),
            Self::X86UefiHttp => "x86-uefi-http".into(),
            Self::X64UefiHttp => "x64-uefi-http".into(),
            Self::EbcHttp => "ebc-http".into(),
            Self::Arm32UefiHttp => "arm32-uefi-http".into(),
            Self::Arm64UefiHttp => "arm64-uefi-http".into(),
            Self::X86BiosHttp => "bios-http".into(),
            Self::RiscV64Uefi => "riscv64-uefi".into(),
            Self::RiscV64UefiHttp => "riscv64-uefi-http".into(),
            Self::Other(n) => format!("arch-{n}"),
        }
    }
}

impl fmt::Display for ClientArch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

/// What kind of boot client is asking; decides what a reply must contain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClientKind {
    /// Firmware PXE (vendor class `PXEClient`): gets a TFTP boot file.
    Pxe,
    /// UEFI HTTP boot (vendor class `HTTPClient`): gets a URL and `HTTPClient` echoed.
    Http,
    /// iPXE (user class `iPXE` or option 175): gets an HTTP script URL, which
    /// breaks the chainload loop.
    Ipxe,
}

impl fmt::Display for ClientKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Pxe => "pxe",
            Self::Http => "http-boot",
            Self::Ipxe => "ipxe",
        })
    }
}

pub use rackcast_types::MacAddr;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn erratum_values_not_rfc_text() {
        assert_eq!(ClientArch::from_raw(7), ClientArch::X64Uefi);
        assert_eq!(ClientArch::from_raw(9), ClientArch::Ebc);
        assert_eq!(ClientArch::from_raw(11), ClientArch::Arm64Uefi);
        assert_eq!(ClientArch::from_raw(16), ClientArch::X64UefiHttp);
        assert!(ClientArch::from_raw(19).is_http_boot());
        assert_eq!(ClientArch::from_raw(19).platform(), ClientArch::Arm64Uefi);
        for raw in 0..64 {
            assert_eq!(ClientArch::from_raw(raw).raw(), raw);
        }
    }
}
