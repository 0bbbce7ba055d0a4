//! The Argo CD health check `gitops/argocd/health.lua`, run by gopher-lua (the interpreter Argo
//! CD embeds) through the stack's `lua-health` runner, on StreamJob objects in every state the
//! check tells apart.

// A failed step fails the test: panicking is how these harness helpers report it.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

use serde_json::{Value, json};
use streamjob_tests::{repo_root, run_ok, unique_name};

/// The runner built by `tests/stack/stack build` (exported by `tests/stack/stack env`).
fn runner() -> String {
    std::env::var("STREAMJOB_LUA_HEALTH").unwrap_or_else(|_| {
        panic!(
            "STREAMJOB_LUA_HEALTH is not set: run the tests with `scripts/test`, or \
             `tests/stack/stack up && eval \"$(tests/stack/stack env)\"` before `cargo test`."
        )
    })
}

/// An object file that is removed when dropped.
struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Runs the health check on `obj`; returns Argo CD's (status, message).
fn health(obj: &Value) -> (String, String) {
    let file =
        TempFile(std::env::temp_dir().join(format!("{}.json", unique_name("argocd-health"))));
    std::fs::write(&file.0, serde_json::to_vec(obj).unwrap()).unwrap();
    let script = repo_root().join("gitops/argocd/health.lua");
    let out = run_ok(
        &runner(),
        &[script.to_str().unwrap(), file.0.to_str().unwrap()],
    );
    let result: Value = serde_json::from_str(&out)
        .unwrap_or_else(|e| panic!("runner output is not JSON ({e}): {out}"));
    let field = |name: &str| result[name].as_str().unwrap_or_default().to_owned();
    (field("status"), field("message"))
}

fn assert_health(obj: &Value, status: &str, message: &str) {
    assert_eq!(
        health(obj),
        (status.to_owned(), message.to_owned()),
        "health of {obj:#}"
    );
}

/// A StreamJob at `generation`, as the apiserver returns it, without status.
fn job(generation: i64) -> Value {
    json!({
        "apiVersion": "streamjob.dev/v1alpha1",
        "kind": "StreamJob",
        "metadata": {
            "name": "click-counts",
            "namespace": "analytics",
            "generation": generation,
            "uid": "5e7b2c1a-0d4f-4c8e-9a3b-2f6d1e0c9b8a",
        },
        "spec": {
            "parallelism": 2,
            "source": { "kafka": { "bootstrapServers": "kafka:9092", "topic": "clicks" } },
            "sink": { "kafka": { "topic": "click-counts" } },
        },
    })
}

/// `job(generation)` with a status the operator wrote for that generation.
fn observed(generation: i64, phase: &str, conditions: Value) -> Value {
    let mut obj = job(generation);
    obj["status"] = json!({
        "observedGeneration": generation,
        "phase": phase,
        "parallelism": 2,
        "epoch": 4,
        "conditions": conditions,
    });
    obj
}

/// A condition as the operator writes it.
fn condition(type_: &str, status: &str, reason: &str, message: &str) -> Value {
    json!({
        "type": type_,
        "status": status,
        "reason": reason,
        "message": message,
        "observedGeneration": 2,
        "lastTransitionTime": "2026-01-12T09:30:00Z",
    })
}

fn ready() -> Value {
    condition(
        "Ready",
        "True",
        "AllPartitionsOwned",
        "All 6 partitions are owned by running workers",
    )
}

fn not_ready(message: &str) -> Value {
    condition("Ready", "False", "PartitionsUnowned", message)
}

fn reconciling(message: &str) -> Value {
    condition("Reconciling", "True", "Progressing", message)
}

#[test]
fn fresh_object_without_status_waits_for_the_operator() {
    assert_health(
        &job(1),
        "Progressing",
        "Waiting for the operator to observe generation 1",
    );
}

#[test]
fn stale_observed_generation_waits_even_when_the_old_status_was_ready() {
    let mut obj = observed(2, "Running", json!([ready()]));
    obj["metadata"]["generation"] = json!(3);
    assert_health(
        &obj,
        "Progressing",
        "Waiting for the operator to observe generation 3",
    );
}

#[test]
fn status_without_observed_generation_waits_for_the_operator() {
    let mut obj = observed(5, "Running", json!([ready()]));
    obj["status"]
        .as_object_mut()
        .unwrap()
        .remove("observedGeneration");
    assert_health(
        &obj,
        "Progressing",
        "Waiting for the operator to observe generation 5",
    );
}

#[test]
fn ready_job_is_healthy_with_the_ready_message() {
    let obj = observed(
        2,
        "Running",
        json!([
            ready(),
            condition("Reconciling", "False", "Reconciled", ""),
            condition("Stalled", "False", "NotStalled", ""),
        ]),
    );
    assert_health(
        &obj,
        "Healthy",
        "All 6 partitions are owned by running workers",
    );
}

#[test]
fn stalled_job_is_degraded_with_the_stalled_message() {
    let message = "step 'enrich': jq filter does not compile: syntax error at line 1";
    let obj = observed(
        2,
        "Failed",
        json!([
            not_ready("No worker runs"),
            condition("Stalled", "True", "InvalidPipeline", message),
        ]),
    );
    assert_health(&obj, "Degraded", message);
}

#[test]
fn stalled_wins_over_reconciling_and_suspended() {
    let message = "Secret analytics/kafka-credentials not found";
    let obj = observed(
        2,
        "Suspended",
        json!([
            reconciling("Starting 2 worker pods"),
            condition("Stalled", "True", "SecretMissing", message),
        ]),
    );
    assert_health(&obj, "Degraded", message);
}

#[test]
fn suspended_job_is_suspended() {
    let obj = observed(
        2,
        "Suspended",
        json!([condition(
            "Ready",
            "False",
            "Suspended",
            "Suspended on request"
        )]),
    );
    assert_health(&obj, "Suspended", "Suspended (spec.state: suspended)");
}

#[test]
fn rescaling_job_progresses_with_the_rescale_step() {
    let mut obj = observed(
        2,
        "Rescaling",
        json!([
            ready(),
            reconciling("Rescaling from 2 to 4 workers"),
            condition("Stalled", "False", "NotStalled", ""),
        ]),
    );
    obj["status"]["rescale"] = json!({
        "from": 2,
        "to": 4,
        "epoch": 5,
        "savepoint": "rescale-5",
        "step": "HandingOver",
        "started": "2026-01-12T09:29:00Z",
    });
    assert_health(
        &obj,
        "Progressing",
        "Rescaling from 2 to 4 workers: HandingOver",
    );
}

#[test]
fn reconciling_job_progresses_with_the_reconciling_message_even_when_ready() {
    let obj = observed(
        2,
        "Running",
        json!([
            ready(),
            reconciling("Rolling worker pods to image streamjob-worker:0.3.1")
        ]),
    );
    assert_health(
        &obj,
        "Progressing",
        "Rolling worker pods to image streamjob-worker:0.3.1",
    );
}

#[test]
fn pending_job_waits_for_its_workers() {
    let obj = observed(2, "Pending", json!([]));
    assert_health(&obj, "Progressing", "Waiting for the workers to start");
}

#[test]
fn running_job_that_is_not_ready_progresses_with_the_ready_message() {
    let obj = observed(
        2,
        "Running",
        json!([not_ready("Partition 3 has no running owner")]),
    );
    assert_health(&obj, "Progressing", "Partition 3 has no running owner");
}
