//! Who may call which route: a table with a row per route and method of
//! `api/mod.rs` (and the terminal's routes), checked against the router's
//! source so a new route cannot go without one.
//!
//! Each row says what a request without a token gets, and what tokens that
//! lack the scope, the repository or the VM get. A token is presented as
//! `Bearer`; a wrong or malformed one must be treated as no token.

use axum::http::{Method, StatusCode, header};
use serde_json::json;

use super::assert_error;
use crate::testing::{TestApp, Token, request};

/// A token that may not do everything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Weak {
    /// `repo:read` over every repository.
    Reader,
    /// `repo:write` over every repository, but not the VM's creator.
    Writer,
    /// `repo:write` limited to another repository.
    OtherRepo,
    /// The git token of the VM (`repo:write`, limited to its repository).
    Sandbox,
}

/// One route and method. `path` names the fixture's repository
/// `acme/app` and `{vm}` its VM; `body` is sent as JSON.
struct Row {
    method: &'static str,
    route: &'static str,
    path: &'static str,
    body: Option<&'static str>,
    /// Without a token, or with one that is not the forge's.
    anonymous: u16,
    denied: &'static [(Weak, u16)],
}

const fn row(
    method: &'static str,
    route: &'static str,
    path: &'static str,
    anonymous: u16,
    denied: &'static [(Weak, u16)],
) -> Row {
    Row {
        method,
        route,
        path,
        body: None,
        anonymous,
        denied,
    }
}

const fn with_body(mut row: Row, body: &'static str) -> Row {
    row.body = Some(body);
    row
}

use Weak::{OtherRepo, Reader, Sandbox, Writer};

const REPO: &str = "/v1/repos/{owner}/{name}";
const HOOK: &str = "/v1/repos/{owner}/{name}/webhooks/{id}";

const ROWS: &[Row] = &[
    row("GET", "/healthz", "/healthz", 200, &[]),
    // The API's contract is public, as the code it documents is.
    row("GET", "/v1/openapi.json", "/v1/openapi.json", 200, &[]),
    with_body(
        row(
            "POST",
            "/v1/repos",
            "/v1/repos",
            401,
            &[(Reader, 403), (Writer, 403)],
        ),
        r#"{"name":"acme/new"}"#,
    ),
    row("GET", "/v1/repos", "/v1/repos", 401, &[]),
    row("GET", REPO, "/v1/repos/acme/app", 401, &[(OtherRepo, 404)]),
    row(
        "DELETE",
        REPO,
        "/v1/repos/acme/app",
        401,
        &[(Writer, 403), (Sandbox, 403), (OtherRepo, 404)],
    ),
    row(
        "GET",
        "/v1/repos/{owner}/{name}/branches",
        "/v1/repos/acme/app/branches",
        401,
        &[(OtherRepo, 404)],
    ),
    row(
        "GET",
        "/v1/repos/{owner}/{name}/contents",
        "/v1/repos/acme/app/contents",
        401,
        &[(OtherRepo, 404)],
    ),
    row(
        "GET",
        "/v1/repos/{owner}/{name}/events",
        "/v1/repos/acme/app/events",
        401,
        &[(OtherRepo, 404)],
    ),
    row(
        "GET",
        "/v1/repos/{owner}/{name}/runs",
        "/v1/repos/acme/app/runs",
        401,
        &[(OtherRepo, 404)],
    ),
    row("GET", "/v1/runs/{id}", "/v1/runs/1", 401, &[]),
    row("GET", "/v1/runs/{id}/logs", "/v1/runs/1/logs", 401, &[]),
    // The fixture has no run: every token is told it does not exist (the
    // scope check, repo:write, is in `a_user_cancels_a_running_run_...`).
    row(
        "POST",
        "/v1/runs/{id}/cancel",
        "/v1/runs/1/cancel",
        401,
        &[],
    ),
    row("POST", "/v1/runs/{id}/rerun", "/v1/runs/1/rerun", 401, &[]),
    row("GET", "/v1/system", "/v1/system", 401, &[]),
    with_body(
        row("POST", "/v1/vms", "/v1/vms", 401, &[(Reader, 403)]),
        "{}",
    ),
    row("GET", "/v1/vms", "/v1/vms", 401, &[]),
    row(
        "GET",
        "/v1/vms/{id}",
        "/v1/vms/{vm}",
        401,
        &[(Writer, 404), (Sandbox, 404), (OtherRepo, 404)],
    ),
    row(
        "DELETE",
        "/v1/vms/{id}",
        "/v1/vms/{vm}",
        401,
        &[(Writer, 404), (Sandbox, 404)],
    ),
    with_body(
        row(
            "POST",
            "/v1/vms/{id}/exec",
            "/v1/vms/{vm}/exec",
            401,
            &[(Writer, 404), (Sandbox, 404), (Reader, 404)],
        ),
        r#"{"command":"true"}"#,
    ),
    with_body(
        row(
            "POST",
            "/v1/vms/{id}/fork",
            "/v1/vms/{vm}/fork",
            401,
            &[(Writer, 404)],
        ),
        "{}",
    ),
    row(
        "POST",
        "/v1/vms/{id}/pause",
        "/v1/vms/{vm}/pause",
        401,
        &[(Writer, 404)],
    ),
    row(
        "POST",
        "/v1/vms/{id}/resume",
        "/v1/vms/{vm}/resume",
        401,
        &[(Writer, 404)],
    ),
    // It chooses hosts: an admin's.
    row(
        "POST",
        "/v1/vms/{id}/move",
        "/v1/vms/{vm}/move",
        401,
        &[(Writer, 403), (Sandbox, 403), (Reader, 403)],
    ),
    with_body(
        row(
            "POST",
            "/v1/vms/{id}/processes",
            "/v1/vms/{vm}/processes",
            401,
            &[(Writer, 404)],
        ),
        r#"{"command":"true"}"#,
    ),
    row(
        "GET",
        "/v1/vms/{id}/processes",
        "/v1/vms/{vm}/processes",
        401,
        &[(Writer, 404)],
    ),
    row(
        "GET",
        "/v1/vms/{id}/processes/{pid}/logs",
        "/v1/vms/{vm}/processes/1/logs",
        401,
        &[(Writer, 404)],
    ),
    with_body(
        row(
            "POST",
            "/v1/vms/{id}/processes/{pid}/signal",
            "/v1/vms/{vm}/processes/1/signal",
            401,
            &[(Writer, 404)],
        ),
        r#"{"signal":"TERM"}"#,
    ),
    // Snapshots: their creator, an admin of their VM's repository, forge
    // admins; the fixture's `snap` is the admin's, of a VM in acme/app.
    with_body(
        row(
            "POST",
            "/v1/vms/{id}/snapshots",
            "/v1/vms/{vm}/snapshots",
            401,
            &[
                (Reader, 403),
                (Writer, 404),
                (OtherRepo, 404),
                (Sandbox, 404),
            ],
        ),
        "{}",
    ),
    row("GET", "/v1/snapshots", "/v1/snapshots", 401, &[]),
    row(
        "GET",
        "/v1/snapshots/{key}",
        "/v1/snapshots/snap",
        401,
        &[
            (Reader, 404),
            (Writer, 404),
            (OtherRepo, 404),
            (Sandbox, 404),
        ],
    ),
    row(
        "DELETE",
        "/v1/snapshots/{key}",
        "/v1/snapshots/snap",
        401,
        &[
            (Reader, 403),
            (Writer, 404),
            (OtherRepo, 404),
            (Sandbox, 404),
        ],
    ),
    // Templates are the forge's: any token that may create VMs builds and
    // uses them; their creator or an admin deletes them.
    with_body(
        row(
            "POST",
            "/v1/templates",
            "/v1/templates",
            401,
            &[(Reader, 403)],
        ),
        r#"{"name":"tpl"}"#,
    ),
    row("GET", "/v1/templates", "/v1/templates", 401, &[]),
    row("GET", "/v1/templates/{name}", "/v1/templates/tpl", 401, &[]),
    row(
        "DELETE",
        "/v1/templates/{name}",
        "/v1/templates/tpl",
        401,
        &[
            (Reader, 403),
            (Writer, 403),
            (OtherRepo, 403),
            (Sandbox, 403),
        ],
    ),
    row(
        "GET",
        "/v1/templates/{name}/build",
        "/v1/templates/tpl/build",
        401,
        &[],
    ),
    with_body(
        row(
            "POST",
            "/v1/vms/{id}/timeout",
            "/v1/vms/{vm}/timeout",
            401,
            &[(Writer, 404)],
        ),
        r#"{"ttl_secs":60}"#,
    ),
    // Not a WebSocket request: refused as such once a token is presented.
    row(
        "GET",
        "/v1/vms/{id}/terminal",
        "/v1/vms/{vm}/terminal",
        401,
        &[(Writer, 400)],
    ),
    row(
        "POST",
        "/v1/vms/{id}/terminal/tickets",
        "/v1/vms/{vm}/terminal/tickets",
        401,
        &[(Writer, 404)],
    ),
    row(
        "GET",
        "/v1/vms/{id}/files/{*path}",
        "/v1/vms/{vm}/files/etc/hosts",
        401,
        &[(Writer, 404)],
    ),
    row(
        "PUT",
        "/v1/vms/{id}/files/{*path}",
        "/v1/vms/{vm}/files/a.txt",
        401,
        &[(Writer, 404)],
    ),
    row(
        "DELETE",
        "/v1/vms/{id}/files/{*path}",
        "/v1/vms/{vm}/files/a.txt",
        401,
        &[(Writer, 404)],
    ),
    row(
        "ANY",
        "/v1/vms/{id}/ports/{port}",
        "/v1/vms/{vm}/ports/3000",
        401,
        &[(Writer, 404)],
    ),
    row(
        "ANY",
        "/v1/vms/{id}/ports/{port}/",
        "/v1/vms/{vm}/ports/3000/",
        401,
        &[(Writer, 404)],
    ),
    row(
        "ANY",
        "/v1/vms/{id}/ports/{port}/{*path}",
        "/v1/vms/{vm}/ports/3000/app.js",
        401,
        &[(Writer, 404)],
    ),
    with_body(
        row(
            "POST",
            "/v1/vms/{id}/ports/{port}/links",
            "/v1/vms/{vm}/ports/3000/links",
            401,
            &[(Writer, 404)],
        ),
        "{}",
    ),
    row(
        "FALLBACK",
        "/v1/vms/{id}/ports/{port}/links",
        "/v1/vms/{vm}/ports/3000/links",
        401,
        &[(Writer, 404)],
    ),
    // A share link is its own credential: a forged one is refused.
    row(
        "ANY",
        "/v1/previews/{token}",
        "/v1/previews/forged",
        401,
        &[],
    ),
    row(
        "ANY",
        "/v1/previews/{token}/",
        "/v1/previews/forged/",
        401,
        &[],
    ),
    row(
        "ANY",
        "/v1/previews/{token}/{*path}",
        "/v1/previews/forged/a",
        401,
        &[],
    ),
    with_body(
        row(
            "POST",
            "/v1/repos/{owner}/{name}/webhooks",
            "/v1/repos/acme/app/webhooks",
            401,
            &[(Reader, 403), (OtherRepo, 404)],
        ),
        r#"{"url":"https://hooks.example.com/","events":["push"]}"#,
    ),
    row(
        "GET",
        "/v1/repos/{owner}/{name}/webhooks",
        "/v1/repos/acme/app/webhooks",
        401,
        &[(OtherRepo, 404)],
    ),
    row(
        "GET",
        HOOK,
        "/v1/repos/acme/app/webhooks/1",
        401,
        &[(OtherRepo, 404)],
    ),
    with_body(
        row(
            "PATCH",
            HOOK,
            "/v1/repos/acme/app/webhooks/1",
            401,
            &[(Reader, 403)],
        ),
        "{}",
    ),
    row(
        "DELETE",
        HOOK,
        "/v1/repos/acme/app/webhooks/1",
        401,
        &[(Reader, 403)],
    ),
    row(
        "POST",
        "/v1/repos/{owner}/{name}/webhooks/{id}/ping",
        "/v1/repos/acme/app/webhooks/1/ping",
        401,
        &[(Reader, 403)],
    ),
    row(
        "GET",
        "/v1/repos/{owner}/{name}/webhooks/{id}/deliveries",
        "/v1/repos/acme/app/webhooks/1/deliveries",
        401,
        &[(OtherRepo, 404)],
    ),
    row(
        "GET",
        "/v1/repos/{owner}/{name}/webhooks/{id}/deliveries/{delivery_id}",
        "/v1/repos/acme/app/webhooks/1/deliveries/1",
        401,
        &[(OtherRepo, 404)],
    ),
    row(
        "POST",
        "/v1/repos/{owner}/{name}/webhooks/{id}/deliveries/{delivery_id}/redeliver",
        "/v1/repos/acme/app/webhooks/1/deliveries/1/redeliver",
        401,
        &[(Reader, 403)],
    ),
    // Forge-wide webhooks and the forge's event stream: admin only.
    with_body(
        row(
            "POST",
            "/v1/webhooks",
            "/v1/webhooks",
            401,
            &[
                (Reader, 403),
                (Writer, 403),
                (OtherRepo, 403),
                (Sandbox, 403),
            ],
        ),
        r#"{"url":"https://hooks.example.com/","events":["*"]}"#,
    ),
    row(
        "GET",
        "/v1/webhooks",
        "/v1/webhooks",
        401,
        &[
            (Reader, 403),
            (Writer, 403),
            (OtherRepo, 403),
            (Sandbox, 403),
        ],
    ),
    row(
        "GET",
        "/v1/webhooks/{id}",
        "/v1/webhooks/1",
        401,
        &[
            (Reader, 403),
            (Writer, 403),
            (OtherRepo, 403),
            (Sandbox, 403),
        ],
    ),
    with_body(
        row(
            "PATCH",
            "/v1/webhooks/{id}",
            "/v1/webhooks/1",
            401,
            &[
                (Reader, 403),
                (Writer, 403),
                (OtherRepo, 403),
                (Sandbox, 403),
            ],
        ),
        "{}",
    ),
    row(
        "DELETE",
        "/v1/webhooks/{id}",
        "/v1/webhooks/1",
        401,
        &[
            (Reader, 403),
            (Writer, 403),
            (OtherRepo, 403),
            (Sandbox, 403),
        ],
    ),
    row(
        "POST",
        "/v1/webhooks/{id}/ping",
        "/v1/webhooks/1/ping",
        401,
        &[
            (Reader, 403),
            (Writer, 403),
            (OtherRepo, 403),
            (Sandbox, 403),
        ],
    ),
    row(
        "GET",
        "/v1/webhooks/{id}/deliveries",
        "/v1/webhooks/1/deliveries",
        401,
        &[
            (Reader, 403),
            (Writer, 403),
            (OtherRepo, 403),
            (Sandbox, 403),
        ],
    ),
    row(
        "GET",
        "/v1/webhooks/{id}/deliveries/{delivery_id}",
        "/v1/webhooks/1/deliveries/1",
        401,
        &[
            (Reader, 403),
            (Writer, 403),
            (OtherRepo, 403),
            (Sandbox, 403),
        ],
    ),
    row(
        "POST",
        "/v1/webhooks/{id}/deliveries/{delivery_id}/redeliver",
        "/v1/webhooks/1/deliveries/1/redeliver",
        401,
        &[
            (Reader, 403),
            (Writer, 403),
            (OtherRepo, 403),
            (Sandbox, 403),
        ],
    ),
    row(
        "GET",
        "/v1/events",
        "/v1/events",
        401,
        &[
            (Reader, 403),
            (Writer, 403),
            (OtherRepo, 403),
            (Sandbox, 403),
        ],
    ),
    row(
        "GET",
        "/metrics",
        "/metrics",
        401,
        &[
            (Reader, 403),
            (Writer, 403),
            (OtherRepo, 403),
            (Sandbox, 403),
        ],
    ),
    // The MCP tools: a token before any MCP message is read.
    row("ANY", "/v1/mcp", "/v1/mcp", 401, &[]),
    // Signed by GitHub, not by a token; without an App it is not served.
    row("POST", "/github/webhook", "/github/webhook", 503, &[]),
    row("GET", "/v1/github", "/v1/github", 401, &[]),
    row("GET", "/v1/github/repos", "/v1/github/repos", 401, &[]),
    with_body(
        row(
            "POST",
            "/v1/repos/{owner}/{name}/github",
            "/v1/repos/acme/app/github",
            401,
            &[(Writer, 403), (Sandbox, 403)],
        ),
        r#"{"repository":"acme/app"}"#,
    ),
    row(
        "GET",
        "/v1/repos/{owner}/{name}/github",
        "/v1/repos/acme/app/github",
        401,
        &[(OtherRepo, 404)],
    ),
    row(
        "DELETE",
        "/v1/repos/{owner}/{name}/github",
        "/v1/repos/acme/app/github",
        401,
        &[(Writer, 403)],
    ),
    with_body(
        row(
            "POST",
            "/v1/tokens",
            "/v1/tokens",
            401,
            &[(Writer, 403), (Sandbox, 403)],
        ),
        r#"{"name":"x","scopes":["admin"]}"#,
    ),
    row(
        "GET",
        "/v1/tokens",
        "/v1/tokens",
        401,
        &[(Reader, 403), (Sandbox, 403)],
    ),
    row(
        "DELETE",
        "/v1/tokens/{id}",
        "/v1/tokens/admin",
        401,
        &[(Writer, 403)],
    ),
    with_body(
        row(
            "POST",
            "/v1/nodes",
            "/v1/nodes",
            401,
            &[(Writer, 403), (Sandbox, 403), (Reader, 403)],
        ),
        r#"{"name":"n1"}"#,
    ),
    row(
        "GET",
        "/v1/nodes",
        "/v1/nodes",
        401,
        &[(Reader, 403), (Writer, 403), (Sandbox, 403)],
    ),
    row(
        "DELETE",
        "/v1/nodes/{name}",
        "/v1/nodes/n1",
        401,
        &[(Writer, 403), (Sandbox, 403)],
    ),
    // A node's own: only a node token, which no user token is.
    with_body(
        row(
            "POST",
            "/v1/nodes/report",
            "/v1/nodes/report",
            401,
            &[
                (Reader, 401),
                (Writer, 401),
                (Sandbox, 401),
                (OtherRepo, 401),
            ],
        ),
        r#"{"address":"127.0.0.1:7100","key":"k","backend":"container","memory_bytes":1,"free_memory_bytes":1,"vcpus":1,"disk_bytes":1,"free_disk_bytes":1}"#,
    ),
    row(
        "GET",
        "/{owner}/{name}/info/refs",
        "/acme/app/info/refs?service=git-upload-pack",
        401,
        &[(OtherRepo, 404)],
    ),
    row(
        "POST",
        "/{owner}/{name}/git-upload-pack",
        "/acme/app/git-upload-pack",
        401,
        &[(OtherRepo, 404)],
    ),
    row(
        "POST",
        "/{owner}/{name}/git-receive-pack",
        "/acme/app/git-receive-pack",
        401,
        &[(Reader, 403), (OtherRepo, 404)],
    ),
];

/// The `(method, route)` pairs the router declares: every operation of
/// the OpenAPI document (which `routes!` builds from the very handlers
/// the router serves; a path with every method is `ANY`), and each plain
/// `.route("…", …)` call of the sources, with the method routers among
/// its arguments (`get(`, `any(`, `.fallback(`…). Wildcards (`{*path}`)
/// are compared as `{path}`, as the document writes them.
fn declared_routes() -> Vec<(String, String)> {
    const METHODS: [&str; 7] = ["get", "put", "post", "delete", "options", "head", "patch"];
    let mut routes = Vec::new();
    let document = serde_json::to_value(crate::api::openapi()).expect("the document serialises");
    for (path, item) in document["paths"].as_object().expect("paths") {
        let methods: Vec<&str> = METHODS
            .into_iter()
            .filter(|m| item.get(*m).is_some())
            .collect();
        if methods.len() == METHODS.len() {
            routes.push(("ANY".to_owned(), path.clone()));
        } else {
            routes.extend(methods.iter().map(|m| (m.to_uppercase(), path.clone())));
        }
    }
    for source in [
        include_str!("../mod.rs"),
        include_str!("../terminal.rs"),
        include_str!("../../mcp.rs"),
    ] {
        for chunk in source.split(".route(").skip(1) {
            // The call's arguments: up to its closing parenthesis.
            let mut depth = 1;
            let end = chunk
                .char_indices()
                .find(|(_, c)| {
                    match c {
                        '(' => depth += 1,
                        ')' => depth -= 1,
                        _ => {}
                    }
                    depth == 0
                })
                .map_or(chunk.len(), |(at, _)| at);
            let arguments = &chunk[..end];
            let Some(rest) = arguments.trim_start().strip_prefix('"') else {
                continue;
            };
            let Some((route, handlers)) = rest.split_once('"') else {
                continue;
            };
            for method in ["get", "post", "put", "patch", "delete", "any", "fallback"] {
                let call = format!("{method}(");
                let service = format!("{method}_service(");
                let found = [&call, &service].into_iter().any(|call| {
                    handlers.match_indices(call.as_str()).any(|(at, _)| {
                        !handlers[..at]
                            .chars()
                            .next_back()
                            .is_some_and(|c| c.is_alphanumeric() || c == '_')
                    })
                });
                if found {
                    routes.push((method.to_uppercase(), route.to_owned()));
                }
            }
        }
    }
    routes.sort();
    routes.dedup();
    routes
}

#[test]
fn every_route_has_an_auth_row() {
    let declared = declared_routes();
    assert!(declared.len() > 40, "the parser lost routes: {declared:?}");
    let mut tabled: Vec<(String, String)> = ROWS
        .iter()
        .map(|r| (r.method.to_owned(), r.route.replace("{*", "{")))
        .collect();
    tabled.sort();
    let missing: Vec<_> = declared.iter().filter(|r| !tabled.contains(r)).collect();
    let stale: Vec<_> = tabled.iter().filter(|r| !declared.contains(r)).collect();
    assert!(
        missing.is_empty(),
        "routes without an auth row: {missing:?}"
    );
    assert!(stale.is_empty(), "rows of routes that are gone: {stale:?}");
}

/// The fixture: repository `acme/app` with a VM the admin created in it,
/// and a token of each [`Weak`] kind.
struct Fixture {
    app: TestApp,
    vm: String,
    tokens: Vec<(Weak, Token)>,
}

async fn fixture() -> Fixture {
    let app = TestApp::start().await;
    app.repo("acme/app").await;
    app.repo("acme/other").await;
    let made = app
        .expect(
            StatusCode::CREATED,
            Method::POST,
            "/v1/vms",
            Some(app.admin()),
            Some(json!({ "repo": "acme/app" })),
        )
        .await;
    let vm = made["id"].as_str().expect("a VM id").to_owned();
    app.expect(
        StatusCode::CREATED,
        Method::POST,
        &format!("/v1/vms/{vm}/snapshots"),
        Some(app.admin()),
        Some(json!({ "name": "snap" })),
    )
    .await;
    app.expect(
        StatusCode::ACCEPTED,
        Method::POST,
        "/v1/templates",
        Some(app.admin()),
        Some(json!({ "name": "tpl" })),
    )
    .await;
    let repo_id = app
        .state
        .store
        .repo_by_name("acme", "app")
        .await
        .expect("store")
        .expect("the repository")
        .id;
    let sandbox = Token {
        id: String::new(),
        secret: app.sandbox_token(&vm, &repo_id).await,
    };
    let tokens = vec![
        (Reader, app.token(&["repo:read"], None).await),
        (Writer, app.token(&["repo:write"], None).await),
        (
            OtherRepo,
            app.token(&["repo:write"], Some("acme/other")).await,
        ),
        (Sandbox, sandbox),
    ];
    Fixture { app, vm, tokens }
}

fn method_of(row: &Row) -> Method {
    match row.method {
        "ANY" | "FALLBACK" => Method::GET,
        other => Method::from_bytes(other.as_bytes()).expect("a method"),
    }
}

impl Fixture {
    async fn send(
        &self,
        row: &Row,
        authorization: Option<&str>,
    ) -> (StatusCode, serde_json::Value) {
        let path = row.path.replace("{vm}", &self.vm);
        let body = row
            .body
            .map(|b| serde_json::from_str(b).expect("a JSON body"));
        let mut request = request(method_of(row), &path, None, body);
        if let Some(value) = authorization {
            request.headers_mut().insert(
                header::AUTHORIZATION,
                value.parse().expect("a header value"),
            );
        }
        let response = self.app.send(request).await;
        let status = response.status();
        if status == StatusCode::UNAUTHORIZED {
            assert!(
                response.headers().contains_key(header::WWW_AUTHENTICATE),
                "{} {path}: a 401 lets git ask for credentials",
                row.method
            );
        }
        (status, crate::testing::body_json(response).await)
    }
}

#[tokio::test]
async fn requests_without_a_valid_token_are_refused_on_every_route() {
    let fixture = fixture().await;
    for row in ROWS {
        for authorization in [
            None,
            Some("Bearer forge_not-a-token"),
            Some("Basic bm90OmFjY2VwdGVk"),
            Some("Digest whatever"),
        ] {
            let (status, body) = fixture.send(row, authorization).await;
            assert_eq!(
                status.as_u16(),
                row.anonymous,
                "{} {} with {authorization:?}: {body}",
                row.method,
                row.path
            );
            if status.is_client_error() || status.is_server_error() {
                assert!(
                    body["error"]["code"].is_string(),
                    "{} {}: {body}",
                    row.method,
                    row.path
                );
            }
        }
    }
}

#[tokio::test]
async fn tokens_without_the_scope_repository_or_vm_are_refused() {
    let fixture = fixture().await;
    let mut checked = 0;
    for row in ROWS {
        for (weak, status) in row.denied {
            let token = &fixture
                .tokens
                .iter()
                .find(|(kind, _)| kind == weak)
                .expect("a token of each kind")
                .1;
            let bearer = format!("Bearer {}", token.secret);
            let (got, body) = fixture.send(row, Some(&bearer)).await;
            assert_eq!(
                got.as_u16(),
                *status,
                "{} {} as {weak:?}: {body}",
                row.method,
                row.path
            );
            let code = match got {
                StatusCode::FORBIDDEN => "forbidden",
                StatusCode::NOT_FOUND => "not_found",
                StatusCode::UNAUTHORIZED => "unauthorized",
                _ => "bad_request",
            };
            assert_error(got, &body, got, code);
            checked += 1;
        }
    }
    assert!(checked > 40, "only {checked} denials checked");
    // None of the refused requests touched the VM.
    assert_eq!(fixture.app.vm_state(&fixture.vm).await, "running");
    assert!(fixture.app.backend.execs().is_empty());
}

#[tokio::test]
async fn a_revoked_token_is_refused_everywhere_it_worked() {
    let app = TestApp::start().await;
    let writer = app.token(&["repo:write"], None).await;
    let vm = app.vm(&writer.secret).await;
    app.expect(
        StatusCode::NO_CONTENT,
        Method::DELETE,
        &format!("/v1/tokens/{}", writer.id),
        Some(app.admin()),
        None,
    )
    .await;
    for (method, path) in [
        (Method::GET, format!("/v1/vms/{vm}")),
        (Method::GET, "/v1/vms".to_owned()),
        (Method::POST, format!("/v1/vms/{vm}/pause")),
    ] {
        let (status, body) = app.call(method, &path, Some(&writer.secret), None).await;
        assert_error(status, &body, StatusCode::UNAUTHORIZED, "unauthorized");
    }
    assert_eq!(app.vm_state(&vm).await, "running");
}
