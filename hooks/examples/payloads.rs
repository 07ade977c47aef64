//! Prints one example payload per event type (the README's examples):
//! `cargo run -q -p hooks --example payloads`.

use hooks::payload::{self, PayloadContext};
use hooks::{Commit, Event, EventKind, Person};
use time::macros::datetime;

fn main() {
    let ctx = PayloadContext {
        base_url: "https://forge.example.com".into(),
    };
    let before = "4b825dc642cb6eb9a060e54bf8d69288fbee4904".to_owned();
    let after = "9fceb02d0ae598e95dc970b74767f19372d61af8".to_owned();
    let zero = "0".repeat(40);
    let pusher = Person {
        name: "ci-bot".into(),
        email: None,
    };
    for kind in EventKind::ALL {
        let mut event = Event::new(42, kind, "acme/web");
        event.time = datetime!(2026-11-28 16:00:00 UTC);
        event.actor = Some(pusher.clone());
        event.git_ref = Some("refs/heads/main".into());
        event.before = Some(before.clone());
        event.after = Some(after.clone());
        match kind {
            EventKind::Push => {
                event.paths = vec!["src/a.ts".into(), "README.md".into()];
                event.extra = serde_json::json!({ "forced": false });
                event.commits = vec![Commit {
                    id: after.clone(),
                    message: "Add a".into(),
                    author: Person {
                        name: "Ada".into(),
                        email: Some("ada@example.com".into()),
                    },
                    timestamp: Some(datetime!(2026-11-28 15:59:00 UTC)),
                    added: vec!["src/a.ts".into()],
                    modified: vec!["README.md".into()],
                    removed: vec![],
                }];
            }
            EventKind::BranchCreated => {
                event.git_ref = Some("refs/heads/feature/x".into());
                event.before = Some(zero.clone());
            }
            EventKind::BranchDeleted => {
                event.git_ref = Some("refs/heads/feature/x".into());
                event.after = Some(zero.clone());
            }
            EventKind::TagCreated => {
                event.git_ref = Some("refs/tags/v1.0.0".into());
                event.before = Some(zero.clone());
            }
            EventKind::TagDeleted => {
                event.git_ref = Some("refs/tags/v1.0.0".into());
                event.after = Some(zero.clone());
            }
            EventKind::RunStarted => {
                event.extra = serde_json::json!({ "run": { "id": 7, "status": "running", "steps": ["lint", "test"] } });
            }
            EventKind::RunCompleted => {
                event.extra = serde_json::json!({ "run": { "id": 7, "status": "completed", "conclusion": "success", "duration_ms": 48210 } });
            }
            EventKind::ReviewPosted => {
                event.extra = serde_json::json!({ "review": { "pull_request": 12, "verdict": "APPROVE", "url": "https://github.com/acme/web/pull/12#pullrequestreview-1" } });
            }
            EventKind::SandboxCreated
            | EventKind::SandboxPaused
            | EventKind::SandboxResumed
            | EventKind::SandboxForked
            | EventKind::SandboxDeleted
            | EventKind::SandboxCrashed
            | EventKind::SandboxExpired
            | EventKind::SandboxLost
            | EventKind::SandboxFound => {
                // The forge's sandbox events carry no commit; the ref is
                // the branch the VM serves, and a VM of no repository has
                // neither (nor a `repository`: see the last example).
                event.before = None;
                event.after = None;
                let own = match kind {
                    EventKind::SandboxPaused => {
                        serde_json::json!({ "mode": "disk", "reason": "idle" })
                    }
                    EventKind::SandboxResumed => serde_json::json!({ "on_demand": true }),
                    EventKind::SandboxForked => serde_json::json!({ "parent": "sb5d7c2e81a0f3" }),
                    EventKind::SandboxDeleted => serde_json::json!({ "reason": "requested" }),
                    EventKind::SandboxLost | EventKind::SandboxFound => {
                        serde_json::json!({ "node": "node-2" })
                    }
                    _ => serde_json::json!({}),
                };
                event.extra = sandbox_fields(own);
                if kind == EventKind::SandboxLost {
                    event.extra["sandbox"]["state"] = "lost".into();
                }
            }
            EventKind::SyncDiverged => {
                event.extra = serde_json::json!({ "remote": "github.com/acme/web", "local_sha": after, "remote_sha": before });
            }
            EventKind::Ping => {
                event = payload::ping_event(
                    "acme/web",
                    "wh_3",
                    &["push".into(), "run.completed".into()],
                );
                event.time = datetime!(2026-11-28 16:00:00 UTC);
            }
        }
        let body = payload::render(&event, &ctx);
        let value: serde_json::Value = serde_json::from_slice(&body).expect("valid JSON");
        let text = if kind == EventKind::Push {
            serde_json::to_string_pretty(&value)
        } else {
            serde_json::to_string(&value)
        };
        println!("`{kind}`:\n\n```json\n{}\n```\n", text.expect("JSON"));
    }
    let mut forge_wide = Event::new(43, EventKind::SandboxExpired, "");
    forge_wide.time = datetime!(2026-11-28 16:00:00 UTC);
    forge_wide.extra = sandbox_fields(serde_json::json!({}));
    let body = payload::render(&forge_wide, &ctx);
    let value: serde_json::Value = serde_json::from_slice(&body).expect("valid JSON");
    println!(
        "`sandbox.expired` of a sandbox without a repository (forge-wide webhooks only):\n\n```json\n{}\n```",
        serde_json::to_string(&value).expect("JSON")
    );
}

/// The `sandbox` object of the forge's sandbox events, with `own` fields.
fn sandbox_fields(own: serde_json::Value) -> serde_json::Value {
    let mut fields = own;
    fields["sandbox"] = serde_json::json!({
        "id": "sb9e4f0c2d7a11", "backend": "container", "state": "running",
        "parent": null, "vcpus": 1, "mem_mib": 512,
        "labels": { "team": "web" }, "expires_at": null,
    });
    fields
}
