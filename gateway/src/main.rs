//! The `meshgate` binary: `meshgate [--config FILE]`, `meshgate check --config FILE`, `meshgate hash-password`.

use std::io::{BufRead, IsTerminal};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use meshgate_edge_agent::process;
use meshgate_gateway::config::Config;
use meshgate_gateway::{auth, server};

/// Every device connection, event and acknowledgement allocates from many threads at once; glibc's allocator
/// serialised them on its arena locks (a fifth of the CPU in a QoS 1 profile, docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// meshgate: the IoT edge gateway. MQTT devices in, durable CloudEvents out.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// The configuration file; without one, meshgate runs on its embedded defaults.
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
    /// Hash a device password for `[[auth.users]] password_hash` (reads it from stdin).
    HashPassword,
}

fn load(cli: &Cli) -> Result<Config, ExitCode> {
    Config::load(cli.config.as_deref(), std::env::vars()).map_err(|e| {
        eprintln!("meshgate: configuration error: {e}");
        ExitCode::from(2)
    })
}

fn hash_password() -> ExitCode {
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        eprintln!("password (input is echoed; pipe it in to avoid that):");
    }
    let mut line = String::new();
    if stdin.lock().read_line(&mut line).is_err() {
        eprintln!("meshgate: cannot read the password from stdin");
        return ExitCode::FAILURE;
    }
    let password = line.trim_end_matches(['\r', '\n']);
    if password.is_empty() {
        eprintln!("meshgate: empty password");
        return ExitCode::FAILURE;
    }
    match auth::hash_password(password) {
        Ok(hash) => {
            println!("{hash}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("meshgate: cannot hash the password: {e}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::HashPassword) => return hash_password(),
        Some(Command::Check) => {
            let config = match load(&cli) {
                Ok(config) => config,
                Err(code) => return code,
            };
            let file = cli.config.as_ref().map_or_else(|| "<defaults>".into(), |p| p.display().to_string());
            let found = meshgate_gateway::preflight::check(&config);
            for f in &found {
                let level = if f.fatal { "error" } else { "warning" };
                eprintln!("meshgate: {level}: {file}: {}: {}", f.key, f.problem);
            }
            if found.iter().any(|f| f.fatal) {
                // As for a file that does not load: a configuration problem.
                return ExitCode::from(2);
            }
            println!("meshgate: configuration is valid");
            return ExitCode::SUCCESS;
        }
        None => {}
    }
    process::init_logging(cli.log_format);
    let config = match load(&cli) {
        Ok(c) => c,
        Err(code) => return code,
    };
    process::run_service("meshgate", server::run(config, cli.config.clone(), process::shutdown_signal()))
}
