//! The drivers against real emulators on loopback: sushy-tools for
//! Redfish (with a small ETag shim in front for If-Match), ipmi_sim for
//! IPMI, and a veth pair between two network namespaces for Wake-on-LAN.
//! A test whose emulator or tool is missing prints `SKIP: why` and
//! returns; `scripts/deps.sh test` installs them all.

mod emu;
mod etag;
mod ipmi;
mod redfish;
mod wol;
