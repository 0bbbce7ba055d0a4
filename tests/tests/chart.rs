//! The Helm chart: lints, renders, installs the CRD into the real apiserver, and `helm upgrade`
//! updates a changed CRD (which Helm's own `crds/` folder would never do).

// A failed step fails the test: panicking is how these harness helpers report it.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Api;
use streamjob_tests::{kube_client, repo_root, run, run_ok, unique_name, wait_for};

const CRD: &str = "streamjobs.streamjob.dev";

fn chart_dir() -> String {
    repo_root()
        .join("charts/streamjob-operator")
        .to_string_lossy()
        .into_owned()
}

#[test]
fn chart_passes_helm_lint() {
    let out = run_ok("helm", &["lint", "--strict", &chart_dir()]);
    assert!(out.contains("0 chart(s) failed"), "helm lint output: {out}");
}

#[test]
fn chart_renders_every_object_with_secure_defaults() {
    let rendered = run_ok(
        "helm",
        &[
            "template",
            "sj",
            &chart_dir(),
            "--namespace",
            "streamjob-system",
        ],
    );
    for kind in [
        "CustomResourceDefinition",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "Deployment",
        "Service",
    ] {
        assert!(
            rendered.contains(&format!("kind: {kind}\n")),
            "rendered chart has no {kind}"
        );
    }
    assert!(
        rendered.contains("helm.sh/resource-policy: keep"),
        "CRD is kept on uninstall by default"
    );
    assert!(rendered.contains("readOnlyRootFilesystem: true"));
    assert!(rendered.contains("runAsNonRoot: true"));
    assert!(rendered.contains("--leader-elect=true"));
    assert!(
        !rendered.contains("kind: ServiceMonitor"),
        "ServiceMonitor is opt-in"
    );

    let without_crd = run_ok(
        "helm",
        &[
            "template",
            "sj",
            &chart_dir(),
            "--set",
            "crds.install=false",
            "--set",
            "metrics.serviceMonitor.enabled=true",
        ],
    );
    assert!(!without_crd.contains("kind: CustomResourceDefinition"));
    assert!(without_crd.contains("kind: ServiceMonitor"));

    // Workers pull with the chart's imagePullSecrets unless told otherwise.
    assert!(!rendered.contains("- --worker-image-pull-secrets="));
    let render = |values: &[&str]| {
        let chart = chart_dir();
        let mut args = vec!["template", "sj", chart.as_str()];
        for value in values {
            args.extend(["--set", value]);
        }
        run_ok("helm", &args)
    };
    let registries = [
        "imagePullSecrets[0].name=registry",
        "imagePullSecrets[1].name=mirror",
    ];
    assert!(render(&registries).contains("--worker-image-pull-secrets=registry,mirror\n"));
    let own = [
        registries[0],
        "operator.workerImagePullSecrets[0].name=workers",
    ];
    assert!(render(&own).contains("--worker-image-pull-secrets=workers\n"));
}

#[test]
fn values_schema_rejects_unknown_and_mistyped_values() {
    let out = run(
        "helm",
        &[
            "template",
            "sj",
            &chart_dir(),
            "--set",
            "operator.replicas=many",
        ],
    );
    assert!(
        !out.status.success(),
        "a string replica count must be rejected"
    );
    let out = run(
        "helm",
        &[
            "template",
            "sj",
            &chart_dir(),
            "--set",
            "operatr.replicas=1",
        ],
    );
    assert!(
        !out.status.success(),
        "a misspelt top-level key must be rejected"
    );
}

async fn crd_printer_columns(api: &Api<CustomResourceDefinition>) -> Option<Vec<String>> {
    let crd = api.get(CRD).await.ok()?;
    Some(
        crd.spec.versions[0]
            .additional_printer_columns
            .iter()
            .flatten()
            .map(|c| c.name.clone())
            .collect(),
    )
}

#[tokio::test]
async fn helm_install_creates_the_crd_and_helm_upgrade_updates_it() {
    let client = kube_client().await;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    // Start from no CRD so the release owns it (another test may have applied it).
    if crds.get_opt(CRD).await.unwrap().is_some() {
        run_ok(
            "kubectl",
            &["delete", "crd", CRD, "--wait=true", "--timeout=60s"],
        );
    }
    let release = unique_name("sj");
    let namespace = unique_name("helm");
    run_ok(
        "helm",
        &[
            "install",
            &release,
            &chart_dir(),
            "--namespace",
            &namespace,
            "--create-namespace",
        ],
    );

    let columns = wait_for("the chart's CRD", Duration::from_secs(30), || {
        crd_printer_columns(&crds)
    })
    .await;
    assert!(
        columns.contains(&"Phase".to_owned()),
        "installed CRD: {columns:?}"
    );
    run_ok(
        "kubectl",
        &[
            "wait",
            "--for=condition=Established",
            &format!("crd/{CRD}"),
            "--timeout=30s",
        ],
    );

    // A new chart version whose CRD gained a printer column.
    let upgraded = tempdir("chart-upgrade");
    copy_dir(&repo_root().join("charts/streamjob-operator"), &upgraded);
    let crd_file = upgraded.join("files/streamjob.crd.yaml");
    let crd_yaml = std::fs::read_to_string(&crd_file).unwrap();
    let marker = "    - jsonPath: .status.phase\n";
    assert!(
        crd_yaml.contains(marker),
        "CRD layout changed; update this test"
    );
    let crd_yaml = crd_yaml.replacen(
        marker,
        "    - jsonPath: .spec.source.kafka.topic\n      name: Topic\n      type: string\n    - jsonPath: .status.phase\n",
        1,
    );
    std::fs::write(&crd_file, crd_yaml).unwrap();
    run_ok(
        "helm",
        &[
            "upgrade",
            &release,
            upgraded.to_str().unwrap(),
            "--namespace",
            &namespace,
        ],
    );

    let columns = crd_printer_columns(&crds).await.unwrap();
    assert!(
        columns.contains(&"Topic".to_owned()),
        "helm upgrade did not update the CRD: {columns:?}"
    );

    // Uninstalling keeps the CRD (resource-policy keep); put back the committed CRD.
    run_ok("helm", &["uninstall", &release, "--namespace", &namespace]);
    assert!(
        crds.get_opt(CRD).await.unwrap().is_some(),
        "CRD must survive helm uninstall"
    );
    run_ok(
        "helm",
        &[
            "upgrade",
            "--install",
            &release,
            &chart_dir(),
            "--namespace",
            &namespace,
        ],
    );
    let columns = crd_printer_columns(&crds).await.unwrap();
    assert!(
        !columns.contains(&"Topic".to_owned()),
        "reinstall restores the committed CRD"
    );
    run_ok("helm", &["uninstall", &release, "--namespace", &namespace]);
    run_ok(
        "kubectl",
        &["delete", "namespace", &namespace, "--wait=false"],
    );
    std::fs::remove_dir_all(&upgraded).ok();
}

fn tempdir(prefix: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(unique_name(prefix));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}
