//! The real `chat` binary driven through a pipe, against the real server (run in this
//! process on `127.0.0.1:0`), with a second, test-written seed-format client on the
//! other side. Both sides are checked.

mod common;

use common::{Chat, Peer, TestServer};

use serde_json::json;

#[test]
fn menus_messages_both_ways_and_clean_exit() {
    let server = TestServer::start();
    let addr = server.addr.to_string();
    let mut peer = Peer::register_and_login(server.addr, 200, "tiger");

    let mut chat = Chat::start(&addr);
    chat.expect("3  Exit");
    // Register through the menu, then log in.
    chat.type_lines(&["2", "100", "secret", "scott"]);
    chat.expect("Registered as user 100");
    chat.type_lines(&["1", "100", "secret"]);
    chat.expect("Logged in as scott (100)");
    chat.expect("Online now (2): scott (100), tiger (200)");
    let n = peer.recv_kind("NotifyUserStatusMes");
    assert_eq!(
        (n["userId"].clone(), n["status"].clone()),
        (json!(100), json!(0))
    );

    // Pushes are printed while the client sits at its menu.
    peer.send("SmsMes", json!({"content":"hello from tiger","userId":200}));
    chat.expect("[group] tiger (200): hello from tiger");
    peer.send(
        "SmsPrivateMes",
        json!({"toUserId":100,"content":"just for you"}),
    );
    chat.expect("[private] tiger (200): just for you");
    assert_eq!(peer.recv_kind("SmsResMes")["code"], 200);

    // Group message: the whole line, not just its first word.
    chat.type_lines(&["2", "hi there everyone"]);
    chat.expect("Sent to everyone online");
    let m = peer.recv_kind("SmsMes");
    assert_eq!(m["content"], "hi there everyone");
    assert_eq!(m["userId"], 100);
    assert_eq!(m["userName"], "scott");

    // Private message.
    chat.type_lines(&["3", "200", "a private word"]);
    chat.expect("Delivered to user 200");
    let p = peer.recv_kind("SmsPrivateMes");
    assert_eq!(
        (p["content"].clone(), p["userId"].clone()),
        (json!("a private word"), json!(100))
    );

    // Online list, kept current from pushes.
    let mut other = Peer::register_and_login(server.addr, 300, "cat");
    chat.expect("* cat (300) is online");
    chat.type_lines(&["1"]);
    chat.expect("Online now (3): scott (100), tiger (200), cat (300)");
    other.send("LogoutMes", json!({}));
    chat.expect("* cat (300) went offline");

    // Log out: the peer sees it; back at the main menu.
    chat.type_lines(&["4"]);
    chat.expect("Logged out.");
    assert_eq!(peer.recv_notify(100)["status"], 1);

    // A private message while logged out arrives at the next login, marked as such.
    peer.send(
        "SmsPrivateMes",
        json!({"toUserId":100,"content":"while you were away"}),
    );
    assert_eq!(peer.recv_kind("SmsResMes")["code"], 202);
    chat.type_lines(&["1", "100", "secret"]);
    chat.expect("Logged in as scott (100)");
    chat.expect("[private, sent while you were offline");
    // End of input: logged out, status 0.
    let (code, out, err) = chat.finish();
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(err.is_empty(), "nothing on stderr: {err}");
    assert_eq!(peer.recv_notify(100)["status"], 0);
    assert_eq!(peer.recv_notify(100)["status"], 1);
}

#[test]
fn refusals_read_as_plain_sentences() {
    let server = TestServer::start();
    let _peer = Peer::register_and_login(server.addr, 200, "tiger");
    let mut chat = Chat::start(&server.addr.to_string());
    chat.type_lines(&["1", "999", "x"]);
    chat.expect("Login failed: there is no user 999.");
    chat.type_lines(&["1", "200", "wrong"]);
    chat.expect("Login failed: wrong password.");
    chat.type_lines(&["2", "200", "pw", "someone"]);
    chat.expect("User id 200 is already taken.");
    chat.type_lines(&["1", "abc", "x"]);
    chat.expect("A user id is a positive whole number.");
    chat.type_lines(&["9"]);
    chat.expect("Please enter 1, 2 or 3.");
    chat.type_lines(&["3"]);
    chat.expect("Goodbye.");
    let (code, out, err) = chat.finish();
    assert_eq!(code, 0, "{out}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn server_down_and_connection_lost() {
    // Nothing listens on a port we just freed.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut chat = Chat::start(&port.to_string());
    chat.type_lines(&["1", "1", "x"]);
    chat.expect(&format!("Cannot reach the server at {port}"));
    let (code, out, err) = chat.finish();
    assert_eq!(code, 1, "{out}");
    assert!(!err.contains("panicked"), "{err}");

    let mut server = TestServer::start();
    let _peer = Peer::register_and_login(server.addr, 1, "one");
    let mut chat = Chat::start(&server.addr.to_string());
    chat.type_lines(&["2", "2", "pw", "two", "1", "2", "pw"]);
    chat.expect("Logged in as two (2)");
    server.stop();
    chat.expect("Connection to the server lost.");
    chat.type_lines(&["1"]);
    chat.expect("3  Exit");
    let (code, out, err) = chat.finish();
    assert_eq!(code, 0, "{out}");
    assert!(!err.contains("panicked"), "{err}");
}

/// Earlier group messages at login and page by page from the menu; the last lines of
/// a private conversation before writing in it.
#[test]
fn earlier_messages_at_login_and_on_request() {
    // The peer sends more than the default rate allows in one go.
    let server = TestServer::start_with(chat::hub::HubConfig {
        msg_rate: 0,
        ..Default::default()
    });
    let addr = server.addr.to_string();
    let mut peer = Peer::register_and_login(server.addr, 200, "tiger");
    let mut chat = Chat::start(&addr);
    chat.type_lines(&["2", "100", "secret", "scott"]);
    chat.expect("Registered as user 100");
    for i in 0..25 {
        peer.send(
            "SmsMes",
            json!({"content": format!("old {i}"), "userId": 200}),
        );
    }
    peer.send(
        "SmsPrivateMes",
        json!({"toUserId": 100, "content": "while you were away"}),
    );
    // Answered: every frame before it was handled.
    assert_eq!(peer.recv_kind("SmsResMes")["code"], 202);

    chat.type_lines(&["1", "100", "secret"]);
    chat.expect("Logged in as scott (100)");
    chat.expect("Earlier messages in the group (the last 20)");
    chat.expect("tiger (200): old 5");
    chat.expect("tiger (200): old 24");
    chat.expect("(5 in the menu shows earlier ones)");
    chat.type_lines(&["5"]);
    chat.expect("Earlier messages in the group (5 more)");
    chat.expect("tiger (200): old 0");
    chat.expect("tiger (200): old 4");
    chat.expect("(that is the beginning)");
    chat.type_lines(&["5"]);
    chat.expect("No earlier group messages.");

    // Before writing to tiger: the last lines with tiger.
    chat.type_lines(&["3", "200", "thanks"]);
    chat.expect("Your last messages with tiger (200)");
    chat.expect("tiger (200): while you were away");
    chat.expect("Delivered to user 200");
    chat.type_lines(&["3", "200", "and again"]);
    chat.expect("Your last messages with tiger (200)");
    chat.expect("you: thanks");
    chat.expect("Delivered to user 200");
    let (code, out, err) = chat.finish();
    assert_eq!(code, 0, "{out}\n{err}");
    // The first page is exactly the last 20, oldest first.
    let lines: Vec<&str> = out.lines().collect();
    let start = lines
        .iter()
        .position(|l| l.contains("(the last 20)"))
        .unwrap();
    let page: Vec<&str> = lines[start + 1..start + 21]
        .iter()
        .map(|l| l.split("tiger (200): ").nth(1).unwrap())
        .collect();
    let want: Vec<String> = (5..25).map(|i| format!("old {i}")).collect();
    assert_eq!(page, want);
    assert!(lines[start + 21].contains("(5 in the menu shows earlier ones)"));
}

/// A message longer than the server takes (its `maxFrame`, announced at login) is
/// refused before it is sent, with a sentence; the session goes on and the next
/// message is delivered. The server would have closed the session for it.
#[test]
fn a_message_too_long_for_the_server_is_refused_before_it_is_sent() {
    let server = TestServer::start();
    let mut peer = Peer::register_and_login(server.addr, 200, "tiger");
    let mut chat = Chat::start(&server.addr.to_string());
    chat.type_lines(&["2", "100", "secret", "scott", "1", "100", "secret"]);
    chat.expect("Logged in as scott (100)");
    let long = "x".repeat(70_000);
    chat.type_lines(&["2", &long, "2", "after the long one"]);
    chat.type_lines(&["3", "200", &long, "3", "200", "a short private one"]);
    chat.type_lines(&["4"]);
    let (code, out, err) = chat.finish();
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(
        out.contains(
            "Not sent: it is too long for this server (70,130 bytes as sent, and it takes \
             at most 65,536;"
        ),
        "{out}"
    );
    assert!(
        out.contains("Nothing went out; you are still logged in."),
        "{out}"
    );
    assert!(
        out.contains("Not sent: it is too long for this server (70,129 bytes"),
        "{out}"
    );
    assert!(out.contains("Delivered to user 200."), "{out}");
    assert!(out.contains("Logged out."), "{out}");
    for bad in ["lost", "too large", "gone"] {
        assert!(!out.contains(bad), "{bad:?} in:\n{out}");
    }
    // Nothing of the long ones reached the other side; what came after did.
    assert_eq!(peer.recv_kind("SmsMes")["content"], "after the long one");
    assert_eq!(
        peer.recv_kind("SmsPrivateMes")["content"],
        "a short private one"
    );
}

/// A group or private message the server delivered cut short to a seed client (206)
/// reads as sent, never as a refusal.
#[test]
fn messages_cut_short_for_some_read_as_sent() {
    let server = TestServer::start();
    // A seed-format client: it reads frames of 8,096 bytes at most.
    let mut peer = Peer::register_and_login_seed(server.addr, 200, "tiger");
    let mut chat = Chat::start(&server.addr.to_string());
    chat.type_lines(&["2", "100", "secret", "scott", "1", "100", "secret"]);
    chat.expect("Logged in as scott (100)");
    let long = "y".repeat(10_000);
    // Logging out waits for the server's close: its answer to the message is in.
    chat.type_lines(&["2", &long, "3", "200", &long, "4"]);
    let (code, out, err) = chat.finish();
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("Sent to everyone online."), "{out}");
    assert!(
        out.contains(
            "Your group message was sent; cut short for 1 user whose client cannot take it whole."
        ),
        "{out}"
    );
    // Privately too: delivered, cut short.
    assert!(
        out.contains("Delivered to user 200, cut short: their client cannot take it whole."),
        "{out}"
    );
    assert!(!out.contains("refused"), "{out}");
    assert!(!out.contains("Not sent"), "{out}");
    let m = peer.recv_kind("SmsMes");
    let got = m["content"].as_str().unwrap();
    assert!(
        got.starts_with("yyyy") && got.contains("cut short"),
        "{got}"
    );
}

/// After the server restarts, the line typed at the logged-in menu once the
/// connection was lost is the main menu's: a `1` logs in again.
#[test]
fn the_line_typed_after_a_restart_is_not_lost() {
    let mut server = TestServer::start();
    let _peer = Peer::register_and_login(server.addr, 200, "tiger");
    let mut chat = Chat::start(&server.addr.to_string());
    chat.type_lines(&["2", "100", "secret", "scott", "1", "100", "secret"]);
    chat.expect("Logged in as scott (100)");
    // The menu is up: the client waits for a line.
    chat.expect("5  Earlier group messages");
    server.restart();
    chat.expect("Connection to the server lost.");
    let mut peer = Peer::login(server.addr, 200, "peerpw");
    chat.type_lines(&["1", "100", "secret", "2", "back again"]);
    let (code, out, err) = chat.finish();
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(
        out.contains("You are logged out: the connection to the server was lost."),
        "{out}"
    );
    assert_eq!(out.matches("Logged in as scott (100).").count(), 2, "{out}");
    assert!(out.contains("Sent to everyone online."), "{out}");
    assert!(!out.contains("Please enter"), "{out}");
    assert_eq!(peer.recv_kind("SmsMes")["content"], "back again");
}
