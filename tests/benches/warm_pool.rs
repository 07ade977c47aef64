//! `cargo bench -p e2e --bench warm_pool`: create → first exec done, from
//! the warm pools against cold creates, in one forge (`--warm-pool
//! default=4,bench=4`) on this host's backend: the forge's image (a cold
//! create asks for an environment of its own, which the pool cannot serve)
//! and template `bench` (a cold create names `bench-cold`, the same spec
//! without a pool: a start from the template's snapshot). Before each
//! pooled create the bench waits until the pool is full again, so every
//! one is a hit. Prints p50/p99 of each and the ratios of the p50s.

use std::time::{Duration, Instant};

use e2e::TestForge;
use serde_json::{Value, json};

const ROUNDS: usize = 30;

fn at(samples: &[Duration], p: f64) -> Duration {
    samples[((samples.len() as f64 - 1.0) * p).round() as usize]
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e3
}

fn main() {
    if let Some(reason) = e2e::sandboxes_unavailable() {
        println!("SKIPPED: {reason}");
        return;
    }
    let forge = TestForge::builder()
        .with_sandboxes(40)
        .env("FORGE_WARM_POOL", "default=4,bench=4")
        .start();
    for name in ["bench", "bench-cold"] {
        forge.admin(
            "POST",
            "/v1/templates",
            Some(json!({ "name": name, "run": ["echo ready > /root/ready"] })),
        );
    }
    let ready = |pool: &str| -> usize {
        let pools = forge.admin("GET", "/v1/system", None)["sandboxes"]["warm_pool"].clone();
        let ready = if pool == "default" {
            pools["ready"].as_u64()
        } else {
            pools["templates"]
                .as_array()
                .and_then(|all| all.iter().find(|p| p["template"] == pool))
                .and_then(|p| p["ready"].as_u64())
        };
        ready.unwrap_or(0) as usize
    };
    let wait_full = |pool: &str| {
        let deadline = Instant::now() + Duration::from_secs(120);
        while ready(pool) < 4 {
            assert!(Instant::now() < deadline, "pool {pool} never filled");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let first_exec = |body: Value| -> (Duration, String) {
        let started = Instant::now();
        let id = forge.admin("POST", "/v1/vms", Some(body))["id"]
            .as_str()
            .expect("an id")
            .to_owned();
        let out = forge.admin(
            "POST",
            &format!("/v1/vms/{id}/exec"),
            Some(json!({ "command": "true" })),
        );
        assert_eq!(out["exit_code"], 0);
        (started.elapsed(), id)
    };
    let mut times: [Vec<Duration>; 4] = Default::default();
    let kinds = [
        ("default", json!({})),
        ("", json!({ "env": { "BENCH": "cold" } })),
        ("bench", json!({ "template": "bench" })),
        ("", json!({ "template": "bench-cold" })),
    ];
    for _ in 0..ROUNDS {
        for (times, (pool, body)) in times.iter_mut().zip(&kinds) {
            if !pool.is_empty() {
                wait_full(pool);
            }
            let (took, id) = first_exec(body.clone());
            times.push(took);
            forge.admin("DELETE", &format!("/v1/vms/{id}"), None);
        }
    }
    let names = [
        "image, warm pool",
        "image, cold",
        "template, warm pool",
        "template, cold (its snapshot)",
    ];
    for (times, name) in times.iter_mut().zip(names) {
        times.sort();
        println!(
            "create -> first exec, {name:<30} p50 {:>7.1} ms  p99 {:>7.1} ms  (n={ROUNDS})",
            ms(at(times, 0.5)),
            ms(at(times, 0.99))
        );
    }
    let p50 = |i: usize| ms(at(&times[i], 0.5));
    println!("image:    warm pool p50 / cold p50  {:.2}", p50(0) / p50(1));
    println!("template: warm pool p50 / cold p50  {:.2}", p50(2) / p50(3));
}
