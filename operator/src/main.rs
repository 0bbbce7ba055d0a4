//! `streamjob-operator`: the controller binary.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use streamjob_operator::{
    controller::{self, ControllerOptions, desired::WorkerDefaults},
    leader::{Elector, LeaseConfig},
    telemetry::{self, Metrics},
};
use streamjob_worker::cli::{LogFormat, init_logging, parse_duration};
use tokio::sync::watch;

#[derive(Parser)]
#[command(
    name = "streamjob-operator",
    version,
    about = "Runs StreamJobs on Kubernetes"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the StreamJob CustomResourceDefinition as YAML.
    Crd,
    /// Run the controller until SIGTERM/SIGINT.
    Run(Box<RunArgs>),
}

#[derive(Args)]
struct RunArgs {
    /// Watch only this namespace (default: every namespace).
    #[arg(long, env = "STREAMJOB_WATCH_NAMESPACE")]
    namespace: Option<String>,
    /// Take part in leader election through a Lease; only the leader reconciles.
    #[arg(long, default_value_t = false, num_args = 0..=1, default_missing_value = "true")]
    leader_elect: bool,
    /// Name of the leader-election Lease.
    #[arg(long, default_value = "streamjob-operator")]
    lease_name: String,
    /// Namespace of the Lease (default: this pod's namespace, else `default`).
    #[arg(long, env = "POD_NAMESPACE")]
    lease_namespace: Option<String>,
    /// This replica's identity in the Lease and in events (default: pod name or hostname).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Seconds a Lease holds without renewal.
    #[arg(long, default_value_t = 15)]
    lease_duration: u64,
    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, env = "STREAMJOB_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    metrics_addr: SocketAddr,
    /// Worker image for StreamJobs that set no `spec.image`.
    #[arg(
        long,
        env = "STREAMJOB_WORKER_IMAGE",
        default_value = "ghcr.io/streamjob/streamjob:0.1.0"
    )]
    worker_image: String,
    /// Image pull Secrets (comma-separated names) for the workers of StreamJobs that set no
    /// `spec.imagePullSecrets`.
    #[arg(
        long,
        env = "STREAMJOB_WORKER_IMAGE_PULL_SECRETS",
        value_delimiter = ',',
        num_args = 0..
    )]
    worker_image_pull_secrets: Vec<String>,
    /// Reconciles running at once.
    #[arg(long, default_value_t = 16)]
    concurrency: u16,
    /// How long a job's triggers (its own changes, its children's, its pods') are gathered
    /// before one reconcile runs for all of them, e.g. `250ms`; `0s` reconciles on each.
    #[arg(long, default_value = "250ms", value_parser = parse_duration)]
    debounce: Duration,
    /// How often a running job's status (offsets, lag, checkpoints, topic partitions) is
    /// refreshed, e.g. `30s`.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    status_interval: Duration,
    /// How long workers get to write their parts of a rescale's savepoint, from when the
    /// handover plan is published; partitions whose part is missing then restore from their
    /// newest checkpoints (they replay from its offset; nothing is lost).
    #[arg(long, default_value = "120s", value_parser = parse_duration)]
    savepoint_timeout: Duration,
    /// Log format.
    #[arg(long, env = "STREAMJOB_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

/// Threads for blocking calls (Kafka metadata requests): reconciles beyond this many wait
/// for one, and each thread costs memory (its stack, and often an allocator arena).
const BLOCKING_THREADS: usize = 4;

fn main() -> anyhow::Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(BLOCKING_THREADS)
        .build()
        .context("cannot start the async runtime")?
        .block_on(cli(Cli::parse()))
}

async fn cli(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Crd => {
            let yaml =
                streamjob_operator::crdgen::crd_yaml().context("failed to render the CRD")?;
            print!("{yaml}");
            Ok(())
        }
        Command::Run(args) => run(*args).await,
    }
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    init_logging(args.log_format);
    let metrics = Arc::new(Metrics::default());
    let http = tokio::spawn(telemetry::serve(args.metrics_addr, metrics.clone()));
    let client = kube::Client::try_default()
        .await
        .context("cannot configure the Kubernetes client")?;
    client
        .apiserver_version()
        .await
        .context("cannot reach the Kubernetes API server")?;
    metrics.set_ready();

    let identity = args.identity.clone().unwrap_or_else(|| {
        std::env::var("HOSTNAME")
            .unwrap_or_else(|_| format!("streamjob-operator-{}", std::process::id()))
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        wait_for_signal().await;
        let _ = stop_tx.send(true);
    });
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };

    let mut elector = args.leader_elect.then(|| {
        Elector::new(
            client.clone(),
            LeaseConfig {
                name: args.lease_name.clone(),
                namespace: args
                    .lease_namespace
                    .clone()
                    .unwrap_or_else(|| "default".into()),
                identity: identity.clone(),
                duration: Duration::from_secs(args.lease_duration.max(3)),
            },
        )
    });
    if let Some(elector) = elector.as_mut() {
        tokio::select! {
            () = elector.acquire() => {}
            () = stopped(stop_rx.clone()) => return Ok(()),
        }
    }
    metrics.set_leader(true);

    let options = ControllerOptions {
        namespace: args.namespace.clone(),
        defaults: WorkerDefaults {
            image: args.worker_image.clone(),
            image_pull_secrets: args.worker_image_pull_secrets.clone(),
        },
        identity,
        concurrency: args.concurrency,
        debounce: args.debounce,
        status_interval: args.status_interval,
        savepoint_timeout: args.savepoint_timeout,
    };
    tracing::info!(namespace = ?options.namespace, "starting the StreamJob controller");
    let controller = controller::run(client, options, metrics.clone(), stopped(stop_rx.clone()));
    let outcome = match elector.as_mut() {
        Some(elector) => tokio::select! {
            () = controller => Ok(()),
            () = elector.hold() => Err(anyhow::anyhow!("lost the leader lease; exiting so a restart stands by")),
        },
        None => {
            controller.await;
            Ok(())
        }
    };
    metrics.set_leader(false);
    if let (Some(elector), Ok(())) = (elector.as_mut(), &outcome) {
        elector.release().await;
    }
    http.abort();
    tracing::info!("operator stopped");
    outcome
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
}
