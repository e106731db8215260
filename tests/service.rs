//! Running under a service manager: readiness, reload and stop notices on a stand-in
//! for systemd's notify socket, the log file opened again on SIGHUP after logrotate
//! moved it, and the `dist/` files agreeing with the binary.

mod common;

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{SeedClient, ServerProc, WAIT};

/// Waits until the file at `path` holds a line with `needle`; returns the whole text.
fn wait_in_file(path: &Path, needle: &str) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.contains(needle) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "no line with {needle:?} in {}; it holds:\n{text}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The next notice on the stand-in notify socket.
fn notice(sock: &UnixDatagram) -> String {
    let mut buf = [0u8; 4096];
    let n = sock
        .recv(&mut buf)
        .expect("a notice on the notify socket before the wait ran out");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[test]
fn systemd_is_told_ready_reloading_and_stopping_and_sighup_reopens_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let notify_path = dir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify.set_read_timeout(Some(WAIT)).unwrap();
    let log = dir.path().join("chat.log");
    let data = dir.path().join("data");
    let mut child = ServerProc::command(&data, "127.0.0.1:0")
        .arg("--log-file")
        .arg(&log)
        .env("NOTIFY_SOCKET", &notify_path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();

    // Ready only once it listens: a client connects right after the notice.
    assert_eq!(notice(&notify), "READY=1\n");
    let text = wait_in_file(&log, ": listening on ");
    let line = text
        .lines()
        .find(|l| l.contains(": listening on "))
        .unwrap();
    let addr = line.rsplit(": listening on ").next().unwrap().trim();
    let mut c = SeedClient::connect(addr.parse().unwrap());
    c.register(1, "pw", "ann");

    // logrotate moves the file, then sends SIGHUP.
    let moved = dir.path().join("chat.log.1");
    std::fs::rename(&log, &moved).unwrap();
    // SAFETY: a signal to our own child, not yet reaped.
    unsafe { libc::kill(child.id() as i32, libc::SIGHUP) };
    let reloading = notice(&notify);
    assert!(
        reloading.starts_with("RELOADING=1\nMONOTONIC_USEC="),
        "{reloading:?}"
    );
    assert_eq!(notice(&notify), "READY=1\n");
    let fresh = wait_in_file(&log, "SIGHUP received: reloading");
    assert!(!fresh.contains(": listening on "), "{fresh}");
    // Lines after the reload go to the new file, none to the moved one.
    c.login(1, "pw");
    wait_in_file(&log, "user 1 online");
    let old = std::fs::read_to_string(&moved).unwrap();
    assert!(old.contains(": listening on "), "{old}");
    assert!(!old.contains("SIGHUP received"), "{old}");
    assert!(!old.contains("user 1 online"), "{old}");

    // SAFETY: as above.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert_eq!(notice(&notify), "STOPPING=1\n");
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        assert!(Instant::now() < deadline, "server did not exit");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}");
}

#[test]
fn the_dist_unit_waits_for_readiness_and_its_config_names_the_data() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("dist");
    let unit = std::fs::read_to_string(root.join("chat-server.service")).unwrap();
    assert!(unit.contains("\nType=notify\n"), "{unit}");
    let toml = std::fs::read_to_string(root.join("chat-server.toml")).unwrap();
    let data_line = toml
        .lines()
        .find(|l| l.starts_with("data = "))
        .expect("the dist config sets the data directory");
    assert_eq!(data_line, "data = \"/var/lib/chat-server\"");
    assert!(
        unit.contains("StateDirectory=chat-server"),
        "the unit's state directory is the config's data directory"
    );
    // The unit takes the data directory from the config, like every `users` command.
    let exec = unit.lines().find(|l| l.starts_with("ExecStart=")).unwrap();
    assert!(!exec.contains("--data"), "{exec}");
    // A log file, if set, lies where the unit lets the server write.
    if let Some(l) = toml
        .lines()
        .find(|l| l.trim_start_matches("# ").starts_with("log-file = "))
    {
        assert!(l.contains("\"/var/log/chat-server/"), "{l}");
        assert!(unit.contains("LogsDirectory=chat-server"), "{unit}");
    }
    // The binary takes the config as it is.
    let out = Command::new(env!("CARGO_BIN_EXE_chat-server"))
        .arg("--config")
        .arg(root.join("chat-server.toml"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
}

/// The metrics text of a server started with `--metrics-listen 127.0.0.1:0`.
fn scrape(server: &mut ServerProc) -> String {
    let line = server.wait_log("metrics at http://");
    let addr = line
        .rsplit("http://")
        .next()
        .unwrap()
        .trim_end_matches("/metrics");
    let (status, _, body) = common::web::exchange(
        common::connect(addr.parse().unwrap()),
        b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
    );
    assert!(status.contains(" 200 "), "{status}");
    String::from_utf8(body).unwrap()
}

#[test]
fn a_node_shows_whether_its_link_to_redis_is_up() {
    let redis = common::RedisProc::start(false);
    let (mut node, _dir) = redis.node(&["--metrics-listen", "127.0.0.1:0"]);
    let text = scrape(&mut node);
    assert!(
        text.lines().any(|l| l == "chat_cluster_link_up 1"),
        "{text}"
    );
    let dir = tempfile::tempdir().unwrap();
    let mut alone = ServerProc::start(dir.path(), &["--metrics-listen", "127.0.0.1:0"]);
    let text = scrape(&mut alone);
    assert!(!text.contains("chat_cluster_link_up"), "{text}");
}

#[test]
fn metrics_carry_the_process_and_the_build() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = ServerProc::start(dir.path(), &["--metrics-listen", "127.0.0.1:0"]);
    let text = scrape(&mut server);
    let sample = |name: &str| -> f64 {
        let line = text
            .lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
            .unwrap_or_else(|| panic!("no {name} in\n{text}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    assert!(sample("process_resident_memory_bytes") > 1e6);
    // The listeners, the store, the log: several descriptors, under the limit.
    let fds = sample("process_open_fds");
    assert!(fds >= 3.0 && fds < sample("process_max_fds"), "{fds}");
    assert!(sample("process_cpu_seconds_total") >= 0.0);
    // Started within the last day, by the machine's clock.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let start = sample("process_start_time_seconds");
    assert!(
        start <= now + 1.0 && start > now - 86_400.0,
        "{start} {now}"
    );
    let version = format!(
        "chat_build_info{{version=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION")
    );
    assert!(text.lines().any(|l| l == version), "{text}");
}

#[test]
fn failed_logins_and_registrations_are_logged_for_fail2ban() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = ServerProc::start(dir.path(), &[]);
    let mut c = server.connect();
    assert_eq!(c.register(1, "pw", "ann").data["code"], 200);
    assert_eq!(c.register(1, "pw", "ann").data["code"], 400);
    assert_eq!(c.login(1, "nope").data["code"], 403);
    assert_eq!(c.login(7, "pw").data["code"], 500);
    assert_eq!(c.login(1, "pw").data["code"], 200);
    // One shape: target, what, user, address (no port), reason.
    for line in [
        "chat::security: registration failed: user=1 addr=127.0.0.1 reason=taken",
        "chat::security: login failed: user=1 addr=127.0.0.1 reason=wrong-password",
        "chat::security: login failed: user=7 addr=127.0.0.1 reason=no-such-user",
        "user 1 online from 127.0.0.1:",
    ] {
        let l = server.wait_log(line);
        assert!(l.contains(" [WARN ] ") || l.contains(" [INFO ] "), "{l}");
    }
    // A fail2ban filter's match: the address after `addr=`, as a word.
    let l = server.wait_log("reason=wrong-password");
    let addr = l.split("addr=").nth(1).unwrap().split(' ').next().unwrap();
    assert_eq!(addr, "127.0.0.1");
}

#[test]
fn closed_registration_leaves_accounts_to_the_operator() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = ServerProc::start(dir.path(), &["--registration", "closed"]);
    let mut c = server.connect();
    let got = c.register(1, "pw", "ann");
    assert_eq!(got.data["code"], 403, "{got:?}");
    assert!(
        got.data["error"]
            .as_str()
            .unwrap()
            .contains("registration is closed"),
        "{got:?}"
    );
    server.wait_log("registration failed: user=1 addr=127.0.0.1 reason=registration-closed");
    // The operator's command still creates accounts, on the running server.
    let out = Command::new(env!("CARGO_BIN_EXE_chat-server"))
        .args(common::FAST_HASH)
        .args(["users", "add", "1", "ann", "--data"])
        .arg(dir.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut ch| {
            use std::io::Write;
            ch.stdin.take().unwrap().write_all(b"pw\n")?;
            ch.wait_with_output()
        })
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(c.login(1, "pw").data["code"], 200);
}

/// A tmpfs of `size` mounted at `at` for the life of the value (root only).
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Result<Tmpfs, String> {
        std::fs::create_dir_all(at).map_err(|e| e.to_string())?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .output()
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        Ok(Tmpfs(at.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Fills the filesystem of `dir` with a file `dir/filler` until it is full.
fn fill(dir: &Path) {
    use std::io::Write;
    let mut f = std::fs::File::create(dir.join("filler")).unwrap();
    let block = vec![7u8; 64 * 1024];
    loop {
        match f.write(&block) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => {
                assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "{e}");
                break;
            }
        }
    }
    // Whatever fits in the last partial block too.
    while f.write(&[7u8; 512]).is_ok_and(|n| n > 0) {}
    let _ = f.sync_all();
}

#[test]
fn a_full_disk_refuses_writes_then_the_store_heals_by_itself() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: mounting a small tmpfs needs root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("mnt");
    let _fs = match Tmpfs::mount(&mnt, "8m") {
        Ok(fs) => fs,
        Err(e) => {
            eprintln!("skipped: cannot mount a tmpfs here: {e}");
            return;
        }
    };
    let data = mnt.join("data");
    let mut server = ServerProc::start(&data, &["--history", "0"]);
    let mut ann = server.connect();
    assert_eq!(ann.register(1, "pw", "ann").data["code"], 200);
    assert_eq!(ann.register(2, "pw", "bob").data["code"], 200);
    assert_eq!(ann.login(1, "pw").data["code"], 200);

    // Bob is offline: each private message to him is a write. Fill the disk, then
    // write until one is refused.
    fill(&mnt);
    let big = "x".repeat(60_000);
    let mut stored = Vec::new();
    let mut refused = None;
    for i in 0..400 {
        let content = format!("{i} {big}");
        ann.send(
            "SmsPrivateMes",
            serde_json::json!({"toUserId": 2, "content": content}),
        );
        let res = ann.recv_until("SmsResMes").0;
        match res.data["code"].as_i64().unwrap() {
            202 => stored.push(i),
            503 => {
                refused = Some(i);
                break;
            }
            other => panic!("unexpected answer {other}: {res:?}"),
        }
    }
    let refused = refused.expect("a write refused on a full disk");
    server.wait_log("No space left on device");
    // While the disk is full, writes stay refused (and are not logged again).
    ann.send(
        "SmsPrivateMes",
        serde_json::json!({"toUserId": 2, "content": "still full"}),
    );
    assert_eq!(ann.recv_until("SmsResMes").0.data["code"], 503);

    // Space again: without a restart, writes succeed again.
    std::fs::remove_file(mnt.join("filler")).unwrap();
    let deadline = Instant::now() + WAIT;
    loop {
        ann.send(
            "SmsPrivateMes",
            serde_json::json!({"toUserId": 2, "content": "after"}),
        );
        match ann.recv_until("SmsResMes").0.data["code"].as_i64().unwrap() {
            202 => break,
            503 => {}
            other => panic!("unexpected answer {other}"),
        }
        assert!(Instant::now() < deadline, "writes did not resume");
        std::thread::sleep(Duration::from_millis(100));
    }
    server.wait_log("writes succeed again");
    let full_lines = server
        .log_lines
        .iter()
        .filter(|l| l.contains("No space left on device") && l.contains("[ERROR]"))
        .count();
    assert_eq!(
        full_lines,
        1,
        "the cause is logged once:\n{}",
        server.log_lines.join("\n")
    );

    // Nothing acknowledged was lost: bob gets every message answered 202, in order.
    let mut bob = server.connect();
    assert_eq!(bob.login(2, "pw").data["code"], 200);
    let mut got = Vec::new();
    while got.len() < stored.len() + 1 {
        let m = bob.recv_until("SmsPrivateMes").0;
        got.push(m.data["content"].as_str().unwrap().to_string());
    }
    for (k, i) in stored.iter().enumerate() {
        assert!(got[k].starts_with(&format!("{i} ")), "message {k}");
    }
    assert_eq!(got[stored.len()], "after");
    assert!(!got.iter().any(|c| c.starts_with(&format!("{refused} "))));
}

#[test]
fn sighup_reads_the_config_again_and_says_what_changed() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("chat.toml");
    std::fs::write(
        &conf,
        "registration = \"open\"\nmax-jobs = 100\nlogin-rate = 30\n",
    )
    .unwrap();
    let data = dir.path().join("data");
    let mut server = ServerProc::start(&data, &["--config", conf.to_str().unwrap()]);
    let mut c = server.connect();
    assert_eq!(c.register(1, "pw", "ann").data["code"], 200);

    std::fs::write(
        &conf,
        "registration = \"closed\"\nmax-jobs = 200\nlogin-rate = 60\nlog-level = \"debug\"\n",
    )
    .unwrap();
    server.signal(libc::SIGHUP);
    server.wait_log("configuration read again: registration open: true -> false");
    server.wait_log("configuration read again: login-rate: 30 -> 60");
    server.wait_log("configuration read again: log-level: INFO -> DEBUG");
    server.wait_log("`max-jobs` changed; it takes effect at the next restart");
    let got = c.register(2, "pw", "bob");
    assert_eq!(got.data["code"], 403, "{got:?}");

    // A file that no longer parses changes nothing, and says why.
    std::fs::write(&conf, "registration = \"open\"\nlogin-timeout = \"soon\"\n").unwrap();
    server.signal(libc::SIGHUP);
    let line = server.wait_log("configuration not read again");
    assert!(line.contains("`login-timeout`"), "{line}");
    assert_eq!(c.register(2, "pw", "bob").data["code"], 403);
}
