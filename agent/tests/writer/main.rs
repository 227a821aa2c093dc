//! Integration tests of the disk writer and the restore pipeline on real
//! files and real loop devices (loop tests run as root with losetup, as CI
//! does; elsewhere they print why they are skipped).

mod common;
mod corrupt;
mod delta;
mod engines;
mod order;
mod resume;
mod safety;
mod verify;
