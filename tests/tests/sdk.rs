//! The SDKs against a real forge with container sandboxes: the TypeScript
//! SDK's suite under `node --test` and under `bun test`, its example (the
//! program users of hosted sandbox platforms write) under Bun, its types
//! generated from `sdk/openapi.json` and checked by `tsc`, and its npm
//! tarball; the Python SDK installed with pip, its suite under pytest and
//! the same program in Python; the MCP server (`forge mcp` on stdio and
//! `/v1/mcp`) driven by the MCP project's Python client.
//!
//! The tools (Bun, TypeScript, a Python venv) come from
//! `scripts/sdk-tools.sh`, which `scripts/test.sh` runs; a missing one
//! fails the test, saying so.

#![allow(clippy::unwrap_used)] // A test that cannot unwrap has failed: say so loudly.

use std::path::{Path, PathBuf};
use std::process::Command;

use api_types::RunState;
use e2e::{TestForge, git_ok, work_repo};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

fn sdk_ts() -> PathBuf {
    root().join("sdk/ts")
}

fn sdk_python() -> PathBuf {
    root().join("sdk/python")
}

/// `pip install ./sdk/python` into a directory of its own; the directory
/// (for PYTHONPATH), so the tests use the installed copy.
fn pip_install(into: &Path) -> PathBuf {
    let site = into.join("site");
    run(
        "pip install ./sdk/python",
        Command::new(tool("python/bin/python"))
            .current_dir(root())
            .args(["-m", "pip", "install", "--quiet", "--no-deps", "--target"])
            .arg(&site)
            .arg("./sdk/python"),
    );
    assert!(
        site.join("forge_sdk/types.py").is_file(),
        "pip installed the package"
    );
    site
}

/// A tool `scripts/sdk-tools.sh` installed, at `relative` under its cache.
fn tool(relative: &str) -> PathBuf {
    let tools = std::env::var_os("FORGE_SDK_TOOLS").map_or_else(
        || PathBuf::from("/var/cache/forge/sdk-tools"),
        PathBuf::from,
    );
    let path = tools.join(relative);
    assert!(
        path.exists(),
        "{} is missing: run scripts/sdk-tools.sh (scripts/setup-host.sh does)",
        path.display()
    );
    path
}

/// Runs `command`, shows what it printed, and fails the test unless it
/// succeeded.
fn run(what: &str, command: &mut Command) -> String {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("{what} did not start: {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("--- {what}: stdout\n{stdout}\n--- {what}: stderr\n{stderr}");
    assert!(
        output.status.success(),
        "{what} failed: {:?}",
        output.status
    );
    stdout
}

/// A forge with sandboxes and two repositories holding a small Bun
/// project: `user/repo` (its push's run finished and passed) and
/// `user/template` (to import from, over the forge's own git).
struct Fixture {
    forge: TestForge,
    _work: tempfile::TempDir,
}

impl Fixture {
    fn start() -> Option<Self> {
        if !e2e::require_sandboxes() {
            return None;
        }
        let forge = TestForge::builder()
            .with_sandboxes(12)
            .allow_loopback()
            .start();
        let work = tempfile::tempdir().unwrap();
        let repo = work_repo(work.path(), "work", e2e::BUN_PROJECT);
        let head = git_ok(&repo, &["rev-parse", "HEAD"]);
        for name in ["user/repo", "user/template"] {
            forge.create_repo(name);
            let url = forge.git_url(name, &forge.admin_token);
            git_ok(&repo, &["push", "--quiet", &url, "main"]);
        }
        let run = forge.finished_run("user/repo", &head);
        assert_eq!(run.state, RunState::Passed, "{run:?}");
        Some(Self { forge, _work: work })
    }

    /// `program` with the forge in its environment, in `sdk/ts`.
    fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut command = Command::new(program);
        command
            .current_dir(sdk_ts())
            .env("FORGE_URL", &self.forge.url)
            .env("FORGE_TOKEN", &self.forge.admin_token)
            .env("FORGE_TEST_REPO", "user/repo")
            .env(
                "FORGE_TEMPLATE_URL",
                self.forge.git_url("user/template", &self.forge.admin_token),
            );
        command
    }
}

#[test]
fn the_typescript_sdk_passes_its_suite_under_node_and_under_bun() {
    let Some(fixture) = Fixture::start() else {
        return;
    };
    let node = run(
        "node --test",
        fixture.command("node").args([
            "--test",
            "--experimental-websocket",
            "--test-reporter=tap",
            "test/",
        ]),
    );
    assert!(node.contains("\n# fail 0\n"), "node's count of failures");
    assert!(!node.contains("\n# pass 0\n"), "node ran no test");
    let bun = fixture
        .command(tool("bun"))
        .args(["test", "test/"])
        .output()
        .unwrap();
    // Bun writes its report to stderr.
    let report = String::from_utf8_lossy(&bun.stderr);
    println!("--- bun test\n{report}");
    assert!(bun.status.success(), "bun test failed: {:?}", bun.status);
    assert!(report.contains(" 0 fail"), "bun's count of failures");
}

#[test]
fn the_yardstick_program_runs_through_the_typescript_sdk() {
    let Some(fixture) = Fixture::start() else {
        return;
    };
    let before: Vec<api_types::vms::VmView> = fixture.forge.get("/v1/vms");
    let template = fixture
        .forge
        .git_url("user/template", &fixture.forge.admin_token);
    let out = run(
        "bun examples/yardstick.ts",
        fixture
            .command(tool("bun"))
            .arg("examples/yardstick.ts")
            .env(
                "EXAMPLE_REPO",
                format!("{}/user/repo.git", fixture.forge.url),
            )
            .env("EXAMPLE_TEMPLATE", template),
    );
    for line in [
        ": Build the API endpoints",
        ": Build the frontend UI",
        ": Write the test suite",
        "test: 1 pass",
        "idle timeout 60 s",
        "imported, default branch main",
    ] {
        assert!(out.contains(line), "the program printed no {line:?}");
    }
    // It cleaned up after itself (the pipelines' branch sandboxes, which
    // its pushes may start at any time, are the forge's).
    let after: Vec<api_types::vms::VmView> = fixture.forge.get("/v1/vms");
    let left: Vec<_> = after
        .iter()
        .filter(|vm| !before.iter().any(|b| b.id == vm.id))
        .filter(|vm| vm.labels.get("forge/role").map(String::as_str) != Some("pipeline"))
        .collect();
    assert!(left.is_empty(), "the program's VMs are deleted: {left:?}");
}

#[test]
fn the_typescript_sdk_types_follow_the_openapi_document_and_check() {
    run(
        "gen-types --check",
        Command::new("node")
            .current_dir(sdk_ts())
            .args(["scripts/gen-types.mjs", "--check"]),
    );
    let typescript = tool("typescript/node_modules");
    run(
        "tsc",
        Command::new("node")
            .current_dir(sdk_ts())
            .arg(typescript.join("typescript/bin/tsc"))
            .args(["-p", "tsconfig.json", "--typeRoots"])
            .arg(typescript.join("@types")),
    );
    let packed = run(
        "npm pack --dry-run",
        Command::new("npm")
            .current_dir(sdk_ts())
            .args(["pack", "--dry-run", "--json"]),
    );
    let packed: serde_json::Value = serde_json::from_str(&packed).unwrap();
    let files: Vec<&str> = packed[0]["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap())
        .collect();
    for needed in [
        "package.json",
        "README.md",
        "src/index.js",
        "src/index.d.ts",
        "src/http.js",
        "src/types.d.ts",
        "examples/yardstick.ts",
    ] {
        assert!(
            files.contains(&needed),
            "the tarball lacks {needed}: {files:?}"
        );
    }
    assert!(
        !files.iter().any(|f| f.starts_with("test/")),
        "the tests are not shipped: {files:?}"
    );
}

#[test]
fn the_python_sdk_installs_with_pip_and_passes_its_suite() {
    let Some(fixture) = Fixture::start() else {
        return;
    };
    let temp = tempfile::tempdir().unwrap();
    let site = pip_install(temp.path());
    let out = run(
        "pytest",
        fixture
            .command(tool("python/bin/python"))
            .current_dir(temp.path())
            .env("PYTHONPATH", &site)
            .args(["-m", "pytest", "-q", "-p", "no:cacheprovider"])
            .arg(sdk_python().join("tests")),
    );
    assert!(out.contains(" passed"), "pytest ran tests");
    assert!(!out.contains("failed"), "pytest's count of failures");
}

#[test]
fn the_yardstick_program_runs_through_the_python_sdk() {
    let Some(fixture) = Fixture::start() else {
        return;
    };
    let temp = tempfile::tempdir().unwrap();
    let site = pip_install(temp.path());
    let out = run(
        "python examples/yardstick.py",
        fixture
            .command(tool("python/bin/python"))
            .current_dir(sdk_python())
            .env("PYTHONPATH", &site)
            .env(
                "EXAMPLE_REPO",
                format!("{}/user/repo.git", fixture.forge.url),
            )
            .env(
                "EXAMPLE_TEMPLATE",
                fixture
                    .forge
                    .git_url("user/template", &fixture.forge.admin_token),
            )
            .arg("examples/yardstick.py"),
    );
    for line in [
        ": Build the API endpoints",
        ": Write the test suite",
        "test: 1 pass",
        "idle timeout 60 s",
        "imported, default branch main",
    ] {
        assert!(out.contains(line), "the program printed no {line:?}");
    }
}

#[test]
fn the_python_sdk_types_follow_the_openapi_document() {
    run(
        "gen_types.py --check",
        Command::new(tool("python/bin/python"))
            .current_dir(sdk_python())
            .args(["scripts/gen_types.py", "--check"]),
    );
}

#[test]
fn the_mcp_server_round_trips_with_the_python_mcp_client() {
    let Some(fixture) = Fixture::start() else {
        return;
    };
    let out = run(
        "pytest sdk/mcp-tests",
        fixture
            .command(tool("python/bin/python"))
            .current_dir(root().join("sdk/mcp-tests"))
            .env("FORGE_BIN", e2e::forge_binary())
            .args(["-m", "pytest", "-q", "-p", "no:cacheprovider", "."]),
    );
    assert!(out.contains("5 passed"), "every MCP test ran and passed");
}
