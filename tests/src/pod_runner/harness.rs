//! Starting `streamjob-pod-runner` from tests: one runner per test, with its own node name,
//! selector label, pod IP range and state directory, so tests running at once never share pods.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU8, Ordering},
    time::Duration,
};

use crate::{terminate_child, unique_name, workspace_bin};

/// Label key by which a test's pods are picked up by that test's runner.
pub const TEST_RUNNER_LABEL: &str = "streamjob.dev/test-pod-runner";

/// Path of the runner binary built by `cargo build --workspace --bins`.
pub fn pod_runner_bin() -> PathBuf {
    workspace_bin("streamjob-pod-runner")
}

/// A running `streamjob-pod-runner`, stopped with SIGTERM (which stops its pods' processes)
/// when dropped.
pub struct PodRunner {
    child: Child,
    args: Vec<String>,
    /// Its node's name.
    pub node: String,
    /// The value of [`TEST_RUNNER_LABEL`] it selects.
    pub label_value: String,
    /// Its state directory (pod directories, its own log in `runner.log`).
    pub state_dir: PathBuf,
}

impl PodRunner {
    /// Starts a runner with fresh names; `bins` are its `--bin CONTAINER_PATH=LOCAL_PATH` mappings.
    /// It binds pods carrying [`Self::pod_labels`].
    pub fn start(bins: &[(&str, &str)]) -> Self {
        let label_value = unique_name("node");
        let selector = format!("{TEST_RUNNER_LABEL}={label_value}");
        Self::start_with(bins, label_value, &selector, None)
    }

    /// Starts a runner that binds the pods the operator makes (`selector`
    /// [`super::DEFAULT_SELECTOR`]) in `namespace` only, so tests running at once never
    /// share pods.
    pub fn for_namespace(namespace: &str, bins: &[(&str, &str)]) -> Self {
        let node = unique_name("node");
        Self::start_with(bins, node, super::DEFAULT_SELECTOR, Some(namespace))
    }

    fn start_with(
        bins: &[(&str, &str)],
        node: String,
        selector: &str,
        namespace: Option<&str>,
    ) -> Self {
        // A /24 per runner: the second octet from the test process, the third counted.
        static NEXT_RANGE: AtomicU8 = AtomicU8::new(0);
        let range = NEXT_RANGE.fetch_add(1, Ordering::Relaxed);
        let pod_cidr = format!("127.{}.{range}.0/24", 1 + std::process::id() % 250);
        let label_value = node.clone();
        let state_dir = std::env::temp_dir().join(unique_name("streamjob-pod-runner"));
        std::fs::create_dir_all(&state_dir).expect("can create the runner's state dir");
        let mut args = vec![
            format!("--node={node}"),
            format!("--selector={selector}"),
            format!("--pod-cidr={pod_cidr}"),
            format!("--state-dir={}", state_dir.display()),
        ];
        if let Some(namespace) = namespace {
            args.push(format!("--namespace={namespace}"));
        }
        for (container_path, local) in bins {
            args.push(format!("--bin={container_path}={local}"));
        }
        Self {
            child: spawn(&args, &state_dir),
            args,
            node,
            label_value,
            state_dir,
        }
    }

    /// Stops the runner (SIGTERM, so it stops its processes and leaves its pods) and starts
    /// it again with the same arguments, as after a crash of a kubelet.
    pub fn restart(&mut self) {
        self.stop();
        self.child = spawn(&self.args, &self.state_dir);
    }

    fn stop(&mut self) {
        terminate_child(&mut self.child, Duration::from_secs(20));
    }

    /// The labels a pod template needs to be run by this runner.
    pub fn pod_labels(&self) -> BTreeMap<String, String> {
        BTreeMap::from([(TEST_RUNNER_LABEL.to_owned(), self.label_value.clone())])
    }

    /// The directory of pod `namespace/name` (its `container.log`, volumes, home).
    pub fn pod_dir(&self, namespace: &str, name: &str) -> PathBuf {
        super::pod_dir(&self.state_dir, namespace, name)
    }

    /// The runner's own log so far, for assertion messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.state_dir.join("runner.log")).unwrap_or_default()
    }
}

impl Drop for PodRunner {
    /// Stops the runner (which stops its processes), then removes what a dead node leaves
    /// behind: its pods would otherwise wait forever for a kubelet to finish their deletion,
    /// and keep their namespace `Terminating`.
    fn drop(&mut self) {
        self.stop();
        let on_node = format!("spec.nodeName={}", self.node);
        let _ = Command::new("kubectl")
            .args([
                "delete",
                "pods",
                "--all-namespaces",
                "--field-selector",
                &on_node,
            ])
            .args(["--grace-period=0", "--force", "--wait=false"])
            .output();
        let _ = Command::new("kubectl")
            .args(["delete", "node", &self.node, "--wait=false"])
            .output();
    }
}

/// Starts the runner binary with its log appended to `runner.log` in its state directory.
fn spawn(args: &[String], state_dir: &Path) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(state_dir.join("runner.log"))
        .expect("can open the runner log");
    Command::new(pod_runner_bin())
        .args(args)
        .env("RUST_LOG", "info,streamjob_tests=debug")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("the pod runner starts")
}
