//! One pod on the node (I/O): prepares and runs its first container as a local process,
//! probes and restarts it, writes its status, and finishes its deletion.

use std::{
    net::Ipv4Addr,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use k8s_openapi::{
    api::core::v1::{Container, ContainerState, Pod, PodStatus},
    jiff::Timestamp,
};
use kube::{
    Api,
    api::{DeleteParams, Patch, PatchParams, Preconditions},
};
use tokio::{sync::watch, task::JoinHandle};
use tracing::Instrument as _;

use super::{
    MANAGER, RunnerContext,
    objects::PodObjects,
    pod_dir,
    probe::ProbeRunner,
    process::{ContainerProcess, Exit},
    setup::{self, StartFailure, pod_with_addresses},
    status::{self, ConditionClock, ContainerPhase, ContainerRecord, Termination},
    volumes,
};

/// kubelet's crash-loop backoff: 10 s, doubling, at most 5 min, reset after 10 min of running.
const INITIAL_BACKOFF: Duration = Duration::from_secs(10);
const MAX_BACKOFF: Duration = Duration::from_secs(300);
const BACKOFF_RESET: Duration = Duration::from_secs(600);
/// Retry delay when a Secret, ConfigMap or volume is missing (no backoff, as kubelet's sync).
const CONFIG_RETRY: Duration = Duration::from_secs(5);
/// Longest wait for a process when the runner itself shuts down.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
const TICK: Duration = Duration::from_millis(500);

/// The runner's side of one pod.
pub struct PodWorker {
    ctx: Arc<RunnerContext>,
    pod: Pod,
    api: Api<Pod>,
    name: String,
    dir: PathBuf,
    ip: Option<Ipv4Addr>,
    record: ContainerRecord,
    process: Option<ContainerProcess>,
    readiness: Option<ProbeRunner>,
    liveness: Option<ProbeRunner>,
    next_start: Option<Instant>,
    backoff: Duration,
    token_refresh_at: Option<Instant>,
    start_time: Timestamp,
    clock: ConditionClock,
    written: Option<PodStatus>,
    status_retry_at: Instant,
}

impl PodWorker {
    /// Starts the worker of `pod`; it ends once the pod is deleted or gone, or at `stop`.
    pub fn spawn(
        ctx: Arc<RunnerContext>,
        pod: Pod,
        updates: watch::Receiver<Option<Pod>>,
        stop: watch::Receiver<bool>,
    ) -> JoinHandle<()> {
        let namespace = pod.metadata.namespace.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        let previous = pod
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref()?.first().cloned());
        // An adopted pod (the runner restarted) keeps its counts: its old process is gone,
        // so starting it again is a restart.
        let mut record =
            ContainerRecord::creating(previous.as_ref().map_or(0, |c| c.restart_count));
        let ran = |s: Option<ContainerState>| {
            s.is_some_and(|s| s.running.is_some() || s.terminated.is_some())
        };
        record.ever_started = previous.is_some_and(|c| {
            c.restart_count > 0 || c.started == Some(true) || ran(c.state) || ran(c.last_state)
        });
        let worker = Self {
            api: Api::namespaced(ctx.client.clone(), &namespace),
            dir: pod_dir(&ctx.config.state_dir, &namespace, &name),
            start_time: pod
                .status
                .as_ref()
                .and_then(|s| s.start_time.as_ref())
                .map_or_else(Timestamp::now, |t| t.0),
            ctx,
            pod,
            name: name.clone(),
            ip: None,
            record,
            process: None,
            readiness: None,
            liveness: None,
            next_start: Some(Instant::now()),
            backoff: INITIAL_BACKOFF,
            token_refresh_at: None,
            clock: ConditionClock::default(),
            written: None,
            status_retry_at: Instant::now(),
        };
        let span = tracing::info_span!("pod", namespace, pod = name);
        tokio::spawn(worker.run(updates, stop).instrument(span))
    }

    async fn run(
        mut self,
        mut updates: watch::Receiver<Option<Pod>>,
        mut stop: watch::Receiver<bool>,
    ) {
        // One clock for probes, so a stream of pod updates cannot starve them.
        let mut ticks = tokio::time::interval(TICK);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if self.pod.metadata.deletion_timestamp.is_some() {
                self.finish_deletion().await;
                break;
            }
            if self.process.is_none() && self.next_start.is_some_and(|at| Instant::now() >= at) {
                self.start().await;
            }
            self.write_status().await;
            tokio::select! {
                changed = updates.changed() => {
                    let current = if changed.is_ok() { updates.borrow_and_update().clone() } else { None };
                    match current {
                        Some(pod) => self.pod = pod,
                        None => {
                            tracing::info!("pod object is gone; killing its process");
                            self.stop_process(Duration::from_secs(2)).await;
                            break;
                        }
                    }
                }
                _ = stop.changed() => {
                    self.stop_process(self.grace_period().min(SHUTDOWN_GRACE)).await;
                    break;
                }
                exit = wait_for_exit(&mut self.process) => self.on_exit(exit),
                _ = ticks.tick() => self.tick().await,
            }
        }
        if let (Some(ip), Ok(mut pool)) = (self.ip, self.ctx.ip_pool.lock()) {
            pool.release(ip);
        }
    }

    fn container(&self) -> Option<&Container> {
        self.pod.spec.as_ref()?.containers.first()
    }

    /// The deletion's grace period, else the pod's `terminationGracePeriodSeconds`, else 30 s.
    fn grace_period(&self) -> Duration {
        let seconds = self.pod.metadata.deletion_grace_period_seconds.or_else(|| {
            self.pod
                .spec
                .as_ref()
                .and_then(|s| s.termination_grace_period_seconds)
        });
        Duration::from_secs(seconds.unwrap_or(30).max(0) as u64)
    }

    async fn start(&mut self) {
        let Some(container) = self.container().cloned() else {
            let message = "the pod has no containers".to_owned();
            return self.cannot_start(StartFailure {
                reason: "InvalidPod",
                message,
                backoff: false,
            });
        };
        let ip = match self.allocate_ip() {
            Ok(ip) => ip,
            Err(failure) => return self.cannot_start(failure),
        };
        let pod = pod_with_addresses(&self.pod, ip);
        let launch = match setup::prepare(&self.ctx, &pod, &container, &self.dir).await {
            Ok(prepared) => {
                self.token_refresh_at = prepared.token_refresh.map(|after| Instant::now() + after);
                prepared.launch
            }
            Err(failure) => return self.cannot_start(failure),
        };
        let process = match ContainerProcess::spawn(&launch) {
            Ok(process) => process,
            Err(error) => {
                let message = format!("cannot run {}: {error}", launch.program.display());
                return self.cannot_start(StartFailure {
                    reason: "RunContainerError",
                    message,
                    backoff: true,
                });
            }
        };
        if self.record.ever_started {
            self.record.restart_count += 1;
        }
        self.record.ever_started = true;
        self.record.state = ContainerPhase::Running {
            started_at: process.started_at,
            pid: process.pid(),
        };
        let ip = ip.to_string();
        self.readiness = container.readiness_probe.as_ref().map(|probe| {
            ProbeRunner::new("readiness", probe, &container, &ip, process.started, false)
        });
        self.liveness = container.liveness_probe.as_ref().map(|probe| {
            ProbeRunner::new("liveness", probe, &container, &ip, process.started, true)
        });
        if container.startup_probe.is_some() {
            tracing::warn!("startupProbe is not run; the container counts as started at once");
        }
        self.record.ready = self.readiness.is_none();
        tracing::info!(
            pid = process.pid(),
            program = %launch.program.display(),
            ip,
            restarts = self.record.restart_count,
            "container process started"
        );
        self.process = Some(process);
        self.next_start = None;
    }

    fn cannot_start(&mut self, failure: StartFailure) {
        let delay = if failure.backoff {
            self.next_backoff()
        } else {
            CONFIG_RETRY
        };
        tracing::warn!(reason = failure.reason, message = failure.message, retry_in = ?delay, "container cannot start");
        self.record.state = ContainerPhase::Waiting {
            reason: failure.reason.into(),
            message: Some(failure.message),
        };
        self.next_start = Some(Instant::now() + delay);
    }

    fn next_backoff(&mut self) -> Duration {
        let delay = self.backoff;
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
        delay
    }

    /// The pod's IP: the one it had (an adopted pod keeps it) when free, else a new one.
    fn allocate_ip(&mut self) -> Result<Ipv4Addr, StartFailure> {
        if self.ip.is_none() {
            let status = self.pod.status.as_ref();
            let preferred = status.and_then(|s| s.pod_ip.as_deref()?.parse().ok());
            let mut pool = self.ctx.ip_pool.lock().ok();
            self.ip = pool.as_mut().and_then(|pool| pool.allocate(preferred));
        }
        self.ip.ok_or_else(|| StartFailure {
            reason: "ContainerCreating",
            message: format!("no free pod IP left in {}", self.ctx.config.pod_cidr),
            backoff: false,
        })
    }

    /// Probes, and token refresh, while the process runs.
    async fn tick(&mut self) {
        if self.process.is_none() {
            return;
        }
        if let Some(liveness) = self.liveness.as_mut()
            && !liveness.tick().await
        {
            tracing::info!("liveness probe failed; restarting the container");
            let grace = self
                .container()
                .and_then(|c| c.liveness_probe.as_ref()?.termination_grace_period_seconds)
                .map_or_else(
                    || self.grace_period(),
                    |s| Duration::from_secs(s.max(0) as u64),
                );
            if let Some(process) = self.process.as_mut() {
                let exit = process.stop(grace).await;
                self.on_exit(exit);
            }
            return;
        }
        if let Some(readiness) = self.readiness.as_mut() {
            let ready = readiness.tick().await;
            if ready != self.record.ready {
                tracing::info!(ready, "readiness changed");
            }
            self.record.ready = ready;
        }
        if self.token_refresh_at.is_some_and(|at| Instant::now() >= at) {
            self.refresh_volumes().await;
        }
    }

    /// Rewrites the volumes with fresh tokens (and current Secrets and ConfigMaps).
    async fn refresh_volumes(&mut self) {
        let Some(ip) = self.ip else {
            return;
        };
        let pod = pod_with_addresses(&self.pod, ip);
        let result = match PodObjects::fetch(&self.ctx.client, &pod).await {
            Ok(objects) => volumes::materialise(&self.ctx.client, &pod, &objects, &self.dir)
                .await
                .map_err(|e| e.0),
            Err(e) => Err(e.to_string()),
        };
        match result {
            Ok(refresh) => {
                tracing::info!("service-account tokens refreshed");
                self.token_refresh_at = refresh.map(|after| Instant::now() + after);
            }
            Err(error) => {
                tracing::warn!(error, "refreshing the pod's volumes failed; retrying");
                self.token_refresh_at = Some(Instant::now() + CONFIG_RETRY * 6);
            }
        }
    }

    /// Records how the process ended and schedules its restart per `restartPolicy`.
    fn on_exit(&mut self, exit: Exit) {
        let Some(process) = self.process.take() else {
            return;
        };
        self.readiness = None;
        self.liveness = None;
        self.record.ready = false;
        let termination = Termination {
            exit_code: exit.code,
            signal: exit.signal,
            reason: if exit.code == 0 { "Completed" } else { "Error" }.into(),
            started_at: process.started_at,
            finished_at: Timestamp::now(),
            pid: process.pid(),
        };
        let policy = self
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.restart_policy.as_deref());
        let restart = match policy {
            Some("Never") => false,
            Some("OnFailure") => exit.code != 0,
            _ => true,
        };
        tracing::info!(
            exit_code = exit.code,
            signal = exit.signal,
            restart,
            "container process exited"
        );
        if !restart {
            self.record.state = ContainerPhase::Terminated(termination);
            self.next_start = None;
            return;
        }
        if process.started.elapsed() >= BACKOFF_RESET {
            self.backoff = INITIAL_BACKOFF;
        }
        let delay = self.next_backoff();
        let container = self.container().map(|c| c.name.clone()).unwrap_or_default();
        self.record.last_termination = Some(termination);
        self.record.state = ContainerPhase::Waiting {
            reason: "CrashLoopBackOff".into(),
            message: Some(format!(
                "back-off {}s restarting failed container={container} pod={}",
                delay.as_secs(),
                self.name
            )),
        };
        self.next_start = Some(Instant::now() + delay);
    }

    async fn stop_process(&mut self, grace: Duration) {
        if let Some(mut process) = self.process.take() {
            tracing::info!(
                pid = process.pid(),
                ?grace,
                "stopping the container process"
            );
            let exit = process.stop(grace).await;
            tracing::info!(exit_code = exit.code, "container process stopped");
        }
    }

    /// kubelet's part of a deletion: stop the process within the grace period, then remove
    /// the object for good (grace period 0), and the pod's volumes with it.
    async fn finish_deletion(&mut self) {
        self.stop_process(self.grace_period()).await;
        let params = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: self.pod.metadata.uid.clone(),
                resource_version: None,
            }),
            ..Default::default()
        };
        for attempt in 1..=30u32 {
            match self.api.delete(&self.name, &params).await {
                Ok(_) => {
                    tracing::info!("pod deleted");
                    break;
                }
                // Gone already, or a new pod of the same name (uid precondition).
                Err(kube::Error::Api(status)) if matches!(status.code, 404 | 409) => break,
                Err(error) => {
                    tracing::warn!(attempt, %error, "deleting the pod failed; retrying");
                    tokio::time::sleep(Duration::from_secs(2)).await;
                }
            }
        }
        if let Err(error) = std::fs::remove_dir_all(self.dir.join("volumes"))
            && error.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(%error, "cannot remove the pod's volumes");
        }
    }

    /// Writes the status when it changed (server-side apply on `pods/status`).
    async fn write_status(&mut self) {
        if Instant::now() < self.status_retry_at {
            return;
        }
        let status = status::pod_status(
            &self.pod,
            &self.record,
            self.ip,
            self.start_time,
            &mut self.clock,
        );
        if self.written.as_ref() == Some(&status) {
            return;
        }
        let patch = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": { "name": self.name },
            "status": status,
        });
        let params = PatchParams::apply(MANAGER).force();
        match self
            .api
            .patch_status(&self.name, &params, &Patch::Apply(patch))
            .await
        {
            Ok(_) => self.written = Some(status),
            Err(error) => {
                tracing::warn!(%error, "writing the pod status failed; retrying");
                self.status_retry_at = Instant::now() + Duration::from_secs(2);
            }
        }
    }
}

/// The exit of the process, if there is one (never completes otherwise).
async fn wait_for_exit(process: &mut Option<ContainerProcess>) -> Exit {
    match process {
        Some(process) => process.wait().await,
        None => std::future::pending().await,
    }
}
