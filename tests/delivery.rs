//! What a private message's answer promises, against the real server: 200 only for
//! what reached the recipient's socket, 202 for what is stored, nothing lost.

mod common;

use common::*;

#[test]
fn a_recipient_that_stops_reading_loses_nothing_answered_200() {
    let dir = tempfile::tempdir().unwrap();
    let s = ServerProc::start(dir.path(), &["--msg-rate", "0", "--max-outbuf", "262144"]);
    let mut sender = s.connect();
    sender.join(1);
    // A small receive buffer: the server's writes to user 2 block sooner.
    let mut stalled = delivery::small_buffered(s.addr, 2);
    sender.recv_until("NotifyUserStatusMes");
    // From here on user 2 reads nothing: its socket fills, then its queue in the
    // server, until it is dropped.
    let (ok, stored) = delivery::send_to_stalled(&mut sender, 2, 3000);
    assert!(!stored.is_empty(), "user 2 was dropped: some were stored");
    // What was answered 200 is in user 2's socket, whole.
    let got = delivery::numbers_in_socket(&mut stalled);
    assert!(
        ok.is_subset(&got),
        "answered 200 but never reached the socket: {:?}",
        ok.difference(&got).collect::<Vec<_>>()
    );

    // What was stored comes at the next login, each once.
    let mut back = s.connect();
    let r = back.login_1mib(2, "pw2");
    assert_eq!(r.data["code"], 200);
    let later = delivery::numbers_stored(&mut back, stored.len());
    assert_eq!(later, stored);
}
