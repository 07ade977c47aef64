//! Harness for the end-to-end tests and benchmarks: starts the real
//! `forge` binary on a free port with its own data directory, and runs the
//! real `git` against it.
//!
//! ```no_run
//! let forge = e2e::TestForge::start();
//! let repo = forge.create_repo("acme/web");
//! ```

pub mod fake_github;
pub use test_support::fake_model;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use api_types::events::{Event, EventPage};
use api_types::repos::{CreateRepo, RepoView};
use api_types::runs::RunView;
use api_types::tokens::TokenView;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
pub use test_support::poll::{eventually, stays};
use test_support::requirements;

pub mod webdriver;

/// The `forge` binary under test: `$FORGE_BIN`, else the one cargo built
/// beside this test (`cargo test` builds it, because the `forge` package
/// has integration tests), rebuilt here only when missing or older than its
/// sources.
pub fn forge_binary() -> PathBuf {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY
        .get_or_init(|| {
            if let Some(path) = std::env::var_os("FORGE_BIN") {
                return PathBuf::from(path);
            }
            let exe = std::env::current_exe().expect("test executable path");
            // target/<profile>/deps/<test>
            let profile_dir = exe
                .parent()
                .and_then(Path::parent)
                .expect("the test runs from target/<profile>/deps");
            let binary = profile_dir.join("forge");
            if !is_fresh(&binary) {
                let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
                let mut command = Command::new(cargo);
                command
                    // The sandbox launcher and agent sit next to the forge.
                    .args(["build", "--quiet", "-p", "forge", "--bin", "forge"])
                    .args(["-p", "sandbox-container", "--bin", "sandbox-init"])
                    .args(["-p", "sandbox-agent", "--bin", "sandbox-agent"])
                    .current_dir(env!("CARGO_MANIFEST_DIR"));
                if profile_dir.ends_with("release") {
                    command.arg("--release");
                }
                let status = command.status().expect("cargo runs");
                assert!(status.success(), "building the forge binary failed");
            }
            binary
        })
        .clone()
}

/// Whether `binary` exists and is newer than every source file of the forge.
fn is_fresh(binary: &Path) -> bool {
    fn newest(dir: &Path) -> std::time::SystemTime {
        let mut latest = std::time::SystemTime::UNIX_EPOCH;
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = entry.path();
            let time = if path.is_dir() {
                newest(&path)
            } else {
                entry
                    .metadata()
                    .and_then(|m| m.modified())
                    .unwrap_or(latest)
            };
            latest = latest.max(time);
        }
        latest
    }
    let Ok(built) = std::fs::metadata(binary).and_then(|m| m.modified()) else {
        return false;
    };
    if !binary.with_file_name("sandbox-init").is_file()
        || !binary.with_file_name("sandbox-agent").is_file()
    {
        return false;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    [
        "forge",
        "migrations",
        "hooks/src",
        "sandbox/src",
        "container/src",
        "vmm/src",
        "vmm/agent/src",
        "vmm/agent/proto/src",
        "vmm/guest/src",
        "web",
    ]
    .iter()
    .all(|dir| newest(&root.join(dir)) <= built)
}

/// Options of a forge under test.
#[derive(Debug, Default, Clone)]
pub struct Builder {
    data_dir: Option<PathBuf>,
    /// `--database-url`: set on the first start when the suite runs on
    /// PostgreSQL (`FORGE_TEST_DATABASE_URL`), kept across restarts.
    database: Option<String>,
    max_body_bytes: Option<u64>,
    allow_loopback: bool,
    /// `--listen 0.0.0.0:0` rather than loopback.
    listen_everywhere: bool,
    env: Vec<(String, String)>,
    sandboxes: Option<Sandboxes>,
    /// `--sandbox-backend nodes` (without `sandboxes`).
    nodes_only: bool,
    /// Where the server's log goes (default: next to its data directory).
    log_path: Option<PathBuf>,
}

/// Sandboxes for a forge under test: the host's guest image and a short
/// directory of their own (sockets live under it).
#[derive(Debug, Clone)]
struct Sandboxes {
    /// `--sandbox-backend`: `container` or `microvm`.
    backend: &'static str,
    image: PathBuf,
    dir: PathBuf,
    max_live: usize,
}

/// The newest guest image in `$FORGE_DATA_DIR` (default `/var/lib/forge`),
/// which `forge image build` and the guest image tests create.
pub fn guest_image() -> Option<PathBuf> {
    let data = std::env::var_os("FORGE_DATA_DIR").unwrap_or_else(|| "/var/lib/forge".into());
    let newest = guest_image::list(Path::new(&data))
        .ok()?
        .into_iter()
        .next()?;
    newest.rootfs.is_dir().then_some(newest.dir)
}

/// Whether this host runs sandboxes; when it cannot, the test fails under
/// CI and is skipped (and recorded as skipped) elsewhere, as
/// [`requirements`] says. A test that gets `false` returns at once.
pub fn require_sandboxes() -> bool {
    requirements::met(
        requirements::Requirement::Sandboxes,
        sandboxes_unavailable(),
    )
}

/// Why sandbox tests cannot run here, if they cannot.
pub fn sandboxes_unavailable() -> Option<String> {
    if !Path::new("/sys/fs/cgroup").is_dir()
        || std::fs::read_to_string("/proc/self/status")
            .map(|s| {
                !s.lines()
                    .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
            })
            .unwrap_or(true)
    {
        return Some("sandboxes need root and cgroups".into());
    }
    if guest_image().is_none() {
        return Some("no guest image in $FORGE_DATA_DIR/images: run `forge image build`".into());
    }
    None
}

impl Builder {
    /// Largest git request body the server accepts.
    pub fn max_body_bytes(mut self, bytes: u64) -> Self {
        self.max_body_bytes = Some(bytes);
        self
    }

    /// Let imports reach 127.0.0.1 (the forge itself).
    pub fn allow_loopback(mut self) -> Self {
        self.allow_loopback = true;
        self
    }

    /// Listen on every address, so that nodes in network namespaces of
    /// their own ([`TestNode::start_in_netns`]) reach the control plane
    /// over their veth; the test still calls it on loopback.
    pub fn listen_everywhere(mut self) -> Self {
        self.listen_everywhere = true;
        self
    }

    /// Sets an environment variable of the server (e.g. a `FORGE_*` option).
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    /// Run sandboxes (the container backend on the host's guest image);
    /// at most `max_live` at once.
    pub fn with_sandboxes(self, max_live: usize) -> Self {
        let image = guest_image().expect("a guest image (check sandboxes_unavailable first)");
        self.sandboxes_on("container", image, max_live)
    }

    /// Run sandboxes on the microVM backend: the guest kernel named by
    /// `FORGE_GUEST_KERNEL` (the forge reads it) and the image directory
    /// `FORGE_GUEST_IMAGE`, else the newest guest image; at most
    /// `max_live` at once. Panics, saying why, where either is missing.
    pub fn with_microvm_sandboxes(self, max_live: usize) -> Self {
        let kernel = std::env::var_os("FORGE_GUEST_KERNEL")
            .expect("FORGE_GUEST_KERNEL must name the guest kernel (vmm/guest/kernel/build.sh)");
        assert!(
            Path::new(&kernel).is_file(),
            "FORGE_GUEST_KERNEL={} does not exist",
            Path::new(&kernel).display()
        );
        let image = std::env::var_os("FORGE_GUEST_IMAGE")
            .map(PathBuf::from)
            .or_else(guest_image)
            .expect("a guest image: FORGE_GUEST_IMAGE, or `forge image build`");
        self.sandboxes_on("microvm", image, max_live)
    }

    fn sandboxes_on(mut self, backend: &'static str, image: PathBuf, max_live: usize) -> Self {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.sandboxes = Some(Sandboxes {
            backend,
            image,
            dir: PathBuf::from(format!("/tmp/fsb-{}-{n}", std::process::id())),
            max_live,
        });
        self
    }

    /// `--sandbox-backend nodes`: every sandbox on a sandbox node, none on
    /// this host; servers so started share one PostgreSQL database.
    pub fn nodes_only(mut self) -> Self {
        self.nodes_only = true;
        self
    }

    fn data_dir(mut self, dir: PathBuf) -> Self {
        self.data_dir = Some(dir);
        self
    }

    pub fn start(mut self) -> TestForge {
        if self.database.is_none() {
            self.database = test_database();
        }
        let (temp, data_dir) = match &self.data_dir {
            Some(dir) => (None, dir.clone()),
            None => {
                let temp = tempfile::tempdir().expect("temporary directory");
                let dir = temp.path().join("data");
                (Some(temp), dir)
            }
        };
        let mut command = Command::new(forge_binary());
        command
            .arg("serve")
            .arg("--listen")
            .arg(if self.listen_everywhere {
                "0.0.0.0:0"
            } else {
                "127.0.0.1:0"
            })
            .arg("--data-dir")
            .arg(&data_dir)
            .env_remove("FORGE_DATABASE_URL")
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(bytes) = self.max_body_bytes {
            command.arg("--max-body-bytes").arg(bytes.to_string());
        }
        if let Some(database) = &self.database {
            command.arg("--database-url").arg(database);
        }
        if self.allow_loopback {
            command.arg("--allow-loopback");
        }
        match &self.sandboxes {
            Some(sandboxes) => {
                command
                    .args(["--sandbox-backend", sandboxes.backend, "--image"])
                    .arg(&sandboxes.image)
                    .arg("--sandbox-dir")
                    .arg(&sandboxes.dir)
                    .arg("--max-sandboxes")
                    .arg(sandboxes.max_live.to_string());
            }
            None => {
                command.args([
                    "--sandbox-backend",
                    if self.nodes_only { "nodes" } else { "none" },
                ]);
            }
        }
        command.envs(self.env.iter().map(|(k, v)| (k, v)));
        let mut child = command.spawn().expect("forge starts");
        let stdout = child.stdout.take().expect("stdout is piped");
        let stderr = child.stderr.take().expect("stderr is piped");
        let log_path = self
            .log_path
            .clone()
            .unwrap_or_else(|| data_dir.with_extension("log"));
        let server_log = log_path.clone();
        std::thread::spawn(move || {
            // Keep the server's log for a failing test to show.
            let mut log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log_path)
                .ok();
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(log) = log.as_mut() {
                    use std::io::Write;
                    let _ = writeln!(log, "{line}");
                }
            }
        });
        let mut lines = BufReader::new(stdout).lines();
        let mut url = None;
        let mut printed_token = None;
        let deadline = Instant::now() + Duration::from_secs(60);
        while url.is_none() && Instant::now() < deadline {
            let Some(Ok(line)) = lines.next() else { break };
            if let Some(rest) = line.strip_prefix("listening on ") {
                // Called on loopback wherever it listens.
                url = Some(rest.trim().replace("://0.0.0.0:", "://127.0.0.1:"));
            } else if line.starts_with("admin token") {
                printed_token = line.rsplit(' ').next().map(str::to_owned);
            }
        }
        std::thread::spawn(move || for _ in lines {});
        let url = url.unwrap_or_else(|| {
            let _ = child.kill();
            panic!("the forge did not start; see {}", server_log.display())
        });
        let admin_token = std::fs::read_to_string(data_dir.join("admin-token"))
            .expect("the admin token file exists")
            .trim()
            .to_owned();
        if let Some(printed) = &printed_token {
            assert_eq!(
                printed, &admin_token,
                "the printed admin token is the saved one"
            );
        }
        TestForge {
            child: Some(child),
            url,
            admin_token,
            printed_admin_token: printed_token,
            data_dir,
            log_path: server_log,
            builder: self,
            _temp: temp,
        }
    }
}

/// With `FORGE_TEST_DATABASE_URL` (a PostgreSQL cluster's URL, as
/// `scripts/postgres.sh start` prints it), a new empty database in that
/// cluster for one forge, by its URL; else `None` (the forge's SQLite file).
pub fn test_database() -> Option<String> {
    let cluster = std::env::var("FORGE_TEST_DATABASE_URL").ok()?;
    if cluster.is_empty() {
        return None;
    }
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let name = format!(
        "forge_e2e_{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    psql(&cluster, &format!("CREATE DATABASE {name}"));
    let (base, query) = cluster.split_once('?').unwrap_or((&cluster, ""));
    let server = base.rsplit_once('/').map_or(base, |(server, _)| server);
    Some(if query.is_empty() {
        format!("{server}/{name}")
    } else {
        format!("{server}/{name}?{query}")
    })
}

/// Runs `sql` on the PostgreSQL database `url` with `psql`, or panics.
fn psql(url: &str, sql: &str) {
    let out = Command::new("psql")
        .args([url, "-v", "ON_ERROR_STOP=1", "-q", "-c", sql])
        .output()
        .expect("psql runs (scripts/postgres.sh installs it)");
    assert!(
        out.status.success(),
        "psql: {sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A running forge.
pub struct TestForge {
    child: Option<Child>,
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    pub admin_token: String,
    /// The admin token as printed on this start (only on the first start).
    pub printed_admin_token: Option<String>,
    pub data_dir: PathBuf,
    log_path: PathBuf,
    builder: Builder,
    _temp: Option<tempfile::TempDir>,
}

impl TestForge {
    pub fn start() -> TestForge {
        Builder::default().start()
    }

    /// Runs the statement `sql` on the forge's database behind its back
    /// (to play a crash or an outside edit), on PostgreSQL or SQLite.
    pub fn execute_sql(&self, sql: &str) {
        match &self.builder.database {
            Some(url) => psql(url, sql),
            None => {
                let out = Command::new("python3")
                    .args([
                        "-c",
                        "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); c.executescript(sys.argv[2]); c.commit()",
                    ])
                    .arg(self.data_dir.join("forge.db"))
                    .arg(sql)
                    .output()
                    .expect("python3 runs");
                assert!(
                    out.status.success(),
                    "sqlite: {sql}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
    }

    pub fn builder() -> Builder {
        Builder::default()
    }

    /// Stops the server with SIGTERM and waits; returns whether it exited cleanly.
    pub fn stop(&mut self) -> bool {
        let Some(mut child) = self.child.take() else {
            return true;
        };
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        false
    }

    /// Stops and starts again on the same data directory (a new port).
    pub fn restart(mut self) -> TestForge {
        assert!(self.stop(), "the forge exits cleanly on SIGTERM");
        self.start_again()
    }

    /// Kills the server with SIGKILL (a crash: nothing gets to clean up) and
    /// starts it again on the same data directory.
    pub fn crash_and_restart(mut self) -> TestForge {
        self.kill();
        self.start_again()
    }

    fn start_again(mut self) -> TestForge {
        let temp = self._temp.take();
        let builder = self.builder.clone();
        // The next server owns the sandboxes now: this one's drop must not clean them.
        self.builder.sandboxes = None;
        let mut next = builder.data_dir(self.data_dir.clone()).start();
        next._temp = temp;
        next
    }

    /// The server's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Another server on this one's database and data directory (its
    /// repositories, admin token and keys), as a second control plane
    /// behind a load balancer with shared storage would be; its log is
    /// `<data>.<name>.log`.
    pub fn another_server(&self, name: &str) -> TestForge {
        let mut builder = self.builder.clone().data_dir(self.data_dir.clone());
        builder.log_path = Some(self.data_dir.with_extension(format!("{name}.log")));
        builder.start()
    }

    /// Kills the server with SIGKILL: nothing gets to clean up.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// An HTTP call with `token`; returns the status and the JSON body (or
    /// `Value::Null`).
    pub fn call(
        &self,
        token: Option<&str>,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let (status, text) = self.call_text(token, method, path, body);
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// An HTTP call with `token`; returns the status and the body as text.
    fn call_text(
        &self,
        token: Option<&str>,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> (u16, String) {
        let response = self.respond(token, method, path, body);
        let status = response.status().as_u16();
        let text = response.text().expect("body");
        (status, text)
    }

    /// An admin call that must succeed: its answer and its headers.
    pub fn admin_with_headers(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> (Value, reqwest::header::HeaderMap) {
        let response = self.respond(Some(&self.admin_token), method, path, body);
        let (status, headers) = (response.status(), response.headers().clone());
        let value: Value = response.json().unwrap_or(Value::Null);
        assert!(
            status.is_success(),
            "{method} {path}: HTTP {status}: {value}"
        );
        (value, headers)
    }

    fn respond(
        &self,
        token: Option<&str>,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> reqwest::blocking::Response {
        let client = reqwest::blocking::Client::builder()
            .timeout(self.request_timeout())
            .build()
            .expect("HTTP client");
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut request = client.request(method, format!("{}{path}", self.url));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        request.send().expect("the forge answers")
    }

    /// How long one API call may take: a create or fork on microVMs boots
    /// Linux, minutes under the nested test host's emulated hardware.
    fn request_timeout(&self) -> Duration {
        match &self.builder.sandboxes {
            Some(sandboxes) if sandboxes.backend == "microvm" => Duration::from_secs(300),
            _ => Duration::from_secs(30),
        }
    }

    /// Waits (up to 4 minutes) for the pipeline run of `commit` in `repo`
    /// to finish and returns it as the runs API lists it.
    pub fn finished_run(&self, repo: &str, commit: &str) -> RunView {
        let deadline = Instant::now() + Duration::from_secs(240);
        loop {
            let runs: Vec<RunView> = self.get(&format!("/v1/repos/{repo}/runs"));
            if let Some(run) = runs.iter().find(|r| r.commit_id == commit)
                && run.state.is_finished()
            {
                return run.clone();
            }
            assert!(
                Instant::now() < deadline,
                "no finished run for {commit}: {runs:?}"
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// An admin call that must succeed.
    pub fn admin(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let (status, value) = self.call(Some(&self.admin_token), method, path, body);
        assert!(
            (200..300).contains(&status),
            "{method} {path}: HTTP {status}: {value}"
        );
        value
    }

    /// An admin `GET` that must succeed, its answer read as `T`.
    pub fn get<T: DeserializeOwned>(&self, path: &str) -> T {
        self.typed("GET", path, None)
    }

    /// An admin call with a JSON `body` that must succeed, its answer read
    /// as `T`.
    pub fn send<B: Serialize, T: DeserializeOwned>(&self, method: &str, path: &str, body: &B) -> T {
        let body = serde_json::to_value(body).expect("the request body serialises");
        self.typed(method, path, Some(body))
    }

    /// An admin call without a body that must succeed, its answer read as `T`.
    pub fn send_empty<T: DeserializeOwned>(&self, method: &str, path: &str) -> T {
        self.typed(method, path, None)
    }

    fn typed<T: DeserializeOwned>(&self, method: &str, path: &str, body: Option<Value>) -> T {
        let (status, text) = self.call_text(Some(&self.admin_token), method, path, body);
        assert!(
            (200..300).contains(&status),
            "{method} {path}: HTTP {status}: {text}"
        );
        serde_json::from_str(&text).unwrap_or_else(|error| {
            panic!(
                "{method} {path}: the answer is not a {}: {error}: {text}",
                std::any::type_name::<T>()
            )
        })
    }

    pub fn create_repo(&self, name: &str) -> RepoView {
        self.send(
            "POST",
            "/v1/repos",
            &CreateRepo {
                name: name.to_owned(),
                ..CreateRepo::default()
            },
        )
    }

    /// Creates a token and returns its secret.
    pub fn create_token(&self, name: &str, scopes: &[&str], repo: Option<&str>) -> String {
        let token: TokenView = self.send(
            "POST",
            "/v1/tokens",
            &json!({ "name": name, "scopes": scopes, "repo": repo }),
        );
        token.token.expect("the secret is returned on creation")
    }

    /// The clone URL of `repo` with `token` as the Basic-auth password.
    pub fn git_url(&self, repo: &str, token: &str) -> String {
        let host = self.url.trim_start_matches("http://");
        format!("http://git:{token}@{host}/{repo}.git")
    }

    /// The bare directory of a repository on the server.
    pub fn repo_dir(&self, repo: &str) -> PathBuf {
        let (owner, name) = repo.split_once('/').expect("owner/name");
        let repo: RepoView = self.get(&format!("/v1/repos/{owner}/{name}"));
        self.data_dir.join("repos").join(format!("{}.git", repo.id))
    }

    /// Events of `repo` after `after`.
    pub fn events(&self, repo: &str, after: i64) -> Vec<Event> {
        let page: EventPage = self.get(&format!("/v1/repos/{repo}/events?after={after}"));
        page.events
    }

    /// The container backend's data directory, when the forge has sandboxes.
    pub fn sandbox_dir(&self) -> Option<PathBuf> {
        self.builder.sandboxes.as_ref().map(|s| s.dir.clone())
    }

    /// The host pid of a container sandbox's PID 1, from the backend's record.
    pub fn sandbox_pid(&self, id: &str) -> Option<u32> {
        let dir = &self.builder.sandboxes.as_ref()?.dir;
        let state =
            std::fs::read_to_string(dir.join("sandboxes").join(id).join("state.json")).ok()?;
        let state: Value = serde_json::from_str(&state).ok()?;
        state["pid1"].as_u64().map(|pid| pid as u32)
    }

    /// Runs the `forge` CLI, asserting success; returns its stdout.
    pub fn cli_ok(&self, args: &[&str]) -> String {
        let output = self.cli(args);
        assert!(
            output.status.success(),
            "forge {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Runs the `forge` CLI against this server with the admin token.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(forge_binary())
            .args(args)
            .env("FORGE_URL", &self.url)
            .env("FORGE_DATA_DIR", &self.data_dir)
            .env_remove("FORGE_TOKEN")
            .output()
            .expect("forge CLI runs")
    }
}

impl Drop for TestForge {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // A failing test shows the end of the server's log with it.
            let log = std::fs::read(&self.log_path).unwrap_or_default();
            // Its errors, then its warnings, wherever they are (the first
            // 50 of each: a flood of one warning must not hide an error),
            // then its end.
            let text = String::from_utf8_lossy(&log);
            let problems: Vec<&str> = ["ERROR", "WARN"]
                .iter()
                .flat_map(|level| {
                    text.lines()
                        .filter(move |line| line.contains(level))
                        .take(50)
                })
                .collect();
            if !problems.is_empty() {
                eprintln!(
                    "--- the forge's errors and warnings ---\n{}\n--- end of them ---",
                    problems.join("\n")
                );
            }
            let tail =
                String::from_utf8_lossy(&log[log.len().saturating_sub(8 << 10)..]).into_owned();
            eprintln!("--- the end of the forge's log ---\n{tail}--- end of the forge's log ---");
        }
        if let Some(sandboxes) = self.builder.sandboxes.clone() {
            // Leave no sandbox, mount or directory behind, pass or fail.
            if self.child.is_some() {
                let (_, vms) = self.call(Some(&self.admin_token), "GET", "/v1/vms", None);
                for vm in vms.as_array().into_iter().flatten() {
                    if let Some(id) = vm["id"].as_str() {
                        self.call(
                            Some(&self.admin_token),
                            "DELETE",
                            &format!("/v1/vms/{id}"),
                            None,
                        );
                    }
                }
            }
            self.stop();
            // A sandbox made while the VMs above were deleted (a pipeline's
            // fork of a branch sandbox) outlives a stopped forge: its
            // processes go with the test too.
            kill_processes_under(&sandboxes.dir);
            let _ = Command::new("umount")
                .arg("-l")
                .arg(sandboxes.dir.join("layers"))
                .status();
            let _ = std::fs::remove_dir_all(&sandboxes.dir);
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Kills every process whose command line names a path under `dir`, and
/// their descendants (a sandbox's init and everything in it).
fn kill_processes_under(dir: &Path) {
    let needle = dir.to_string_lossy().into_owned();
    let mut parents: Vec<(u32, u32)> = Vec::new();
    let mut roots = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains(&needle) {
            roots.push(pid);
        }
        // The parent is the fourth field of /proc/<pid>/stat, after the
        // command's closing parenthesis.
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        if let Some(ppid) = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse().ok())
        {
            parents.push((pid, ppid));
        }
    }
    let mut doomed = roots.clone();
    let mut i = 0;
    while i < doomed.len() {
        let parent = doomed[i];
        doomed.extend(
            parents
                .iter()
                .filter(|(_, ppid)| *ppid == parent)
                .map(|(pid, _)| *pid),
        );
        i += 1;
    }
    for pid in doomed {
        let _ = Command::new("kill")
            .arg("-KILL")
            .arg(pid.to_string())
            .status();
    }
}

/// A `git` command isolated from the user's configuration.
pub fn git(dir: &Path) -> Command {
    let mut command = Command::new("git");
    command
        .current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_AUTHOR_NAME", "Ada Tester")
        .env("GIT_AUTHOR_EMAIL", "ada@example.com")
        .env("GIT_COMMITTER_NAME", "Ada Tester")
        .env("GIT_COMMITTER_EMAIL", "ada@example.com")
        .env("GIT_ASKPASS", "/bin/false")
        .env_remove("GIT_DIR");
    command
}

/// Runs git in `dir` and returns its output, whatever the exit status.
pub fn git_run(dir: &Path, args: &[&str]) -> Output {
    git(dir).args(args).output().expect("git runs")
}

/// The forge's environment that lets its sandboxes install from the npm
/// registry through the egress proxy (see [`egress_env`]), `extra` hosts
/// (comma-separated) on the allow-list besides, their addresses not
/// vouched for.
pub fn npm_registry_env(extra: &str) -> Vec<(&'static str, String)> {
    let mut env = egress_env(&["registry.npmjs.org"]);
    if !extra.is_empty() {
        env[0].1 = format!("{},{extra}", env[0].1);
    }
    env
}

/// The forge's environment that lets its sandboxes reach `hosts` through
/// the egress proxy: them on the allow-list (first), their addresses
/// vouched for where they resolve to non-public ones (a mirror), and the
/// host's trust store, which knows a TLS-inspecting way out.
pub fn egress_env(hosts: &[&str]) -> Vec<(&'static str, String)> {
    let mut nets: Vec<String> = hosts
        .iter()
        .flat_map(|host| {
            std::net::ToSocketAddrs::to_socket_addrs(&(*host, 443))
                .map(|addrs| addrs.map(|a| a.ip().to_string()).collect::<Vec<_>>())
                .unwrap_or_default()
        })
        .collect();
    nets.sort();
    nets.dedup();
    vec![
        ("FORGE_EGRESS_ALLOW", hosts.join(",")),
        ("FORGE_EGRESS_ALLOW_NETS", nets.join(",")),
        (
            "FORGE_SANDBOX_CA_BUNDLE",
            "/etc/ssl/certs/ca-certificates.crt".to_owned(),
        ),
    ]
}

/// Runs git in `dir`, asserting success; returns trimmed stdout.
pub fn git_ok(dir: &Path, args: &[&str]) -> String {
    let output = git_run(dir, args);
    assert!(
        output.status.success(),
        "git {args:?} failed in {}: {}",
        dir.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// A small Bun project whose pipeline (lint, test) passes: the files of
/// a repository the sandbox tests push.
pub const BUN_PROJECT: &[(&str, &str)] = &[
    (
        "package.json",
        r#"{
  "name": "demo",
  "private": true,
  "scripts": {
    "lint": "! grep -n debugger *.ts",
    "test": "bun test"
  }
}"#,
    ),
    (
        "math.ts",
        "export const add = (a: number, b: number) => a + b;\n",
    ),
    (
        "math.test.ts",
        "import { expect, test } from \"bun:test\";\nimport { add } from \"./math\";\ntest(\"adds\", () => { expect(add(1, 2)).toBe(3); });\n",
    ),
];

/// A new working repository on branch `main` with one commit of `files`.
pub fn work_repo(parent: &Path, name: &str, files: &[(&str, &str)]) -> PathBuf {
    let dir = parent.join(name);
    std::fs::create_dir_all(&dir).expect("create work dir");
    git_ok(&dir, &["init", "--quiet", "--initial-branch=main"]);
    commit_files(&dir, files, "initial commit");
    dir
}

/// Writes `files` (path, content) in `dir` and commits them.
pub fn commit_files(dir: &Path, files: &[(&str, &str)], message: &str) -> String {
    for (path, content) in files {
        let path = dir.join(path);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("create dirs");
        std::fs::write(path, content).expect("write file");
    }
    git_ok(dir, &["add", "--all"]);
    git_ok(dir, &["commit", "--quiet", "-m", message]);
    git_ok(dir, &["rev-parse", "HEAD"])
}

/// `len` bytes of deterministic, incompressible noise.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

/// A number for the next node of this test process.
fn next_node() -> usize {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// A network namespace of a test's own, as another host on a network: a
/// veth pair joins it to this host, whose end has `host_ip`/30 and the
/// namespace's end `ip`/30. Dropping it deletes it, and the veth with it.
pub struct Netns {
    pub name: String,
    pub host_ip: String,
    pub ip: String,
}

impl Netns {
    /// The `n`th namespace of this test process (`n` < 64).
    pub fn new(n: usize) -> Netns {
        assert!(n < 64, "at most 64 namespaces per test process");
        let pid = std::process::id();
        // Subnets apart from other test processes' (mostly) and from n's.
        let net = format!("10.{}.{}", 200 + pid % 50, n * 4);
        let netns = Netns {
            name: format!("forge-test-{pid}-{n}"),
            host_ip: format!("{net}.1"),
            ip: format!("{net}.2"),
        };
        let (outside, inside) = (format!("fth{}n{n}", pid % 100_000), "eth0");
        let ip = |args: &[&str]| {
            let out = Command::new("ip").args(args).output().expect("ip runs");
            assert!(
                out.status.success(),
                "ip {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        };
        ip(&["netns", "add", &netns.name]);
        ip(&[
            "link",
            "add",
            &outside,
            "type",
            "veth",
            "peer",
            "name",
            inside,
            "netns",
            &netns.name,
        ]);
        ip(&[
            "addr",
            "add",
            &format!("{}/30", netns.host_ip),
            "dev",
            &outside,
        ]);
        ip(&["link", "set", &outside, "up"]);
        let inner = |args: &[&str]| {
            let mut all = vec!["-n", netns.name.as_str()];
            all.extend_from_slice(args);
            ip(&all);
        };
        inner(&["addr", "add", &format!("{}/30", netns.ip), "dev", inside]);
        inner(&["link", "set", inside, "up"]);
        inner(&["link", "set", "lo", "up"]);
        netns
    }

    /// `program` to be run in the namespace: only its network changes
    /// (`nsenter --net`, not `ip netns exec`, which would remount `/sys`
    /// and hide the cgroup tree the sandbox backend needs).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut command = Command::new("nsenter");
        command
            .arg(format!("--net=/run/netns/{}", self.name))
            .arg("--")
            .arg(program);
        command
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// A sandbox node under test: `forge node run` on this host, with a data
/// directory, a sandbox directory and a port of its own (on loopback, or
/// in a network namespace of its own), reporting to a [`TestForge`].
/// Dropping it kills it and removes its sandboxes.
pub struct TestNode {
    pub name: String,
    token: String,
    control: String,
    memory_mib: u64,
    /// `--tls`: TLS on loopback too.
    tls: bool,
    /// `<ip>:<port>`, where it serves sandboxes.
    pub address: String,
    image: PathBuf,
    data_dir: PathBuf,
    sandbox_dir: PathBuf,
    child: Option<Child>,
    _temp: tempfile::TempDir,
    /// Its network namespace, dropped after the node.
    netns: Option<Netns>,
}

impl TestNode {
    /// Adds node `name` to `forge` (through the API) and starts it,
    /// offering `memory_mib` of memory, on the container backend with the
    /// host's guest image. It reports within a moment; wait for it with
    /// [`TestNode::wait_up`].
    pub fn start(forge: &TestForge, name: &str, memory_mib: u64) -> TestNode {
        Self::start_with(forge, name, memory_mib, false)
    }

    /// [`TestNode::start`] serving TLS (`--tls`), as a node beyond loopback
    /// does.
    pub fn start_tls(forge: &TestForge, name: &str, memory_mib: u64) -> TestNode {
        Self::start_with(forge, name, memory_mib, true)
    }

    /// [`TestNode::start`] in a network namespace of its own
    /// ([`Netns`]), as on another host: it serves on its veth's address,
    /// so in TLS, and reports to `forge` (started with
    /// [`Builder::listen_everywhere`]) through the host's end.
    pub fn start_in_netns(forge: &TestForge, name: &str, memory_mib: u64) -> TestNode {
        Self::start_in_netns_for(&[forge], name, memory_mib)
    }

    /// [`TestNode::start_in_netns`] reporting to every control plane of
    /// `forges` (servers on one database; added through the first),
    /// the next when one does not answer.
    pub fn start_in_netns_for(forges: &[&TestForge], name: &str, memory_mib: u64) -> TestNode {
        let n = next_node();
        let netns = Netns::new(n);
        let mut node = Self::prepare(forges[0], name, memory_mib, true, n);
        node.control = forges
            .iter()
            .map(|forge| {
                let port = forge.url.rsplit(':').next().expect("the forge's port");
                format!("http://{}:{port}", netns.host_ip)
            })
            .collect::<Vec<_>>()
            .join(",");
        node.address = format!("{}:7443", netns.ip);
        node.netns = Some(netns);
        node.run();
        node
    }

    fn start_with(forge: &TestForge, name: &str, memory_mib: u64, tls: bool) -> TestNode {
        let mut node = Self::prepare(forge, name, memory_mib, tls, next_node());
        node.run();
        node
    }

    /// Node `name`, the `n`th of this process, added to `forge`; not
    /// started.
    fn prepare(forge: &TestForge, name: &str, memory_mib: u64, tls: bool, n: usize) -> TestNode {
        let added = forge.admin("POST", "/v1/nodes", Some(json!({ "name": name })));
        let token = added["token"]
            .as_str()
            .expect("the node's token")
            .to_owned();
        let temp = tempfile::tempdir().expect("temporary directory");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        TestNode {
            name: name.to_owned(),
            token,
            control: forge.url.clone(),
            memory_mib,
            tls,
            address: format!("127.0.0.1:{port}"),
            image: guest_image().expect("a guest image (check sandboxes_unavailable first)"),
            data_dir: temp.path().join("data"),
            sandbox_dir: PathBuf::from(format!("/tmp/fnd-{}-{n}", std::process::id())),
            child: None,
            _temp: temp,
            netns: None,
        }
    }

    fn run(&mut self) {
        std::fs::create_dir_all(&self.data_dir).expect("the node's data directory");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.data_dir.with_extension("log"))
            .expect("the node's log");
        let mut command = match &self.netns {
            Some(netns) => netns.command(forge_binary()),
            None => Command::new(forge_binary()),
        };
        command.args(["node", "run", "--control", &self.control]);
        if self.netns.is_some() {
            // The forge under test serves plain http; the veth is this
            // test's own.
            command.arg("--insecure-control");
        }
        if self.tls {
            command.arg("--tls");
        }
        let child = command
            .args(["--listen", &self.address])
            .args(["--memory-mib", &self.memory_mib.to_string()])
            .args(["--sandbox-backend", "container", "--image"])
            .arg(&self.image)
            .arg("--sandbox-dir")
            .arg(&self.sandbox_dir)
            .arg("--data-dir")
            .arg(&self.data_dir)
            .env("FORGE_NODE_TOKEN", &self.token)
            .env_remove("FORGE_TOKEN")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("forge node run starts");
        self.child = Some(child);
    }

    /// Waits until `forge` lists this node `up`.
    pub fn wait_up(&self, forge: &TestForge) {
        self.wait_state(forge, "up", Duration::from_secs(60));
    }

    /// Waits until `forge` lists this node in `state` (`up`, `lost`).
    pub fn wait_state(&self, forge: &TestForge, state: &str, within: Duration) {
        let what = format!("node {} {state}", self.name);
        eventually(within, &what, || {
            let nodes = forge.admin("GET", "/v1/nodes", None);
            let listed = nodes
                .as_array()
                .into_iter()
                .flatten()
                .find(|n| n["name"] == self.name.as_str())
                .cloned()
                .unwrap_or(Value::Null);
            if listed["state"] == state {
                Ok(())
            } else {
                Err(listed)
            }
        });
    }

    /// Whether sandbox `id` lives on this node.
    pub fn holds(&self, id: &str) -> bool {
        self.sandbox_dir.join("sandboxes").join(id).is_dir()
    }

    /// Kills the node's process with SIGKILL: its sandboxes keep running,
    /// unreachable.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the node again on the same directories (a new key).
    pub fn restart(&mut self) {
        self.kill();
        self.run();
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.data_dir.with_extension("log")).unwrap_or_default()
    }
}

/// The name of the one node of `nodes` that holds VM `id`, or `?`.
pub fn holder<'a>(nodes: &[&'a TestNode], id: &str) -> &'a str {
    let holding: Vec<&str> = nodes
        .iter()
        .filter(|node| node.holds(id))
        .map(|node| node.name.as_str())
        .collect();
    match holding[..] {
        [one] => one,
        _ => "?",
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- the log of node {} ---\n{}--- end of it ---",
                self.name,
                self.log()
            );
        }
        self.kill();
        kill_processes_under(&self.sandbox_dir);
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.sandbox_dir.join("layers"))
            .status();
        let _ = std::fs::remove_dir_all(&self.sandbox_dir);
    }
}

/// The test server takes any signature (it checks none) but treats a
/// request without one as anonymous, which may not read a private object.
const S3_AUTHORIZATION: &str = "AWS4-HMAC-SHA256 \
    Credential=forge-test/20260101/us-east-1/s3/aws4_request, SignedHeaders=host, Signature=0";

/// A throwaway S3-compatible object store (`scripts/s3.sh`: moto's S3
/// server on a free loopback port, with a bucket `snapshots`), stopped when
/// dropped.
pub struct S3Server {
    pub endpoint: String,
    dir: tempfile::TempDir,
}

impl S3Server {
    /// Starts one; panics, with the script's output, when it cannot.
    pub fn start() -> S3Server {
        let dir = tempfile::tempdir().expect("a directory for the S3 server");
        let started = Self::script(&dir, "start")
            .output()
            .expect("scripts/s3.sh runs");
        assert!(
            started.status.success(),
            "scripts/s3.sh start failed: {}",
            String::from_utf8_lossy(&started.stderr)
        );
        let endpoint = String::from_utf8_lossy(&started.stdout).trim().to_owned();
        S3Server { endpoint, dir }
    }

    /// `scripts/s3.sh ACTION` on the server kept in `dir`.
    fn script(dir: &tempfile::TempDir, action: &str) -> Command {
        let mut command =
            Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/s3.sh"));
        command.arg(action).arg(dir.path().join("s3"));
        command
    }

    /// The server environment of a forge keeping its snapshots under
    /// `prefix` here ([`Builder::env`] each pair).
    pub fn forge_env(&self, prefix: &str) -> Vec<(&'static str, String)> {
        vec![
            ("FORGE_SNAPSHOT_STORE", format!("s3://snapshots/{prefix}")),
            ("AWS_ENDPOINT_URL", self.endpoint.clone()),
            ("AWS_ALLOW_HTTP", "true".into()),
            ("AWS_ACCESS_KEY_ID", "forge-test".into()),
            ("AWS_SECRET_ACCESS_KEY", "forge-test-secret".into()),
            ("AWS_REGION", "us-east-1".into()),
        ]
    }

    /// A signed request for `path` of the bucket, answered with a success.
    fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Vec<u8>,
    ) -> reqwest::Result<reqwest::blocking::Response> {
        reqwest::blocking::Client::new()
            .request(method, format!("{}/snapshots{path}", self.endpoint))
            .header("authorization", S3_AUTHORIZATION)
            .body(body)
            .send()
            .and_then(|answer| answer.error_for_status())
    }

    /// The keys of the bucket's objects under `prefix`.
    pub fn objects(&self, prefix: &str) -> Vec<String> {
        let listing = self
            .call(
                reqwest::Method::GET,
                &format!("?list-type=2&prefix={prefix}"),
                Vec::new(),
            )
            .and_then(|answer| answer.text())
            .expect("the S3 server lists its objects");
        listing
            .split("<Key>")
            .skip(1)
            .filter_map(|rest| rest.split_once("</Key>").map(|(key, _)| key.to_owned()))
            .collect()
    }

    /// Object `key` of the bucket.
    pub fn get(&self, key: &str) -> Vec<u8> {
        self.call(reqwest::Method::GET, &format!("/{key}"), Vec::new())
            .and_then(|answer| answer.bytes())
            .expect("the S3 server gives the object")
            .to_vec()
    }

    /// Writes object `key` of the bucket, as anyone with access to it
    /// could.
    pub fn put(&self, key: &str, data: Vec<u8>) {
        self.call(reqwest::Method::PUT, &format!("/{key}"), data)
            .expect("the S3 server takes the object");
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = Self::script(&self.dir, "stop").status();
    }
}
