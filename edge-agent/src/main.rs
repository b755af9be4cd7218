//! The `edge-agent` binary: `edge-agent --config FILE` bridges the topics of existing MQTT brokers into the mesh;
//! `edge-agent check --config FILE` validates the file. Same conventions as `meshgate`: one TOML file,
//! `MESHGATE_...` environment overrides, errors naming the file, the key and the problem.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use meshgate_edge_agent::bridge::{AgentConfig, agent};
use meshgate_edge_agent::{config_file, process};

/// edge-agent: an existing broker's MQTT topics in, durable CloudEvents out.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// The configuration file (it needs at least one `[[bridges]]` table).
    #[arg(long, short, global = true, env = "MESHGATE_CONFIG")]
    config: Option<PathBuf>,
    /// Log format.
    #[arg(long, value_enum, default_value_t = process::LogFormat::Human, global = true)]
    log_format: process::LogFormat,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Validate the configuration and exit.
    Check,
}

fn load(cli: &Cli) -> Result<AgentConfig, ExitCode> {
    let Some(path) = cli.config.as_deref() else {
        eprintln!("edge-agent: a configuration file is needed (--config FILE) with at least one [[bridges]] table");
        return Err(ExitCode::from(2));
    };
    config_file::load(Some(path), "", std::env::vars(), AgentConfig::validate).map_err(|e| {
        eprintln!("edge-agent: configuration error: {e}");
        ExitCode::from(2)
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Check) = cli.command {
        return match load(&cli) {
            Ok(_) => {
                println!("edge-agent: configuration is valid");
                ExitCode::SUCCESS
            }
            Err(code) => code,
        };
    }
    process::init_logging(cli.log_format);
    let config = match load(&cli) {
        Ok(c) => c,
        Err(code) => return code,
    };
    process::run_service("edge-agent", agent::run(config, process::shutdown_signal()))
}
