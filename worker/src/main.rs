//! `streamjob-worker`: runs a StreamJob's partitions.

use std::{
    io::IsTerminal,
    net::SocketAddr,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
use streamjob_worker::{
    checkpoint::CheckpointStore,
    engine::{self, EngineContext, EngineExit, Readiness},
    kafka,
    paths::JobPaths,
    pipeline::Pipeline,
    plan::{self, Plan, STANDALONE_POD},
    storage,
};

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
struct RunArgs {
    /// Plan file (YAML or JSON) naming this pod's partitions.
    #[arg(long, conflicts_with = "job", required_unless_present = "job")]
    plan: Option<PathBuf>,
    /// StreamJob manifest: run every partition of its topic in this process.
    #[arg(long)]
    job: Option<PathBuf>,
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
    /// Log format.
    #[arg(long, env = "STREAMJOB_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    text.parse::<kube::core::Duration>()
        .map(Into::into)
        .map_err(|e| e.to_string())
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let Command::Run(args) = Cli::parse().command;
    init_logging(args.log_format);
    let kafka_props = match &args.kafka_properties {
        Some(dir) => kafka::load_properties(dir)?,
        None => Default::default(),
    };
    let plan = match (&args.plan, &args.job) {
        (Some(path), _) => Plan::load(path)?,
        (None, Some(path)) => {
            let job = plan::load_job(path)?;
            let source = &job.spec.source.kafka;
            let partitions =
                kafka::partition_count(&source.bootstrap_servers, &source.topic, &kafka_props)?;
            Plan::standalone(job, partitions)?
        }
        (None, None) => anyhow::bail!("--plan or --job is required"),
    };
    let pipeline = Arc::new(Pipeline::compile(&plan.spec.pipeline).context("invalid pipeline")?);
    let storage = storage::open(&plan.spec.checkpoint.storage)?;
    let paths = JobPaths::new(&storage.prefix, &plan.job.namespace, &plan.job.name);
    let store = CheckpointStore::new(storage, paths);

    let readiness = Arc::new(Readiness::default());
    let http = tokio::spawn(streamjob_worker::http::serve(
        args.metrics_addr,
        readiness.clone(),
    ));
    let stop = Arc::new(AtomicBool::new(false));
    tokio::spawn(stop_on_signal(stop.clone()));

    loop {
        let ctx = EngineContext {
            plan: plan.clone(),
            pod: args.pod.clone(),
            pipeline: pipeline.clone(),
            store: store.clone(),
            kafka_props: kafka_props.clone(),
            readiness: readiness.clone(),
            stop: stop.clone(),
            shutdown_deadline: args.shutdown_deadline,
        };
        match engine::run(ctx).await {
            Ok(EngineExit::Stopped {
                final_checkpoint_complete,
            }) => {
                tracing::info!(final_checkpoint_complete, "worker stopped");
                break;
            }
            Ok(EngineExit::Rewind(reason)) => {
                tracing::warn!(%reason, "restarting from the last checkpoints");
            }
            Err(error) => {
                if stop.load(Ordering::Acquire) {
                    return Err(error).context("worker failed while stopping");
                }
                tracing::error!(%error, "worker failed; retrying in 5s");
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
        }
        if stop.load(Ordering::Acquire) {
            break;
        }
    }
    http.abort();
    Ok(())
}

async fn stop_on_signal(stop: Arc<AtomicBool>) {
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
    stop.store(true, Ordering::Release);
}
