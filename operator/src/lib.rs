//! The streamjob operator: the controller that runs `StreamJob`s.

pub use streamjob_api as api;
pub mod assignment;
pub mod controller;
pub mod crdgen;
pub mod kafka;
pub mod leader;
pub mod telemetry;
