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
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok");
        }
    });
    (url, count)
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

    // A webhook with a bad glob shows the API's error and keeps the input.
    let (hook_url, received) = receiver();
    browser.goto(&format!("{}/-/repos/acme/web/webhooks", forge.url));
    browser.type_into(&browser.find("#hook-url"), &hook_url);
    browser.type_into(&browser.find("#hook-branches"), "[bad");
    browser.click(&browser.find("form.webhook button"));
    let error = browser.find("#webhook-error");
    assert!(
        browser.text(&error).contains("glob"),
        "{}",
        browser.text(&error)
    );
    assert_eq!(
        browser
            .attribute(&browser.find("#hook-branches"), "value")
            .unwrap(),
        "[bad"
    );
    browser.screenshot("webhook-bad-glob");
    assert_labelled(&browser);
    let branches = browser.find("#hook-branches");
    browser.clear(&branches);
    browser.type_into(&branches, "main");
    browser.click(&browser.find("form.webhook button"));
    browser.wait_until("webhook page", Duration::from_secs(10), |b| {
        b.texts("h1")
            .first()
            .is_some_and(|h| h.starts_with("Webhook "))
    });
    let hook_page = browser.url();

    // Push with git; the webhook is delivered.
    let temp = tempfile::tempdir().unwrap();
    let work = work_repo(
        temp.path(),
        "web",
        &[
            ("README.md", "# web\n"),
            ("src/lib.rs", "pub fn answer() -> u32 { 42 }\n"),
        ],
    );
    let url = forge.git_url("acme/web", &forge.admin_token);
    git_ok(&work, &["push", "--quiet", &url, "main"]);
    let head = git_ok(&work, &["rev-parse", "HEAD"]);
    browser.wait_until("a delivered delivery", Duration::from_secs(30), |b| {
        b.goto(&hook_page);
        b.all("#delivery-log tr.delivery .badge.ok").len() == 1
    });
    assert_eq!(received.load(Ordering::SeqCst), 1);
    let row = browser.text(&browser.find("#delivery-log tr.delivery"));
    assert!(row.contains("push") && row.contains("200"), "{row}");
    browser.screenshot("webhook-deliveries");
    browser.click(&browser.find("#delivery-log tr.delivery button"));
    // A redelivery is another attempt of the same delivery.
    browser.wait_until("the redelivery", Duration::from_secs(30), |b| {
        b.goto(&hook_page);
        b.texts("#delivery-log tr.delivery td")
            .get(3)
            .is_some_and(|attempts| attempts == "2")
    });
    assert_eq!(received.load(Ordering::SeqCst), 2);

    // The repository page lists the branch with its head commit; the
    // branch page browses the files at that commit.
    browser.goto(&format!("{}/-/repos/acme/web", forge.url));
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
    browser.screenshot("branch-file");

    // GitHub: not configured on this forge, said plainly.
    browser.goto(&format!("{}/-/github", forge.url));
    assert!(browser.text(&browser.find("main")).contains("GitHub"));
    browser.screenshot("github");
    browser.goto(&format!("{}/-/sandboxes", forge.url));
    browser.screenshot("sandboxes-none");

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
    let logs = browser.text(&browser.find("ol.steps"));
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

    // The sandboxes page: fork the branch sandbox; the fork is drawn under it.
    browser.goto(&format!("{}/-/sandboxes", forge.url));
    assert_eq!(browser.all("li.vm").len(), 1);
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
}
