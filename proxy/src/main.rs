//! The `portcullis` binary: parse the command line, load the config, run.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use portcullis::airgap::AirgapError;
use portcullis::app::AppError;
use portcullis::config::{ConfigError, LogFormat};
use portcullis::error::Report;
use portcullis::pin::PinError;
use portcullis::tls::TlsError;
use portcullis::verify::VerifyError;
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
        /// Air-gapped: never contact an upstream, serve the cache only.
        #[arg(long)]
        offline: bool,
    },
    /// Import an OCI image layout (a directory or a .tar), verifying every image against the
    /// policy; only what passes is imported. Exits 1 if anything was rejected.
    Import {
        path: PathBuf,
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// The `registry/repository` of entries whose ref name is a bare tag.
        #[arg(long)]
        name: Option<String>,
    },
    /// Export images (`registry/repo:tag`) and their signatures from the cache into an OCI
    /// layout directory, or a tar when OUTPUT ends in .tar.
    Export {
        #[arg(required = true)]
        images: Vec<String>,
        #[arg(long, short)]
        output: PathBuf,
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Pull and verify the `[[mirror]]` images of the config, then export them.
    Mirror {
        #[arg(long, short)]
        config: PathBuf,
        #[arg(long, short)]
        output: PathBuf,
    },
    /// Inspect or collect the cache (stop the server first: the cache is a RocksDB directory).
    Cache {
        #[command(subcommand)]
        action: CacheAction,
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
    /// Record a reviewed digest: resolve IMAGE as a pull would, show its digest (and
    /// platforms), and append it to a `[[trust.pins]]` file with a comment saying which tag, who
    /// and when. With --check, list the pins whose tag now points elsewhere (exit 1 if any).
    Pin {
        /// `registry/repository:tag` or `…@sha256:…`, e.g. `docker.io/library/alpine:3.20`.
        #[arg(required_unless_present = "check")]
        image: Option<String>,
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// The `[[trust.pins]]` set to edit (needed when the config has more than one).
        #[arg(long)]
        pins: Option<String>,
        #[arg(long, conflicts_with = "image")]
        check: bool,
    },
    /// Read a secret from standard input and print its argon2 hash for an `[auth]` users file.
    HashSecret,
    /// Load and validate a configuration file, then exit.
    CheckConfig {
        #[arg(long, short)]
        config: PathBuf,
    },
}

/// Why a command failed (exit 2), printed with its chain of causes.
#[derive(Debug, thiserror::Error)]
enum Failure {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot start the runtime: {0}")]
    Runtime(#[source] std::io::Error),
    #[error(transparent)]
    App(#[from] AppError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Airgap(#[from] AirgapError),
    #[error(transparent)]
    Verify(#[from] VerifyError),
    #[error(transparent)]
    Pin(#[from] PinError),
    #[error("the configuration has no [cache.shared] to collect")]
    NoSharedTier,
    #[error("collecting the shared tier: {0}")]
    Shared(#[from] portcullis_cache::shared::SharedError),
    #[error("cannot read the secret from standard input: {0}")]
    Stdin(#[source] std::io::Error),
    #[error("cannot hash the secret: {0}")]
    Hash(#[source] argon2::password_hash::Error),
    /// `what` is empty for the registry port, ` for metrics` for the metrics one.
    #[error("cannot listen on {addr}{what}: {source}")]
    Listen {
        addr: SocketAddr,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("serving: {0}")]
    Serve(#[source] std::io::Error),
}

#[derive(Subcommand)]
enum CacheAction {
    /// List held tags: name:tag, digest, bytes, verdict, last access.
    Ls {
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Evict to the configured size and remove unreferenced blobs. With --shared, collect the
    /// `[cache.shared]` bucket instead (safe while replicas serve): delete what no manifest
    /// named by a tag mapping or referrer list written within --keep references.
    Gc {
        #[arg(long, short)]
        config: Option<PathBuf>,
        #[arg(long)]
        shared: bool,
        /// With --shared: records older than this keep nothing (and are deleted).
        #[arg(long, default_value = "7d", value_parser = humantime::parse_duration)]
        keep: std::time::Duration,
        /// With --shared: content younger than this is never deleted (a pull under way may not
        /// have written the tag mapping that keeps it yet).
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        grace: std::time::Duration,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // `serve` logs in the format its config asks for; every other command in text.
    let serving = match &cli.command {
        Command::Serve { config, .. } => Some(load(config.as_deref())),
        _ => None,
    };
    let json = matches!(&serving, Some(Ok(c)) if c.log.format == LogFormat::Json);
    init_logging(json);
    let result = match cli.command {
        Command::Verify {
            image,
            config,
            json,
        } => return load(config.as_deref()).map_or_else(fail, |c| verify(c, &image, json)),
        Command::Serve { config, offline } => serving.expect("loaded above").and_then(|mut c| {
            c.server.offline |= offline;
            serve(c, config)
        }),
        Command::Import { path, config, name } => {
            return run_app(config.as_deref(), |app, rt| {
                let lines = rt.block_on(portcullis::airgap::import::import(
                    &app,
                    &path,
                    name.as_deref(),
                ))?;
                for l in &lines {
                    println!("{l}");
                }
                Ok(lines.iter().all(|l| l.outcome != "rejected"))
            })
        }
        Command::Export {
            images,
            output,
            config,
        } => {
            return run_app(config.as_deref(), |app, _| {
                for r in portcullis::airgap::export::export(&app, &images, &output)? {
                    println!("exported {r}");
                }
                Ok(true)
            })
        }
        Command::Mirror { config, output } => {
            return run_app(Some(&config), |app, rt| {
                let (lines, ok) = rt.block_on(portcullis::airgap::mirror::mirror(&app, &output))?;
                for l in lines {
                    println!("{l}");
                }
                Ok(ok)
            })
        }
        Command::Cache {
            action:
                CacheAction::Gc {
                    config,
                    shared: true,
                    keep,
                    grace,
                },
        } => gc_shared(config.as_deref(), keep, grace),
        Command::Cache { action } => {
            let (config, gc) = match action {
                CacheAction::Ls { config } => (config, false),
                CacheAction::Gc { config, .. } => (config, true),
            };
            return run_app(config.as_deref(), |app, _| {
                if gc {
                    println!("{}", portcullis::airgap::admin::gc(&app)?);
                } else {
                    for l in portcullis::airgap::admin::ls(&app)? {
                        println!("{l}");
                    }
                }
                Ok(true)
            });
        }
        Command::Pin {
            image,
            config,
            pins,
            check,
        } => {
            let config = match load(config.as_deref()) {
                Ok(c) => c,
                Err(e) => return fail(e),
            };
            return pin(config, image.as_deref(), pins.as_deref(), check);
        }
        Command::HashSecret => {
            let mut secret = String::new();
            std::io::stdin()
                .read_line(&mut secret)
                .map_err(Failure::Stdin)
                .and_then(|_| {
                    portcullis::auth::hash_secret(secret.trim_end_matches(['\r', '\n']))
                        .map_err(Failure::Hash)
                })
                .map(|h| println!("{h}"))
        }
        Command::CheckConfig { config } => load(Some(&config)).map(|_| {
            println!("{}: ok", config.display());
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(e),
    }
}

/// `cache gc --shared`: the bucket alone, without this node's cache (which a serving replica
/// holds open).
fn gc_shared(
    config: Option<&std::path::Path>,
    keep: std::time::Duration,
    grace: std::time::Duration,
) -> Result<(), Failure> {
    let config = load(config)?;
    let shared = config.cache.shared.as_ref().ok_or(Failure::NoSharedTier)?;
    let rt = runtime()?;
    let done = rt.block_on(async {
        let bucket = portcullis_cache::shared::Shared::open(shared, "gc")?;
        portcullis::shared::gc::collect(
            &bucket,
            keep,
            grace,
            config.server.max_manifest_size.as_u64(),
        )
        .await
    })?;
    println!("{done}");
    Ok(())
}

fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(Failure::Runtime)
}

/// Runs a command on an [`App`] built from the config (inside a runtime, for the blocking pool
/// and timers the cache and fetches use): 0 when it returns `Ok(true)`, 1 for `Ok(false)`, 2 for
/// an error.
/// How long a command waits at exit for a blob write that is under way.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(60);

fn run_app(
    config: Option<&std::path::Path>,
    f: impl FnOnce(App, &tokio::runtime::Runtime) -> Result<bool, Failure>,
) -> ExitCode {
    let result = load(config).and_then(|c| {
        let rt = runtime()?;
        let app = {
            let _guard = rt.enter();
            App::new(c)?
        };
        let out = f(app, &rt);
        // Background work (fetch jobs, blob writers, eviction) holds the store: cancel the
        // tasks and wait for the blocking threads, so that RocksDB is closed by the last of
        // them before the process exits, never under its feet (which crashed `mirror`).
        rt.shutdown_timeout(SHUTDOWN_GRACE);
        out
    });
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => fail(e),
    }
}

fn fail(e: Failure) -> ExitCode {
    eprintln!("portcullis: {}", Report(&e));
    ExitCode::from(2)
}

fn verify(config: Config, image: &str, json: bool) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(Failure::Runtime(e)),
    };
    let verdict = match runtime.block_on(portcullis::verify::verify(config, image)) {
        Ok(v) => v,
        Err(e) => return fail(e.into()),
    };
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&verdict).expect("verdict serialises")
        );
    } else {
        print!("{}", verdict.report());
    }
    match verdict.decision {
        portcullis_policy::Decision::Deny => ExitCode::from(1),
        _ => ExitCode::SUCCESS,
    }
}

fn pin(config: Config, image: Option<&str>, set: Option<&str>, check: bool) -> ExitCode {
    let result = runtime().and_then(|rt| {
        let out = rt.block_on(async {
            match image {
                Some(image) if !check => portcullis::pin::pin(config, image, set)
                    .await
                    .map(|lines| (lines, true)),
                _ => portcullis::pin::check(config, set).await,
            }
        });
        rt.shutdown_timeout(SHUTDOWN_GRACE);
        Ok(out?)
    });
    match result {
        Ok((lines, ok)) => {
            for l in lines {
                println!("{l}");
            }
            if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => fail(e),
    }
}

fn load(path: Option<&std::path::Path>) -> Result<Config, Failure> {
    match path {
        Some(p) => Ok(Config::from_file(p)?),
        None => Ok(Config::embedded()),
    }
}

fn init_logging(json: bool) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        fmt.json().init();
    } else {
        fmt.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init();
    }
}

fn serve(config: Config, path: Option<PathBuf>) -> Result<(), Failure> {
    let runtime = runtime()?;
    runtime.block_on(async move {
        let listen = config.server.listen;
        let grace = config.server.shutdown_grace;
        let tls = match config.server.tls_cert {
            Some(_) => Some(Arc::new(portcullis::tls::Tls::new(&config.server)?)),
            None => None,
        };
        let metrics_listen = config.metrics.listen;
        let state: portcullis::server::State =
            Arc::new(arc_swap::ArcSwap::from_pointee(App::new(config)?));
        state.load().collect_orphans();
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|source| Failure::Listen {
                addr: listen,
                what: "",
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| Failure::Listen {
            addr: listen,
            what: "",
            source,
        })?;
        if let Some(m) = metrics_listen {
            let ml = tokio::net::TcpListener::bind(m)
                .await
                .map_err(|source| Failure::Listen {
                    addr: m,
                    what: " for metrics",
                    source,
                })?;
            tracing::info!(addr = %m, "metrics listening");
            tokio::spawn(portcullis::server::serve_metrics(Arc::clone(&state), ml));
        }
        tokio::spawn(portcullis::reload::watch(
            Arc::clone(&state),
            path,
            tls.clone(),
        ));
        tracing::info!(%addr, tls = tls.is_some(), "listening");
        portcullis::server::serve_state(state, tls, listener, portcullis::server::signal(), grace)
            .await
            .map_err(Failure::Serve)
    })
}
