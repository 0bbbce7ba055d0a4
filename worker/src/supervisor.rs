//! Runs the engine for the newest plan until shutdown (I/O: engine runs and timers). Each run
//! has its own stop flag, set by shutdown or by a plan that restarts it, and its own channel
//! of plan updates, which hand partitions over inside the run; which a plan needs is the pure
//! [`plan_change`].

use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    time::Duration,
};

use thiserror::Error;
use tokio::{sync::watch, task::JoinHandle};

use crate::{
    checkpoint::CheckpointStore,
    engine::{self, EngineContext, EngineError, EngineExit, FinalSavepoint, PlanUpdate, Readiness},
    paths::JobPaths,
    pipeline::{CompileError, Pipeline},
    plan::Plan,
    plan_change::{Handover, PlanChange, plan_change},
    plan_watch::PlanFeed,
    storage::{self, StorageError},
    telemetry::{Event, HandoverStarted, PlanKept, PlanRejected, PlanRunning},
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

/// What adopting a plan asks of the run in progress.
enum Adoption {
    /// Nothing (the plan was refused).
    Nothing,
    /// Hand this update to the running engine.
    Update(PlanUpdate),
    /// Stop the run, first writing the savepoint `(id, epoch)` if one is ordered; the next
    /// run runs the new target.
    Restart(Option<(String, u64)>),
}

/// One run in progress.
struct Run {
    task: JoinHandle<Result<EngineExit, EngineError>>,
    stop: Arc<AtomicBool>,
    /// The savepoint the run writes when it stops, if the next plan orders one.
    final_savepoint: FinalSavepoint,
    /// Plan updates for the engine; `None` for a run without partitions, or once it stops.
    updates: Option<mpsc::Sender<PlanUpdate>>,
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
    /// Hot loops a run splits its partitions across.
    pub processing_threads: usize,
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
            let mut run = self.start(&target);
            let mut stopping = false;
            let exit = loop {
                tokio::select! {
                    joined = &mut run.task => break joined.unwrap_or(Err(EngineError::Panicked)),
                    () = requested(&mut shutdown), if !stopping => {
                        stopping = true;
                        run.stop.store(true, Ordering::Release);
                    }
                    plan = next_plan(&mut plans), if !stopping => {
                        match self.adopt(&mut target, plan) {
                            Adoption::Nothing => {}
                            Adoption::Update(update) => {
                                // A closed channel means the run is ending; the next one
                                // starts from the target, which is this plan.
                                if let Some(updates) = &run.updates {
                                    let _ = updates.send(update);
                                }
                            }
                            Adoption::Restart(savepoint) => {
                                if let Some(savepoint) = savepoint {
                                    *run
                                        .final_savepoint
                                        .lock()
                                        .unwrap_or_else(|e| e.into_inner()) = Some(savepoint);
                                }
                                run.updates = None;
                                run.stop.store(true, Ordering::Release);
                            }
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

    /// Starts one run of `prepared`.
    fn start(&self, prepared: &PreparedPlan) -> Run {
        let stop = Arc::new(AtomicBool::new(false));
        if prepared.plan.partitions_of(&self.pod).is_empty() {
            let task = tokio::spawn(idle(
                self.pod.clone(),
                prepared.plan.epoch,
                self.readiness.clone(),
                stop.clone(),
            ));
            return Run {
                task,
                stop,
                final_savepoint: FinalSavepoint::default(),
                updates: None,
            };
        }
        let (updates, updates_rx) = mpsc::channel();
        let final_savepoint = FinalSavepoint::default();
        let task = tokio::spawn(engine::run(EngineContext {
            plan: prepared.plan.clone(),
            pod: self.pod.clone(),
            pipeline: prepared.pipeline.clone(),
            store: prepared.store.clone(),
            kafka_props: self.kafka_props.clone(),
            readiness: self.readiness.clone(),
            stop: stop.clone(),
            final_savepoint: final_savepoint.clone(),
            updates: updates_rx,
            shutdown_deadline: self.shutdown_deadline,
            processing_threads: self.processing_threads,
        }));
        Run {
            task,
            stop,
            final_savepoint,
            updates: Some(updates),
        }
    }

    /// Makes `plan` the target if it can run, saying what the current run must do.
    fn adopt(&self, target: &mut PreparedPlan, plan: Arc<Plan>) -> Adoption {
        let previous = target.plan.epoch;
        let handover = match plan_change(&target.plan, &plan, &self.pod) {
            PlanChange::Keep => {
                PlanKept {
                    epoch: plan.epoch,
                    previous,
                }
                .emit();
                Handover {
                    keep: plan.partitions_of(&self.pod),
                    ..Handover::default()
                }
            }
            PlanChange::Handover(handover) => {
                HandoverStarted {
                    epoch: plan.epoch,
                    previous,
                    keep: &handover.keep,
                    lose: &handover.lose,
                    gain: &handover.gain,
                    savepoint: handover.savepoint.as_deref(),
                }
                .emit();
                handover
            }
            PlanChange::Restart(reason) => {
                return match PreparedPlan::new(plan.clone()) {
                    Ok(prepared) => {
                        tracing::info!(
                            epoch = plan.epoch,
                            %reason,
                            "new plan; stopping the current run after a final checkpoint"
                        );
                        // The stopping run writes the savepoint the next epoch orders, so
                        // that the new run can restore from it.
                        let savepoint = plan
                            .savepoint
                            .as_ref()
                            .filter(|_| plan.epoch > target.plan.epoch)
                            .map(|order| (order.id.clone(), plan.epoch));
                        *target = prepared;
                        Adoption::Restart(savepoint)
                    }
                    Err(error) => {
                        reject(&plan, &error);
                        Adoption::Nothing
                    }
                };
            }
        };
        // Same processing, so the compiled pipeline and the store still fit.
        target.plan = plan.clone();
        Adoption::Update(PlanUpdate { plan, handover })
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
