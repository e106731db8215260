//! The web listener's clients: an HTTP exchange, and a WebSocket client speaking the
//! protocol (one envelope per text message), each over a plain socket or TLS.

use std::io::{Read, Write};
use std::net::TcpStream;

use serde_json::{Value, json};
use tungstenite::client::IntoClientRequest;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::{HandshakeError, Message, WebSocket};

use super::{Got, envelope};

/// Sends `request` as it is and reads to the end of the stream, which the server ends
/// after its answer (over TLS with a `close_notify`: rustls reports a stream cut short
/// as an error). Returns the status line, the head and the body.
pub fn exchange<S: Read + Write>(mut s: S, request: &[u8]) -> (String, String, Vec<u8>) {
    s.write_all(request).unwrap();
    let mut all = Vec::new();
    s.read_to_end(&mut all)
        .expect("the server ends the stream after its answer");
    let end = all
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("an HTTP answer");
    let head = String::from_utf8(all[..end].to_vec()).unwrap();
    let status = head.lines().next().unwrap().to_string();
    (status, head, all[end + 4..].to_vec())
}

/// A WebSocket client speaking the protocol: one envelope per text message.
pub struct WsClient<S = TcpStream> {
    pub ws: WebSocket<S>,
}

/// What ended a WebSocket: the close status the server sent (None: no close frame).
#[derive(Debug, PartialEq)]
pub enum End {
    Closed(Option<CloseCode>),
}

/// Upgrades `stream` with a request for `url` (`ws://HOST:PORT/ws`, `wss://...`)
/// carrying this `Origin`; the error is the HTTP status of a refusal.
pub fn upgrade<S: Read + Write>(
    stream: S,
    url: &str,
    origin: Option<&str>,
) -> Result<WsClient<S>, u16> {
    let mut req = url.into_client_request().unwrap();
    if let Some(o) = origin {
        req.headers_mut().insert("Origin", o.parse().unwrap());
    }
    match tungstenite::client::client(req, stream) {
        Ok((ws, _)) => Ok(WsClient { ws }),
        Err(HandshakeError::Failure(tungstenite::Error::Http(resp))) => Err(resp.status().as_u16()),
        Err(e) => panic!("handshake failed: {e}"),
    }
}

impl<S: Read + Write> WsClient<S> {
    pub fn send(&mut self, t: &str, inner: Value) {
        self.ws.send(Message::text(envelope(t, &inner))).unwrap();
    }

    /// The next protocol message, or how the connection ended.
    pub fn next(&mut self) -> Result<Got, End> {
        match self.ws.read() {
            Ok(Message::Text(t)) => Ok(Got::from_envelope(t.as_bytes())),
            Ok(Message::Close(frame)) => Err(End::Closed(frame.map(|f| f.code))),
            Ok(other) => panic!("unexpected message {other:?}"),
            Err(tungstenite::Error::ConnectionClosed)
            | Err(tungstenite::Error::AlreadyClosed)
            | Err(tungstenite::Error::Protocol(
                tungstenite::error::ProtocolError::ResetWithoutClosingHandshake,
            )) => Err(End::Closed(None)),
            Err(e) => panic!("read failed: {e}"),
        }
    }

    pub fn recv(&mut self) -> Got {
        self.next().expect("a message, not the end")
    }

    pub fn recv_until(&mut self, kind: &str) -> Got {
        loop {
            let g = self.recv();
            if g.kind == kind {
                return g;
            }
        }
    }

    /// Reads until the server closes; returns the close status and what came before.
    pub fn until_closed(&mut self) -> (Option<CloseCode>, Vec<Got>) {
        let mut got = Vec::new();
        loop {
            match self.next() {
                Ok(g) => got.push(g),
                Err(End::Closed(code)) => return (code, got),
            }
        }
    }

    pub fn register(&mut self, id: i64, pwd: &str, name: &str) -> Got {
        self.send(
            "RegisterMes",
            json!({"user": {"userId": id, "userPwd": pwd, "userName": name, "userStatus": 0, "sex": ""}}),
        );
        self.recv_until("RegisterResMes")
    }

    /// Logs in, declaring frames of up to 1 MiB (the page does).
    pub fn login(&mut self, id: i64, pwd: &str) -> Got {
        self.send(
            "LoginMes",
            json!({"userId": id, "userPwd": pwd, "userName": "", "maxFrame": 1 << 20}),
        );
        self.recv_until("LoginResMes")
    }

    /// Registers `id` (name `u<id>`, password `pw<id>`) and logs in.
    pub fn join(&mut self, id: i64) {
        let r = self.register(id, &format!("pw{id}"), &format!("u{id}"));
        assert_eq!(r.data["code"], 200, "{r:?}");
        let r = self.login(id, &format!("pw{id}"));
        assert_eq!(r.data["code"], 200, "{r:?}");
    }
}
