//! "200 means written", checked against a recipient that stops reading: a sender sends
//! numbered private messages until every one is answered, and what was answered 200
//! must be in the recipient's socket, what was answered 202 must come back once at the
//! recipient's next login.

use std::collections::BTreeSet;
use std::io::Read;

use super::{Got, SeedClient};

/// A client logged in as `id` on `addr` with a 4 KiB receive buffer, so that the
/// server's writes to it block soon once it stops reading.
pub fn small_buffered(addr: std::net::SocketAddr, id: i64) -> SeedClient {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    sock.connect(&addr.into()).unwrap();
    let mut c = SeedClient::from_stream(sock.into());
    c.join(id);
    c
}

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

/// `sender` sends `n` private messages of 2,000 bytes to user `to`, numbered in their
/// first four characters and in their `msgId`, in batches each handled (a ping's answer
/// comes after them) before the next is sent, so that the recipient's socket fills over
/// several turns, then its queue in the server. Returns the numbers answered 200 and
/// those answered 202, once every message is answered.
pub fn send_to_stalled(
    sender: &mut SeedClient,
    to: i64,
    n: usize,
) -> (BTreeSet<usize>, BTreeSet<usize>) {
    let body = "q".repeat(2000);
    let (mut ok, mut stored) = (BTreeSet::new(), BTreeSet::new());
    for batch in 0..n / 20 {
        for i in batch * 20..(batch + 1) * 20 {
            sender.send(
                "SmsPrivateMes",
                serde_json::json!({"toUserId": to, "content": format!("{i:04} {body}"), "msgId": format!("m{i}")}),
            );
        }
        sender.send("PingMes", serde_json::json!({}));
        let (_, before) = sender.recv_until("PongMes");
        for g in &before {
            note(g, &mut ok, &mut stored);
        }
    }
    // Every message is answered: 200 if written to the socket, 202 if stored.
    while ok.len() + stored.len() < n {
        note(&sender.recv(), &mut ok, &mut stored);
    }
    (ok, stored)
}

/// The numbers of the private messages whole in what `stalled` had not read, up to
/// the server's close.
pub fn numbers_in_socket(stalled: &mut SeedClient) -> BTreeSet<usize> {
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
    got
}

/// The numbers of the stored messages `back` (just logged in as the recipient) gets,
/// `count` of them, each once.
pub fn numbers_stored(back: &mut SeedClient, count: usize) -> BTreeSet<usize> {
    let mut later = BTreeSet::new();
    while later.len() < count {
        let g = back.recv();
        if g.kind == "SmsPrivateMes" {
            assert_eq!(g.data["offline"], true);
            let content = g.data["content"].as_str().unwrap();
            assert!(later.insert(content[..4].parse::<usize>().unwrap()));
        }
    }
    later
}
