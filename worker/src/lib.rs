//! The streamjob worker: runs one job's share of Kafka partitions through the pipeline,
//! checkpointing per-partition state to object storage and recovering from it.

pub mod checkpoint;
pub mod cli;
pub mod engine;
pub mod http;
pub mod kafka;
pub mod paths;
pub mod pipeline;
pub mod plan;
pub mod plan_change;
pub mod plan_watch;
pub mod snapshot;
pub mod storage;
pub mod supervisor;
pub mod tasks;
pub mod telemetry;
pub mod uploader;
