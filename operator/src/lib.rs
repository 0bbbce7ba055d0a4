//! The streamjob operator: the controller that runs `StreamJob`s.

pub use streamjob_api as api;
pub mod assignment;
pub mod crdgen;
