//! `streamjob-worker`: runs a StreamJob's partitions.

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use anyhow::Context;
use clap::{ArgGroup, Args, Parser, Subcommand};
use streamjob_worker::{
    cli::{LogFormat, init_logging, parse_duration},
    engine::Readiness,
    kafka,
    plan::{self, Plan, STANDALONE_POD},
    plan_watch::{self, PlanConfigMap, PlanFeed},
    supervisor::{PreparedPlan, Supervisor},
};
use tokio::sync::watch;

/// mimalloc, which also replaces `malloc` for librdkafka (the crate's `override` feature):
/// every produced record is allocated by the hot loop and freed by librdkafka's broker thread
/// after delivery, and glibc's allocator serialises such cross-thread frees on the hot loop's
/// arena lock (measured: a sixth of the worker's CPU in futex waits and wake-ups; see
/// `docs/benchmarks.md`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "streamjob-worker",
    version,
    about = "Runs a StreamJob's Kafka partitions"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run partitions until SIGTERM/SIGINT.
    Run(RunArgs),
}

#[derive(Args)]
#[command(group(ArgGroup::new("plan_source").required(true).args(["plan", "job", "plan_configmap"])))]
struct RunArgs {
    /// Plan file (YAML or JSON) naming this pod's partitions.
    #[arg(long)]
    plan: Option<PathBuf>,
    /// StreamJob manifest: run every partition of its topic in this process.
    #[arg(long)]
    job: Option<PathBuf>,
    /// ConfigMap holding the plan (`data["plan.yaml"]`), followed as the operator updates it.
    #[arg(long, env = "STREAMJOB_PLAN_CONFIGMAP")]
    plan_configmap: Option<String>,
    /// Namespace of the plan ConfigMap (default: the kube client's namespace).
    #[arg(long, env = "POD_NAMESPACE")]
    namespace: Option<String>,
    /// This worker's pod name (the plan's assignment key).
    #[arg(long, env = "POD_NAME", default_value = STANDALONE_POD)]
    pod: String,
    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, env = "STREAMJOB_METRICS_ADDR", default_value = "0.0.0.0:9090")]
    metrics_addr: SocketAddr,
    /// Directory of extra librdkafka properties, one file per property (a mounted Secret).
    #[arg(long, env = "STREAMJOB_KAFKA_PROPERTIES")]
    kafka_properties: Option<PathBuf>,
    /// Time allowed, after SIGTERM, to flush output and write the final checkpoint.
    #[arg(long, env = "STREAMJOB_SHUTDOWN_DEADLINE", default_value = "25s", value_parser = parse_duration)]
    shutdown_deadline: Duration,
    /// Processing threads (hot loops) to split this pod's partitions across, each with its
    /// own Kafka clients: for pods with more than one core to spare.
    #[arg(long, env = "STREAMJOB_PROCESSING_THREADS", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=256))]
    processing_threads: u16,
    /// Log format.
    #[arg(long, env = "STREAMJOB_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let Command::Run(args) = Cli::parse().command;
    init_logging(args.log_format);
    let kafka_props = match &args.kafka_properties {
        Some(dir) => kafka::load_properties(dir)?,
        None => Default::default(),
    };
    let readiness = Arc::new(Readiness::default());
    let http = tokio::spawn(streamjob_worker::http::serve(
        args.metrics_addr,
        readiness.clone(),
    ));
    let (stop_tx, mut shutdown) = watch::channel(false);
    tokio::spawn(stop_on_signal(stop_tx));
    let supervisor = Supervisor {
        pod: args.pod.clone(),
        kafka_props,
        readiness,
        shutdown_deadline: args.shutdown_deadline,
        processing_threads: usize::from(args.processing_threads),
    };

    let (first, plans) = match (&args.plan, &args.job, &args.plan_configmap) {
        (_, _, Some(name)) => {
            let client = kube::Client::try_default()
                .await
                .context("cannot build a Kubernetes client")?;
            let source = PlanConfigMap {
                namespace: args
                    .namespace
                    .clone()
                    .unwrap_or_else(|| client.default_namespace().to_owned()),
                name: name.clone(),
            };
            tracing::info!(
                configmap = %source.name,
                namespace = %source.namespace,
                "waiting for the plan"
            );
            let (plans_tx, mut plans) = watch::channel(None);
            tokio::spawn(plan_watch::follow(client, source, plans_tx));
            match supervisor.first_plan(&mut plans, &mut shutdown).await {
                Some(first) => (first, plans),
                None => {
                    tracing::info!("stopped before any plan arrived");
                    return Ok(());
                }
            }
        }
        (Some(path), _, _) => fixed(Plan::load(path)?)?,
        (None, Some(path), _) => {
            let job = plan::load_job(path)?;
            let source = &job.spec.source.kafka;
            let partitions = kafka::partition_count(
                &source.bootstrap_servers,
                &source.topic,
                &supervisor.kafka_props,
            )?;
            fixed(Plan::standalone(job, partitions)?)?
        }
        (None, None, None) => anyhow::bail!("--plan, --job or --plan-configmap is required"),
    };
    supervisor
        .run(first, plans, shutdown)
        .await
        .context("worker failed while stopping")?;
    http.abort();
    Ok(())
}

/// A plan given once (`--plan`, `--job`), and a feed that never brings another. A plan that
/// cannot run ends the process.
fn fixed(plan: Plan) -> anyhow::Result<(PreparedPlan, PlanFeed)> {
    let (_, no_more_plans) = watch::channel(None);
    Ok((PreparedPlan::new(Arc::new(plan))?, no_more_plans))
}

async fn stop_on_signal(stop: watch::Sender<bool>) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
    stop.send_replace(true);
}
