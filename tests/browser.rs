//! The browser tooling that tests of what a person sees stand on: a real
//! headless Chromium (tests/common/browser.rs) opens pages served with the
//! strict Content-Security-Policy tactful's pages have, asks for them in the
//! language it was given, reads and clicks them, takes a screenshot, and
//! runs the axe-core accessibility rules on them; and axe proves able to
//! fail, on a page with an image without a text alternative and a field
//! without a label.
//!
//! Chromium and chromedriver come from Debian's packages
//! (scripts/chromium.sh), axe-core from npm (scripts/axe.sh); without them
//! these tests fail.

mod common;

use common::browser::Browser;
use common::repo_path;
use serde_json::json;
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// The policy of tactful's pages, at its strictest: nothing but the
/// document itself, so not even an inline script runs.
const CSP: &str = "default-src 'none'";

/// A page that passes axe: a language, a title, a main landmark holding all
/// content, one top-level heading. Its inline script would rewrite the
/// heading if the CSP let it run.
const ACCESSIBLE_PAGE: &str = r#"<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>Tactful browser check</title></head>
<body>
<main>
<h1>Segments, with tact</h1>
<p><a id="defects" href="/defects">A page with defects</a></p>
<script>document.querySelector("h1").textContent = "inline script ran";</script>
</main>
</body>
</html>
"#;

/// A page with two defects on purpose: an image without a text
/// alternative and a text field without a label.
const DEFECTIVE_PAGE: &str = r#"<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>Defects on purpose</title></head>
<body>
<main>
<h1>Defects on purpose</h1>
<img src="/segments.png">
<form><input type="text" name="email"></form>
</main>
</body>
</html>
"#;

/// One request the test site received.
#[derive(Clone, Debug)]
struct Request {
    path: String,
    /// Header names in lowercase.
    headers: HashMap<String, String>,
}

/// A tiny HTTP server on a free loopback port: serves the two pages above
/// (anything else is a 404), each response with the strict CSP, and records
/// every request. Its threads end with the test process.
struct TestSite {
    port: u16,
    requests: Arc<Mutex<Vec<Request>>>,
}

impl TestSite {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let recorded = Arc::clone(&requests);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let recorded = Arc::clone(&recorded);
                // A thread per connection: Chromium opens connections ahead of
                // need and may leave one idle, which must not block the next.
                std::thread::spawn(move || serve(stream, &recorded));
            }
        });
        Self { port, requests }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// The requests for `path` so far.
    fn requests_for(&self, path: &str) -> Vec<Request> {
        self.requests.lock().unwrap().iter().filter(|request| request.path == path).cloned().collect()
    }
}

/// Answers the one request of a connection (Connection: close).
fn serve(stream: TcpStream, recorded: &Mutex<Vec<Request>>) {
    let mut reader = BufReader::new(stream);
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
        return; // A connection opened ahead of need and closed unused.
    }
    let path = request_line.split_whitespace().nth(1).unwrap_or("").to_owned();
    let mut headers = HashMap::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line.trim_end().is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_owned());
        }
    }
    recorded.lock().unwrap().push(Request { path: path.clone(), headers });
    let (status, body) = match path.as_str() {
        "/" => ("200 OK", ACCESSIBLE_PAGE),
        "/defects" => ("200 OK", DEFECTIVE_PAGE),
        _ => ("404 Not Found", "not found\n"),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/html; charset=utf-8\r\nContent-Security-Policy: {CSP}\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = reader.into_inner().write_all(response.as_bytes());
}

/// The eight bytes every PNG file starts with.
const PNG_SIGNATURE: [u8; 8] = [0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A];

#[test]
fn a_page_under_a_strict_csp_is_read_shown_checked_and_clicked_in_the_language_asked_for() {
    let site = TestSite::start();
    let browser = Browser::start("nl");
    browser.goto(&site.url("/"));

    // The CSP is in force (the inline script, which runs without it, did not) ...
    assert_eq!(browser.text("h1"), "Segments, with tact");
    // ... and still WebDriver's scripts run in the page.
    assert_eq!(browser.execute("return document.title;", Vec::new()), json!("Tactful browser check"));

    // The browser asked in the language it was given, and says so to scripts too.
    let page_requests = site.requests_for("/");
    assert_eq!(page_requests.len(), 1, "{page_requests:?}");
    assert_eq!(page_requests[0].headers.get("accept-language").map(String::as_str), Some("nl"));
    assert_eq!(browser.execute("return navigator.language;", Vec::new()), json!("nl"));

    let screenshot = PathBuf::from(repo_path("target/test-artifacts/browser-smoke.png"));
    let _ = std::fs::remove_file(&screenshot);
    browser.screenshot(&screenshot);
    let png = std::fs::read(&screenshot).unwrap();
    assert_eq!(png[..8], PNG_SIGNATURE, "{} is a PNG", screenshot.display());
    // The image header's width (the first field of the IHDR chunk that
    // follows the signature): the window's, as asked for.
    assert_eq!(u32::from_be_bytes(png[16..20].try_into().unwrap()), 1280);

    assert_eq!(browser.axe_violations(), Vec::<String>::new());

    browser.click("#defects");
    assert_eq!(browser.text("h1"), "Defects on purpose");
}

#[test]
fn axe_reports_an_image_without_alt_text_and_a_field_without_a_label() {
    let site = TestSite::start();
    let browser = Browser::start("en");
    browser.goto(&site.url("/defects"));

    // Each defect by its rule, with the element that has it.
    assert_eq!(
        browser.axe_violations(),
        ["image-alt: Images must have alternative text [img]", "label: Form elements must have labels [input]"]
    );
}
