//! The operator on the real stack: it reconciles StreamJobs into workers that the pod runner
//! runs as local processes, against real Kafka and S3.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use k8s_openapi::api::{
    apps::v1::Deployment,
    coordination::v1::Lease,
    core::v1::{ConfigMap, Pod, Service},
    rbac::v1::Role,
};
use kube::{
    Api,
    api::{DeleteParams, ListParams},
};
use serde_json::json;
use streamjob_operator::api::{JobState, Phase};
use streamjob_tests::{
    ensure_crd, kube_client,
    operator::{
        Operator, OperatorFixture, condition, create_s3_secret, get_job, job_manifest,
        kubectl_apply, plan_of, produce_first_half, signal_process, wait_for_condition,
        worker_metric, worker_process,
    },
    run, run_ok,
    scenario::{Scenario, assert_only_reference_emissions, expected, generate},
    temp_namespace, wait_for,
    worker::{create_topic, produce, producer},
};

const READY_TIMEOUT: Duration = Duration::from_secs(120);
const RESULTS_TIMEOUT: Duration = Duration::from_secs(120);

fn strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

fn worker_pods_selector(job: &str) -> String {
    format!("streamjob.dev/job={job}")
}

#[tokio::test]
async fn a_job_runs_end_to_end_with_its_children_status_and_rbac() {
    let f = OperatorFixture::start("e2e").await;
    let (client, n, scenario) = (f.client.clone(), f.ns().to_owned(), &f.scenario);
    let n = n.as_str();
    kubectl_apply(scenario, &job_manifest(scenario, n, 2));

    run_ok(
        "kubectl",
        &[
            "wait",
            "--for=condition=Ready",
            &format!("streamjob/{}", scenario.name),
            "-n",
            n,
            "--timeout=120s",
        ],
    );

    // The children, with the right content.
    let name = &scenario.name;
    let deployment = Api::<Deployment>::namespaced(client.clone(), n)
        .get(&format!("{name}-worker"))
        .await
        .unwrap();
    assert_eq!(deployment.spec.as_ref().unwrap().replicas, Some(2));
    let owner = &deployment.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str()),
        ("StreamJob", name.as_str())
    );
    let plan = plan_of(
        &Api::<ConfigMap>::namespaced(client.clone(), n)
            .get(&format!("{name}-plan"))
            .await
            .unwrap(),
    );
    let pods = Api::<Pod>::namespaced(client.clone(), n)
        .list(&ListParams::default().labels(&worker_pods_selector(name)))
        .await
        .unwrap();
    let pod_names: Vec<String> = pods
        .iter()
        .map(|p| p.metadata.name.clone().unwrap())
        .collect();
    assert_eq!(pod_names.len(), 2);
    let mut owned: Vec<i32> = plan.assignment.values().flatten().copied().collect();
    owned.sort_unstable();
    assert_eq!(owned, vec![0, 1, 2, 3], "every partition has one owner");
    for pod in &pod_names {
        assert_eq!(
            plan.partitions_of(pod).len(),
            2,
            "balanced: {:?}",
            plan.assignment
        );
    }
    let service = Api::<Service>::namespaced(client.clone(), n)
        .get(&format!("{name}-workers"))
        .await
        .unwrap();
    assert_eq!(service.spec.unwrap().cluster_ip.as_deref(), Some("None"));
    let role = Api::<Role>::namespaced(client.clone(), n)
        .get(&format!("{name}-worker"))
        .await
        .unwrap();
    assert_eq!(
        role.rules.unwrap()[0].resource_names.as_deref(),
        Some(&[format!("{name}-plan")][..])
    );

    // Status reports what runs.
    let job = get_job(&client, n, name).await;
    let status = job.status.unwrap();
    assert_eq!(status.phase, Some(Phase::Running));
    assert_eq!(status.parallelism, Some(2));
    assert_eq!(status.epoch, Some(i64::try_from(plan.epoch).unwrap()));
    assert_eq!(status.assignment.len(), 4);
    assert!(
        status
            .assignment
            .iter()
            .all(|p| p.pod.as_ref().is_some_and(|pod| pod_names.contains(pod)))
    );

    // Each transition is a Kubernetes Event on the job.
    let reasons = run_ok(
        "kubectl",
        &[
            "get",
            "events",
            "-n",
            n,
            "--field-selector",
            &format!("involvedObject.kind=StreamJob,involvedObject.name={name}"),
            "-o",
            "jsonpath={range .items[*]}{.reason}{\"\\n\"}{end}",
        ],
    );
    assert!(reasons.lines().any(|r| r == "PlanPublished"), "{reasons}");
    assert!(reasons.lines().any(|r| r == "Running"), "{reasons}");

    // The workers' ServiceAccount may read its own plan, nothing else.
    let sa = format!("system:serviceaccount:{n}:{name}-worker");
    let can_i = |verb: &str, what: &str| {
        let out = run(
            "kubectl",
            &["auth", "can-i", verb, what, "-n", n, "--as", &sa],
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    assert_eq!(can_i("get", &format!("configmap/{name}-plan")), "yes");
    assert_eq!(can_i("watch", &format!("configmap/{name}-plan")), "yes");
    assert_eq!(can_i("get", "configmap/another-job-plan"), "no");
    assert_eq!(can_i("get", "secret/checkpoint-storage"), "no");
    assert_eq!(can_i("list", "secrets"), "no");
    assert_eq!(can_i("update", &format!("configmap/{name}-plan")), "no");

    // Records flow through the workers to the sink and equal the reference.
    let events = generate(11, 150);
    let reference = expected(&events);
    produce(&producer(&scenario.bootstrap), &scenario.input, &events);
    let results = scenario.await_results(&reference, RESULTS_TIMEOUT).await;
    assert_only_reference_emissions(&results, &reference);

    // Checkpoints reach status (read from S3; status refreshes every 30 s while ready).
    let per_partition = |p: i32| events.iter().filter(|e| e.partition == p).count();
    wait_for(
        "checkpointed offsets in status",
        Duration::from_secs(90),
        || async {
            let job = get_job(&client, n, name).await;
            let status = job.status?;
            let caught_up = status.assignment.iter().all(|p| {
                p.committed_offset == i64::try_from(per_partition(p.partition)).ok()
                    && p.lag == Some(0)
                    && p.last_checkpoint.is_some()
            });
            (status.last_checkpoint?.partitions == 4 && caught_up).then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn a_deleted_pod_hands_its_partitions_to_the_replacement_without_loss() {
    let f = OperatorFixture::start("podloss").await;
    let (client, n, scenario) = (f.client.clone(), f.ns().to_owned(), &f.scenario);
    let n = n.as_str();
    kubectl_apply(scenario, &job_manifest(scenario, n, 2));
    let name = &scenario.name;
    let ready = wait_for_condition(n, name, "Ready", "True", READY_TIMEOUT).await;
    let first_epoch = ready.status.unwrap().epoch.unwrap();

    let events = generate(12, 300);
    let reference = expected(&events);
    let producer = producer(&scenario.bootstrap);
    let rest = produce_first_half(scenario, &producer, &events).await;

    let pods: Api<Pod> = Api::namespaced(client.clone(), n);
    let victim = pods
        .list(&ListParams::default().labels(&worker_pods_selector(name)))
        .await
        .unwrap()
        .items[0]
        .metadata
        .name
        .clone()
        .unwrap();
    pods.delete(&victim, &DeleteParams::default())
        .await
        .unwrap();
    produce(&producer, &scenario.input, rest);

    let job = wait_for(
        "a new epoch without the deleted pod",
        READY_TIMEOUT,
        || async {
            let job = get_job(&client, n, name).await;
            let status = job.status.as_ref()?;
            let moved = status.epoch? > first_epoch
                && status
                    .assignment
                    .iter()
                    .all(|p| p.pod.as_deref() != Some(victim.as_str()));
            let ready = status
                .conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True");
            (moved && ready).then_some(job)
        },
    )
    .await;
    assert_eq!(job.status.unwrap().parallelism, Some(2));
    let results = scenario.await_results(&reference, RESULTS_TIMEOUT).await;
    assert_only_reference_emissions(&results, &reference);
}

#[tokio::test]
async fn an_invalid_pipeline_stalls_while_the_running_workers_keep_going() {
    let f = OperatorFixture::start("stall").await;
    let (client, n, scenario) = (f.client.clone(), f.ns().to_owned(), &f.scenario);
    let n = n.as_str();
    let mut manifest = job_manifest(scenario, n, 1);
    kubectl_apply(scenario, &manifest);
    let name = &scenario.name;
    wait_for_condition(n, name, "Ready", "True", READY_TIMEOUT).await;
    let plans: Api<ConfigMap> = Api::namespaced(client.clone(), n);
    let plan_before = plan_of(&plans.get(&format!("{name}-plan")).await.unwrap());

    manifest["spec"]["pipeline"][0]["filter"] = json!(".type == ");
    kubectl_apply(scenario, &manifest);
    let stalled = wait_for_condition(n, name, "Stalled", "True", Duration::from_secs(60)).await;
    let condition = condition(&stalled, "Stalled");
    assert_eq!(condition.reason, "InvalidPipeline");
    assert!(
        condition.message.starts_with("spec.pipeline[0] (clicks): "),
        "{}",
        condition.message
    );
    assert_eq!(stalled.status.unwrap().phase, Some(Phase::Failed));
    let plan_after = plan_of(&plans.get(&format!("{name}-plan")).await.unwrap());
    assert_eq!(
        plan_after.spec, plan_before.spec,
        "the workers keep the last runnable spec"
    );

    // The old workers still process records.
    let events = generate(13, 100);
    let reference = expected(&events);
    produce(&producer(&scenario.bootstrap), &scenario.input, &events);
    scenario.await_results(&reference, RESULTS_TIMEOUT).await;

    // Fixing the spec clears the condition.
    manifest["spec"]["pipeline"][0]["filter"] = json!(".type == \"click\"");
    kubectl_apply(scenario, &manifest);
    wait_for_condition(n, name, "Stalled", "False", Duration::from_secs(60)).await;
}

#[tokio::test]
async fn what_the_api_server_cannot_check_ends_in_a_stalled_condition_naming_it() {
    let client = kube_client().await;
    ensure_crd(&client).await;
    let ns = temp_namespace("op-env");
    let n = ns.name.as_str();
    let scenario = &Scenario::new("env").await;
    let _operator = Operator::start(n, &[], &scenario.dir.join("operator.log"));
    let name = &scenario.name;

    // The storage Secret does not exist (and Kafka cannot be reached: Secrets come first).
    let mut manifest = job_manifest(scenario, n, 1);
    manifest["spec"]["source"]["kafka"]["bootstrapServers"] = json!("127.0.0.1:1");
    kubectl_apply(scenario, &manifest);
    let job = wait_for_condition(n, name, "Stalled", "True", Duration::from_secs(60)).await;
    let stalled = job
        .status
        .unwrap()
        .conditions
        .into_iter()
        .find(|c| c.type_ == "Stalled")
        .unwrap();
    assert_eq!(stalled.reason, "SecretNotFound");
    assert!(
        stalled.message.contains("checkpoint-storage"),
        "{}",
        stalled.message
    );

    // With the Secret there, Kafka is the problem (a spec change triggers the reconcile;
    // otherwise the next one comes within a minute).
    create_s3_secret(n);
    manifest["spec"]["parallelism"] = json!(2);
    kubectl_apply(scenario, &manifest);
    let job = wait_for_condition(n, name, "Stalled", "True", Duration::from_secs(60)).await;
    let stalled = job
        .status
        .unwrap()
        .conditions
        .into_iter()
        .find(|c| c.type_ == "Stalled")
        .unwrap();
    assert_eq!(stalled.reason, "KafkaUnreachable", "{}", stalled.message);
    assert!(
        stalled.message.contains("127.0.0.1:1"),
        "{}",
        stalled.message
    );

    // Nothing was created for a job that never could run.
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), n);
    assert!(
        deployments
            .get_opt(&format!("{name}-worker"))
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn a_missing_output_topic_stalls_the_job_until_it_exists() {
    let client = kube_client().await;
    ensure_crd(&client).await;
    let ns = temp_namespace("op-out");
    let n = ns.name.as_str();
    let scenario = &Scenario::new("out").await;
    create_s3_secret(n);
    let _operator = Operator::start(n, &[], &scenario.dir.join("operator.log"));
    let name = &scenario.name;

    // The broker creates no topics (the stack sets auto.create.topics.enable=false).
    let (sink, dead_letter) = (format!("{name}-late"), format!("{name}-late-dlq"));
    let mut manifest = job_manifest(scenario, n, 1);
    manifest["spec"]["sink"]["kafka"]["topic"] = json!(sink);
    manifest["spec"]["deadLetter"]["topic"] = json!(dead_letter);
    kubectl_apply(scenario, &manifest);
    let job = wait_for_condition(n, name, "Stalled", "True", Duration::from_secs(60)).await;
    let stalled = condition(&job, "Stalled");
    assert_eq!(stalled.reason, "OutputTopicNotFound", "{}", stalled.message);
    for topic in [&sink, &dead_letter] {
        assert!(
            stalled.message.contains(topic.as_str()),
            "{}",
            stalled.message
        );
    }
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), n);
    let worker = format!("{name}-worker");
    assert!(
        deployments.get_opt(&worker).await.unwrap().is_none(),
        "no workers start for outputs that cannot take records"
    );

    // Created topics lift it without any change to the job.
    create_topic(&scenario.bootstrap, &sink, 1).await;
    create_topic(&scenario.bootstrap, &dead_letter, 1).await;
    wait_for_condition(n, name, "Stalled", "False", Duration::from_secs(60)).await;
    wait_for("the worker Deployment", Duration::from_secs(30), || async {
        deployments.get_opt(&worker).await.unwrap()
    })
    .await;
}

#[tokio::test]
async fn suspend_stops_the_workers_and_resume_continues_without_loss() {
    let f = OperatorFixture::start("suspend").await;
    let (client, n, scenario) = (f.client.clone(), f.ns().to_owned(), &f.scenario);
    let n = n.as_str();
    let mut manifest = job_manifest(scenario, n, 2);
    kubectl_apply(scenario, &manifest);
    let name = &scenario.name;
    wait_for_condition(n, name, "Ready", "True", READY_TIMEOUT).await;

    let events = generate(14, 300);
    let reference = expected(&events);
    let producer = producer(&scenario.bootstrap);
    let rest = produce_first_half(scenario, &producer, &events).await;

    manifest["spec"]["state"] = json!("suspended");
    kubectl_apply(scenario, &manifest);
    let pods: Api<Pod> = Api::namespaced(client.clone(), n);
    let job = wait_for(
        "the job to be suspended with no pods",
        Duration::from_secs(90),
        || async {
            let job = get_job(&client, n, name).await;
            let pods = pods
                .list(&ListParams::default().labels(&worker_pods_selector(name)))
                .await
                .ok()?;
            let suspended = job.status.as_ref()?.phase == Some(Phase::Suspended);
            let ready = job
                .status
                .as_ref()?
                .conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True");
            (suspended && ready && pods.items.is_empty()).then_some(job)
        },
    )
    .await;
    assert_eq!(job.spec.state, JobState::Suspended);

    produce(&producer, &scenario.input, rest);
    manifest["spec"]["state"] = json!("running");
    kubectl_apply(scenario, &manifest);
    wait_for_condition(n, name, "Ready", "True", READY_TIMEOUT).await;
    let results = scenario.await_results(&reference, RESULTS_TIMEOUT).await;
    assert_only_reference_emissions(&results, &reference);
}

#[tokio::test]
async fn an_operator_killed_mid_flight_resumes_without_duplicates_or_lost_status() {
    let mut f = OperatorFixture::start("restart").await;
    let (client, n, scenario) = (f.client.clone(), f.ns().to_owned(), &f.scenario);
    let n = n.as_str();
    kubectl_apply(scenario, &job_manifest(scenario, n, 2));
    let name = &scenario.name;

    // Kill it as soon as it has started creating children, before the job is ready.
    let plans: Api<ConfigMap> = Api::namespaced(client.clone(), n);
    wait_for("the plan", Duration::from_secs(60), || async {
        plans.get_opt(&format!("{name}-plan")).await.ok()?
    })
    .await;
    f.operator.kill_and_restart();
    let job = wait_for_condition(n, name, "Ready", "True", READY_TIMEOUT).await;
    let epoch = job.status.as_ref().unwrap().epoch.unwrap();

    let selector =
        format!("streamjob.dev/job={name},app.kubernetes.io/managed-by=streamjob-operator");
    let params = ListParams::default().labels(&selector);
    assert_eq!(
        Api::<Deployment>::namespaced(client.clone(), n)
            .list(&params)
            .await
            .unwrap()
            .items
            .len(),
        1
    );
    assert_eq!(plans.list(&params).await.unwrap().items.len(), 1);
    assert_eq!(
        Api::<Service>::namespaced(client.clone(), n)
            .list(&params)
            .await
            .unwrap()
            .items
            .len(),
        1
    );

    // Another restart while running changes nothing: same epoch, same plan.
    let plan_before = plan_of(&plans.get(&format!("{name}-plan")).await.unwrap());
    f.operator.kill_and_restart();
    let events = generate(15, 100);
    let reference = expected(&events);
    produce(&producer(&scenario.bootstrap), &scenario.input, &events);
    scenario.await_results(&reference, RESULTS_TIMEOUT).await;
    let job = wait_for_condition(n, name, "Ready", "True", READY_TIMEOUT).await;
    assert_eq!(job.status.unwrap().epoch, Some(epoch));
    assert_eq!(
        plan_of(&plans.get(&format!("{name}-plan")).await.unwrap()),
        plan_before
    );
}

#[tokio::test]
async fn of_two_operator_replicas_only_the_leader_acts() {
    let client = kube_client().await;
    ensure_crd(&client).await;
    let ns = temp_namespace("op-leader");
    let n = ns.name.as_str();
    create_s3_secret(n);
    let scenario = &Scenario::new("leader").await;
    let elect = |id: &'static str| {
        [
            "--leader-elect".to_owned(),
            format!("--lease-namespace={n}"),
            format!("--identity={id}"),
            "--lease-duration=6".to_owned(),
        ]
    };
    let args_a = elect("replica-a");
    let args_b = elect("replica-b");
    let mut a = Operator::start(n, &strs(&args_a), &scenario.dir.join("operator-a.log"));
    let leases: Api<Lease> = Api::namespaced(client.clone(), n);
    let holder = |lease: &Lease| lease.spec.as_ref()?.holder_identity.clone();
    wait_for("replica-a to lead", Duration::from_secs(30), || async {
        let lease = leases.get_opt("streamjob-operator").await.ok()??;
        (holder(&lease).as_deref() == Some("replica-a")).then_some(())
    })
    .await;
    let b = Operator::start(n, &strs(&args_b), &scenario.dir.join("operator-b.log"));

    kubectl_apply(scenario, &job_manifest(scenario, n, 1));
    let name = &scenario.name;
    wait_for(
        "the leader to reconcile the job",
        Duration::from_secs(60),
        || async { get_job(&client, n, name).await.status.map(|_| ()) },
    )
    .await;
    wait_for("replica-b's metrics", Duration::from_secs(30), || async {
        b.metric("streamjob_operator_leader")
    })
    .await;
    assert_eq!(b.metric("streamjob_operator_leader"), Some(0.0));
    assert_eq!(b.metric("streamjob_operator_reconciles_total"), Some(0.0));
    assert!(a.metric("streamjob_operator_reconciles_total").unwrap() >= 1.0);

    // The leader goes away without releasing: the standby takes over once the lease expires.
    let _ = a.is_running();
    drop(a);
    wait_for("replica-b to lead", Duration::from_secs(60), || async {
        let lease = leases.get_opt("streamjob-operator").await.ok()??;
        (holder(&lease).as_deref() == Some("replica-b")).then_some(())
    })
    .await;
    wait_for(
        "replica-b to reconcile",
        Duration::from_secs(60),
        || async { (b.metric("streamjob_operator_reconciles_total")? >= 1.0).then_some(()) },
    )
    .await;
}

#[tokio::test]
async fn a_pipeline_change_reaches_the_running_workers_without_new_pods() {
    let f = OperatorFixture::start("change").await;
    let (client, n, scenario) = (f.client.clone(), f.ns().to_owned(), &f.scenario);
    let n = n.as_str();
    let mut manifest = job_manifest(scenario, n, 2);
    kubectl_apply(scenario, &manifest);
    let name = &scenario.name;
    let ready = wait_for_condition(n, name, "Ready", "True", READY_TIMEOUT).await;
    let epoch = ready.status.unwrap().epoch;
    let pods: Api<Pod> = Api::namespaced(client.clone(), n);
    let pod_names = |list: Vec<Pod>| -> Vec<String> {
        let mut names: Vec<String> = list.into_iter().map(|p| p.metadata.name.unwrap()).collect();
        names.sort();
        names
    };
    let params = ListParams::default().labels(&worker_pods_selector(name));
    let before = pod_names(pods.list(&params).await.unwrap().items);
    // Each worker's runs so far (a pod that started before it owned partitions has already
    // restarted its run once, for the plan that gave it some).
    let runs = |pod: &Pod| {
        let ip = pod.status.as_ref().and_then(|s| s.pod_ip.clone())?;
        worker_metric(&ip, "streamjob_runs_total")
    };
    let runs_before: std::collections::BTreeMap<String, f64> = pods
        .list(&params)
        .await
        .unwrap()
        .items
        .iter()
        .map(|pod| (pod.metadata.name.clone().unwrap(), runs(pod).unwrap()))
        .collect();

    let events = generate(16, 300);
    let reference = expected(&events);
    let producer = producer(&scenario.bootstrap);
    let rest = produce_first_half(scenario, &producer, &events).await;

    // A map after the window tags every result; window state carries over.
    let steps = manifest["spec"]["pipeline"].as_array_mut().unwrap();
    steps.push(json!({ "name": "tag", "map": ". + {version: 2}" }));
    kubectl_apply(scenario, &manifest);
    let plans: Api<ConfigMap> = Api::namespaced(client.clone(), n);
    wait_for(
        "the new pipeline in the plan",
        Duration::from_secs(60),
        || async {
            let plan = plan_of(&plans.get(&format!("{name}-plan")).await.ok()?);
            (plan.spec.pipeline.len() == 4).then_some(())
        },
    )
    .await;
    wait_for(
        "every worker to run the new plan",
        Duration::from_secs(60),
        || async {
            let items = pods.list(&params).await.ok()?.items;
            let restarted = items.iter().all(|pod| {
                let before = pod.metadata.name.as_ref().and_then(|n| runs_before.get(n));
                runs(pod)
                    .zip(before)
                    .is_some_and(|(now, before)| now > *before)
            });
            (items.len() == 2 && restarted).then_some(())
        },
    )
    .await;
    produce(&producer, &scenario.input, rest);

    let results = scenario.await_results(&reference, RESULTS_TIMEOUT).await;
    assert_only_reference_emissions(&results, &reference);
    let tagged = streamjob_tests::worker::read_topic(&scenario.bootstrap, &scenario.output)
        .iter()
        .filter(|r| r.value.contains("\"version\":2"))
        .count();
    assert!(
        tagged > 0,
        "results after the change carry the new map's field"
    );
    let job = wait_for_condition(n, name, "Ready", "True", READY_TIMEOUT).await;
    let status = job.status.unwrap();
    let upgrade = epoch.map(|e| e + 1);
    assert_eq!(
        status.epoch, upgrade,
        "one epoch, that of the upgrade's savepoint"
    );
    let savepoint = status.savepoints.last().expect("the upgrade's savepoint");
    assert_eq!(
        (savepoint.name.as_str(), savepoint.reason.as_str()),
        (format!("e{}-upgrade", upgrade.unwrap()).as_str(), "upgrade")
    );
    assert_eq!(
        pod_names(pods.list(&params).await.unwrap().items),
        before,
        "no pod was replaced"
    );
}

#[tokio::test]
async fn a_crashed_worker_restarts_in_its_pod_and_new_partitions_get_owners() {
    let f = OperatorFixture::start("crash").await;
    let (client, n, scenario) = (f.client.clone(), f.ns().to_owned(), &f.scenario);
    let n = n.as_str();
    kubectl_apply(scenario, &job_manifest(scenario, n, 2));
    let name = &scenario.name;
    let ready = wait_for_condition(n, name, "Ready", "True", READY_TIMEOUT).await;
    let epoch = ready.status.unwrap().epoch.unwrap();

    let events = generate(17, 300);
    let reference = expected(&events);
    let producer = producer(&scenario.bootstrap);
    let rest = produce_first_half(scenario, &producer, &events).await;

    // SIGKILL one worker process: the pod stays, its container restarts and restores.
    let pods: Api<Pod> = Api::namespaced(client.clone(), n);
    let (victim_name, pid) = worker_process(&client, n, name).await;
    signal_process(pid, nix::sys::signal::Signal::SIGKILL);
    produce(&producer, &scenario.input, rest);
    wait_for(
        "the worker to restart in its pod",
        Duration::from_secs(60),
        || async {
            let pod = pods.get(&victim_name).await.ok()?;
            let status = &pod.status?.container_statuses?[0];
            (status.restart_count >= 1 && status.ready).then_some(())
        },
    )
    .await;
    let results = scenario.await_results(&reference, RESULTS_TIMEOUT).await;
    assert_only_reference_emissions(&results, &reference);
    let job = get_job(&client, n, name).await;
    assert_eq!(
        job.status.unwrap().epoch,
        Some(epoch),
        "a restart in place moves nothing"
    );

    // The topic grows: the new partitions get owners in a new epoch.
    streamjob_tests::worker::add_partitions(&scenario.bootstrap, &scenario.input, 6).await;
    let job = wait_for(
        "owners for the new partitions",
        Duration::from_secs(60),
        || async {
            let job = get_job(&client, n, name).await;
            let status = job.status.as_ref()?;
            let owned = status.assignment.iter().filter(|p| p.pod.is_some()).count();
            let ready = status
                .conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True");
            (owned == 6 && ready).then_some(job)
        },
    )
    .await;
    assert!(job.status.unwrap().epoch.unwrap() > epoch);
}

#[tokio::test]
async fn deleting_a_job_removes_its_objects_and_its_checkpoints_only_when_asked() {
    let f = OperatorFixture::start("delete").await;
    let (client, n, scenario) = (f.client.clone(), f.ns().to_owned(), &f.scenario);
    let n = n.as_str();
    let mut manifest = job_manifest(scenario, n, 1);
    manifest["spec"]["checkpoint"]["deleteOnJobDeletion"] = json!(true);
    kubectl_apply(scenario, &manifest);
    let name = &scenario.name;
    wait_for_condition(n, name, "Ready", "True", READY_TIMEOUT).await;
    let events = generate(18, 50);
    produce(&producer(&scenario.bootstrap), &scenario.input, &events);
    wait_for(
        "checkpoints of every partition",
        Duration::from_secs(60),
        || async {
            let status = get_job(&client, n, name).await.status?;
            (status.last_checkpoint?.partitions == 4).then_some(())
        },
    )
    .await;
    let job = get_job(&client, n, name).await;
    assert!(
        job.metadata
            .finalizers
            .unwrap()
            .contains(&"streamjob.dev/delete-checkpoints".to_owned())
    );
    let store = streamjob_tests::worker::s3_store();
    let prefix = object_store::path::Path::from(format!("{name}/{n}/{name}"));
    assert!(
        !streamjob_tests::worker::list_objects(&store, &prefix)
            .await
            .is_empty()
    );

    run_ok(
        "kubectl",
        &["delete", "streamjob", name, "-n", n, "--timeout=60s"],
    );
    assert!(
        streamjob_tests::worker::list_objects(&store, &prefix)
            .await
            .is_empty(),
        "checkpoints deleted"
    );
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), n);
    wait_for(
        "the garbage collector to remove the Deployment",
        Duration::from_secs(60),
        || async {
            deployments
                .get_opt(&format!("{name}-worker"))
                .await
                .ok()?
                .is_none()
                .then_some(())
        },
    )
    .await;

    // Without deleteOnJobDeletion the checkpoints stay, and no finalizer holds the job.
    manifest["spec"]["checkpoint"]["deleteOnJobDeletion"] = json!(false);
    kubectl_apply(scenario, &manifest);
    wait_for_condition(n, name, "Ready", "True", READY_TIMEOUT).await;
    wait_for("a checkpoint", Duration::from_secs(60), || async {
        get_job(&client, n, name)
            .await
            .status?
            .last_checkpoint
            .map(|_| ())
    })
    .await;
    assert!(
        get_job(&client, n, name)
            .await
            .metadata
            .finalizers
            .unwrap_or_default()
            .is_empty()
    );
    run_ok(
        "kubectl",
        &["delete", "streamjob", name, "-n", n, "--timeout=60s"],
    );
    assert!(
        !streamjob_tests::worker::list_objects(&store, &prefix)
            .await
            .is_empty(),
        "checkpoints kept"
    );
}
