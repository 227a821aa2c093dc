//! Integration tests of the disk writer and the restore pipeline on real
//! files and real loop devices (loop tests run as root with losetup, as CI
//! does; elsewhere they print why they are skipped), in child processes
//! confined by seccomp, and over a FUSE file system that corrupts bytes or
//! fails fsync.

mod child;
mod common;
mod corrupt;
mod delta;
mod engines;
mod fallback;
mod flaky;
mod flush;
mod order;
mod resume;
mod safety;
mod unicast;
mod verify;
