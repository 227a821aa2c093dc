//! The `rackcast` command line as a library: one module per subcommand,
//! and the automation-environment builder (`cmd::env`: ELF dependencies,
//! kernel modules, the initramfs cpio), so that its pieces are unit-tested
//! and fuzzable like the rest. The binary (`src/main.rs`) only parses and
//! dispatches.

pub mod cmd;
