//! Integration tests against real clients: TFTP on loopback, DHCP in network
//! namespaces. Tests needing a missing tool or root print why and return.

mod dhcp_netns;
mod http_files;
mod http_limits;
mod qemu;
mod resource_bounds;
mod tftp_interop;
mod tftp_limits;
mod tftp_shared;
mod util;
mod wire;
