//! The next plan of a job (pure): which pod owns which partitions, in which epoch.
//!
//! Partitions only change owner when they must. A pod that is shutting down keeps what it
//! holds until its object is gone (its worker is still writing the final checkpoint), and
//! while any pod is shutting down nothing else moves: the replacement gets the partitions in
//! one step, once the old owner is gone.

use std::collections::{BTreeMap, BTreeSet};

use streamjob_api::StreamJob;
use streamjob_worker::plan::{JobRef, Plan};

use crate::assignment::{self, Assignment};

/// A worker pod as the planner sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerPod {
    /// Pod name (the plan's assignment key).
    pub name: String,
    /// Whether the pod can hold partitions, or is on its way out.
    pub lifecycle: PodLifecycle,
    /// Whether the pod's Ready condition is true.
    pub ready: bool,
}

impl WorkerPod {
    /// Whether the pod is live and ready: it runs every partition it owns.
    pub fn serves(&self) -> bool {
        self.ready && self.lifecycle == PodLifecycle::Live
    }
}

/// A plan of job `ns/clicks` in `epoch` with `assignment`, for tests.
#[cfg(test)]
pub fn test_plan(epoch: u64, assignment: &[(&str, &[i32])]) -> Plan {
    Plan {
        job: JobRef {
            namespace: "ns".into(),
            name: "clicks".into(),
        },
        epoch,
        spec: StreamJob::test("clicks").spec,
        assignment: assignment
            .iter()
            .map(|(pod, ps)| ((*pod).to_owned(), ps.to_vec()))
            .collect(),
        restore: BTreeMap::new(),
        savepoint: None,
    }
}

/// Where a worker pod is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PodLifecycle {
    /// Scheduled or running: it gets partitions.
    Live,
    /// Deleted, still shutting down: it keeps its partitions, gets no new ones.
    Terminating,
    /// Its process has ended for good (evicted, failed): it owns nothing.
    Finished,
}

/// Everything the next plan depends on.
#[derive(Debug)]
pub struct PlanInput<'a> {
    /// The job.
    pub job: &'a StreamJob,
    /// The job's namespace.
    pub namespace: &'a str,
    /// The published plan, if any.
    pub previous: Option<&'a Plan>,
    /// The highest epoch ever published (status survives a lost plan ConfigMap).
    pub last_epoch: u64,
    /// Partition count of the source topic.
    pub partitions: i32,
    /// The job's worker pods.
    pub pods: &'a [WorkerPod],
}

/// The plan to publish. The epoch grows only when the assignment changes; epoch 0 means no
/// partition has ever had an owner.
pub fn next_plan(input: &PlanInput<'_>) -> Plan {
    let previous = input
        .previous
        .map(|p| p.assignment.clone())
        .unwrap_or_default();
    let assignment = next_assignment(&previous, input.partitions, input.pods);
    let last_epoch = input.last_epoch.max(input.previous.map_or(0, |p| p.epoch));
    // No plan yet counts as an empty assignment: a job whose pods do not exist yet stays in
    // epoch 0 (nothing owned), and its first owners start epoch 1.
    let epoch = if normalized(&previous) == normalized(&assignment) {
        last_epoch
    } else {
        last_epoch + 1
    };
    Plan {
        job: JobRef {
            namespace: input.namespace.to_owned(),
            name: input.job.metadata.name.clone().unwrap_or_default(),
        },
        epoch,
        spec: input.job.spec.clone(),
        assignment: normalized(&assignment),
        restore: BTreeMap::new(),
        savepoint: None,
    }
}

/// The assignment after `previous`, given the pods that exist now.
pub fn next_assignment(previous: &Assignment, partitions: i32, pods: &[WorkerPod]) -> Assignment {
    let with = |lifecycle: PodLifecycle| -> Vec<String> {
        pods.iter()
            .filter(|p| p.lifecycle == lifecycle)
            .map(|p| p.name.clone())
            .collect()
    };
    let live = with(PodLifecycle::Live);
    let terminating = with(PodLifecycle::Terminating);
    let present: BTreeSet<&String> = live.iter().chain(&terminating).collect();

    // What each pod that still exists held, within the topic's current partitions.
    let kept: Assignment = previous
        .iter()
        .filter(|(pod, _)| present.contains(pod))
        .map(|(pod, held)| {
            let held = held.iter().copied().filter(|p| (0..partitions).contains(p));
            (pod.clone(), held.collect())
        })
        .collect();

    let draining = terminating
        .iter()
        .any(|pod| kept.get(pod).is_some_and(|held| !held.is_empty()));
    if !draining {
        return assignment::assign(partitions, &live, &kept);
    }

    // Freeze while a pod drains; only partitions nobody holds find a live owner.
    let mut result = kept;
    let owned: BTreeSet<i32> = result.values().flatten().copied().collect();
    for partition in (0..partitions).filter(|p| !owned.contains(p)) {
        let least_loaded = live
            .iter()
            .min_by_key(|pod| (result.get(*pod).map_or(0, Vec::len), (*pod).clone()));
        if let Some(pod) = least_loaded {
            result.entry(pod.clone()).or_default().push(partition);
        }
    }
    result
}

/// The assignment without pods that own nothing, each pod's partitions sorted.
fn normalized(assignment: &Assignment) -> Assignment {
    assignment
        .iter()
        .filter(|(_, held)| !held.is_empty())
        .map(|(pod, held)| {
            let mut held = held.clone();
            held.sort_unstable();
            held.dedup();
            (pod.clone(), held)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, lifecycle: PodLifecycle) -> WorkerPod {
        WorkerPod {
            name: name.into(),
            lifecycle,
            ready: true,
        }
    }

    fn live(names: &[&str]) -> Vec<WorkerPod> {
        names.iter().map(|n| pod(n, PodLifecycle::Live)).collect()
    }

    fn assignment(entries: &[(&str, &[i32])]) -> Assignment {
        entries
            .iter()
            .map(|(pod, ps)| ((*pod).to_owned(), ps.to_vec()))
            .collect()
    }

    fn plan_for(
        previous: Option<&Plan>,
        last_epoch: u64,
        partitions: i32,
        pods: &[WorkerPod],
    ) -> Plan {
        let job = StreamJob::test("clicks");
        next_plan(&PlanInput {
            job: &job,
            namespace: "team-a",
            previous,
            last_epoch,
            partitions,
            pods,
        })
    }

    #[test]
    fn the_first_plan_is_epoch_one_and_spreads_partitions_evenly() {
        let plan = plan_for(None, 0, 4, &live(&["a", "b"]));
        assert_eq!(plan.epoch, 1);
        assert_eq!(
            plan.assignment,
            assignment(&[("a", &[0, 1]), ("b", &[2, 3])])
        );
        assert_eq!(plan.job.namespace, "team-a");
        assert_eq!(plan.job.name, "clicks");
    }

    #[test]
    fn an_unchanged_assignment_keeps_its_epoch() {
        let first = plan_for(None, 0, 4, &live(&["a", "b"]));
        let again = plan_for(Some(&first), 1, 4, &live(&["a", "b"]));
        assert_eq!(again.epoch, 1);
        assert_eq!(again, first);
    }

    #[test]
    fn a_job_without_pods_yet_stays_in_epoch_zero() {
        let plan = plan_for(None, 0, 4, &[]);
        assert_eq!(plan.epoch, 0);
        assert!(plan.assignment.is_empty());
        let first = plan_for(Some(&plan), 0, 4, &live(&["a"]));
        assert_eq!(first.epoch, 1);
    }

    #[test]
    fn a_lost_plan_continues_from_the_epoch_in_status() {
        let plan = plan_for(None, 7, 2, &live(&["a"]));
        assert_eq!(plan.epoch, 8);
    }

    #[test]
    fn a_terminating_pod_keeps_its_partitions_until_it_is_gone() {
        let first = plan_for(None, 0, 4, &live(&["a", "b"]));
        let pods = vec![
            pod("a", PodLifecycle::Live),
            pod("b", PodLifecycle::Terminating),
            pod("c", PodLifecycle::Live),
        ];
        let during = plan_for(Some(&first), 1, 4, &pods);
        assert_eq!(during.epoch, 1, "nothing moves while b drains");
        assert_eq!(during.assignment, first.assignment);

        let after = plan_for(Some(&during), 1, 4, &live(&["a", "c"]));
        assert_eq!(after.epoch, 2);
        assert_eq!(
            after.assignment,
            assignment(&[("a", &[0, 1]), ("c", &[2, 3])])
        );
    }

    #[test]
    fn a_finished_pod_loses_its_partitions_at_once() {
        let first = plan_for(None, 0, 2, &live(&["a", "b"]));
        let pods = vec![
            pod("a", PodLifecycle::Live),
            pod("b", PodLifecycle::Finished),
        ];
        let next = plan_for(Some(&first), 1, 2, &pods);
        assert_eq!(next.epoch, 2);
        assert_eq!(next.assignment, assignment(&[("a", &[0, 1])]));
    }

    #[test]
    fn new_partitions_of_the_topic_get_owners_in_a_new_epoch() {
        let first = plan_for(None, 0, 2, &live(&["a", "b"]));
        let grown = plan_for(Some(&first), 1, 4, &live(&["a", "b"]));
        assert_eq!(grown.epoch, 2);
        assert_eq!(
            grown.assignment,
            assignment(&[("a", &[0, 2]), ("b", &[1, 3])])
        );
    }

    #[test]
    fn unowned_partitions_go_to_live_pods_even_while_one_drains() {
        let previous = assignment(&[("a", &[0]), ("b", &[1])]);
        let pods = vec![
            pod("a", PodLifecycle::Live),
            pod("b", PodLifecycle::Terminating),
            pod("c", PodLifecycle::Live),
        ];
        let next = next_assignment(&previous, 4, &pods);
        assert_eq!(
            next,
            assignment(&[("a", &[0, 3]), ("b", &[1]), ("c", &[2])])
        );
    }

    #[test]
    fn with_no_pods_nothing_is_owned() {
        let first = plan_for(None, 0, 2, &live(&["a"]));
        let suspended = plan_for(Some(&first), 1, 2, &[]);
        assert_eq!(suspended.epoch, 2);
        assert!(suspended.assignment.is_empty());
    }
}
