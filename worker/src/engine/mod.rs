//! The processing engine of one worker: restores its partitions, consumes them, runs the
//! pipeline, produces results, checkpoints, and follows newer plans by handing partitions
//! over without stopping the others.
//!
//! The hot loop runs on its own thread with a polled consumer and no async machinery;
//! checkpoint uploads ([`crate::uploader`]) and restores ([`restore`]) run on the tokio
//! runtime and report back through channels, so a slow or failing object store never stalls
//! processing, and a partition waiting for its savepoint part never stalls the others.
//!
//! With several processing threads ([`EngineContext::processing_threads`]) the pod's
//! partitions are split into lanes by partition number; each lane is such a hot loop with its
//! own consumer, producer, uploader and restorer, and follows the plan for its partitions
//! only. Every partition stays with one lane, so everything that holds per partition (state,
//! snapshots, the handover protocol) holds per lane unchanged.

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
    telemetry::{Event, Metrics, PlanRunning, RecordsProcessed},
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
    /// Hot loops to split the partitions across (at least one).
    pub processing_threads: usize,
}

/// The share of the pod's partitions one processing thread runs: those whose number modulo
/// `count` is `index`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Lane {
    index: usize,
    count: usize,
}

impl Lane {
    /// Whether `partition` is this lane's.
    pub(crate) fn owns(self, partition: i32) -> bool {
        usize::try_from(partition).is_ok_and(|p| p % self.count == self.index)
    }

    /// This lane's partitions of `partitions`.
    pub(crate) fn share(self, partitions: &[i32]) -> Vec<i32> {
        partitions
            .iter()
            .copied()
            .filter(|&p| self.owns(p))
            .collect()
    }

    /// The part of `handover` that concerns this lane's partitions.
    pub(crate) fn handover(self, handover: &Handover) -> Handover {
        Handover {
            keep: self.share(&handover.keep),
            lose: self.share(&handover.lose),
            gain: self.share(&handover.gain),
            savepoint: handover.savepoint.clone(),
        }
    }
}

/// Partitions still restoring, per lane: the worker is ready when no lane has any.
pub(crate) struct Restoring {
    /// `None` until the lane first reports.
    per_lane: std::sync::Mutex<Vec<Option<usize>>>,
    readiness: Arc<Readiness>,
}

impl Restoring {
    fn new(lanes: usize, readiness: Arc<Readiness>) -> Self {
        Self {
            per_lane: std::sync::Mutex::new(vec![None; lanes]),
            readiness,
        }
    }

    /// Records how many partitions `lane` still restores; updates readiness and the gauge.
    pub(crate) fn report(&self, lane: Lane, restoring: usize) {
        let mut per_lane = self.per_lane.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = per_lane.get_mut(lane.index) {
            *count = Some(restoring);
        }
        let total: usize = per_lane.iter().flatten().sum();
        Metrics::global().set_partitions_restoring(total);
        // Set under the lock, so that the last report decides.
        self.readiness
            .set(total == 0 && per_lane.iter().all(Option::is_some));
    }
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

/// Starts one lane per processing thread (each restores its partitions as it goes) and runs
/// them until stopped; when one lane ends (a rewind), the others are stopped too.
pub async fn run(ctx: EngineContext) -> Result<EngineExit, EngineError> {
    PlanRunning {
        pod: &ctx.pod,
        epoch: ctx.plan.epoch,
        partitions: &ctx.plan.partitions_of(&ctx.pod),
    }
    .emit();
    let count = ctx.processing_threads.max(1);
    let restoring = Arc::new(Restoring::new(count, ctx.readiness.clone()));
    let lanes_stop = Arc::new(AtomicBool::new(false));
    let mut started = Vec::new();
    let mut lane_updates = Vec::new();
    for index in 0..count {
        let lane = Lane { index, count };
        let (updates_tx, updates_rx) = mpsc::channel();
        lane_updates.push((lane, updates_tx));
        let lane = LaneStart {
            lane,
            restoring: restoring.clone(),
            lanes_stop: lanes_stop.clone(),
            updates: updates_rx,
        };
        match start_lane(&ctx, lane) {
            Ok(lane) => started.push(lane),
            Err(error) => {
                lanes_stop.store(true, Ordering::Release);
                // The lanes already started stop; the error is what the run ends with.
                let _ = finish(started).await;
                return Err(error);
            }
        }
    }
    // Plan updates, each lane's part of them; ends when the supervisor drops its sender.
    let updates = ctx.updates;
    std::thread::Builder::new()
        .name("streamjob-plans".to_owned())
        .spawn(move || {
            while let Ok(PlanUpdate { plan, handover }) = updates.recv() {
                for (lane, lane_tx) in &lane_updates {
                    let _ = lane_tx.send(PlanUpdate {
                        plan: plan.clone(),
                        handover: lane.handover(&handover),
                    });
                }
            }
        })
        .map_err(|_| EngineError::Panicked)?;
    let exit = finish(started).await;
    ctx.readiness.set(false);
    exit
}

/// What one lane gets besides the engine's context.
struct LaneStart {
    lane: Lane,
    restoring: Arc<Restoring>,
    /// Set when any lane ends, so that the others stop.
    lanes_stop: Arc<AtomicBool>,
    updates: mpsc::Receiver<PlanUpdate>,
}

/// A running lane: its hot loop thread and its tasks.
struct StartedLane {
    thread: std::thread::JoinHandle<EngineExit>,
    uploader: tokio::task::JoinHandle<()>,
    restorer: tokio::task::JoinHandle<()>,
}

/// Waits for every lane to end: a rewind of any lane rewinds the run, a panic fails it.
async fn finish(lanes: Vec<StartedLane>) -> Result<EngineExit, EngineError> {
    let mut exit = Ok(EngineExit::Stopped {
        final_checkpoint_complete: true,
    });
    for lane in lanes {
        let thread = lane.thread;
        let joined = tokio::task::spawn_blocking(move || thread.join()).await;
        lane.uploader.abort();
        lane.restorer.abort();
        exit = match (exit, joined) {
            (Err(error), _) => Err(error),
            (_, Err(_) | Ok(Err(_))) => Err(EngineError::Panicked),
            (Ok(EngineExit::Rewind(reason)), _) | (_, Ok(Ok(EngineExit::Rewind(reason)))) => {
                Ok(EngineExit::Rewind(reason))
            }
            (
                Ok(EngineExit::Stopped {
                    final_checkpoint_complete: all,
                }),
                Ok(Ok(EngineExit::Stopped {
                    final_checkpoint_complete: this,
                })),
            ) => Ok(EngineExit::Stopped {
                final_checkpoint_complete: all && this,
            }),
        };
    }
    exit
}

/// Sets `flag` when dropped: a lane's thread ending for any reason (panics included) stops
/// the other lanes.
struct SetOnDrop(Arc<AtomicBool>);

impl Drop for SetOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

/// Starts a lane's Kafka clients, uploader and restorer, and its hot loop thread.
fn start_lane(ctx: &EngineContext, start: LaneStart) -> Result<StartedLane, EngineError> {
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
        updates: start.updates,
        lane: start.lane,
        restoring: start.restoring,
        stop: ctx.stop.clone(),
        lanes_stop: start.lanes_stop.clone(),
        final_savepoint: ctx.final_savepoint.clone(),
        shutdown_deadline: ctx.shutdown_deadline,
        failures_at_start: 0,
    };
    let lanes_stop = SetOnDrop(start.lanes_stop);
    let thread = std::thread::Builder::new()
        .name("streamjob-process".to_owned())
        .spawn(move || {
            let _stop_the_others = lanes_stop;
            process.run()
        })
        .map_err(|_| EngineError::Panicked)?;
    Ok(StartedLane {
        thread,
        uploader,
        restorer,
    })
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::{Lane, Readiness, Restoring};
    use crate::plan_change::Handover;

    #[test]
    fn lanes_split_the_partitions_so_that_each_has_one_lane() {
        let partitions: Vec<i32> = (0..12).collect();
        for count in 1..=5 {
            let lanes: Vec<Lane> = (0..count).map(|index| Lane { index, count }).collect();
            for &p in &partitions {
                let owners = lanes.iter().filter(|lane| lane.owns(p)).count();
                assert_eq!(owners, 1, "partition {p} with {count} lanes");
            }
            let shares: usize = lanes.iter().map(|l| l.share(&partitions).len()).sum();
            assert_eq!(shares, partitions.len());
        }
        let lane = Lane { index: 1, count: 2 };
        assert_eq!(lane.share(&partitions[..8]), [1, 3, 5, 7]);
        assert!(!lane.owns(-1), "no lane owns a negative partition");
        let handover = Handover {
            keep: vec![0, 1],
            lose: vec![2, 3],
            gain: vec![4, 5],
            savepoint: Some("e2".to_owned()),
        };
        assert_eq!(
            lane.handover(&handover),
            Handover {
                keep: vec![1],
                lose: vec![3],
                gain: vec![5],
                savepoint: Some("e2".to_owned()),
            }
        );
    }

    #[test]
    fn the_worker_is_ready_once_every_lane_has_reported_nothing_left_to_restore() {
        let readiness = Arc::new(Readiness::default());
        let restoring = Restoring::new(2, readiness.clone());
        let (first, second) = (Lane { index: 0, count: 2 }, Lane { index: 1, count: 2 });
        restoring.report(first, 0);
        assert!(!readiness.is_ready(), "the second lane has not reported");
        restoring.report(second, 1);
        assert!(!readiness.is_ready());
        restoring.report(second, 0);
        assert!(readiness.is_ready());
        restoring.report(first, 2);
        assert!(!readiness.is_ready(), "a lane restores again (a handover)");
    }
}
