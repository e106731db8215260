//! Frames as the seed writes them (a 4-byte big-endian length, then
//! `{"type":..,"data":"<inner JSON>"}`), and a seed-format client written here,
//! independent of the `chat` binary, for the other side of a conversation.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use serde_json::{Value, json};

/// How long a peer waits for a frame before its test fails.
const WAIT: Duration = Duration::from_secs(20);

pub fn write_frame(s: &mut impl Write, kind: &str, inner: &str) -> std::io::Result<()> {
    let outer = json!({"type": kind, "data": inner}).to_string();
    let mut buf = (outer.len() as u32).to_be_bytes().to_vec();
    buf.extend_from_slice(outer.as_bytes());
    s.write_all(&buf)
}

/// The next frame as (type, inner JSON text); `None` at end of stream.
pub fn read_frame(s: &mut impl Read) -> Option<(String, String)> {
    let mut len = [0; 4];
    s.read_exact(&mut len).ok()?;
    let mut body = vec![0; u32::from_be_bytes(len) as usize];
    s.read_exact(&mut body).ok()?;
    let v: Value = serde_json::from_slice(&body).expect("a frame holds JSON");
    Some((
        v["type"].as_str().expect("a type").to_string(),
        v["data"].as_str().expect("data is a string").to_string(),
    ))
}

/// A seed-format client written here.
pub struct Peer {
    s: TcpStream,
}

impl Peer {
    pub fn connect(addr: SocketAddr) -> Peer {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(WAIT)).unwrap();
        Peer { s }
    }

    /// Logs in as `id` on a new connection, as a client that reads every frame type
    /// and frames up to 64 KiB; the login must succeed.
    pub fn login(addr: SocketAddr, id: i64, pwd: &str) -> Peer {
        let mut p = Peer::connect(addr);
        p.send(
            "LoginMes",
            json!({"userId": id, "userPwd": pwd, "userName": "", "maxFrame": 65536}),
        );
        let r = p.recv_kind("LoginResMes");
        assert_eq!(r["code"], 200, "{r}");
        p
    }

    /// Registers `id` as `name` (password `peerpw`) and logs in, on a new connection,
    /// as [`Peer::login`] does.
    pub fn register_and_login(addr: SocketAddr, id: i64, name: &str) -> Peer {
        Peer::register_and_login_as(addr, id, name, Some(65536))
    }

    /// The same as a client of the seed's: no `maxFrame`, so the server sends it only
    /// frames of 8,096 bytes at most and private messages as readable `SmsMes`.
    pub fn register_and_login_seed(addr: SocketAddr, id: i64, name: &str) -> Peer {
        Peer::register_and_login_as(addr, id, name, None)
    }

    fn register_and_login_as(
        addr: SocketAddr,
        id: i64,
        name: &str,
        max_frame: Option<u64>,
    ) -> Peer {
        let mut p = Peer::connect(addr);
        p.send(
            "RegisterMes",
            json!({"user":{"userId":id,"userPwd":"peerpw","userName":name}}),
        );
        assert_eq!(p.recv_kind("RegisterResMes")["code"], 200);
        let mut login = json!({"userId":id,"userPwd":"peerpw","userName":""});
        if let Some(n) = max_frame {
            login["maxFrame"] = json!(n);
        }
        p.send("LoginMes", login);
        assert_eq!(p.recv_kind("LoginResMes")["code"], 200);
        p
    }

    /// Whether `id` is a registered user: a wrong password says so, an unknown id
    /// says otherwise.
    pub fn is_registered(addr: SocketAddr, id: i64) -> bool {
        let mut p = Peer::connect(addr);
        p.send(
            "LoginMes",
            json!({"userId":id,"userPwd":"not it","userName":""}),
        );
        let r = p.recv_kind("LoginResMes");
        assert_ne!(r["code"], 200);
        r["error"] != "no such user"
    }

    pub fn send(&mut self, kind: &str, inner: Value) {
        write_frame(&mut self.s, kind, &inner.to_string()).unwrap();
    }

    /// The next frame: its type and its inner JSON.
    pub fn recv(&mut self) -> (String, Value) {
        let (kind, data) = read_frame(&mut self.s).expect("a frame from the server");
        (kind, serde_json::from_str(&data).unwrap())
    }

    /// The inner JSON of the next frame of type `kind`, skipping any other.
    pub fn recv_kind(&mut self, kind: &str) -> Value {
        loop {
            let (k, d) = self.recv();
            if k == kind {
                return d;
            }
        }
    }

    /// The next status notice about `id`, skipping anything else.
    pub fn recv_notify(&mut self, id: i64) -> Value {
        loop {
            let n = self.recv_kind("NotifyUserStatusMes");
            if n["userId"] == id {
                return n;
            }
        }
    }
}
