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

use rdkafka::{
    Message, Offset, TopicPartitionList,
    consumer::{CommitMode, Consumer},
    message::{Header, OwnedHeaders},
    producer::{BaseRecord, Producer},
    types::RDKafkaErrorCode,
};
use thiserror::Error;
use tokio::sync::mpsc as async_mpsc;

use crate::{
    checkpoint::{CheckpointError, CheckpointStore},
    kafka::{self, KafkaSetupError, SinkProducer, SourceConsumer},
    pipeline::{InputRecord, OutputRecord, PartitionState, Pipeline, RecordError, RecordStats},
    plan::{Plan, RestoreSource},
    snapshot::{SnapshotHeader, SnapshotId},
    telemetry::{Event, PartitionRestored, RecordDeadLettered, RecordsProcessed},
    uploader::{UploadDone, UploadRequest},
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
    /// Set to stop the engine (SIGTERM, new plan).
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
    tracing::info!(
        pod = %ctx.pod,
        epoch = ctx.plan.epoch,
        partitions = ?partitions,
        "worker running"
    );

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
        streamjob_operator::api::StartPosition::Earliest
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

/// Where a (failed) record came from, for dead-letter headers. Offset -1 marks results of
/// processing-time windows, which no single input record produced.
struct Origin<'a> {
    topic: &'a str,
    partition: i32,
    offset: i64,
}

struct ProcessLoop {
    plan: Plan,
    pipeline: Arc<Pipeline>,
    consumer: Arc<SourceConsumer>,
    producer: Option<SinkProducer>,
    runs: BTreeMap<i32, PartitionRun>,
    upload_tx: async_mpsc::UnboundedSender<UploadRequest>,
    done_rx: mpsc::Receiver<UploadDone>,
    stop: Arc<AtomicBool>,
    shutdown_deadline: Duration,
}

impl ProcessLoop {
    fn run(mut self) -> EngineExit {
        let interval: Duration = self.plan.spec.checkpoint.interval.into();
        let mut next_checkpoint = Instant::now() + interval;
        let mut next_tick = Instant::now() + TICK;
        let mut outputs = Vec::new();
        let delivery_failures = self.delivery_failures();
        let consumer = self.consumer.clone();
        while !self.stop.load(Ordering::Acquire) {
            self.drain_completions();
            match consumer.poll(TICK) {
                None => {}
                Some(Ok(message)) => {
                    let (partition, offset) = (message.partition(), message.offset());
                    let record = InputRecord {
                        key: message.key(),
                        payload: message.payload().unwrap_or_default(),
                        timestamp_ms: message.timestamp().to_millis(),
                        processing_time_ms: now_ms(),
                        partition,
                        offset,
                    };
                    self.process(&record, &message, &mut outputs);
                }
                Some(Err(error)) => tracing::warn!(%error, "consumer error; retrying"),
            }
            let now = Instant::now();
            if now >= next_tick {
                next_tick = now + TICK;
                self.on_tick(&mut outputs);
                if self.delivery_failures() > delivery_failures {
                    return self.rewind();
                }
            }
            if now >= next_checkpoint {
                next_checkpoint = now + interval;
                if let Err(exit) = self.checkpoint(delivery_failures) {
                    return exit;
                }
            }
        }
        self.shutdown(delivery_failures)
    }

    fn delivery_failures(&self) -> u64 {
        self.producer.as_ref().map_or(0, |p| p.context().failures())
    }

    fn rewind(&self) -> EngineExit {
        let error = self
            .producer
            .as_ref()
            .and_then(|p| p.context().last_error())
            .unwrap_or_else(|| "unknown".to_owned());
        tracing::error!(%error, "delivering results failed; restarting from the last checkpoint");
        EngineExit::Rewind(error)
    }

    fn process<M: Message>(
        &mut self,
        record: &InputRecord<'_>,
        message: &M,
        outputs: &mut Vec<OutputRecord>,
    ) {
        let Some(run) = self.runs.get_mut(&record.partition) else {
            return; // Not ours (cannot happen with explicit assignment).
        };
        let mut stats = RecordStats::default();
        outputs.clear();
        let result = self
            .pipeline
            .process(&mut run.state, record, outputs, &mut stats);
        run.next_offset = record.offset + 1;
        run.counts.records_in += 1;
        run.counts.next_offset = run.next_offset;
        run.counts.window_results += stats.window_results;
        run.counts.late_dropped += stats.late_dropped;
        run.counts.records_out += outputs.len() as u64;
        let origin = Origin {
            topic: message.topic(),
            partition: record.partition,
            offset: record.offset,
        };
        for output in outputs.drain(..) {
            self.emit(record.partition, output);
        }
        if let Err(error) = result {
            self.dead_letter(&origin, record.key, record.payload, &error);
        }
        for failed in stats.failed_results {
            self.dead_letter(
                &origin,
                failed.key.as_deref(),
                &failed.payload,
                &failed.error,
            );
        }
    }

    fn emit(&self, partition: i32, output: OutputRecord) {
        let sink = &self.plan.spec.sink;
        if sink.log.is_some() {
            tracing::info!(
                target: "streamjob::sink",
                partition,
                key = %String::from_utf8_lossy(output.key.as_deref().unwrap_or_default()),
                "{}",
                String::from_utf8_lossy(&output.payload)
            );
        }
        if let (Some(kafka), Some(producer)) = (&sink.kafka, &self.producer) {
            let mut record = BaseRecord::to(&kafka.topic).payload(output.payload.as_slice());
            if let Some(key) = &output.key {
                record = record.key(key.as_slice());
            }
            send(producer, record);
        }
    }

    /// Sends a failed record (or window result) to the dead-letter topic, unchanged, with
    /// headers naming the error and where the input came from.
    fn dead_letter(
        &self,
        origin: &Origin<'_>,
        key: Option<&[u8]>,
        payload: &[u8],
        error: &RecordError,
    ) {
        let kind = error.kind.as_str();
        let message_text = error.to_string();
        let topic = self
            .plan
            .spec
            .dead_letter
            .as_ref()
            .map(|d| d.topic.as_str());
        RecordDeadLettered {
            partition: origin.partition,
            offset: origin.offset,
            kind,
            error: &message_text,
            to_topic: topic.is_some(),
        }
        .emit();
        let (Some(topic), Some(producer)) = (topic, &self.producer) else {
            return;
        };
        let partition = origin.partition.to_string();
        let offset = origin.offset.to_string();
        let job = format!("{}/{}", self.plan.job.namespace, self.plan.job.name);
        let step = error.step.clone().unwrap_or_default();
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: "streamjob.error",
                value: Some(message_text.as_str()),
            })
            .insert(Header {
                key: "streamjob.error.kind",
                value: Some(kind),
            })
            .insert(Header {
                key: "streamjob.error.step",
                value: Some(step.as_str()),
            })
            .insert(Header {
                key: "streamjob.source.topic",
                value: Some(origin.topic),
            })
            .insert(Header {
                key: "streamjob.source.partition",
                value: Some(partition.as_str()),
            })
            .insert(Header {
                key: "streamjob.source.offset",
                value: Some(offset.as_str()),
            })
            .insert(Header {
                key: "streamjob.job",
                value: Some(job.as_str()),
            });
        let mut out = BaseRecord::to(topic).payload(payload).headers(headers);
        if let Some(key) = key {
            out = out.key(key);
        }
        send(producer, out);
    }

    fn on_tick(&mut self, outputs: &mut Vec<OutputRecord>) {
        let now = now_ms();
        let partitions: Vec<i32> = self.runs.keys().copied().collect();
        for partition in partitions {
            let Some(run) = self.runs.get_mut(&partition) else {
                continue;
            };
            let mut stats = RecordStats::default();
            outputs.clear();
            self.pipeline
                .on_processing_time(&mut run.state, now, outputs, &mut stats);
            run.counts.window_results += stats.window_results;
            run.counts.records_out += outputs.len() as u64;
            let counts = std::mem::replace(
                &mut run.counts,
                RecordsProcessed {
                    partition,
                    next_offset: run.next_offset,
                    ..RecordsProcessed::default()
                },
            );
            counts.emit();
            for output in outputs.drain(..) {
                self.emit(partition, output);
            }
            let origin = Origin {
                topic: &self.plan.spec.source.kafka.topic,
                partition,
                offset: -1,
            };
            for failed in stats.failed_results {
                self.dead_letter(
                    &origin,
                    failed.key.as_deref(),
                    &failed.payload,
                    &failed.error,
                );
            }
        }
    }

    fn drain_completions(&mut self) {
        while let Ok(done) = self.done_rx.try_recv() {
            self.complete(done);
        }
    }

    fn complete(&mut self, done: UploadDone) {
        let Some(run) = self.runs.get_mut(&done.partition) else {
            return;
        };
        if run.completed.is_some_and(|c| c >= done.id) {
            return;
        }
        run.completed = Some(done.id);
        // Best effort, for lag tools only: the checkpoint is the truth.
        let mut tpl = TopicPartitionList::new();
        let topic = &self.plan.spec.source.kafka.topic;
        if tpl
            .add_partition_offset(topic, done.partition, Offset::Offset(done.id.next_offset))
            .is_ok()
        {
            if let Err(error) = self.consumer.commit(&tpl, CommitMode::Async) {
                tracing::debug!(%error, partition = done.partition, "offset commit failed");
            }
        }
    }

    /// Flushes output, then snapshots every partition that moved since its last snapshot.
    fn checkpoint(&mut self, delivery_failures: u64) -> Result<(), EngineExit> {
        if let Some(producer) = &self.producer {
            if let Err(error) = producer.flush(Duration::from_secs(30)) {
                tracing::warn!(%error, "output flush timed out; checkpoint postponed");
                return Ok(());
            }
        }
        if self.delivery_failures() > delivery_failures {
            return Err(self.rewind());
        }
        let epoch = self.plan.epoch;
        for run in self.runs.values_mut() {
            let id = SnapshotId {
                epoch,
                next_offset: run.next_offset,
            };
            if id == run.requested {
                continue; // Nothing moved; the previous snapshot still describes the state.
            }
            run.requested = id;
            if let Err(error) = request_snapshot(&self.upload_tx, run) {
                tracing::error!(%error, partition = run.partition, "cannot encode state");
            }
        }
        Ok(())
    }

    fn shutdown(mut self, delivery_failures: u64) -> EngineExit {
        tracing::info!("stopping: flushing output and writing final checkpoints");
        let deadline = Instant::now() + self.shutdown_deadline;
        if let Err(exit) = self.checkpoint(delivery_failures) {
            return exit;
        }
        // Partitions whose newest requested snapshot is not yet durable.
        loop {
            let pending = self
                .runs
                .values()
                .filter(|r| r.completed != Some(r.requested))
                .count();
            if pending == 0 {
                break;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                tracing::warn!(
                    pending,
                    "final checkpoint incomplete at the deadline; a restart replays from the previous checkpoint (nothing is lost)"
                );
                return EngineExit::Stopped {
                    final_checkpoint_complete: false,
                };
            }
            match self.done_rx.recv_timeout(left.min(TICK)) {
                Ok(done) => self.complete(done),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return EngineExit::Stopped {
                        final_checkpoint_complete: false,
                    };
                }
            }
        }
        // Commit synchronously so lag tools see the final position.
        let mut tpl = TopicPartitionList::new();
        for run in self.runs.values() {
            let _ = tpl.add_partition_offset(
                &self.plan.spec.source.kafka.topic,
                run.partition,
                Offset::Offset(run.next_offset),
            );
        }
        if tpl.count() > 0 {
            if let Err(error) = self.consumer.commit(&tpl, CommitMode::Sync) {
                tracing::debug!(%error, "final offset commit failed");
            }
        }
        tracing::info!("final checkpoint complete");
        EngineExit::Stopped {
            final_checkpoint_complete: true,
        }
    }
}

/// Sends a record, waiting while librdkafka's queue is full.
fn send(producer: &SinkProducer, mut record: BaseRecord<'_, [u8], [u8]>) {
    loop {
        match producer.send(record) {
            Ok(()) => return,
            Err((
                rdkafka::error::KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull),
                back,
            )) => {
                record = back;
                std::thread::sleep(Duration::from_millis(1));
            }
            Err((error, _)) => {
                // Counted as a delivery failure by the caller's next check via the context.
                tracing::error!(%error, "cannot enqueue output record");
                producer
                    .context()
                    .record_enqueue_failure(&error.to_string());
                return;
            }
        }
    }
}
