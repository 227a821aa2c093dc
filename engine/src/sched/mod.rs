//! Jobs, tasks, targets and cast sessions: the scheduler (sans-IO, time as
//! an input) and the wire types of the server's APIs.

pub mod api;
