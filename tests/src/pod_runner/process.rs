//! Local processes standing in for containers: finding the executable, spawning it in a
//! process group of its own with its log file, and signalling that group (I/O).

use std::{
    collections::BTreeMap,
    os::unix::process::ExitStatusExt as _,
    path::PathBuf,
    process::Stdio,
    time::{Duration, Instant},
};

use k8s_openapi::jiff::Timestamp;
use nix::{
    sys::signal::{Signal, killpg},
    unistd::Pid,
};
use tokio::process::{Child, Command};

/// Everything needed to start a container's process.
#[derive(Debug, Clone)]
pub struct Launch {
    /// The local executable.
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<String>,
    /// Its whole environment (nothing is inherited from the runner).
    pub env: BTreeMap<String, String>,
    /// Its working directory.
    pub working_dir: PathBuf,
    /// File that stdout and stderr are appended to.
    pub log: PathBuf,
}

/// How a process ended, in container terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    /// Exit code; 128 + signal number when killed by a signal, as container runtimes report.
    pub code: i32,
    /// The signal that killed it, if any.
    pub signal: Option<i32>,
}

/// Finds the local executable for a container's `command[0]` (or image, see `command_line`):
/// a `--bin` mapping, else the path itself when it exists here, else a `PATH` lookup for a
/// bare name.
pub fn resolve_program(
    name: &str,
    bins: &BTreeMap<String, PathBuf>,
    path_env: &str,
) -> Result<PathBuf, String> {
    if let Some(local) = bins.get(name) {
        return if local.is_file() {
            Ok(local.clone())
        } else {
            Err(format!(
                "--bin maps {name} to {}, which does not exist",
                local.display()
            ))
        };
    }
    let found = if name.contains('/') {
        Some(PathBuf::from(name)).filter(|p| p.is_file())
    } else {
        std::env::split_paths(path_env)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    };
    found.ok_or_else(|| {
        format!(
            "{name:?} is not mapped with --bin and does not exist on this machine \
             (streamjob-pod-runner runs local binaries, it pulls no images)"
        )
    })
}

/// A running container process, leader of its own process group.
#[derive(Debug)]
pub struct ContainerProcess {
    child: Child,
    pid: i32,
    /// When it started (for the container status).
    pub started_at: Timestamp,
    /// When it started (for backoff and probe timing).
    pub started: Instant,
}

impl ContainerProcess {
    /// Starts `launch` in a new process group, stdin closed, output appended to its log.
    pub fn spawn(launch: &Launch) -> std::io::Result<Self> {
        if let Some(dir) = launch.log.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&launch.log)?;
        let child = Command::new(&launch.program)
            .args(&launch.args)
            .env_clear()
            .envs(&launch.env)
            .current_dir(&launch.working_dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0)
            .spawn()?;
        let pid = child
            .id()
            .and_then(|id| i32::try_from(id).ok())
            .ok_or_else(|| std::io::Error::other("spawned process has no pid"))?;
        Ok(Self {
            child,
            pid,
            started_at: Timestamp::now(),
            started: Instant::now(),
        })
    }

    /// The process id (also its process group id).
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Waits for the process to exit (cancel-safe), then kills what is left of its group:
    /// when a container's main process ends, nothing else in the container survives it.
    pub async fn wait(&mut self) -> Exit {
        let status = self.child.wait().await;
        self.signal(Signal::SIGKILL);
        match status {
            Ok(status) => match (status.code(), status.signal()) {
                (Some(code), _) => Exit { code, signal: None },
                (None, Some(sig)) => Exit {
                    code: 128 + sig,
                    signal: Some(sig),
                },
                (None, None) => Exit {
                    code: 255,
                    signal: None,
                },
            },
            Err(error) => {
                tracing::warn!(pid = self.pid, %error, "cannot wait for the container process");
                Exit {
                    code: 255,
                    signal: None,
                }
            }
        }
    }

    /// SIGTERM to the group, up to `grace` for the process to exit, then SIGKILL.
    pub async fn stop(&mut self, grace: Duration) -> Exit {
        self.signal(Signal::SIGTERM);
        match tokio::time::timeout(grace, self.wait()).await {
            Ok(exit) => exit,
            Err(_) => {
                tracing::info!(
                    pid = self.pid,
                    ?grace,
                    "grace period over, killing the process group"
                );
                self.signal(Signal::SIGKILL);
                self.wait().await
            }
        }
    }

    fn signal(&self, signal: Signal) {
        match killpg(Pid::from_raw(self.pid), signal) {
            Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
            Err(error) => {
                tracing::warn!(pid = self.pid, %signal, %error, "cannot signal the process group")
            }
        }
    }
}
