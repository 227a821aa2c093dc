//! Multicast protocol tests: a deterministic, seeded simulation of a lossy
//! network with many receivers and a virtual clock (no sockets).

mod hostile;
mod netsim;
mod scenarios;
mod table;
