//! Running it for real: `chat-server users ...` and `backup` on a stopped and on a
//! running server (embedded store, through the admin socket) and on Redis (several
//! nodes), bans and removals of users who are online, the admin socket's permissions
//! and its bad clients, `--metrics-listen` checked against what the test did, and
//! `--config` with flags overriding it.

mod common;

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use common::web::exchange;
use common::{FAST_HASH, RedisProc, SeedClient, ServerProc, connect, online, read_to_close};
use serde_json::json;

/// Runs `chat-server [pre...] args...` with `stdin` as its standard input.
fn cli(pre: &[&str], args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_chat-server"))
        .args(FAST_HASH)
        .args(pre)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run chat-server");
    // A command that fails before it reads its input closes it: no matter.
    let _ = child.stdin.take().unwrap().write_all(stdin.as_bytes());
    child.wait_with_output().unwrap()
}

/// `chat-server users ARGS STORE...` (`--data DIR`, `--redis URL`).
fn users_cli(args: &[&str], store: [&str; 2], stdin: &str) -> Output {
    cli(&[], &[&["users"], args, &store].concat(), stdin)
}

/// `chat-server users ARGS --data DIR`, which must succeed; its stdout.
fn users(dir: &Path, args: &[&str], stdin: &str) -> String {
    let out = users_cli(args, ["--data", dir.to_str().unwrap()], stdin);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "users {args:?} failed: {}{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

/// The same, which must fail; its stderr.
fn users_fails(dir: &Path, args: &[&str], stdin: &str) -> String {
    let out = users_cli(args, ["--data", dir.to_str().unwrap()], stdin);
    assert!(!out.status.success(), "users {args:?} succeeded");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The rows of `users list`: (id, banned, name).
fn rows(list: &str) -> Vec<(i64, bool, String)> {
    list.lines()
        .skip(1)
        .filter(|l| !l.ends_with(" users"))
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f[0].parse().unwrap(), f[1] == "yes", f[2].to_string())
        })
        .collect()
}

fn login_code(c: &mut SeedClient, id: i64, pwd: &str) -> i64 {
    c.login(id, pwd).data["code"].as_i64().unwrap()
}

/// A user logged in on a new connection, with the password given.
fn logged_in(server: &ServerProc, id: i64, pwd: &str) -> SeedClient {
    let mut c = server.connect();
    assert_eq!(login_code(&mut c, id, pwd), 200);
    c
}

#[test]
fn accounts_on_a_stopped_server_then_on_the_running_one() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // Stopped: the commands open the data file. None there yet: a new store only when
    // asked for.
    let err = users_fails(d, &["add", "1", "ann"], "pw1\n");
    assert!(
        err.contains("no data file at") && err.contains("--create"),
        "{err}"
    );
    assert!(!d.join("chat.redb").exists());
    assert!(users(d, &["add", "1", "ann", "--create"], "pw1\n").contains("user 1 added"));
    users(d, &["add", "2", "bob"], "pw2\n");
    users(d, &["add", "4", "dee"], "pw4\r\n");
    assert!(users_fails(d, &["add", "1", "again"], "x\n").contains("already taken"));
    assert!(users_fails(d, &["add", "5", " pad"], "x\n").contains("userName"));
    assert!(users_fails(d, &["add", "5", "eve"], "\n").contains("must not be empty"));
    assert!(users_fails(d, &["ban", "9"], "").contains("no such user: 9"));
    users(d, &["ban", "2"], "");
    assert!(users(d, &["passwd", "1"], "new1\n").contains("password of user 1 changed"));
    let list = users(d, &["list"], "");
    assert_eq!(
        rows(&list),
        [
            (1, false, "ann".into()),
            (2, true, "bob".into()),
            (4, false, "dee".into())
        ]
    );
    assert!(!list.contains("argon2") && !list.contains("pw"), "{list}");

    let mut server = ServerProc::start(d, &[]);
    let sock = d.join("admin.sock");
    let mode = std::fs::metadata(&sock).unwrap().permissions().mode();
    assert_eq!(
        mode & 0o777,
        0o600,
        "the admin socket is the server user's only"
    );
    let mut ann = logged_in(&server, 1, "new1");
    let mut c = server.connect();
    assert_eq!(login_code(&mut c, 1, "pw1"), 403);
    let refused = c.login(2, "pw2");
    assert_eq!(refused.data["code"], 423, "{refused:?}");
    assert_eq!(refused.data["error"], "this account is banned");

    // Running: through the admin socket, at once.
    assert_eq!(rows(&users(d, &["list"], "")).len(), 3);
    users(d, &["unban", "2"], "");
    assert_eq!(login_code(&mut c, 2, "pw2"), 200);
    let (_, _) = ann.recv_until("NotifyUserStatusMes");
    users(d, &["add", "3", "cy"], "pw3\n");
    let mut cy = logged_in(&server, 3, "pw3");
    ann.recv_until("NotifyUserStatusMes");
    c.recv_until("NotifyUserStatusMes");
    // A new password ends no session.
    users(d, &["passwd", "3"], "new3\n");
    cy.expect_nothing_pending();
    let mut other = server.connect();
    assert_eq!(login_code(&mut other, 3, "pw3"), 403);
    assert_eq!(login_code(&mut other, 3, "new3"), 200);
    // That login replaced cy's older session (409), as any second login does.
    let (g, _) = cy.recv_until("ErrorResMes");
    assert_eq!(g.data["code"], 409);
    let mut cy = other;

    // Ban of an online user: an error frame, then the close; the others see them go.
    let out = users(d, &["ban", "2"], "");
    assert!(out.contains("user 2 banned; 1 session closed"), "{out}");
    let got = c.expect_closed();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].kind, "ErrorResMes");
    assert_eq!(got[0].data["code"], 423);
    let (n, _) = ann.recv_until("NotifyUserStatusMes");
    assert_eq!(
        (n.data["userId"].as_i64(), n.data["status"].as_i64()),
        (Some(2), Some(1))
    );
    let mut c = server.connect();
    assert_eq!(c.login(2, "pw2").data["code"], 423);
    server.wait_log("user 2: 1 sessions closed (banned by an operator)");

    // Removal of an online user: the same, and the account and its messages go.
    let mut dee_msgs = server.connect();
    dee_msgs.register(6, "pw6", "fay");
    assert_eq!(login_code(&mut dee_msgs, 6, "pw6"), 200);
    dee_msgs.send(
        "SmsPrivateMes",
        json!({"toUserId": 4, "content": "for dee"}),
    );
    let (r, _) = dee_msgs.recv_until("SmsResMes");
    assert_eq!(r.data["code"], 202, "dee is offline: stored");
    let out = users(d, &["remove", "3"], "");
    assert!(out.contains("1 session closed"), "{out}");
    let got = cy.expect_closed();
    assert_eq!(got.last().unwrap().data["code"], 410, "{got:?}");
    assert_eq!(login_code(&mut c, 3, "new3"), 500);
    assert!(users(d, &["remove", "4"], "").contains("0 sessions closed"));
    users(d, &["add", "4", "dee2"], "pw4\n");
    let mut dee = server.connect();
    dee.login(4, "pw4");
    dee.expect_nothing_pending();

    // A consistent copy while it runs, and the server goes on.
    let copy = tempfile::tempdir().unwrap();
    let file = copy.path().join("chat.redb");
    let backup = || {
        let args = [
            "backup",
            file.to_str().unwrap(),
            "--data",
            d.to_str().unwrap(),
        ];
        cli(&[], &args, "")
    };
    let out = backup();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("bytes copied"));
    let out = backup();
    assert!(!out.status.success(), "never over an existing file");
    dee.expect_nothing_pending();

    let st = server.signal_and_wait(libc::SIGTERM);
    assert!(st.success());
    assert!(!sock.exists(), "the admin socket is removed at exit");
    // Stopped again: straight from the file; and the backup holds the same accounts.
    let names = |dir: &Path| -> Vec<(i64, bool, String)> { rows(&users(dir, &["list"], "")) };
    let now = names(d);
    assert_eq!(
        now,
        [
            (1, false, "ann".into()),
            (2, true, "bob".into()),
            (4, false, "dee2".into()),
            (6, false, "fay".into())
        ]
    );
    assert_eq!(names(copy.path()), now);
}

/// A child process that connects to `sock` as uid/gid 65534 and sends a list
/// request; its exit status: 0 refused by the server (the answer says permission
/// denied), 1 could not connect, 2 any other answer. Only async-signal-safe calls
/// after the fork.
fn connect_as_nobody(sock: &Path) -> i32 {
    use std::os::unix::ffi::OsStrExt;
    let path = sock.as_os_str().as_bytes();
    // SAFETY: zeroed sockaddr_un is valid; the path fits (checked).
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    assert!(path.len() < addr.sun_path.len());
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (i, b) in path.iter().enumerate() {
        addr.sun_path[i] = *b as libc::c_char;
    }
    let req = b"{\"cmd\":\"list\"}\n";
    let needle = b"permission denied";
    // SAFETY: the child only makes system calls on memory prepared before the fork,
    // and leaves with _exit.
    unsafe {
        let pid = libc::fork();
        assert!(pid >= 0);
        if pid == 0 {
            if libc::setgid(65534) != 0 || libc::setuid(65534) != 0 {
                libc::_exit(3);
            }
            let fd = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0);
            let len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
            if libc::connect(fd, (&addr as *const libc::sockaddr_un).cast(), len) != 0 {
                libc::_exit(1);
            }
            libc::write(fd, req.as_ptr().cast(), req.len());
            let mut buf = [0u8; 512];
            let mut got = 0usize;
            loop {
                let n = libc::read(fd, buf[got..].as_mut_ptr().cast(), buf.len() - got);
                if n <= 0 {
                    break;
                }
                got += n as usize;
                if got == buf.len() {
                    break;
                }
            }
            let mut found = false;
            let mut i = 0;
            while i + needle.len() <= got {
                if buf[i..i + needle.len()] == needle[..] {
                    found = true;
                }
                i += 1;
            }
            libc::_exit(if found { 0 } else { 2 });
        }
        let mut status = 0;
        libc::waitpid(pid, &mut status, 0);
        libc::WEXITSTATUS(status)
    }
}

#[test]
fn the_admin_socket_refuses_other_users_and_survives_garbage() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    users(d, &["add", "1", "ann", "--create"], "pw1\n");
    let mut server = ServerProc::start(d, &[]);
    let sock = d.join("admin.sock");
    let ask = |bytes: &[u8]| -> String {
        let mut s = UnixStream::connect(&sock).unwrap();
        // The server may answer and close before reading all of a long request.
        let _ = s.write_all(bytes);
        let _ = s.shutdown(std::net::Shutdown::Write);
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    };
    let bad = ask(b"\x00\xff garbage \n");
    assert!(
        bad.starts_with(r#"{"ok":false,"text":"bad request"#),
        "{bad}"
    );
    let bad = ask(br#"{"cmd":"rm -rf","id":1}"#);
    assert!(bad.contains("not ended by a newline"), "{bad}");
    let bad = ask(&vec![b'x'; 100_000]);
    assert!(bad.contains("longer than 65536 bytes"), "{bad}");
    assert!(ask(br#"{"cmd":"passwd","id":1,"hash":"plain"}"#.as_slice()).contains("ok\":false"));
    assert_eq!(ask(b""), "", "a client that says nothing gets nothing");
    // One that connects and says nothing holds the socket for its timeout at most;
    // meanwhile the chat goes on.
    let _silent = UnixStream::connect(&sock).unwrap();
    let mut c = logged_in(&server, 1, "pw1");
    c.expect_nothing_pending();
    drop(_silent);
    assert_eq!(rows(&users(d, &["list"], "")).len(), 1);
    let ok = ask(b"{\"cmd\":\"list\"}\n");
    assert!(
        ok.starts_with(r#"{"ok":true"#) && !ok.contains("argon2"),
        "{ok}"
    );

    if unsafe { libc::geteuid() } != 0 {
        eprintln!("not root: the test of another user's connection needs to switch users");
        return;
    }
    // Mode 0600: another user cannot even connect.
    std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
    assert_eq!(connect_as_nobody(&sock), 1);
    // Opened up by hand, the peer's uid still decides.
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o666)).unwrap();
    assert_eq!(connect_as_nobody(&sock), 0);
    server.wait_log("refused a connection from uid 65534");
    c.expect_nothing_pending();
    assert_eq!(rows(&users(d, &["list"], "")).len(), 1);
}

#[test]
fn accounts_on_redis_with_two_running_nodes() {
    let redis = RedisProc::start(false);
    let url = redis.url();
    let r = |args: &[&str], stdin: &str| -> Output { users_cli(args, ["--redis", &url], stdin) };
    let ok = |o: Output| -> String {
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    // No server running: straight to Redis, in the seed's schema.
    ok(r(&["add", "1", "ann"], "pw1\n"));
    ok(r(&["add", "2", "bob"], "pw2\n"));
    ok(r(&["add", "3", "cy"], "pw3\n"));
    let out = ok(r(&["ban", "3"], ""));
    assert!(out.contains("no running server"), "{out}");
    let raw = redis.user_record(3);
    let rec: serde_json::Value = serde_json::from_str(&raw).unwrap();
    assert_eq!(rec["banned"], true);
    assert_eq!(rec["userName"], "cy");
    assert!(rec["userPwd"].as_str().unwrap().starts_with("$argon2id$"));
    ok(r(&["unban", "3"], ""));
    let raw = redis.user_record(3);
    assert!(!raw.contains("banned"), "{raw}");

    let dir = tempfile::tempdir().unwrap();
    let n1 = ServerProc::start(dir.path(), &["--redis", &url, "--node-id", "n1"]);
    let mut n2 = ServerProc::start(dir.path(), &["--redis", &url, "--node-id", "n2"]);
    assert!(
        !dir.path().join("admin.sock").exists(),
        "no admin socket with Redis"
    );
    let mut ann = logged_in(&n1, 1, "pw1");
    let mut bob = logged_in(&n2, 2, "pw2");
    ann.recv_until("NotifyUserStatusMes");
    let mut cy = logged_in(&n1, 3, "pw3");
    ann.recv_until("NotifyUserStatusMes");
    bob.recv_until("NotifyUserStatusMes");

    // Who is online, from the nodes' presence in Redis (written by each node as its
    // users come: asked again until the last login is there).
    let deadline = std::time::Instant::now() + common::WAIT;
    let seen = loop {
        let online: Vec<serde_json::Value> =
            serde_json::from_str(&ok(r(&["online", "--json"], ""))).unwrap();
        let seen: Vec<(i64, String)> = online
            .iter()
            .map(|l| {
                (
                    l["id"].as_i64().unwrap(),
                    l["node"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        if seen.len() == 3 || std::time::Instant::now() > deadline {
            break seen;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let want: Vec<(i64, String)> = vec![(1, "n1".into()), (2, "n2".into()), (3, "n1".into())];
    assert_eq!(seen, want);

    // A ban reaches the node that holds the session.
    let out = ok(r(&["ban", "2"], ""));
    assert!(out.contains("2 running servers told"), "{out}");
    let got = bob.expect_closed();
    assert_eq!(got.last().unwrap().data["code"], 423, "{got:?}");
    let (n, _) = ann.recv_until("NotifyUserStatusMes");
    assert_eq!(
        (n.data["userId"].as_i64(), n.data["status"].as_i64()),
        (Some(2), Some(1))
    );
    n2.wait_log("user 2: 1 sessions closed");
    let mut c = n1.connect();
    assert_eq!(c.login(2, "pw2").data["code"], 423);
    assert_eq!(n2.connect().login(2, "pw2").data["code"], 423);

    // passwd ends nothing; the new password works on every node at once.
    ok(r(&["passwd", "1"], "new1\n"));
    ann.expect_nothing_pending();
    assert_eq!(n2.connect().login(1, "pw1").data["code"], 403);

    // Remove: session closed, account and offline messages gone.
    ann.send("SmsPrivateMes", json!({"toUserId": 2, "content": "kept"}));
    assert_eq!(ann.recv_until("SmsResMes").0.data["code"], 202);
    ok(r(&["remove", "2"], ""));
    assert_eq!(redis.llen("offline:2"), 0);
    ok(r(&["remove", "3"], ""));
    let got = cy.expect_closed();
    assert_eq!(got.last().unwrap().data["code"], 410, "{got:?}");
    assert_eq!(c.login(3, "pw3").data["code"], 500);
    let list = ok(r(&["list"], ""));
    assert_eq!(rows(&list), [(1, false, "ann".into())]);
    let out = r(&["remove", "3"], "");
    assert!(!out.status.success());
    let out = cli(&[], &["backup", "/tmp/x.redb", "--redis", &url], "");
    assert!(String::from_utf8_lossy(&out.stderr).contains("BGSAVE"));
}

/// A TCP proxy to Redis that can cut a node off: while cut, the connections through
/// it are closed, and new ones closed as soon as they come.
struct Cuttable {
    port: u16,
    /// Whether it is cut, and the two ends of every connection open through it.
    state: std::sync::Arc<std::sync::Mutex<(bool, Vec<std::net::TcpStream>)>>,
}

impl Cuttable {
    fn start(upstream: u16) -> Cuttable {
        use std::net::{Shutdown, TcpListener, TcpStream};
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = std::sync::Arc::new(std::sync::Mutex::new((false, Vec::new())));
        let st = state.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                let mut st = st.lock().unwrap();
                if st.0 {
                    continue;
                }
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                    continue;
                };
                st.1.push(client.try_clone().unwrap());
                st.1.push(server.try_clone().unwrap());
                let ends = [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ];
                for (mut from, mut to) in ends {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(Shutdown::Both);
                        let _ = from.shutdown(Shutdown::Both);
                    });
                }
            }
        });
        Cuttable { port, state }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn cut(&self) {
        let mut st = self.state.lock().unwrap();
        st.0 = true;
        for s in st.1.drain(..) {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }

    fn mend(&self) {
        self.state.lock().unwrap().0 = false;
    }
}

/// A ban published while a node is cut off from Redis does not reach it; once its link
/// is back, the node looks its users up and ends the banned one's session.
#[test]
fn a_ban_while_a_node_is_cut_off_takes_effect_when_it_is_back() {
    let redis = RedisProc::start(false);
    let url = redis.url();
    let link = Cuttable::start(redis.port);
    let ok = |args: &[&str], stdin: &str| -> String {
        let o = users_cli(args, ["--redis", &url], stdin);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    ok(&["add", "1", "ann"], "pw1\n");
    ok(&["add", "2", "bob"], "pw2\n");
    let dir = tempfile::tempdir().unwrap();
    let n1 = ServerProc::start(dir.path(), &["--redis", &url, "--node-id", "n1"]);
    let mut n2 = ServerProc::start(dir.path(), &["--redis", &link.url(), "--node-id", "n2"]);
    let mut ann = logged_in(&n1, 1, "pw1");
    let mut bob = logged_in(&n2, 2, "pw2");
    ann.recv_until("NotifyUserStatusMes");

    link.cut();
    n2.wait_log("unreachable");
    let out = ok(&["ban", "2"], "");
    assert!(out.contains("1 running servers told"), "{out}");
    // Cut off, n2 heard nothing: bob's session goes on.
    bob.send("PingMes", json!({}));
    bob.recv_until("PongMes");

    link.mend();
    let got = bob.expect_closed();
    assert_eq!(got.last().unwrap().data["code"], 423, "{got:?}");
    n2.wait_log("user 2: banned while this node was cut off from Redis");
    assert_eq!(n2.connect().login(2, "pw2").data["code"], 423);
    // ann's session, on the node that was never cut off, goes on.
    ann.send("PingMes", json!({}));
    ann.recv_until("PongMes");
}

/// The metrics listener's address, from the server's log.
fn metrics_addr(server: &mut ServerProc) -> String {
    let line = server.wait_log("metrics at http://");
    line.rsplit("http://")
        .next()
        .unwrap()
        .trim_end_matches("/metrics")
        .to_string()
}

/// GET `path` from `addr`; the status line and the body.
fn http_get(addr: &str, path: &str) -> (String, String) {
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
    let (status, _, body) = exchange(connect(addr.parse().unwrap()), request.as_bytes());
    (status, String::from_utf8(body).unwrap())
}

/// The value of one sample line of the exposition.
fn sample(text: &str, name: &str) -> f64 {
    let line = text
        .lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .unwrap_or_else(|| panic!("no {name} in\n{text}"));
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

#[test]
fn metrics_count_what_clients_did() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = ServerProc::start(
        dir.path(),
        &["--metrics-listen", "127.0.0.1:0", "--msg-rate", "3"],
    );
    let addr = metrics_addr(&mut server);
    let mut a = online(&server, 1);
    let mut b = online(&server, 2);
    a.recv_until("NotifyUserStatusMes");
    let mut c = server.connect();
    assert_eq!(login_code(&mut c, 1, "wrong"), 403);
    assert_eq!(login_code(&mut c, 77, "x"), 500);
    a.send("SmsMes", json!({"content": "hi all"}));
    b.recv_until("SmsMes");
    b.send("SmsPrivateMes", json!({"toUserId": 1, "content": "psst"}));
    assert_eq!(b.recv_until("SmsResMes").0.data["code"], 200);
    a.recv_until("SmsPrivateMes");
    // Over the message rate: count the refusals the client saw.
    for _ in 0..8 {
        a.send("PingMes", json!({}));
    }
    let mut too_many = 0;
    for _ in 0..8 {
        let g = a.recv();
        if g.kind == "ErrorResMes" {
            assert_eq!(g.data["code"], 429);
            too_many += 1;
        }
    }
    assert_eq!(too_many, 0, "over the rate, frames wait: none is refused");
    let mut big = server.connect();
    big.send_raw(&(1u32 << 20).to_be_bytes());
    let got = big.expect_closed();
    assert_eq!(got[0].data["code"], 413);

    let (status, text) = http_get(&addr, "/metrics");
    assert_eq!(status, "HTTP/1.1 200 OK");
    let v = |name: &str| sample(&text, name);
    assert_eq!(v("chat_connections_open"), 3.0, "a, b and c");
    assert_eq!(v("chat_users_online"), 2.0);
    assert_eq!(v("chat_logins_total{outcome=\"ok\"}"), 2.0);
    assert_eq!(v("chat_logins_total{outcome=\"wrong_password\"}"), 1.0);
    assert_eq!(v("chat_logins_total{outcome=\"no_such_user\"}"), 1.0);
    assert_eq!(v("chat_registrations_total{outcome=\"ok\"}"), 2.0);
    assert_eq!(v("chat_frames_in_total{type=\"SmsMes\"}"), 1.0);
    assert_eq!(v("chat_frames_in_total{type=\"SmsPrivateMes\"}"), 1.0);
    assert_eq!(v("chat_frames_in_total{type=\"LoginMes\"}"), 4.0);
    assert_eq!(v("chat_group_messages_total"), 1.0);
    assert_eq!(v("chat_private_messages_total"), 1.0);
    assert_eq!(v("chat_refusals_total{code=\"429\"}"), too_many as f64);
    assert_eq!(v("chat_refusals_total{code=\"413\"}"), 1.0);
    assert_eq!(v("chat_slow_consumers_dropped_total"), 0.0);
    assert_eq!(v("chat_store_errors_total"), 0.0);
    assert_eq!(
        v("chat_hashing_latency_seconds_count"),
        6.0,
        "2 registrations, 4 logins"
    );
    assert!(v("chat_bytes_in_total") > 0.0 && v("chat_bytes_out_total") > 0.0);
    assert!(v("chat_loop_turns_total") > 0.0);
    assert_eq!(
        v("chat_loop_turn_seconds_count"),
        v("chat_loop_turns_total") - 1.0,
        "every turn before this one was timed"
    );
    assert_eq!(v("chat_store_job_seconds_count{lane=\"hash\"}"), 6.0);
    // Counters only grow, and the server keeps serving.
    let (_, again) = http_get(&addr, "/metrics");
    assert!(sample(&again, "chat_bytes_out_total") >= v("chat_bytes_out_total"));
    assert_eq!(http_get(&addr, "/").0, "HTTP/1.1 404 Not Found");
    let mut junk = std::net::TcpStream::connect(&addr).unwrap();
    // Longer than a request head may be, and all of it read by the server.
    junk.write_all(&[0xff; 8_500]).unwrap();
    let _ = junk.shutdown(std::net::Shutdown::Write);
    let mut out = Vec::new();
    let _ = junk.read_to_end(&mut out);
    assert!(
        out.starts_with(b"HTTP/1.1 400"),
        "{:?}",
        String::from_utf8_lossy(&out)
    );
    server.connect().expect_nothing_pending();
}

#[test]
fn the_config_file_sets_flags_and_the_command_line_overrides_it() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("chat-server.toml");
    std::fs::write(
        &conf,
        "# one connection per address\nmax-conns-per-addr = 1\nlogin-timeout = 600\nlog-level = \"debug\"\n",
    )
    .unwrap();
    let conf_s = conf.to_str().unwrap();
    let data = dir.path().join("d1");
    let server = ServerProc::start(&data, &["--config", conf_s]);
    let mut first = server.connect();
    first.expect_nothing_pending();
    let mut second = server.connect();
    let got = second.expect_closed();
    assert_eq!(got[0].data["code"], 503, "{got:?}");
    drop(server);

    let data = dir.path().join("d2");
    let server = ServerProc::start(&data, &["--config", conf_s, "--max-conns-per-addr", "2"]);
    let mut first = server.connect();
    let mut second = server.connect();
    first.expect_nothing_pending();
    second.expect_nothing_pending();
    let got = server.connect().expect_closed();
    assert_eq!(got[0].data["code"], 503, "{got:?}");

    // The operators' commands read it too: here, where the data is. A data directory
    // with no data file is a mistake unless the command says to start one.
    std::fs::write(
        &conf,
        format!("data = {:?}\n", dir.path().join("d3").to_str().unwrap()),
    )
    .unwrap();
    let out = cli(&[], &["users", "list", "--config", conf_s], "");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("d3/chat.redb"), "{err}");
    let out = cli(
        &[],
        &["users", "add", "9", "zed", "--config", conf_s],
        "pw\n",
    );
    assert!(!out.status.success());
    assert!(!dir.path().join("d3").join("chat.redb").exists());
    // Hashing flags go after the command too, as the README shows them.
    let out = cli(
        &[],
        &[
            "users",
            "add",
            "9",
            "zed",
            "--config",
            conf_s,
            "--create",
            "--argon2-memory-kib",
            "64",
            "--argon2-passes",
            "1",
        ],
        "pw\n",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(dir.path().join("d3").join("chat.redb").exists());

    // A mistake in the file stops the server before it starts, naming the key.
    std::fs::write(&conf, "max-conns-per-adr = 1\n").unwrap();
    let out = cli(&[], &["--config", conf_s, "--listen", "127.0.0.1:0"], "");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("`max-conns-per-adr`: no such setting"),
        "{err}"
    );
    std::fs::write(&conf, "login-timeout = \"soon\"\n").unwrap();
    let out = cli(&[], &["--config", conf_s, "--listen", "127.0.0.1:0"], "");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("{conf_s}: `login-timeout`: invalid value 'soon'")),
        "{err}"
    );
    // The same value typed on the command line is clap's to report, as usual.
    let out = cli(&[], &["--login-timeout", "soon"], "");
    assert_eq!(out.status.code(), Some(2));
    assert!(!String::from_utf8_lossy(&out.stderr).contains("`login-timeout`"));
}

#[test]
fn the_example_config_names_every_flag_and_the_server_takes_each_key() {
    let example = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/dist/chat-server.toml"
    ))
    .unwrap();
    // Keys are shown commented out: `# key = value`.
    let keys: Vec<(&str, &str)> = example
        .lines()
        .filter_map(|l| l.strip_prefix("# ")?.split_once(" = "))
        .filter(|(k, _)| !k.contains(' '))
        .collect();
    let help = cli(&[], &["--help"], "");
    let help = String::from_utf8_lossy(&help.stdout).into_owned();
    for flag in help
        .split_whitespace()
        .filter_map(|w| w.strip_prefix("--"))
        .map(|w| w.trim_end_matches(|c: char| !c.is_ascii_alphanumeric()))
    {
        if ["help", "version", "config"].contains(&flag) {
            continue;
        }
        assert!(
            keys.iter().any(|(k, _)| *k == flag),
            "dist/chat-server.toml does not show `{flag}`"
        );
    }
    // Uncommented, every key and value is accepted (the server checks the whole file
    // before it reads --help).
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("all.toml");
    let all: String = keys
        .iter()
        .map(|(k, v)| {
            let v = v.split(" #").next().unwrap();
            format!("{k} = {v}\n")
        })
        .collect();
    std::fs::write(&f, &all).unwrap();
    let out = cli(&[], &["--config", f.to_str().unwrap(), "--help"], "");
    assert!(
        out.status.success(),
        "{all}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Sends `bytes` one at a time, each after waiting up to a second for the server to
/// answer or close (less than either listener's timeout for one read), as a client
/// that trickles a request would; stops at the server's answer or close. Returns how
/// many bytes were sent then, and what the server said.
fn trickle<S: Read + Write>(mut s: S, set_timeout: impl Fn(&S), bytes: &[u8]) -> (usize, String) {
    set_timeout(&s);
    let mut got = Vec::new();
    for (i, b) in bytes.iter().enumerate() {
        if s.write_all(std::slice::from_ref(b)).is_err() {
            return (i, String::from_utf8_lossy(&got).into());
        }
        let mut buf = [0u8; 4096];
        match s.read(&mut buf) {
            Ok(0) => return (i + 1, String::from_utf8_lossy(&got).into()),
            Ok(n) => {
                got.extend_from_slice(&buf[..n]);
                let _ = s.read_to_end(&mut got);
                return (i + 1, String::from_utf8_lossy(&got).into());
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return (i + 1, String::from_utf8_lossy(&got).into()),
        }
    }
    (bytes.len(), String::from_utf8_lossy(&got).into())
}

#[test]
fn a_request_trickled_in_holds_the_admin_socket_for_its_timeout_at_most() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    users(d, &["add", "1", "ann", "--create"], "pw1\n");
    let _server = ServerProc::start(d, &[]);
    // A whole request, padded with blanks to take three times the timeout (10 s).
    let mut request = br#"{"cmd":"list""#.to_vec();
    request.extend(std::iter::repeat_n(b' ', 30));
    request.extend_from_slice(b"}\n");
    let slow = UnixStream::connect(d.join("admin.sock")).unwrap();
    let set = |s: &UnixStream| {
        s.set_read_timeout(Some(std::time::Duration::from_secs(1)))
            .unwrap()
    };
    let (sent, said) = trickle(slow, set, &request);
    assert!(
        sent < 15 && said.contains("timed out"),
        "a slow client is cut off at the timeout: sent {sent} of {} bytes, got {said:?}",
        request.len()
    );
    assert_eq!(rows(&users(d, &["list"], "")).len(), 1);
}

#[test]
fn a_request_trickled_in_holds_the_metrics_listener_for_its_timeout_at_most() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = ServerProc::start(dir.path(), &["--metrics-listen", "127.0.0.1:0"]);
    let addr = metrics_addr(&mut server);
    // Three times the timeout (5 s), a byte a second.
    let mut request = b"GET /metrics HTTP/1.1\r\nX-Slow: ".to_vec();
    request.extend(std::iter::repeat_n(b'a', 15));
    request.extend_from_slice(b"\r\n\r\n");
    let slow = std::net::TcpStream::connect(&addr).unwrap();
    let set = |s: &std::net::TcpStream| {
        s.set_read_timeout(Some(std::time::Duration::from_secs(1)))
            .unwrap()
    };
    let (sent, said) = trickle(slow, set, &request);
    assert!(
        sent < 10 && said.starts_with("HTTP/1.1 408"),
        "a slow client is cut off at the timeout: sent {sent} of {} bytes, got {said:?}",
        request.len()
    );
    let (status, body) = http_get(&addr, "/metrics");
    assert_eq!(status, "HTTP/1.1 200 OK", "{body}");
}

#[test]
fn idle_connections_do_not_delay_a_scrape_and_are_closed_at_their_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = ServerProc::start(dir.path(), &["--metrics-listen", "127.0.0.1:0"]);
    let addr = metrics_addr(&mut server);
    // Served one at a time, each of these would hold the listener for its whole
    // timeout (5 s) before the scrape; served at once, none delays it.
    let mut idle: Vec<_> = (0..10).map(|_| connect(addr.parse().unwrap())).collect();
    let (status, body) = http_get(&addr, "/metrics");
    assert_eq!(status, "HTTP/1.1 200 OK", "{body}");
    // Each idle one is answered 408 and closed at its own deadline.
    for s in &mut idle {
        let said = String::from_utf8(read_to_close(s)).unwrap();
        assert!(said.starts_with("HTTP/1.1 408"), "{said}");
    }
}

#[test]
fn the_metrics_listener_serves_a_bounded_number_of_clients_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = ServerProc::start(dir.path(), &["--metrics-listen", "127.0.0.1:0"]);
    let addr = metrics_addr(&mut server);
    let _idle: Vec<_> = (0..chat::ops::metrics_http::MAX_CLIENTS)
        .map(|_| connect(addr.parse().unwrap()))
        .collect();
    // One more is told so at once, not queued behind them.
    let mut more = connect(addr.parse().unwrap());
    let said = String::from_utf8(read_to_close(&mut more)).unwrap();
    assert!(
        said.starts_with("HTTP/1.1 503") && said.contains("busy"),
        "{said}"
    );
}

#[test]
fn idle_admin_clients_do_not_delay_a_command_and_are_closed_at_their_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    users(d, &["add", "1", "ann", "--create"], "pw1\n");
    let _server = ServerProc::start(d, &[]);
    let sock = d.join("admin.sock");
    let idle: Vec<_> = (0..5)
        .map(|_| UnixStream::connect(&sock).unwrap())
        .collect();
    // Served one at a time, the command would wait out each idle client's timeout
    // (10 s) first.
    let mut s = UnixStream::connect(&sock).unwrap();
    s.set_read_timeout(Some(common::WAIT)).unwrap();
    s.write_all(b"{\"cmd\":\"list\"}\n").unwrap();
    let mut ok = String::new();
    s.read_to_string(&mut ok)
        .expect("an answer while others are idle");
    assert!(ok.starts_with(r#"{"ok":true"#), "{ok}");
    for mut s in idle {
        s.set_read_timeout(Some(common::WAIT)).unwrap();
        let mut said = String::new();
        s.read_to_string(&mut said).expect("closed at its deadline");
        assert!(said.contains("timed out"), "{said}");
    }
}

/// `cmd` run with umask 022 (the common one, under which files are created
/// world-readable unless their creator says otherwise).
fn with_umask_022(cmd: &mut Command) -> &mut Command {
    use std::os::unix::process::CommandExt;
    // SAFETY: umask is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            libc::umask(0o022);
            Ok(())
        })
    }
}

/// `chat-server ARGS` run in `cwd` with umask 022, which must succeed; its stdout.
fn cli_in(cwd: &Path, args: &[&str]) -> String {
    let out = with_umask_022(
        Command::new(env!("CARGO_BIN_EXE_chat-server"))
            .args(FAST_HASH)
            .args(args)
            .current_dir(cwd)
            .stdin(Stdio::null()),
    )
    .output()
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{args:?}: {}{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[test]
fn files_are_private_whatever_the_umask_and_backups_go_where_the_caller_is() {
    let top = tempfile::tempdir().unwrap();
    let d = top.path().join("data");
    let data = d.to_str().unwrap();
    let child = with_umask_022(
        ServerProc::command(&d, "127.0.0.1:0")
            .stdout(Stdio::null())
            .stderr(Stdio::piped()),
    )
    .spawn()
    .unwrap();
    let server = ServerProc::adopt(child, &d);
    assert_eq!(mode(&d), 0o700, "the data directory");
    assert_eq!(mode(&d.join("chat.redb")), 0o600, "the data file");
    assert_eq!(mode(&d.join("admin.sock")), 0o600, "the admin socket");

    // A relative path is the caller's: the copy lands in the command's working
    // directory, not the server's.
    let caller = tempfile::tempdir().unwrap();
    let said = cli_in(caller.path(), &["backup", "running.redb", "--data", data]);
    assert!(said.contains("bytes copied"), "{said}");
    // The size said is the written file's.
    let n: u64 = said.split_whitespace().next().unwrap().parse().unwrap();
    let written = std::fs::metadata(caller.path().join("running.redb")).unwrap();
    assert_eq!(n, written.len(), "{said}");
    assert_eq!(mode(&caller.path().join("running.redb")), 0o600, "a backup");
    assert!(!Path::new("running.redb").exists() && !d.join("running.redb").exists());
    // The admin socket itself takes no relative path (it would be the server's).
    let mut s = UnixStream::connect(d.join("admin.sock")).unwrap();
    s.write_all(b"{\"cmd\":\"backup\",\"path\":\"raw.redb\"}\n")
        .unwrap();
    let mut said = String::new();
    s.read_to_string(&mut said).unwrap();
    assert!(
        said.contains(r#""ok":false"#) && said.contains("relative"),
        "{said}"
    );
    assert!(!Path::new("raw.redb").exists() && !d.join("raw.redb").exists());

    assert!(server.signal_and_wait(libc::SIGTERM).success());
    // Stopped: the command copies the file itself, privately too.
    cli_in(caller.path(), &["backup", "stopped.redb", "--data", data]);
    assert_eq!(mode(&caller.path().join("stopped.redb")), 0o600, "a backup");
    // A data file left readable by others (by an older version) is made private when
    // next opened.
    std::fs::set_permissions(d.join("chat.redb"), std::fs::Permissions::from_mode(0o644)).unwrap();
    cli_in(caller.path(), &["users", "list", "--data", data]);
    assert_eq!(mode(&d.join("chat.redb")), 0o600);

    // The first account added to a stopped server creates the directory and the file.
    let fresh = top.path().join("fresh/data");
    let out = with_umask_022(
        Command::new(env!("CARGO_BIN_EXE_chat-server"))
            .args(FAST_HASH)
            .args([
                "users",
                "add",
                "1",
                "ann",
                "--create",
                "--data",
                fresh.to_str().unwrap(),
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    )
    .spawn()
    .unwrap();
    let mut out = out;
    out.stdin.take().unwrap().write_all(b"pw1\n").unwrap();
    assert!(out.wait().unwrap().success());
    assert_eq!(mode(&fresh), 0o700);
    assert_eq!(mode(&top.path().join("fresh")), 0o700);
    assert_eq!(mode(&fresh.join("chat.redb")), 0o600);
}

#[test]
fn who_is_online_machine_readable_lists_and_a_kick_without_a_ban() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    users(d, &["add", "1", "ann", "--create"], "pw1\n");
    users(d, &["add", "2", "bob"], "pw2\n");
    users(d, &["ban", "2"], "");
    let list: serde_json::Value = serde_json::from_str(&users(d, &["list", "--json"], "")).unwrap();
    assert_eq!(
        list,
        json!([
            {"id": 1, "name": "ann", "banned": false},
            {"id": 2, "name": "bob", "banned": true},
        ])
    );
    users(d, &["unban", "2"], "");
    // Stopped: nobody is online, nobody to kick, and the command says why.
    assert!(users_fails(d, &["online"], "").contains("no server is running"));
    assert!(users_fails(d, &["kick", "1"], "").contains("no server is running"));

    let server = ServerProc::start(d, &[]);
    let mut ann = logged_in(&server, 1, "pw1");
    let mut bob = logged_in(&server, 2, "pw2");
    ann.wait_notice(2, 0);
    let online: Vec<serde_json::Value> =
        serde_json::from_str(&users(d, &["online", "--json"], "")).unwrap();
    let ids: Vec<i64> = online.iter().map(|l| l["id"].as_i64().unwrap()).collect();
    assert_eq!(ids, [1, 2]);
    assert_eq!(online[0]["name"], "ann");
    let addr: std::net::SocketAddr = online[0]["addr"].as_str().unwrap().parse().unwrap();
    assert!(addr.ip().is_loopback(), "{addr}");
    let table = users(d, &["online"], "");
    assert!(
        table.contains("ann") && table.trim_end().ends_with("2 online"),
        "{table}"
    );

    let said = users(d, &["kick", "1"], "");
    assert!(
        said.contains("user 1 kicked") && said.contains("1 session closed"),
        "{said}"
    );
    let got = ann.expect_closed();
    assert_eq!(got[0].kind, "ErrorResMes", "{got:?}");
    assert_eq!(got[0].data["code"], 401);
    assert!(
        got[0].data["error"]
            .as_str()
            .unwrap()
            .contains("an operator closed this session"),
        "{got:?}"
    );
    bob.wait_notice(1, 1);
    // Not a ban: the same password logs in again.
    let _ann = logged_in(&server, 1, "pw1");
    assert!(users_fails(d, &["kick", "9"], "").contains("no such user: 9"));
}
