//! The privacy center (README, "Privacy center") on a real `tactful run`
//! against the test broker: links signed by Python's `hmac` (as a
//! company's backend would sign them) open the page; forged, expired and
//! other users' links are refused alike; a change needs the CSRF token,
//! is written to the consent topic as a `ConsentChange` that fastavro
//! decodes, and shows on the page only once the pipeline applied it; a
//! link is rate limited; and with two instances, each answers for the
//! other's users. The last test is a person's visit in headless Chromium
//! (WebDriver): reading a reason, switching location off with the
//! keyboard, seeing `near_store` and the location data go, axe-core's
//! accessibility rules on every page, screenshots in English and Dutch
//! (target/test-artifacts/privacy-center-{en,nl}.png).

mod common;

use common::browser::Browser;
use common::{
    avro, browse, consent, free_port, interop_python, location, now_ms, read_with_kcat, to_json, try_http,
    wait_processed, Pipeline, PipelineOptions, Producer, Topics, EVERYTHING,
};
use std::process::Command;
use std::time::{Duration, Instant};

/// The signing secret of the tests' privacy centers.
const SECRET: &str = "test-secret-of-the-privacy-center-0123456789";
/// Where `store_berlin_mitte` of the default segments is.
const STORE: (f64, f64) = (52.5246, 13.4020);

/// The query of a link for `user` until `expires`, signed by Python's
/// standard library, the way the README tells a backend to sign it.
fn signed_query(user: &str, expires: i64) -> String {
    let script = "import hashlib, hmac, sys, urllib.parse\n\
                  user, expires, secret = sys.argv[1], sys.argv[2], sys.argv[3]\n\
                  sig = hmac.new(secret.encode(), f'{user}\\n{expires}'.encode(), hashlib.sha256).hexdigest()\n\
                  print(urllib.parse.urlencode({'user': user, 'expires': expires, 'sig': sig}))";
    let output =
        Command::new(interop_python()).args(["-c", script, user, &expires.to_string(), SECRET]).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
}

/// An hour from now, in Unix seconds.
fn in_an_hour() -> i64 {
    now_ms() / 1_000 + 3_600
}

/// The `[privacy_center]` table of an instance listening on `port`.
fn privacy_center_table(port: u16, peers: &[u16], requests_per_minute: u32) -> String {
    let peers: Vec<String> = peers.iter().map(|port| format!("\"http://127.0.0.1:{port}\"")).collect();
    format!(
        "[privacy_center]\nlisten = \"127.0.0.1:{port}\"\nlink_secret = \"${{PRIVACY_CENTER_SECRET}}\"\n\
         peers = [{}]\nrequests_per_minute = {requests_per_minute}\n",
        peers.join(", ")
    )
}

fn options(port: u16, peers: &[u16], requests_per_minute: u32) -> PipelineOptions {
    PipelineOptions::default()
        .extra_tables(&privacy_center_table(port, peers, requests_per_minute))
        .environment("PRIVACY_CENTER_SECRET", SECRET)
}

/// A GET of `path` on the page's port: (status, head, body).
fn get(port: u16, path: &str, headers: &[&str]) -> (u16, String, String) {
    try_http(port, "GET", path, headers).unwrap_or_else(|error| panic!("GET {path}: {error}"))
}

/// A form POST on loopback: (status, head, body).
fn post(port: u16, path: &str, form: &str, cookie: Option<&str>) -> (u16, String, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let cookie = cookie.map(|cookie| format!("Cookie: {cookie}\r\n")).unwrap_or_default();
    write!(
        stream,
        "POST {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Type: application/x-www-form-urlencoded\r\n\
         Content-Length: {}\r\n{cookie}\r\n{form}",
        form.len()
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response.split_whitespace().nth(1).unwrap().parse().unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    (status, head.to_owned(), body.to_owned())
}

/// The value of header `name` in a response head.
fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.eq_ignore_ascii_case(name).then(|| value.trim())
    })
}

/// The `tactful_csrf=…` pair the page set, and the token in its forms.
fn csrf(head: &str, body: &str) -> (String, String) {
    let cookie = header(head, "set-cookie").expect("the page sets its CSRF cookie");
    let pair = cookie.split(';').next().unwrap().to_owned();
    let field = body.split("name=\"csrf\" value=\"").nth(1).unwrap().split('"').next().unwrap().to_owned();
    (pair, field)
}

/// GETs `path` until the body satisfies `done` (the pipeline applies a
/// change within a batch or two); the last body.
fn get_until(port: u16, path: &str, cookie: &str, done: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, _, body) = get(port, path, &[&format!("Cookie: {cookie}")]);
        assert_eq!(status, 200, "{body}");
        if done(&body) {
            return body;
        }
        assert!(Instant::now() < deadline, "the page never showed the change:\n{body}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Produces a consenting user near the store, with a browse, and waits
/// until the pipeline has processed them.
fn shopper(topics: &Topics, user: &str) {
    let producer = Producer::new();
    let t = now_ms();
    // Avro, as the page's own records are: the consent topic stays readable by Avro consumers.
    producer.send_keyed(
        &topics.consent,
        user,
        &avro("consent_change.avsc", &consent(user, t - 60_000, EVERYTHING, "FULL")),
    );
    producer.send_keyed(&topics.browse, user, &to_json(&browse(user, t - 1_000, "running")));
    producer.send_keyed(&topics.location, user, &to_json(&location(user, t, STORE.0, STORE.1)));
    producer.flush();
    wait_processed(topics);
}

#[test]
fn a_signed_link_shows_the_page_and_any_other_link_is_refused_alike() {
    let topics = Topics::create("privacy-links");
    let port = free_port();
    let pipeline = Pipeline::start(&topics, options(port, &[], 1_000));
    shopper(&topics, "u-shopper");

    let expires = in_an_hour();
    let (status, head, body) = get(port, &format!("/?{}", signed_query("u-shopper", expires)), &[]);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("data-segment=\"near_store\""), "{body}");
    assert!(body.contains("Was within 500 m of one of our stores in the last hour."), "{body}");
    assert!(body.contains("data-kind=\"location\">Your precise location"), "{body}");
    assert!(body.contains("Recorded by test-cmp on"), "{body}");
    let policy = header(&head, "content-security-policy").unwrap();
    assert!(policy.starts_with("default-src 'none'; style-src 'self';"), "{policy}");
    assert_eq!(header(&head, "referrer-policy"), Some("no-referrer"));
    // Nothing of the admin endpoint is served here.
    for path in ["/metrics", "/v1/profiles/u-shopper", "/healthz"] {
        let (status, head, _) = get(port, path, &[]);
        assert_eq!(status, 404, "{path}");
        assert!(header(&head, "content-security-policy").is_some(), "{path}: {head}");
    }

    // Forged, expired, and another user's signature: one refusal, whoever asks.
    let good = signed_query("u-shopper", expires);
    let sig = good.split("sig=").nth(1).unwrap();
    // The last hex digit changed to another (a signature may end in 0).
    let other_digit = if sig.ends_with('0') { '1' } else { '0' };
    let forged = good.replace(sig, &format!("{}{other_digit}", &sig[..63]));
    let expired = signed_query("u-shopper", now_ms() / 1_000 - 1);
    let other_user = format!("user=u-other&expires={expires}&sig={sig}");
    let unknown_user = signed_query("u-nobody", expires).replace("u-nobody", "u-shopper");
    let mut refusals = Vec::new();
    for query in [forged, expired, other_user, unknown_user, "user=u-shopper".to_owned()] {
        let (status, head, body) = get(port, &format!("/?{query}"), &[]);
        assert_eq!(status, 403, "{query}: {body}");
        assert!(header(&head, "set-cookie").is_none());
        assert!(!body.contains("u-shopper") && !body.contains("near_store"), "{body}");
        refusals.push(body);
    }
    assert!(refusals.windows(2).all(|pair| pair[0] == pair[1]), "the refusals differ: {refusals:#?}");
    assert!(refusals[0].contains("This link is not valid or has expired."));

    // Dutch, from the browser's language; English when it asks for neither.
    let (_, _, dutch) = get(port, &format!("/?{good}"), &["Accept-Language: nl-NL,nl;q=0.9,en;q=0.5"]);
    assert!(dutch.contains("<html lang=\"nl\">") && dutch.contains("Waarom zie ik dit?"), "{dutch}");
    let (_, _, english) = get(port, &format!("/?{good}"), &["Accept-Language: fr-FR"]);
    assert!(english.contains("<html lang=\"en\">") && english.contains("Why am I seeing this?"));

    // No user id in the log.
    let log_path = pipeline.log_path.clone();
    let _ = pipeline.stop();
    let log = std::fs::read_to_string(log_path).unwrap();
    assert!(!log.contains("u-shopper"), "the log names the user:\n{log}");
}

#[test]
fn a_saved_choice_is_a_consent_record_and_shows_once_the_pipeline_applied_it() {
    let topics = Topics::create("privacy-choices");
    let port = free_port();
    let _pipeline = Pipeline::start(&topics, options(port, &[], 1_000));
    shopper(&topics, "u-walker");
    let query = signed_query("u-walker", in_an_hour());
    let (_, head, body) = get(port, &format!("/?{query}"), &[]);
    let (cookie, token) = csrf(&head, &body);
    let cookie_header = format!("Cookie: {cookie}");

    // Location off; everything else as it was.
    let kept = ["personalization", "measurement", "web", "email", "push", "ads"];
    let granted: String = kept.iter().map(|purpose| format!("&granted={purpose}")).collect();
    let form = format!("{query}&csrf={token}&lang=en&level=full{granted}");
    // Without the cookie, or with another token: refused, nothing written.
    assert_eq!(post(port, "/choices", &form, None).0, 403);
    let wrong = form.replace(&token, &"0".repeat(32));
    assert_eq!(post(port, "/choices", &wrong, Some(&cookie)).0, 403);
    let (status, head, body) = post(port, "/choices", &form, Some(&cookie));
    assert_eq!(status, 303, "{body}");
    let page = header(&head, "location").unwrap().to_owned();
    assert!(page.starts_with("/?user=u-walker&") && page.contains("&saved="), "{page}");

    let applied = get_until(port, &page, &cookie, |body| body.contains("Your choices are in force"));
    assert!(!applied.contains("near_store"), "{applied}");
    assert!(!applied.contains("data-kind=\"location\""), "{applied}");
    assert!(applied.contains("We do not use your location."), "{applied}");
    assert!(applied.contains("data-kind=\"browsing\""), "{applied}");
    assert!(applied.contains("Recorded by privacy-center on"), "{applied}");
    let (_, _, again) = get(port, &page, &[&cookie_header]);
    assert!(again.contains("id=\"granted-location\" value=\"location\">"), "the switch shows off: {again}");

    // On the consent topic, as fastavro reads it: a full snapshot.
    let records = read_with_kcat(&topics.consent, None);
    let last = records.last().unwrap();
    assert_eq!(last["key"], "u-walker");
    assert_eq!(last["encoding"], "single-object");
    let value = &last["value"];
    assert_eq!(value["source"], "privacy-center");
    assert_eq!(value["level"], "FULL");
    assert_eq!(value["granted"], serde_json::json!(kept));
    assert!(value["ts"].as_i64().unwrap() > records[0]["value"]["ts"].as_i64().unwrap());

    // Delete everything: the receipt's progress, then nothing held.
    let (status, head, _) = post(port, "/erase", &format!("{query}&csrf={token}&lang=en"), Some(&cookie));
    assert_eq!(status, 303);
    let receipt_page = header(&head, "location").unwrap().to_owned();
    assert!(receipt_page.contains("&receipt="), "{receipt_page}");
    let erased =
        get_until(port, &receipt_page, &cookie, |body| body.contains("Everything about you has been deleted."));
    assert!(erased.contains("id=\"consent-none\"") && erased.contains("id=\"held-none\""), "{erased}");
    let records = read_with_kcat(&topics.consent, None);
    assert_eq!(records.last().unwrap()["key"], "u-walker");
    assert!(records.last().unwrap()["value"].is_null(), "a tombstone: {:?}", records.last());
}

#[test]
fn a_link_is_refused_after_its_requests_per_minute() {
    let topics = Topics::create("privacy-rate");
    let port = free_port();
    let _pipeline = Pipeline::start(&topics, options(port, &[], 5));
    let query = signed_query("u-busy", in_an_hour());
    let statuses: Vec<u16> = (0..7).map(|_| get(port, &format!("/?{query}"), &[]).0).collect();
    // Two of the seven may fall in the next minute; then the count starts over.
    let refused = statuses.iter().filter(|status| **status == 429).count();
    assert!(statuses.iter().all(|status| [200, 429].contains(status)), "{statuses:?}");
    assert!(refused >= 1, "{statuses:?}");
    // Another link of the same user is counted apart.
    let other = signed_query("u-busy", in_an_hour() + 1);
    assert_eq!(get(port, &format!("/?{other}"), &[]).0, 200);
}

#[test]
fn with_two_instances_each_answers_for_the_users_of_the_other() {
    let topics = Topics::create_with("privacy-peers", 2, 2);
    let (port_a, port_b) = (free_port(), free_port());
    let a = Pipeline::spawn(&topics, options(port_a, &[port_b], 1_000).instance("a"));
    let b = Pipeline::spawn(&topics, options(port_b, &[port_a], 1_000).instance("b"));
    let (_a, _b) = (a.ready(), b.ready());
    // Enough users that both partitions (so both instances) hold some.
    let users: Vec<String> = (0..8).map(|n| format!("u-peer-{n}")).collect();
    let producer = Producer::new();
    let t = now_ms();
    for user in &users {
        producer.send_keyed(&topics.consent, user, &to_json(&consent(user, t - 60_000, EVERYTHING, "FULL")));
        producer.send_keyed(&topics.location, user, &to_json(&location(user, t, STORE.0, STORE.1)));
    }
    producer.flush();
    wait_processed(&topics);
    for user in &users {
        let query = signed_query(user, in_an_hour());
        for port in [port_a, port_b] {
            let (status, _, body) = get(port, &format!("/?{query}"), &[]);
            assert_eq!(status, 200, "{user} on {port}: {body}");
            assert!(body.contains("data-segment=\"near_store\""), "{user} on {port}: {body}");
        }
    }
}

/// What `script` returns in the page, or `None` while the page is being
/// replaced (its meta refresh reloads it every two seconds).
fn in_page(browser: &Browser, script: &str) -> Option<serde_json::Value> {
    browser.block_on(browser.client().execute(script, Vec::new())).ok()
}

/// Saves a PNG of the whole page (the window made as tall as the page).
fn screenshot_whole_page(browser: &Browser, path: &std::path::Path) {
    let height = in_page(browser, "return document.documentElement.scrollHeight").and_then(|height| height.as_u64());
    let height = u32::try_from(height.expect("the page's height")).unwrap();
    // The window's toolbars (invisible, headless) take 143 pixels of it.
    browser.block_on(browser.client().set_window_size(1280, height + 143)).unwrap();
    browser.screenshot(path);
}

/// Waits (reloads included) until `script` returns true in the page.
fn wait_in_page(browser: &Browser, script: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while in_page(browser, script) != Some(serde_json::json!(true)) {
        assert!(Instant::now() < deadline, "the page never satisfied {script}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn in_a_browser_a_person_reads_why_switches_location_off_and_sees_it_gone() {
    let topics = Topics::create("privacy-browser");
    let port = free_port();
    let _pipeline = Pipeline::start(&topics, options(port, &[], 1_000));
    shopper(&topics, "u-visitor");
    let url = format!("http://127.0.0.1:{port}/?{}", signed_query("u-visitor", in_an_hour()));
    let artifacts = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-artifacts");

    let browser = Browser::start("en-GB");
    browser.goto(&url);
    assert_eq!(browser.text("h1"), "Your data and your choices");
    assert_eq!(
        browser.text("li[data-segment=near_store] .reason"),
        "Was within 500 m of one of our stores in the last hour."
    );
    assert!(browser.text("li[data-segment=near_store] .meta").ends_with("Used in push notifications."));
    assert!(browser
        .text("li[data-kind=location]")
        .starts_with("Your precise location, kept for the last hour; since "));
    assert_eq!(browser.axe_violations(), Vec::<String>::new(), "axe-core on the page");
    screenshot_whole_page(&browser, &artifacts.join("privacy-center-en.png"));

    // By keyboard alone: space toggles the focused switch, Enter submits.
    let location = browser.find("#granted-location");
    browser.block_on(location.send_keys(" ")).unwrap();
    assert_eq!(in_page(&browser, "return document.getElementById('granted-location').checked"), Some(false.into()));
    let save = browser.find("#save");
    browser.block_on(save.send_keys("\u{E007}")).unwrap();
    wait_in_page(
        &browser,
        "const n = document.getElementById('notice'); return !!n && n.innerText.includes('Your choices are in force');",
    );
    let gone = "return document.querySelectorAll('[data-segment=near_store], [data-kind=location]').length";
    assert_eq!(in_page(&browser, gone), Some(0.into()));
    assert!(browser.text("#not-done-list").contains("We do not use your location."));
    assert!(browser.text("li[data-kind=browsing]").starts_with("Pages you viewed"));
    assert_eq!(in_page(&browser, "return document.getElementById('granted-location').checked"), Some(false.into()));
    assert_eq!(browser.axe_violations(), Vec::<String>::new(), "axe-core after saving");

    // Forged and expired links: the same refusal, and nothing else.
    for bad in [url.replace("sig=", "sig=0"), format!("http://127.0.0.1:{port}/?{}", signed_query("u-visitor", 1))] {
        browser.goto(&bad);
        assert_eq!(browser.text("h1"), "This link does not work");
        assert_eq!(browser.text("main"), "This link is not valid or has expired. Ask for a new one where you got it.");
    }
    drop(browser);

    // A Dutch browser gets the page in Dutch.
    let browser = Browser::start("nl");
    browser.goto(&url);
    assert_eq!(in_page(&browser, "return document.documentElement.lang"), Some("nl".into()));
    assert_eq!(browser.text("h1"), "Uw gegevens en uw keuzes");
    assert!(browser.text("#not-done-list").contains("We gebruiken uw locatie niet."));
    assert_eq!(browser.axe_violations(), Vec::<String>::new(), "axe-core on the Dutch page");
    screenshot_whole_page(&browser, &artifacts.join("privacy-center-nl.png"));
}

#[test]
fn the_demo_prints_a_link_to_a_synthetic_users_privacy_center_and_applies_choices_there() {
    use std::io::BufRead;
    let port = free_port();
    let mut demo = Command::new(env!("CARGO_BIN_EXE_tactful"))
        .args(["demo", "--users", "500", "--events", "20000", "--privacy-center", &format!("127.0.0.1:{port}")])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = std::io::BufReader::new(demo.stdout.take().unwrap());
    let (sender, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || stdout.lines().map_while(Result::ok).for_each(|line| drop(sender.send(line))));
    let prefix = format!("  http://127.0.0.1:{port}/?");
    let link = loop {
        let line = lines.recv_timeout(Duration::from_secs(120)).expect("the demo prints a link");
        if let Some(query) = line.strip_prefix(&prefix) {
            break format!("/?{query}");
        }
    };
    let (status, head, body) = get(port, &link, &[]);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("<li class=\"segment\" data-segment="), "a demo user with memberships: {body}");
    assert!(body.contains("Recorded by synthetic-cmp on"), "{body}");

    // No personalization at all: applied to the demo's core at once.
    let (cookie, token) = csrf(&head, &body);
    let query = link.trim_start_matches("/?");
    let (status, head, _) = post(port, "/choices", &format!("{query}&csrf={token}&level=none"), Some(&cookie));
    assert_eq!(status, 303);
    let page = header(&head, "location").unwrap();
    let (_, _, after) = get(port, page, &[&format!("Cookie: {cookie}")]);
    assert!(after.contains("Your choices are in force"), "{after}");
    assert!(after.contains("id=\"segments-none\"") && after.contains("id=\"held-none\""), "{after}");
    assert!(after.contains("Recorded by privacy-center on"), "{after}");

    Command::new("kill").args(["-INT", &demo.id().to_string()]).status().unwrap();
    assert!(demo.wait().unwrap().success(), "Ctrl-C stops the demo cleanly");
}
