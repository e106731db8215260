//! The page in a real browser: headless Chromium driven through chromedriver's
//! WebDriver API (HTTP + JSON, spoken here over a plain `TcpStream`). Two pages
//! register, see each other online, exchange a group and a private message, a
//! terminal (TCP) user reads and writes in the same chat, a message kept while a
//! page was logged out is shown at its next login, a wrong password gets its
//! sentence, and a page whose server went away reconnects and logs in again. And a
//! page over `https://`, whose WebSocket is then `wss://`, with a certificate made at
//! run time (`common/pki.rs`), chatting with a terminal user.
//!
//! Needs `chromium` and `chromedriver` (Debian: `apt-get install chromium
//! chromium-driver`; `scripts/test.sh` installs them when run as root). Other
//! locations: `CHROMEDRIVER=/path` and `CHROME=/path`.
//!
//! `CHAT_SCREENSHOTS=DIR` keeps screenshots of the page (desktop and phone sizes)
//! in DIR; the README's come from there.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{SeedClient, ServerProc, pki};
use serde_json::{Value, json};

/// WebDriver's key for Enter.
const ENTER: &str = "\u{E007}";
/// How long one browser command (a page load, a wait) may take.
const COMMAND_WAIT: Duration = Duration::from_secs(60);

fn find(var: &str, candidates: &[&str]) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(var) {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for c in candidates {
        let p = Path::new(c);
        if p.is_absolute() && p.exists() {
            return Some(p.to_path_buf());
        }
        for dir in std::env::split_paths(&path) {
            if dir.join(c).exists() {
                return Some(dir.join(c));
            }
        }
    }
    None
}

/// chromedriver on a port of its choosing.
struct Driver {
    child: Child,
    port: u16,
    chrome: PathBuf,
}

impl Driver {
    fn start() -> Driver {
        let missing = "install chromium and its driver (Debian: apt-get install chromium \
                       chromium-driver; scripts/test.sh does it when run as root), or point \
                       CHROMEDRIVER and CHROME at them";
        let driver = find("CHROMEDRIVER", &["/usr/bin/chromedriver", "chromedriver"])
            .unwrap_or_else(|| panic!("chromedriver not found: {missing}"));
        let chrome = find(
            "CHROME",
            &[
                "/usr/bin/chromium",
                "chromium",
                "chromium-browser",
                "google-chrome",
            ],
        )
        .unwrap_or_else(|| panic!("chromium not found: {missing}"));
        let mut child = Command::new(&driver)
            .arg("--port=0")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", driver.display()));
        let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut port = None;
        for line in out.by_ref() {
            let line = line.unwrap();
            if let Some(rest) = line.strip_prefix("ChromeDriver was started successfully on port ")
            {
                port = rest.trim_end_matches('.').parse().ok();
                break;
            }
        }
        let port = port.expect("chromedriver said on which port it listens");
        // The rest of its output is read (and dropped) so that it never blocks on it.
        std::thread::spawn(move || out.for_each(drop));
        Driver {
            child,
            port,
            chrome,
        }
    }

    /// One HTTP request to chromedriver; the JSON answer's `value`.
    fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Value {
        self.try_call(method, path, body)
            .unwrap_or_else(|(err, message)| panic!("{method} {path}: {err}: {message}"))
    }

    /// As [`Driver::call`], with WebDriver's error (its name and message) returned.
    fn try_call(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, (Value, Value)> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).expect("reach chromedriver");
        s.set_read_timeout(Some(COMMAND_WAIT)).unwrap();
        let body = body.map(Value::to_string).unwrap_or_default();
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Type: application/json; \
             charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.port,
            body.len()
        )
        .unwrap();
        // chromedriver keeps the connection open whatever it says: the answer ends
        // where its Content-Length says (or its last chunk).
        let mut all = Vec::new();
        let mut buf = [0u8; 16384];
        let (head, body) = loop {
            let n = s.read(&mut buf).expect("chromedriver's answer");
            assert!(
                n > 0,
                "{method} {path}: chromedriver closed without an answer"
            );
            all.extend_from_slice(&buf[..n]);
            let Some(end) = all.windows(4).position(|w| w == b"\r\n\r\n") else {
                continue;
            };
            let head = String::from_utf8_lossy(&all[..end]).to_ascii_lowercase();
            let body = &all[end + 4..];
            let length = head.lines().find_map(|l| {
                l.strip_prefix("content-length:")
                    .and_then(|v| v.trim().parse::<usize>().ok())
            });
            match length {
                Some(len) if body.len() >= len => break (head, body[..len].to_vec()),
                None if body.ends_with(b"0\r\n\r\n") => break (head, dechunk(body)),
                _ => {}
            }
        };
        let v: Value = serde_json::from_slice(&body)
            .unwrap_or_else(|e| panic!("{method} {path}: not JSON ({e}): {head}"));
        let value = v.get("value").cloned().unwrap_or(Value::Null);
        if let Some(err) = value.get("error") {
            return Err((err.clone(), value["message"].clone()));
        }
        Ok(value)
    }

    fn session(&self) -> Session<'_> {
        self.session_with(&[])
    }

    /// A session whose browser gets `extra` command-line flags.
    fn session_with(&self, extra: &[&str]) -> Session<'_> {
        let mut args = vec![
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--window-size=1100,720",
            "--force-device-scale-factor=1",
        ];
        args.extend_from_slice(extra);
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": self.chrome,
                "args": args,
            },
        }}});
        let v = self.call("POST", "/session", Some(&caps));
        let id = v["sessionId"].as_str().expect("a session id").to_string();
        let s = Session { driver: self, id };
        s.call(
            "POST",
            "timeouts",
            json!({"script": COMMAND_WAIT.as_millis() as u64, "pageLoad": COMMAND_WAIT.as_millis() as u64}),
        );
        s
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = b.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size = std::str::from_utf8(&b[..eol])
            .unwrap()
            .split(';')
            .next()
            .unwrap();
        let n = usize::from_str_radix(size.trim(), 16).unwrap();
        if n == 0 {
            return out;
        }
        out.extend_from_slice(&b[eol + 2..eol + 2 + n]);
        b = &b[eol + 2 + n + 2..];
    }
}

fn base64(s: &str) -> Vec<u8> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => panic!("not base64: {c}"),
    };
    let digits: Vec<u8> = s
        .bytes()
        .filter(|c| !matches!(c, b'=' | b'\n' | b'\r'))
        .map(val)
        .collect();
    let mut out = Vec::with_capacity(digits.len() * 3 / 4);
    for chunk in digits.chunks(4) {
        let mut n = 0u32;
        for (i, d) in chunk.iter().enumerate() {
            n |= (*d as u32) << (18 - 6 * i);
        }
        let bytes = n.to_be_bytes();
        out.extend_from_slice(&bytes[1..chunk.len()]);
    }
    out
}

/// One browser window.
struct Session<'a> {
    driver: &'a Driver,
    id: String,
}

impl Session<'_> {
    fn call(&self, method: &str, what: &str, body: Value) -> Value {
        let path = format!("/session/{}/{what}", self.id);
        let body = (method != "GET").then_some(body);
        self.driver.call(method, &path, body.as_ref())
    }

    fn go(&self, url: &str) {
        self.call("POST", "url", json!({"url": url}));
    }

    fn element(&self, css: &str) -> String {
        let v = self.call(
            "POST",
            "element",
            json!({"using": "css selector", "value": css}),
        );
        v["element-6066-11e4-a52e-4f735466cecf"]
            .as_str()
            .unwrap_or_else(|| panic!("no element {css}"))
            .to_string()
    }

    /// Clicks the element `css` finds. Lists are drawn again when news comes (someone
    /// came online): an element found just before that is gone, and is found again.
    fn click(&self, css: &str) {
        loop {
            let e = self.element(css);
            let path = format!("/session/{}/element/{e}/click", self.id);
            match self.driver.try_call("POST", &path, Some(&json!({}))) {
                Ok(_) => return,
                Err((err, _)) if err == "stale element reference" => continue,
                Err((err, message)) => panic!("POST {path}: {err}: {message}"),
            }
        }
    }

    fn clear(&self, css: &str) {
        let e = self.element(css);
        self.call("POST", &format!("element/{e}/clear"), json!({}));
    }

    fn type_in(&self, css: &str, text: &str) {
        let e = self.element(css);
        self.call("POST", &format!("element/{e}/value"), json!({"text": text}));
    }

    fn js(&self, script: &str) -> Value {
        self.call(
            "POST",
            "execute/sync",
            json!({"script": script, "args": []}),
        )
    }

    fn text(&self, css: &str) -> String {
        let script = format!(
            "const e = document.querySelector({}); return e ? e.textContent : null;",
            json!(css)
        );
        self.js(&script).as_str().unwrap_or_default().to_string()
    }

    /// Waits until the JavaScript expression `cond` is true in the page, watching the
    /// page's changes (no polling); on failure, keeps a screenshot and says where.
    fn wait(&self, what: &str, cond: &str) {
        let script = format!(
            "const done = arguments[arguments.length - 1];
             const check = () => {{ try {{ return !!({cond}); }} catch (e) {{ return false; }} }};
             if (check()) {{ done(true); return; }}
             const obs = new MutationObserver(() => {{
               if (check()) {{ obs.disconnect(); done(true); }}
             }});
             obs.observe(document, {{subtree: true, childList: true, characterData: true, attributes: true}});
             window.addEventListener('resize', () => {{ if (check()) done(true); }});"
        );
        let path = format!("/session/{}/execute/async", self.id);
        let res = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.driver
                .call("POST", &path, Some(&json!({"script": script, "args": []})))
        }));
        if res.is_err() {
            let shot =
                Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("browser-{}.png", self.id));
            std::fs::write(&shot, self.screenshot()).unwrap();
            let status = self.text("#conn");
            panic!(
                "the page never showed {what} ({cond}); status line {status:?}; screenshot in {}",
                shot.display()
            );
        }
    }

    /// Waits until some element matching `css` has `text` in it.
    fn wait_text(&self, css: &str, text: &str) {
        let cond = format!(
            "[...document.querySelectorAll({})].some(e => e.textContent.includes({}))",
            json!(css),
            json!(text)
        );
        self.wait(&format!("{text:?} in {css}"), &cond);
    }

    fn screenshot(&self) -> Vec<u8> {
        base64(
            self.call("GET", "screenshot", Value::Null)
                .as_str()
                .unwrap(),
        )
    }

    fn resize(&self, width: u32, height: u32) {
        self.call(
            "POST",
            "window/rect",
            json!({"width": width, "height": height}),
        );
    }
}

impl Drop for Session<'_> {
    fn drop(&mut self) {
        let path = format!("/session/{}", self.id);
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.driver.call("DELETE", &path, None)
        }));
    }
}

/// Fills in the form and waits for the chat.
fn register(p: &Session, id: i64, name: &str, pwd: &str) {
    p.click("#mode");
    p.wait(
        "the registration form",
        "!document.getElementById('name-row').hidden",
    );
    // A login tried before leaves its id and password in the form.
    p.clear("#user-id");
    p.type_in("#user-id", &id.to_string());
    p.type_in("#user-name", name);
    p.clear("#password");
    p.type_in("#password", pwd);
    p.click("#submit");
    p.wait("the chat", "!document.getElementById('chat').hidden");
}

fn login(p: &Session, id: i64, pwd: &str) {
    p.clear("#user-id");
    p.type_in("#user-id", &id.to_string());
    p.clear("#password");
    p.type_in("#password", pwd);
    p.click("#submit");
}

/// The conversation shown has its history (the log is not `aria-busy`).
const HISTORY_LOADED: &str = "document.getElementById('log').getAttribute('aria-busy') !== 'true'";

/// How many messages in the conversation shown contain `text`.
fn count(p: &Session, text: &str) -> u64 {
    let script = format!(
        "return [...document.querySelectorAll('#log .text')].filter(e => e.textContent.includes({})).length;",
        json!(text)
    );
    p.js(&script).as_u64().unwrap()
}

fn conv(id: i64) -> String {
    format!("#convs button[data-conv=\"{id}\"]")
}

/// A user on the terminal client's protocol (password `<name>-pw`) registers and logs
/// in; returns once `page` lists them online.
fn terminal_user(server: &ServerProc, page: &Session, id: i64, name: &str) -> SeedClient {
    let pwd = format!("{name}-pw");
    let mut t = server.connect();
    assert_eq!(t.register(id, &pwd, name).data["code"], 200);
    assert_eq!(t.login(id, &pwd).data["code"], 200);
    page.wait(
        &format!("{name} online"),
        &format!("document.querySelector('{}')", conv(id)),
    );
    t
}

fn start_server(data: &Path, web: &str) -> (ServerProc, SocketAddr) {
    ServerProc::start_listener(data, &["--web-listen", web], "web")
}

#[test]
fn two_pages_and_a_terminal_user_chat() {
    let dir = tempfile::tempdir().unwrap();
    let (server, web) = start_server(dir.path(), "127.0.0.1:0");
    let url = format!("http://{web}/");
    let driver = Driver::start();
    let a = driver.session();
    let b = driver.session();

    // Two people register in their browsers and see each other online.
    a.go(&url);
    register(&a, 1001, "alice", "alice-pw");
    b.go(&url);
    register(&b, 1002, "bob", "bob-pw");
    a.wait(
        "bob online",
        &format!("document.querySelector('{}')", conv(1002)),
    );
    b.wait(
        "alice online",
        &format!("document.querySelector('{}')", conv(1001)),
    );
    assert!(a.text(&conv(1002)).contains("bob"));
    assert!(a.text("#me-name").contains("alice (1001)"));

    // Someone on the terminal client's protocol joins.
    let mut t = terminal_user(&server, &a, 1003, "carol");

    // A group message from a page reaches the other page and the terminal.
    a.type_in("#text", &format!("Hello everyone!{ENTER}"));
    b.wait_text("#log .text", "Hello everyone!");
    assert!(b.text("#log").contains("alice (1001)"));
    let g = t.recv_until("SmsMes").0;
    assert_eq!(g.data["content"], "Hello everyone!");
    assert_eq!(g.data["userId"], 1001);
    assert_eq!(g.data["userName"], "alice");
    // And one from the terminal reaches both pages.
    t.send(
        "SmsMes",
        json!({"content": "hi from the terminal", "userId": 1003}),
    );
    a.wait_text("#log .text", "hi from the terminal");
    b.wait_text("#log .text", "hi from the terminal");

    // A private message: bob picks alice, writes; alice sees it waiting, opens it.
    b.click(&conv(1001));
    b.wait_text("#conv-title", "alice (1001)");
    b.type_in("#text", "Just between us");
    b.click("#send");
    b.wait_text("#log .status", "delivered");
    a.wait_text(&format!("{} .badge", conv(1002)), "1");
    assert!(
        !a.text("#log").contains("Just between us"),
        "not in the group conversation"
    );
    a.click(&conv(1002));
    a.wait_text("#log .text", "Just between us");
    a.type_in("#text", &format!("Got it{ENTER}"));
    b.wait_text("#log .text", "Got it");
    // The terminal user saw none of it.
    t.expect_nothing_pending();

    // Alice logs out; a message kept for her meanwhile is shown at her next login,
    // after a wrong password that gets its sentence.
    a.click("#logout");
    a.wait("the login form", "!document.getElementById('auth').hidden");
    b.wait_text("#log li.system, #conv-sub", "Offline");
    t.send(
        "SmsPrivateMes",
        json!({"toUserId": 1001, "content": "for when you are back"}),
    );
    assert_eq!(t.recv_until("SmsResMes").0.data["code"], 202);
    login(&a, 1001, "not-her-password");
    a.wait_text("#auth-msg", "Wrong password.");
    login(&a, 1001, "alice-pw");
    a.wait("the chat", "!document.getElementById('chat').hidden");
    a.wait_text(
        "#notice",
        "1 private message arrived while you were offline.",
    );
    // What was said before comes from the server's history.
    a.wait("the history", HISTORY_LOADED);
    a.wait_text("#log .text", "hi from the terminal");
    assert_eq!(count(&a, "Hello everyone!"), 1);
    a.wait_text(&format!("{} .badge", conv(1003)), "1");
    a.click(&conv(1003));
    a.wait_text("#log", "for when you are back");
    assert!(a.text("#log").contains("sent while you were offline"));
    // Opening the conversation fetched its history, which holds the same message:
    // shown once. The exchange with bob, opened next, comes from history alone.
    a.wait("the history", HISTORY_LOADED);
    assert_eq!(count(&a, "for when you are back"), 1);
    a.click(&conv(1002));
    a.wait("the history", HISTORY_LOADED);
    assert_eq!(count(&a, "Just between us"), 1);
    assert_eq!(count(&a, "Got it"), 1);

    // A few more lines for the picture, then the screenshots (desktop and phone).
    a.click("#convs button[data-conv=\"group\"]");
    a.type_in("#text", &format!("Back again. Did I miss anything?{ENTER}"));
    t.recv_until("SmsMes");
    t.send(
        "SmsMes",
        json!({"content": "Only the weather: sunny all day.", "userId": 1003}),
    );
    a.wait_text("#log .text", "sunny all day");
    b.click("#convs button[data-conv=\"group\"]");
    b.wait_text("#log .text", "sunny all day");
    if let Some(dir) = std::env::var_os("CHAT_SCREENSHOTS") {
        let dir = PathBuf::from(dir);
        std::fs::create_dir_all(&dir).unwrap();
        b.resize(1100, 760);
        b.wait("the desktop layout", "window.innerWidth > 1000");
        std::fs::write(dir.join("web-chat.png"), b.screenshot()).unwrap();
        a.resize(390, 760);
        a.wait("the phone layout", "window.innerWidth <= 400");
        std::fs::write(dir.join("web-chat-phone.png"), a.screenshot()).unwrap();
    }
    let png = a.screenshot();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");

    // The server goes away: both pages say they are reconnecting; it comes back on
    // the same address and they log in again by themselves.
    let data = server.data.clone();
    drop(t);
    server.kill_hard();
    a.wait_text("#conn", "Reconnecting");
    b.wait_text("#conn", "Reconnecting");
    let (_server, web2) = start_server(&data, &web.to_string());
    assert_eq!(web2, web);
    a.wait_text("#conn", "Connected again.");
    b.wait_text("#conn", "Connected again.");
    // The group's history is fetched again after the drop, and nothing shows twice.
    a.wait("the history", HISTORY_LOADED);
    assert_eq!(count(&a, "Back again. Did I miss anything?"), 1);
    assert_eq!(count(&a, "sunny all day"), 1);
    b.wait_text(&conv(1001), "alice");
    b.click(&conv(1001));
    b.type_in("#text", &format!("still here{ENTER}"));
    b.wait_text("#log .status", "delivered");
    a.wait_text(&format!("{} .badge", conv(1002)), "1");
}

#[test]
fn refusals_are_said_in_sentences() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, web) = ServerProc::start_listener(
        dir.path(),
        &[
            "--web-listen",
            "127.0.0.1:0",
            "--login-rate",
            "2",
            "--max-frame",
            "9000",
        ],
        "web",
    );
    let driver = Driver::start();
    let p = driver.session();
    p.go(&format!("http://{web}/"));

    // A user id that does not exist (one failed login).
    login(&p, 4242, "whatever");
    p.wait_text("#auth-msg", "There is no user with id 4242.");
    // Registering and the login that follows (it succeeds: not counted).
    register(&p, 4242, "dora", "dora-pw");

    // A message longer than the server takes is not sent, and says why.
    p.js("document.getElementById('text').value = 'x'.repeat(9001);");
    p.click("#send");
    p.wait_text(
        "#log .status",
        "not sent: too long (the server takes at most 9000 bytes)",
    );

    // A wrong password (the second failed login), then another attempt within the
    // minute: refused, with the time to wait.
    p.click("#logout");
    p.wait("the login form", "!document.getElementById('auth').hidden");
    login(&p, 4242, "not-dora-pw");
    p.wait_text("#auth-msg", "Wrong password.");
    login(&p, 4242, "dora-pw");
    p.wait_text(
        "#auth-msg",
        "Too many login attempts from your address. Try again in",
    );
    assert_eq!(
        p.js("return document.getElementById('submit').disabled;"),
        json!(true)
    );
}

#[test]
fn a_page_over_https_chats_with_a_terminal_user() {
    let dir = tempfile::tempdir().unwrap();
    let certs = pki::make(dir.path(), "web", pki::KeyFormat::Pkcs8);
    let data = dir.path().join("data");
    // The page over HTTPS only: its WebSocket can only be `wss://` on the same port.
    let (server, https) = common::tls::start(&data, "--web-tls-listen", "HTTPS", &certs, &[]);
    let driver = Driver::start();
    // The browser does not know the test's CA: the chain itself is checked by the
    // rustls clients of `web_tls.rs`; here it is the browser's TLS and `wss://`.
    let p = driver.session_with(&["--ignore-certificate-errors"]);
    p.go(&format!("https://127.0.0.1:{}/", https.port()));
    assert_eq!(p.js("return location.protocol;"), json!("https:"));
    register(&p, 2001, "erin", "erin-pw");
    assert!(p.text("#me-name").contains("erin (2001)"));

    let mut t = terminal_user(&server, &p, 2002, "finn");
    p.type_in("#text", &format!("over TLS{ENTER}"));
    let g = t.recv_until("SmsMes").0;
    assert_eq!(g.data["content"], "over TLS");
    assert_eq!(g.data["userId"], 2001);
    t.send("SmsMes", json!({"content": "and back", "userId": 2002}));
    p.wait_text("#log .text", "and back");
}
