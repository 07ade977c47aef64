//! `forge serve`: opens the data directory, makes sure an admin token
//! exists, and serves the HTTP API and git until SIGINT or SIGTERM.
//!
//! Data directory layout (mode 0700):
//! - `forge.db` (+ `-wal`, `-shm`): the SQLite database, unless
//!   `--database-url` names a PostgreSQL one;
//! - `repos/<id>.git`: bare repositories;
//! - `admin-token` (mode 0600): the first admin token, for the CLI;
//! - `hooks/pre-receive`: the git hook that keeps protected branches from
//!   being rewritten (`git/push/rules.rs`), rewritten at each start;
//! - `images/`: guest images (`forge image build`).
//!
//! Shutdown: on a signal the listener stops accepting, requests in flight
//! finish (pushes run to their end: git either updates a ref completely or
//! not at all), then the database is closed.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use axum::http::{HeaderName, Request};
use tokio_util::task::TaskTracker;
use tower::ServiceBuilder;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::{DefaultOnResponse, TraceLayer};
use tracing::Level;

use crate::auth::{self, Scope};
use crate::events::EventBus;
use crate::git::Repositories;
use crate::git::push::rules::{self, BranchPattern, BranchPrefix, PushRules};
use crate::store::{NewToken, Store};

/// How the server runs.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    /// The database (SQLite in the data directory unless told otherwise).
    pub database: crate::store::Database,
    pub data_dir: PathBuf,
    /// Where a sandbox's git token may push besides its own branch
    /// (`{vm}`: the VM's id).
    pub sandbox_branch_prefix: BranchPrefix,
    /// Branches no push deletes or rewrites, besides each repository's
    /// default branch.
    pub protected_branches: Vec<BranchPattern>,
    /// The URL clients use to reach the forge; defaults to `http://<listen>`.
    pub public_url: Option<String>,
    /// How the GitHub review bot posts its verdict: a comment, or an
    /// approval (or a request for changes).
    pub review_mode: crate::github::ReviewMode,
    /// Largest accepted git request body, after decompression.
    pub max_body_bytes: u64,
    /// Let imports (and later webhooks) reach loopback addresses.
    pub allow_loopback: bool,
    /// Let imports (and later webhooks) reach private networks.
    pub allow_private: bool,
    /// Webhook delivery: retry schedule, disabling, concurrency.
    pub webhooks: crate::webhooks::Options,
    /// How this host runs sandboxes.
    pub sandboxes: SandboxChoice,
    /// Limits of the VM API.
    pub limits: crate::vms::Limits,
    /// Where copies of sandboxes paused to disk on nodes are kept
    /// (`s3://BUCKET[/PREFIX]`, `nodes::stored`).
    pub snapshot_store: Option<String>,
    /// Hosts sandboxes may reach through the egress proxy (`None`: the
    /// package registries and git hosts of `vms::egress::DEFAULT_ALLOW`).
    pub egress_allow: Option<Vec<String>>,
    /// Non-public address ranges the egress proxy may still connect to.
    pub egress_allow_nets: Vec<crate::vms::egress::Net>,
    /// A PEM bundle sandboxes trust for TLS through the egress proxy.
    pub sandbox_ca_bundle: Option<PathBuf>,
    /// Serve previews at `{vm}-{port}.<domain>` (by the `Host` header).
    pub preview_domain: Option<String>,
    /// Also serve `GET /metrics` without a token here (a private address).
    pub metrics_listen: Option<SocketAddr>,
}

/// The operator's choice of sandbox backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SandboxBackend {
    /// Probe the host: microVMs where the guest kernel boots, else containers.
    Auto,
    Container,
    Microvm,
    /// No sandboxes: the VM API answers 503.
    None,
    /// None on this host: every VM runs on a sandbox node (`forge node`).
    Nodes,
}

/// What handlers see; resolved from [`Config`] once the listener is bound.
#[derive(Debug, Clone)]
pub struct Settings {
    /// What a push may change (sandboxes' branches, protected branches).
    pub push_rules: PushRules,
    /// The forge's git hooks (`<data>/hooks`), which receive-pack runs when
    /// a push must be a fast-forward.
    pub git_hooks: PathBuf,
    pub public_url: String,
    pub review_mode: crate::github::ReviewMode,
    pub max_body_bytes: u64,
    pub allow_loopback: bool,
    pub allow_private: bool,
    /// Dev server previews are also served at `{vm}-{port}.<domain>`.
    pub preview_domain: Option<String>,
    /// Signs preview share links.
    pub share_key: crate::api::ShareKey,
}

impl Settings {
    pub fn network_policy(&self) -> hooks::ssrf::NetworkPolicy {
        hooks::ssrf::NetworkPolicy {
            allow_loopback: self.allow_loopback,
            allow_private: self.allow_private,
            allow_link_local: false,
        }
    }
}

/// Shared by every handler; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub repos: Repositories,
    pub events: EventBus,
    pub config: Arc<Settings>,
    /// Work that must finish before shutdown (pushes).
    pub tasks: TaskTracker,
    pub sandboxes: Arc<crate::vms::Sandboxes>,
    pub webhooks: crate::webhooks::Webhooks,
    /// The GitHub App, when configured.
    pub github: Option<Arc<crate::github::Github>>,
    pub pipelines: Arc<crate::pipelines::Pipelines>,
    pub templates: Arc<crate::templates::Templates>,
}

/// The file holding the first admin token.
pub fn admin_token_path(data_dir: &Path) -> PathBuf {
    data_dir.join("admin-token")
}

/// Raises this process's open-files limit to its hard limit: every
/// sandbox's agent connection, proxied connection and client socket is a
/// descriptor, and the usual soft limit of 1024 runs out long before the
/// host does. Logs what it got.
pub fn raise_open_files_limit() {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current == limit.maximum {
        return;
    }
    let raised = Rlimit {
        current: limit.maximum,
        maximum: limit.maximum,
    };
    match setrlimit(Resource::Nofile, raised) {
        Ok(()) => tracing::info!(open_files = ?limit.maximum, "raised the open-files limit"),
        Err(error) => tracing::warn!(%error, "could not raise the open-files limit"),
    }
}

/// The host's RAM in MiB (`MemTotal`), if `/proc/meminfo` says.
pub fn host_memory_mib() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib / 1024)
}

pub async fn serve(config: Config) -> anyhow::Result<()> {
    // Before anything is opened or created. Without --public-url the forge
    // is known by its listening address, an IP address: a site of its own.
    if let (Some(public_url), Some(domain)) = (&config.public_url, &config.preview_domain) {
        crate::api::check_preview_domain(public_url, domain).map_err(anyhow::Error::msg)?;
    }
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    create_private_dir(&config.data_dir)?;
    // The error names the database (without its password).
    let store = Store::connect(&config.database).await?;
    // Servers that run sandboxes only on nodes share a database; one that
    // runs them here has it alone (`store/locks.rs`).
    let server_hold = store
        .hold_server(!matches!(
            config.sandboxes.sandbox_backend,
            SandboxBackend::Nodes | SandboxBackend::None
        ))
        .await?;
    let repos = Repositories::open(config.data_dir.join("repos"))?;
    let git_hooks = config.data_dir.join("hooks");
    rules::install_hooks(&git_hooks)
        .with_context(|| format!("cannot install the git hooks in {}", git_hooks.display()))?;
    ensure_admin_token(&store, &config.data_dir).await?;

    let address = listener.local_addr()?;
    let public_url = config
        .public_url
        .clone()
        .unwrap_or_else(|| format!("http://{address}"))
        .trim_end_matches('/')
        .to_owned();
    let events = EventBus::default();
    let snapshots = match &config.snapshot_store {
        Some(url) => {
            let snapshots =
                crate::nodes::stored::SnapshotStore::open(url).map_err(anyhow::Error::msg)?;
            snapshots.check().await.map_err(anyhow::Error::msg)?;
            tracing::info!(
                store = url,
                "snapshots of sandboxes paused to disk on nodes are kept in the snapshot store"
            );
            Some(Arc::new(snapshots))
        }
        None => None,
    };
    let sandboxes = crate::vms::Sandboxes::new(
        crate::nodes::placed(
            open_sandboxes(&config.sandboxes).await,
            &store,
            crate::nodes::Placement {
                nodes_only: config.sandboxes.sandbox_backend == SandboxBackend::Nodes,
                snapshots,
                max_disk_mib: config.limits.max_disk_mib,
            },
        ),
        store.clone(),
        config.limits.clone(),
        network_config(&config, address)?,
        events.clone(),
    );
    match sandboxes.describe() {
        (Some(backend), reason, _) => tracing::info!(%backend, %reason, "sandbox backend"),
        (None, reason, _) => tracing::warn!(%reason, "no sandbox backend: the VM API answers 503"),
    }
    let stopping = tokio_util::sync::CancellationToken::new();
    let settings = Settings {
        push_rules: PushRules {
            sandbox_branch_prefix: config.sandbox_branch_prefix.clone(),
            protected_branches: config.protected_branches.clone(),
        },
        git_hooks,
        public_url: public_url.clone(),
        review_mode: config.review_mode,
        max_body_bytes: config.max_body_bytes,
        allow_loopback: config.allow_loopback,
        allow_private: config.allow_private,
        preview_domain: config.preview_domain.clone(),
        share_key: crate::api::ShareKey::load_or_create(&config.data_dir)?,
    };
    let webhooks = crate::webhooks::start(
        store.clone(),
        events.clone(),
        settings.network_policy(),
        &public_url,
        &config.webhooks,
    )
    .await
    .context("starting webhook delivery failed")?;
    let github = crate::github::load(
        &config.data_dir,
        store.clone(),
        repos.clone(),
        events.clone(),
        &public_url,
        config.review_mode,
    )
    .await
    .context("starting the GitHub App failed")?;
    let pipelines = crate::pipelines::Pipelines::new(
        store.clone(),
        repos.clone(),
        sandboxes.clone(),
        events.clone(),
        public_url.clone(),
        crate::pipelines::ReviewSettings {
            mode: config.review_mode,
            model: crate::github::config::load_review_model(&config.data_dir)
                .context("reading the review model's settings failed")?,
        },
    );
    pipelines.start(stopping.clone());
    let templates = crate::templates::Templates::new(store.clone(), sandboxes.clone());
    let duties = Duties {
        sandboxes: sandboxes.clone(),
        templates: templates.clone(),
        github: github.clone(),
        events: events.clone(),
        stopping: stopping.clone(),
    };
    // The first look before serving: a lone server (SQLite, or the first
    // on a database) has reconciled its sandboxes when it answers.
    let duties_lost = duties.campaign(store.clone()).await;
    let state = AppState {
        store: store.clone(),
        repos,
        events,
        config: Arc::new(settings),
        tasks: TaskTracker::new(),
        sandboxes,
        webhooks: webhooks.handle(),
        github,
        pipelines,
        templates,
    };
    let tasks = state.tasks.clone();
    let request_id = HeaderName::from_static("x-request-id");
    // The web UI calls the API in-process through its router (see `web`).
    let api = crate::api::router(state.clone());
    let metrics_state = state.clone();
    let app = crate::api::with_preview_hosts(api.clone().merge(web::router(api, public_url.clone())), state).layer(
        ServiceBuilder::new()
            .layer(SetRequestIdLayer::new(request_id.clone(), MakeRequestUuid))
            .layer(
                TraceLayer::new_for_http()
                    .make_span_with(|request: &Request<_>| {
                        let id = request
                            .headers()
                            .get("x-request-id")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("-");
                        tracing::info_span!("request", id, method = %request.method(), path = crate::api::loggable_path(request.uri().path()))
                    })
                    .on_response(DefaultOnResponse::new().level(Level::INFO)),
            )
            .layer(PropagateRequestIdLayer::new(request_id)),
    );
    if let Some(metrics_address) = config.metrics_listen {
        let metrics_listener = tokio::net::TcpListener::bind(metrics_address)
            .await
            .with_context(|| format!("cannot listen on {metrics_address} for metrics"))?;
        let metrics_app = crate::api::metrics::unauthenticated(metrics_state);
        let stopped = stopping.clone();
        tokio::spawn(async move {
            let served = axum::serve(metrics_listener, metrics_app)
                .with_graceful_shutdown(async move { stopped.cancelled().await })
                .await;
            if let Err(error) = served {
                tracing::error!(%error, "the metrics listener failed");
            }
        });
        tracing::info!(address = %metrics_address, "metrics served without a token");
    }
    tracing::info!(%address, %public_url, data_dir = %config.data_dir.display(), "forge is serving");
    println!("listening on http://{address}");
    let lost = std::sync::Arc::new(std::sync::OnceLock::new());
    let lost_hold = lost.clone();
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            tokio::select! {
                () = shutdown_signal() => {}
                error = server_hold.keep(HOLD_CHECK_EVERY) => {
                    tracing::error!(%error, "stopping");
                    let _ = lost_hold.set(error);
                }
                error = duties_lost => {
                    tracing::error!(%error, "stopping");
                    let _ = lost_hold.set(error);
                }
            }
        })
        .await
        .context("the HTTP server failed")?;
    stopping.cancel();
    tasks.close();
    tasks.wait().await;
    webhooks.shutdown().await;
    store.close().await;
    tracing::info!("forge stopped");
    match lost.get() {
        Some(error) => anyhow::bail!("{error}"),
        None => Ok(()),
    }
}

/// How often a server checks that the connections holding its locks live.
const HOLD_CHECK_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// The work one server of those sharing a database does for all, while it
/// holds the duties lock (`store/locks.rs`): reconciling sandboxes, the
/// idle reaper, expiry, the node watch, stray collection, warm pools and
/// dev server supervision; failing lapsed template builds and reading the
/// templates' pools; the GitHub sync.
struct Duties {
    sandboxes: Arc<crate::vms::Sandboxes>,
    templates: Arc<crate::templates::Templates>,
    github: Option<Arc<crate::github::Github>>,
    events: EventBus,
    stopping: tokio_util::sync::CancellationToken,
}

impl Duties {
    /// Asks for the duties now and, while another server holds them,
    /// every [`crate::store::DUTIES_POLL`] in the background; takes them up
    /// once held. The future returned ends only when the duties, once
    /// held, were lost to another server: this server must stop.
    async fn campaign(
        self,
        store: Store,
    ) -> impl std::future::Future<Output = crate::store::HoldError> {
        let asked = |answer: Result<Option<crate::store::Held>, crate::store::HoldError>| {
            answer.unwrap_or_else(|error| {
                tracing::warn!(%error, "asking for the duties failed");
                None
            })
        };
        let held_now = asked(store.try_hold_duties().await);
        if held_now.is_some() {
            self.take_up().await;
        }
        let (lost, told) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let held = match held_now {
                Some(held) => held,
                None => loop {
                    tokio::select! {
                        () = self.stopping.cancelled() => return,
                        () = tokio::time::sleep(crate::store::DUTIES_POLL) => {}
                    }
                    if let Some(held) = asked(store.try_hold_duties().await) {
                        self.take_up().await;
                        break held;
                    }
                },
            };
            let _ = lost.send(held.keep(HOLD_CHECK_EVERY).await);
        });
        async move {
            match told.await {
                Ok(error) => error,
                Err(_) => std::future::pending().await,
            }
        }
    }

    /// Starts the duties; they stop when the server does.
    async fn take_up(&self) {
        tracing::info!("this server holds the forge's duties");
        match self.sandboxes.reconcile().await {
            Ok(0) => {}
            Ok(crashed) => tracing::warn!(crashed, "sandboxes found crashed"),
            Err(error) => tracing::error!(error = %error, "reconciling sandboxes failed"),
        }
        if let Err(error) = self.templates.recover().await {
            tracing::error!(%error, "recovering template builds failed");
        }
        self.sandboxes
            .start_reaper(std::time::Duration::from_secs(1), self.stopping.clone());
        if let Some(github) = &self.github {
            github.take_up_duties(&self.events, self.stopping.clone());
        }
        let templates = self.templates.clone();
        let stopping = self.stopping.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = stopping.cancelled() => return,
                    () = tokio::time::sleep(crate::templates::DUTIES_EVERY) => {}
                }
                if let Err(error) = templates.fail_lapsed().await {
                    tracing::warn!(%error, "failing lapsed template builds failed");
                }
                if let Err(error) = templates.sync_pools().await {
                    tracing::warn!(%error, "reading the templates' pools failed");
                }
            }
        });
    }
}

/// How sandboxes reach the host: the egress policy, and the forge's own
/// listener (on loopback when it listens everywhere) for git remotes.
fn network_config(
    config: &Config,
    address: std::net::SocketAddr,
) -> anyhow::Result<crate::vms::NetworkConfig> {
    let mut egress = crate::vms::egress::Policy::default();
    if let Some(allow) = &config.egress_allow {
        egress.allow = allow.clone();
    }
    egress.allow_nets = config.egress_allow_nets.clone();
    egress.forge = Some(address);
    let mut forge = address;
    if forge.ip().is_unspecified() {
        forge.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    tracing::info!(allow = ?egress.allow, nets = ?egress.allow_nets, "sandbox egress allow-list");
    let ca_bundle = match &config.sandbox_ca_bundle {
        Some(path) => Some(std::sync::Arc::new(std::fs::read(path).with_context(
            || format!("cannot read the sandbox CA bundle {}", path.display()),
        )?)),
        None => None,
    };
    Ok(crate::vms::NetworkConfig {
        egress,
        forge: Some(forge),
        ca_bundle,
    })
}

fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create the data directory {}", dir.display()))?;
    let mut permissions = std::fs::metadata(dir)?.permissions();
    if permissions.mode() & 0o077 != 0 {
        permissions.set_mode(0o700);
        std::fs::set_permissions(dir, permissions)?;
    }
    Ok(())
}

/// On first start, creates the admin token, prints it once and saves it
/// (mode 0600) for the CLI.
async fn ensure_admin_token(store: &Store, data_dir: &Path) -> anyhow::Result<()> {
    if store.has_admin_token().await? {
        return Ok(());
    }
    let secret = auth::new_secret();
    let id = uuid::Uuid::new_v4().to_string();
    let path = admin_token_path(data_dir);
    write_private_file(&path, format!("{secret}\n").as_bytes())?;
    store
        .insert_token(&NewToken {
            id: &id,
            name: "admin",
            secret_hash: &auth::hash_secret(&secret),
            scopes: Scope::Admin.as_str(),
            repo_id: None,
        })
        .await?;
    println!(
        "admin token (shown once; saved to {}): {secret}",
        path.display()
    );
    tracing::info!(token = %id, path = %path.display(), "created the admin token");
    Ok(())
}

/// Writes `contents` to `path` atomically (a temporary file, synced, then
/// renamed), readable by the owner only: tokens and app secrets.
pub fn write_private_file(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let temporary = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&temporary)
        .with_context(|| format!("cannot write {}", temporary.display()))?;
    file.write_all(contents)?;
    file.sync_all()?;
    std::fs::rename(&temporary, path)?;
    Ok(())
}

pub(crate) async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut terminate), Ok(mut interrupt)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop the forge with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = terminate.recv() => tracing::info!("SIGTERM: finishing requests in flight"),
        _ = interrupt.recv() => tracing::info!("SIGINT: finishing requests in flight"),
    }
}

/// How a host's sandboxes are run: what `forge serve` and `forge node run`
/// share of their configuration.
#[derive(Debug, Clone)]
pub struct SandboxChoice {
    /// Where guest images are found when `image` is not given.
    pub data_dir: PathBuf,
    /// Which sandbox backend to run: `Auto` lets the host probe decide.
    pub sandbox_backend: SandboxBackend,
    /// Where sandboxes keep their state (default `<data>/sandboxes`; keep it
    /// short: sockets live under it).
    pub sandbox_dir: Option<PathBuf>,
    /// How long a microVM's boot (or restore) may take until its agent
    /// answers.
    pub sandbox_boot_timeout: std::time::Duration,
    /// The guest image's directory (default: the newest in `<data>/images`).
    pub image: Option<PathBuf>,
}

/// Opens the sandbox backend the host (or the operator) chose, or says why
/// there is none.
pub async fn open_sandboxes(config: &SandboxChoice) -> crate::vms::Availability {
    use crate::vms::Availability::{Ready, Unavailable};
    use ::sandbox::BackendKind;
    match config.sandbox_backend {
        SandboxBackend::None => {
            return Unavailable("sandboxes are disabled (--sandbox-backend none)".into());
        }
        SandboxBackend::Nodes => {
            return Unavailable(
                "this host runs sandboxes only on nodes (--sandbox-backend nodes)".into(),
            );
        }
        _ => {}
    }
    let image = match &config.image {
        Some(dir) => Some(dir.clone()),
        None => guest_image::list(&config.data_dir)
            .ok()
            .and_then(|images| images.into_iter().next())
            .map(|image| image.dir),
    };
    let Some(image_dir) = image else {
        return Unavailable(format!(
            "no guest image in {}/images: run `forge image build`",
            config.data_dir.display()
        ));
    };
    let image = ::sandbox::Image {
        root: image_dir.join("rootfs"),
        ext4: Some(image_dir.join("rootfs.ext4")).filter(|p| p.is_file()),
    };
    if !image.root.is_dir() {
        return Unavailable(format!(
            "the guest image {} has no rootfs directory",
            image_dir.display()
        ));
    }
    let facts = ::sandbox::HostFacts::gather(None);
    let (kind, reason) = match config.sandbox_backend {
        SandboxBackend::Container => (
            BackendKind::Container,
            "chosen by --sandbox-backend".to_owned(),
        ),
        SandboxBackend::Microvm => (
            BackendKind::Microvm,
            "chosen by --sandbox-backend".to_owned(),
        ),
        _ => match ::sandbox::probe::decide(&facts) {
            Ok(choice) => (choice.backend, choice.reason),
            Err(error) => return Unavailable(error.to_string()),
        },
    };
    let dir = config
        .sandbox_dir
        .clone()
        .unwrap_or_else(|| config.data_dir.join("sandboxes"));
    let opened: Result<std::sync::Arc<dyn ::sandbox::Backend>, ::sandbox::Error> = match kind {
        BackendKind::Container => {
            let mut container = ::sandbox::container::ContainerConfig::new(&dir);
            if !container.backend.launcher.is_file() {
                return Unavailable(format!(
                    "the container launcher {} is missing: build it with `cargo build -p sandbox-container`",
                    container.backend.launcher.display()
                ));
            }
            // The agent next to this binary speaks this forge's protocol,
            // whatever agent the image was built with.
            if let Some(agent) = std::env::current_exe()
                .ok()
                .map(|exe| exe.with_file_name("sandbox-agent"))
                .filter(|agent| agent.is_file())
            {
                container.agent = ::sandbox::container::AgentInit::Host(agent);
            }
            ::sandbox::container::ContainerSandboxes::open(container)
                .await
                .map(|backend| std::sync::Arc::new(backend) as _)
        }
        BackendKind::Microvm => match facts.guest_kernel.clone() {
            Some(kernel) => {
                ::sandbox::microvm::MicrovmSandboxes::open(::sandbox::microvm::MicrovmConfig {
                    boot_timeout: config.sandbox_boot_timeout,
                    ..::sandbox::microvm::MicrovmConfig::new(&dir, kernel)
                })
                .map(|backend| std::sync::Arc::new(backend) as _)
            }
            None => {
                return Unavailable(
                    "the microvm backend needs a guest kernel (FORGE_GUEST_KERNEL)".into(),
                );
            }
        },
    };
    match opened {
        Ok(backend) => Ready {
            backend,
            image,
            reason,
        },
        Err(error) => Unavailable(format!(
            "the {kind} backend could not start: {:#}",
            anyhow::Error::new(error)
        )),
    }
}
