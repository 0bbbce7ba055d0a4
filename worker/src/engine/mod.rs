//! The processing engine of one worker: restores its partitions, consumes them, runs the
//! pipeline, produces results, checkpoints, and follows newer plans by handing partitions
//! over without stopping the others.
//!
//! The hot loop runs on its own thread with a polled consumer and no async machinery;
//! checkpoint uploads ([`crate::uploader`]) and restores ([`restore`]) run on the tokio
//! runtime and report back through channels, so a slow or failing object store never stalls
//! processing, and a partition waiting for its savepoint part never stalls the others.

use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    time::{Duration, Instant},
};

use rdkafka::consumer::Consumer as _;
use streamjob_api::IncompatibleState;
use thiserror::Error;
use tokio::sync::mpsc as async_mpsc;

mod handover;
mod process;
mod restore;

use handover::Transitions;
use process::ProcessLoop;
use restore::Restorer;

use crate::{
    checkpoint::{CheckpointError, CheckpointStore},
    kafka::{self, KafkaSetupError},
    pipeline::{PartitionState, Pipeline},
    plan::Plan,
    plan_change::Handover,
    snapshot::{SnapshotHeader, SnapshotId},
    telemetry::{Event, PlanRunning, RecordsProcessed},
    uploader::{SnapshotTarget, UploadRequest},
};

/// How often processing-time windows and metrics are advanced.
const TICK: Duration = Duration::from_millis(100);

/// Why the engine could not run.
#[derive(Debug, Error)]
pub enum EngineError {
    /// A Kafka client could not be created.
    #[error(transparent)]
    Kafka(#[from] Box<KafkaSetupError>),
    /// Restoring a partition failed (storage unreachable, savepoint part damaged).
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
        source: crate::pipeline::StateDecodeError,
    },
    /// A snapshot holds window state of another window layout, and the spec does not allow
    /// dropping it.
    #[error(
        "the snapshot of partition {partition} holds window state of another layout ({saved}); \
         set spec.upgrade.incompatibleState to dropState to start with empty windows"
    )]
    StateLayoutChanged {
        /// Partition.
        partition: i32,
        /// The layout it was saved under.
        saved: String,
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

/// A savepoint the run writes when it stops, `(id, epoch of its parts)`: set by a plan that
/// restarts the run and orders one (a changed pipeline restores from it).
pub type FinalSavepoint = Arc<std::sync::Mutex<Option<(String, u64)>>>;

/// A newer plan for the run in progress, and what it changes for this pod.
#[derive(Debug)]
pub struct PlanUpdate {
    /// The plan, from now on the run's.
    pub plan: Arc<Plan>,
    /// What it changes for this pod.
    pub handover: Handover,
}

/// Everything an engine run needs.
pub struct EngineContext {
    /// The plan to run.
    pub plan: Arc<Plan>,
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
    /// Set to stop this run (SIGTERM, or a plan that restarts it); each run has its own.
    pub stop: Arc<AtomicBool>,
    /// A savepoint to write when the run stops.
    pub final_savepoint: FinalSavepoint,
    /// Newer plans that keep this run going (the hot loop reads them on its tick).
    pub updates: mpsc::Receiver<PlanUpdate>,
    /// Time allowed for the final flush and checkpoint after a stop.
    pub shutdown_deadline: Duration,
}

/// One owned partition while it runs.
struct PartitionRun {
    partition: i32,
    state: PartitionState,
    next_offset: i64,
    /// The newest checkpoint handed to the uploader.
    requested: SnapshotId,
    /// The newest checkpoint known durable.
    completed: Option<SnapshotId>,
    counts: RecordsProcessed,
    /// When the partition started running, until its first record is processed.
    awaits_first_record: Option<Instant>,
}

/// Starts the Kafka clients, the uploader and the restorer, then runs the hot loop (which
/// restores the owned partitions as it goes) until stopped.
pub async fn run(ctx: EngineContext) -> Result<EngineExit, EngineError> {
    let source = &ctx.plan.spec.source.kafka;
    let consumer = kafka::source_consumer(
        &source.bootstrap_servers,
        &ctx.plan.group_id(),
        &ctx.kafka_props,
    )
    .map_err(Box::new)?;
    let consumer = Arc::new(consumer);
    // librdkafka looks up the leaders of a topic it does not know yet on its one-second
    // timer after the first assign: a partition that starts here (a moved partition whose
    // part was just restored, say) would wait up to a second for its first fetch. Knowing
    // the topic beforehand, it is fetched at once (measured: ~200 ms → 1–3 ms under load).
    let warm = (consumer.clone(), source.topic.clone());
    tokio::task::spawn_blocking(move || {
        let (consumer, topic) = warm;
        if let Err(error) = consumer.fetch_metadata(Some(&topic), Duration::from_secs(10)) {
            tracing::debug!(%error, "no early metadata of the source topic; the first fetch may wait");
        }
    });

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

    let (upload_tx, upload_rx) = async_mpsc::unbounded_channel();
    let (done_tx, done_rx) = mpsc::channel();
    let uploader = tokio::spawn(crate::uploader::run(
        ctx.store.clone(),
        ctx.plan.spec.checkpoint.retained.max(1) as usize,
        upload_rx,
        done_tx,
    ));
    let (restore_tx, restore_rx) = async_mpsc::unbounded_channel();
    let (restored_tx, restored_rx) = mpsc::channel();
    let restorer = tokio::spawn(restore::run(
        Arc::new(Restorer {
            store: ctx.store.clone(),
            pipeline: ctx.pipeline.clone(),
            consumer: consumer.clone(),
            source: source.clone(),
            drop_incompatible_state: ctx.plan.spec.upgrade.incompatible_state
                == IncompatibleState::DropState,
        }),
        restore_rx,
        restored_tx,
    ));

    PlanRunning {
        pod: &ctx.pod,
        epoch: ctx.plan.epoch,
        partitions: &ctx.plan.partitions_of(&ctx.pod),
    }
    .emit();

    let process = ProcessLoop {
        plan: ctx.plan.clone(),
        pod: ctx.pod.clone(),
        pipeline: ctx.pipeline.clone(),
        consumer,
        producer,
        runs: BTreeMap::new(),
        transitions: Transitions::default(),
        upload_tx,
        done_rx,
        restore_tx,
        restored_rx,
        updates: ctx.updates,
        readiness: ctx.readiness.clone(),
        stop: ctx.stop.clone(),
        final_savepoint: ctx.final_savepoint.clone(),
        shutdown_deadline: ctx.shutdown_deadline,
        failures_at_start: 0,
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
    restorer.abort();
    Ok(exit)
}

/// Hands `id` of `run`'s state to the uploader, to be written to `target`. The state is
/// cloned here, which copies nothing (its window maps are shared copy-on-write, see
/// `KeyedPanes`), and encoded by the uploader, off the hot loop.
fn request_upload(
    upload_tx: &async_mpsc::UnboundedSender<UploadRequest>,
    run: &PartitionRun,
    id: SnapshotId,
    target: SnapshotTarget,
) {
    let request = upload_request(run.partition, run.state.clone(), id, target);
    send_upload(upload_tx, request);
}

/// Hands `request` to the uploader.
fn send_upload(upload_tx: &async_mpsc::UnboundedSender<UploadRequest>, request: UploadRequest) {
    // The uploader only stops when the engine does; a closed channel means shutdown.
    let _ = upload_tx.send(request);
}

/// The request to write `state` of `partition` as snapshot `id` to `target`, taken now.
fn upload_request(
    partition: i32,
    state: PartitionState,
    id: SnapshotId,
    target: SnapshotTarget,
) -> UploadRequest {
    UploadRequest {
        header: SnapshotHeader {
            partition,
            id,
            created_ms: now_ms(),
        },
        state,
        target,
        requested_at: Instant::now(),
    }
}

/// Wall-clock time in epoch milliseconds.
pub fn now_ms() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}
