//! The `forge` command line: `forge serve` runs the server; `repo`,
//! `token` and `events` talk to a running server over HTTP; `image`
//! manages the guest images sandboxes boot from.

#![forbid(unsafe_code)]

mod cli;

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "forge",
    version,
    about = "A git forge where every branch is a sandbox"
)]
struct Cli {
    /// Where the forge keeps its state: database, repositories, images.
    #[arg(long, env = "FORGE_DATA_DIR", global = true)]
    data_dir: Option<PathBuf>,
    /// The forge to talk to (client commands).
    #[arg(
        long,
        env = "FORGE_URL",
        default_value = "http://127.0.0.1:7070",
        global = true
    )]
    server: String,
    /// The token for client commands (default: the admin token in the data directory).
    #[arg(long, env = "FORGE_TOKEN", global = true, hide_env_values = true)]
    token: Option<String>,
    /// Print JSON instead of tables (client commands).
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
#[allow(
    clippy::large_enum_variant,
    reason = "parsed once at start-up; `serve`'s options are simply many"
)]
enum Command {
    /// Run the forge server (HTTP API and git over HTTP).
    Serve {
        /// Where a sandbox's git remote may push besides its own branch: a
        /// branch prefix in which `{vm}` stands for the VM's id.
        #[arg(
            long,
            env = "FORGE_SANDBOX_BRANCH_PREFIX",
            default_value = "sandbox/{vm}/"
        )]
        sandbox_branch_prefix: forge::git::push::rules::BranchPrefix,
        /// Branches no push may delete or force-update, besides each
        /// repository's default branch; comma-separated, `release/*` for a prefix.
        #[arg(long, env = "FORGE_PROTECTED_BRANCHES", value_delimiter = ',')]
        protected_branches: Vec<forge::git::push::rules::BranchPattern>,
        /// Address to listen on.
        #[arg(long, env = "FORGE_LISTEN", default_value = "127.0.0.1:7070")]
        listen: SocketAddr,
        /// The database: `postgres://USER:PASSWORD@HOST:PORT/NAME` for
        /// PostgreSQL, or `sqlite://PATH` (default: `forge.db` in the data
        /// directory).
        #[arg(long, env = "FORGE_DATABASE_URL", hide_env_values = true)]
        database_url: Option<forge::store::Database>,
        /// The URL clients reach the forge at (default: http://<listen>).
        #[arg(long, env = "FORGE_PUBLIC_URL")]
        public_url: Option<String>,
        /// How the GitHub review bot posts its verdict: comment (a COMMENT
        /// review) or approve (APPROVE or REQUEST_CHANGES).
        #[arg(long, env = "FORGE_REVIEW_MODE", value_enum, default_value = "comment")]
        review_mode: forge::github::ReviewMode,
        /// Largest git request body accepted, in bytes, after decompression.
        #[arg(long, env = "FORGE_MAX_BODY_BYTES", default_value_t = 2 << 30)]
        max_body_bytes: u64,
        /// Let repository imports (and webhooks) reach loopback addresses.
        #[arg(long, env = "FORGE_ALLOW_LOOPBACK")]
        allow_loopback: bool,
        /// Let repository imports (and webhooks) reach private networks.
        #[arg(long, env = "FORGE_ALLOW_PRIVATE")]
        allow_private: bool,
        #[command(flatten)]
        sandbox: SandboxArgs,
        /// Most sandboxes running or paused in memory at once.
        #[arg(long, env = "FORGE_MAX_SANDBOXES", default_value_t = 200)]
        max_sandboxes: usize,
        /// Seconds a create or fork waits in the queue when the cap is reached.
        #[arg(long, env = "FORGE_SANDBOX_QUEUE_SECS", default_value_t = 30)]
        sandbox_queue_secs: u64,
        /// Live sandboxes one non-admin token may hold (0: no quota).
        #[arg(long, env = "FORGE_MAX_VMS_PER_TOKEN", default_value_t = 0)]
        max_vms_per_token: usize,
        /// Hosts sandboxes may reach through the egress proxy, comma-separated
        /// (`*.domain` for subdomains; default: the package registries and git hosts).
        #[arg(long, env = "FORGE_EGRESS_ALLOW", value_delimiter = ',')]
        egress_allow: Option<Vec<String>>,
        /// Non-public address ranges (CIDR) the egress proxy may connect to,
        /// e.g. a registry mirror on a private network; comma-separated.
        #[arg(long, env = "FORGE_EGRESS_ALLOW_NETS", value_delimiter = ',')]
        egress_allow_nets: Vec<forge::vms::egress::Net>,
        /// A PEM bundle sandboxes trust for TLS (where the way out inspects TLS).
        #[arg(long, env = "FORGE_SANDBOX_CA_BUNDLE")]
        sandbox_ca_bundle: Option<PathBuf>,
        /// Serve dev server previews at `{vm}-{port}.<domain>` too (routed by
        /// `Host`). Must be another site than --public-url's (another
        /// registrable domain), or the forge refuses to start.
        #[arg(long, env = "FORGE_PREVIEW_DOMAIN")]
        preview_domain: Option<String>,
        /// Also serve `GET /metrics` (Prometheus) without a token on this
        /// address; keep it private (e.g. 127.0.0.1:9464). On the main
        /// address `/metrics` needs an admin token.
        #[arg(long, env = "FORGE_METRICS_LISTEN")]
        metrics_listen: Option<std::net::SocketAddr>,
        /// Sandboxes to keep created and paused for creates to take at
        /// once: `default=N` (or `N`) for the forge's image, `<template>=N`
        /// for a template's, comma-separated. They count against the caps.
        #[arg(long, env = "FORGE_WARM_POOL", value_parser = forge::vms::pool::parse_warm_pool, default_value = "")]
        warm_pool: forge::vms::pool::PoolTargets,
        /// Waits between webhook delivery attempts (units ms, s, m, h).
        #[arg(
            long,
            env = "FORGE_WEBHOOK_RETRY_DELAYS",
            default_value = "5s,5m,30m,2h,5h,10h,10h"
        )]
        webhook_retry_delays: String,
        /// Consecutive failed webhook attempts after which a webhook is disabled.
        #[arg(long, env = "FORGE_WEBHOOK_DISABLE_AFTER", default_value_t = 24)]
        webhook_disable_after: u32,
        /// Live sandboxes may be given at most the host's RAM times this
        /// much memory together; more waits in the queue, then gets 429.
        #[arg(long, env = "FORGE_MEMORY_OVERCOMMIT", default_value_t = 2.0)]
        memory_overcommit: f64,
        /// Largest file the files API reads out of a VM, in bytes.
        #[arg(long, env = "FORGE_MAX_FILE_BYTES", default_value_t = 1 << 30)]
        max_file_bytes: u64,
        /// Keep a copy of each sandbox a node pauses to disk in this S3
        /// bucket (`s3://BUCKET[/PREFIX]`), so that it resumes on another
        /// node when its own is lost. Credentials and endpoint from the AWS
        /// variables (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION,
        /// AWS_ENDPOINT_URL for an S3-compatible service).
        #[arg(long, env = "FORGE_SNAPSHOT_STORE")]
        snapshot_store: Option<String>,
    },
    /// Repositories: create, list, delete.
    #[command(subcommand)]
    Repo(cli::RepoCommand),
    /// Access tokens: create, list, revoke.
    #[command(subcommand)]
    Token(cli::TokenCommand),
    /// Print a repository's events (pushes, branches and tags created or deleted).
    Events {
        /// `owner/name`.
        repo: String,
        /// Only events after this cursor.
        #[arg(long, default_value_t = 0)]
        after: i64,
        /// Keep waiting for new events.
        #[arg(long, short)]
        follow: bool,
    },
    /// Sandboxes: create, list, exec, fork, pause, resume, rm.
    #[command(subcommand)]
    Vm(cli::VmCommand),
    /// Snapshots of sandboxes: create, list, show, rm.
    #[command(subcommand)]
    Snapshot(cli::SnapshotCommand),
    /// Templates built from a spec: build, list, show, logs, rm.
    #[command(subcommand)]
    Template(cli::TemplateCommand),
    /// Pipeline runs: list, show, logs.
    #[command(subcommand)]
    Run(cli::RunCommand),
    /// Webhooks: create, list, delete, deliveries, redeliver.
    #[command(subcommand)]
    Hook(cli::HookCommand),
    /// The GitHub App: configure, link, status, unlink.
    #[command(subcommand)]
    Github(cli::GithubCommand),
    /// Guest images: the root filesystem every sandbox starts from.
    #[command(subcommand)]
    Image(ImageCommand),
    /// The forge's database.
    #[command(subcommand)]
    Db(DbCommand),
    /// Sandbox nodes: add, list and remove them (admin), or run this host
    /// as one.
    #[command(subcommand)]
    Node(NodeCommand),
    /// Serve the forge's sandbox and git operations as MCP tools on stdin
    /// and stdout, for an agent's MCP client (the server also serves them
    /// at /v1/mcp).
    Mcp,
}

#[derive(Subcommand)]
enum DbCommand {
    /// Copy every row of one database into another the forge has not used
    /// (migrated here first), in one transaction: e.g. from the SQLite file
    /// to PostgreSQL. Stop `forge serve` first, or rows it writes meanwhile
    /// stay behind.
    Copy {
        /// The database to read (default: `forge.db` in the data directory).
        #[arg(long)]
        from: Option<forge::store::Database>,
        /// The database to write: `postgres://…` or `sqlite://PATH`.
        #[arg(long)]
        to: forge::store::Database,
    },
}

#[derive(Subcommand)]
enum NodeCommand {
    #[command(flatten)]
    Admin(cli::NodeCommand),
    /// Run this host's sandboxes for a control plane: serve them on
    /// `--listen` and report to `--control` every 2 s.
    Run {
        /// The control plane's URL: `https://`, or `http://` on loopback
        /// (the report carries the node's token and key). Several control
        /// planes on one database: their URLs, comma-separated (the node
        /// reports to the next when one does not answer).
        #[arg(
            long,
            env = "FORGE_CONTROL_URL",
            value_delimiter = ',',
            required = true
        )]
        control: Vec<String>,
        /// PEM certificates of a private CA that signs the control plane's
        /// certificate, trusted beside the usual public ones.
        #[arg(long, env = "FORGE_CONTROL_CA")]
        control_ca: Option<PathBuf>,
        /// Report over plain `http://` beyond loopback: the node's token and
        /// key cross the network in clear, so only on a network no one
        /// else can read.
        #[arg(long, env = "FORGE_INSECURE_CONTROL")]
        insecure_control: bool,
        /// The node's token from `forge node add` (better in the
        /// environment than on the command line).
        #[arg(long, env = "FORGE_NODE_TOKEN", hide_env_values = true)]
        token: String,
        /// Where to serve sandboxes to the control plane.
        #[arg(long, env = "FORGE_NODE_LISTEN", default_value = "127.0.0.1:7100")]
        listen: SocketAddr,
        /// The address the control plane dials, when not `--listen`'s
        /// (`0.0.0.0` is not one to dial).
        #[arg(long, env = "FORGE_NODE_ADVERTISE")]
        advertise: Option<String>,
        /// A label placement may ask for, `key=value`; repeat for more.
        #[arg(long = "label", value_parser = cli::parse_label)]
        labels: Vec<(String, String)>,
        /// Memory this node offers, in MiB (default: the host's).
        #[arg(long, env = "FORGE_NODE_MEMORY_MIB")]
        memory_mib: Option<u64>,
        /// Serve TLS on a loopback address too (beyond loopback it always
        /// does, with a certificate made at each start whose SHA-256 the
        /// control plane pins).
        #[arg(long, env = "FORGE_NODE_TLS")]
        tls: bool,
        #[command(flatten)]
        sandbox: Box<SandboxArgs>,
    },
}

/// How this host runs sandboxes: `forge serve`'s and `forge node run`'s.
#[derive(clap::Args)]
struct SandboxArgs {
    /// Sandbox backend: auto (probe the host), container, microvm, none, or
    /// nodes (none on this host: every VM on a sandbox node).
    #[arg(
        long,
        env = "FORGE_SANDBOX_BACKEND",
        value_enum,
        default_value = "auto"
    )]
    sandbox_backend: forge::server::SandboxBackend,
    /// Where sandboxes keep their state (default: <data dir>/sandboxes).
    #[arg(long, env = "FORGE_SANDBOX_DIR")]
    sandbox_dir: Option<PathBuf>,
    /// Seconds a microVM's boot (or resume from disk) may take until its
    /// agent answers; raise it on slow (nested, emulated) hosts.
    #[arg(long, env = "FORGE_SANDBOX_BOOT_SECS", default_value_t = 60)]
    sandbox_boot_secs: u64,
    /// The guest image directory (default: the newest in <data dir>/images).
    #[arg(long, env = "FORGE_IMAGE")]
    image: Option<PathBuf>,
}

impl SandboxArgs {
    fn choice(self, data_dir: PathBuf) -> anyhow::Result<forge::server::SandboxChoice> {
        if self.sandbox_boot_secs == 0 {
            bail!("--sandbox-boot-secs must be at least 1");
        }
        Ok(forge::server::SandboxChoice {
            data_dir,
            sandbox_backend: self.sandbox_backend,
            sandbox_dir: self.sandbox_dir,
            sandbox_boot_timeout: std::time::Duration::from_secs(self.sandbox_boot_secs),
            image: self.image,
        })
    }
}

#[derive(Subcommand)]
enum ImageCommand {
    /// Build the guest image, or reuse the cached one when its inputs are unchanged.
    Build {
        /// The `sandbox-agent` binary installed as init (default: next to this `forge`).
        #[arg(long)]
        agent: Option<PathBuf>,
    },
    /// List the images in the data directory, newest first.
    List,
}

fn main() -> std::process::ExitCode {
    match run(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            // `{:#}` prints the whole cause chain on one line, without a backtrace.
            eprintln!("forge: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let data_dir = match cli.data_dir {
        Some(dir) => dir,
        None => default_data_dir()?,
    };
    let runtime = || {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("cannot start the async runtime")
    };
    let target = cli::Target {
        server: &cli.server,
        token: cli.token.clone(),
        data_dir: &data_dir,
        json: cli.json,
    };
    match cli.command {
        Command::Serve {
            sandbox_branch_prefix,
            protected_branches,
            listen,
            database_url,
            public_url,
            review_mode,
            max_body_bytes,
            allow_loopback,
            allow_private,
            sandbox,
            max_sandboxes,
            sandbox_queue_secs,
            max_vms_per_token,
            egress_allow,
            egress_allow_nets,
            sandbox_ca_bundle,
            preview_domain,
            metrics_listen,
            warm_pool,
            webhook_retry_delays,
            webhook_disable_after,
            memory_overcommit,
            max_file_bytes,
            snapshot_store,
        } => {
            init_logging();
            if !(memory_overcommit > 0.0 && memory_overcommit.is_finite()) {
                bail!("--memory-overcommit must be a positive number, not {memory_overcommit}");
            }
            let sandboxes = sandbox.choice(data_dir.clone())?;
            forge::server::raise_open_files_limit();
            let max_live_mem_mib = forge::server::host_memory_mib()
                .map(|mib| (mib as f64 * memory_overcommit) as u64)
                .unwrap_or(u64::MAX);
            let config = forge::server::Config {
                listen,
                database: database_url
                    .unwrap_or_else(|| forge::store::Database::Sqlite(data_dir.join("forge.db"))),
                data_dir: data_dir.clone(),
                sandbox_branch_prefix,
                protected_branches,
                public_url,
                review_mode,
                max_body_bytes,
                allow_loopback,
                allow_private,
                sandboxes,
                limits: forge::vms::Limits {
                    max_live: max_sandboxes,
                    queue_wait: std::time::Duration::from_secs(sandbox_queue_secs),
                    max_live_per_token: (max_vms_per_token > 0).then_some(max_vms_per_token),
                    max_live_mem_mib,
                    max_file_bytes,
                    warm_pool,
                    ..forge::vms::Limits::default()
                },
                egress_allow,
                egress_allow_nets,
                sandbox_ca_bundle,
                preview_domain,
                metrics_listen,
                webhooks: forge::webhooks::Options {
                    retry_delays: forge::webhooks::parse_delays(&webhook_retry_delays)
                        .map_err(|e| anyhow::anyhow!("--webhook-retry-delays: {e}"))?,
                    disable_after_failures: webhook_disable_after,
                    ..Default::default()
                },
                snapshot_store,
            };
            runtime()?.block_on(forge::server::serve(config))
        }
        Command::Repo(command) => runtime()?.block_on(cli::repo(&target, command)),
        Command::Token(command) => runtime()?.block_on(cli::token(&target, command)),
        Command::Events {
            repo,
            after,
            follow,
        } => runtime()?.block_on(cli::events(&target, &repo, after, follow)),
        Command::Vm(command) => runtime()?.block_on(cli::vm(&target, command)),
        Command::Snapshot(command) => runtime()?.block_on(cli::snapshot(&target, command)),
        Command::Template(command) => runtime()?.block_on(cli::template(&target, command)),
        Command::Run(command) => runtime()?.block_on(cli::run(&target, command)),
        Command::Hook(command) => runtime()?.block_on(cli::hook(&target, command)),
        Command::Github(command) => runtime()?.block_on(cli::github(&target, command)),
        Command::Image(ImageCommand::Build { agent }) => build_image(data_dir, agent),
        Command::Image(ImageCommand::List) => list_images(data_dir),
        Command::Mcp => runtime()?.block_on(cli::mcp(&target)),
        Command::Node(NodeCommand::Admin(command)) => {
            runtime()?.block_on(cli::node(&target, command))
        }
        Command::Node(NodeCommand::Run {
            control,
            control_ca,
            insecure_control,
            token,
            listen,
            advertise,
            labels,
            memory_mib,
            tls,
            sandbox,
        }) => {
            init_logging();
            let sandboxes = sandbox.choice(data_dir)?;
            forge::server::raise_open_files_limit();
            let config = forge::nodes::agent::NodeConfig {
                control,
                control_ca,
                insecure_control,
                token,
                listen,
                advertise,
                labels: labels.into_iter().collect(),
                memory_mib,
                tls,
                sandboxes,
            };
            runtime()?.block_on(forge::nodes::agent::run(config))
        }
        Command::Db(DbCommand::Copy { from, to }) => {
            let from =
                from.unwrap_or_else(|| forge::store::Database::Sqlite(data_dir.join("forge.db")));
            runtime()?.block_on(copy_database(from, to))
        }
    }
}

async fn copy_database(
    from: forge::store::Database,
    to: forge::store::Database,
) -> anyhow::Result<()> {
    if let forge::store::Database::Sqlite(path) = &from
        && !path.exists()
    {
        bail!("no database at {}", path.display());
    }
    let source = forge::store::Store::connect(&from).await?;
    let target = forge::store::Store::connect(&to).await?;
    eprintln!("copying {from} into {to}");
    let started = std::time::Instant::now();
    let counts = source
        .copy_into(&target, |table, rows| eprintln!("  {table}: {rows} rows"))
        .await?;
    let rows: u64 = counts.iter().map(|(_, rows)| rows).sum();
    println!(
        "copied {rows} rows of {} tables in {:.1} s",
        counts.len(),
        started.elapsed().as_secs_f64()
    );
    source.close().await;
    target.close().await;
    Ok(())
}

/// Logs to stderr; `RUST_LOG` filters (default `info`), `FORGE_LOG_FORMAT=json`
/// switches to JSON lines.
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if std::env::var("FORGE_LOG_FORMAT").is_ok_and(|f| f == "json") {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// `$XDG_DATA_HOME/forge`, else `~/.local/share/forge`.
fn default_data_dir() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir).join("forge"));
    }
    let home = std::env::var_os("HOME")
        .context("neither FORGE_DATA_DIR, XDG_DATA_HOME nor HOME is set")?;
    Ok(PathBuf::from(home).join(".local/share/forge"))
}

fn build_image(data_dir: PathBuf, agent: Option<PathBuf>) -> anyhow::Result<()> {
    let agent = match agent {
        Some(path) => path,
        None => std::env::current_exe()
            .context("cannot locate the forge binary")?
            .with_file_name("sandbox-agent"),
    };
    if !agent.is_file() {
        bail!(
            "the sandbox agent binary {} does not exist; build it with `cargo build --release -p sandbox-agent` or pass --agent",
            agent.display()
        );
    }
    let options = guest_image::BuildOptions::new(&data_dir, agent);
    let image = guest_image::build(&options, |progress| eprintln!("{progress}"))
        .context("building the guest image failed")?;
    let how = if image.cached { "cached" } else { "built" };
    println!(
        "image {} {how} in {:.1} s: root {} MiB, ext4 {} MiB ({} MiB allocated); node {}, bun {}",
        image.id,
        image.build_secs,
        image.rootfs_bytes >> 20,
        image.ext4_bytes >> 20,
        image.ext4_allocated_bytes >> 20,
        image.node_version,
        image.bun_version
    );
    println!(
        "  rootfs: {}\n  ext4:   {}",
        image.rootfs.display(),
        image.ext4.display()
    );
    Ok(())
}

fn list_images(data_dir: PathBuf) -> anyhow::Result<()> {
    let images = guest_image::list(&data_dir).context("reading the image cache failed")?;
    if images.is_empty() {
        println!(
            "no images in {}; run `forge image build`",
            data_dir.display()
        );
        return Ok(());
    }
    println!(
        "{:<18} {:>9} {:>9} {:<10} {:<8}",
        "ID", "ROOT MiB", "EXT4 MiB", "NODE", "BUN"
    );
    for image in images {
        println!(
            "{:<18} {:>9} {:>9} {:<10} {:<8}",
            image.id,
            image.rootfs_bytes >> 20,
            image.ext4_allocated_bytes >> 20,
            image.node_version,
            image.bun_version
        );
    }
    Ok(())
}
