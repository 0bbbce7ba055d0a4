//! The hot loop of an engine run (no I/O but Kafka): poll, run the pipeline, produce, hand
//! snapshots to the uploader at each checkpoint interval, and follow newer plans on the tick
//! ([`super::handover`]).

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
};
use tokio::sync::mpsc as async_mpsc;

use super::{
    EngineExit, FinalSavepoint, Lane, PartitionRun, PlanUpdate, Restoring, TICK,
    handover::Transitions,
    now_ms, request_upload,
    restore::{RestoreCommand, RestoredPartition},
};
use crate::{
    kafka::{SinkProducer, SourceConsumer, poll_next, send},
    pipeline::{FailedResult, InputRecord, Output, Outputs, Pipeline, RecordError, RecordStats},
    plan::Plan,
    snapshot::SnapshotId,
    telemetry::{Event, FirstRecord, RecordDeadLettered, RecordsProcessed},
    uploader::{SnapshotTarget, UploadDone, UploadRequest},
};

/// Records processed between two reads of the clock.
const CLOCK_EVERY: u32 = 256;
/// How long one flush of the output waits for acknowledgements.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(30);

/// Where a (failed) record came from, for dead-letter headers. Offset -1 marks results of
/// processing-time windows, which no single input record produced.
struct Origin<'a> {
    topic: &'a str,
    partition: i32,
    offset: i64,
}

pub(super) struct ProcessLoop {
    /// The newest plan; checkpoints carry its epoch.
    pub(super) plan: Arc<Plan>,
    pub(super) pod: String,
    pub(super) pipeline: Arc<Pipeline>,
    pub(super) consumer: Arc<SourceConsumer>,
    pub(super) producer: Option<SinkProducer>,
    /// Partitions that run.
    pub(super) runs: BTreeMap<i32, PartitionRun>,
    /// Partitions on their way in (restoring) or out (releasing).
    pub(super) transitions: Transitions,
    pub(super) upload_tx: async_mpsc::UnboundedSender<UploadRequest>,
    pub(super) done_rx: mpsc::Receiver<UploadDone>,
    pub(super) restore_tx: async_mpsc::UnboundedSender<RestoreCommand>,
    pub(super) restored_rx: mpsc::Receiver<RestoredPartition>,
    pub(super) updates: mpsc::Receiver<PlanUpdate>,
    /// The partitions this hot loop runs of the pod's.
    pub(super) lane: Lane,
    /// Where it reports its partitions still restoring (readiness).
    pub(super) restoring: Arc<Restoring>,
    /// Set to stop the run.
    pub(super) stop: Arc<AtomicBool>,
    /// Set when another lane of the run ended (it rewinds the run).
    pub(super) lanes_stop: Arc<AtomicBool>,
    /// A savepoint to write when the run stops: (id, epoch of its parts).
    pub(super) final_savepoint: FinalSavepoint,
    pub(super) shutdown_deadline: Duration,
    /// Failed deliveries before this run's first record; more mean lost output.
    pub(super) failures_at_start: u64,
}

impl ProcessLoop {
    pub(super) fn run(mut self) -> EngineExit {
        let interval: Duration = self.plan.spec.checkpoint.interval.into();
        let mut next_checkpoint = Instant::now() + interval;
        let mut next_tick = Instant::now() + TICK;
        let mut outputs = Outputs::default();
        self.failures_at_start = self.delivery_failures();
        self.start_restores();
        let consumer = self.consumer.clone();
        // Reading the clock costs as much as a quarter of a record's pipeline on a VM, so it is
        // read once per batch of records (about a millisecond), and when the consumer had to
        // wait; processing-time windows and output timestamps see that granularity.
        let mut clock_ms = now_ms();
        let mut since_clock = 0u32;
        while !self.stopping() {
            let polled = poll_next(&consumer, TICK);
            if polled.waited {
                clock_ms = now_ms();
                since_clock = CLOCK_EVERY;
            }
            match polled.result {
                None => {}
                Some(Ok(message)) => {
                    let (partition, offset) = (message.partition(), message.offset());
                    let record = InputRecord {
                        key: message.key(),
                        payload: message.payload().unwrap_or_default(),
                        timestamp_ms: message.timestamp().to_millis(),
                        processing_time_ms: clock_ms,
                        partition,
                        offset,
                    };
                    self.process(&record, &message, &mut outputs);
                    since_clock += 1;
                }
                Some(Err(error)) => {
                    tracing::warn!(%error, "consumer error; retrying");
                    since_clock = CLOCK_EVERY;
                }
            }
            if since_clock < CLOCK_EVERY {
                continue;
            }
            since_clock = 0;
            clock_ms = now_ms();
            self.drain_completions();
            let now = Instant::now();
            if now >= next_tick {
                next_tick = now + TICK;
                self.on_tick(&mut outputs);
                if self.delivery_failed() {
                    return self.rewind();
                }
                if let Err(exit) = self.follow_plan() {
                    return exit;
                }
            }
            if now >= next_checkpoint {
                next_checkpoint = now + interval;
                if let Err(exit) = self.checkpoint() {
                    return exit;
                }
            }
        }
        self.shutdown()
    }

    /// Whether the run, or another lane of it, is stopping.
    pub(super) fn stopping(&self) -> bool {
        self.stop.load(Ordering::Acquire) || self.lanes_stop.load(Ordering::Acquire)
    }

    fn delivery_failures(&self) -> u64 {
        self.producer.as_ref().map_or(0, |p| p.context().failures())
    }

    /// Whether a delivery of this run failed for good.
    fn delivery_failed(&self) -> bool {
        self.delivery_failures() > self.failures_at_start
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
        outputs: &mut Outputs,
    ) {
        let Some(run) = self.runs.get_mut(&record.partition) else {
            return; // Not ours (cannot happen with explicit assignment).
        };
        if let Some(started) = run.awaits_first_record.take() {
            FirstRecord {
                partition: record.partition,
                epoch: self.plan.epoch,
                offset: record.offset,
                after: started.elapsed(),
            }
            .emit();
        }
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
        for output in outputs.iter() {
            self.emit(record.partition, output, record.processing_time_ms);
        }
        if let Err(error) = result {
            self.dead_letter(&origin, record.key, record.payload, &error);
        }
        self.dead_letter_results(&origin, stats.failed_results);
    }

    /// Dead-letters window results that a step after the window failed on.
    fn dead_letter_results(&self, origin: &Origin<'_>, failed: Vec<FailedResult>) {
        for failed in failed {
            self.dead_letter(
                origin,
                failed.key.as_deref(),
                &failed.payload,
                &failed.error,
            );
        }
    }

    /// Writes one output; `timestamp_ms` is the cached processing clock (see `run`), which
    /// spares librdkafka a clock read per record for the CreateTime it would stamp.
    fn emit(&self, partition: i32, output: Output<'_>, timestamp_ms: i64) {
        let sink = &self.plan.spec.sink;
        if sink.log.is_some() {
            tracing::info!(
                target: "streamjob::sink",
                partition,
                key = %String::from_utf8_lossy(output.key.unwrap_or_default()),
                "{}",
                String::from_utf8_lossy(output.payload)
            );
        }
        if let (Some(kafka), Some(producer)) = (&sink.kafka, &self.producer) {
            let mut record = BaseRecord::to(&kafka.topic)
                .payload(output.payload)
                .timestamp(timestamp_ms);
            if let Some(key) = output.key {
                record = record.key(key);
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

    fn on_tick(&mut self, outputs: &mut Outputs) {
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
            for output in outputs.iter() {
                self.emit(partition, output, now);
            }
            let origin = Origin {
                topic: &self.plan.spec.source.kafka.topic,
                partition,
                offset: -1,
            };
            self.dead_letter_results(&origin, stats.failed_results);
        }
    }

    fn drain_completions(&mut self) {
        while let Ok(done) = self.done_rx.try_recv() {
            self.complete(done);
        }
    }

    fn complete(&mut self, done: UploadDone) {
        if self.release_if_durable(&done) || done.target != SnapshotTarget::Checkpoint {
            return;
        }
        let Some(run) = self.runs.get_mut(&done.partition) else {
            return;
        };
        if run.completed.is_some_and(|c| c >= done.id) {
            return;
        }
        run.completed = Some(done.id);
        self.commit_offset(done.partition, done.id.next_offset);
    }

    /// Commits `next_offset` of `partition` to the job's group: best effort, for lag tools
    /// only (the checkpoint is the truth).
    pub(super) fn commit_offset(&self, partition: i32, next_offset: i64) {
        let mut tpl = TopicPartitionList::new();
        let topic = &self.plan.spec.source.kafka.topic;
        if tpl
            .add_partition_offset(topic, partition, Offset::Offset(next_offset))
            .is_ok()
        {
            if let Err(error) = self.consumer.commit(&tpl, CommitMode::Async) {
                tracing::debug!(%error, partition, "offset commit failed");
            }
        }
    }

    /// Waits up to [`FLUSH_TIMEOUT`] until every output so far is acknowledged, so that a
    /// snapshot taken next covers only delivered output; `Ok(false)` when it timed out, so
    /// `waiting` (what waits for it) has to wait. A delivery that failed for good rewinds.
    pub(super) fn flush(&self, waiting: &str) -> Result<bool, EngineExit> {
        if let Some(producer) = &self.producer {
            if let Err(error) = producer.flush(FLUSH_TIMEOUT) {
                tracing::warn!(%error, "output flush timed out; {waiting} waits");
                return Ok(false);
            }
        }
        if self.delivery_failed() {
            return Err(self.rewind());
        }
        Ok(true)
    }

    /// Flushes output, then snapshots every partition that moved since its last snapshot.
    fn checkpoint(&mut self) -> Result<(), EngineExit> {
        if !self.flush("the checkpoint")? {
            return Ok(());
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
            request_upload(&self.upload_tx, run, id, SnapshotTarget::Checkpoint);
        }
        Ok(())
    }

    fn shutdown(mut self) -> EngineExit {
        tracing::info!("stopping: flushing output and writing final checkpoints");
        let deadline = Instant::now() + self.shutdown_deadline;
        if let Err(exit) = self.checkpoint() {
            return exit;
        }
        // Every lane writes its partitions' parts.
        let ordered = self
            .final_savepoint
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if let Some((id, epoch)) = ordered {
            // The parts must cover delivered output only; without a flush there are none,
            // and the next run restores from the checkpoints instead.
            match self.flush("the final savepoint") {
                Ok(true) => {
                    // Every partition stops here: their states go as they are.
                    let partitions: Vec<i32> = self.runs.keys().copied().collect();
                    self.request_parts(&id, epoch, &partitions);
                }
                Ok(false) => {}
                Err(exit) => return exit,
            }
        }
        // Partitions whose newest requested snapshot is not yet durable, and released ones
        // whose last snapshot is not.
        loop {
            let pending = self
                .runs
                .values()
                .filter(|r| r.completed != Some(r.requested))
                .count()
                + self.transitions.releasing();
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
