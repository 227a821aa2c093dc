//! One module per `rackcast` subcommand.

pub mod cast;
pub mod demo;
pub mod image;
pub mod netboot;
pub mod sample;
pub mod util;
