//! Conformance checks that every backend must pass, so that they behave the same.
//! Run by each backend's tests (the Redis one from `tests/`, hence public). Test-only
//! code: built for the crate's own tests and with the `testkit` feature, which the
//! integration tests turn on; never part of the shipped server.
#![forbid(unsafe_code)]

use super::*;

fn user(id: i64, name: &str) -> UserRecord {
    UserRecord {
        id,
        name: name.into(),
        pwd_hash: format!("$argon2id$fake-{id}"),
        reg_token: format!("token-{id}-{name}"),
        ..UserRecord::default()
    }
}

/// A message from `from` (named `u<from>`) to `to`.
pub fn msg(from: i64, to: i64, content: &str) -> OfflineMsg {
    OfflineMsg {
        from,
        from_name: format!("u{from}"),
        to,
        content: content.into(),
        time: 1000,
    }
}

/// Pushes with a new server-chosen id, as a message without `msgId` is.
fn push(s: &mut dyn Store, m: &OfflineMsg) -> Option<u64> {
    s.push_offline(m, &OfflineId::fresh(), 0).unwrap()
}

fn client_id(id: &str) -> OfflineId {
    OfflineId::Client(id.into())
}

/// Runs every check against the store `make` returns; `make` is called more than
/// once and must return handles onto one shared, initially empty store.
pub fn run(make: &dyn Fn() -> Box<dyn Store>) {
    users(&mut *make());
    registration_repeats(&mut *make(), &mut *make());
    offline(&mut *make(), &mut *make());
    offline_dedupe(&mut *make(), &mut *make());
    history(&mut *make(), &mut *make());
    history_after(&mut *make(), &mut *make());
    stored_history(&mut *make(), &mut *make());
    operators(&mut *make(), &mut *make());
}

/// A history entry of the group (`to` none) or a private one, not yet numbered.
pub fn entry(from: i64, to: Option<i64>, content: &str) -> HistoryEntry {
    HistoryEntry {
        id: 0,
        time: 1000,
        user_id: from,
        user_name: format!("u{from}"),
        content: content.into(),
        to_user_id: to,
    }
}

fn contents(got: &(Vec<HistoryEntry>, bool)) -> (Vec<&str>, bool) {
    (got.0.iter().map(|e| e.content.as_str()).collect(), got.1)
}

/// Reading forwards: the entries after an id, oldest first, `more` while newer remain.
/// (The store may hold the other checks' conversations: a pair of its own here.)
fn history_after(a: &mut dyn Store, b: &mut dyn Store) {
    let conv = Conv::pair(71, 70);
    assert_eq!(a.read_history_after(conv, 0, 10).unwrap(), (vec![], false));
    a.append_history(
        &[
            entry(70, Some(71), "p1"),
            entry(70, Some(72), "q1"),
            entry(71, Some(70), "p2"),
        ],
        4,
    )
    .unwrap();
    for c in ["p3", "p4", "p5"] {
        b.append_history(&[entry(70, Some(71), c)], 4).unwrap();
    }
    // The last four kept (p2..p5): from the start, two at a time.
    let first = b.read_history_after(conv, 0, 2).unwrap();
    assert_eq!(contents(&first), (vec!["p2", "p3"], true));
    assert_eq!(first.0.iter().map(|e| e.id).collect::<Vec<_>>(), [2, 3]);
    assert_eq!(
        first.0[0],
        HistoryEntry {
            id: 2,
            ..entry(71, Some(70), "p2")
        }
    );
    let next = a.read_history_after(Conv::pair(70, 71), 3, 2).unwrap();
    assert_eq!(contents(&next), (vec!["p4", "p5"], false));
    assert_eq!(
        contents(&a.read_history_after(conv, 4, 100).unwrap()),
        (vec!["p5"], false)
    );
    assert_eq!(
        contents(&a.read_history_after(conv, 5, 100).unwrap()),
        (vec![], false)
    );
    // Nobody else's.
    assert_eq!(
        contents(&b.read_history_after(Conv::pair(70, 72), 0, 10).unwrap()),
        (vec!["q1"], false)
    );
}

fn history(a: &mut dyn Store, b: &mut dyn Store) {
    assert_eq!(a.read_history(Conv::Group, 0, 10).unwrap(), (vec![], false));
    // One batch over several conversations, then single appends from either handle.
    a.append_history(
        &[
            entry(1, None, "g1"),
            entry(1, Some(2), "p1"),
            entry(2, None, "g2"),
            entry(2, Some(1), "p2"),
            entry(1, Some(3), "q1"),
        ],
        4,
    )
    .unwrap();
    a.append_history(&[entry(3, None, "g3")], 4).unwrap();
    b.append_history(&[entry(3, None, "g4")], 4).unwrap();
    a.append_history(&[entry(3, None, "g5")], 4).unwrap();
    // The newest page, oldest first, numbered 1, 2, ... within the conversation.
    let page = b.read_history(Conv::Group, 0, 2).unwrap();
    assert_eq!(contents(&page), (vec!["g4", "g5"], true));
    assert_eq!(page.0.iter().map(|e| e.id).collect::<Vec<_>>(), [4, 5]);
    assert_eq!(
        page.0[0],
        HistoryEntry {
            id: 4,
            ..entry(3, None, "g4")
        }
    );
    // Paging back: only ids below `before`; the last `keep` (4) are kept.
    let older = a.read_history(Conv::Group, 4, 2).unwrap();
    assert_eq!(contents(&older), (vec!["g2", "g3"], false));
    assert_eq!(older.0[0].id, 2);
    assert_eq!(
        contents(&a.read_history(Conv::Group, 0, 100).unwrap()),
        (vec!["g2", "g3", "g4", "g5"], false)
    );
    assert_eq!(
        contents(&a.read_history(Conv::Group, 2, 100).unwrap()),
        (vec![], false)
    );
    assert_eq!(
        contents(&a.read_history(Conv::Group, 1_000, 1).unwrap()),
        (vec!["g5"], true)
    );
    // A pair's conversation holds both directions, and nobody else's.
    let pair = b.read_history(Conv::pair(2, 1), 0, 10).unwrap();
    assert_eq!(contents(&pair), (vec!["p1", "p2"], false));
    assert_eq!(pair.0.iter().map(|e| e.id).collect::<Vec<_>>(), [1, 2]);
    assert_eq!(pair.0[1].to_user_id, Some(1));
    assert_eq!(pair.0[1].user_id, 2);
    assert_eq!(
        contents(&a.read_history(Conv::pair(3, 1), 0, 10).unwrap()),
        (vec!["q1"], false)
    );
    assert_eq!(
        a.read_history(Conv::pair(2, 3), 0, 10).unwrap(),
        (vec![], false)
    );
    // Trimmed as new ones come: a pair keeps its last `keep` too.
    let many: Vec<HistoryEntry> = (0..6)
        .map(|i| entry(1, Some(2), &format!("m{i}")))
        .collect();
    a.append_history(&many, 3).unwrap();
    let pair = b.read_history(Conv::pair(1, 2), 0, 10).unwrap();
    assert_eq!(contents(&pair), (vec!["m3", "m4", "m5"], false));
    assert_eq!(pair.0.iter().map(|e| e.id).collect::<Vec<_>>(), [6, 7, 8]);
    // Nothing to append is no error.
    a.append_history(&[], 3).unwrap();
    // Many at once (more than a Redis store's slice): numbered on without a gap,
    // in order.
    let lots: Vec<HistoryEntry> = (0..1_100)
        .map(|i| entry(5, Some(6), &format!("l{i}")))
        .collect();
    a.append_history(&lots, 2_000).unwrap();
    let (got, more) = b.read_history(Conv::pair(5, 6), 0, 2_000).unwrap();
    assert!(!more);
    assert!(got.iter().map(|e| e.id).eq(1..=1_100));
    assert!(got.iter().zip(&lots).all(|(g, l)| g.content == l.content));
    // An append longer than what is kept, two conversations interleaved: each keeps
    // its own last `keep`, numbered as if every entry had been written, and the
    // next append numbers on.
    let mixed: Vec<HistoryEntry> = (0..30)
        .map(|i| match i % 3 {
            0 => entry(7, Some(8), &format!("x{i}")),
            _ => entry(6, Some(5), &format!("y{i}")),
        })
        .collect();
    a.append_history(&mixed, 4).unwrap();
    let page = |s: &mut dyn Store, conv| {
        let (got, more) = s.read_history(conv, 0, 100).unwrap();
        assert!(!more);
        got.into_iter()
            .map(|e| (e.id, e.content))
            .collect::<Vec<_>>()
    };
    let want = |v: &[(u64, &str)]| {
        v.iter()
            .map(|&(id, c)| (id, c.to_string()))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        page(b, Conv::pair(5, 6)),
        want(&[
            (1_117, "y25"),
            (1_118, "y26"),
            (1_119, "y28"),
            (1_120, "y29")
        ])
    );
    assert_eq!(
        page(b, Conv::pair(7, 8)),
        want(&[(7, "x18"), (8, "x21"), (9, "x24"), (10, "x27")])
    );
    a.append_history(&[entry(8, Some(7), "x30")], 4).unwrap();
    assert_eq!(
        page(b, Conv::pair(7, 8)),
        want(&[(8, "x21"), (9, "x24"), (10, "x27"), (11, "x30")])
    );
}

/// A private message stored for later joins its pair's history in the same write,
/// once whatever is resent, numbered with the entries appended around it.
fn stored_history(a: &mut dyn Store, b: &mut dyn Store) {
    assert!(a.create_user(&user(50, "kim")).unwrap());
    assert!(a.create_user(&user(51, "lou")).unwrap());
    let page = |s: &mut dyn Store| -> Vec<(u64, String)> {
        let (got, _) = s.read_history(Conv::pair(50, 51), 0, 100).unwrap();
        got.into_iter().map(|e| (e.id, e.content)).collect()
    };
    let want = |v: &[(u64, &str)]| -> Vec<(u64, String)> {
        v.iter().map(|&(id, c)| (id, c.to_string())).collect()
    };
    a.append_history(&[entry(50, Some(51), "live")], 10)
        .unwrap();
    let id = client_id("h-1");
    let seq = a.push_offline(&msg(50, 51, "stored"), &id, 10).unwrap();
    assert!(seq.is_some());
    // Resent (its answer lost) from any handle: stored once, in the history once.
    assert_eq!(
        b.push_offline(&msg(50, 51, "stored"), &id, 10).unwrap(),
        seq
    );
    assert_eq!(
        a.push_offline(&msg(50, 51, "stored"), &id, 10).unwrap(),
        seq
    );
    assert_eq!(page(b), want(&[(1, "live"), (2, "stored")]));
    // History off: stored, not in the history.
    let off = client_id("h-2");
    assert!(
        a.push_offline(&msg(50, 51, "quiet"), &off, 0)
            .unwrap()
            .is_some()
    );
    // No such user: nothing stored, no history.
    assert_eq!(a.push_offline(&msg(50, 97, "x"), &off, 10).unwrap(), None);
    let (none, _) = b.read_history(Conv::pair(50, 97), 0, 10).unwrap();
    assert!(none.is_empty());
    // Trimmed to what is kept, and appends number on.
    let reply = client_id("h-3");
    assert!(
        b.push_offline(&msg(51, 50, "reply"), &reply, 2)
            .unwrap()
            .is_some()
    );
    assert_eq!(page(a), want(&[(2, "stored"), (3, "reply")]));
    b.append_history(&[entry(51, Some(50), "after")], 10)
        .unwrap();
    assert_eq!(page(a), want(&[(2, "stored"), (3, "reply"), (4, "after")]));
}

/// What the operators' commands need: list, modify in place, remove.
fn operators(a: &mut dyn Store, b: &mut dyn Store) {
    assert!(a.create_user(&user(40, "hal")).unwrap());
    assert!(a.create_user(&user(41, "ida")).unwrap());
    let listed: Vec<(i64, String)> = b
        .list_users()
        .unwrap()
        .into_iter()
        .filter(|u| u.id == 40 || u.id == 41)
        .map(|u| (u.id, u.name))
        .collect();
    assert_eq!(listed, [(40, "hal".to_string()), (41, "ida".to_string())]);
    let ids: Vec<i64> = a.list_users().unwrap().iter().map(|u| u.id).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "sorted by id: {ids:?}");
    // Modified in place, every other field kept.
    let got = b
        .modify_user(40, &mut |r| r.banned = true)
        .unwrap()
        .unwrap();
    assert!(got.banned);
    let back = a.get_user(40).unwrap().unwrap();
    assert!(back.banned);
    assert_eq!(back.reg_token, user(40, "hal").reg_token);
    assert_eq!(a.modify_user(49, &mut |r| r.banned = true).unwrap(), None);
    assert!(
        b.modify_user(40, &mut |r| r.banned = false)
            .unwrap()
            .is_some()
    );
    assert!(!a.get_user(40).unwrap().unwrap().banned);
    // Private history with 40 on either side of the pair, and some that is not.
    a.append_history(
        &[
            entry(40, Some(41), "hal to ida"),
            entry(39, Some(40), "39 to hal"),
            entry(40, None, "hal to all"),
            entry(41, Some(42), "ida to 42"),
            entry(41, Some(400), "ida to 400"),
        ],
        10,
    )
    .unwrap();
    // Removed with its offline messages; a removal of nobody says so.
    push(a, &msg(41, 40, "for hal")).unwrap();
    assert!(b.remove_user(40).unwrap());
    assert_eq!(a.get_user(40).unwrap(), None);
    assert!(a.fetch_offline(40, 10).unwrap().is_empty());
    assert!(!a.remove_user(40).unwrap());
    assert_eq!(push(a, &msg(41, 40, "too late")), None);
    // The id is free again, and starts with no messages: whoever registers it
    // next reads none of the removed user's private conversations.
    assert!(a.create_user(&user(40, "hal2")).unwrap());
    assert!(b.fetch_offline(40, 10).unwrap().is_empty());
    assert_eq!(
        b.read_history(Conv::pair(40, 41), 0, 10).unwrap(),
        (vec![], false)
    );
    assert_eq!(
        a.read_history(Conv::pair(39, 40), 0, 10).unwrap(),
        (vec![], false)
    );
    // Nobody else's conversation goes, and the group's history stays.
    assert_eq!(
        contents(&a.read_history(Conv::pair(41, 42), 0, 10).unwrap()),
        (vec!["ida to 42"], false)
    );
    assert_eq!(
        contents(&a.read_history(Conv::pair(41, 400), 0, 10).unwrap()),
        (vec!["ida to 400"], false)
    );
    assert!(
        contents(&a.read_history(Conv::Group, 0, 100).unwrap())
            .0
            .contains(&"hal to all")
    );
    // A new conversation of the id goes on numbering after the old one, so that
    // a client that saw the old entries takes none of the new for one of them.
    a.append_history(&[entry(41, Some(40), "ida to hal2")], 10)
        .unwrap();
    let fresh = b.read_history(Conv::pair(40, 41), 0, 10).unwrap();
    assert_eq!(contents(&fresh), (vec!["ida to hal2"], false));
    assert!(fresh.0[0].id > 1, "numbered after the removed entries");
    assert_eq!(a.get_user(41).unwrap().unwrap().name, "ida");
}

/// The names [`Store::get_users`] finds for `ids`, in their order (`None`: none).
pub fn names(s: &mut dyn Store, ids: &[i64]) -> Vec<Option<String>> {
    s.get_users(ids)
        .unwrap()
        .into_iter()
        .map(|r| r.map(|r| r.name))
        .collect()
}

fn users(s: &mut dyn Store) {
    assert_eq!(s.get_user(1).unwrap(), None);
    assert!(s.create_user(&user(1, "ann")).unwrap());
    assert!(!s.create_user(&user(1, "impostor")).unwrap());
    assert_eq!(s.get_user(1).unwrap().unwrap().name, "ann");
    // Many at once: in the order asked, the missing ones as such.
    assert!(s.create_user(&user(5, "eve")).unwrap());
    assert_eq!(
        names(s, &[5, 4, 1, 5]),
        [
            Some("eve".into()),
            None,
            Some("ann".into()),
            Some("eve".into())
        ]
    );
    assert!(s.get_users(&[]).unwrap().is_empty());
    let mut up = user(1, "ann");
    up.pwd_hash = "$argon2id$new".into();
    s.update_user(&up).unwrap();
    assert_eq!(s.get_user(1).unwrap().unwrap().pwd_hash, "$argon2id$new");
    // Fields the server does not know are kept as they are, through an update too.
    let seed = UserRecord::from_json(
        r#"{"userId":2,"userPwd":"123456","userName":"Scott","userStatus":3,"sex":"m","extra":[1]}"#,
    )
    .unwrap();
    assert!(s.create_user(&seed).unwrap());
    let mut got = s.get_user(2).unwrap().unwrap();
    assert_eq!(got, seed);
    got.legacy_pwd.clear();
    got.pwd_hash = "$argon2id$v=19$m=64,t=1,p=1$c2FsdA$aGFzaA".into();
    s.update_user(&got).unwrap();
    let back = s.get_user(2).unwrap().unwrap();
    assert_eq!(back, got);
    let json: serde_json::Value = serde_json::from_str(&back.to_json()).unwrap();
    assert_eq!(json["userPwd"], "$argon2id$v=19$m=64,t=1,p=1$c2FsdA$aGFzaA");
    assert_eq!(
        (&json["userStatus"], &json["sex"], &json["extra"]),
        (
            &serde_json::json!(3),
            &serde_json::json!("m"),
            &serde_json::json!([1])
        )
    );
}

/// A registration repeated after its answer was lost is recognised by its token.
fn registration_repeats(a: &mut dyn Store, b: &mut dyn Store) {
    let first = user(20, "dee");
    assert!(a.create_user(&first).unwrap());
    assert!(
        b.create_user(&first).unwrap(),
        "the same registration again"
    );
    let mut other = user(20, "dee");
    other.reg_token = "someone-else".into();
    assert!(!b.create_user(&other).unwrap(), "another registration");
    let mut no_token = user(20, "dee");
    no_token.reg_token.clear();
    assert!(
        !a.create_user(&no_token).unwrap(),
        "no token proves nothing"
    );
    assert_eq!(a.get_user(20).unwrap().unwrap(), first);
}

fn offline(a: &mut dyn Store, b: &mut dyn Store) {
    assert!(a.create_user(&user(10, "bob")).unwrap());
    assert!(a.create_user(&user(11, "cy")).unwrap());
    assert_eq!(push(a, &msg(10, 99, "nobody")), None);
    let s1 = push(a, &msg(11, 10, "one")).unwrap();
    let s2 = push(b, &msg(11, 10, "two")).unwrap();
    let s3 = push(a, &msg(11, 10, "three")).unwrap();
    assert!(s1 < s2 && s2 < s3);
    // Oldest first, nothing removed by reading, limit respected, seen from any handle.
    let got = b.fetch_offline(10, 2).unwrap();
    let contents: Vec<&str> = got.iter().map(|m| m.msg.content.as_str()).collect();
    assert_eq!(contents, ["one", "two"]);
    assert_eq!(a.fetch_offline(10, 10).unwrap().len(), 3);
    assert_eq!(got[0].msg, msg(11, 10, "one"));
    // Ack removes up to and including `upto`, and is idempotent.
    a.ack_offline(10, got[1].seq).unwrap();
    b.ack_offline(10, got[1].seq).unwrap();
    let rest = a.fetch_offline(10, 10).unwrap();
    assert_eq!(rest.len(), 1);
    assert_eq!(rest[0].msg.content, "three");
    assert_eq!(rest[0].seq, s3);
    // New messages after an ack still get higher numbers.
    let s4 = push(a, &msg(11, 10, "four")).unwrap();
    assert!(s4 > s3);
    a.ack_offline(10, s4).unwrap();
    assert!(a.fetch_offline(10, 10).unwrap().is_empty());
    assert!(a.fetch_offline(11, 10).unwrap().is_empty());
}

fn offline_dedupe(a: &mut dyn Store, b: &mut dyn Store) {
    assert!(a.create_user(&user(30, "eve")).unwrap());
    assert!(a.create_user(&user(31, "fay")).unwrap());
    assert!(a.create_user(&user(32, "gus")).unwrap());
    let contents = |s: &mut dyn Store, u: i64| -> Vec<String> {
        let got = s.fetch_offline(u, 100).unwrap();
        got.into_iter().map(|m| m.msg.content).collect()
    };
    // A resend with the sender's msgId stores nothing new and returns the same seq,
    // from any handle.
    let id = client_id("m-1");
    let s1 = a
        .push_offline(&msg(31, 30, "hello"), &id, 0)
        .unwrap()
        .unwrap();
    assert_eq!(
        b.push_offline(&msg(31, 30, "hello"), &id, 0).unwrap(),
        Some(s1)
    );
    assert_eq!(
        a.push_offline(&msg(31, 30, "hello"), &id, 0).unwrap(),
        Some(s1)
    );
    assert_eq!(contents(a, 30), ["hello"]);
    // The same msgId from another sender, or to another recipient, is another
    // message; a server id equal to a client's msgId text is another id.
    let s2 = a
        .push_offline(&msg(32, 30, "from gus"), &id, 0)
        .unwrap()
        .unwrap();
    let s3 = a
        .push_offline(&msg(31, 32, "to gus"), &id, 0)
        .unwrap()
        .unwrap();
    let s4 = a
        .push_offline(
            &msg(31, 30, "server id"),
            &OfflineId::Server("m-1".into()),
            0,
        )
        .unwrap()
        .unwrap();
    assert!(s1 < s2 && s2 < s3 && s3 < s4, "{s1} {s2} {s3} {s4}");
    assert_eq!(contents(b, 30), ["hello", "from gus", "server id"]);
    // A server-chosen id repeated (the store's own retry) is idempotent too.
    let sid = OfflineId::fresh();
    let s5 = a
        .push_offline(&msg(31, 30, "retried"), &sid, 0)
        .unwrap()
        .unwrap();
    assert_eq!(
        b.push_offline(&msg(31, 30, "retried"), &sid, 0).unwrap(),
        Some(s5)
    );
    assert_eq!(contents(a, 30).len(), 4);
    // Delivered and removed, a resend within the window still stores nothing.
    a.ack_offline(30, s5).unwrap();
    assert_eq!(
        a.push_offline(&msg(31, 30, "hello"), &id, 0).unwrap(),
        Some(s1)
    );
    assert_eq!(
        b.push_offline(&msg(31, 30, "retried"), &sid, 0).unwrap(),
        Some(s5)
    );
    assert!(contents(a, 30).is_empty());
    // No such user, with an id: nothing stored, nothing remembered.
    let ghost = client_id("g");
    assert_eq!(a.push_offline(&msg(31, 99, "x"), &ghost, 0).unwrap(), None);
    assert!(a.create_user(&user(99, "late")).unwrap());
    let s6 = a
        .push_offline(&msg(31, 99, "x"), &ghost, 0)
        .unwrap()
        .unwrap();
    assert!(s6 > s5);
}
