//! Savepoints beyond rescaling, on the real stack: a changed pipeline upgrades through one
//! (and a change the saved state cannot follow is refused unless the spec drops that state),
//! savepoints on request with retention, and a new job restoring from another's savepoint.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api, Client,
    api::{ListParams, Patch, PatchParams},
};
use object_store::ObjectStoreExt as _;
use serde_json::{Value, json};
use streamjob_operator::api::StreamJob;
use streamjob_tests::{
    operator::{
        OperatorFixture, condition, get_job, job_manifest, kubectl_apply, produce_first_half,
        published_plan, settled, wait_for_condition, worker_ips, worker_metric,
    },
    scenario::{Scenario, expected, finals, generate},
    wait_for,
    worker::{create_topic, produce, producer, read_topic, s3_path_of, s3_store},
};

const READY_TIMEOUT: Duration = Duration::from_secs(120);
const STEP_TIMEOUT: Duration = Duration::from_secs(180);
const RESULTS_TIMEOUT: Duration = Duration::from_secs(180);
const SAVEPOINT_RESTORES: &str = r#"streamjob_partition_restores_total{source="savepoint"}"#;

/// Waits until the job is ready with nothing in flight and `done` holds for it.
async fn await_settled(
    client: &Client,
    namespace: &str,
    job: &str,
    what: &str,
    done: impl Fn(&StreamJob) -> bool,
) -> StreamJob {
    let jobs: Api<StreamJob> = Api::namespaced(client.clone(), namespace);
    wait_for(what, STEP_TIMEOUT, || async {
        let found = jobs.get(job).await.ok()?;
        (settled(&found) && done(&found)).then_some(found)
    })
    .await
}

fn savepoint_names(job: &StreamJob) -> Vec<String> {
    job.status
        .as_ref()
        .unwrap()
        .savepoints
        .iter()
        .map(|s| s.name.clone())
        .collect()
}

fn savepoint_url(job: &StreamJob, name: &str) -> String {
    job.status
        .as_ref()
        .unwrap()
        .savepoints
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("savepoint {name} in status"))
        .url
        .clone()
}

/// Whether the object at `url` (in the test bucket) exists.
async fn exists(url: &str) -> bool {
    s3_store().head(&s3_path_of(url)).await.is_ok()
}

/// Sum of `series` over the job's worker pods.
async fn pods_metric(client: &Client, namespace: &str, job: &str, series: &str) -> f64 {
    worker_ips(client, namespace, job)
        .await
        .values()
        .filter_map(|ip| worker_metric(ip, series))
        .sum()
}

/// The scenario's manifest with `edit` applied to its spec.
fn edited(scenario: &Scenario, namespace: &str, edit: impl FnOnce(&mut Value)) -> Value {
    let mut manifest = job_manifest(scenario, namespace, 2);
    edit(&mut manifest["spec"]);
    manifest
}

#[tokio::test(flavor = "multi_thread")]
async fn a_changed_map_expression_upgrades_through_a_savepoint_keeping_window_state() {
    let f = OperatorFixture::start("sp-upgrade").await;
    let job = f.run_job(2).await;
    let (client, n, scenario) = (f.client.clone(), f.ns(), &f.scenario);
    let name = scenario.name.as_str();
    let epoch = job.status.unwrap().epoch.unwrap();

    let events = generate(53, 400);
    let reference = expected(&events);
    let producer = producer(&scenario.bootstrap);
    let rest = produce_first_half(scenario, &producer, &events).await;

    // A map step that changes no result: open windows must keep their counts across it.
    let upgraded = edited(scenario, n, |spec| {
        let pipeline = spec["pipeline"].as_array_mut().unwrap();
        pipeline.insert(0, json!({ "name": "tag", "map": ". + {upgraded: true}" }));
    });
    kubectl_apply(scenario, &upgraded);
    let job = await_settled(&client, n, name, "the upgrade", |job| {
        job.status
            .as_ref()
            .is_some_and(|s| s.savepoints.iter().any(|sp| sp.reason == "upgrade"))
    })
    .await;
    let status = job.status.as_ref().unwrap();
    let savepoint = status.savepoints.last().unwrap();
    assert_eq!(savepoint.name, format!("e{}-upgrade", epoch + 1));
    assert!(exists(&savepoint.url).await, "its manifest is in storage");
    let plan = published_plan(&client, n, name).await;
    assert_eq!(plan.spec.pipeline[0].name.as_deref(), Some("tag"));
    assert_eq!(
        pods_metric(&client, n, name, SAVEPOINT_RESTORES).await,
        4.0,
        "every partition restored from the upgrade savepoint"
    );

    produce(&producer, &scenario.input, rest);
    scenario.await_results(&reference, RESULTS_TIMEOUT).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_changed_window_is_refused_until_the_spec_allows_dropping_its_state() {
    let f = OperatorFixture::start("sp-refuse").await;
    f.run_job(2).await;
    let (client, n, scenario) = (f.client.clone(), f.ns(), &f.scenario);
    let name = scenario.name.as_str();
    let events = generate(59, 200);
    let producer = producer(&scenario.bootstrap);
    let rest = produce_first_half(scenario, &producer, &events).await;
    produce(&producer, &scenario.input, rest);

    let resize = |spec: &mut Value| spec["pipeline"][2]["window"]["size"] = json!("20s");
    kubectl_apply(scenario, &edited(scenario, n, resize));
    let job = wait_for_condition(n, name, "Stalled", "True", READY_TIMEOUT).await;
    let stalled = condition(&job, "Stalled");
    assert_eq!(stalled.reason, "IncompatibleStateChange");
    assert!(stalled.message.contains("dropState"), "{}", stalled.message);
    let plan = published_plan(&client, n, name).await;
    let window = plan.spec.pipeline[2].window.as_ref().unwrap();
    assert_eq!(
        std::time::Duration::from(window.size),
        Duration::from_secs(10),
        "the workers keep the previous pipeline"
    );

    kubectl_apply(
        scenario,
        &edited(scenario, n, |spec| {
            resize(spec);
            spec["upgrade"] = json!({ "incompatibleState": "dropState" });
        }),
    );
    await_settled(&client, n, name, "the upgrade dropping state", |job| {
        job.status
            .as_ref()
            .is_some_and(|s| s.savepoints.iter().any(|sp| sp.reason == "upgrade"))
    })
    .await;
    let later = generate(61, 200);
    produce(&producer, &scenario.input, &later);
    wait_for("a 20 s window result", RESULTS_TIMEOUT, || async {
        read_topic(&scenario.bootstrap, &scenario.output)
            .iter()
            .filter_map(|r| serde_json::from_str::<Value>(&r.value).ok())
            .any(|v| {
                let (start, end) = (v["windowStart"].as_i64(), v["windowEnd"].as_i64());
                start.zip(end).is_some_and(|(s, e)| e - s == 20_000)
            })
            .then_some(())
    })
    .await;
}

/// Sets `spec.savepoints.request` (and `spec.restoreFrom`, when given) as a GitOps tool
/// would, by server-side apply of the fields it owns.
async fn request_savepoint(client: &Client, namespace: &str, job: &str, name: &str) {
    let jobs: Api<StreamJob> = Api::namespaced(client.clone(), namespace);
    let patch = json!({
        "apiVersion": "streamjob.dev/v1alpha1",
        "kind": "StreamJob",
        "spec": { "savepoints": { "request": name, "retained": 2 } },
    });
    jobs.patch(
        job,
        &PatchParams::apply("savepoint-test"),
        &Patch::Apply(&patch),
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn requested_savepoints_are_kept_under_retention_and_a_new_job_restores_from_one() {
    let f = OperatorFixture::start("sp-user").await;
    f.run_job(2).await;
    let (client, n, scenario) = (f.client.clone(), f.ns(), &f.scenario);
    let name = scenario.name.as_str();
    let plan_before = published_plan(&client, n, name).await;
    let runs = pods_metric(&client, n, name, "streamjob_runs_total").await;

    let events = generate(67, 400);
    let reference = expected(&events);
    let producer = producer(&scenario.bootstrap);
    let rest = produce_first_half(scenario, &producer, &events).await;

    // Three requests, two kept: the oldest goes from status and from storage.
    let mut urls = Vec::new();
    for request in ["first", "second", "third"] {
        request_savepoint(&client, n, name, request).await;
        let job = await_settled(&client, n, name, &format!("savepoint {request}"), |job| {
            savepoint_names(job).contains(&request.to_owned())
        })
        .await;
        urls.push(savepoint_url(&job, request));
    }
    let job = get_job(&client, n, name).await;
    assert_eq!(savepoint_names(&job), vec!["second", "third"]);
    assert!(!exists(&urls[0]).await, "the first manifest is deleted");
    assert!(exists(&urls[1]).await && exists(&urls[2]).await);
    let plan = published_plan(&client, n, name).await;
    assert_eq!(
        plan.assignment, plan_before.assignment,
        "a savepoint moves nothing"
    );
    assert_eq!(
        pods_metric(&client, n, name, "streamjob_runs_total").await,
        runs,
        "and restarts nothing"
    );
    assert_eq!(
        plan.epoch,
        plan_before.epoch + 3,
        "each savepoint is an epoch of its own"
    );

    // Another job (suspended: it never runs) names the second one in its restoreFrom:
    // retention then deletes the next oldest instead.
    let waiting = format!("{name}-c");
    let mut manifest = job_manifest(scenario, n, 1);
    manifest["metadata"]["name"] = json!(waiting);
    manifest["spec"]["state"] = json!("suspended");
    manifest["spec"]["restoreFrom"] = json!(urls[1]);
    kubectl_apply(scenario, &manifest);
    wait_for_condition(n, &waiting, "Ready", "True", READY_TIMEOUT).await;
    request_savepoint(&client, n, name, "fourth").await;
    let job = await_settled(&client, n, name, "savepoint fourth", |job| {
        savepoint_names(job).contains(&"fourth".to_owned())
    })
    .await;
    urls.push(savepoint_url(&job, "fourth"));
    assert_eq!(savepoint_names(&job), vec!["second", "fourth"]);
    assert!(
        exists(&urls[1]).await,
        "the savepoint another job names is kept"
    );
    assert!(!exists(&urls[2]).await, "the next oldest is deleted");

    // Stop the job and start another one from its newest savepoint, on the same input.
    let jobs: Api<StreamJob> = Api::namespaced(client.clone(), n);
    jobs.patch(
        name,
        &PatchParams::apply("suspend-test"),
        &Patch::Apply(json!({
            "apiVersion": "streamjob.dev/v1alpha1",
            "kind": "StreamJob",
            "spec": { "state": "suspended" },
        })),
    )
    .await
    .unwrap();
    wait_for_condition(n, name, "Ready", "True", READY_TIMEOUT).await;
    let output_of_a = scenario.output_results();

    let successor = format!("{name}-b");
    let topic = format!("{}-b", scenario.output);
    create_topic(&scenario.bootstrap, &topic, 4).await;
    let mut manifest = job_manifest(scenario, n, 2);
    manifest["metadata"]["name"] = json!(successor);
    manifest["spec"]["sink"]["kafka"]["topic"] = json!(topic);
    manifest["spec"]["restoreFrom"] = json!(urls[3]);
    kubectl_apply(scenario, &manifest);
    wait_for_condition(n, &successor, "Ready", "True", READY_TIMEOUT).await;
    assert_eq!(
        pods_metric(&client, n, &successor, SAVEPOINT_RESTORES).await,
        4.0,
        "every partition of the new job starts from the savepoint"
    );
    produce(&producer, &scenario.input, rest);

    // A's results up to its stop, then B's: together, exactly the reference.
    let results_of_b = || {
        read_topic(&scenario.bootstrap, &topic)
            .iter()
            .map(streamjob_tests::scenario::parse_result)
            .collect::<Vec<_>>()
    };
    wait_for("the reference from both jobs", RESULTS_TIMEOUT, || async {
        let mut all = output_of_a.clone();
        all.extend(results_of_b());
        (finals(&all) == reference.finals).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_changed_pod_template_rolls_out_only_after_an_upgrade_savepoint() {
    let f = OperatorFixture::start("sp-template").await;
    f.run_job(2).await;
    let (client, n, scenario) = (f.client.clone(), f.ns(), &f.scenario);
    let name = scenario.name.as_str();
    let before = worker_ips(&client, n, name).await;

    let events = generate(71, 300);
    let reference = expected(&events);
    let producer = producer(&scenario.bootstrap);
    let rest = produce_first_half(scenario, &producer, &events).await;

    kubectl_apply(
        scenario,
        &edited(scenario, n, |spec| {
            spec["resources"] = json!({ "requests": { "cpu": "10m" } });
        }),
    );
    let pods: Api<Pod> = Api::namespaced(client.clone(), n);
    let params = ListParams::default().labels(&format!("streamjob.dev/job={name}"));
    let rolled = wait_for("the pods replaced", STEP_TIMEOUT, || async {
        let items = pods.list(&params).await.ok()?.items;
        let replaced = items.len() == 2
            && items
                .iter()
                .all(|p| !before.contains_key(p.metadata.name.as_deref().unwrap_or_default()));
        replaced.then_some(items)
    })
    .await;
    let job = await_settled(&client, n, name, "the job ready on the new pods", |_| true).await;
    let savepoint = job
        .status
        .as_ref()
        .unwrap()
        .savepoints
        .iter()
        .find(|s| s.reason == "upgrade")
        .expect("an upgrade savepoint was taken")
        .clone();
    for pod in &rolled {
        let created = pod.metadata.creation_timestamp.as_ref().unwrap();
        assert!(
            // creationTimestamp has whole seconds.
            savepoint.time.0.as_second() <= created.0.as_second(),
            "savepoint {} ({}) exists before pod {} was created ({})",
            savepoint.name,
            savepoint.time.0,
            pod.metadata.name.as_deref().unwrap_or_default(),
            created.0
        );
        let resources = pod.spec.as_ref().unwrap().containers[0].resources.clone();
        assert_eq!(
            resources
                .and_then(|r| r.requests)
                .map(|r| r["cpu"].0.clone()),
            Some("10m".to_owned())
        );
    }

    produce(&producer, &scenario.input, rest);
    scenario.await_results(&reference, RESULTS_TIMEOUT).await;
}
