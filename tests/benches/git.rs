//! `cargo bench -p e2e --bench git`: git through the forge against git over
//! `file://`, on a generated repository (5,000 commits, about 20 MiB of
//! incompressible content), and how soon a push is visible as an event.
//!
//! Prints medians of several rounds and the ratios forge / file://.

use std::io::Write;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use e2e::{TestForge, git_ok};

const COMMITS: usize = 5_000;
const FILE_BYTES: usize = 4 << 10;
const ROUNDS: usize = 3;
const LATENCY_PUSHES: usize = 40;

fn generate(dir: &Path) {
    git_ok(dir, &["init", "--quiet", "--initial-branch=main"]);
    let mut child = e2e::git(dir)
        .args(["fast-import", "--quiet"])
        .stdin(Stdio::piped())
        .spawn()
        .expect("git fast-import");
    let mut input = std::io::BufWriter::new(child.stdin.take().expect("stdin"));
    for i in 0..COMMITS {
        let message = format!("commit {i}\n");
        let content = e2e::noise(FILE_BYTES, i as u64 + 1);
        write!(
            input,
            "commit refs/heads/main\ncommitter Bench <bench@example.com> {} +0000\ndata {}\n{message}M 100644 inline src/{:03}/file.bin\ndata {}\n",
            1_700_000_000 + i,
            message.len(),
            i % 500,
            content.len()
        )
        .expect("write");
        input.write_all(&content).expect("write");
        input.write_all(b"\n").expect("write");
    }
    drop(input);
    assert!(child.wait().expect("fast-import").success());
    git_ok(dir, &["repack", "-adq"]);
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn percentile(samples: &[Duration], p: f64) -> Duration {
    let mut sorted = samples.to_vec();
    sorted.sort();
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index]
}

fn timed(mut run: impl FnMut()) -> Duration {
    let start = Instant::now();
    run();
    start.elapsed()
}

fn ms(duration: Duration) -> String {
    format!("{:.1} ms", duration.as_secs_f64() * 1e3)
}

fn main() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let source = tmp.path().join("source");
    std::fs::create_dir_all(&source).expect("mkdir");
    let generating = Instant::now();
    generate(&source);
    let size = git_ok(&source, &["count-objects", "-vH"]);
    println!(
        "generated {COMMITS} commits in {:.1} s ({})",
        generating.elapsed().as_secs_f64(),
        size.lines()
            .find(|l| l.starts_with("size-pack"))
            .unwrap_or("?")
    );
    let forge = TestForge::start();
    let token = forge.admin_token.clone();

    let (mut push_file, mut push_forge, mut clone_file, mut clone_forge) =
        (vec![], vec![], vec![], vec![]);
    for round in 0..ROUNDS {
        let bare = tmp.path().join(format!("bare-{round}.git"));
        git_ok(
            tmp.path(),
            &["init", "--quiet", "--bare", bare.to_str().expect("utf-8")],
        );
        let file_url = format!("file://{}", bare.display());
        push_file.push(timed(|| {
            git_ok(&source, &["push", "--quiet", &file_url, "main"]);
        }));
        let name = format!("bench/push-{round}");
        forge.create_repo(&name);
        let url = forge.git_url(&name, &token);
        push_forge.push(timed(|| {
            git_ok(&source, &["push", "--quiet", &url, "main"]);
        }));
        let dest = tmp.path().join(format!("clone-file-{round}"));
        clone_file.push(timed(|| {
            git_ok(
                tmp.path(),
                &[
                    "clone",
                    "--quiet",
                    "--bare",
                    &file_url,
                    dest.to_str().expect("utf-8"),
                ],
            );
        }));
        let dest = tmp.path().join(format!("clone-forge-{round}"));
        clone_forge.push(timed(|| {
            git_ok(
                tmp.path(),
                &[
                    "clone",
                    "--quiet",
                    "--bare",
                    &url,
                    dest.to_str().expect("utf-8"),
                ],
            );
        }));
    }
    let report = |what: &str, forge: Vec<Duration>, file: Vec<Duration>| {
        let (forge, file) = (median(forge), median(file));
        println!(
            "{what:<6} forge {:>10}   file:// {:>10}   ratio {:.2}",
            ms(forge),
            ms(file),
            forge.as_secs_f64() / file.as_secs_f64()
        );
    };
    report("push", push_forge, push_file);
    report("clone", clone_forge, clone_file);

    // Push -> event delivered to a subscriber waiting on the long poll.
    forge.create_repo("bench/latency");
    let work = tmp.path().join("latency");
    std::fs::create_dir_all(&work).expect("mkdir");
    git_ok(&work, &["init", "--quiet", "--initial-branch=main"]);
    let url = forge.git_url("bench/latency", &token);
    let arrivals: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let listener = {
        let (arrivals, base, token) = (arrivals.clone(), forge.url.clone(), token.clone());
        std::thread::spawn(move || {
            let client = reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()
                .expect("client");
            let mut cursor = 0;
            while arrivals.lock().expect("lock").len() < LATENCY_PUSHES {
                let page: serde_json::Value = client
                    .get(format!(
                        "{base}/v1/repos/bench/latency/events?after={cursor}&wait_secs=30"
                    ))
                    .bearer_auth(&token)
                    .send()
                    .and_then(|r| r.json())
                    .expect("events");
                let now = Instant::now();
                for event in page["events"].as_array().into_iter().flatten() {
                    if event["kind"] == "push" {
                        arrivals.lock().expect("lock").push(now);
                    }
                }
                cursor = page["next_cursor"].as_i64().unwrap_or(cursor);
            }
        })
    };
    let (mut pushes, mut visible) = (vec![], vec![]);
    for i in 0..LATENCY_PUSHES {
        std::fs::write(work.join("counter"), format!("{i}\n")).expect("write");
        git_ok(&work, &["add", "counter"]);
        git_ok(&work, &["commit", "--quiet", "-m", &format!("tick {i}")]);
        let start = Instant::now();
        git_ok(&work, &["push", "--quiet", &url, "main"]);
        pushes.push(start.elapsed());
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(arrived) = arrivals.lock().expect("lock").get(i) {
                visible.push(arrived.saturating_duration_since(start));
                break;
            }
            assert!(Instant::now() < deadline, "event {i} never arrived");
            std::thread::sleep(Duration::from_micros(200));
        }
    }
    listener.join().expect("listener");
    println!(
        "push (small, {LATENCY_PUSHES}x): p50 {} p99 {}",
        ms(percentile(&pushes, 0.5)),
        ms(percentile(&pushes, 0.99))
    );
    println!(
        "push start -> event at a waiting subscriber: p50 {} p99 {}",
        ms(percentile(&visible, 0.5)),
        ms(percentile(&visible, 0.99))
    );
}
