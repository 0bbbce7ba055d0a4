//! Rescale: the coordinated-savepoint handover of docs/design.md as a state machine (pure).
//! The same steps serve a stateful upgrade (a changed pipeline: every partition restarts
//! from the savepoint under the new spec) and a savepoint on request (nothing moves).
//!
//! Every reconcile derives the step from what it observed (the job's `status.rescale`, the
//! published plan, the pods, the savepoint parts in storage), so an operator killed at any
//! step continues from there: no step depends on memory of the previous reconcile.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use streamjob_api::{RescaleStatus, RescaleStep, StreamJobSpec};
use streamjob_worker::{
    plan::{PartitionRestore, Plan, SavepointOrder},
    plan_change::same_processing,
};

use super::planning::{PodLifecycle, WorkerPod};
use crate::assignment;

/// Everything the next rescale step depends on.
#[derive(Debug)]
pub struct RescaleInput<'a> {
    /// Worker count the spec asks for (capped at the partition count; 0 when suspended).
    pub target: i32,
    /// The rescale in flight (`status.rescale`), if any.
    pub current: Option<&'a RescaleStatus>,
    /// The published plan.
    pub plan: &'a Plan,
    /// The spec to run (a pipeline that cannot run already replaced by the last one that
    /// could): processing that differs from the published plan's is an upgrade.
    pub spec: &'a StreamJobSpec,
    /// A `spec.savepoints.request` not acted on yet.
    pub request: Option<&'a str>,
    /// The job's worker pods.
    pub pods: &'a [WorkerPod],
    /// Partition count of the source topic.
    pub partitions: i32,
    /// Partitions whose part of the rescale's savepoint is in storage.
    pub parts: &'a BTreeSet<i32>,
    /// The epoch of each partition's newest checkpoint in storage.
    pub checkpoint_epochs: &'a BTreeMap<i32, u64>,
    /// Now.
    pub now: jiff::Timestamp,
    /// How long workers get to write their savepoint parts.
    pub part_timeout: jiff::SignedDuration,
}

/// What the controller does in this reconcile.
#[derive(Clone, Debug, PartialEq)]
pub enum Decision {
    /// No rescale: the plan follows the pods as usual.
    Steady,
    /// A scale-down waits until every owner runs; meanwhile no pod is removed (the
    /// Deployment keeps `replicas`), and the plan follows the pods as usual.
    Deferred {
        /// Replicas to keep.
        replicas: i32,
    },
    /// The Deployment grows to `status.to` first; the plan stays as published.
    ScalingUp(RescaleStatus),
    /// Publish `plan`, the handover epoch with its savepoint order, and wait for the parts
    /// of `missing`.
    Savepointing {
        /// Progress to record.
        status: RescaleStatus,
        /// The handover plan.
        plan: Plan,
        /// Partitions whose part is not in storage yet.
        missing: Vec<i32>,
    },
    /// Parts did not come in time: publish `plan`, in which those partitions restore from
    /// their newest checkpoints instead (they replay from its offset; nothing is lost).
    FallingBack {
        /// Progress to record.
        status: RescaleStatus,
        /// The plan without the missing parts' restore entries, one epoch later.
        plan: Plan,
        /// Partitions that fell back.
        missing: Vec<i32>,
    },
    /// The savepoint is complete (its manifest is written in this step) or abandoned; the
    /// new owners are starting.
    HandingOver(RescaleStatus),
    /// Pods without partitions are marked for deletion and the Deployment shrinks.
    ScalingDown {
        /// Progress to record.
        status: RescaleStatus,
        /// Pods to remove (the ones the plan leaves without partitions).
        remove: Vec<String>,
    },
    /// Finished: `status.rescale` is cleared.
    Done,
    /// The spec changed its mind before any partition moved (a new target while the
    /// Deployment was still growing): `status.rescale` is cleared and a new rescale starts
    /// from the published plan.
    Abandoned,
}

impl Decision {
    /// The rescale status to record, if one is in flight.
    pub fn status(&self) -> Option<&RescaleStatus> {
        match self {
            Decision::ScalingUp(status) | Decision::HandingOver(status) => Some(status),
            Decision::Savepointing { status, .. }
            | Decision::FallingBack { status, .. }
            | Decision::ScalingDown { status, .. } => Some(status),
            Decision::Steady | Decision::Deferred { .. } | Decision::Done | Decision::Abandoned => {
                None
            }
        }
    }

    /// Replicas the worker Deployment must have during this step: the larger count until
    /// the handover is over, so no pod that still owns partitions is removed.
    pub fn replicas(&self, target: i32) -> i32 {
        if let Decision::Deferred { replicas } = self {
            return *replicas;
        }
        match self.status() {
            Some(status) if !matches!(self, Decision::ScalingDown { .. }) => {
                status.from.max(status.to)
            }
            _ => target,
        }
    }
}

/// What a coordinated savepoint is taken for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    /// A change of the worker count: partitions move.
    Rescale,
    /// A change of processing: every partition restarts from the savepoint.
    Upgrade,
    /// A savepoint on request: nothing moves.
    User,
}

impl Operation {
    /// The name recorded in `status.rescale.reason` and in savepoint ids.
    pub fn name(self) -> &'static str {
        match self {
            Operation::Rescale => "rescale",
            Operation::Upgrade => "upgrade",
            Operation::User => "user",
        }
    }
}

/// Whether two specs give the workers the same pod template (image, resources, processing
/// threads, Secrets).
pub fn same_pod_template(a: &StreamJobSpec, b: &StreamJobSpec) -> bool {
    a.image == b.image
        && a.image_pull_secrets == b.image_pull_secrets
        && a.resources == b.resources
        && a.processing_threads == b.processing_threads
        && a.source.kafka.secret_ref == b.source.kafka.secret_ref
        && a.checkpoint.secret_ref == b.checkpoint.secret_ref
}

/// `spec` with the pod template of `running`: while a savepoint is taken, the worker
/// Deployment does not roll.
pub fn with_pod_template_of(spec: &StreamJobSpec, running: &StreamJobSpec) -> StreamJobSpec {
    let mut held = spec.clone();
    held.image.clone_from(&running.image);
    held.image_pull_secrets
        .clone_from(&running.image_pull_secrets);
    held.resources.clone_from(&running.resources);
    held.processing_threads = running.processing_threads;
    held.source
        .kafka
        .secret_ref
        .clone_from(&running.source.kafka.secret_ref);
    held.checkpoint
        .secret_ref
        .clone_from(&running.checkpoint.secret_ref);
    held
}

/// The savepoint id of the rescale that moves to `epoch`.
pub fn savepoint_id(epoch: u64) -> String {
    format!("e{epoch}-rescale")
}

/// The step to take now.
pub fn next_step(input: &RescaleInput<'_>) -> Decision {
    let live = live_pods(input.pods);
    let Some(current) = input.current else {
        return start(input, live.len());
    };
    let live_count = i32::try_from(live.len()).unwrap_or(i32::MAX);
    let published = input.plan.epoch >= u64::try_from(current.epoch).unwrap_or(u64::MAX);
    match current.step {
        RescaleStep::ScalingUp if input.target != current.to && !published => Decision::Abandoned,
        RescaleStep::ScalingUp if live_count < current.to => Decision::ScalingUp(current.clone()),
        RescaleStep::ScalingUp | RescaleStep::Savepointing => savepointing(input, current),
        RescaleStep::HandingOver => handing_over(input, current),
        RescaleStep::ScalingDown if owner_lost(input) => Decision::Done,
        RescaleStep::ScalingDown => {
            let remove = idle_pods(input.plan, &live);
            if remove.is_empty() && live_count <= current.to {
                Decision::Done
            } else {
                Decision::ScalingDown {
                    status: current.clone(),
                    remove,
                }
            }
        }
    }
}

/// A rescale starts when the job runs and the worker count it asks for differs from the
/// number of pods that own partitions. It starts only from a running job, every owner ready
/// (so every partition runs and can be snapshotted): not at a job's first start, whose pods
/// come one by one, nor while a pod restarts or a deleted pod still holds partitions (the
/// planner moves those once it is gone).
fn start(input: &RescaleInput<'_>, live: usize) -> Decision {
    let owners: Vec<&String> = input
        .plan
        .assignment
        .iter()
        .filter(|(_, held)| !held.is_empty())
        .map(|(pod, _)| pod)
        .collect();
    let running = owners
        .iter()
        .all(|owner| input.pods.iter().any(|p| &&p.name == owner && p.serves()));
    let owners = i32::try_from(owners.len()).unwrap_or(i32::MAX);
    if input.plan.epoch == 0 || owners == 0 || input.target == 0 {
        return Decision::Steady;
    }
    let epoch = input.plan.epoch + 1;
    let (operation, savepoint) = if owners != input.target {
        (Operation::Rescale, savepoint_id(epoch))
    } else if !same_processing(&input.plan.spec, input.spec)
        || !same_pod_template(&input.plan.spec, input.spec)
    {
        (Operation::Upgrade, format!("e{epoch}-upgrade"))
    } else if let Some(name) = input.request {
        (Operation::User, name.to_owned())
    } else {
        return Decision::Steady;
    };
    if !running {
        return if input.target < owners {
            Decision::Deferred { replicas: owners }
        } else {
            Decision::Steady
        };
    }
    let status = RescaleStatus {
        reason: operation.name().to_owned(),
        from: owners,
        to: input.target,
        epoch: i64::try_from(epoch).unwrap_or(i64::MAX),
        savepoint,
        step: RescaleStep::ScalingUp,
        started: Time(input.now),
        step_started: Some(Time(input.now)),
        fallback: Vec::new(),
    };
    if i32::try_from(live).unwrap_or(i32::MAX) < input.target {
        return Decision::ScalingUp(status);
    }
    savepointing(input, &status)
}

fn savepointing(input: &RescaleInput<'_>, current: &RescaleStatus) -> Decision {
    let status = if current.step == RescaleStep::Savepointing {
        current.clone()
    } else {
        next(current, RescaleStep::Savepointing, input.now)
    };
    let epoch = u64::try_from(current.epoch).unwrap_or(0);
    // The handover plan once published stays the one in force (idempotent on restart).
    let published = input.plan.epoch >= epoch;
    let plan = if published {
        input.plan.clone()
    } else {
        handover_plan(input, current)
    };
    let missing: Vec<i32> = (0..input.partitions)
        .filter(|p| !input.parts.contains(p))
        .collect();
    if missing.is_empty() {
        return Decision::HandingOver(next(&status, RescaleStep::HandingOver, input.now));
    }
    let since = status.step_started.as_ref().unwrap_or(&status.started).0;
    let late = input.now.duration_since(since) > input.part_timeout;
    if late && published {
        let mut fallback = plan;
        fallback.epoch += 1;
        fallback.savepoint = None;
        for partition in &missing {
            fallback.restore.remove(partition);
        }
        let mut status = next(&status, RescaleStep::HandingOver, input.now);
        status.epoch = i64::try_from(fallback.epoch).unwrap_or(i64::MAX);
        status.fallback.clone_from(&missing);
        return Decision::FallingBack {
            status,
            plan: fallback,
            missing,
        };
    }
    Decision::Savepointing {
        status,
        plan,
        missing,
    }
}

/// `current` moved on to `step` at `now`.
fn next(current: &RescaleStatus, step: RescaleStep, now: jiff::Timestamp) -> RescaleStatus {
    RescaleStatus {
        step,
        step_started: Some(Time(now)),
        ..current.clone()
    }
}

/// The pods that own partitions in the published plan (`None` for one that is gone).
fn owners<'a>(input: &'a RescaleInput<'_>) -> impl Iterator<Item = Option<&'a WorkerPod>> {
    input
        .plan
        .assignment
        .iter()
        .filter(|(_, held)| !held.is_empty())
        .map(|(name, _)| input.pods.iter().find(|p| &p.name == name))
}

/// Whether an owner went away (deleted, failed): that ends the rescale, and the planner
/// moves its partitions to the pods that exist, from their checkpoints, as after any pod
/// loss.
fn owner_lost(input: &RescaleInput<'_>) -> bool {
    owners(input).any(|pod| pod.is_none_or(|p| p.lifecycle != PodLifecycle::Live))
}

fn handing_over(input: &RescaleInput<'_>, current: &RescaleStatus) -> Decision {
    if owner_lost(input) {
        return Decision::Done;
    }
    // A pod's Ready condition lags its worker (probes run periodically): a pod that has just
    // restarted its run can still look ready. A partition restored under the handover writes
    // a checkpoint of that epoch (its fence) before it runs, which storage shows for sure.
    let handover_epoch =
        u64::try_from(current.epoch).unwrap_or(u64::MAX) - u64::from(!current.fallback.is_empty());
    let restored = input.plan.restore.keys().all(|partition| {
        input
            .checkpoint_epochs
            .get(partition)
            .is_some_and(|epoch| *epoch >= handover_epoch)
    });
    if !restored || !owners(input).all(|pod| pod.is_some_and(WorkerPod::serves)) {
        return Decision::HandingOver(current.clone());
    }
    if current.to < current.from {
        return Decision::ScalingDown {
            status: next(current, RescaleStep::ScalingDown, input.now),
            remove: idle_pods(input.plan, &live_pods(input.pods)),
        };
    }
    Decision::Done
}

fn live_pods(pods: &[WorkerPod]) -> Vec<&WorkerPod> {
    pods.iter()
        .filter(|p| p.lifecycle == PodLifecycle::Live)
        .collect()
}

/// The plan of the handover epoch: a sticky assignment over the pods that stay, a
/// savepoint order, and a savepoint restore for every partition that changes owner. An
/// upgrade runs the new spec, and every partition restores from the savepoint.
fn handover_plan(input: &RescaleInput<'_>, current: &RescaleStatus) -> Plan {
    let staying = staying_pods(input, usize::try_from(current.to).unwrap_or(0));
    let assignment = assignment::assign(input.partitions, &staying, &input.plan.assignment);
    let upgrade = current.reason == Operation::Upgrade.name();
    let restoring = if upgrade {
        (0..input.partitions).collect()
    } else {
        assignment::moved(&input.plan.assignment, &assignment)
    };
    let restore: BTreeMap<i32, PartitionRestore> = restoring
        .into_iter()
        .filter(|p| (0..input.partitions).contains(p))
        .map(|p| {
            let restore = PartitionRestore {
                savepoint: current.savepoint.clone(),
                part: None,
            };
            (p, restore)
        })
        .collect();
    Plan {
        job: input.plan.job.clone(),
        epoch: u64::try_from(current.epoch).unwrap_or(0),
        // An upgrade runs the new processing at once; the pods keep their template until the
        // savepoint exists (the plan that follows the operation brings it).
        spec: if upgrade {
            with_pod_template_of(input.spec, &input.plan.spec)
        } else {
            input.plan.spec.clone()
        },
        assignment: assignment
            .into_iter()
            .filter(|(_, held)| !held.is_empty())
            .collect(),
        restore,
        savepoint: Some(SavepointOrder {
            id: current.savepoint.clone(),
        }),
    }
}

/// The `count` live pods that keep (or get) partitions: those holding the most stay, so
/// the fewest partitions move; ties go by name.
fn staying_pods(input: &RescaleInput<'_>, count: usize) -> Vec<String> {
    let held = |pod: &str| input.plan.assignment.get(pod).map_or(0, Vec::len);
    let mut live = live_pods(input.pods);
    live.sort_by(|a, b| held(&b.name).cmp(&held(&a.name)).then(a.name.cmp(&b.name)));
    live.into_iter()
        .take(count)
        .map(|p| p.name.clone())
        .collect()
}

/// Live pods the plan gives no partition.
fn idle_pods(plan: &Plan, live: &[&WorkerPod]) -> Vec<String> {
    live.iter()
        .filter(|p| plan.assignment.get(&p.name).is_none_or(Vec::is_empty))
        .map(|p| p.name.clone())
        .collect()
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::controller::planning::test_plan;

    fn live(names: &[&str]) -> Vec<WorkerPod> {
        names
            .iter()
            .map(|n| WorkerPod {
                name: (*n).into(),
                lifecycle: PodLifecycle::Live,
                ready: true,
            })
            .collect()
    }

    fn plan(epoch: u64, assignment: &[(&str, &[i32])]) -> Plan {
        test_plan(epoch, assignment)
    }

    fn t(seconds: i64) -> jiff::Timestamp {
        jiff::Timestamp::from_second(1_800_000_000 + seconds).unwrap()
    }

    struct Case {
        target: i32,
        current: Option<RescaleStatus>,
        plan: Plan,
        pods: Vec<WorkerPod>,
        parts: BTreeSet<i32>,
        checkpoint_epochs: BTreeMap<i32, u64>,
        now: jiff::Timestamp,
    }

    impl Case {
        fn step(&self) -> Decision {
            next_step(&RescaleInput {
                target: self.target,
                current: self.current.as_ref(),
                plan: &self.plan,
                spec: &self.plan.spec,
                request: None,
                pods: &self.pods,
                partitions: 4,
                parts: &self.parts,
                checkpoint_epochs: &self.checkpoint_epochs,
                now: self.now,
                part_timeout: jiff::SignedDuration::from_secs(60),
            })
        }
    }

    /// Two owners asked to become four, while only a third pod exists.
    fn two_to_four_with_three_pods() -> Case {
        Case {
            target: 4,
            current: None,
            plan: two_workers(),
            pods: live(&["a", "b", "c"]),
            parts: BTreeSet::new(),
            checkpoint_epochs: BTreeMap::new(),
            now: t(0),
        }
    }

    fn two_workers() -> Plan {
        plan(3, &[("a", &[0, 1]), ("b", &[2, 3])])
    }

    #[test]
    fn equal_counts_or_a_first_start_are_not_a_rescale() {
        let case = Case {
            target: 2,
            current: None,
            plan: two_workers(),
            pods: live(&["a", "b"]),
            parts: BTreeSet::new(),
            checkpoint_epochs: BTreeMap::new(),
            now: t(0),
        };
        assert_eq!(case.step(), Decision::Steady);
        let first = Case {
            target: 2,
            plan: plan(0, &[]),
            ..case
        };
        assert_eq!(first.step(), Decision::Steady);
    }

    #[test]
    fn scaling_up_waits_for_the_new_pods_with_the_plan_unchanged() {
        let case = two_to_four_with_three_pods();
        let Decision::ScalingUp(status) = case.step() else {
            panic!("expected ScalingUp, got {:?}", case.step());
        };
        assert_eq!((status.from, status.to, status.epoch), (2, 4, 4));
        assert_eq!(status.savepoint, "e4-rescale");
        assert_eq!(case.step().replicas(4), 4);
    }

    #[test]
    fn with_every_pod_there_the_handover_plan_moves_only_what_balance_needs() {
        let scaling_up = two_to_four_with_three_pods();
        let Decision::ScalingUp(status) = scaling_up.step() else {
            panic!("expected ScalingUp");
        };
        let case = Case {
            current: Some(status),
            pods: live(&["a", "b", "c", "d"]),
            now: t(5),
            ..scaling_up
        };
        let Decision::Savepointing { plan, missing, .. } = case.step() else {
            panic!("expected Savepointing, got {:?}", case.step());
        };
        assert_eq!(plan.epoch, 4);
        assert_eq!(plan.savepoint.as_ref().unwrap().id, "e4-rescale");
        assert_eq!(missing, vec![0, 1, 2, 3]);
        let owners = assignment::owners(&plan.assignment);
        assert_eq!(plan.assignment.len(), 4, "every pod owns one partition");
        let moved: Vec<i32> = plan.restore.keys().copied().collect();
        assert_eq!(moved.len(), 2, "two partitions move, two stay: {owners:?}");
        for p in &moved {
            assert!(
                ["c", "d"].contains(&owners[p]),
                "moved partitions go to the new pods"
            );
            assert_eq!(plan.restore[p].savepoint, "e4-rescale");
        }
    }

    #[test]
    fn all_parts_in_storage_complete_the_savepoint_then_the_rescale() {
        let mut handover = two_workers();
        handover.epoch = 4;
        let status = RescaleStatus {
            reason: "rescale".into(),
            from: 2,
            to: 4,
            epoch: 4,
            savepoint: "e4-rescale".into(),
            step: RescaleStep::Savepointing,
            started: Time(t(0)),
            step_started: None,
            fallback: Vec::new(),
        };
        let case = Case {
            target: 4,
            current: Some(status),
            plan: handover,
            pods: live(&["a", "b", "c", "d"]),
            parts: (0..4).collect(),
            checkpoint_epochs: BTreeMap::new(),
            now: t(3),
        };
        let Decision::HandingOver(next) = case.step() else {
            panic!("expected HandingOver, got {:?}", case.step());
        };
        let case = Case {
            current: Some(next),
            ..case
        };
        assert_eq!(
            case.step(),
            Decision::Done,
            "owners are ready, nothing to remove"
        );
    }

    #[test]
    fn late_parts_fall_back_to_checkpoints_in_a_new_epoch() {
        let mut handover = plan(4, &[("a", &[0]), ("b", &[2]), ("c", &[1]), ("d", &[3])]);
        handover.savepoint = Some(SavepointOrder {
            id: "e4-rescale".into(),
        });
        for p in [1, 3] {
            handover.restore.insert(
                p,
                PartitionRestore {
                    savepoint: "e4-rescale".into(),
                    part: None,
                },
            );
        }
        let status = RescaleStatus {
            reason: "rescale".into(),
            from: 2,
            to: 4,
            epoch: 4,
            savepoint: "e4-rescale".into(),
            step: RescaleStep::Savepointing,
            started: Time(t(0)),
            step_started: None,
            fallback: Vec::new(),
        };
        let mut case = Case {
            target: 4,
            current: Some(status),
            plan: handover,
            pods: live(&["a", "b", "c", "d"]),
            parts: BTreeSet::from([0, 1, 2]),
            checkpoint_epochs: BTreeMap::new(),
            now: t(30),
        };
        assert!(
            matches!(case.step(), Decision::Savepointing { ref missing, .. } if *missing == vec![3])
        );
        case.now = t(61);
        let Decision::FallingBack {
            plan,
            missing,
            status,
        } = case.step()
        else {
            panic!("expected FallingBack, got {:?}", case.step());
        };
        assert_eq!(missing, vec![3]);
        assert_eq!(plan.epoch, 5);
        assert!(plan.savepoint.is_none());
        assert!(
            !plan.restore.contains_key(&3),
            "partition 3 restores from its checkpoint"
        );
        assert!(
            plan.restore.contains_key(&1),
            "partition 1's part is there: it is used"
        );
        assert_eq!(status.step, RescaleStep::HandingOver);
    }

    #[test]
    fn scaling_down_moves_partitions_off_the_leaving_pods_before_removing_them() {
        let current = plan(3, &[("a", &[0, 1]), ("b", &[2]), ("c", &[3])]);
        let case = Case {
            target: 2,
            current: None,
            plan: current,
            pods: live(&["a", "b", "c"]),
            parts: BTreeSet::new(),
            checkpoint_epochs: BTreeMap::new(),
            now: t(0),
        };
        let step = case.step();
        assert_eq!(step.replicas(2), 3, "no pod goes before the handover");
        let Decision::Savepointing { plan, status, .. } = step else {
            panic!("expected Savepointing");
        };
        assert!(
            plan.assignment.contains_key("a"),
            "the pod holding most stays"
        );
        assert_eq!(plan.assignment.values().map(Vec::len).sum::<usize>(), 4);
        assert_eq!(plan.assignment.len(), 2);

        let leaving: Vec<String> = ["a", "b", "c"]
            .iter()
            .filter(|p| !plan.assignment.contains_key(**p))
            .map(|p| (*p).to_owned())
            .collect();
        let handing_over = Case {
            target: 2,
            current: Some(RescaleStatus {
                step: RescaleStep::HandingOver,
                ..status
            }),
            plan,
            pods: live(&["a", "b", "c"]),
            parts: (0..4).collect(),
            checkpoint_epochs: BTreeMap::new(),
            now: t(5),
        };
        assert!(
            matches!(handing_over.step(), Decision::HandingOver(_)),
            "ready pods whose moved partitions have no checkpoint of the handover epoch yet \
             may not have restored them"
        );
        let handing_over = Case {
            checkpoint_epochs: (0..4).map(|p| (p, handing_over.plan.epoch)).collect(),
            ..handing_over
        };
        let Decision::ScalingDown { remove, status } = handing_over.step() else {
            panic!("expected ScalingDown");
        };
        assert_eq!(remove, leaving);
        let gone = Case {
            current: Some(status),
            pods: live(&["a", "b", "c"])
                .into_iter()
                .filter(|p| !leaving.contains(&p.name))
                .collect(),
            ..handing_over
        };
        assert_eq!(gone.step(), Decision::Done);

        // Had the owner gone instead, the rescale would end for the planner to move its
        // partitions, rather than wait for ever.
        let owner_gone = Case {
            pods: live(&leaving.iter().map(String::as_str).collect::<Vec<_>>()),
            ..gone
        };
        assert_eq!(owner_gone.step(), Decision::Done);
    }
    fn in_flight(step: RescaleStep, epoch: i64) -> RescaleStatus {
        RescaleStatus {
            reason: "rescale".into(),
            from: 2,
            to: 4,
            epoch,
            savepoint: savepoint_id(u64::try_from(epoch).unwrap()),
            step,
            started: Time(t(0)),
            step_started: Some(Time(t(0))),
            fallback: Vec::new(),
        }
    }

    #[test]
    fn a_new_target_before_any_partition_moved_abandons_the_rescale() {
        let case = Case {
            target: 3,
            current: Some(in_flight(RescaleStep::ScalingUp, 4)),
            plan: two_workers(),
            pods: live(&["a", "b", "c"]),
            parts: BTreeSet::new(),
            checkpoint_epochs: BTreeMap::new(),
            now: t(5),
        };
        assert_eq!(case.step(), Decision::Abandoned);
        assert_eq!(case.step().replicas(3), 3);
    }

    #[test]
    fn the_savepoint_timeout_counts_from_the_publication_of_the_handover_plan() {
        let scaling_up = Case {
            target: 4,
            current: Some(in_flight(RescaleStep::ScalingUp, 4)),
            plan: two_workers(),
            pods: live(&["a", "b", "c", "d"]),
            parts: BTreeSet::new(),
            checkpoint_epochs: BTreeMap::new(),
            now: t(100),
        };
        // The pods took 100 s to come; the workers still get the whole timeout.
        let Decision::Savepointing { status, plan, .. } = scaling_up.step() else {
            panic!("expected Savepointing, got {:?}", scaling_up.step());
        };
        assert_eq!(status.step_started, Some(Time(t(100))));
        let waiting = Case {
            current: Some(status),
            plan,
            now: t(150),
            ..scaling_up
        };
        assert!(matches!(waiting.step(), Decision::Savepointing { .. }));
        let late = Case {
            now: t(161),
            ..waiting
        };
        assert!(matches!(late.step(), Decision::FallingBack { .. }));
    }

    #[test]
    fn an_owner_lost_during_the_handover_ends_the_rescale_for_the_planner() {
        let handover = plan(4, &[("a", &[0]), ("b", &[2]), ("c", &[1]), ("d", &[3])]);
        let mut pods = live(&["a", "b", "c", "d"]);
        pods[3].lifecycle = PodLifecycle::Terminating;
        let case = Case {
            target: 4,
            current: Some(in_flight(RescaleStep::HandingOver, 4)),
            plan: handover,
            pods,
            parts: (0..4).collect(),
            checkpoint_epochs: BTreeMap::new(),
            now: t(5),
        };
        assert_eq!(case.step(), Decision::Done);
        let waiting = Case {
            pods: {
                let mut pods = live(&["a", "b", "c", "d"]);
                pods[3].ready = false;
                pods
            },
            ..case
        };
        assert!(
            matches!(waiting.step(), Decision::HandingOver(_)),
            "an owner still restoring is waited for"
        );
    }

    #[test]
    fn no_rescale_starts_while_an_owner_is_not_running() {
        let mut pods = live(&["a", "b"]);
        pods[1].lifecycle = PodLifecycle::Terminating;
        let draining = Case {
            target: 3,
            current: None,
            plan: two_workers(),
            pods,
            parts: BTreeSet::new(),
            checkpoint_epochs: BTreeMap::new(),
            now: t(0),
        };
        assert_eq!(
            draining.step(),
            Decision::Steady,
            "growing waits for the planner"
        );
        let shrinking = Case {
            target: 1,
            pods: draining.pods.clone(),
            ..draining
        };
        assert_eq!(
            shrinking.step(),
            Decision::Deferred { replicas: 2 },
            "no pod is removed before the handover can run"
        );
        assert_eq!(shrinking.step().replicas(1), 2);
        let starting = Case {
            pods: {
                let mut pods = live(&["a", "b"]);
                pods[0].ready = false;
                pods
            },
            ..shrinking
        };
        assert_eq!(
            Case {
                target: 3,
                ..starting
            }
            .step(),
            Decision::Steady,
            "a job still starting"
        );
    }
    #[test]
    fn a_new_image_takes_an_upgrade_savepoint_while_the_pods_keep_theirs() {
        let running = two_workers();
        let mut wanted = running.spec.clone();
        wanted.image = Some("streamjob:2".into());
        let decision = next_step(&RescaleInput {
            target: 2,
            current: None,
            plan: &running,
            spec: &wanted,
            request: None,
            pods: &live(&["a", "b"]),
            partitions: 4,
            parts: &BTreeSet::new(),
            checkpoint_epochs: &BTreeMap::new(),
            now: t(0),
            part_timeout: jiff::SignedDuration::from_secs(60),
        });
        let Decision::Savepointing { status, plan, .. } = decision else {
            panic!("expected Savepointing, got {decision:?}");
        };
        assert_eq!(status.reason, "upgrade");
        assert_eq!(status.savepoint, "e4-upgrade");
        assert_eq!(plan.assignment, running.assignment, "nothing moves");
        assert_eq!(
            plan.spec.image, None,
            "the pods keep their image until it exists"
        );
        assert!(same_pod_template(&plan.spec, &running.spec));
    }

    #[test]
    fn processing_threads_are_part_of_the_pod_template() {
        let running = streamjob_api::StreamJob::test("clicks").spec;
        let mut wanted = running.clone();
        wanted.processing_threads = 2;
        assert!(
            !same_pod_template(&running, &wanted),
            "a change rolls the pods"
        );
        let held = with_pod_template_of(&wanted, &running);
        assert_eq!(
            held.processing_threads, 1,
            "held until the savepoint exists"
        );
    }
}
