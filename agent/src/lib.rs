//! rackcast agent: the target side of an imaging job.
