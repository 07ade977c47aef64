//! A small W3C WebDriver client for the web UI's browser tests: it starts
//! Debian's `chromedriver` with headless `chromium` and speaks the
//! protocol's JSON over HTTP (new session, navigate, find, click, type,
//! read, run a script, screenshot). A few calls are all the tests need, so
//! this avoids an async WebDriver crate and its runtime.
//!
//! When Chromium cannot start, [`Browser::start`] panics with the reason:
//! a browser test never passes without a browser.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{Value, json};

/// The key WebDriver sends for Enter.
pub const ENTER: &str = "\u{E007}";

/// A headless Chromium driven over WebDriver; ends both when dropped.
pub struct Browser {
    driver: Child,
    base: String,
    client: reqwest::blocking::Client,
    screenshots: PathBuf,
}

/// An element found on the page.
#[derive(Debug, Clone)]
pub struct Element(String);

impl Browser {
    /// Starts chromedriver and a headless Chromium (1280 x 900, or a phone's
    /// 390 x 844 when `phone`), saving screenshots under `screenshots`.
    pub fn start(screenshots: &Path) -> Browser {
        let chromium = ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .expect(
                "no chromium: run scripts/setup-host.sh (installs chromium and chromium-driver)",
            );
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver does not start: run scripts/setup-host.sh (chromium-driver)");
        let client = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .expect("HTTP client");
        let base = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        while client.get(format!("{base}/status")).send().is_err() {
            assert!(
                Instant::now() < deadline,
                "chromedriver did not answer within 20 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let capabilities = json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1280,900"],
            },
        } } });
        let answer: Value = client
            .post(format!("{base}/session"))
            .json(&capabilities)
            .send()
            .and_then(|r| r.json())
            .expect("chromedriver answers a new session");
        let Some(session) = answer["value"]["sessionId"].as_str() else {
            panic!("Chromium could not start under chromedriver: {answer}");
        };
        std::fs::create_dir_all(screenshots).expect("screenshot directory");
        Browser {
            driver,
            base: format!("{base}/session/{session}"),
            client,
            screenshots: screenshots.to_owned(),
        }
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut request = self.client.request(method, format!("{}{path}", self.base));
        request = request.json(&body.unwrap_or_else(|| json!({})));
        let answer: Value = request
            .send()
            .and_then(|r| r.json())
            .unwrap_or_else(|e| panic!("WebDriver {path}: {e}"));
        if let Some(error) = answer["value"]["error"].as_str() {
            panic!(
                "WebDriver {path}: {error}: {}",
                answer["value"]["message"].as_str().unwrap_or_default()
            );
        }
        answer["value"].clone()
    }

    pub fn goto(&self, url: &str) {
        self.call("POST", "/url", Some(json!({ "url": url })));
    }

    pub fn url(&self) -> String {
        self.call("GET", "/url", None)
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// Sets the window's size (e.g. a phone's 390 x 844).
    pub fn resize(&self, width: u32, height: u32) {
        self.call(
            "POST",
            "/window/rect",
            Some(json!({ "width": width, "height": height })),
        );
    }

    /// Every element matching a CSS selector.
    pub fn all(&self, css: &str) -> Vec<Element> {
        let found = self.call(
            "POST",
            "/elements",
            Some(json!({ "using": "css selector", "value": css })),
        );
        found
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e.as_object()?.values().next()?.as_str().map(str::to_owned))
            .map(Element)
            .collect()
    }

    /// The first element matching `css`, waiting up to `within` for it.
    pub fn wait_for(&self, css: &str, within: Duration) -> Element {
        let deadline = Instant::now() + within;
        loop {
            if let Some(element) = self.all(css).into_iter().next() {
                return element;
            }
            assert!(
                Instant::now() < deadline,
                "{css:?} did not appear within {within:?} on {}",
                self.url()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn find(&self, css: &str) -> Element {
        self.wait_for(css, Duration::from_secs(5))
    }

    pub fn click(&self, element: &Element) {
        self.call("POST", &format!("/element/{}/click", element.0), None);
    }

    pub fn type_into(&self, element: &Element, text: &str) {
        self.call(
            "POST",
            &format!("/element/{}/value", element.0),
            Some(json!({ "text": text })),
        );
    }

    pub fn clear(&self, element: &Element) {
        self.call("POST", &format!("/element/{}/clear", element.0), None);
    }

    /// The element's rendered text.
    pub fn text(&self, element: &Element) -> String {
        self.call("GET", &format!("/element/{}/text", element.0), None)
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// The rendered text of every element matching a CSS selector, read
    /// in one step in the page: a page that re-renders meanwhile (a
    /// streamed log, a terminal) cannot leave a stale reference.
    pub fn texts(&self, css: &str) -> Vec<String> {
        let found = self.call(
            "POST",
            "/execute/sync",
            Some(json!({
                "script": "return [...document.querySelectorAll(arguments[0])].map(e => e.innerText);",
                "args": [css],
            })),
        );
        found
            .as_array()
            .into_iter()
            .flatten()
            .map(|t| t.as_str().unwrap_or_default().to_owned())
            .collect()
    }

    pub fn attribute(&self, element: &Element, name: &str) -> Option<String> {
        self.call(
            "GET",
            &format!("/element/{}/attribute/{name}", element.0),
            None,
        )
        .as_str()
        .map(str::to_owned)
    }

    /// Runs `script` (a function body) in the page and returns its value.
    pub fn script(&self, script: &str) -> Value {
        self.call(
            "POST",
            "/execute/sync",
            Some(json!({ "script": script, "args": [] })),
        )
    }

    /// Waits until `check` holds, polling every 100 ms.
    pub fn wait_until(&self, what: &str, within: Duration, mut check: impl FnMut(&Self) -> bool) {
        let deadline = Instant::now() + within;
        while !check(self) {
            if Instant::now() >= deadline {
                let shot = self.screenshot("failed");
                let page = self.script("return document.body ? document.body.innerText : '';");
                panic!(
                    "{what}: not within {within:?} on {} (screenshot {}); the page says:\n{}",
                    self.url(),
                    shot.display(),
                    page.as_str().unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A cookie of the current page, with its attributes (`value`,
    /// `httpOnly`, `sameSite`, ...), HttpOnly ones included.
    pub fn cookie(&self, name: &str) -> Value {
        self.call("GET", &format!("/cookie/{name}"), None)
    }

    /// Saves a PNG of the viewport as `<name>.png`; returns its path.
    pub fn screenshot(&self, name: &str) -> PathBuf {
        let data = self.call("GET", "/screenshot", None);
        let png = base64::engine::general_purpose::STANDARD
            .decode(data.as_str().unwrap_or_default())
            .expect("the screenshot is base64");
        assert!(png.starts_with(b"\x89PNG"), "the screenshot is not a PNG");
        let path = self.screenshots.join(format!("{name}.png"));
        std::fs::write(&path, png).expect("writing the screenshot");
        path
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.client.delete(&self.base).send();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
