//! `cargo bench -p e2e --bench warm_pool`: create → first exec done, from
//! the warm pool against a cold create, in one forge (`--warm-pool
//! default=4`) on this host's backend. A cold create is one the pool cannot
//! serve (it asks for an environment of its own); before each pooled
//! create the bench waits until the pool is full again, so every one is a
//! hit. Prints p50/p99 of each and the ratio of the p50s.

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
        .env("FORGE_WARM_POOL", "default=4")
        .start();
    let ready = || -> usize {
        forge.admin("GET", "/v1/system", None)["sandboxes"]["warm_pool"]["ready"]
            .as_u64()
            .unwrap_or(0) as usize
    };
    let wait_full = || {
        let deadline = Instant::now() + Duration::from_secs(60);
        while ready() < 4 {
            assert!(Instant::now() < deadline, "the pool never filled");
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
    let mut pooled = Vec::new();
    let mut cold = Vec::new();
    for _ in 0..ROUNDS {
        wait_full();
        let (took, id) = first_exec(json!({}));
        pooled.push(took);
        forge.admin("DELETE", &format!("/v1/vms/{id}"), None);
        let (took, id) = first_exec(json!({ "env": { "BENCH": "cold" } }));
        cold.push(took);
        forge.admin("DELETE", &format!("/v1/vms/{id}"), None);
    }
    pooled.sort();
    cold.sort();
    println!(
        "create -> first exec, warm pool   p50 {:>7.1} ms  p99 {:>7.1} ms  (n={ROUNDS})",
        ms(at(&pooled, 0.5)),
        ms(at(&pooled, 0.99))
    );
    println!(
        "create -> first exec, cold        p50 {:>7.1} ms  p99 {:>7.1} ms  (n={ROUNDS})",
        ms(at(&cold, 0.5)),
        ms(at(&cold, 0.99))
    );
    println!(
        "warm pool p50 / cold p50          {:.2}",
        ms(at(&pooled, 0.5)) / ms(at(&cold, 0.5))
    );
}
