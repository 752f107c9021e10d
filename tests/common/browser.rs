//! A real headless Chromium for tests of what a person sees: chromedriver on a
//! free port, one WebDriver session through fantoccini, and axe-core (the
//! accessibility rules engine) injected into the page on demand.
//!
//! chromedriver and Chromium come from Debian's packages
//! (`TACTFUL_TEST_CHROMEDRIVER`, else scripts/chromium.sh), axe-core from npm
//! (`TACTFUL_TEST_AXE`, else scripts/axe.sh); without them a test that
//! starts a [`Browser`] fails loudly, with the script's stderr.
//!
//! [`Browser`] is synchronous, like the rest of the harness: it owns a
//! current-thread tokio runtime and blocks on each WebDriver command, so it is
//! used from plain `#[test]` functions (not from inside another runtime).
//!
//! Scripts that WebDriver executes ([`Browser::execute`],
//! [`Browser::axe_violations`]) run even under the strictest
//! Content-Security-Policy (`default-src 'none'`): Chromium does not hold
//! them to the page's policy (even `eval` works from them), while the page's
//! own inline scripts stay blocked. So they can inspect any page, but prove
//! nothing about what its policy allows: only what the page runs by itself does.

use fantoccini::wd::Capabilities;
use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{json, Value};
use std::cell::OnceCell;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpStream;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The browser window's size: a laptop screen, so screenshots show what
/// most people see first. Headless Chromium still reserves room for its
/// (invisible) toolbars: the page's viewport, and so a screenshot, is as
/// wide but 143 pixels lower (1280x857).
const WINDOW_SIZE: (u32, u32) = (1280, 1000);

/// How long chromedriver may take to answer `/status` after it starts: it
/// answers within a second when idle, but a CI machine busy compiling is slower.
const CHROMEDRIVER_START_TIMEOUT: Duration = Duration::from_secs(60);

/// How long closing the session (Chromium quits) may take before the
/// process group is killed anyway.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs chromedriver (`$0`, its arguments after it) as a child of a shell
/// that leads a process group of its own, with a watchdog: when the pipe on
/// the shell's stdin closes because the test process ended, however it ended
/// (a panic, Ctrl-C, a kill), the watchdog kills the whole group, chromedriver
/// and the Chromium it started. The shell exits with chromedriver, so an
/// early exit is seen. (An asynchronous list's stdin is /dev/null unless
/// redirected, hence the copy on fd 3.)
const WATCHDOG: &str = r#"exec 3<&0
"$0" "$@" </dev/null &
driver=$!
{ read -r _ <&3; kill -KILL -$$; } &
wait "$driver""#;

/// The chromedriver binary: `TACTFUL_TEST_CHROMEDRIVER`, else the one
/// scripts/chromium.sh finds or installs (Debian's `chromium-driver`).
pub fn chromedriver() -> PathBuf {
    static CHROMEDRIVER: OnceLock<Result<String, String>> = OnceLock::new();
    PathBuf::from(super::service(&CHROMEDRIVER, "TACTFUL_TEST_CHROMEDRIVER", &["scripts/chromium.sh"]))
}

/// axe-core's browser build (`axe.min.js`): `TACTFUL_TEST_AXE`, else the one
/// scripts/axe.sh fetches (pinned and checked).
pub fn axe_script() -> PathBuf {
    static AXE: OnceLock<Result<String, String>> = OnceLock::new();
    PathBuf::from(super::service(&AXE, "TACTFUL_TEST_AXE", &["scripts/axe.sh"]))
}

/// A headless Chromium driven through WebDriver. Dropping it ends the session
/// (Chromium quits) and kills chromedriver's process group, so no browser
/// outlives its test.
pub struct Browser {
    /// Runs fantoccini's futures; every method blocks on one.
    runtime: tokio::runtime::Runtime,
    /// The WebDriver session; `None` only while being dropped.
    client: Option<Client>,
    /// The shell of [`WATCHDOG`] running chromedriver: the leader of their
    /// process group (Chromium's too), its stdin the pipe whose end stops them.
    chromedriver: Child,
    /// This browser's own folder, removed on drop: chromedriver's output
    /// (`chromedriver.log`), Chromium's profile (`profile/`) and temporary
    /// files (`tmp/`), which neither of them removes when killed. (Left in
    /// the temp dir only when the test process itself is killed.)
    dir: PathBuf,
    /// axe.min.js, read on the first [`Browser::axe_violations`].
    axe_source: OnceCell<String>,
}

impl Browser {
    /// Starts chromedriver on a free port and opens a headless Chromium whose
    /// preferred language is `language` (a BCP 47 tag such as `nl` or
    /// `en-GB`): the `Accept-Language` header it sends and
    /// `navigator.language`, as a visitor with that browser setting has them.
    pub fn start(language: &str) -> Self {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let port = super::free_port();
        static STARTS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = STARTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("tactful-browser-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("tmp")).unwrap();
        let log = std::fs::File::create(dir.join("chromedriver.log")).unwrap();
        let chromedriver = Command::new("sh")
            .args(["-c", WATCHDOG])
            .arg(chromedriver())
            .arg(format!("--port={port}"))
            // Chromium's own temporary files (its singleton socket, and the
            // shared memory that --disable-dev-shm-usage moves out of /dev/shm).
            .env("TMPDIR", dir.join("tmp"))
            // A group of its own, with the Chromium it starts, for Drop and
            // the watchdog to kill at once.
            .process_group(0)
            .stdin(Stdio::piped())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|error| panic!("cannot start {}: {error}", chromedriver().display()));
        let mut browser = Self { runtime, client: None, chromedriver, dir, axe_source: OnceCell::new() };
        browser.wait_until_answering(port);

        let (width, height) = WINDOW_SIZE;
        let options = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "args": [
                    // The headless mode that is the full browser, not the old
                    // separate implementation.
                    "--headless=new",
                    // Tests run as root in CI, where Chromium's sandbox cannot start.
                    "--no-sandbox",
                    // /dev/shm is small in containers; Chromium then crashes on
                    // large pages instead of falling back to /tmp.
                    "--disable-dev-shm-usage",
                    format!("--window-size={width},{height}"),
                    format!("--lang={language}"),
                    // A profile of our own, where Drop removes it (chromedriver
                    // makes one in /tmp and leaves it behind when killed).
                    format!("--user-data-dir={}", browser.dir.join("profile").display()),
                ],
                // What the browser's language setting writes: the languages it
                // sends in Accept-Language, in order.
                "prefs": { "intl.accept_languages": language },
            },
        });
        let Value::Object(capabilities) = options else { unreachable!("a JSON object") };
        let capabilities: Capabilities = capabilities;
        let webdriver = format!("http://127.0.0.1:{port}");
        let client = browser
            .runtime
            .block_on(ClientBuilder::new(HttpConnector::new()).capabilities(capabilities).connect(&webdriver))
            .unwrap_or_else(|error| {
                panic!("chromedriver did not open a Chromium session: {error}; its log:\n{}", browser.log())
            });
        browser.client = Some(client);
        browser
    }

    /// Waits until chromedriver on `port` answers `/status` as ready.
    fn wait_until_answering(&mut self, port: u16) {
        let deadline = Instant::now() + CHROMEDRIVER_START_TIMEOUT;
        loop {
            if status(port).is_some_and(|status| status["value"]["ready"] == json!(true)) {
                return;
            }
            if let Some(status) = self.chromedriver.try_wait().unwrap() {
                panic!("chromedriver exited ({status}) before answering; its log:\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "chromedriver did not answer on port {port} within {CHROMEDRIVER_START_TIMEOUT:?}; its log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// chromedriver's output so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("chromedriver.log")).unwrap_or_default()
    }

    /// The WebDriver session, for what the helpers below do not cover (use
    /// it through [`Browser::block_on`]).
    pub fn client(&self) -> &Client {
        self.client.as_ref().expect("the session is open until the browser is dropped")
    }

    /// Runs a future on the browser's runtime, e.g. one of [`Browser::client`]'s commands.
    pub fn block_on<F: std::future::Future>(&self, future: F) -> F::Output {
        self.runtime.block_on(future)
    }

    /// Opens `url` and waits until it has loaded (the `load` event).
    pub fn goto(&self, url: &str) {
        self.block_on(self.client().goto(url)).unwrap_or_else(|error| panic!("cannot open {url}: {error}"));
    }

    /// The rendered text of the first element matching the CSS selector
    /// `selector` (what a person reads: hidden text is left out).
    pub fn text(&self, selector: &str) -> String {
        let element = self.find(selector);
        self.block_on(element.text()).unwrap_or_else(|error| panic!("cannot read the text of {selector}: {error}"))
    }

    /// Clicks the first element matching the CSS selector `selector`, as a
    /// person would (it must be visible and not covered).
    pub fn click(&self, selector: &str) {
        let element = self.find(selector);
        self.block_on(element.click()).unwrap_or_else(|error| panic!("cannot click {selector}: {error}"));
    }

    /// The first element matching the CSS selector `selector`, waiting for
    /// it while the page is still being built (fantoccini's default wait).
    pub fn find(&self, selector: &str) -> fantoccini::elements::Element {
        self.block_on(self.client().wait().for_element(Locator::Css(selector)))
            .unwrap_or_else(|error| panic!("no element matches {selector}: {error}"))
    }

    /// Runs `script` (a function body; `arguments` holds `args`) in the page
    /// and returns what it returns.
    pub fn execute(&self, script: &str, args: Vec<Value>) -> Value {
        self.block_on(self.client().execute(script, args))
            .unwrap_or_else(|error| panic!("the script failed: {error}\n{script}"))
    }

    /// Saves a PNG of the window (the viewport) to `path`, creating its folder.
    pub fn screenshot(&self, path: &Path) {
        let png = self.block_on(self.client().screenshot()).unwrap_or_else(|error| panic!("no screenshot: {error}"));
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::write(path, png).unwrap_or_else(|error| panic!("cannot write {}: {error}", path.display()));
    }

    /// Runs axe-core's rules on the whole page and returns its violations,
    /// one line each: the rule id, what it asks for, and the CSS selectors
    /// of the offending elements (inside a frame or shadow root: the path
    /// to it, joined by `>>`), e.g. `image-alt: Images must have alternative
    /// text [img]`. Empty when the page passes. axe is injected into each
    /// page it checks (navigation forgets it).
    pub fn axe_violations(&self) -> Vec<String> {
        let source = self.axe_source.get_or_init(|| {
            let path = axe_script();
            std::fs::read_to_string(&path).unwrap_or_else(|error| panic!("cannot read {}: {error}", path.display()))
        });
        // axe.min.js sets window.axe when run as a function body.
        let inject = format!("if (!window.axe) {{\n{source}\n}}\nreturn typeof window.axe.run;");
        let injected = self.execute(&inject, Vec::new());
        assert_eq!(injected, json!("function"), "axe-core did not load into the page");
        // The last argument of an async script is the callback that returns its result.
        let run = r#"
            const done = arguments[arguments.length - 1];
            axe.run(document).then(
                (results) => done({ violations: results.violations.map((violation) => ({
                    id: violation.id,
                    help: violation.help,
                    targets: violation.nodes.map((node) => node.target.flat(Infinity).join(" >> ")),
                })) }),
                (error) => done({ error: String(error) }),
            );
        "#;
        let results = self
            .block_on(self.client().execute_async(run, Vec::new()))
            .unwrap_or_else(|error| panic!("axe.run did not finish: {error}"));
        if let Some(error) = results.get("error") {
            panic!("axe.run failed: {error}");
        }
        let violations = results["violations"].as_array().expect("axe.run returns its violations");
        violations
            .iter()
            .map(|violation| {
                let targets: Vec<&str> =
                    violation["targets"].as_array().unwrap().iter().map(|target| target.as_str().unwrap()).collect();
                format!(
                    "{}: {} [{}]",
                    violation["id"].as_str().unwrap(),
                    violation["help"].as_str().unwrap(),
                    targets.join(", ")
                )
            })
            .collect()
    }
}

/// chromedriver's answer to `GET /status` on `port`, `None` while it does
/// not answer. Plain HTTP/1.1 by hand (chromedriver refuses the harness's
/// HTTP/1.0 [`super::http`], and keeps the connection open after its
/// answer, so the body is read by its Content-Length).
fn status(port: u16) -> Option<Value> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(stream, "GET /status HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n").ok()?;
    let mut reader = BufReader::new(stream);
    let mut content_length = None;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).ok()?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                content_length = value.trim().parse().ok();
            }
        }
    }
    let mut body = vec![0; content_length?];
    reader.read_exact(&mut body).ok()?;
    serde_json::from_slice(&body).ok()
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Ends the session, so Chromium quits; bounded, as a hung browser is
        // killed below anyway.
        if let Some(client) = self.client.take() {
            let _ = self.runtime.block_on(async { tokio::time::timeout(CLOSE_TIMEOUT, client.close()).await });
        }
        // Kills chromedriver's process group (what the watchdog would do when
        // the test process ends), so nothing is left when the test goes on.
        let group = format!("-{}", self.chromedriver.id());
        let _ = Command::new("kill").args(["-KILL", "--", &group]).stderr(Stdio::null()).status();
        let _ = self.chromedriver.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
