//! Command-line pieces both binaries (worker and operator) share: log setup and durations.

use std::{io::IsTerminal as _, time::Duration};

/// Log line format.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// Parses a Go-style duration (`25s`, `1m30s`), the Kubernetes convention.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    text.parse::<kube::core::Duration>()
        .map(Into::into)
        .map_err(|e| e.to_string())
}

/// Installs the global `tracing` subscriber: `RUST_LOG` filters (default `info`), stderr.
pub fn init_logging(format: LogFormat) {
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
