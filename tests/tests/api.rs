//! The StreamJob API as served by the real kube-apiserver: the generated CRD's schema and CEL
//! rules accept valid jobs, reject invalid ones with a message naming the field, and the scale
//! subresource drives `spec.parallelism`.

// A failed step fails the test: panicking is how these harness helpers report it.
#![allow(clippy::unwrap_used)]

use std::{io::Write, process::Stdio};

use streamjob_tests::{ensure_crd, kube_client, repo_root, run_ok, temp_namespace};

/// `kubectl apply` of `manifest` in `namespace`; returns (success, stderr).
fn kubectl_apply(namespace: &str, manifest: &str) -> (bool, String) {
    let mut child = std::process::Command::new("kubectl")
        .args(["apply", "-n", namespace, "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kubectl runs");
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(manifest.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A valid manifest; `patch` edits its YAML text to make variants.
fn job_manifest(name: &str) -> String {
    format!(
        r#"apiVersion: streamjob.dev/v1alpha1
kind: StreamJob
metadata:
  name: {name}
spec:
  parallelism: 2
  source:
    kafka:
      bootstrapServers: 127.0.0.1:9092
      topic: clicks
  pipeline:
    - filter: '.type == "click"'
    - keyBy: .user
    - window:
        size: 1m
        timestamp: .ts
        aggregates:
          - name: clicks
            function: count
  sink:
    kafka:
      topic: click-counts
  checkpoint:
    storage: s3://streamjob/checkpoints
    interval: 10s
"#
    )
}

async fn rejected(namespace: &str, manifest: &str) -> String {
    let (ok, stderr) = kubectl_apply(namespace, manifest);
    assert!(
        !ok,
        "the API server accepted an invalid StreamJob:\n{manifest}"
    );
    stderr
}

#[tokio::test]
async fn valid_jobs_are_accepted_with_defaults_filled_in() {
    let client = kube_client().await;
    ensure_crd(&client).await;
    let ns = temp_namespace("api-valid");

    let (ok, stderr) = kubectl_apply(&ns.name, &job_manifest("clicks"));
    assert!(ok, "valid StreamJob rejected: {stderr}");

    let state = run_ok(
        "kubectl",
        &[
            "get",
            "sj",
            "clicks",
            "-n",
            &ns.name,
            "-o",
            "jsonpath={.spec.state} {.spec.checkpoint.retained} {.spec.source.kafka.startFrom} {.spec.processingThreads}",
        ],
    );
    assert_eq!(
        state, "running 3 earliest 1",
        "schema defaults are applied by the API server"
    );
}

#[tokio::test]
async fn every_example_manifest_is_accepted() {
    let client = kube_client().await;
    ensure_crd(&client).await;
    let ns = temp_namespace("api-examples");
    let examples = std::fs::read_dir(repo_root().join("examples")).expect("examples/ exists");
    let mut applied = 0;
    for entry in examples {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let manifest = std::fs::read_to_string(&path).unwrap();
            let (ok, stderr) = kubectl_apply(&ns.name, &manifest);
            assert!(ok, "{} rejected: {stderr}", path.display());
            applied += 1;
        }
    }
    assert!(applied > 0, "no example manifest found");
}

#[tokio::test]
async fn zero_parallelism_is_rejected_unless_suspended() {
    let client = kube_client().await;
    ensure_crd(&client).await;
    let ns = temp_namespace("api-par");

    let zero = job_manifest("zero").replace("parallelism: 2", "parallelism: 0");
    let err = rejected(&ns.name, &zero).await;
    assert!(
        err.contains("spec.parallelism"),
        "error does not name the field: {err}"
    );
    assert!(
        err.contains("parallelism must be at least 1"),
        "unexpected error: {err}"
    );

    let suspended = zero.replace("  parallelism: 0", "  parallelism: 0\n  state: suspended");
    let (ok, stderr) = kubectl_apply(&ns.name, &suspended);
    assert!(
        ok,
        "a suspended job with parallelism 0 must be accepted: {stderr}"
    );
}

#[tokio::test]
async fn unknown_storage_scheme_is_rejected() {
    let client = kube_client().await;
    ensure_crd(&client).await;
    let ns = temp_namespace("api-scheme");
    let ftp = job_manifest("ftp").replace("s3://streamjob/checkpoints", "ftp://host/checkpoints");
    let err = rejected(&ns.name, &ftp).await;
    assert!(
        err.contains("spec.checkpoint.storage"),
        "error does not name the field: {err}"
    );
    assert!(
        err.contains("s3://, gs://, az:// or file://"),
        "unexpected error: {err}"
    );

    let restore = job_manifest("restore").replace(
        "  parallelism: 2",
        "  parallelism: 2\n  restoreFrom: http://x/sp",
    );
    let err = rejected(&ns.name, &restore).await;
    assert!(
        err.contains("spec.restoreFrom"),
        "error does not name the field: {err}"
    );
}

#[tokio::test]
async fn missing_topic_is_rejected() {
    let client = kube_client().await;
    ensure_crd(&client).await;
    let ns = temp_namespace("api-topic");
    let no_topic = job_manifest("notopic").replace("      topic: clicks\n", "");
    let err = rejected(&ns.name, &no_topic).await;
    assert!(
        err.contains("spec.source.kafka.topic"),
        "error does not name the field: {err}"
    );
    assert!(err.contains("Required value"), "unexpected error: {err}");
}

#[tokio::test]
async fn wrong_types_and_malformed_steps_are_rejected() {
    let client = kube_client().await;
    ensure_crd(&client).await;
    let ns = temp_namespace("api-types");

    let text = job_manifest("text").replace("parallelism: 2", "parallelism: two");
    let err = rejected(&ns.name, &text).await;
    assert!(
        err.contains("spec.parallelism"),
        "error does not name the field: {err}"
    );
    assert!(
        err.contains("integer"),
        "error does not name the expected type: {err}"
    );

    let two_ops = job_manifest("twoops").replace(
        "    - keyBy: .user\n",
        "    - keyBy: .user\n      map: .x\n",
    );
    let err = rejected(&ns.name, &two_ops).await;
    assert!(
        err.contains("spec.pipeline[1]"),
        "error does not name the step: {err}"
    );
    assert!(
        err.contains("exactly one of filter, map, keyBy or window"),
        "unexpected: {err}"
    );

    let sum_without_of = job_manifest("sum").replace("function: count", "function: sum");
    let err = rejected(&ns.name, &sum_without_of).await;
    assert!(
        err.contains("aggregates[0]"),
        "error does not name the aggregate: {err}"
    );

    let no_threads = job_manifest("threads").replace(
        "  parallelism: 2",
        "  parallelism: 2\n  processingThreads: 0",
    );
    let err = rejected(&ns.name, &no_threads).await;
    assert!(
        err.contains("spec.processingThreads"),
        "error does not name the field: {err}"
    );

    let bad_slide = job_manifest("slide").replace("size: 1m", "size: 1m\n        slide: 2m");
    let err = rejected(&ns.name, &bad_slide).await;
    assert!(
        err.contains("slide must be positive and at most the window size"),
        "{err}"
    );
}

#[tokio::test]
async fn kubectl_scale_changes_parallelism() {
    let client = kube_client().await;
    ensure_crd(&client).await;
    let ns = temp_namespace("api-scale");
    let (ok, stderr) = kubectl_apply(&ns.name, &job_manifest("scaled"));
    assert!(ok, "{stderr}");

    run_ok(
        "kubectl",
        &["scale", "sj/scaled", "-n", &ns.name, "--replicas=3"],
    );

    let parallelism = run_ok(
        "kubectl",
        &[
            "get",
            "sj",
            "scaled",
            "-n",
            &ns.name,
            "-o",
            "jsonpath={.spec.parallelism}",
        ],
    );
    assert_eq!(parallelism, "3");
    let scale = run_ok(
        "kubectl",
        &[
            "get",
            "--raw",
            &format!(
                "/apis/streamjob.dev/v1alpha1/namespaces/{}/streamjobs/scaled/scale",
                ns.name
            ),
        ],
    );
    let scale: serde_json::Value = serde_json::from_str(&scale).unwrap();
    assert_eq!(
        scale["spec"]["replicas"], 3,
        "scale subresource reports the new parallelism"
    );
}
