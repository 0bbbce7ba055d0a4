//! Shared helpers for the end-to-end tests, which run against the real local stack
//! (`tests/stack/stack up`): kube-apiserver, Kafka, an S3 server, kubectl and helm.
//!
//! Tests fail, never skip, when the stack is missing: run them through `scripts/test`.

pub mod operator;
pub mod plan_home;
pub mod pod_runner;
pub mod reference;
pub mod scenario;
pub mod worker;

use std::{
    future::Future,
    path::PathBuf,
    process::{Command, Output},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::{
    Api, Client,
    api::{Patch, PatchParams},
};

/// Field manager of the tests' own server-side applies.
pub const TEST_MANAGER: &str = "streamjob-tests";

/// Where the local stack's services are, read from the environment that
/// `tests/stack/stack env` prints.
#[derive(Clone, Debug)]
pub struct StackEnv {
    /// Kafka bootstrap servers.
    pub kafka_bootstrap: String,
    /// S3 endpoint URL.
    pub s3_endpoint: String,
    /// Bucket created by the stack.
    pub s3_bucket: String,
}

/// Reads the stack's environment, failing with instructions when it is missing.
pub fn stack_env() -> StackEnv {
    let var = |name: &str| {
        std::env::var(name).unwrap_or_else(|_| {
            panic!(
                "{name} is not set: these tests need the local stack. Run them with \
                 `scripts/test`, or `tests/stack/stack up && eval \"$(tests/stack/stack env)\"` \
                 before `cargo test`."
            )
        })
    };
    // KUBECONFIG is read by kube and kubectl; checking it here gives the same clear message.
    var("KUBECONFIG");
    StackEnv {
        kafka_bootstrap: var("STREAMJOB_KAFKA_BOOTSTRAP"),
        s3_endpoint: var("AWS_ENDPOINT"),
        s3_bucket: var("STREAMJOB_S3_BUCKET"),
    }
}

/// The repository root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate lives one level below the repository root")
        .to_path_buf()
}

/// Path of a binary of this workspace built by `cargo build --workspace --bins` (which
/// `scripts/test` runs before the tests).
pub fn workspace_bin(name: &str) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target"));
    // Benchmarks run the release builds: STREAMJOB_PROFILE=release.
    let profile = std::env::var("STREAMJOB_PROFILE").unwrap_or_else(|_| "debug".to_owned());
    let bin = target.join(profile).join(name);
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build --workspace --bins` first",
        bin.display()
    );
    bin
}

/// Stops `child` with SIGTERM, waits up to `grace` for it to exit, then SIGKILLs it.
pub fn terminate_child(child: &mut std::process::Child, grace: Duration) {
    if let Ok(pid) = i32::try_from(child.id()) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline && !matches!(child.try_wait(), Ok(Some(_))) {
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// A name unique to this test process, for namespaces, topics and releases.
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}-{}-{n}", std::process::id())
}

/// A client for the local apiserver (from `KUBECONFIG`).
pub async fn kube_client() -> Client {
    stack_env();
    Client::try_default()
        .await
        .expect("cannot build a client from KUBECONFIG")
}

/// Runs a command of the stack (kubectl, helm, ...) and returns its output.
pub fn run(program: &str, args: &[&str]) -> Output {
    stack_env();
    Command::new(program)
        .args(args)
        .current_dir(repo_root())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e} (is the stack's bin dir on PATH?)"))
}

/// Runs a command that must succeed; returns its stdout.
pub fn run_ok(program: &str, args: &[&str]) -> String {
    let out = run(program, args);
    assert!(
        out.status.success(),
        "`{program} {}` failed ({}):\nstdout: {}\nstderr: {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Polls `check` until it returns `Some`, or panics naming `what` after `timeout`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Server-side applies the committed StreamJob CRD and waits until it is established.
pub async fn ensure_crd(client: &Client) {
    let path = repo_root().join("crds/streamjob.yaml");
    let yaml = std::fs::read_to_string(&path).expect("crds/streamjob.yaml is readable");
    let crd: CustomResourceDefinition = serde_yaml::from_str(&yaml).expect("CRD YAML parses");
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let name = crd.metadata.name.clone().expect("CRD has a name");
    api.patch(
        &name,
        &PatchParams::apply(TEST_MANAGER).force(),
        &Patch::Apply(&crd),
    )
    .await
    .expect("applying the CRD succeeds");
    wait_for(
        "the StreamJob CRD to be established",
        Duration::from_secs(30),
        || async {
            let crd = api.get(&name).await.ok()?;
            let established = crd
                .status?
                .conditions?
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True");
            established.then_some(())
        },
    )
    .await;
}

/// Creates a namespace for one test, deleted when the returned guard drops.
pub fn temp_namespace(prefix: &str) -> TempNamespace {
    let name = unique_name(prefix);
    run_ok("kubectl", &["create", "namespace", &name]);
    TempNamespace { name }
}

/// A namespace that is deleted (without waiting) when dropped.
pub struct TempNamespace {
    /// The namespace's name.
    pub name: String,
}

impl Drop for TempNamespace {
    fn drop(&mut self) {
        let _ = Command::new("kubectl")
            .args(["delete", "namespace", &self.name, "--wait=false"])
            .output();
    }
}
