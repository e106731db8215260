//! What stops a node from joining a cluster at start, with a sentence and a non-zero
//! exit: a node of the same id alive on that Redis, or credentials Redis refuses. Each
//! test starts its own `redis-server` (free loopback port, temporary directory).

mod common;

use std::io::Read;
use std::process::{Child, Stdio};
use std::time::Instant;

use common::*;

/// A node that must not start: waits for it to exit and returns its status and log.
fn refused(child: Child) -> (std::process::ExitStatus, String) {
    let mut child = child;
    let mut err = child.stderr.take().expect("stderr is piped");
    let reader = std::thread::spawn(move || {
        let mut log = String::new();
        let _ = err.read_to_string(&mut log);
        log
    });
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the server did not stop: {}", reader.join().unwrap());
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    (status, reader.join().unwrap())
}

/// Spawns a node on `url` in `data`, its log piped.
fn spawn_node(url: &str, data: &std::path::Path, extra: &[&str]) -> Child {
    ServerProc::command(data, "127.0.0.1:0")
        .args(["--redis", url, "--node-timeout", "2"])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start chat-server")
}

#[test]
fn a_second_node_with_a_live_node_s_id_refuses_to_start() {
    let r = RedisProc::start(false);
    let (bee, _db) = r.node(&["--node-id", "bee"]);
    let dir = tempfile::tempdir().unwrap();
    let (status, log) = refused(spawn_node(&r.url(), dir.path(), &["--node-id", "bee"]));
    assert!(!status.success(), "{log}");
    assert!(
        log.contains("another node with --node-id bee is alive on Redis at"),
        "{log}"
    );
    // The live one goes on, alone under its name.
    let mut one = online(&bee, 1);
    one.expect_nothing_pending();
    // Killed and started again at once under its name: its last beat is recent but
    // never renewed, so the new run takes its place.
    bee.kill_hard();
    let _again = r.node(&["--node-id", "bee"]);
}

#[test]
fn credentials_redis_refuses_stop_the_start_without_showing_the_password() {
    let r = RedisProc::start_with(false, &["--requirepass", "s3cret-pw"]);
    let dir = tempfile::tempdir().unwrap();
    let base = format!("127.0.0.1:{}", r.port);
    for url in [
        format!("redis://:wrong-pw@{base}/0"),
        format!("redis://{base}/0"),
    ] {
        let (status, log) = refused(spawn_node(&url, dir.path(), &[]));
        assert!(!status.success(), "{url}: {log}");
        assert!(
            log.contains("refused this server's credentials"),
            "{url}: {log}"
        );
        assert!(!log.contains("wrong-pw"), "{log}");
    }
    // The right password: the node starts, and the password is in no log line.
    let good = format!("redis://:s3cret-pw@{base}/0");
    let mut node = ServerProc::start(dir.path(), &["--redis", &good]);
    node.wait_log("cluster: linked to Redis");
    let _ = online(&node, 1);
    assert!(node.saw_log("linked"));
    assert!(
        node.log_lines.iter().all(|l| !l.contains("s3cret-pw")),
        "{:?}",
        node.log_lines
    );
}
