//! `cargo bench -p e2e --bench web`: how long each page of the web UI
//! takes to render with 100 repositories and 1,000 runs (goal: under
//! 200 ms each).
//!
//! Seeding: 100 repositories are created through the API and each gets a
//! pushed commit (so branch pages have files: a README of 40 paragraphs,
//! rendered on the repository page, and a 2,000-line Rust file, highlighted
//! on its page). The 1,000 runs are written
//! straight into the forge's SQLite file while it is stopped (with the
//! `sqlite3` CLI), because recording real runs needs a sandbox per push;
//! one repository holds 505 of them, the 99 others 5 each, and every run
//! has 3 steps with 2 KiB of log. Then the forge restarts.
//!
//! Timing: a signed-in client requests each page 3 times to warm up, then
//! 50 times in a row over loopback; the figure is the time to the last
//! byte of the answer, so it bounds the server-side render time from
//! above. Printed as p50 / p99 / max per page against the goal.

use std::fmt::Write as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use e2e::{TestForge, git_ok, work_repo};
use serde_json::json;

const REPOS: usize = 100;
const RUNS_IN_BIG_REPO: usize = 505;
const RUNS_PER_REPO: usize = 5;
const GOAL_MS: f64 = 200.0;
/// Lines of the file whose highlighted view is timed.
const BIG_FILE_LINES: usize = 2_000;

/// Writes the runs and their steps; run ids start at 100,000 (the forge
/// has recorded none: it runs no sandboxes here).
fn seed_runs(forge: &TestForge, repos: &[(String, String)]) {
    let mut sql = String::from("BEGIN;\n");
    let log: String = "\u{1b}[32mok\u{1b}[0m line of test output\n".repeat(60);
    let mut run = 100_000;
    for (index, (id, name)) in repos.iter().enumerate() {
        let count = if index == 0 {
            RUNS_IN_BIG_REPO
        } else {
            RUNS_PER_REPO
        };
        for n in 0..count {
            run += 1;
            let state = if n % 7 == 0 { "failed" } else { "passed" };
            let _ = writeln!(
                sql,
                "INSERT INTO runs (id, repo_id, repo_name, branch, commit_id, event_id, state, created_at, started_at, finished_at) \
                 VALUES ({run}, '{id}', '{name}', 'main', '{run:040x}', {run}, '{state}', '2026-11-01T00:00:00Z', '2026-11-01T00:00:01Z', '2026-11-01T00:00:09Z');"
            );
            for (position, step) in ["install", "lint", "test"].iter().enumerate() {
                let _ = writeln!(
                    sql,
                    "INSERT INTO run_steps (run_id, position, name, command, status, exit_code, duration_ms, log) \
                     VALUES ({run}, {position}, '{step}', 'bun run {step}', 'passed', 0, 1234, '{log}');"
                );
            }
        }
    }
    sql.push_str("COMMIT;\n");
    let mut child = Command::new("sqlite3")
        .arg(forge.data_dir.join("forge.db"))
        .stdin(Stdio::piped())
        .spawn()
        .expect("sqlite3 runs (scripts/setup-host.sh installs it)");
    std::io::Write::write_all(child.stdin.as_mut().expect("stdin"), sql.as_bytes())
        .expect("writing SQL");
    drop(child.stdin.take());
    assert!(
        child.wait().expect("sqlite3").success(),
        "seeding runs failed"
    );
    let total = repos.len().saturating_sub(1) * RUNS_PER_REPO + RUNS_IN_BIG_REPO;
    println!("seeded {total} runs with 3 steps each");
}

/// Signs in through the form; returns the session cookie header.
fn sign_in(client: &reqwest::blocking::Client, forge: &TestForge) -> String {
    let form = client
        .get(format!("{}/-/signin", forge.url))
        .send()
        .expect("sign-in form");
    let nonce_cookie = form
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .expect("sign-in cookie")
        .to_owned();
    let nonce = nonce_cookie.split_once('=').expect("cookie").1.to_owned();
    let answer = client
        .post(format!("{}/-/signin", forge.url))
        .header("cookie", &nonce_cookie)
        .form(&[
            ("_csrf", nonce.as_str()),
            ("token", forge.admin_token.as_str()),
        ])
        .send()
        .expect("sign in");
    answer
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with("forge_session="))
        .and_then(|v| v.split(';').next())
        .expect("a session cookie")
        .to_owned()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

fn main() {
    let forge = TestForge::start();
    let temp = tempfile::tempdir().expect("temp dir");
    let readme = format!(
        "# seed\n\n{}",
        "Some *text* with `code` and [a link](src/main.rs).\n\n- a list\n- of items\n\n".repeat(40)
    );
    let big: String = (0..BIG_FILE_LINES)
        .map(|n| format!("pub fn f{n}(x: u64) -> u64 {{ x.wrapping_mul({n}) + 1 }} // line {n}\n"))
        .collect();
    let work = work_repo(
        temp.path(),
        "seed",
        &[
            ("README.md", readme.as_str()),
            ("src/main.rs", "fn main() { println!(\"hi\"); }\n"),
            ("src/big.rs", big.as_str()),
            ("package.json", "{ \"name\": \"seed\" }\n"),
        ],
    );
    let started = Instant::now();
    let mut repos = Vec::new();
    for n in 0..REPOS {
        let name = format!("bench/repo{n:03}");
        let repo = forge.admin("POST", "/v1/repos", Some(json!({ "name": name })));
        git_ok(
            &work,
            &[
                "push",
                "--quiet",
                &forge.git_url(&name, &forge.admin_token),
                "main",
            ],
        );
        repos.push((repo["id"].as_str().expect("id").to_owned(), name));
    }
    println!("seeded {REPOS} repositories in {:?}", started.elapsed());
    let mut forge = forge;
    forge.stop();
    seed_runs(&forge, &repos);
    let forge = forge.restart();
    let big = &repos[0].1;
    let runs = forge.admin("GET", &format!("/v1/repos/{big}/runs?limit=1"), None);
    let run_id = runs[0]["id"].as_i64().expect("a seeded run");
    let hook = forge.admin(
        "POST",
        &format!("/v1/repos/{big}/webhooks"),
        Some(json!({ "url": "https://example.com/hook", "events": ["push"] })),
    );
    let hook_id = hook["id"].as_str().expect("webhook id");
    let ping = forge.admin(
        "POST",
        &format!("/v1/repos/{big}/webhooks/{hook_id}/ping"),
        None,
    );
    let delivery_id = ping["delivery_id"].as_str().expect("delivery id");

    let client = reqwest::blocking::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client");
    let cookie = sign_in(&client, &forge);
    let pages = [
        ("repositories", "/".to_owned()),
        ("repository (505 runs)", format!("/-/repos/{big}")),
        ("branch", format!("/-/repos/{big}/branch?name=main")),
        (
            "branch file",
            format!("/-/repos/{big}/branch?name=main&path=src/main.rs"),
        ),
        (
            "file, 2,000 lines",
            format!("/-/repos/{big}/branch?name=main&path=src/big.rs"),
        ),
        ("run", format!("/-/runs/{run_id}")),
        ("sandboxes", "/-/sandboxes".to_owned()),
        ("webhooks", format!("/-/repos/{big}/webhooks")),
        ("webhook", format!("/-/repos/{big}/webhooks/{hook_id}")),
        (
            "delivery",
            format!("/-/repos/{big}/webhooks/{hook_id}/deliveries/{delivery_id}"),
        ),
        ("github", "/-/github".to_owned()),
    ];
    println!("page                      p50 ms   p99 ms   max ms   goal {GOAL_MS} ms");
    let mut over = 0;
    for (name, path) in &pages {
        let mut times = Vec::new();
        for round in 0..53 {
            let start = Instant::now();
            let answer = client
                .get(format!("{}{path}", forge.url))
                .header("cookie", &cookie)
                .send()
                .expect("page");
            let status = answer.status();
            let body = answer.bytes().expect("body");
            let ms = start.elapsed().as_secs_f64() * 1000.0;
            assert!(status.is_success(), "{path}: HTTP {status}");
            assert!(body.len() > 200, "{path}: empty page");
            if round >= 3 {
                times.push(ms);
            }
        }
        times.sort_by(f64::total_cmp);
        let (p50, p99) = (percentile(&times, 0.5), percentile(&times, 0.99));
        let max = times.last().copied().unwrap_or_default();
        if p99 > GOAL_MS {
            over += 1;
        }
        println!(
            "{name:<24} {p50:>8.1} {p99:>8.1} {max:>8.1}   {}",
            if p99 <= GOAL_MS { "ok" } else { "OVER GOAL" }
        );
    }
    println!(
        "{} of {} pages meet the {GOAL_MS} ms goal at p99",
        pages.len() - over,
        pages.len()
    );
}
