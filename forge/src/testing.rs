//! [`TestApp`]: a whole forge in the test's process, for tests that drive
//! the API through [`crate::api::router`] without a listener.
//!
//! Everything is the production code over real parts (a SQLite file with
//! the real migrations in a temporary directory, the store, the event bus,
//! webhook delivery, bare repositories, [`Sandboxes`] with its locks, queue
//! and quota) except the sandbox backend, which is
//! [`sandbox::testing::MemorySandboxes`]: no root, no cgroups, no image.
//! The idle reaper does not run (a test pauses what it means to), and
//! pipelines run only when asked ([`TestAppBuilder::with_pipelines`]).
//!
//! ```ignore
//! let app = TestApp::builder().with_limits(limits).start().await;
//! let (status, vm) = app.call(Method::POST, "/v1/vms", Some(app.admin()), Some(json!({}))).await;
//! ```

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use axum::response::Response;
use sandbox::testing::MemorySandboxes;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use crate::auth::{self, Scope};
use crate::events::EventBus;
use crate::git::Repositories;
use crate::git::push::rules::{self, PushRules};
use crate::server::{AppState, Settings};
use crate::store::{NewToken, Store};
use crate::vms::{Availability, Limits, NetworkConfig, Sandboxes};

/// Where the test forge says it is reachable (nothing listens there).
pub const PUBLIC_URL: &str = "http://forge.test";

/// How a [`TestApp`] is made.
pub struct TestAppBuilder {
    backend: MemorySandboxes,
    sandboxes: bool,
    nodes_only: bool,
    limits: Limits,
    pipelines: bool,
}

/// A running test forge; dropping it stops its background tasks and
/// removes its data directory.
pub struct TestApp {
    pub state: AppState,
    /// The sandboxes' backend, to script execs, hold operations at gates
    /// and inject failures.
    pub backend: MemorySandboxes,
    admin: String,
    stopping: CancellationToken,
    _webhooks: crate::webhooks::Running,
    _dir: tempfile::TempDir,
}

/// A token made for a test: its id (as the API lists it) and its secret.
#[derive(Debug, Clone)]
pub struct Token {
    pub id: String,
    pub secret: String,
}

impl TestAppBuilder {
    /// Sandboxes on `backend` (e.g. one with responders already set).
    pub fn with_backend(mut self, backend: MemorySandboxes) -> Self {
        self.backend = backend;
        self
    }

    /// The VM API answers `503`, as on a host where no backend runs.
    pub fn without_sandboxes(mut self) -> Self {
        self.sandboxes = false;
        self
    }

    /// No sandboxes on this host, only on sandbox nodes (`--sandbox-backend
    /// nodes`).
    pub fn nodes_only(mut self) -> Self {
        self.sandboxes = false;
        self.nodes_only = true;
        self
    }

    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Runs pipelines: every push event queues a run.
    pub fn with_pipelines(mut self) -> Self {
        self.pipelines = true;
        self
    }

    pub async fn start(self) -> TestApp {
        // Warnings and errors of the server, shown with a failing test's
        // output (an answer of `500` says only "see its log").
        let _ = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::WARN)
            .with_test_writer()
            .try_init();
        let dir = tempfile::tempdir().expect("a temporary data directory");
        let store = Store::open_for_test(dir.path()).await;
        let repos = Repositories::open(dir.path().join("repos")).expect("the repositories");
        let git_hooks = dir.path().join("hooks");
        rules::install_hooks(&git_hooks).expect("the git hooks");
        let availability = if self.sandboxes {
            Availability::Ready {
                backend: Arc::new(self.backend.clone()),
                image: ::sandbox::Image::root(dir.path().join("image")),
                reason: "in-memory sandboxes for tests".into(),
            }
        } else {
            Availability::Unavailable("sandboxes are disabled in this test".into())
        };
        let events = EventBus::default();
        let sandboxes = Sandboxes::new(
            crate::nodes::placed(
                availability,
                &store,
                crate::nodes::Placement {
                    nodes_only: self.nodes_only,
                    max_disk_mib: self.limits.max_disk_mib,
                    ..Default::default()
                },
            ),
            store.clone(),
            self.limits,
            NetworkConfig::default(),
            events.clone(),
        );
        let settings = Settings {
            push_rules: PushRules {
                sandbox_branch_prefix: Default::default(),
                protected_branches: Vec::new(),
            },
            git_hooks,
            public_url: PUBLIC_URL.into(),
            review_mode: Default::default(),
            max_body_bytes: 64 << 20,
            allow_loopback: false,
            allow_private: false,
            preview_domain: None,
            share_key: crate::api::ShareKey::load_or_create(dir.path()).expect("a share key"),
        };
        let webhooks = crate::webhooks::start(
            store.clone(),
            events.clone(),
            settings.network_policy(),
            PUBLIC_URL,
            &crate::webhooks::Options::default(),
        )
        .await
        .expect("webhook delivery starts");
        let pipelines = crate::pipelines::Pipelines::new(
            store.clone(),
            repos.clone(),
            sandboxes.clone(),
            events.clone(),
            PUBLIC_URL.into(),
            crate::pipelines::ReviewSettings::default(),
        );
        let stopping = CancellationToken::new();
        if self.pipelines {
            pipelines.start(stopping.clone());
        }
        let templates = crate::templates::Templates::new(store.clone(), sandboxes.clone());
        let state = AppState {
            store: store.clone(),
            repos,
            events,
            config: Arc::new(settings),
            tasks: TaskTracker::new(),
            sandboxes,
            webhooks: webhooks.handle(),
            github: None,
            pipelines,
            templates,
        };
        let admin = auth::new_secret();
        store
            .insert_token(&NewToken {
                id: "admin",
                name: "admin",
                secret_hash: &auth::hash_secret(&admin),
                scopes: Scope::Admin.as_str(),
                repo_id: None,
            })
            .await
            .expect("the admin token");
        TestApp {
            state,
            backend: self.backend,
            admin,
            stopping,
            _webhooks: webhooks,
            _dir: dir,
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.stopping.cancel();
    }
}

/// A request with a bearer token (when given) and a JSON body (when given).
pub fn request(
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> Request<Body> {
    let mut builder = Request::builder().method(method).uri(path);
    if let Some(token) = token {
        builder = builder.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let body = match body {
        Some(json) => {
            builder = builder.header(header::CONTENT_TYPE, "application/json");
            Body::from(json.to_string())
        }
        None => Body::empty(),
    };
    builder.body(body).expect("a well-formed request")
}

/// The response's body as JSON, or as a JSON string when it is not JSON.
pub async fn body_json(response: Response) -> Value {
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .expect("the body reads to its end");
    serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
}

impl TestApp {
    pub fn builder() -> TestAppBuilder {
        TestAppBuilder {
            backend: MemorySandboxes::new(),
            sandboxes: true,
            nodes_only: false,
            limits: Limits::default(),
            pipelines: false,
        }
    }

    /// A forge with default limits and in-memory sandboxes.
    pub async fn start() -> TestApp {
        Self::builder().start().await
    }

    /// The secret of the forge's admin token.
    pub fn admin(&self) -> &str {
        &self.admin
    }

    pub fn sandboxes(&self) -> &Sandboxes {
        &self.state.sandboxes
    }

    /// Sends `request` through a fresh router, as the web UI does.
    pub async fn send(&self, request: Request<Body>) -> Response {
        crate::api::router(self.state.clone())
            .oneshot(request)
            .await
            .expect("the router answers every request")
    }

    /// `method path` with `token` and a JSON `body`: the status and the
    /// answer as JSON.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let response = self.send(request(method, path, token, body)).await;
        let status = response.status();
        (status, body_json(response).await)
    }

    /// [`TestApp::call`] that must answer `expected`; returns the body.
    pub async fn expect(
        &self,
        expected: StatusCode,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Value {
        let (status, answer) = self.call(method.clone(), path, token, body).await;
        assert_eq!(status, expected, "{method} {path}: {answer}");
        answer
    }

    /// A token with `scopes`, limited to `repo` (`owner/name`) if given,
    /// made through `POST /v1/tokens`.
    pub async fn token(&self, scopes: &[&str], repo: Option<&str>) -> Token {
        let made = self
            .expect(
                StatusCode::CREATED,
                Method::POST,
                "/v1/tokens",
                Some(self.admin()),
                Some(json!({ "name": "test", "scopes": scopes, "repo": repo })),
            )
            .await;
        Token {
            id: made["id"].as_str().expect("a token id").to_owned(),
            secret: made["token"].as_str().expect("a token secret").to_owned(),
        }
    }

    /// The git token a sandbox of `repo_id` gets for its remote.
    pub async fn sandbox_token(&self, vm: &str, repo_id: &str) -> String {
        crate::vms::gitrelay::mint(&self.state.store, vm, repo_id)
            .await
            .expect("a sandbox token")
    }

    /// Creates repository `owner/name` as the admin; returns its JSON.
    pub async fn repo(&self, full_name: &str) -> Value {
        self.expect(
            StatusCode::CREATED,
            Method::POST,
            "/v1/repos",
            Some(self.admin()),
            Some(json!({ "name": full_name })),
        )
        .await
    }

    /// Creates a VM with `token` (default sizes); returns its id.
    pub async fn vm(&self, token: &str) -> String {
        let made = self
            .expect(
                StatusCode::CREATED,
                Method::POST,
                "/v1/vms",
                Some(token),
                Some(json!({})),
            )
            .await;
        made["id"].as_str().expect("a VM id").to_owned()
    }

    /// The VM's state as `GET /v1/vms/{id}` reports it.
    pub async fn vm_state(&self, id: &str) -> String {
        let shown = self
            .expect(
                StatusCode::OK,
                Method::GET,
                &format!("/v1/vms/{id}"),
                Some(self.admin()),
                None,
            )
            .await;
        shown["state"].as_str().expect("a state").to_owned()
    }
}
