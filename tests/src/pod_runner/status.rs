//! Pure: the Pod status that tells what the runner's process is doing, in kubelet's terms
//! (phase, conditions, container statuses).

use std::{collections::BTreeMap, net::Ipv4Addr};

use k8s_openapi::{
    api::core::v1::{
        ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting,
        ContainerStatus, HostIP, Pod, PodCondition, PodIP, PodStatus,
    },
    apimachinery::pkg::apis::meta::v1::Time,
    jiff::Timestamp,
};

/// The address reported as every pod's `hostIP`.
pub const HOST_IP: &str = "127.0.0.1";

/// What the runner's container (the pod's first) is doing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContainerPhase {
    /// Not running: being created, failed to start, or backing off before a restart.
    Waiting {
        /// Short kubelet-style reason (`ContainerCreating`, `CrashLoopBackOff`, ...).
        reason: String,
        /// Human sentence.
        message: Option<String>,
    },
    /// Its process runs.
    Running {
        /// Start time.
        started_at: Timestamp,
        /// Process id.
        pid: i32,
    },
    /// Its process ended and will not be restarted.
    Terminated(Termination),
}

/// How one run of the process ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Termination {
    /// Exit code (128 + signal when killed).
    pub exit_code: i32,
    /// Killing signal, if any.
    pub signal: Option<i32>,
    /// `Completed` for exit code 0, else `Error`.
    pub reason: String,
    /// Start of the run.
    pub started_at: Timestamp,
    /// End of the run.
    pub finished_at: Timestamp,
    /// Process id of the run.
    pub pid: i32,
}

/// The runner's record of the container, from which its status is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerRecord {
    /// Current state.
    pub state: ContainerPhase,
    /// How the previous run ended.
    pub last_termination: Option<Termination>,
    /// Number of restarts.
    pub restart_count: i32,
    /// Running and passing its readiness probe.
    pub ready: bool,
    /// Whether the process ever started.
    pub ever_started: bool,
}

impl ContainerRecord {
    /// A container not started yet.
    pub fn creating(restart_count: i32) -> Self {
        Self {
            state: ContainerPhase::Waiting {
                reason: "ContainerCreating".into(),
                message: None,
            },
            last_termination: None,
            restart_count,
            ready: false,
            ever_started: false,
        }
    }
}

/// Remembers when each pod condition last changed, for `lastTransitionTime`.
#[derive(Debug, Clone, Default)]
pub struct ConditionClock(BTreeMap<String, (bool, Timestamp)>);

impl ConditionClock {
    fn condition(
        &mut self,
        type_: &str,
        status: bool,
        reason: Option<&str>,
        message: Option<String>,
    ) -> PodCondition {
        let entry = self
            .0
            .entry(type_.to_owned())
            .or_insert((status, Timestamp::now()));
        if entry.0 != status {
            *entry = (status, Timestamp::now());
        }
        PodCondition {
            type_: type_.to_owned(),
            status: if status { "True" } else { "False" }.to_owned(),
            last_transition_time: Some(Time(entry.1)),
            reason: reason.map(str::to_owned),
            message,
            ..Default::default()
        }
    }
}

fn container_id(pid: i32) -> String {
    format!("streamjob-pod-runner://{pid}")
}

fn terminated(t: &Termination) -> ContainerState {
    ContainerState {
        terminated: Some(ContainerStateTerminated {
            exit_code: t.exit_code,
            signal: t.signal,
            reason: Some(t.reason.clone()),
            started_at: Some(Time(t.started_at)),
            finished_at: Some(Time(t.finished_at)),
            container_id: Some(container_id(t.pid)),
            message: None,
        }),
        ..Default::default()
    }
}

/// The pod's status: `record` for its first container, the others reported as not run.
pub fn pod_status(
    pod: &Pod,
    record: &ContainerRecord,
    pod_ip: Option<Ipv4Addr>,
    start_time: Timestamp,
    clock: &mut ConditionClock,
) -> PodStatus {
    let containers = pod
        .spec
        .as_ref()
        .map(|s| s.containers.as_slice())
        .unwrap_or_default();
    let statuses: Vec<ContainerStatus> = containers
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let mut status = ContainerStatus {
                name: c.name.clone(),
                image: c.image.clone().unwrap_or_default(),
                started: Some(false),
                ..Default::default()
            };
            if i > 0 {
                status.state = Some(waiting(
                    "NotSupported",
                    Some("streamjob-pod-runner runs only a pod's first container"),
                ));
                return status;
            }
            status.ready = record.ready;
            status.restart_count = record.restart_count;
            status.last_state = record.last_termination.as_ref().map(terminated);
            status.state = Some(match &record.state {
                ContainerPhase::Waiting { reason, message } => waiting(reason, message.as_deref()),
                ContainerPhase::Running { started_at, pid } => {
                    status.started = Some(true);
                    status.container_id = Some(container_id(*pid));
                    ContainerState {
                        running: Some(ContainerStateRunning {
                            started_at: Some(Time(*started_at)),
                        }),
                        ..Default::default()
                    }
                }
                ContainerPhase::Terminated(t) => {
                    status.container_id = Some(container_id(t.pid));
                    terminated(t)
                }
            });
            status
        })
        .collect();

    let phase = match &record.state {
        ContainerPhase::Terminated(t) if t.exit_code == 0 => "Succeeded",
        ContainerPhase::Terminated(_) => "Failed",
        _ if record.ever_started => "Running",
        _ => "Pending",
    };
    let unready: Vec<&str> = statuses
        .iter()
        .filter(|s| !s.ready)
        .map(|s| s.name.as_str())
        .collect();
    let ready = unready.is_empty() && !statuses.is_empty();
    let (reason, message) = if ready {
        (None, None)
    } else if phase == "Succeeded" || phase == "Failed" {
        (Some("PodCompleted"), None)
    } else {
        (
            Some("ContainersNotReady"),
            Some(format!(
                "containers with unready status: [{}]",
                unready.join(" ")
            )),
        )
    };
    let conditions = vec![
        clock.condition("PodScheduled", true, None, None),
        clock.condition("Initialized", true, None, None),
        clock.condition("ContainersReady", ready, reason, message.clone()),
        clock.condition("Ready", ready, reason, message),
    ];
    let ip = pod_ip.map(|ip| ip.to_string());
    PodStatus {
        phase: Some(phase.into()),
        conditions: Some(conditions),
        container_statuses: Some(statuses),
        host_ip: Some(HOST_IP.into()),
        host_ips: Some(vec![HostIP { ip: HOST_IP.into() }]),
        pod_ip: ip.clone(),
        pod_ips: ip.map(|ip| vec![PodIP { ip }]),
        start_time: Some(Time(start_time)),
        qos_class: pod.status.as_ref().and_then(|s| s.qos_class.clone()),
        observed_generation: pod.metadata.generation,
        ..Default::default()
    }
}

fn waiting(reason: &str, message: Option<&str>) -> ContainerState {
    ContainerState {
        waiting: Some(ContainerStateWaiting {
            reason: Some(reason.to_owned()),
            message: message.map(str::to_owned),
        }),
        ..Default::default()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn pod() -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p"},
            "spec": {"containers": [{"name": "worker", "image": "w"}]}
        }))
        .unwrap()
    }

    fn condition(status: &PodStatus, type_: &str) -> String {
        let conditions = status.conditions.as_ref().unwrap();
        conditions
            .iter()
            .find(|c| c.type_ == type_)
            .unwrap()
            .status
            .clone()
    }

    #[test]
    fn a_ready_running_container_makes_a_ready_running_pod() {
        let mut record = ContainerRecord::creating(0);
        let mut clock = ConditionClock::default();
        let ip = Some(Ipv4Addr::new(127, 0, 0, 2));
        let pending = pod_status(&pod(), &record, ip, Timestamp::now(), &mut clock);
        assert_eq!(pending.phase.as_deref(), Some("Pending"));
        assert_eq!(condition(&pending, "Ready"), "False");

        record.state = ContainerPhase::Running {
            started_at: Timestamp::now(),
            pid: 42,
        };
        record.ever_started = true;
        record.ready = true;
        let running = pod_status(&pod(), &record, ip, Timestamp::now(), &mut clock);
        assert_eq!(running.phase.as_deref(), Some("Running"));
        assert_eq!(condition(&running, "Ready"), "True");
        assert_eq!(condition(&running, "ContainersReady"), "True");
        assert_eq!(running.pod_ip.as_deref(), Some("127.0.0.2"));
    }

    #[test]
    fn a_crash_looping_container_keeps_the_pod_running_but_unready() {
        let now = Timestamp::now();
        let crash = Termination {
            exit_code: 3,
            signal: None,
            reason: "Error".into(),
            started_at: now,
            finished_at: now,
            pid: 7,
        };
        let record = ContainerRecord {
            state: ContainerPhase::Waiting {
                reason: "CrashLoopBackOff".into(),
                message: None,
            },
            last_termination: Some(crash),
            restart_count: 2,
            ready: false,
            ever_started: true,
        };
        let status = pod_status(&pod(), &record, None, now, &mut ConditionClock::default());
        assert_eq!(status.phase.as_deref(), Some("Running"));
        assert_eq!(condition(&status, "Ready"), "False");
        let container = &status.container_statuses.unwrap()[0];
        assert_eq!(container.restart_count, 2);
        let last = container
            .last_state
            .as_ref()
            .unwrap()
            .terminated
            .as_ref()
            .unwrap();
        assert_eq!(last.exit_code, 3);
    }
}
