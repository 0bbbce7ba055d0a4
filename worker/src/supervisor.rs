//! Runs the engine for the newest plan until shutdown (I/O: engine runs and timers). Each run
//! has its own stop flag, set by shutdown or by a plan that changes this pod's work; whether a
//! plan does is the pure [`plan_change`].

use std::{
    collections::BTreeMap,
    fmt,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use streamjob_api::StreamJobSpec;
use thiserror::Error;
use tokio::{sync::watch, task::JoinHandle};

use crate::{
    checkpoint::CheckpointStore,
    engine::{self, EngineContext, EngineError, EngineExit, Readiness},
    paths::JobPaths,
    pipeline::{CompileError, Pipeline},
    plan::Plan,
    plan_watch::PlanFeed,
    storage::{self, StorageError},
    telemetry::{Event, PlanKept, PlanRejected, PlanRunning},
};

/// How long a failed run waits before the next one.
const RETRY_AFTER: Duration = Duration::from_secs(5);
/// How often a run without partitions looks at its stop flag.
const IDLE_POLL: Duration = Duration::from_millis(100);

/// `true` once the worker must stop (SIGTERM/SIGINT).
pub type Shutdown = watch::Receiver<bool>;

/// A plan with what running it needs: its compiled pipeline and opened checkpoint store.
#[derive(Clone)]
pub struct PreparedPlan {
    /// The plan.
    pub plan: Arc<Plan>,
    /// Its pipeline, compiled.
    pub pipeline: Arc<Pipeline>,
    /// Its checkpoint store.
    pub store: CheckpointStore,
}

/// A plan that cannot run.
#[derive(Debug, Error)]
pub enum PrepareError {
    /// The pipeline does not compile.
    #[error("invalid pipeline: {0}")]
    Pipeline(#[from] CompileError),
    /// The checkpoint storage cannot be opened.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

impl PrepareError {
    /// Short metric label for the reason.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Pipeline(_) => "pipeline",
            Self::Storage(_) => "storage",
        }
    }
}

impl PreparedPlan {
    /// Compiles the plan's pipeline and opens its checkpoint storage.
    pub fn new(plan: Arc<Plan>) -> Result<Self, PrepareError> {
        let pipeline = Arc::new(Pipeline::compile(&plan.spec.pipeline)?);
        let storage = storage::open(&plan.spec.checkpoint.storage)?;
        let paths = JobPaths::new(&storage.prefix, &plan.job.namespace, &plan.job.name);
        Ok(Self {
            store: CheckpointStore::new(storage, paths),
            pipeline,
            plan,
        })
    }
}

/// What a new plan means for the run in progress.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlanChange {
    /// This pod's work is the same: the run goes on.
    Keep,
    /// The run stops (final checkpoint) and a new one starts with the new plan.
    Restart(RestartReason),
}

/// Why a new plan restarts the run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RestartReason {
    /// This pod owns other partitions.
    Partitions,
    /// Source, pipeline, sink, dead-letter topic or checkpointing changed.
    Processing,
    /// Epochs were skipped: the partitions may have had another owner in between, whose
    /// state only a restore (and the epoch fence) picks up.
    SkippedEpochs,
}

impl fmt::Display for RestartReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Partitions => "this pod's partitions changed",
            Self::Processing => "the job's processing changed",
            Self::SkippedEpochs => {
                "epochs were skipped, so the partitions may have moved meanwhile"
            }
        })
    }
}

/// Decides whether `pod`, which runs `current`, restarts for `next`.
pub fn plan_change(current: &Plan, next: &Plan, pod: &str) -> PlanChange {
    if current.partitions_of(pod) != next.partitions_of(pod) {
        PlanChange::Restart(RestartReason::Partitions)
    } else if !same_processing(&current.spec, &next.spec) {
        PlanChange::Restart(RestartReason::Processing)
    } else if next.epoch > current.epoch.saturating_add(1) {
        PlanChange::Restart(RestartReason::SkippedEpochs)
    } else {
        PlanChange::Keep
    }
}

/// Whether two specs process records the same way (parallelism, image, resources and the
/// like only matter to the operator).
fn same_processing(a: &StreamJobSpec, b: &StreamJobSpec) -> bool {
    a.source == b.source
        && a.pipeline == b.pipeline
        && a.sink == b.sink
        && a.dead_letter == b.dead_letter
        && a.checkpoint == b.checkpoint
}

/// Runs this pod's share of the newest plan.
pub struct Supervisor {
    /// This worker's pod name.
    pub pod: String,
    /// Extra librdkafka properties.
    pub kafka_props: BTreeMap<String, String>,
    /// Readiness reported on `/readyz`.
    pub readiness: Arc<Readiness>,
    /// Time allowed for the final flush and checkpoint when a run stops.
    pub shutdown_deadline: Duration,
}

impl Supervisor {
    /// Waits for the first plan that can run; `None` when shutdown comes first.
    pub async fn first_plan(
        &self,
        plans: &mut PlanFeed,
        shutdown: &mut Shutdown,
    ) -> Option<PreparedPlan> {
        loop {
            tokio::select! {
                plan = next_plan(plans) => match PreparedPlan::new(plan.clone()) {
                    Ok(prepared) => return Some(prepared),
                    Err(error) => reject(&plan, &error),
                },
                () = requested(shutdown) => return None,
            }
        }
    }

    /// Runs `first`, then whatever `plans` brings, until `shutdown`: returns after the final
    /// checkpoint. Fails only if a run fails while stopping.
    pub async fn run(
        &self,
        first: PreparedPlan,
        mut plans: PlanFeed,
        mut shutdown: Shutdown,
    ) -> Result<(), EngineError> {
        let mut target = first;
        loop {
            let stop = Arc::new(AtomicBool::new(false));
            let mut run = self.start(&target, stop.clone());
            let mut stopping = false;
            let exit = loop {
                tokio::select! {
                    joined = &mut run => break joined.unwrap_or(Err(EngineError::Panicked)),
                    () = requested(&mut shutdown), if !stopping => {
                        stopping = true;
                        stop.store(true, Ordering::Release);
                    }
                    plan = next_plan(&mut plans), if !stopping => {
                        if self.adopt(&mut target, plan) {
                            stop.store(true, Ordering::Release);
                        }
                    }
                }
            };
            self.readiness.set(false);
            match exit {
                Ok(EngineExit::Stopped {
                    final_checkpoint_complete,
                }) if stopping => {
                    tracing::info!(final_checkpoint_complete, "worker stopped");
                    return Ok(());
                }
                Ok(EngineExit::Stopped {
                    final_checkpoint_complete,
                }) => tracing::info!(
                    final_checkpoint_complete,
                    epoch = target.plan.epoch,
                    "run stopped; starting the new plan"
                ),
                Ok(EngineExit::Rewind(reason)) => {
                    tracing::warn!(%reason, "restarting from the last checkpoints");
                    if stopping {
                        return Ok(());
                    }
                }
                Err(error) if stopping => return Err(error),
                Err(error) => {
                    tracing::error!(%error, "worker failed; retrying in {RETRY_AFTER:?}");
                    if !self.back_off(&mut target, &mut plans, &mut shutdown).await {
                        return Ok(());
                    }
                }
            }
        }
    }

    /// Starts one run of `prepared`, stopped by `stop`.
    fn start(
        &self,
        prepared: &PreparedPlan,
        stop: Arc<AtomicBool>,
    ) -> JoinHandle<Result<EngineExit, EngineError>> {
        if prepared.plan.partitions_of(&self.pod).is_empty() {
            return tokio::spawn(idle(
                self.pod.clone(),
                prepared.plan.epoch,
                self.readiness.clone(),
                stop,
            ));
        }
        tokio::spawn(engine::run(EngineContext {
            plan: (*prepared.plan).clone(),
            pod: self.pod.clone(),
            pipeline: prepared.pipeline.clone(),
            store: prepared.store.clone(),
            kafka_props: self.kafka_props.clone(),
            readiness: self.readiness.clone(),
            stop,
            shutdown_deadline: self.shutdown_deadline,
        }))
    }

    /// Makes `plan` the target if it can run; returns whether the current run must restart.
    fn adopt(&self, target: &mut PreparedPlan, plan: Arc<Plan>) -> bool {
        match plan_change(&target.plan, &plan, &self.pod) {
            PlanChange::Keep => {
                PlanKept {
                    epoch: plan.epoch,
                    previous: target.plan.epoch,
                }
                .emit();
                // Same processing, so the compiled pipeline and the store still fit.
                target.plan = plan;
                false
            }
            PlanChange::Restart(reason) => match PreparedPlan::new(plan.clone()) {
                Ok(prepared) => {
                    tracing::info!(
                        epoch = plan.epoch,
                        %reason,
                        "new plan; stopping the current run after a final checkpoint"
                    );
                    *target = prepared;
                    true
                }
                Err(error) => {
                    reject(&plan, &error);
                    false
                }
            },
        }
    }

    /// Waits before retrying a failed run, adopting plans meanwhile; `false` on shutdown.
    async fn back_off(
        &self,
        target: &mut PreparedPlan,
        plans: &mut PlanFeed,
        shutdown: &mut Shutdown,
    ) -> bool {
        let retry = tokio::time::sleep(RETRY_AFTER);
        tokio::pin!(retry);
        loop {
            tokio::select! {
                () = &mut retry => return true,
                () = requested(shutdown) => return false,
                plan = next_plan(plans) => {
                    self.adopt(target, plan);
                }
            }
        }
    }
}

/// A run that owns no partitions: ready at once, since every partition it owns runs.
async fn idle(
    pod: String,
    epoch: u64,
    readiness: Arc<Readiness>,
    stop: Arc<AtomicBool>,
) -> Result<EngineExit, EngineError> {
    readiness.set(true);
    PlanRunning {
        pod: &pod,
        epoch,
        partitions: &[],
    }
    .emit();
    while !stop.load(Ordering::Acquire) {
        tokio::time::sleep(IDLE_POLL).await;
    }
    Ok(EngineExit::Stopped {
        final_checkpoint_complete: true,
    })
}

fn reject(plan: &Plan, error: &PrepareError) {
    PlanRejected {
        reason: error.reason(),
        epoch: Some(plan.epoch),
        error: &error.to_string(),
    }
    .emit();
}

/// The next plan on the feed; never resolves once the feed has no sender (a fixed plan).
async fn next_plan(plans: &mut PlanFeed) -> Arc<Plan> {
    loop {
        if plans.changed().await.is_err() {
            return std::future::pending().await;
        }
        if let Some(plan) = plans.borrow_and_update().clone() {
            return plan;
        }
    }
}

/// Resolves once shutdown is requested; never if nobody can request it.
async fn requested(shutdown: &mut Shutdown) {
    if shutdown.wait_for(|&stop| stop).await.is_err() {
        std::future::pending::<()>().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> Plan {
        serde_yaml::from_str(&crate::plan_watch::test_plans::yaml("team-a", "clicks", 4)).unwrap()
    }

    fn next_epoch(edit: impl FnOnce(&mut Plan)) -> Plan {
        let mut next = plan();
        next.epoch += 1;
        edit(&mut next);
        next
    }

    #[test]
    fn a_new_epoch_that_leaves_this_pods_work_alone_keeps_the_run() {
        let next = next_epoch(|p| {
            p.assignment.insert("b".into(), vec![2]);
            p.assignment.insert("c".into(), vec![3]);
            p.spec.parallelism = 3;
        });
        assert_eq!(plan_change(&plan(), &next, "a"), PlanChange::Keep);
        assert_eq!(plan_change(&plan(), &plan(), "a"), PlanChange::Keep);
    }

    #[test]
    fn other_partitions_restart_the_run() {
        let next = next_epoch(|p| {
            p.assignment.insert("a".into(), vec![0]);
            p.assignment.insert("b".into(), vec![1, 2, 3]);
        });
        let restart = PlanChange::Restart(RestartReason::Partitions);
        assert_eq!(plan_change(&plan(), &next, "a"), restart);
        assert_eq!(plan_change(&plan(), &next, "b"), restart);
    }

    #[test]
    fn listing_partitions_in_another_order_is_the_same_work() {
        let next = next_epoch(|p| {
            p.assignment.insert("a".into(), vec![1, 0]);
        });
        assert_eq!(plan_change(&plan(), &next, "a"), PlanChange::Keep);
    }

    #[test]
    fn a_changed_map_sink_source_or_checkpoint_restarts_the_run_even_in_the_same_epoch() {
        let edits: [fn(&mut Plan); 5] = [
            |p| p.spec.pipeline[0].map = Some("{user: .user, v: 2}".into()),
            |p| p.spec.sink.kafka.as_mut().unwrap().topic = "out-2".into(),
            |p| p.spec.source.kafka.topic = "clicks-2".into(),
            |p| p.spec.checkpoint.storage = "file:///elsewhere".into(),
            |p| {
                p.spec.dead_letter = Some(serde_yaml::from_str("topic: dlq").unwrap());
            },
        ];
        for edit in edits {
            let mut next = plan();
            edit(&mut next);
            assert_eq!(
                plan_change(&plan(), &next, "a"),
                PlanChange::Restart(RestartReason::Processing)
            );
        }
    }

    #[test]
    fn a_skipped_epoch_restarts_the_run_because_the_partitions_may_have_moved_meanwhile() {
        let mut next = plan();
        next.epoch += 2;
        assert_eq!(
            plan_change(&plan(), &next, "a"),
            PlanChange::Restart(RestartReason::SkippedEpochs)
        );
    }

    #[test]
    fn a_pod_without_partitions_keeps_idling_and_restarts_when_it_gets_some() {
        let idle = next_epoch(|_| {});
        assert_eq!(plan_change(&plan(), &idle, "c"), PlanChange::Keep);
        let busy = next_epoch(|p| {
            p.assignment.insert("b".into(), vec![2]);
            p.assignment.insert("c".into(), vec![3]);
        });
        assert_eq!(
            plan_change(&plan(), &busy, "c"),
            PlanChange::Restart(RestartReason::Partitions)
        );
    }
}
