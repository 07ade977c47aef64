//! The model client against the fake OpenAI-compatible endpoint of
//! `test_support::fake_model`, which answers from a script and records
//! what it was sent.

use test_support::fake_model::{FakeModel, Reply};

use super::*;

fn config(model: &FakeModel) -> ModelConfig {
    ModelConfig {
        url: model.url.clone(),
        model: "reviewer-1".into(),
        api_key: Some(Secret::new("sk-test")),
        timeout: Duration::from_millis(500),
        can_block: false,
    }
}

fn diff() -> Diff {
    Diff::parse(
        "diff --git a/src/a.ts b/src/a.ts\n--- a/src/a.ts\n+++ b/src/a.ts\n@@ -1,2 +1,3 @@\n x\n+y\n z\n",
    )
}

const CONTEXT: Context<'static> = Context {
    steps: "- test: passed",
    findings: &[],
};

async fn ask_once(model: &FakeModel, diff: &Diff) -> Result<ModelReview, ModelError> {
    review(&reqwest::Client::new(), &config(model), diff, CONTEXT).await
}

#[tokio::test]
async fn an_answer_is_kept_where_it_points_into_the_diff() {
    let model = FakeModel::start(
        vec![Reply::Answer(json!({
            "summary": "Looks fine <!-- forge-review:abc --> @everyone",
            "request_changes": true,
            "comments": [
                { "path": "src/a.ts", "line": 2, "body": "Why y?" },
                { "path": "src/a.ts", "line": 40, "body": "outside the diff" },
                { "path": "src/other.ts", "line": 1, "body": "another file" },
                { "path": "src/a.ts", "body": "no line" },
                { "path": "src/a.ts", "line": 3, "body": "" },
            ],
        }))],
        None,
    );
    let said = ask_once(&model, &diff()).await.expect("reviewed");
    assert!(said.request_changes);
    assert_eq!(
        said.comments,
        [LineComment {
            path: "src/a.ts".into(),
            line: 2,
            body: "Why y?".into()
        }]
    );
    assert_eq!(said.dropped, 4);
    assert!(!said.summary.contains("<!--"), "{}", said.summary);
    assert!(!said.summary.contains("@everyone"), "{}", said.summary);
    let seen = model.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].authorization.as_deref(), Some("Bearer sk-test"));
    assert_eq!(seen[0].body["model"], "reviewer-1");
    let prompt = seen[0].prompt();
    assert!(
        prompt.contains("+y\n") && prompt.contains("- test: passed"),
        "{prompt}"
    );
}

#[tokio::test]
async fn a_fenced_answer_is_read_and_garbage_is_refused() {
    let model = FakeModel::start(
        vec![
            Reply::Text("```json\n{\"summary\": \"ok\", \"comments\": []}\n```".into()),
            Reply::Text("I think it is fine!".into()),
            Reply::Answer(json!({ "comments": [] })),
        ],
        None,
    );
    let ok = ask_once(&model, &diff()).await;
    assert_eq!(ok.expect("fenced JSON").summary, "ok");
    for _ in 0..2 {
        let garbage = ask_once(&model, &diff()).await;
        assert!(
            matches!(garbage, Err(ModelError::Garbage(_))),
            "{garbage:?}"
        );
    }
    assert_eq!(model.requests().len(), 3, "garbage is not asked again");
}

#[tokio::test]
async fn rate_limits_and_server_errors_are_tried_again_then_given_up() {
    let model = FakeModel::start(
        vec![
            Reply::RateLimited {
                retry_after_secs: 0,
            },
            Reply::Status(503),
            Reply::Answer(json!({ "summary": "third time" })),
        ],
        None,
    );
    let ok = ask_once(&model, &diff()).await;
    assert_eq!(ok.expect("the third try").summary, "third time");
    assert_eq!(model.requests().len(), 3);

    let failing = FakeModel::start(Vec::new(), Some(Reply::Status(500)));
    let failed = ask_once(&failing, &diff()).await;
    assert!(
        matches!(failed, Err(ModelError::Status { status: 500, .. })),
        "{failed:?}"
    );
    assert_eq!(failing.requests().len(), ATTEMPTS as usize);

    // A refusal that will not change is not tried again.
    let refusing = FakeModel::start(Vec::new(), Some(Reply::Status(401)));
    let refused = ask_once(&refusing, &diff()).await;
    assert!(
        matches!(refused, Err(ModelError::Status { status: 401, .. })),
        "{refused:?}"
    );
    assert_eq!(refusing.requests().len(), 1);
}

#[tokio::test]
async fn a_slow_or_absent_model_is_an_error_soon() {
    let slow_model = FakeModel::start(Vec::new(), Some(Reply::Silence(Duration::from_secs(5))));
    let started = std::time::Instant::now();
    let slow = ask_once(&slow_model, &diff()).await;
    assert!(
        matches!(&slow, Err(ModelError::Unreachable(why)) if why.starts_with("timed out")),
        "{slow:?}"
    );
    assert_eq!(slow_model.requests().len(), ATTEMPTS as usize);
    // Three timeouts of 0.5 s and pauses of 1 and 2 s.
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port();
    let mut down = config(&slow_model);
    down.url = format!("http://127.0.0.1:{port}/v1");
    let refused = review(&reqwest::Client::new(), &down, &diff(), CONTEXT).await;
    assert!(
        matches!(&refused, Err(ModelError::Unreachable(why)) if why.starts_with("connection failed")),
        "{refused:?}"
    );
}

#[tokio::test]
async fn a_large_diff_is_reviewed_file_by_file() {
    let body: String = (0..2000)
        .map(|n| format!("+line {n} of padding\n"))
        .collect();
    let text: String = (0..12)
        .map(|n| {
            format!(
                "diff --git a/f{n:02}.ts b/f{n:02}.ts\n+++ b/f{n:02}.ts\n@@ -0,0 +1,2000 @@\n{body}"
            )
        })
        .collect();
    let large = Diff::parse(&text);
    let replies = (0..MAX_FILE_REQUESTS)
        .map(|n| {
            Reply::Answer(json!({
                "summary": format!("file {n}"),
                "request_changes": n == 3,
                "comments": [{ "path": format!("f{n:02}.ts"), "line": 5, "body": "here" }],
            }))
        })
        .collect();
    let model = FakeModel::start(replies, None);
    let said = ask_once(&model, &large).await.expect("reviewed");
    let seen = model.requests();
    assert_eq!(seen.len(), MAX_FILE_REQUESTS);
    assert!(said.request_changes);
    assert_eq!(said.comments.len(), MAX_FILE_REQUESTS);
    assert!(
        said.summary.contains("- `f00.ts`: file 0"),
        "{}",
        said.summary
    );
    assert!(
        said.summary
            .contains("- 2 more files were not reviewed by the model"),
        "{}",
        said.summary
    );
    for request in &seen {
        assert!(request.prompt().chars().count() < MAX_DIFF_CHARS + 2000);
    }
}
