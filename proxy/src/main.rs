//! The `portcullis` binary: parse the command line, load the config, run.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use portcullis::{App, Config};
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(
    version,
    about = "A pull-through OCI registry proxy that verifies on fetch"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the registry API.
    Serve {
        /// Configuration file; without it, the embedded default (a Docker Hub mirror on
        /// 127.0.0.1:5000).
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Load and validate a configuration file, then exit.
    CheckConfig {
        #[arg(long, short)]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let result = match cli.command {
        Command::Serve { config } => load(config.as_deref()).and_then(serve),
        Command::CheckConfig { config } => load(Some(&config)).map(|_| {
            println!("{}: ok", config.display());
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("portcullis: {e}");
            ExitCode::from(2)
        }
    }
}

fn load(path: Option<&std::path::Path>) -> Result<Config, String> {
    match path {
        Some(p) => Config::from_file(p).map_err(|e| e.to_string()),
        None => Ok(Config::embedded()),
    }
}

fn serve(config: Config) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    runtime.block_on(async move {
        let listen = config.server.listen;
        let grace = config.server.shutdown_grace;
        let app = Arc::new(App::new(config)?);
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        tracing::info!(%addr, "listening");
        portcullis::server::serve(app, listener, portcullis::server::signal(), grace)
            .await
            .map_err(|e| e.to_string())
    })
}
