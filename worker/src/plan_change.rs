//! What a new plan means for the engine run in progress (pure): keep it, hand partitions
//! over inside it, or restart it.

use std::fmt;

use streamjob_api::StreamJobSpec;

use crate::plan::Plan;

/// What a new plan means for the run in progress.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PlanChange {
    /// This pod's work is the same: the run goes on under the new plan.
    Keep,
    /// The next epoch moves this pod's partitions or orders a savepoint: the run goes on,
    /// and only the partitions that move pause.
    Handover(Handover),
    /// The run stops (final checkpoint) and a new one starts with the new plan.
    Restart(RestartReason),
}

/// What the next epoch changes for one pod whose run goes on.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Handover {
    /// Partitions it runs now and keeps running.
    pub keep: Vec<i32>,
    /// Partitions it runs now and stops.
    pub lose: Vec<i32>,
    /// Partitions it starts.
    pub gain: Vec<i32>,
    /// The savepoint every partition it runs now is first written to.
    pub savepoint: Option<String>,
}

impl Handover {
    /// From running `running` to owning `owned` (both sorted), writing `savepoint` first.
    pub fn between(running: &[i32], owned: &[i32], savepoint: Option<String>) -> Self {
        let (keep, lose) = running.iter().partition(|p| owned.contains(p));
        Self {
            keep,
            lose,
            gain: owned
                .iter()
                .filter(|p| !running.contains(p))
                .copied()
                .collect(),
            savepoint,
        }
    }
}

/// Why a new plan restarts the run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RestartReason {
    /// This pod owns other partitions without a new epoch, or starts its first ones.
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

/// Decides what `pod`, which runs `current`, does for `next`.
pub fn plan_change(current: &Plan, next: &Plan, pod: &str) -> PlanChange {
    let (running, owned) = (current.partitions_of(pod), next.partitions_of(pod));
    let next_epoch = next.epoch == current.epoch.saturating_add(1);
    if !same_processing(&current.spec, &next.spec) {
        PlanChange::Restart(RestartReason::Processing)
    } else if next.epoch > current.epoch.saturating_add(1) {
        PlanChange::Restart(RestartReason::SkippedEpochs)
    } else if running.is_empty() {
        // Nothing runs, so there is nothing to snapshot or keep: a new run restores its gains.
        if owned.is_empty() {
            PlanChange::Keep
        } else {
            PlanChange::Restart(RestartReason::Partitions)
        }
    } else if next_epoch && (running != owned || next.savepoint.is_some()) {
        let savepoint = next.savepoint.as_ref().map(|order| order.id.clone());
        PlanChange::Handover(Handover::between(&running, &owned, savepoint))
    } else if running != owned {
        // Partitions change owner only with a new epoch (the fence needs it); a plan that
        // moves them within one gets the old behaviour.
        PlanChange::Restart(RestartReason::Partitions)
    } else {
        PlanChange::Keep
    }
}

/// Whether two specs process records the same way (parallelism, image, resources and the
/// like only matter to the operator).
pub fn same_processing(a: &StreamJobSpec, b: &StreamJobSpec) -> bool {
    a.source == b.source
        && a.pipeline == b.pipeline
        && a.sink == b.sink
        && a.dead_letter == b.dead_letter
        && a.checkpoint == b.checkpoint
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::SavepointOrder;

    /// Epoch 4: pod `a` owns 0 and 1, pod `b` owns 2 and 3.
    fn plan() -> Plan {
        serde_yaml::from_str(&crate::plan_watch::test_plans::yaml("team-a", "clicks", 4)).unwrap()
    }

    fn next_epoch(edit: impl FnOnce(&mut Plan)) -> Plan {
        let mut next = plan();
        next.epoch += 1;
        edit(&mut next);
        next
    }

    fn order(id: &str) -> Option<SavepointOrder> {
        Some(SavepointOrder { id: id.into() })
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
    fn the_next_epoch_moving_partitions_hands_them_over_inside_the_run() {
        let next = next_epoch(|p| {
            p.assignment.insert("a".into(), vec![0]);
            p.assignment.insert("b".into(), vec![1, 2, 3]);
        });
        assert_eq!(
            plan_change(&plan(), &next, "a"),
            PlanChange::Handover(Handover {
                keep: vec![0],
                lose: vec![1],
                gain: vec![],
                savepoint: None,
            })
        );
        assert_eq!(
            plan_change(&plan(), &next, "b"),
            PlanChange::Handover(Handover {
                keep: vec![2, 3],
                lose: vec![],
                gain: vec![1],
                savepoint: None,
            })
        );
    }

    #[test]
    fn a_savepoint_order_hands_over_even_when_no_partition_moves() {
        let next = next_epoch(|p| p.savepoint = order("e5-rescale"));
        assert_eq!(
            plan_change(&plan(), &next, "a"),
            PlanChange::Handover(Handover {
                keep: vec![0, 1],
                savepoint: Some("e5-rescale".into()),
                ..Handover::default()
            })
        );
    }

    #[test]
    fn a_savepoint_order_seen_again_in_the_same_epoch_is_not_written_twice() {
        let current = next_epoch(|p| p.savepoint = order("e5-rescale"));
        let again = next_epoch(|p| p.savepoint = order("e5-rescale"));
        assert_eq!(plan_change(&current, &again, "a"), PlanChange::Keep);
    }

    #[test]
    fn scaling_in_moves_every_partition_of_the_leaving_pod() {
        let next = next_epoch(|p| {
            p.assignment = [("a".to_owned(), vec![0, 1, 2, 3])].into();
            p.savepoint = order("e5-rescale");
        });
        let savepoint = Some("e5-rescale".to_owned());
        assert_eq!(
            plan_change(&plan(), &next, "b"),
            PlanChange::Handover(Handover {
                lose: vec![2, 3],
                savepoint: savepoint.clone(),
                ..Handover::default()
            })
        );
        assert_eq!(
            plan_change(&plan(), &next, "a"),
            PlanChange::Handover(Handover {
                keep: vec![0, 1],
                gain: vec![2, 3],
                lose: vec![],
                savepoint,
            })
        );
    }

    #[test]
    fn other_partitions_in_the_same_epoch_restart_the_run() {
        let mut same_epoch = plan();
        same_epoch.assignment.insert("a".into(), vec![0]);
        same_epoch.assignment.insert("b".into(), vec![1, 2, 3]);
        let restart = PlanChange::Restart(RestartReason::Partitions);
        assert_eq!(plan_change(&plan(), &same_epoch, "a"), restart);
        assert_eq!(plan_change(&plan(), &same_epoch, "b"), restart);
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
            next.epoch += 1;
            next.savepoint = order("e5-upgrade");
            assert_eq!(
                plan_change(&plan(), &next, "a"),
                PlanChange::Restart(RestartReason::Processing),
                "a handover never changes the processing"
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
        next.assignment.insert("a".into(), vec![0]);
        next.savepoint = order("e6-rescale");
        assert_eq!(
            plan_change(&plan(), &next, "a"),
            PlanChange::Restart(RestartReason::SkippedEpochs)
        );
    }

    #[test]
    fn a_pod_without_partitions_keeps_idling_and_restarts_when_it_gets_some() {
        let idle = next_epoch(|p| p.savepoint = order("e5-rescale"));
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
