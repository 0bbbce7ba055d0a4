//! The streamjob operator: the `StreamJob` API and the controller that runs it.

pub mod api;
pub mod assignment;
pub mod crdgen;
#[cfg(any(test, feature = "fixtures"))]
pub mod fixtures;
