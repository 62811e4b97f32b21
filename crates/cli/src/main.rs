//! The `postroom` binary: `postroom serve` runs the broker. Settings come from defaults,
//! then a TOML file (`--config`), then `POSTROOM_*` environment variables and flags.
//!
//! Layout:
//! - `main.rs`: the command line and `serve`.
//! - `bench.rs`: `postroom bench`, the load generator.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

mod bench;
use postroom_server::{Server, ServerConfig};

#[derive(Parser)]
#[command(
    name = "postroom",
    version,
    about = "Postroom: an AMQP 0-9-1 message broker with native Enterprise Integration Patterns"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the broker.
    Serve(ServeArgs),
    /// Measure any AMQP 0-9-1 broker: publish and consume rates, end-to-end latency.
    Bench(bench::BenchArgs),
}

#[derive(clap::Args)]
struct ServeArgs {
    /// AMQP listen address [default: 127.0.0.1:5672]
    #[arg(long, env = "POSTROOM_AMQP_LISTEN")]
    amqp_listen: Option<SocketAddr>,
    /// HTTP listen address [default: 127.0.0.1:15672]
    #[arg(long, env = "POSTROOM_HTTP_LISTEN")]
    http_listen: Option<SocketAddr>,
    /// Data directory [default: ./postroom-data]
    #[arg(long, env = "POSTROOM_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// TOML config file; flags and environment variables override it
    #[arg(long, env = "POSTROOM_CONFIG")]
    config: Option<PathBuf>,
    /// When persistent messages become durable: fsync (confirm after fsync), `interval:<ms>`,
    /// or none [default: fsync]
    #[arg(long, env = "POSTROOM_DURABILITY")]
    durability: Option<String>,
    /// Journal segment size in bytes [default: 67108864]
    #[arg(long, env = "POSTROOM_SEGMENT_SIZE")]
    segment_size: Option<u64>,
    /// Bytes of ready messages a queue keeps in memory before new ones wait in the journal
    /// only [default: 33554432]
    #[arg(long, env = "POSTROOM_QUEUE_MEMORY_LIMIT")]
    queue_memory_limit: Option<usize>,
    /// Bytes of ready messages all queues together keep in memory before new ones wait in
    /// the journal only [default: 268435456]
    #[arg(long, env = "POSTROOM_MESSAGE_MEMORY_LIMIT")]
    message_memory_limit: Option<usize>,
    /// Free bytes the data directory's file system must keep; under it, publishers are
    /// blocked (connection.blocked) until there is room [default: 50000000]
    #[arg(long, env = "POSTROOM_DISK_FREE_LIMIT")]
    disk_free_limit: Option<u64>,
    /// A virtual host clients may open, besides `/`; repeatable (or comma-separated in
    /// POSTROOM_VHOSTS)
    #[arg(long = "vhost", env = "POSTROOM_VHOSTS", value_delimiter = ',')]
    vhosts: Vec<String>,
    /// Start even if a journal segment is damaged inside, skipping the damaged records
    #[arg(long, env = "POSTROOM_RECOVER_SKIP_CORRUPT")]
    recover_skip_corrupt: bool,
    /// Log level or filter (error, warn, info, debug, trace, or a tracing filter)
    #[arg(long, env = "POSTROOM_LOG", default_value = "info")]
    log: String,
}

fn load_config(args: &ServeArgs) -> anyhow::Result<ServerConfig> {
    let mut config = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading config file {}", path.display()))?;
            toml::from_str(&text)
                .with_context(|| format!("parsing config file {}", path.display()))?
        }
        None => ServerConfig::default(),
    };
    if let Some(addr) = args.amqp_listen {
        config.amqp_listen = addr;
    }
    if let Some(addr) = args.http_listen {
        config.http_listen = addr;
    }
    if let Some(dir) = &args.data_dir {
        config.data_dir = dir.clone();
    }
    if let Some(durability) = &args.durability {
        config.durability = durability.parse().map_err(anyhow::Error::msg)?;
    }
    if let Some(size) = args.segment_size {
        config.segment_size = size;
    }
    if let Some(limit) = args.queue_memory_limit {
        config.queue_memory_limit = limit;
    }
    if let Some(limit) = args.message_memory_limit {
        config.message_memory_limit = limit;
    }
    if let Some(limit) = args.disk_free_limit {
        config.disk_free_limit = limit;
    }
    for vhost in &args.vhosts {
        if !config.vhosts.contains(vhost) {
            config.vhosts.push(vhost.clone());
        }
    }
    config.recover_skip_corrupt |= args.recover_skip_corrupt;
    // Fault injection for the fault tests; deliberately not a documented flag.
    if let Ok(spec) = std::env::var("POSTROOM_FAILPOINTS") {
        config.faults = spec.parse().map_err(anyhow::Error::msg)?;
    }
    config.validate()?;
    Ok(config)
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let config = load_config(&args)?;
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating data directory {}", config.data_dir.display()))?;
    let data_dir = config.data_dir.clone();
    let server = Server::start(config).await?;
    tracing::info!(
        amqp = %server.amqp_addr(),
        http = %server.http_addr(),
        data_dir = %data_dir.display(),
        "postroom ready"
    );
    // The machine-readable ready line on stdout: tests and scripts wait for it to learn the
    // ports (listen addresses may ask for port 0).
    println!("postroom ready amqp={} http={}", server.amqp_addr(), server.http_addr());
    wait_for_signal().await?;
    tracing::info!("shutting down");
    server.shutdown().await;
    tracing::info!("stopped");
    Ok(())
}

async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    tokio::select! {
        result = tokio::signal::ctrl_c() => result.context("waiting for SIGINT")?,
        _ = terminate.recv() => {}
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => {
            let filter = tracing_subscriber::EnvFilter::try_new(&args.log)
                .with_context(|| format!("invalid --log value {:?}", args.log))?;
            tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .with_writer(std::io::stderr)
                .init();
            let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            runtime.block_on(serve(args))
        }
        Command::Bench(args) => {
            let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            runtime.block_on(bench::run(args))
        }
    }
}
