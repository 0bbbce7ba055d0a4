//! The pod runner on the real apiserver and controller-manager: it binds a Deployment's pods to
//! its node and runs them as local processes with their own loopback IPs, env, Secret and
//! emptyDir volumes; readiness probes drive the Deployment's availability; deleted pods lose
//! their process and are replaced; crashing containers are restarted; and a pod reaches the
//! apiserver as its ServiceAccount, under RBAC.

// A failed step fails the test: panicking is how these harness helpers report it.
#![allow(clippy::unwrap_used)]

use std::{
    collections::BTreeSet,
    io::{Read as _, Write as _},
    net::TcpStream,
    path::Path,
    time::Duration,
};

use k8s_openapi::api::{
    apps::v1::Deployment,
    core::v1::{ContainerStatus, Pod},
};
use kube::{
    Api, Client,
    api::{DeleteParams, ListParams, PostParams},
};
use serde_json::json;
use streamjob_tests::{
    kube_client,
    pod_runner::harness::{PodRunner, TEST_RUNNER_LABEL},
    run_ok, temp_namespace, wait_for,
};

const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// A Deployment of `replicas` pods serving their `/data` emptyDir over HTTP on `$(POD_IP):8080`,
/// after writing into it the `GREETING` env var (from a Secret) and the Secret's volume file.
fn web_deployment(runner: &PodRunner, name: &str, replicas: i32) -> Deployment {
    let script = "printf %s \"$GREETING\" > /data/greeting-env.txt && \
                  cp /etc/greeting/greeting /data/greeting-file.txt && \
                  exec /usr/bin/python3 -m http.server --bind $(POD_IP) 8080 --directory /data";
    serde_json::from_value(json!({
        "metadata": { "name": name },
        "spec": {
            "replicas": replicas,
            "selector": { "matchLabels": { "app": name } },
            "template": {
                "metadata": { "labels": { "app": name, TEST_RUNNER_LABEL: runner.label_value } },
                "spec": {
                    "terminationGracePeriodSeconds": 5,
                    "containers": [{
                        "name": "web",
                        "image": "python:3",
                        "command": ["/bin/sh", "-c", script],
                        "env": [
                            { "name": "POD_IP", "valueFrom": { "fieldRef": { "fieldPath": "status.podIP" } } },
                            { "name": "GREETING", "valueFrom": { "secretKeyRef": { "name": "greeting", "key": "greeting" } } },
                        ],
                        "ports": [{ "name": "http", "containerPort": 8080 }],
                        "readinessProbe": {
                            "httpGet": { "path": "/greeting-file.txt", "port": "http" },
                            "periodSeconds": 1,
                        },
                        "volumeMounts": [
                            { "name": "data", "mountPath": "/data" },
                            { "name": "greeting", "mountPath": "/etc/greeting", "readOnly": true },
                        ],
                    }],
                    "volumes": [
                        { "name": "data", "emptyDir": {} },
                        { "name": "greeting", "secret": { "secretName": "greeting" } },
                    ],
                },
            },
        },
    }))
    .unwrap()
}

/// Creates the Secret the web pods read, and the Deployment.
async fn create_web(client: &Client, namespace: &str, deployment: &Deployment) {
    run_ok(
        "kubectl",
        &[
            "create",
            "secret",
            "generic",
            "greeting",
            "-n",
            namespace,
            "--from-literal=greeting=hello",
        ],
    );
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    deployments
        .create(&PostParams::default(), deployment)
        .await
        .unwrap();
}

/// The body of `GET http://ip:port/path`, if it answered 200.
fn http_get(ip: &str, port: u16, path: &str) -> Option<String> {
    let mut stream = TcpStream::connect((ip, port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {ip}\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.0 200").then(|| body.to_owned())
}

fn is_ready(pod: &Pod) -> bool {
    let conditions = pod.status.as_ref().and_then(|s| s.conditions.as_ref());
    conditions
        .into_iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True")
}

/// The pid of the pod's process, from its container ID (`streamjob-pod-runner://PID`).
fn container_pid(pod: &Pod) -> Option<u32> {
    let status = pod.status.as_ref()?.container_statuses.as_ref()?.first()?;
    status
        .container_id
        .as_deref()?
        .rsplit("://")
        .next()?
        .parse()
        .ok()
}

fn process_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// The app's pods once `count` of them are Ready.
async fn ready_pods(pods: &Api<Pod>, app: &str, count: usize) -> Vec<Pod> {
    let selector = ListParams::default().labels(&format!("app={app}"));
    wait_for(
        &format!("{count} ready pods of {app}"),
        READY_TIMEOUT,
        || async {
            let list = pods.list(&selector).await.ok()?;
            let ready: Vec<Pod> = list.items.into_iter().filter(is_ready).collect();
            (ready.len() == count).then_some(ready)
        },
    )
    .await
}

#[tokio::test]
async fn deployment_pods_run_as_ready_local_processes_with_own_ips_env_and_volumes() {
    let runner = PodRunner::start(&[]);
    let ns = temp_namespace("pod-runner-web");
    let client = kube_client().await;
    create_web(&client, &ns.name, &web_deployment(&runner, "web", 2)).await;

    run_ok(
        "kubectl",
        &[
            "wait",
            "-n",
            &ns.name,
            "--for=condition=Available",
            "deploy/web",
            "--timeout=90s",
        ],
    );
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    let pods = ready_pods(&pods, "web", 2).await;

    let mut ips = BTreeSet::new();
    for pod in &pods {
        let spec = pod.spec.as_ref().unwrap();
        let status = pod.status.as_ref().unwrap();
        assert_eq!(spec.node_name.as_deref(), Some(runner.node.as_str()));
        assert_eq!(status.phase.as_deref(), Some("Running"));
        assert_eq!(status.host_ip.as_deref(), Some("127.0.0.1"));
        let ip = status.pod_ip.clone().unwrap();
        assert!(ip.starts_with("127.") && ip != "127.0.0.1", "pod IP {ip}");
        // Each process serves on its own address, with the Secret as env var and as file.
        assert_eq!(
            http_get(&ip, 8080, "/greeting-env.txt").as_deref(),
            Some("hello")
        );
        assert_eq!(
            http_get(&ip, 8080, "/greeting-file.txt").as_deref(),
            Some("hello")
        );
        ips.insert(ip);
        // Its output went to the documented log file (python logs the probe requests).
        let name = pod.metadata.name.as_deref().unwrap();
        let log = std::fs::read_to_string(runner.pod_dir(&ns.name, name).join("container.log"))
            .unwrap_or_default();
        assert!(
            log.contains("GET /greeting-file.txt"),
            "log of {name}: {log}"
        );
    }
    assert_eq!(ips.len(), 2, "each pod has its own IP: {ips:?}");
}

#[tokio::test]
async fn a_deleted_pod_loses_its_process_and_is_replaced_by_a_ready_one() {
    let runner = PodRunner::start(&[]);
    let ns = temp_namespace("pod-runner-delete");
    let client = kube_client().await;
    create_web(&client, &ns.name, &web_deployment(&runner, "web", 1)).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    let first = ready_pods(&pods, "web", 1).await.remove(0);
    let first_name = first.metadata.name.clone().unwrap();
    let pid = container_pid(&first).unwrap();
    assert!(process_alive(pid), "pid {pid} of {first_name} runs");

    pods.delete(&first_name, &DeleteParams::default())
        .await
        .unwrap();

    wait_for(
        "the deleted pod to be gone with its process",
        READY_TIMEOUT,
        || async {
            let gone = pods.get_opt(&first_name).await.ok()?.is_none();
            (gone && !process_alive(pid)).then_some(())
        },
    )
    .await;
    let replacement = ready_pods(&pods, "web", 1).await.remove(0);
    assert_ne!(
        replacement.metadata.name.as_deref(),
        Some(first_name.as_str())
    );
    let new_pid = container_pid(&replacement).unwrap();
    assert!(process_alive(new_pid));
}

#[tokio::test]
async fn a_crashing_container_is_restarted_with_its_exit_code_recorded() {
    let runner = PodRunner::start(&[]);
    let ns = temp_namespace("pod-runner-crash");
    let client = kube_client().await;
    let pod: Pod = serde_json::from_value(json!({
        "metadata": { "name": "crash", "labels": runner.pod_labels() },
        "spec": {
            "containers": [{
                "name": "crash",
                "image": "busybox",
                "command": ["/bin/sh", "-c", "echo starting; exit 3"],
            }],
        },
    }))
    .unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    pods.create(&PostParams::default(), &pod).await.unwrap();

    // kubelet's backoff: restarts after 10 s, then 20 s more.
    let status = wait_for(
        "two restarts of the crashing container",
        Duration::from_secs(90),
        || async {
            let status = pods.get("crash").await.ok()?.status?;
            let container = status.container_statuses.as_ref()?.first()?.clone();
            // Between crashes the container waits in back-off; a container without a
            // readiness probe is ready only while its process runs, so read it there.
            let backing_off = container
                .state
                .as_ref()
                .and_then(|s| s.waiting.as_ref())
                .is_some();
            (container.restart_count >= 2 && backing_off).then_some((status, container))
        },
    )
    .await;
    let (pod_status, container) = status;
    assert_eq!(
        pod_status.phase.as_deref(),
        Some("Running"),
        "Always restarts: still Running"
    );
    let waiting = container.state.as_ref().unwrap().waiting.as_ref().unwrap();
    assert_eq!(waiting.reason.as_deref(), Some("CrashLoopBackOff"));
    assert!(!container.ready);
    let last = container.last_state.unwrap().terminated.unwrap();
    assert_eq!(last.exit_code, 3);
    assert_eq!(last.reason.as_deref(), Some("Error"));
    let log =
        std::fs::read_to_string(runner.pod_dir(&ns.name, "crash").join("container.log")).unwrap();
    assert!(
        log.matches("starting").count() >= 3,
        "one line per run: {log}"
    );
}

#[tokio::test]
async fn a_pod_calls_the_apiserver_as_its_service_account_under_rbac() {
    let runner = PodRunner::start(&[]);
    let ns = temp_namespace("pod-runner-sa");
    let client = kube_client().await;
    let n = ns.name.as_str();
    run_ok("kubectl", &["create", "serviceaccount", "reader", "-n", n]);
    run_ok(
        "kubectl",
        &[
            "create",
            "role",
            "read-configmaps",
            "-n",
            n,
            "--verb=get,list",
            "--resource=configmaps",
        ],
    );
    run_ok(
        "kubectl",
        &[
            "create",
            "rolebinding",
            "reader",
            "-n",
            n,
            "--role=read-configmaps",
            &format!("--serviceaccount={n}:reader"),
        ],
    );
    // Through the runner's KUBECONFIG, and by hand from the in-cluster files and env vars.
    let script = r#"
        kubectl auth whoami -o jsonpath='{.status.userInfo.username}' > /out/whoami
        kubectl get configmaps -o name > /out/configmaps 2>&1
        kubectl get secrets > /out/secrets 2>&1
        SA=/var/run/secrets/kubernetes.io/serviceaccount
        kubectl --kubeconfig=/dev/null --server="https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT" \
            --certificate-authority=$SA/ca.crt --token="$(cat $SA/token)" \
            auth whoami -o jsonpath='{.status.userInfo.username}' > /out/whoami-incluster
        cp $SA/namespace /out/namespace
        touch /out/done
        exec sleep 3600
    "#;
    let pod: Pod = serde_json::from_value(json!({
        "metadata": { "name": "client", "labels": runner.pod_labels() },
        "spec": {
            "serviceAccountName": "reader",
            "terminationGracePeriodSeconds": 1,
            "containers": [{
                "name": "client",
                "image": "kubectl",
                "command": ["/bin/sh", "-c", script],
                "volumeMounts": [{ "name": "out", "mountPath": "/out" }],
            }],
            "volumes": [{ "name": "out", "emptyDir": {} }],
        },
    }))
    .unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), n);
    pods.create(&PostParams::default(), &pod).await.unwrap();

    let out = runner.pod_dir(n, "client").join("volumes/out");
    wait_for("the pod's script to finish", READY_TIMEOUT, || async {
        out.join("done").exists().then_some(())
    })
    .await;
    let read = |file: &str| std::fs::read_to_string(out.join(file)).unwrap_or_default();
    let account = format!("system:serviceaccount:{n}:reader");
    assert_eq!(read("whoami"), account, "runner log:\n{}", runner.log());
    assert_eq!(read("whoami-incluster"), account);
    assert_eq!(read("namespace"), n);
    assert!(
        read("configmaps").contains("configmap/kube-root-ca.crt"),
        "{}",
        read("configmaps")
    );
    assert!(
        read("secrets").contains("Forbidden"),
        "RBAC denies secrets: {}",
        read("secrets")
    );
}

/// A bare pod run by `runner`, from its container spec.
fn pod(runner: &PodRunner, name: &str, spec: serde_json::Value) -> Pod {
    serde_json::from_value(json!({
        "metadata": { "name": name, "labels": runner.pod_labels() },
        "spec": spec,
    }))
    .unwrap()
}

/// The pod's first container status once `check` accepts it.
async fn container_status_when(
    pods: &Api<Pod>,
    name: &str,
    what: &str,
    check: impl Fn(&ContainerStatus) -> bool,
) -> ContainerStatus {
    wait_for(what, Duration::from_secs(90), || async {
        let status = pods.get(name).await.ok()?.status?;
        let container = status.container_statuses?.into_iter().next()?;
        check(&container).then_some(container)
    })
    .await
}

#[tokio::test]
async fn a_failing_liveness_probe_restarts_the_container() {
    let runner = PodRunner::start(&[]);
    let ns = temp_namespace("pod-runner-liveness");
    let client = kube_client().await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    let spec = json!({
        "containers": [{
            "name": "web",
            "image": "python:3",
            "command": ["/usr/bin/python3", "-m", "http.server", "--bind", "$(POD_IP)", "8080"],
            "env": [{ "name": "POD_IP", "valueFrom": { "fieldRef": { "fieldPath": "status.podIP" } } }],
            "livenessProbe": {
                "httpGet": { "path": "/no-such-page", "port": 8080 },
                "periodSeconds": 1,
                "failureThreshold": 2,
            },
        }],
    });
    pods.create(&PostParams::default(), &pod(&runner, "unhealthy", spec))
        .await
        .unwrap();

    let container = container_status_when(&pods, "unhealthy", "a liveness restart", |c| {
        c.restart_count >= 1
    })
    .await;
    let killed = container.last_state.unwrap().terminated.unwrap();
    assert_eq!(
        killed.exit_code,
        128 + 15,
        "stopped with SIGTERM: {killed:?}"
    );
}

#[tokio::test]
async fn a_process_ignoring_sigterm_is_killed_after_the_grace_period_then_the_pod_is_removed() {
    let runner = PodRunner::start(&[]);
    let ns = temp_namespace("pod-runner-grace");
    let client = kube_client().await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    let spec = json!({
        "terminationGracePeriodSeconds": 3,
        "containers": [{
            "name": "stubborn",
            "image": "busybox",
            "command": ["/bin/sh", "-c", "trap 'echo got SIGTERM' TERM; while true; do sleep 0.2; done"],
        }],
    });
    pods.create(&PostParams::default(), &pod(&runner, "stubborn", spec))
        .await
        .unwrap();
    let running = container_status_when(&pods, "stubborn", "the process to run", |c| c.ready).await;
    let pid: u32 = running
        .container_id
        .unwrap()
        .rsplit("://")
        .next()
        .unwrap()
        .parse()
        .unwrap();

    let deleted_at = std::time::Instant::now();
    pods.delete("stubborn", &DeleteParams::default())
        .await
        .unwrap();
    wait_for("the pod to be removed", Duration::from_secs(30), || async {
        pods.get_opt("stubborn").await.ok()?.is_none().then_some(())
    })
    .await;
    assert!(
        deleted_at.elapsed() >= Duration::from_secs(3),
        "the grace period was honoured"
    );
    assert!(!process_alive(pid), "the process was killed");
    let log = std::fs::read_to_string(runner.pod_dir(&ns.name, "stubborn").join("container.log"))
        .unwrap();
    assert!(log.contains("got SIGTERM"), "SIGTERM came first: {log}");
}

#[tokio::test]
async fn a_restarted_runner_restarts_the_processes_of_its_pods() {
    let mut runner = PodRunner::start(&[]);
    let ns = temp_namespace("pod-runner-adopt");
    let client = kube_client().await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    let spec = json!({
        "containers": [{ "name": "sleeper", "image": "busybox", "command": ["/bin/sleep", "3600"] }],
    });
    pods.create(&PostParams::default(), &pod(&runner, "sleeper", spec))
        .await
        .unwrap();
    let before = container_status_when(&pods, "sleeper", "the process to run", |c| c.ready).await;
    let ip_before = pods.get("sleeper").await.unwrap().status.unwrap().pod_ip;

    runner.restart();

    let after = container_status_when(&pods, "sleeper", "a new process after the restart", |c| {
        c.ready && c.container_id != before.container_id
    })
    .await;
    assert_eq!(after.restart_count, before.restart_count + 1);
    let old_pid: u32 = before
        .container_id
        .unwrap()
        .rsplit("://")
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        !process_alive(old_pid),
        "the old process ended with the old runner"
    );
    let ip_after = pods.get("sleeper").await.unwrap().status.unwrap().pod_ip;
    assert_eq!(ip_after, ip_before, "an adopted pod keeps its IP");
}
