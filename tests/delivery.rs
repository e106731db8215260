//! What a private message's answer promises, against the real server: 200 only for
//! what reached the recipient's socket, 202 for what is stored, nothing lost.

mod common;

use std::collections::BTreeSet;
use std::io::Read;

use common::*;
use serde_json::json;

/// Notes the answer `g` (if it is one) to a message whose `msgId` is `m<number>`.
fn note(g: &Got, ok: &mut BTreeSet<usize>, stored: &mut BTreeSet<usize>) {
    if g.kind != "SmsResMes" {
        return;
    }
    let id: usize = g.data["msgId"].as_str().unwrap()[1..].parse().unwrap();
    match g.data["code"].as_i64().unwrap() {
        200 => assert!(ok.insert(id), "{id} answered twice"),
        202 => assert!(stored.insert(id), "{id} answered twice"),
        other => panic!("message {id}: {other}"),
    }
}

#[test]
fn a_recipient_that_stops_reading_loses_nothing_answered_200() {
    let dir = tempfile::tempdir().unwrap();
    let s = ServerProc::start(dir.path(), &["--msg-rate", "0", "--max-outbuf", "262144"]);
    let mut sender = s.connect();
    sender.join(1);
    // A small receive buffer: the server's writes to user 2 block sooner.
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    sock.connect(&s.addr.into()).unwrap();
    let mut stalled = SeedClient::from_stream(sock.into());
    stalled.join(2);
    sender.recv_until("NotifyUserStatusMes");
    // From here on user 2 reads nothing. The messages go in batches, each handled
    // (a ping's answer comes after them) before the next is sent: user 2's socket
    // fills over several turns, then its queue in the server, until it is dropped.
    let n = 3000;
    let body = "q".repeat(2000);
    let (mut ok, mut stored) = (BTreeSet::new(), BTreeSet::new());
    for batch in 0..n / 20 {
        for i in batch * 20..(batch + 1) * 20 {
            sender.send(
                "SmsPrivateMes",
                json!({"toUserId": 2, "content": format!("{i:04} {body}"), "msgId": format!("m{i}")}),
            );
        }
        sender.send("PingMes", json!({}));
        let (_, before) = sender.recv_until("PongMes");
        for g in &before {
            note(g, &mut ok, &mut stored);
        }
    }
    // Every message is answered: 200 if written to user 2's socket, 202 if stored.
    while ok.len() + stored.len() < n {
        note(&sender.recv(), &mut ok, &mut stored);
    }
    assert!(!stored.is_empty(), "user 2 was dropped: some were stored");

    // What was answered 200 is in user 2's socket, whole.
    let mut bytes = Vec::new();
    let _ = stalled.stream.read_to_end(&mut bytes);
    let mut got = BTreeSet::new();
    let mut rest = &bytes[..];
    while rest.len() >= 4 {
        let len = u32::from_be_bytes(rest[..4].try_into().unwrap()) as usize;
        if rest.len() < 4 + len {
            break;
        }
        let g = Got::from_envelope(&rest[4..4 + len]);
        if g.kind == "SmsPrivateMes" {
            let content = g.data["content"].as_str().unwrap();
            got.insert(content[..4].parse::<usize>().unwrap());
        }
        rest = &rest[4 + len..];
    }
    assert!(
        ok.is_subset(&got),
        "answered 200 but never reached the socket: {:?}",
        ok.difference(&got).collect::<Vec<_>>()
    );

    // What was stored comes at the next login, each once.
    let mut back = s.connect();
    let r = back.login_1mib(2, "pw2");
    assert_eq!(r.data["code"], 200);
    let mut later = BTreeSet::new();
    while later.len() < stored.len() {
        let g = back.recv();
        if g.kind == "SmsPrivateMes" {
            assert_eq!(g.data["offline"], true);
            let content = g.data["content"].as_str().unwrap();
            assert!(later.insert(content[..4].parse::<usize>().unwrap()));
        }
    }
    assert_eq!(later, stored);
}
