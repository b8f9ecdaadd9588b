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
    /// Resolve an image, fetch its signatures, evaluate the policy and print the verdict with its
    /// reasons. Exits 0 when the image would be served, 1 when it would be denied.
    Verify {
        /// `registry/repository[:tag][@digest]`, e.g. `ghcr.io/acme/app:v1`.
        image: String,
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Print the verdict as JSON.
        #[arg(long)]
        json: bool,
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
        Command::Verify {
            image,
            config,
            json,
        } => return load(config.as_deref()).map_or_else(fail, |c| verify(c, &image, json)),
        Command::Serve { config } => load(config.as_deref()).and_then(serve),
        Command::CheckConfig { config } => load(Some(&config)).map(|_| {
            println!("{}: ok", config.display());
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(e),
    }
}

fn fail(e: String) -> ExitCode {
    eprintln!("portcullis: {e}");
    ExitCode::from(2)
}

fn verify(config: Config, image: &str, json: bool) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(format!("cannot start the runtime: {e}")),
    };
    let verdict = match runtime.block_on(portcullis::verify::verify(config, image)) {
        Ok(v) => v,
        Err(e) => return fail(e),
    };
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&verdict).expect("verdict serialises")
        );
    } else {
        for line in verdict.message.split(" | ") {
            println!("{line}");
        }
    }
    match verdict.decision {
        portcullis_policy::Decision::Deny => ExitCode::from(1),
        _ => ExitCode::SUCCESS,
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
