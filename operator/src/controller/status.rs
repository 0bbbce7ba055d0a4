//! Status: what the operator observed, as conditions kstatus reads, and the events that
//! mark each transition (pure; the controller writes both).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::runtime::events::EventType;
use streamjob_api::{
    CheckpointSummary, JobState, PartitionStatus, Phase, RescaleStatus, RescaleStep,
    SavepointStatus, StreamJob, StreamJobStatus,
};
use streamjob_worker::plan::Plan;

use super::{
    Blocker, desired::replicas, names::ChildNames, observe::Observed, planning::PodLifecycle,
};
use crate::assignment;

/// Everything the status is computed from.
pub struct StatusInput<'a> {
    /// The job as reconciled.
    pub job: &'a StreamJob,
    /// What observe found.
    pub observed: &'a Observed,
    /// The plan in force (just published, or the old one when the spec is blocked).
    pub plan: Option<&'a Plan>,
    /// Why the job cannot run, if it cannot.
    pub blocker: Option<&'a Blocker>,
    /// The rescale in flight after this reconcile.
    pub rescale: Option<&'a RescaleStatus>,
    /// The savepoint history to record.
    pub savepoints: &'a [SavepointStatus],
    /// The last savepoint request acted on.
    pub savepoint_request: Option<&'a str>,
    /// Now.
    pub now: jiff::Timestamp,
}

/// An event to publish about the job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transition {
    /// Normal or Warning.
    pub type_: EventType,
    /// Short CamelCase reason.
    pub reason: String,
    /// Human sentence.
    pub note: String,
}

/// The new status.
pub fn status(input: &StatusInput<'_>) -> StreamJobStatus {
    let job = input.job;
    let previous = job.status.clone().unwrap_or_default();
    let names = ChildNames::new(job.metadata.name.as_deref().unwrap_or_default());
    let (phase, ready, reconciling, stalled) = assess(input, previous.phase);
    let generation = job.metadata.generation;
    let condition = |type_: &str, verdict: Verdict| {
        let status = if verdict.holds { "True" } else { "False" };
        let last_transition_time = previous
            .conditions
            .iter()
            .find(|c| c.type_ == type_ && c.status == status)
            .map_or(Time(input.now), |c| c.last_transition_time.clone());
        Condition {
            type_: type_.to_owned(),
            status: status.to_owned(),
            reason: verdict.reason,
            message: verdict.message,
            observed_generation: generation,
            last_transition_time,
        }
    };
    let live = input
        .observed
        .pods
        .iter()
        .filter(|p| p.lifecycle == PodLifecycle::Live)
        .count();

    StreamJobStatus {
        observed_generation: generation,
        phase: Some(phase),
        parallelism: Some(i32::try_from(live).unwrap_or(i32::MAX)),
        selector: Some(names.selector_string()),
        epoch: input
            .plan
            .map(|p| i64::try_from(p.epoch).unwrap_or(i64::MAX)),
        conditions: vec![
            condition("Ready", ready),
            condition("Reconciling", reconciling),
            condition("Stalled", stalled),
        ],
        assignment: partitions(input),
        last_checkpoint: last_checkpoint(input.observed),
        savepoints: input.savepoints.to_vec(),
        savepoint_request: input.savepoint_request.map(str::to_owned),
        rescale: input.rescale.cloned(),
    }
}

/// The events that mark the change from `before` to `after`.
pub fn transitions(
    before: &StreamJobStatus,
    after: &StreamJobStatus,
    plan: Option<&Plan>,
) -> Vec<Transition> {
    let normal = |reason: &str, note: String| Transition {
        type_: EventType::Normal,
        reason: reason.to_owned(),
        note,
    };
    let mut events = Vec::new();
    if let (Some(epoch), Some(plan)) = (after.epoch, plan) {
        if before.epoch != Some(epoch) && epoch > 0 {
            let owners: Vec<String> = plan
                .assignment
                .iter()
                .map(|(pod, parts)| format!("{pod} {parts:?}"))
                .collect();
            let owners = if owners.is_empty() {
                "no partitions owned".to_owned()
            } else {
                owners.join(", ")
            };
            events.push(normal("PlanPublished", format!("epoch {epoch}: {owners}")));
        }
    }
    match (holds(before, "Stalled"), holds(after, "Stalled")) {
        // Only a new reason is news: error texts from Kafka vary from one attempt to the next.
        (old, Some(new)) if old.map(|c| &c.reason) != Some(&new.reason) => {
            events.push(Transition {
                type_: EventType::Warning,
                reason: new.reason.clone(),
                note: new.message.clone(),
            });
        }
        (Some(_), None) => events.push(normal("Recovered", "the job can run again".to_owned())),
        _ => {}
    }
    if let (None, Some(ready)) = (holds(before, "Ready"), holds(after, "Ready")) {
        events.push(normal(&ready.reason, ready.message.clone()));
    }
    events.extend(rescale_transitions(before, after));
    if before.phase == Some(Phase::Suspended) && after.phase != Some(Phase::Suspended) {
        events.push(normal(
            "Resumed",
            "workers start from their last checkpoints".to_owned(),
        ));
    }
    events
}

/// The events of a rescale: started, savepoint completed or incomplete, finished.
fn rescale_transitions(before: &StreamJobStatus, after: &StreamJobStatus) -> Vec<Transition> {
    let event = |type_, reason: &str, note: String| Transition {
        type_,
        reason: reason.to_owned(),
        note,
    };
    let mut events = Vec::new();
    match (&before.rescale, &after.rescale) {
        (None, Some(rescale)) => {
            let (reason, note) = match rescale.reason.as_str() {
                "upgrade" => (
                    "UpgradeStarted",
                    format!(
                        "the changed processing starts in epoch {} from savepoint {}",
                        rescale.epoch, rescale.savepoint
                    ),
                ),
                "user" => (
                    "SavepointStarted",
                    format!(
                        "taking savepoint {} of every partition in epoch {}",
                        rescale.savepoint, rescale.epoch
                    ),
                ),
                _ => (
                    "RescaleStarted",
                    format!(
                        "parallelism {} → {}: epoch {} hands partitions over through savepoint {}",
                        rescale.from, rescale.to, rescale.epoch, rescale.savepoint
                    ),
                ),
            };
            events.push(event(EventType::Normal, reason, note));
        }
        (Some(rescale), None) => {
            let epoch = after.epoch.unwrap_or_default();
            let finished = epoch >= rescale.epoch;
            match rescale.reason.as_str() {
                "upgrade" if finished => events.push(event(
                    EventType::Normal,
                    "Upgraded",
                    format!("epoch {epoch} runs the changed processing"),
                )),
                "rescale" if finished => events.push(event(
                    EventType::Normal,
                    "Rescaled",
                    format!(
                        "parallelism {} → {} done in epoch {epoch}",
                        rescale.from, rescale.to
                    ),
                )),
                "rescale" => events.push(event(
                    EventType::Normal,
                    "RescaleAbandoned",
                    format!(
                        "parallelism {} → {} abandoned before any partition moved: the spec \
                         asks for another count",
                        rescale.from, rescale.to
                    ),
                )),
                _ => {}
            }
        }
        _ => {}
    }
    if let Some(rescale) = &after.rescale {
        let fell_back = before
            .rescale
            .as_ref()
            .is_none_or(|b| b.fallback.is_empty());
        if fell_back && !rescale.fallback.is_empty() {
            events.push(event(
                EventType::Warning,
                "SavepointIncomplete",
                fallback_message(rescale),
            ));
        }
    }
    for savepoint in &before.savepoints {
        if !after.savepoints.iter().any(|s| s.name == savepoint.name) {
            events.push(event(
                EventType::Normal,
                "SavepointDeleted",
                format!(
                    "savepoint {} deleted from storage: older than the retained ones",
                    savepoint.name
                ),
            ));
        }
    }
    for savepoint in &after.savepoints {
        if !before.savepoints.iter().any(|s| s.name == savepoint.name) {
            events.push(event(
                EventType::Normal,
                "SavepointCompleted",
                format!(
                    "savepoint {} ({}, epoch {}) written to {}",
                    savepoint.name, savepoint.reason, savepoint.epoch, savepoint.url
                ),
            ));
        }
    }
    events
}

fn fallback_message(rescale: &RescaleStatus) -> String {
    let missing = format!(
        "savepoint {} lacks the parts of partitions {:?}",
        rescale.savepoint, rescale.fallback
    );
    if rescale.reason == "user" {
        format!("{missing}: it is not recorded; set another name to try again")
    } else {
        format!(
            "{missing}: they restore from their newest checkpoints and replay from there \
             (nothing is lost, some results are emitted again)"
        )
    }
}

/// `n thing` or `n things`.
fn count_of(n: usize, thing: &str) -> String {
    if n == 1 {
        format!("1 {thing}")
    } else {
        format!("{n} {thing}s")
    }
}

/// The condition `type_` of `status`, if it is true.
fn holds<'a>(status: &'a StreamJobStatus, type_: &str) -> Option<&'a Condition> {
    status
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .filter(|c| c.status == "True")
}

/// A condition's verdict.
struct Verdict {
    holds: bool,
    reason: String,
    message: String,
}

impl Verdict {
    fn new(holds: bool, reason: &str, message: impl Into<String>) -> Self {
        Self {
            holds,
            reason: reason.to_owned(),
            message: message.into(),
        }
    }
}

/// Phase and the Ready, Reconciling and Stalled verdicts.
fn assess(input: &StatusInput<'_>, previous: Option<Phase>) -> (Phase, Verdict, Verdict, Verdict) {
    let not_stalled = || Verdict::new(false, "Runnable", "the spec can run");
    if let Some(blocker) = input.blocker {
        return (
            Phase::Failed,
            Verdict::new(false, &blocker.reason, blocker.message.clone()),
            Verdict::new(
                false,
                "Stalled",
                "waiting for the spec or its environment to change",
            ),
            Verdict::new(true, &blocker.reason, blocker.message.clone()),
        );
    }
    let pods = &input.observed.pods;
    let count = |lifecycle: PodLifecycle| pods.iter().filter(|p| p.lifecycle == lifecycle).count();
    let (live, terminating) = (count(PodLifecycle::Live), count(PodLifecycle::Terminating));

    if input.job.spec.state == JobState::Suspended {
        let remaining = live + terminating;
        return if remaining == 0 {
            (
                Phase::Suspended,
                Verdict::new(
                    true,
                    "Suspended",
                    "workers stopped after their final checkpoint",
                ),
                Verdict::new(false, "Suspended", "nothing to do while suspended"),
                not_stalled(),
            )
        } else {
            let message =
                format!("waiting for {remaining} workers to stop after their final checkpoint");
            (
                Phase::Suspended,
                Verdict::new(false, "Suspending", message.clone()),
                Verdict::new(true, "Suspending", message),
                not_stalled(),
            )
        };
    }

    if let Some(rescale) = input.rescale {
        let (reason, message) = rescale_progress(rescale, input);
        return (
            Phase::Rescaling,
            Verdict::new(false, reason, message.clone()),
            Verdict::new(true, reason, message),
            not_stalled(),
        );
    }

    let partitions = input.observed.topic.as_ref().map_or(0, |t| t.partitions);
    let wanted = usize::try_from(replicas(input.job, partitions)).unwrap_or(0);
    let owners = input
        .plan
        .map(|plan| assignment::owners(&plan.assignment))
        .unwrap_or_default();
    let unserved = (0..partitions)
        .filter(|partition| {
            let owner = owners.get(partition);
            !owner.is_some_and(|owner| pods.iter().any(|p| p.name == *owner && p.serves()))
        })
        .count();
    let ready_pods = pods.iter().filter(|p| p.serves()).count();
    let epoch = input.plan.map_or(0, |p| p.epoch);

    let waiting = if terminating > 0 {
        Some((
            "PodsTerminating",
            format!("waiting for {terminating} workers to stop before their partitions move"),
        ))
    } else if live != wanted {
        Some(("Scaling", format!("{live} of {wanted} workers exist")))
    } else if ready_pods < live {
        Some((
            "WorkersStarting",
            format!("{ready_pods} of {live} workers are ready"),
        ))
    } else if unserved > 0 {
        Some((
            "PartitionsStarting",
            format!("{unserved} of {partitions} partitions wait for a ready owner"),
        ))
    } else {
        None
    };
    match waiting {
        None => {
            let mut message = format!(
                "{} {} {} in epoch {epoch}",
                count_of(live, "worker"),
                if live == 1 { "runs" } else { "run" },
                count_of(usize::try_from(partitions).unwrap_or(0), "partition"),
            );
            if input.job.spec.parallelism > partitions {
                message.push_str(&format!(
                    "; parallelism {} is capped at the topic's {partitions} partitions",
                    input.job.spec.parallelism
                ));
            }
            (
                Phase::Running,
                Verdict::new(true, "Running", message),
                Verdict::new(false, "Running", "every partition has a ready owner"),
                not_stalled(),
            )
        }
        Some((reason, message)) => {
            let phase = match previous {
                Some(Phase::Running | Phase::Rescaling) if live != wanted => Phase::Rescaling,
                Some(Phase::Running | Phase::Rescaling) => Phase::Running,
                _ => Phase::Pending,
            };
            (
                phase,
                Verdict::new(false, reason, message.clone()),
                Verdict::new(true, reason, message),
                not_stalled(),
            )
        }
    }
}

/// Reason and message of the Ready and Reconciling conditions during a rescale.
fn rescale_progress(rescale: &RescaleStatus, input: &StatusInput<'_>) -> (&'static str, String) {
    let head = match rescale.reason.as_str() {
        "upgrade" => "upgrading".to_owned(),
        "user" => format!("taking savepoint {}", rescale.savepoint),
        _ => format!("rescaling {} → {}", rescale.from, rescale.to),
    };
    let pods = &input.observed.pods;
    match rescale.step {
        RescaleStep::ScalingUp => {
            let live = pods
                .iter()
                .filter(|p| p.lifecycle == PodLifecycle::Live)
                .count();
            (
                "ScalingUp",
                format!("{head}: {live} of {} workers exist", rescale.to),
            )
        }
        RescaleStep::Savepointing => {
            let partitions = input.observed.topic.as_ref().map_or(0, |t| t.partitions);
            (
                "Savepointing",
                format!(
                    "{head}: savepoint {} has {} of {partitions} parts",
                    rescale.savepoint,
                    input.observed.parts.len()
                ),
            )
        }
        RescaleStep::HandingOver if !rescale.fallback.is_empty() => (
            "SavepointIncomplete",
            format!("{head}: {}", fallback_message(rescale)),
        ),
        RescaleStep::HandingOver => {
            let moving = input.plan.map_or(0, |p| p.restore.len());
            (
                "HandingOver",
                format!(
                    "{head}: new owners restore {} from savepoint {}",
                    count_of(moving, "moved partition"),
                    rescale.savepoint
                ),
            )
        }
        RescaleStep::ScalingDown => {
            let leaving = pods
                .iter()
                .filter(|p| p.lifecycle != PodLifecycle::Finished)
                .count()
                .saturating_sub(usize::try_from(rescale.to).unwrap_or(0));
            (
                "ScalingDown",
                format!(
                    "{head}: removing {} left without partitions",
                    count_of(leaving, "worker")
                ),
            )
        }
    }
}

fn partitions(input: &StatusInput<'_>) -> Vec<PartitionStatus> {
    let Ok(topic) = &input.observed.topic else {
        return input
            .job
            .status
            .as_ref()
            .map(|s| s.assignment.clone())
            .unwrap_or_default();
    };
    let owners = input
        .plan
        .map(|plan| assignment::owners(&plan.assignment))
        .unwrap_or_default();
    (0..topic.partitions)
        .map(|partition| {
            let checkpoint = input.observed.checkpoints.get(&partition);
            let committed = checkpoint.map(|c| c.next_offset);
            let end = topic.end_offsets.get(&partition).copied();
            PartitionStatus {
                partition,
                pod: owners.get(&partition).map(|p| (*p).to_owned()),
                committed_offset: committed,
                lag: committed
                    .zip(end)
                    .map(|(committed, end)| (end - committed).max(0)),
                last_checkpoint: checkpoint.map(|c| Time(c.time)),
            }
        })
        .collect()
}

fn last_checkpoint(observed: &Observed) -> Option<CheckpointSummary> {
    let oldest = observed.checkpoints.values().map(|c| c.time).min()?;
    Some(CheckpointSummary {
        time: Time(oldest),
        partitions: i32::try_from(observed.checkpoints.len()).unwrap_or(i32::MAX),
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::{
        controller::planning::{WorkerPod, test_plan},
        kafka::TopicInfo,
    };

    fn pod(name: &str, ready: bool, lifecycle: PodLifecycle) -> WorkerPod {
        WorkerPod {
            name: name.into(),
            lifecycle,
            ready,
        }
    }

    fn observed(pods: Vec<WorkerPod>) -> Observed {
        Observed {
            pods,
            plan: None,
            topic: Ok(TopicInfo {
                partitions: 2,
                end_offsets: BTreeMap::from([(0, 10), (1, 4)]),
            }),
            checkpoints: BTreeMap::new(),
            storage: None,
            parts: BTreeMap::new(),
            restore_from: None,
            outputs: None,
        }
    }

    fn plan(assignment: &[(&str, &[i32])]) -> Plan {
        test_plan(3, assignment)
    }

    /// The input of a job with no operation in flight and no savepoints, at `now()`.
    fn input<'a>(
        job: &'a StreamJob,
        observed: &'a Observed,
        plan: Option<&'a Plan>,
    ) -> StatusInput<'a> {
        StatusInput {
            job,
            observed,
            plan,
            blocker: None,
            rescale: None,
            savepoints: &[],
            savepoint_request: None,
            now: now(),
        }
    }

    fn condition<'a>(status: &'a StreamJobStatus, type_: &str) -> &'a Condition {
        status.conditions.iter().find(|c| c.type_ == type_).unwrap()
    }

    fn now() -> jiff::Timestamp {
        jiff::Timestamp::from_second(1_800_000_000).unwrap()
    }

    #[test]
    fn every_partition_owned_by_a_ready_worker_is_ready() {
        let mut job = StreamJob::test("clicks").parallelism(2);
        job.metadata.generation = Some(4);
        let observed = observed(vec![
            pod("a", true, PodLifecycle::Live),
            pod("b", true, PodLifecycle::Live),
        ]);
        let plan = plan(&[("a", &[0]), ("b", &[1])]);
        let status = status(&input(&job, &observed, Some(&plan)));
        assert_eq!(status.phase, Some(Phase::Running));
        assert_eq!(status.observed_generation, Some(4));
        let ready = condition(&status, "Ready");
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("True", "Running")
        );
        assert_eq!(ready.message, "2 workers run 2 partitions in epoch 3");
        assert_eq!(ready.observed_generation, Some(4));
        assert_eq!(condition(&status, "Reconciling").status, "False");
        assert_eq!(condition(&status, "Stalled").status, "False");
        assert_eq!(status.epoch, Some(3));
        assert_eq!(status.assignment[0].pod.as_deref(), Some("a"));
        assert_eq!(
            status.assignment[1].lag, None,
            "no checkpoint, no lag figure"
        );
    }

    #[test]
    fn parallelism_above_the_partition_count_is_capped_and_said() {
        let job = StreamJob::test("clicks").parallelism(5);
        let observed = observed(vec![
            pod("a", true, PodLifecycle::Live),
            pod("b", true, PodLifecycle::Live),
        ]);
        let plan = plan(&[("a", &[0]), ("b", &[1])]);
        let status = status(&input(&job, &observed, Some(&plan)));
        let ready = condition(&status, "Ready");
        assert_eq!(ready.status, "True");
        assert_eq!(
            ready.message,
            "2 workers run 2 partitions in epoch 3; parallelism 5 is capped at the topic's 2 partitions"
        );
    }

    #[test]
    fn an_unready_owner_keeps_the_job_reconciling() {
        let job = StreamJob::test("clicks").parallelism(2);
        let observed = observed(vec![
            pod("a", true, PodLifecycle::Live),
            pod("b", false, PodLifecycle::Live),
        ]);
        let plan = plan(&[("a", &[0]), ("b", &[1])]);
        let status = status(&input(&job, &observed, Some(&plan)));
        assert_eq!(status.phase, Some(Phase::Pending));
        let reconciling = condition(&status, "Reconciling");
        assert_eq!(reconciling.status, "True");
        assert_eq!(reconciling.reason, "WorkersStarting");
        assert_eq!(reconciling.message, "1 of 2 workers are ready");
        assert_eq!(condition(&status, "Ready").status, "False");
    }

    #[test]
    fn a_blocker_stalls_the_job_and_names_the_problem() {
        let job = StreamJob::test("clicks");
        let observed = observed(vec![]);
        let blocker = Blocker::new("InvalidPipeline", "spec.pipeline[0]: bad");
        let status = status(&StatusInput {
            blocker: Some(&blocker),
            ..input(&job, &observed, None)
        });
        assert_eq!(status.phase, Some(Phase::Failed));
        let stalled = condition(&status, "Stalled");
        assert_eq!(stalled.status, "True");
        assert_eq!(stalled.message, "spec.pipeline[0]: bad");
        assert_eq!(condition(&status, "Reconciling").status, "False");

        let events = transitions(&StreamJobStatus::default(), &status, None);
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].type_, EventType::Warning);
        assert_eq!(events[0].reason, "InvalidPipeline");
    }

    #[test]
    fn a_suspended_job_is_ready_once_its_workers_are_gone() {
        let job = StreamJob::test("clicks").state(JobState::Suspended);
        let stopping = observed(vec![pod("a", true, PodLifecycle::Terminating)]);
        let status_stopping = status(&input(&job, &stopping, None));
        assert_eq!(
            condition(&status_stopping, "Reconciling").reason,
            "Suspending"
        );
        let stopped = observed(vec![]);
        let status_stopped = status(&input(&job, &stopped, None));
        assert_eq!(status_stopped.phase, Some(Phase::Suspended));
        assert_eq!(condition(&status_stopped, "Ready").status, "True");
    }

    #[test]
    fn a_condition_keeps_its_transition_time_while_it_holds() {
        let mut job = StreamJob::test("clicks");
        let observed = observed(vec![pod("a", true, PodLifecycle::Live)]);
        let plan = plan(&[("a", &[0, 1])]);
        let status_at = |job: &StreamJob, now| {
            status(&StatusInput {
                now,
                ..input(job, &observed, Some(&plan))
            })
        };
        let first = status_at(&job, now());
        job.status = Some(first.clone());
        let later = status_at(&job, now() + jiff::SignedDuration::from_secs(60));
        assert_eq!(
            condition(&later, "Ready").last_transition_time,
            condition(&first, "Ready").last_transition_time
        );
        assert!(transitions(&first, &later, Some(&plan)).is_empty());
    }

    #[test]
    fn a_new_epoch_is_announced_with_its_owners() {
        let plan = plan(&[("a", &[0]), ("b", &[1])]);
        let before = StreamJobStatus {
            epoch: Some(2),
            ..Default::default()
        };
        let after = StreamJobStatus {
            epoch: Some(3),
            ..Default::default()
        };
        let events = transitions(&before, &after, Some(&plan));
        assert_eq!(events[0].reason, "PlanPublished");
        assert_eq!(events[0].note, "epoch 3: a [0], b [1]");
    }
}
