//! The processing engine of one worker: restores its partitions, consumes them, runs the
//! pipeline, produces results, and checkpoints.
//!
//! The hot loop runs on its own thread with a polled consumer and no async machinery;
//! checkpoint uploads run on the tokio runtime ([`crate::uploader`]) and report back through a
//! channel, so a slow or failing object store never stalls processing.

use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    time::{Duration, Instant},
};

use rdkafka::{Offset, TopicPartitionList, consumer::Consumer};
use thiserror::Error;
use tokio::sync::mpsc as async_mpsc;

mod process;

use process::ProcessLoop;

use crate::{
    checkpoint::{CheckpointError, CheckpointStore},
    kafka::{self, KafkaSetupError, SourceConsumer},
    pipeline::{PartitionState, Pipeline},
    plan::{Plan, RestoreSource},
    snapshot::{SnapshotHeader, SnapshotId},
    telemetry::{Event, PartitionRestored, PlanRunning, RecordsProcessed},
    uploader::UploadRequest,
};

/// How often processing-time windows and metrics are advanced.
const TICK: Duration = Duration::from_millis(100);

/// Why the engine could not run.
#[derive(Debug, Error)]
pub enum EngineError {
    /// A Kafka client could not be created.
    #[error(transparent)]
    Kafka(#[from] Box<KafkaSetupError>),
    /// Restoring a partition failed (storage unreachable, savepoint part missing).
    #[error("failed to restore partition {partition}: {source}")]
    Restore {
        /// Partition.
        partition: i32,
        /// Why.
        source: CheckpointError,
    },
    /// A snapshot's state does not match this pipeline.
    #[error("the snapshot of partition {partition} does not hold state of this pipeline: {source}")]
    IncompatibleState {
        /// Partition.
        partition: i32,
        /// Decoder error.
        source: serde_json::Error,
    },
    /// The partition offsets could not be resolved or assigned.
    #[error("failed to position the consumer on partition {partition}: {source}")]
    Position {
        /// Partition.
        partition: i32,
        /// librdkafka error.
        source: Box<rdkafka::error::KafkaError>,
    },
    /// The engine thread panicked (a bug).
    #[error("the processing thread panicked")]
    Panicked,
}

/// How an engine run ended.
#[derive(Debug, PartialEq, Eq)]
pub enum EngineExit {
    /// Stop was requested; a final checkpoint was written (or its deadline passed).
    Stopped {
        /// Whether every partition's final checkpoint completed.
        final_checkpoint_complete: bool,
    },
    /// Output delivery failed for good: results since the last checkpoint may be missing,
    /// so the engine must restart from the checkpoints (which replays them).
    Rewind(String),
}

/// Shared readiness flag: true once every owned partition is restored and assigned.
#[derive(Debug, Default)]
pub struct Readiness(AtomicBool);

impl Readiness {
    /// Marks the worker (not) ready.
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::Release);
    }

    /// Whether the worker is ready.
    pub fn is_ready(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// Everything an engine run needs.
pub struct EngineContext {
    /// The plan to run.
    pub plan: Plan,
    /// This worker's pod name.
    pub pod: String,
    /// Compiled pipeline.
    pub pipeline: Arc<Pipeline>,
    /// Checkpoint storage.
    pub store: CheckpointStore,
    /// Extra librdkafka properties.
    pub kafka_props: BTreeMap<String, String>,
    /// Readiness reported on `/readyz`.
    pub readiness: Arc<Readiness>,
    /// Set to stop this run (SIGTERM, or a plan that changes this pod's work); each run has
    /// its own.
    pub stop: Arc<AtomicBool>,
    /// Time allowed for the final flush and checkpoint after a stop.
    pub shutdown_deadline: Duration,
}

/// One owned partition while it runs.
struct PartitionRun {
    partition: i32,
    state: PartitionState,
    next_offset: i64,
    /// The newest snapshot handed to the uploader.
    requested: SnapshotId,
    /// The newest snapshot known durable.
    completed: Option<SnapshotId>,
    counts: RecordsProcessed,
}

/// Restores the owned partitions, then runs until stopped.
pub async fn run(ctx: EngineContext) -> Result<EngineExit, EngineError> {
    let partitions = ctx.plan.partitions_of(&ctx.pod);
    let source = &ctx.plan.spec.source.kafka;
    let consumer = kafka::source_consumer(
        &source.bootstrap_servers,
        &ctx.plan.group_id(),
        &ctx.kafka_props,
    )
    .map_err(Box::new)?;
    let consumer = Arc::new(consumer);

    let mut runs = BTreeMap::new();
    for &partition in &partitions {
        let run = restore_partition(&ctx, &consumer, partition).await?;
        runs.insert(partition, run);
    }

    // Fence: record every partition under this epoch before processing, so a snapshot that a
    // stale owner of an older epoch writes later can never be the newest one.
    let (upload_tx, upload_rx) = async_mpsc::unbounded_channel();
    let (done_tx, done_rx) = mpsc::channel();
    let uploader = tokio::spawn(crate::uploader::run(
        ctx.store.clone(),
        ctx.plan.spec.checkpoint.retained.max(1) as usize,
        upload_rx,
        done_tx,
    ));
    for run in runs.values() {
        if run.completed != Some(run.requested) {
            request_snapshot(&upload_tx, run)?;
        }
    }

    let mut tpl = TopicPartitionList::new();
    for run in runs.values() {
        tpl.add_partition_offset(
            &source.topic,
            run.partition,
            Offset::Offset(run.next_offset),
        )
        .map_err(|source| EngineError::Position {
            partition: run.partition,
            source: source.into(),
        })?;
    }
    consumer
        .assign(&tpl)
        .map_err(|source| EngineError::Position {
            partition: -1,
            source: source.into(),
        })?;

    let sink_bootstrap = ctx
        .plan
        .spec
        .sink
        .kafka
        .as_ref()
        .and_then(|k| k.bootstrap_servers.clone())
        .unwrap_or_else(|| source.bootstrap_servers.clone());
    let needs_producer = ctx.plan.spec.sink.kafka.is_some() || ctx.plan.spec.dead_letter.is_some();
    let producer = if needs_producer {
        Some(kafka::sink_producer(&sink_bootstrap, &ctx.kafka_props).map_err(Box::new)?)
    } else {
        None
    };

    ctx.readiness.set(true);
    PlanRunning {
        pod: &ctx.pod,
        epoch: ctx.plan.epoch,
        partitions: &partitions,
    }
    .emit();

    let process = ProcessLoop {
        plan: ctx.plan.clone(),
        pipeline: ctx.pipeline.clone(),
        consumer: consumer.clone(),
        producer,
        runs,
        upload_tx,
        done_rx,
        stop: ctx.stop.clone(),
        shutdown_deadline: ctx.shutdown_deadline,
    };
    let handle = std::thread::Builder::new()
        .name("streamjob-process".to_owned())
        .spawn(move || process.run())
        .map_err(|_| EngineError::Panicked)?;
    let exit = tokio::task::spawn_blocking(move || handle.join())
        .await
        .map_err(|_| EngineError::Panicked)?
        .map_err(|_| EngineError::Panicked)?;
    ctx.readiness.set(false);
    uploader.abort();
    Ok(exit)
}

/// Restores `partition` from what the plan names, resolving a concrete start offset.
async fn restore_partition(
    ctx: &EngineContext,
    consumer: &Arc<SourceConsumer>,
    partition: i32,
) -> Result<PartitionRun, EngineError> {
    let restore_err = |source| EngineError::Restore { partition, source };
    let (restored, source_desc) = match ctx.plan.restore_source(partition) {
        RestoreSource::Latest => (
            ctx.store
                .restore_latest(partition, ctx.plan.epoch)
                .await
                .map_err(restore_err)?,
            "latest checkpoint".to_owned(),
        ),
        RestoreSource::Savepoint(name) => (
            Some(
                ctx.store
                    .read_savepoint_part(&name, partition)
                    .await
                    .map_err(restore_err)?,
            ),
            format!("savepoint {name}"),
        ),
    };
    let (state, next_offset, completed) = match restored {
        Some(r) => {
            let state = serde_json::from_slice(&r.state)
                .map_err(|source| EngineError::IncompatibleState { partition, source })?;
            PartitionRestored {
                partition,
                from: Some(r.header.id),
                source: source_desc,
            }
            .emit();
            // Completed only if it is this epoch's own checkpoint (savepoint parts are not).
            let completed = (matches!(ctx.plan.restore_source(partition), RestoreSource::Latest)
                && r.header.id.epoch == ctx.plan.epoch)
                .then_some(r.header.id);
            (state, r.header.id.next_offset, completed)
        }
        None => {
            let offset = start_offset(ctx, consumer, partition).await?;
            PartitionRestored {
                partition,
                from: None,
                source: format!(
                    "{:?} offset {offset}",
                    ctx.plan.spec.source.kafka.start_from
                ),
            }
            .emit();
            (ctx.pipeline.new_state(), offset, None)
        }
    };
    Ok(PartitionRun {
        partition,
        state,
        next_offset,
        requested: SnapshotId {
            epoch: ctx.plan.epoch,
            next_offset,
        },
        completed,
        counts: RecordsProcessed {
            partition,
            next_offset,
            ..RecordsProcessed::default()
        },
    })
}

/// The concrete offset where a partition without state starts (so its first checkpoint
/// names a real offset even for `latest`).
async fn start_offset(
    ctx: &EngineContext,
    consumer: &Arc<SourceConsumer>,
    partition: i32,
) -> Result<i64, EngineError> {
    let topic = ctx.plan.spec.source.kafka.topic.clone();
    let earliest = matches!(
        ctx.plan.spec.source.kafka.start_from,
        streamjob_api::StartPosition::Earliest
    );
    let consumer = consumer.clone();
    let (low, high) = tokio::task::spawn_blocking(move || {
        consumer.fetch_watermarks(&topic, partition, Duration::from_secs(30))
    })
    .await
    .map_err(|_| EngineError::Panicked)?
    .map_err(|source| EngineError::Position {
        partition,
        source: source.into(),
    })?;
    Ok(if earliest { low } else { high })
}

fn request_snapshot(
    upload_tx: &async_mpsc::UnboundedSender<UploadRequest>,
    run: &PartitionRun,
) -> Result<(), EngineError> {
    let state =
        serde_json::to_vec(&run.state).map_err(|source| EngineError::IncompatibleState {
            partition: run.partition,
            source,
        })?;
    let header = SnapshotHeader {
        partition: run.partition,
        id: run.requested,
        created_ms: now_ms(),
    };
    // The uploader only stops when the engine does; a closed channel means shutdown.
    let _ = upload_tx.send(UploadRequest {
        header,
        state,
        requested_at: Instant::now(),
    });
    Ok(())
}

/// Wall-clock time in epoch milliseconds.
pub fn now_ms() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}
