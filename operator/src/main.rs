//! `streamjob-operator`: the controller binary.

use anyhow::Context;
use clap::{Parser, Subcommand};

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
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Crd => {
            let yaml =
                streamjob_operator::crdgen::crd_yaml().context("failed to render the CRD")?;
            print!("{yaml}");
        }
    }
    Ok(())
}
