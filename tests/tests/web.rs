//! The web UI in a real browser: headless Chromium (Debian's `chromium`
//! and `chromium-driver`, installed by scripts/setup-host.sh) driven over
//! WebDriver against the real forge binary, with real `git` pushes.
//!
//! Every page visited is saved as a PNG under `target/web-screenshots/`
//! (the path is printed). A host without Chromium fails these tests with
//! the reason; the parts that need sandboxes skip, saying so, where the
//! host cannot run them.

#![allow(clippy::unwrap_used)] // A test that cannot unwrap has failed: say so loudly.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use api_types::runs::RunDetail;
use e2e::fake_model::{FakeModel, Reply};
use e2e::webdriver::{Browser, ENTER};
use e2e::{TestForge, git_ok, work_repo};

fn screenshots() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let dir = target.join("web-screenshots");
    println!("screenshots: {}", dir.display());
    dir
}

/// Signs in through the form with the forge's admin token.
fn sign_in(browser: &Browser, forge: &TestForge) {
    browser.goto(&format!("{}/", forge.url));
    assert!(browser.url().ends_with("/-/signin"), "not sent to sign-in");
    let token = browser.find("#token");
    browser.type_into(&token, &forge.admin_token);
    browser.click(&browser.find("form button[type=submit]"));
    browser.wait_until("signed in", Duration::from_secs(10), |b| {
        b.texts("h1").first().is_some_and(|h| h == "Repositories")
    });
}

fn create_repo(browser: &Browser, forge: &TestForge, name: &str) {
    browser.goto(&format!("{}/", forge.url));
    browser.type_into(&browser.find("#repo-name"), name);
    browser.click(&browser.find("form[action='/-/repos'] button"));
    browser.wait_until("repository page", Duration::from_secs(10), |b| {
        b.texts("h1").first().is_some_and(|h| h == name)
    });
}

/// Fails when a visible form control on the page has no label.
fn assert_labelled(browser: &Browser) {
    let unlabelled = browser.script(
        "return [...document.querySelectorAll('input:not([type=hidden]), select, textarea:not(.xterm-helper-textarea)')]\
         .filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label')).map(e => e.outerHTML);",
    );
    assert_eq!(
        unlabelled,
        serde_json::json!([]),
        "unlabelled controls on {}",
        browser.url()
    );
}

/// A webhook receiver on loopback that answers 200 and counts requests.
fn receiver() -> (String, Arc<AtomicUsize>) {
    receiver_answering(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok")
}

/// A webhook receiver on loopback that answers every request 500.
fn failing_receiver() -> String {
    receiver_answering(
        b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 4\r\nconnection: close\r\n\r\nfail",
    )
    .0
}

/// A webhook receiver on loopback that answers `reply` and counts
/// requests.
fn receiver_answering(reply: &'static [u8]) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            stream
                .set_read_timeout(Some(Duration::from_millis(500)))
                .unwrap();
            let mut buffer = [0u8; 65536];
            let _ = stream.read(&mut buffer);
            seen.fetch_add(1, Ordering::SeqCst);
            let _ = stream.write_all(reply);
        }
    });
    (url, count)
}

/// A README that tries to run script three ways, and links out of the
/// repository and to a file in it.
const README: &str = "# web\n\nSome **bold** text: [the code](src/lib.rs), [a trap](javascript:window.readmeRan=1).\n\n<script>window.readmeRan = true</script>\n\n<img src=x onerror=\"window.readmeRan = true\"> <iframe src=\"/\"></iframe>\n";

/// Submits the sign-in form on the current page with `token`.
fn submit_token(browser: &Browser, token: &str) {
    browser.type_into(&browser.find("#token"), token);
    browser.click(&browser.find("form button[type=submit]"));
}

#[test]
fn signing_in_from_a_deep_link_lands_there_and_never_on_another_site() {
    let forge = TestForge::builder().start();
    let browser = Browser::start(&screenshots());

    // A page asked for without a session: sign in, land on that page,
    // even after a wrong token first.
    browser.goto(&format!("{}/-/sandboxes?view=all", forge.url));
    assert!(
        browser.url().contains("/-/signin?next="),
        "not sent to sign-in with the page: {}",
        browser.url()
    );
    submit_token(&browser, "forge_wrong");
    browser.find("p.error");
    submit_token(&browser, &forge.admin_token);
    browser.wait_until("back on the page asked for", Duration::from_secs(10), |b| {
        b.url().ends_with("/-/sandboxes?view=all")
    });

    // A `next` naming another site is ignored: the browser lands on `/`.
    for next in [
        "//evil.example/",
        "https://evil.example/",
        "/%5Cevil.example",
    ] {
        let fresh = Browser::start(&screenshots());
        fresh.goto(&format!("{}/-/signin?next={next}", forge.url));
        submit_token(&fresh, &forge.admin_token);
        fresh.wait_until("signed in", Duration::from_secs(10), |b| {
            b.texts("h1").first().is_some_and(|h| h == "Repositories")
        });
        assert_eq!(fresh.url(), format!("{}/", forge.url), "next={next}");
    }
}

#[test]
fn the_repository_name_field_checks_its_pattern_in_the_browser() {
    let forge = TestForge::builder().start();
    let browser = Browser::start(&screenshots());
    sign_in(&browser, &forge);
    // Chromium compiles a pattern with the `v` flag; an invalid one is
    // ignored (and logged), and every value passes.
    let valid = |value: &str| {
        browser.script(&format!(
            "const e = document.querySelector('#repo-name'); e.value = {value:?}; return e.checkValidity();"
        ))
    };
    assert_eq!(valid("acme/web"), serde_json::json!(true));
    for bad in ["noslash", "a/b/c", "/web"] {
        assert_eq!(
            valid(bad),
            serde_json::json!(false),
            "{bad:?} passed the pattern"
        );
    }
}

#[test]
fn every_error_is_one_html_page_with_the_navigation() {
    let forge = TestForge::builder().start();
    let browser = Browser::start(&screenshots());
    sign_in(&browser, &forge);
    create_repo(&browser, &forge, "acme/web");
    for (path, title, says) in [
        ("/-/nope", "Not found", "There is no page at /-/nope."),
        (
            "/-/repos/acme/web/branch",
            "Bad request",
            "missing something the page needs: missing field `name`",
        ),
        (
            "/-/repos/acme/web/branch?name=nope",
            "Not found",
            "branch nope does not exist in acme/web",
        ),
        ("/-/repos/acme/nothing", "Not found", "acme/nothing"),
    ] {
        browser.goto(&format!("{}{path}", forge.url));
        assert_eq!(browser.texts("h1"), [title], "{path}");
        let message = browser.texts("p.error").join(" ");
        assert!(message.contains(says), "{path}: {message}");
        assert!(
            browser.all("nav a[href='/-/sandboxes']").len() == 1,
            "{path} has no navigation bar"
        );
        assert!(
            browser
                .script("return document.title;")
                .as_str()
                .is_some_and(|t| t.starts_with(title))
        );
    }
    browser.screenshot("error-page");
}

#[test]
fn sign_in_repositories_branches_and_webhooks() {
    let forge = TestForge::builder().allow_loopback().start();
    let browser = Browser::start(&screenshots());

    // Sign-in: a wrong token is refused with a message, the right one works.
    browser.goto(&format!("{}/", forge.url));
    browser.screenshot("signin");
    browser.type_into(&browser.find("#token"), "forge_wrong");
    browser.click(&browser.find("form button[type=submit]"));
    let error = browser.find("p.error");
    assert!(
        browser.text(&error).contains("does not work"),
        "{}",
        browser.text(&error)
    );
    sign_in(&browser, &forge);
    let cookies = browser.script("return document.cookie;");
    assert_eq!(
        cookies.as_str(),
        Some(""),
        "the session cookie is readable by scripts"
    );
    let session = browser.cookie("forge_session");
    assert_eq!(session["httpOnly"], true, "{session}");
    assert_eq!(session["sameSite"], "Strict", "{session}");
    // A form post with the session but without its CSRF token is refused.
    let forged = reqwest::blocking::Client::new()
        .post(format!("{}/-/repos", forge.url))
        .header(
            "cookie",
            format!("forge_session={}", session["value"].as_str().unwrap()),
        )
        .form(&[("name", "evil/repo"), ("_csrf", "guess")])
        .send()
        .unwrap();
    assert_eq!(forged.status().as_u16(), 403);
    let (status, _) = forge.call(Some(&forge.admin_token), "GET", "/v1/repos/evil/repo", None);
    assert_eq!(status, 404, "a forged form created a repository");
    // With the session and its right CSRF token, but sent by another
    // page: a sandboxed preview (Origin: null), another site, or a sibling
    // subdomain (same site, so the cookie rides along).
    let csrf = browser.script("return document.querySelector('input[name=_csrf]').value;");
    let csrf = csrf.as_str().unwrap();
    for (header, value) in [
        ("origin", "null"),
        ("origin", "https://evil.example"),
        ("sec-fetch-site", "same-site"),
        ("sec-fetch-site", "cross-site"),
    ] {
        let forged = reqwest::blocking::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap()
            .post(format!("{}/-/repos", forge.url))
            .header(
                "cookie",
                format!("forge_session={}", session["value"].as_str().unwrap()),
            )
            .header(header, value)
            .form(&[("name", "evil/origin"), ("_csrf", csrf)])
            .send()
            .unwrap();
        assert_eq!(forged.status().as_u16(), 403, "{header}: {value}");
    }
    let (status, _) = forge.call(
        Some(&forge.admin_token),
        "GET",
        "/v1/repos/evil/origin",
        None,
    );
    assert_eq!(status, 404, "a cross-origin form created a repository");

    // Create a repository.
    create_repo(&browser, &forge, "acme/web");
    let clone = browser.find("#clone-url");
    assert_eq!(
        browser.attribute(&clone, "value").unwrap(),
        format!("{}/acme/web.git", forge.url)
    );
    browser.click(&browser.find("button[data-copy]"));
    browser.wait_until("copied", Duration::from_secs(5), |b| {
        b.texts("button[data-copy]")
            .first()
            .is_some_and(|t| t == "Copied")
    });
    browser.screenshot("repository-empty");
    assert_labelled(&browser);
    // An empty repository says how to put code in it, ready to copy.
    let setup = browser.script("return document.querySelector('#setup-new').value;");
    let setup = setup.as_str().unwrap_or_default();
    assert!(
        setup.contains(&format!("git remote add origin {}/acme/web.git", forge.url))
            && setup.contains("git push -u origin main"),
        "{setup}"
    );
    assert_eq!(
        browser.texts("header a[aria-current=page]"),
        ["Repositories"],
        "the navigation marks the section"
    );

    // A webhook form with every field wrong: each problem is shown beside
    // its field at once, and what was typed is kept.
    let (hook_url, received) = receiver();
    browser.goto(&format!("{}/-/repos/acme/web/webhooks", forge.url));
    browser.type_into(&browser.find("#hook-url"), "ftp://example.com/hook");
    browser.click(&browser.find("input[name=events][value=push]"));
    browser.type_into(&browser.find("#hook-branches"), "[bad");
    browser.type_into(&browser.find("#hook-paths"), "{src");
    browser.click(&browser.find("form.webhook button"));
    browser.wait_for("#webhook-error", Duration::from_secs(10));
    for field in ["url", "events", "branches", "paths"] {
        let error = browser.texts(&format!("#hook-{field}-error"));
        assert_eq!(error.len(), 1, "no error beside {field}");
    }
    assert!(browser.texts("#hook-branches-error")[0].contains("glob"));
    assert_eq!(
        browser.all("[aria-invalid=true]").len(),
        3,
        "url, branches and paths are marked invalid"
    );
    assert_eq!(
        browser
            .attribute(&browser.find("#hook-branches"), "value")
            .unwrap(),
        "[bad"
    );
    browser.screenshot("webhook-every-error");
    assert_labelled(&browser);
    for (field, value) in [("#hook-url", hook_url.as_str()), ("#hook-branches", "main")] {
        let input = browser.find(field);
        browser.clear(&input);
        browser.type_into(&input, value);
    }
    browser.clear(&browser.find("#hook-paths"));
    for event in ["push", "run.completed"] {
        browser.click(&browser.find(&format!("input[name=events][value='{event}']")));
    }
    browser.click(&browser.find("form.webhook button"));
    browser.wait_until("webhook page", Duration::from_secs(10), |b| {
        b.texts("h1")
            .first()
            .is_some_and(|h| h.starts_with("Webhook "))
    });
    let hook_page = browser.url();
    // The generated secret is shown once, on the webhook's own page.
    let secret = browser
        .attribute(&browser.find("#hook-secret"), "value")
        .unwrap_or_default();
    assert!(secret.starts_with("whsec_"), "{secret}");
    assert!(!hook_page.contains("whsec_"), "the secret is in the URL");
    browser.screenshot("webhook-secret");
    browser.goto(&hook_page);
    assert!(
        browser.all("#hook-secret").is_empty(),
        "the secret is shown twice"
    );
    let ticked = browser.script(
        "return [...document.querySelectorAll('input[name=events]:checked')].map(e => e.value);",
    );
    assert_eq!(ticked, serde_json::json!(["push", "run.completed"]));

    // Push with git; the webhook is delivered.
    let temp = tempfile::tempdir().unwrap();
    let work = work_repo(
        temp.path(),
        "web",
        &[
            ("README.md", README),
            (
                "src/lib.rs",
                "// The answer.\npub fn answer() -> u32 { 42 }\n",
            ),
        ],
    );
    let url = forge.git_url("acme/web", &forge.admin_token);
    git_ok(&work, &["push", "--quiet", &url, "main"]);
    browser.wait_until("a delivered delivery", Duration::from_secs(30), |b| {
        b.goto(&hook_page);
        b.all("#delivery-log tr.delivery .badge.ok").len() == 1
    });
    assert_eq!(received.load(Ordering::SeqCst), 1);
    let row = browser.text(&browser.find("#delivery-log tr.delivery"));
    assert!(row.contains("push") && row.contains("200"), "{row}");
    browser.screenshot("webhook-deliveries");
    // A delivery's page: the payload, the request's headers, the answer.
    browser.click(&browser.find("#delivery-log tr.delivery a"));
    browser.wait_for("#payload", Duration::from_secs(10));
    let payload = browser.text(&browser.find("pre.payload"));
    assert!(
        payload.contains("\"ref\": \"refs/heads/main\""),
        "{payload}"
    );
    let request = browser.text(&browser.find("article.attempt table.headers"));
    assert!(
        request.contains("webhook-id") && request.contains("webhook-signature"),
        "{request}"
    );
    let attempt = browser.text(&browser.find("article.attempt"));
    assert!(
        attempt.contains("HTTP 200") && attempt.contains("ok"),
        "{attempt}"
    );
    browser.screenshot("webhook-delivery");
    browser.goto(&hook_page);
    browser.click(&browser.find("#delivery-log tr.delivery button"));
    // The receiver gets it before the browser goes anywhere else: loading
    // a page now could cancel the form's submission before it is sent.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while received.load(Ordering::SeqCst) < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "the redelivery never reached the receiver"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // A redelivery is another attempt of the same delivery.
    browser.wait_until("the redelivery", Duration::from_secs(30), |b| {
        b.goto(&hook_page);
        b.texts("#delivery-log tr.delivery td")
            .get(3)
            .is_some_and(|attempts| attempts == "2")
    });
    assert_eq!(received.load(Ordering::SeqCst), 2);

    // Ping, rotate (a new secret, shown once), delete (asked first).
    browser.click(&browser.find("form[action$='/ping'] button"));
    browser.wait_until("the ping", Duration::from_secs(30), |_| {
        received.load(Ordering::SeqCst) == 3
    });
    browser.click(&browser.find("form[action$='/rotate'] button"));
    let rotated = browser
        .attribute(
            &browser.wait_for("#hook-secret", Duration::from_secs(10)),
            "value",
        )
        .unwrap_or_default();
    assert!(
        rotated.starts_with("whsec_") && rotated != secret,
        "{rotated}"
    );
    assert_eq!(
        browser.all("form[action$='/delete'][data-confirm]").len(),
        1,
        "Delete asks first"
    );
    browser.script("window.confirm = () => true; return null;");
    browser.click(&browser.find("form[action$='/delete'] button"));
    browser.wait_until("back on the list", Duration::from_secs(10), |b| {
        b.url().ends_with("/-/repos/acme/web/webhooks")
    });
    assert!(browser.all("#webhooks").is_empty(), "the webhook is gone");

    // A receiver that fails: the delivery waits for its next retry, and
    // the log says when.
    let failing = failing_receiver();
    let (status, _) = forge.call(
        Some(&forge.admin_token),
        "POST",
        "/v1/repos/acme/web/webhooks",
        Some(serde_json::json!({ "url": failing, "events": ["push"] })),
    );
    assert_eq!(status, 201);
    git_ok(
        &work,
        &["commit", "--quiet", "--allow-empty", "-m", "again"],
    );
    git_ok(&work, &["push", "--quiet", &url, "main"]);
    let head = git_ok(&work, &["rev-parse", "HEAD"]);
    browser.goto(&format!("{}/-/repos/acme/web/webhooks", forge.url));
    let failing_page = browser
        .all("#webhooks a")
        .into_iter()
        .find(|a| browser.text(a) == failing)
        .map(|a| browser.attribute(&a, "href").unwrap())
        .unwrap();
    browser.wait_until("a retry planned", Duration::from_secs(30), |b| {
        b.goto(&format!("{}{failing_page}", forge.url));
        b.all("#delivery-log td.next-retry time").len() == 1
    });
    let next = browser.texts("#delivery-log td.next-retry")[0].clone();
    assert!(next.starts_with("in ") || next == "now", "{next}");
    browser.screenshot("webhook-retry");

    // The repository page lists the branch with its head commit, the
    // files and the README, rendered and defused; the branch page browses
    // the files, highlighted, each line with its anchor.
    browser.goto(&format!("{}/-/repos/acme/web", forge.url));
    assert_eq!(browser.texts("section.readme h1"), ["web"]);
    assert_eq!(browser.texts(".markdown strong"), ["bold"]);
    let links = browser.script(
        "return [...document.querySelectorAll('.markdown a')].map(a => a.getAttribute('href'));",
    );
    assert_eq!(
        links,
        serde_json::json!(["/-/repos/acme/web/branch?name=main&path=src%2Flib.rs", "#"])
    );
    let defused = browser.script(
        "return [window.readmeRan === undefined, document.querySelectorAll('.markdown script, .markdown img[onerror], .markdown iframe').length];",
    );
    assert_eq!(defused, serde_json::json!([true, 0]));
    assert!(
        browser
            .text(&browser.find(".markdown"))
            .contains("<script>")
    );
    let columns =
        browser.script("return getComputedStyle(document.querySelector('ul.tree')).columnCount;");
    assert_eq!(
        columns,
        serde_json::json!("auto"),
        "the file list is one column"
    );
    let row = browser.text(&browser.find("#branches tbody tr"));
    assert!(
        row.starts_with("main") && row.contains(&head[..10]),
        "{row}"
    );
    browser.screenshot("repository");
    browser.click(&browser.find("#branches tbody tr a"));
    browser.wait_for("ul.tree", Duration::from_secs(10));
    let tree = browser.text(&browser.find("ul.tree"));
    assert!(
        tree.contains("src/") && tree.contains("README.md"),
        "{tree}"
    );
    browser.click(&browser.find("ul.tree li.dir a"));
    browser.wait_until("src listed", Duration::from_secs(10), |b| {
        b.texts("ul.tree")
            .first()
            .is_some_and(|t| t.contains("lib.rs"))
    });
    browser.click(&browser.find("ul.tree li.file a"));
    let file = browser.wait_for("pre.file", Duration::from_secs(10));
    assert!(browser.text(&file).contains("pub fn answer()"));
    assert!(
        !browser
            .all("pre.file #L2 .hl-storage, pre.file #L2 .hl-keyword")
            .is_empty(),
        "not highlighted"
    );
    assert!(!browser.all("pre.file #L1 .hl-comment").is_empty());
    assert_eq!(browser.texts("pre.file #L2 a.ln"), ["2"]);
    let line = format!("{}#L2", browser.url());
    browser.goto(&line);
    let marked = browser.script("return document.querySelector(':target').id;");
    assert_eq!(marked, serde_json::json!("L2"));
    browser.screenshot("branch-file");

    // GitHub: not configured on this forge, said plainly.
    browser.goto(&format!("{}/-/github", forge.url));
    assert!(browser.text(&browser.find("main")).contains("GitHub"));
    browser.screenshot("github");
    browser.goto(&format!("{}/-/sandboxes", forge.url));
    browser.screenshot("sandboxes-none");
    assert_eq!(browser.texts("header a[aria-current=page]"), ["Sandboxes"]);

    // A phone-sized window: no sideways scrolling of the page itself.
    browser.resize(390, 844);
    browser.goto(&format!("{}/-/repos/acme/web", forge.url));
    let fits =
        browser.script("return document.documentElement.scrollWidth <= window.innerWidth + 1;");
    browser.screenshot("repository-phone");
    assert_eq!(
        fits.as_bool(),
        Some(true),
        "the page scrolls sideways on a phone"
    );
    browser.resize(1280, 900);

    // Deleting the repository from its page.
    browser.script("window.confirm = () => true; return null;");
    browser.click(&browser.find("section.danger button"));
    browser.wait_until("back on the list", Duration::from_secs(10), |b| {
        b.texts("h1").first().is_some_and(|h| h == "Repositories")
    });
    assert!(!browser.text(&browser.find("main")).contains("acme/web"));
}

#[test]
fn run_logs_stream_and_terminal_says_hi() {
    if !e2e::require_sandboxes() {
        return;
    }
    let forge = TestForge::builder().with_sandboxes(10).start();
    let browser = Browser::start(&screenshots());
    sign_in(&browser, &forge);
    create_repo(&browser, &forge, "acme/live");

    let config = r#"[[pipeline.steps]]
name = "lint"
run = '''printf '\033[32mgreen-ok\033[0m\n'; sleep 4; echo lint-done'''

[[pipeline.steps]]
name = "test"
run = "echo all-tests-passed"
"#;
    let temp = tempfile::tempdir().unwrap();
    let work = work_repo(temp.path(), "live", &[(".forge.toml", config)]);
    let url = forge.git_url("acme/live", &forge.admin_token);
    git_ok(&work, &["push", "--quiet", &url, "main"]);

    // The branch's run appears on the repository page; open it.
    let repo_page = format!("{}/-/repos/acme/live", forge.url);
    browser.wait_until("a run of main", Duration::from_secs(60), |b| {
        b.goto(&repo_page);
        !b.all("#branches a[href^='/-/runs/']").is_empty()
    });
    browser.click(&browser.find("#branches a[href^='/-/runs/']"));

    // Logs stream in while the run goes: the coloured line shows before
    // the step has finished, then the result arrives.
    browser.wait_until("the coloured line, live", Duration::from_secs(120), |b| {
        b.texts("pre.log span.a-32")
            .first()
            .is_some_and(|t| t == "green-ok")
    });
    let log = browser.text(&browser.find("li.step pre.log"));
    assert!(
        !log.contains("lint-done"),
        "the log only arrived at the end: {log}"
    );
    browser.screenshot("run-live");
    browser.wait_until("the run's result", Duration::from_secs(120), |b| {
        b.texts("#run-state").first().is_some_and(|t| t == "passed")
    });
    // Passed steps fold: read their logs whole.
    let logs = browser.script("return document.querySelector('ol.steps').textContent;");
    let logs = logs.as_str().unwrap_or_default();
    assert!(
        logs.contains("lint-done") && logs.contains("all-tests-passed"),
        "{logs}"
    );
    browser.screenshot("run-passed");

    // The branch page shows the sandbox; its terminal runs `echo hi`.
    browser.goto(&format!("{}/-/repos/acme/live/branch?name=main", forge.url));
    browser.screenshot("branch-sandbox");
    browser.click(&browser.find("#sandbox ~ div.actions a.button, div.actions a.button"));
    browser.wait_until("the terminal connects", Duration::from_secs(30), |b| {
        b.attribute(&b.find("#terminal"), "data-connected")
            .as_deref()
            == Some("true")
    });
    let input = browser.find(".xterm-helper-textarea");
    browser.type_into(&input, &format!("echo hi{ENTER}"));
    browser.wait_until("`hi` on its own line", Duration::from_secs(20), |b| {
        b.texts(".xterm-rows > div")
            .iter()
            .any(|row| row.trim() == "hi")
    });
    browser.screenshot("terminal");

    // The terminal fills its box and follows the window; the sandbox's
    // PTY is told each size (`stty size` prints rows and columns).
    let size = |b: &Browser| {
        let size = b
            .attribute(&b.find("#terminal"), "data-size")
            .unwrap_or_default();
        let (cols, rows) = size.split_once('x').unwrap_or(("0", "0"));
        (
            cols.parse::<u32>().unwrap_or(0),
            rows.parse::<u32>().unwrap_or(0),
        )
    };
    let stty_says = |b: &Browser, (cols, rows): (u32, u32)| {
        let input = b.find(".xterm-helper-textarea");
        b.type_into(&input, &format!("clear; stty size{ENTER}"));
        b.wait_until("stty size", Duration::from_secs(20), |b| {
            b.texts(".xterm-rows > div")
                .iter()
                .any(|row| row.trim() == format!("{rows} {cols}"))
        });
    };
    let wide = size(&browser);
    assert!(
        wide.0 > 100,
        "the terminal does not fill a wide window: {wide:?}"
    );
    stty_says(&browser, wide);
    browser.resize(600, 800);
    browser.wait_until("the terminal narrows", Duration::from_secs(10), |b| {
        size(b).0 < 80
    });
    let narrow = size(&browser);
    let fits = browser.script(
        "return document.documentElement.scrollWidth <= innerWidth + 1 && \
         document.querySelector('#terminal').scrollWidth <= document.querySelector('#terminal').clientWidth + 1;",
    );
    assert_eq!(
        fits,
        serde_json::json!(true),
        "the terminal scrolls sideways at 600 px"
    );
    stty_says(&browser, narrow);
    browser.screenshot("terminal-narrow");
    browser.resize(1280, 900);

    // The sandboxes page: fork the branch sandbox; the fork is drawn under it.
    browser.goto(&format!("{}/-/sandboxes", forge.url));
    assert_eq!(browser.all("li.vm").len(), 1);
    // The state reads apart from the facts; Delete asks first; actions
    // come back to the card.
    let card = browser.texts("li.vm div.card")[0].clone();
    assert!(
        card.contains("running container") || card.contains("running microvm"),
        "{card}"
    );
    assert!(card.contains(" · up "), "{card}");
    assert_eq!(
        browser
            .all("li.vm form[action$='/delete'][data-confirm]")
            .len(),
        1,
        "Delete asks for confirmation"
    );
    let back = browser.find("li.vm form[action$='/fork'] input[name=back]");
    let vm_id = browser
        .attribute(&browser.find("li.vm"), "data-vm")
        .unwrap();
    assert_eq!(
        browser.attribute(&back, "value"),
        Some(format!("/-/sandboxes#vm-{vm_id}"))
    );
    let fork = browser
        .all("li.vm form[action$='/fork'] button")
        .into_iter()
        .next()
        .unwrap();
    browser.click(&fork);
    browser.wait_until("the fork under its parent", Duration::from_secs(120), |b| {
        b.goto(&format!("{}/-/sandboxes", forge.url));
        b.all("li.vm li.vm").len() == 1
    });
    browser.screenshot("sandboxes");

    // Pause and resume the branch sandbox from its branch page.
    let branch = format!("{}/-/repos/acme/live/branch?name=main", forge.url);
    browser.goto(&branch);
    browser.click(&browser.find("form[action$='/pause'] button"));
    browser.wait_until("paused", Duration::from_secs(60), |b| {
        b.texts("#sandbox + p .badge")
            .first()
            .is_some_and(|t| t.starts_with("paused"))
    });
    browser.screenshot("branch-paused");
    browser.click(&browser.find("form[action$='/resume'] button"));
    browser.wait_until("running again", Duration::from_secs(60), |b| {
        b.texts("#sandbox + p .badge")
            .first()
            .is_some_and(|t| t == "running")
    });

    // Fork from the branch page: the page announces the fork, and the
    // branch's sandbox stays the one its pipelines use; the forks are
    // listed apart, each "fork of" it. So does the repository page.
    let own = browser.texts("#sandbox + p code")[0].clone();
    browser.click(&browser.find("#sandbox ~ div.actions form[action$='/fork'] button, div.actions form[action$='/fork'] button"));
    browser.wait_until("the fork announced", Duration::from_secs(120), |b| {
        !b.all("p.notice code").is_empty()
    });
    browser.screenshot("branch-forked");
    let fork = browser.texts("p.notice code")[0].clone();
    assert_ne!(fork, own, "the notice names the new fork");
    assert!(browser.url().contains("forked="), "{}", browser.url());
    assert_eq!(
        browser.texts("#sandbox + p code")[0],
        own,
        "the branch's sandbox is still the one its pipelines use"
    );
    assert_eq!(browser.texts("#forks"), ["Forks (2)"]);
    let listed = browser.texts("ul.forks li");
    assert!(
        listed
            .iter()
            .any(|f| f.contains(&fork) && f.contains(&format!("fork of {own}"))),
        "{listed:?}"
    );
    browser.goto(&format!("{}/-/repos/acme/live", forge.url));
    let shown = browser.find("#branches span.sandbox");
    assert_eq!(
        browser.attribute(&shown, "title").as_deref(),
        Some(own.as_str())
    );
}

/// The run page a `git push` names (its `remote: Run #N of B: URL` line).
fn pushed_run_page(work: &std::path::Path, url: &str, forge: &TestForge) -> String {
    let output = e2e::git_run(work, &["push", url, "main"]);
    let said = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "{said}");
    let line = said
        .lines()
        .find(|line| line.starts_with("remote: Run #"))
        .unwrap_or_else(|| panic!("git push did not name the run:\n{said}"));
    // git pads progress lines to clear what the terminal showed before.
    let page = line.trim_end().rsplit(' ').next().unwrap().to_owned();
    assert!(
        page.starts_with(&format!("{}/-/runs/", forge.url)),
        "{line}"
    );
    page
}

#[test]
fn a_run_page_says_what_ran_and_cancels_and_runs_again() {
    if !e2e::require_sandboxes() {
        return;
    }
    // The model of the branch reviews answers with hostile Markdown.
    let model = FakeModel::start(
        vec![Reply::Answer(serde_json::json!({
            "summary": "Mostly **fine**. <script>window.modelRan = 1</script> [x](javascript:alert(1))",
            "request_changes": false,
            "comments": [{ "path": "notes.md", "line": 1, "body": "Say *why*." }],
        }))],
        None,
    );
    let spec = format!("{},fake-reviewer", model.url);
    let forge = TestForge::builder()
        .with_sandboxes(10)
        .env("FORGE_REVIEW_MODEL", &spec)
        .start();
    let browser = Browser::start(&screenshots());
    sign_in(&browser, &forge);
    create_repo(&browser, &forge, "acme/runs");
    let config = r#"[[pipeline.steps]]
name = "test"
run = "bun test"

[[pipeline.steps]]
name = "fail"
run = "printf 'one\ntwo\nthree\n'; exit 3"
"#;
    let mut files = e2e::BUN_PROJECT.to_vec();
    files.push((".forge.toml", config));
    let temp = tempfile::tempdir().unwrap();
    let work = work_repo(temp.path(), "runs", &files);
    let url = forge.git_url("acme/runs", &forge.admin_token);

    // `git push` names the run's page; the page says what ran.
    let page = pushed_run_page(&work, &url, &forge);
    browser.goto(&page);
    browser.wait_until("the run failed", Duration::from_secs(180), |b| {
        b.texts("#run-state").first().is_some_and(|t| t == "failed")
    });
    let commit = browser.text(&browser.find("#run-commit"));
    assert!(
        commit.contains("initial commit") && commit.contains("Ada Tester"),
        "{commit}"
    );
    let times = browser.text(&browser.find("#run-times"));
    assert!(
        times.contains("Started") && times.contains("UTC"),
        "{times}"
    );
    browser.wait_until("the duration stops", Duration::from_secs(5), |b| {
        b.texts("#run-duration")
            .first()
            .is_some_and(|d| !d.contains("so far") && (d.ends_with(" s") || d.ends_with(" ms")))
    });
    assert!(
        browser.all("#cancel").is_empty(),
        "a finished run offers Cancel"
    );
    // Each step: a passed one folded, the failed one open with its exit
    // code; the checkout has a duration too.
    let steps = browser.script(
        "return [...document.querySelectorAll('li.step')].map(li => ({ \
           name: li.querySelector('.name').textContent, \
           open: li.querySelector('details').open, \
           exit: li.querySelector('.exit').textContent, \
           duration: li.querySelector('.duration').textContent }));",
    );
    let steps = steps.as_array().unwrap();
    let step = |name: &str| {
        steps
            .iter()
            .find(|s| s["name"] == name)
            .unwrap_or_else(|| panic!("no step {name}: {steps:?}"))
    };
    assert!(
        step("checkout")["duration"]
            .as_str()
            .is_some_and(|d| !d.is_empty()),
        "{steps:?}"
    );
    assert_eq!(step("test")["open"], false, "{steps:?}");
    assert_eq!(step("test")["exit"], "exit 0", "{steps:?}");
    assert_eq!(step("fail")["open"], true, "{steps:?}");
    assert_eq!(step("fail")["exit"], "exit 3", "{steps:?}");
    // `bun test` colours its summary: the run forces colour.
    let green = browser.script(
        "return [...document.querySelectorAll('li.step pre.log span.a-32')].map(s => s.textContent).join('|');",
    );
    assert!(
        green.as_str().is_some_and(|g| g.contains("pass")),
        "no green in bun's output: {green}"
    );
    browser.screenshot("run-failed");

    // Every log line has an anchor; a link to one opens its step there.
    let anchor = browser.script(
        "const rows = [...document.querySelectorAll('li.step .row')]; \
         const two = rows.find(r => r.querySelector('.lt').textContent === 'two'); \
         return two.querySelector('a.ln').getAttribute('href');",
    );
    let anchor = anchor.as_str().unwrap().to_owned();
    assert!(
        anchor.starts_with("#s") && anchor.ends_with("-L2"),
        "{anchor}"
    );
    browser.goto(&format!("{page}{anchor}"));
    browser.wait_until("the line marked", Duration::from_secs(30), |b| {
        b.script(
            "const row = document.querySelector('.row.target'); \
             if (!row) return false; const r = row.getBoundingClientRect(); \
             return row.textContent.endsWith('two') && r.top >= 0 && r.bottom <= innerHeight;",
        ) == serde_json::json!(true)
    });
    browser.screenshot("run-line-anchor");

    // Re-run: a new run of the same commit.
    browser.click(&browser.find("form[action$='/rerun'] button"));
    browser.wait_until("the new run's page", Duration::from_secs(30), |b| {
        b.url() != page && b.url().contains("/-/runs/")
    });
    browser.wait_until("the re-run failed too", Duration::from_secs(180), |b| {
        b.texts("#run-state").first().is_some_and(|t| t == "failed")
    });

    // A branch's run is reviewed against main: its page shows the
    // verdict, what the model said (defused) and the comment on the line.
    git_ok(&work, &["checkout", "--quiet", "-b", "topic"]);
    let topic = e2e::commit_files(&work, &[("notes.md", "a note\n")], "a note");
    git_ok(&work, &["push", "--quiet", &url, "topic"]);
    let topic_run = forge.finished_run("acme/runs", &topic);
    e2e::eventually(Duration::from_secs(60), "the branch's review", || {
        let run: RunDetail = forge.get(&format!("/v1/runs/{}", topic_run.id));
        run.branch_review.ok_or(run.run.state)
    });
    browser.goto(&format!("{}/-/runs/{}", forge.url, topic_run.id));
    let verdict = browser.text(&browser.find("#review-verdict"));
    assert!(
        verdict.contains("REQUEST CHANGES") && verdict.contains("against main"),
        "{verdict}"
    );
    let summary = browser.find("#model-summary");
    assert!(browser.text(&summary).contains("Mostly fine."));
    assert_eq!(browser.texts("#model-summary strong"), ["fine"]);
    assert_eq!(
        browser.script("return typeof window.modelRan;"),
        serde_json::json!("undefined")
    );
    assert_eq!(
        browser.script("return document.querySelector('#model-summary a').getAttribute('href');"),
        serde_json::json!("#")
    );
    let comments = browser.texts("#review-comments li");
    assert!(
        comments.len() == 1
            && comments[0].contains("notes.md:1")
            && comments[0].contains("Say why."),
        "{comments:?}"
    );
    browser.screenshot("run-branch-review");
    git_ok(&work, &["checkout", "--quiet", "main"]);

    // Cancel: a slow step is stopped from its page.
    let slow = "[[pipeline.steps]]\nname = \"slow\"\nrun = \"echo started; sleep 600\"\n";
    e2e::commit_files(&work, &[(".forge.toml", slow)], "slow");
    let page = pushed_run_page(&work, &url, &forge);
    browser.goto(&page);
    browser.wait_until("the slow step runs", Duration::from_secs(120), |b| {
        b.script(
            "return [...document.querySelectorAll('li.step pre.log')].some(p => p.textContent.includes('started'));",
        ) == serde_json::json!(true)
    });
    browser.click(&browser.find("#cancel button"));
    browser.wait_until("cancelled", Duration::from_secs(60), |b| {
        b.texts("#run-state")
            .first()
            .is_some_and(|t| t == "cancelled")
    });
    let error = browser.text(&browser.find("#run-error"));
    assert!(error.contains("cancelled by"), "{error}");
    browser.screenshot("run-cancelled");
}
