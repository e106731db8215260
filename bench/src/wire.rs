//! The two protocols the bench speaks, reduced to what it needs: building requests,
//! and splitting replies cheaply (a length prefix, a type prefix, RESP headers)
//! without parsing JSON except for the few frames it samples.

use chat::proto::{self, ClientMessage, LoginMes, RegisterMes, SmsMes, User};

/// Which server is being measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Target {
    /// This project's chat server.
    Chat,
    /// redis-server, through SUBSCRIBE / PUBLISH.
    Redis,
}

pub const CHANNEL: &str = "bench";

/// The largest frame body the bench reads, declared to the chat server as `maxFrame`
/// (the fan-out's receivers take any size; the soak's clients this much).
pub const MAX_FRAME: usize = 16 * 1024 * 1024;

/// Register (ignored if the id exists) then log in, pipelined; `compact`: asking for
/// the compact forms of presence.
pub fn chat_login(id: i64, password: &str, register: bool, compact: bool) -> Vec<u8> {
    let mut out = if register {
        chat_register(id, password)
    } else {
        Vec::new()
    };
    out.extend(
        ClientMessage::Login(LoginMes {
            user_id: id,
            user_pwd: password.into(),
            user_name: String::new(),
            max_frame: Some(MAX_FRAME as u32),
            compact,
            ..LoginMes::default()
        })
        .encode(),
    );
    out
}

pub fn chat_register(id: i64, password: &str) -> Vec<u8> {
    ClientMessage::Register(RegisterMes {
        user: User {
            user_id: id,
            user_pwd: password.into(),
            user_name: format!("b{id}"),
            ..User::default()
        },
        max_frame: Some(MAX_FRAME as u32),
    })
    .encode()
}

pub fn chat_sms(content: &str) -> Vec<u8> {
    ClientMessage::Sms(SmsMes {
        content: content.into(),
        ..SmsMes::default()
    })
    .encode()
}

pub fn chat_ping() -> Vec<u8> {
    ClientMessage::Ping.encode()
}

/// What kind of server frame this is, judged by the start of its body (the server
/// writes `{"type":"...` first).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChatKind {
    Sms,
    Pong,
    LoginRes,
    RegisterRes,
    ErrorRes,
    Other,
}

pub fn chat_kind(body: &[u8]) -> ChatKind {
    const P: &[u8] = b"{\"type\":\"";
    let Some(rest) = body.strip_prefix(P) else {
        return ChatKind::Other;
    };
    if rest.starts_with(b"SmsMes\"") {
        ChatKind::Sms
    } else if rest.starts_with(b"PongMes\"") {
        ChatKind::Pong
    } else if rest.starts_with(b"LoginResMes\"") {
        ChatKind::LoginRes
    } else if rest.starts_with(b"RegisterResMes\"") {
        ChatKind::RegisterRes
    } else if rest.starts_with(b"ErrorResMes\"") {
        ChatKind::ErrorRes
    } else {
        ChatKind::Other
    }
}

/// The inner message of a frame body (parsed properly: replies are rare).
fn inner(body: &[u8]) -> Option<serde_json::Value> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    serde_json::from_str(v["data"].as_str()?).ok()
}

/// The id of the newest entry of a `HistoryResMes` frame (none for another frame, or
/// an empty page).
pub fn history_last_id(body: &[u8]) -> Option<u64> {
    if !body.starts_with(br#"{"type":"HistoryResMes""#) {
        return None;
    }
    inner(body)?["messages"].as_array()?.last()?["id"].as_u64()
}

/// The `code` of a reply frame.
pub fn chat_code(body: &[u8]) -> Option<u64> {
    // The code comes first in this server's replies: read it there without parsing a
    // login reply that lists thousands of users (which made the bench, not the server,
    // the bottleneck of a login storm).
    const KEY: &[u8] = br#"{\"code\":"#;
    let head = &body[..body.len().min(64)];
    if let Some(at) = head.windows(KEY.len()).position(|w| w == KEY) {
        let digits: Vec<u8> = body[at + KEY.len()..]
            .iter()
            .copied()
            .take_while(u8::is_ascii_digit)
            .collect();
        if let Some(code) = std::str::from_utf8(&digits)
            .ok()
            .and_then(|d| d.parse().ok())
        {
            return Some(code);
        }
    }
    inner(body)?["code"].as_u64()
}

/// The seconds a busy or rate-limit refusal asks the client to wait: its `retryAfter`.
/// A server that does not send it may say it in the text ("server busy, try again in
/// N s"), which is read as a fallback.
pub fn retry_hint(body: &[u8]) -> Option<u64> {
    let inner = inner(body)?;
    if let Some(s) = inner["retryAfter"].as_u64() {
        return Some(s);
    }
    let text = inner["error"].as_str()?;
    let rest = &text[text.find("try again in ")? + "try again in ".len()..];
    rest.split(' ').next()?.parse().ok()
}

/// Whether a frame is a refusal that says when to try again (`retryAfter`).
pub fn has_retry_after(body: &[u8]) -> bool {
    inner(body).is_some_and(|v| v["retryAfter"].is_u64())
}

/// Splits one chat frame off the front of `buf`: (total length, body range).
pub fn chat_frame(buf: &[u8]) -> Option<(usize, std::ops::Range<usize>)> {
    match proto::check(buf, usize::MAX >> 1) {
        Ok(Some(total)) => Some((total, proto::HEADER_LEN..total)),
        _ => None,
    }
}

fn bulk(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(format!("${}\r\n", s.len()).as_bytes());
    out.extend_from_slice(s);
    out.extend_from_slice(b"\r\n");
}

pub fn redis_cmd(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        bulk(&mut out, a);
    }
    out
}

/// One RESP value at the front of a buffer, as much as the bench cares.
#[derive(Debug, PartialEq, Eq)]
pub enum Resp {
    /// An integer reply (PUBLISH's receiver count).
    Int(i64),
    /// A push `message` with the payload's range.
    Message(std::ops::Range<usize>),
    /// Anything else (subscribe confirmations, +OK, errors).
    Other,
}

fn line(buf: &[u8], from: usize) -> Option<(usize, &[u8])> {
    let rel = buf.get(from..)?.windows(2).position(|w| w == b"\r\n")?;
    Some((from + rel + 2, &buf[from..from + rel]))
}

fn num(s: &[u8]) -> Option<i64> {
    std::str::from_utf8(s).ok()?.parse().ok()
}

/// Parses one RESP value: `Some((consumed, value))`, or `None` if incomplete.
pub fn resp(buf: &[u8]) -> Option<(usize, Resp)> {
    let (mut pos, head) = line(buf, 0)?;
    match head.first()? {
        b':' => Some((pos, Resp::Int(num(&head[1..])?))),
        b'+' | b'-' => Some((pos, Resp::Other)),
        b'*' => {
            let n = num(&head[1..])?;
            let mut items = Vec::new();
            for _ in 0..n.max(0) {
                let (p, h) = line(buf, pos)?;
                match h.first()? {
                    b'$' => {
                        let len = num(&h[1..])? as usize;
                        let end = p + len;
                        if buf.len() < end + 2 {
                            return None;
                        }
                        items.push(p..end);
                        pos = end + 2;
                    }
                    _ => {
                        items.push(p..p);
                        pos = p;
                    }
                }
            }
            if items.len() == 3 && &buf[items[0].clone()] == b"message" {
                Some((pos, Resp::Message(items[2].clone())))
            } else {
                Some((pos, Resp::Other))
            }
        }
        b'$' => {
            let len = num(&head[1..])?;
            if len < 0 {
                return Some((pos, Resp::Other));
            }
            let end = pos + len as usize + 2;
            (buf.len() >= end).then_some((end, Resp::Other))
        }
        _ => Some((pos, Resp::Other)),
    }
}

/// The payload every published message carries: `@<seq>:<sent ns>@` padded with `x`
/// to `size` bytes (at least the marker).
pub fn payload(seq: u64, sent_ns: u64, size: usize) -> String {
    let mut s = format!("@{seq}:{sent_ns}@");
    while s.len() < size {
        s.push('x');
    }
    s
}

/// Finds the send time in a payload (or a frame holding one).
pub fn sent_ns(bytes: &[u8]) -> Option<u64> {
    let at = bytes.iter().position(|b| *b == b'@')?;
    let rest = &bytes[at + 1..];
    let colon = rest.iter().position(|b| *b == b':')?;
    let end = rest[colon + 1..].iter().position(|b| *b == b'@')?;
    num(&rest[colon + 1..colon + 1 + end]).map(|n| n as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resp_messages_and_replies() {
        let mut buf = b":12\r\n".to_vec();
        buf.extend(b"*3\r\n$7\r\nmessage\r\n$5\r\nbench\r\n$5\r\nhello\r\n");
        buf.extend(b"*3\r\n$9\r\nsubscribe\r\n$5\r\nbench\r\n:1\r\n");
        let (n, v) = resp(&buf).unwrap();
        assert_eq!(v, Resp::Int(12));
        let (m, v) = resp(&buf[n..]).unwrap();
        match v {
            Resp::Message(r) => assert_eq!(&buf[n..][r], b"hello"),
            other => panic!("{other:?}"),
        }
        let (k, v) = resp(&buf[n + m..]).unwrap();
        assert_eq!(v, Resp::Other);
        assert_eq!(n + m + k, buf.len());
        assert_eq!(resp(&buf[..buf.len() - 1]).map(|x| x.0), Some(n));
        assert!(resp(&b"*3\r\n$7\r\nmess"[..]).is_none());
    }

    #[test]
    fn the_code_is_read_at_the_front_or_by_parsing() {
        use chat::proto::{CodeRes, LoginResMes, ServerMessage};
        let frame = ServerMessage::LoginRes(LoginResMes {
            code: 200,
            users_id: (1..1000).collect(),
            ..Default::default()
        })
        .encode();
        assert_eq!(chat_code(&frame[4..]), Some(200));
        let frame = ServerMessage::Error(CodeRes::new(429, "slow down")).encode();
        assert_eq!(chat_code(&frame[4..]), Some(429));
        let other_order = br#"{"type":"LoginResMes","data":"{\"error\":\"\",\"code\":403}"}"#;
        assert_eq!(chat_code(other_order), Some(403));
    }

    #[test]
    fn payload_round_trip_and_kinds() {
        let p = payload(7, 123456789, 64);
        assert_eq!(p.len(), 64);
        assert_eq!(sent_ns(p.as_bytes()), Some(123456789));
        let f = chat_sms(&p);
        assert_eq!(chat_kind(&f[4..]), ChatKind::Sms);
        assert_eq!(sent_ns(&f), Some(123456789));
        assert_eq!(chat_kind(&chat_ping()[4..]), ChatKind::Other);
    }

    /// A frame body as the server writes it: `type` first.
    fn frame(kind: &str, inner: &str) -> Vec<u8> {
        let data = serde_json::Value::from(inner);
        format!(r#"{{"type":"{kind}","data":{data}}}"#).into_bytes()
    }

    #[test]
    fn retry_hints_come_from_retry_after_with_the_text_as_fallback() {
        // The number wins over whatever the text says.
        let f = frame(
            "LoginResMes",
            r#"{"code":505,"error":"server busy, try again in 3 s","retryAfter":8}"#,
        );
        assert_eq!(retry_hint(&f), Some(8));
        assert!(has_retry_after(&f));
        let f = frame(
            "ErrorResMes",
            r#"{"code":429,"error":"too many login attempts; try again later","retryAfter":2}"#,
        );
        assert_eq!(retry_hint(&f), Some(2));
        assert_eq!(chat_kind(&f), ChatKind::ErrorRes);
        // Servers without the field.
        let f = frame(
            "LoginResMes",
            r#"{"code":505,"error":"server busy, try again in 3 s"}"#,
        );
        assert_eq!(retry_hint(&f), Some(3));
        assert!(!has_retry_after(&f));
        let f = frame("ErrorResMes", r#"{"code":429,"error":"too fast"}"#);
        assert_eq!(retry_hint(&f), None);
    }

    #[test]
    fn logins_and_registrations_declare_max_frame() {
        let bytes = chat_login(7, "pw", true, true);
        let (total, body) = chat_frame(&bytes).unwrap();
        let reg = inner(&bytes[body]).unwrap();
        assert_eq!(reg["maxFrame"].as_u64(), Some(MAX_FRAME as u64));
        let (_, body) = chat_frame(&bytes[total..]).unwrap();
        let login = inner(&bytes[total..][body]).unwrap();
        assert_eq!(login["userId"], 7);
        assert_eq!(login["maxFrame"].as_u64(), Some(MAX_FRAME as u64));
        assert_eq!(login["compact"], true);
        let (_, body) = chat_frame(&chat_login(7, "pw", false, false)).unwrap();
        assert!(
            inner(&chat_login(7, "pw", false, false)[body])
                .unwrap()
                .get("compact")
                .is_none()
        );
    }
}
