//! One module per `rackcast` subcommand.

pub mod audit;
pub mod cast;
pub mod client;
pub mod demo;
pub mod demo_net;
pub mod env;
pub mod image;
pub mod image_remote;
pub mod import;
pub mod job;
pub mod nbd;
pub mod netboot;
pub mod sample;
pub mod seed;
pub mod server;
pub mod target;
pub mod token;
pub mod util;
