//! `streamjob-pod-runner`: a test-only kubelet stand-in that runs the local stack's Pods as
//! local processes. See docs/pod-runner.md.

use std::{collections::BTreeMap, io::IsTerminal as _, path::PathBuf};

use anyhow::Context as _;
use clap::Parser;
use streamjob_tests::pod_runner::{self, DEFAULT_SELECTOR, RunnerConfig};
use tokio::signal::unix::{SignalKind, signal};

/// Registers a Node, binds the Pods matching the selector to it and runs them as local
/// processes (test-only; KUBECONFIG from the environment).
#[derive(Debug, Parser)]
#[command(name = "streamjob-pod-runner", version)]
struct Cli {
    /// Name of the Node to register and run pods for.
    #[arg(long, default_value = "streamjob-local")]
    node: String,
    /// Label selector of the unbound Pods to bind to the node.
    #[arg(long, default_value = DEFAULT_SELECTOR)]
    selector: String,
    /// CONTAINER_PATH=LOCAL_PATH: run LOCAL_PATH when a container's command is CONTAINER_PATH
    /// (or, for a container without command, when its image is CONTAINER_PATH). Repeatable.
    #[arg(long = "bin", value_name = "CONTAINER_PATH=LOCAL_PATH", value_parser = parse_bin)]
    bins: Vec<(String, PathBuf)>,
    /// Directory of the per-pod directories [default: ${TMPDIR:-/tmp}/streamjob-pod-runner].
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// The /24 inside 127.0.0.0/8 that pod IPs are taken from (hosts .2 to .254).
    #[arg(long, default_value = "127.0.0.0/24")]
    pod_cidr: String,
    /// Bind only pods of this namespace [default: every namespace].
    #[arg(long)]
    namespace: Option<String>,
}

fn parse_bin(value: &str) -> Result<(String, PathBuf), String> {
    let (container, local) = value
        .split_once('=')
        .ok_or_else(|| format!("{value:?} is not CONTAINER_PATH=LOCAL_PATH"))?;
    Ok((container.to_owned(), PathBuf::from(local)))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let cli = Cli::parse();
    let config = RunnerConfig {
        node: cli.node,
        selector: cli.selector,
        bins: cli.bins.into_iter().collect::<BTreeMap<_, _>>(),
        state_dir: cli
            .state_dir
            .unwrap_or_else(|| std::env::temp_dir().join("streamjob-pod-runner")),
        pod_cidr: cli.pod_cidr,
        namespace: cli.namespace,
    };
    let kube_config = kube::Config::infer()
        .await
        .context("cannot load a kubeconfig (set KUBECONFIG)")?;
    let mut terminate = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let shutdown = async move {
        tokio::select! {
            _ = terminate.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    };
    pod_runner::run(kube_config, config, shutdown).await?;
    Ok(())
}
