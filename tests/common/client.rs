//! A client that speaks the seed's wire format byte for byte: frames built with
//! serde_json exactly as the Go client's `json.Marshal` builds them, replies read as
//! plain JSON, not through our own types.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};

use serde_json::{Value, json};

use super::{ServerProc, WAIT};

/// A client that writes frames the way the seed's Go client does, over a plain socket
/// or any other stream (a TLS session).
pub struct SeedClient<S = TcpStream> {
    pub stream: S,
}

/// `{"type": t, "data": json(inner)}`: the envelope of every message.
pub fn envelope(t: &str, inner: &Value) -> String {
    let data = serde_json::to_string(inner).unwrap();
    serde_json::to_string(&json!({"type": t, "data": data})).unwrap()
}

/// The [`envelope`] with its 4-byte big-endian length.
pub fn seed_frame(t: &str, inner: &Value) -> Vec<u8> {
    let outer = envelope(t, inner);
    let mut f = (outer.len() as u32).to_be_bytes().to_vec();
    f.extend(outer.as_bytes());
    f
}

/// A frame as received: its type and the parsed inner JSON.
#[derive(Debug, Clone, PartialEq)]
pub struct Got {
    pub kind: String,
    pub data: Value,
    /// The inner JSON exactly as sent.
    pub raw: String,
}

impl Got {
    /// Reads an [`envelope`].
    pub fn from_envelope(outer: &[u8]) -> Got {
        let outer: Value = serde_json::from_slice(outer).expect("an envelope");
        let raw = outer["data"]
            .as_str()
            .expect("data is a string")
            .to_string();
        Got {
            kind: outer["type"].as_str().unwrap().to_string(),
            data: serde_json::from_str(&raw).expect("data holds JSON"),
            raw,
        }
    }
}

impl SeedClient {
    pub fn connect(addr: SocketAddr) -> SeedClient {
        SeedClient {
            stream: super::connect(addr),
        }
    }

    pub fn from_stream(stream: TcpStream) -> SeedClient {
        stream.set_read_timeout(Some(WAIT)).unwrap();
        stream.set_nodelay(true).unwrap();
        SeedClient { stream }
    }
}

impl<S: Read + Write> SeedClient<S> {
    pub fn send(&mut self, t: &str, inner: Value) {
        self.stream.write_all(&seed_frame(t, &inner)).unwrap();
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    /// Reads one frame; panics on timeout or EOF.
    pub fn recv(&mut self) -> Got {
        self.try_recv()
            .expect("connection closed while waiting for a frame")
    }

    /// Reads one frame; `None` at EOF (a frame cut short included).
    pub fn try_recv(&mut self) -> Option<Got> {
        let mut len = [0u8; 4];
        match self.stream.read_exact(&mut len) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return None,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return None,
            Err(e) => panic!("read failed: {e}"),
        }
        let mut body = vec![0; u32::from_be_bytes(len) as usize];
        match self.stream.read_exact(&mut body) {
            Ok(()) => {}
            // The peer went away in the middle of a frame (a killed server).
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return None,
            Err(e) => panic!("read failed: {e}"),
        }
        Some(Got::from_envelope(&body))
    }

    /// Reads until a frame of type `kind` arrives; returns it and what came before.
    pub fn recv_until(&mut self, kind: &str) -> (Got, Vec<Got>) {
        let mut before = Vec::new();
        loop {
            let g = self.recv();
            if g.kind == kind {
                return (g, before);
            }
            before.push(g);
        }
    }

    /// Proves nothing else was queued for this client: a ping's pong must be the very
    /// next frame (the server handles one connection's frames in order).
    pub fn expect_nothing_pending(&mut self) {
        self.send("PingMes", json!({}));
        let g = self.recv();
        assert_eq!(g.kind, "PongMes", "unexpected frame {g:?}");
    }

    /// Waits for the server to close the connection (after any frames).
    pub fn expect_closed(&mut self) -> Vec<Got> {
        let mut got = Vec::new();
        while let Some(g) = self.try_recv() {
            got.push(g);
        }
        got
    }

    pub fn register(&mut self, id: i64, pwd: &str, name: &str) -> Got {
        self.send(
            "RegisterMes",
            json!({"user": {"userId": id, "userPwd": pwd, "userName": name, "userStatus": 0, "sex": ""}}),
        );
        self.recv()
    }

    /// Logs in declaring the seed's own frame size (`"maxFrame": 8096`): a client that
    /// reads what the seed's reads, answered in the extensions' frame types
    /// (`ErrorResMes`, `SmsPrivateMes`). [`SeedClient::login_seed`] logs in exactly as
    /// the seed's client does, which is sent only what that client shows.
    pub fn login(&mut self, id: i64, pwd: &str) -> Got {
        self.send(
            "LoginMes",
            json!({"userId": id, "userPwd": pwd, "userName": "", "maxFrame": 8096}),
        );
        self.recv_until("LoginResMes").0
    }

    /// Logs in exactly as the seed's client does (no extension declared).
    pub fn login_seed(&mut self, id: i64, pwd: &str) -> Got {
        self.send(
            "LoginMes",
            json!({"userId": id, "userPwd": pwd, "userName": ""}),
        );
        self.recv_until("LoginResMes").0
    }

    /// Logs in declaring frames of up to 1 MiB (`maxFrame`), as this project's clients
    /// do (the seed's read 8 KiB, and are sent longer messages cut short).
    pub fn login_1mib(&mut self, id: i64, pwd: &str) -> Got {
        self.send(
            "LoginMes",
            json!({"userId": id, "userPwd": pwd, "userName": "", "maxFrame": 1 << 20}),
        );
        self.recv_until("LoginResMes").0
    }

    /// Registers `id` (name `u<id>`, password `pw<id>`, as [`online`] does) and logs in
    /// reading frames of up to 1 MiB.
    pub fn join(&mut self, id: i64) {
        let r = self.register(id, &format!("pw{id}"), &format!("u{id}"));
        assert_eq!(r.data["code"], 200, "{r:?}");
        let r = self.login_1mib(id, &format!("pw{id}"));
        assert_eq!(r.data["code"], 200, "{r:?}");
    }

    /// Waits for a status notice about `id` with `status` (0 online, 1 offline),
    /// skipping anything else.
    pub fn wait_notice(&mut self, id: i64, status: i64) {
        loop {
            let g = self.recv();
            if g.kind == "NotifyUserStatusMes"
                && g.data["userId"] == id
                && g.data["status"] == status
            {
                return;
            }
        }
    }
}

/// Registers `id` (name `u<id>`, password `pw<id>`) and logs in on a new connection.
pub fn online(server: &ServerProc, id: i64) -> SeedClient {
    let mut c = server.connect();
    let r = c.register(id, &format!("pw{id}"), &format!("u{id}"));
    assert_eq!(r.data["code"], 200, "{r:?}");
    let r = c.login(id, &format!("pw{id}"));
    assert_eq!(r.data["code"], 200, "{r:?}");
    c
}
