//! Stored password hashes cannot stall logins or shutdown: a record whose hash asks
//! argon2 for far more than the server's limits is refused as a wrong password with
//! nothing hashed.

mod common;

use chat::job::auth::{HashParams, Hasher};
use chat::store::Store;
use chat::store::embedded::EmbeddedStore;
use common::*;

/// A PHC string of `password` asking for 64 MiB and a million passes (hours of one
/// core to check), as a shared store or an import may hold.
fn hostile_hash(password: &str) -> String {
    let cheap = Hasher::new(HashParams {
        memory_kib: 64,
        passes: 1,
    })
    .unwrap();
    let phc = cheap.hash(password).unwrap();
    let hostile = phc.replace("$m=64,t=1,", "$m=65536,t=1000000,");
    assert_ne!(hostile, phc);
    hostile
}

#[test]
fn a_hostile_stored_hash_stalls_neither_other_logins_nor_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let s = ServerProc::start(dir.path(), &["--workers", "2"]);
    for id in [1, 2] {
        let mut c = s.connect();
        assert_eq!(c.register(id, "pw", "u").data["code"], 200);
    }
    assert_eq!(s.signal_and_wait(libc::SIGTERM).code(), Some(0));
    // User 1's record gets the hostile hash, written to the store directly.
    {
        let mut store = EmbeddedStore::open(dir.path()).unwrap();
        let hostile = hostile_hash("pw");
        let found = store
            .modify_user(1, &mut |r| r.pwd_hash = hostile.clone())
            .unwrap();
        assert!(found.is_some());
    }
    let mut s = ServerProc::start(dir.path(), &["--workers", "2"]);
    // Two anonymous attempts (one per hashing thread), wrong password and right: both
    // refused as a wrong password, and logged for the operator.
    let mut attackers: Vec<_> = (0..2).map(|_| s.connect()).collect();
    for (c, pwd) in attackers.iter_mut().zip(["guess", "pw"]) {
        c.send(
            "LoginMes",
            serde_json::json!({"userId": 1, "userPwd": pwd, "userName": ""}),
        );
    }
    for c in &mut attackers {
        let got = c.recv_until("LoginResMes").0;
        assert_eq!(got.data["code"], 403, "{got:?}");
    }
    let line = s.wait_log("user 1: login refused: the stored password hash asks for");
    assert!(line.contains("65536 KiB and 1000000 passes"), "{line}");
    assert!(
        !line.contains("$argon2"),
        "the hash is never logged: {line}"
    );
    // Another user's login is answered (and succeeds) meanwhile.
    let mut other = s.connect();
    assert_eq!(other.login(2, "pw").data["code"], 200);
    // And the server stops on SIGTERM (the harness fails a server that does not).
    assert_eq!(s.signal_and_wait(libc::SIGTERM).code(), Some(0));
}

#[test]
fn shutdown_does_not_wait_for_a_hash_under_way() {
    use std::sync::Arc;
    use std::time::Duration;

    use chat::reactor::{ServerConfig, spawn};
    use chat::store::StoreFactory;
    use chat::store::mem::MemStore;

    let store = MemStore::new();
    let factory: StoreFactory = Arc::new(move || Ok(Box::new(store.clone()) as Box<dyn Store>));
    let mut cfg = ServerConfig {
        workers: 1,
        // A hash of billions of passes: it does not end while the test runs.
        hash: HashParams {
            memory_kib: 8,
            passes: u32::MAX,
        },
        ..ServerConfig::default()
    };
    // Its cost given, so that starting the server does not time one.
    cfg.hub.hash_cost = Some(Duration::from_millis(1));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let running = spawn(listener, factory, cfg).unwrap();
    // A registration the hashing thread takes up, and one queued behind it.
    let mut a = SeedClient::connect(running.addr);
    let mut b = SeedClient::connect(running.addr);
    for (c, id) in [(&mut a, 1), (&mut b, 2)] {
        c.send(
            "RegisterMes",
            serde_json::json!({"user": {"userId": id, "userPwd": "pw", "userName": "u"}}),
        );
    }
    // The loop has read them once it answers a third connection.
    let mut c = SeedClient::connect(running.addr);
    c.send("PingMes", serde_json::json!({}));
    assert_eq!(c.recv().kind, "PongMes");
    // Stopping returns after the grace for output, not after the hash.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(running.shutdown().map_err(|e| e.to_string()));
    });
    let stopped = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the server did not stop (30 s)");
    assert_eq!(stopped, Ok(()));
}
