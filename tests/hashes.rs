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
