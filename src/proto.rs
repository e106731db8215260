//! The wire format, and nothing else: framing plus the JSON of every message.
//!
//! A frame is a 4-byte big-endian length `n` followed by `n` bytes of JSON:
//! `{"type":"<TypeName>","data":"<inner JSON as a string>"}`. The inner message is
//! JSON encoded twice, exactly as the seed's Go client does it, so a seed client works
//! against this server unchanged.
//!
//! Decoding is split the way httparse and mini-redis split it: [`check`] looks at the
//! length prefix only and says "incomplete", "complete, this long" or "too large"
//! (before anything is allocated); [`ClientMessage::parse`] / [`ServerMessage::parse`]
//! then turn one complete body into a typed message. Partial input is a normal result,
//! never an error. [`FrameDecoder`] wraps `check` for callers that own a byte stream
//! (clients, tests, the benchmark).
#![forbid(unsafe_code)]

use serde::{Deserialize, Serialize};

/// Length of the big-endian length prefix.
pub const HEADER_LEN: usize = 4;
/// Default largest frame body accepted from a logged-in client (`--max-frame`).
pub const DEFAULT_MAX_FRAME: usize = 64 * 1024;
/// The seed client reads each frame into a buffer of this many bytes and fails on a
/// longer body: nothing longer is ever sent to a connection that did not declare
/// `maxFrame`.
pub const SEED_MAX_FRAME: usize = 8096;
/// Longest `msgId` accepted on a private message, in bytes.
pub const MAX_MSG_ID: usize = 64;

/// Message type names as they appear in the envelope's `type` field.
pub mod kind {
    pub const LOGIN: &str = "LoginMes";
    pub const LOGIN_RES: &str = "LoginResMes";
    pub const REGISTER: &str = "RegisterMes";
    pub const REGISTER_RES: &str = "RegisterResMes";
    pub const NOTIFY_USER_STATUS: &str = "NotifyUserStatusMes";
    pub const PRESENCE: &str = "PresenceMes";
    pub const SMS: &str = "SmsMes";
    pub const SMS_PRIVATE: &str = "SmsPrivateMes";
    pub const SMS_RES: &str = "SmsResMes";
    pub const ONLINE_USERS: &str = "OnlineUsersMes";
    pub const ONLINE_USERS_RES: &str = "OnlineUsersResMes";
    pub const LOGOUT: &str = "LogoutMes";
    pub const PING: &str = "PingMes";
    pub const PONG: &str = "PongMes";
    pub const ERROR_RES: &str = "ErrorResMes";
    pub const OFFLINE_ACK: &str = "OfflineAckMes";
    pub const HISTORY: &str = "HistoryMes";
    pub const HISTORY_RES: &str = "HistoryResMes";
}

/// Status codes used on the wire.
pub mod code {
    pub const OK: u16 = 200;
    /// Private message stored for an offline recipient.
    pub const STORED: u16 = 202;
    /// Delivered cut short to some recipients, whose clients cannot read it whole.
    pub const PARTIAL: u16 = 206;
    pub const BAD_REQUEST: u16 = 400;
    pub const UNAUTHORIZED: u16 = 401;
    /// Login: wrong password.
    pub const WRONG_PASSWORD: u16 = 403;
    /// Registration: closed on this server (only operators create accounts).
    pub const FORBIDDEN: u16 = 403;
    /// Private message: no such user.
    pub const NOT_FOUND: u16 = 404;
    /// The same user logged in on another connection.
    pub const CONFLICT: u16 = 409;
    /// The account was removed by an operator (its sessions are closed).
    pub const GONE: u16 = 410;
    pub const TOO_LARGE: u16 = 413;
    /// The account is banned by an operator: login refused, sessions closed.
    pub const BANNED: u16 = 423;
    pub const TOO_MANY: u16 = 429;
    /// Login: no such user (the seed's code).
    pub const NO_SUCH_USER: u16 = 500;
    pub const UNAVAILABLE: u16 = 503;
    /// Private message: storage did not answer in time and the message may or may not
    /// be stored. Resending it with the same `msgId` is safe.
    pub const UNCERTAIN: u16 = 504;
    /// Login / register: server error (the seed's code).
    pub const SERVER_ERROR: u16 = 505;
}

/// User status values of `NotifyUserStatusMes`.
pub mod status {
    pub const ONLINE: u8 = 0;
    pub const OFFLINE: u8 = 1;
    pub const BUSY: u8 = 2;
}

/// Why a length prefix was refused. Small and `Copy`, like httparse's errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// The prefix announces a body longer than the limit.
    TooLarge { len: usize, max: usize },
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::TooLarge { len, max } => {
                write!(f, "frame of {len} bytes is over the limit of {max} bytes")
            }
        }
    }
}

impl std::error::Error for FrameError {}

/// Looks at the start of `buf` and reports whether a whole frame is there.
///
/// ```
/// use chat::proto::{check, ClientMessage, FrameError, HEADER_LEN};
///
/// let frame = ClientMessage::Ping.encode();
/// assert_eq!(check(&frame[..3], 1024), Ok(None)); // not even the prefix yet
/// let total = check(&frame, 1024).unwrap().unwrap();
/// assert_eq!(ClientMessage::parse(&frame[HEADER_LEN..total]), Ok(ClientMessage::Ping));
/// // A length over the limit is refused from the prefix alone.
/// assert!(matches!(check(&[0xff; 4], 1024), Err(FrameError::TooLarge { .. })));
/// ```
///
/// `Ok(None)`: not yet (fewer than 4 bytes, or the body is still incomplete).
/// `Ok(Some(total))`: the first `total` bytes (prefix included) are one frame.
/// `Err(TooLarge)`: the prefix announces more than `max` bytes; nothing was allocated.
pub fn check(buf: &[u8], max: usize) -> Result<Option<usize>, FrameError> {
    let Some(prefix) = buf.get(..HEADER_LEN) else {
        return Ok(None);
    };
    let len = u32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]) as usize;
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    let total = HEADER_LEN + len;
    Ok((buf.len() >= total).then_some(total))
}

/// An incremental frame decoder over an owned buffer, for code that reads a stream
/// (the client, tests, the benchmark). The server's connections use [`check`] directly
/// so that complete frames are parsed straight out of the read buffer.
#[derive(Debug)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    start: usize,
    max: usize,
}

impl FrameDecoder {
    pub fn new(max: usize) -> Self {
        FrameDecoder {
            buf: Vec::new(),
            start: 0,
            max,
        }
    }

    /// Appends bytes read from the stream.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.start > 0 && self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes held that are not yet part of a returned frame.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }

    /// Takes the next complete frame body (without its prefix), if there is one.
    pub fn next_frame(&mut self) -> Result<Option<Vec<u8>>, FrameError> {
        match check(&self.buf[self.start..], self.max)? {
            None => {
                if self.start > 0 {
                    self.buf.drain(..self.start);
                    self.start = 0;
                }
                Ok(None)
            }
            Some(total) => {
                let body = self.buf[self.start + HEADER_LEN..self.start + total].to_vec();
                self.start += total;
                Ok(Some(body))
            }
        }
    }
}

/// Why a complete frame body could not be understood. The stream itself is still in
/// step (the length prefix was fine), so the connection can go on after an error frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseError {
    /// The body is not `{"type": string, "data": string}`.
    Envelope(String),
    /// The `type` names no message this side accepts.
    UnknownType(String),
    /// `data` is not valid JSON for the named type.
    Data { kind: &'static str, detail: String },
}

impl std::fmt::Display for ParseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ParseError::Envelope(d) => write!(f, "bad frame: {d}"),
            ParseError::UnknownType(t) => write!(f, "unknown message type {t:?}"),
            ParseError::Data { kind, detail } => write!(f, "bad {kind} data: {detail}"),
        }
    }
}

impl std::error::Error for ParseError {}

#[derive(Serialize, Deserialize)]
struct Envelope<'a> {
    #[serde(rename = "type", borrow)]
    kind: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    data: std::borrow::Cow<'a, str>,
}

/// The seed's user record as it travels inside `RegisterMes`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct User {
    #[serde(rename = "userId")]
    pub user_id: i64,
    #[serde(rename = "userPwd", default)]
    pub user_pwd: String,
    #[serde(rename = "userName", default)]
    pub user_name: String,
    #[serde(rename = "userStatus", default)]
    pub user_status: i64,
    #[serde(default)]
    pub sex: String,
}

/// An id with its name, as listed in `LoginResMes.users` and `OnlineUsersResMes`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct UserInfo {
    #[serde(rename = "userId")]
    pub user_id: i64,
    #[serde(rename = "userName", default)]
    pub user_name: String,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct LoginMes {
    #[serde(rename = "userId")]
    pub user_id: i64,
    #[serde(rename = "userPwd", default)]
    pub user_pwd: String,
    #[serde(rename = "userName", default)]
    pub user_name: String,
    /// Extension: the largest frame body this client reads. Without it the connection
    /// is a seed client, whose reader fails on a body over [`SEED_MAX_FRAME`] bytes.
    #[serde(rename = "maxFrame", default, skip_serializing_if = "Option::is_none")]
    pub max_frame: Option<u32>,
    /// Extension: this client acknowledges offline messages itself (`OfflineAckMes`);
    /// they leave the store only when it has. Without it, once written to the socket.
    #[serde(
        rename = "ackOffline",
        default,
        skip_serializing_if = "std::ops::Not::not"
    )]
    pub ack_offline: bool,
    /// Extension: this client reads the compact forms of who is online: `names` in
    /// the login reply instead of `users`, and presence as `PresenceMes` batches
    /// instead of one `NotifyUserStatusMes` per change. A 10,000-user chat's presence
    /// so costs every client and the server about a quarter of the bytes.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub compact: bool,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct LoginResMes {
    pub code: u16,
    /// The seed's exact key: the ids online now, the caller included.
    #[serde(rename = "UsersId", default)]
    pub users_id: Vec<i64>,
    #[serde(default)]
    pub error: String,
    /// Extension: names for the ids in `UsersId`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub users: Vec<UserInfo>,
    /// Extension, for a client that logged in `compact`: the names of the ids in
    /// `UsersId`, in the same order (instead of `users`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub names: Vec<String>,
    /// Extension: on a busy or rate-limit refusal, seconds to wait before trying again.
    #[serde(
        rename = "retryAfter",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub retry_after: Option<u64>,
    /// Extension, on success to a client that declared a `maxFrame` larger than the
    /// seed's: the largest frame body the server accepts from it (`--max-frame`).
    #[serde(rename = "maxFrame", default, skip_serializing_if = "Option::is_none")]
    pub max_frame: Option<u32>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct RegisterMes {
    pub user: User,
    /// Extension: as in [`LoginMes::max_frame`].
    #[serde(rename = "maxFrame", default, skip_serializing_if = "Option::is_none")]
    pub max_frame: Option<u32>,
}

/// `RegisterResMes`, `SmsResMes` and `ErrorResMes` all carry a code and an error text.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct CodeRes {
    pub code: u16,
    #[serde(default)]
    pub error: String,
    /// Extension: on a busy or rate-limit refusal, seconds to wait before trying again.
    #[serde(
        rename = "retryAfter",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub retry_after: Option<u64>,
    /// Extension, `SmsResMes` only: the `msgId` of the private message answered.
    #[serde(rename = "msgId", default, skip_serializing_if = "Option::is_none")]
    pub msg_id: Option<String>,
}

impl LoginResMes {
    /// The users listed with their names, from `users` or, for a `compact` client,
    /// `names` beside `UsersId`: empty if the reply names nobody.
    pub fn named(&self) -> Vec<UserInfo> {
        if !self.users.is_empty() {
            return self.users.clone();
        }
        self.users_id
            .iter()
            .zip(&self.names)
            .map(|(&user_id, name)| UserInfo {
                user_id,
                user_name: name.clone(),
            })
            .collect()
    }
}

impl CodeRes {
    pub fn new(code: u16, error: impl Into<String>) -> CodeRes {
        CodeRes {
            code,
            error: error.into(),
            ..CodeRes::default()
        }
    }
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct NotifyUserStatusMes {
    #[serde(rename = "userId")]
    pub user_id: i64,
    pub status: u8,
    /// Extension: the user's name, so clients can keep their lists readable.
    #[serde(rename = "userName", default, skip_serializing_if = "String::is_empty")]
    pub user_name: String,
}

/// `PresenceMes` (extension, server to a `compact` client): changes of who is online,
/// in order, each `[userId, status, userName]`: what `NotifyUserStatusMes` says one
/// frame at a time.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct PresenceMes {
    pub changes: Vec<(i64, u8, String)>,
}

/// A group message. The seed embeds its whole `User` struct next to `content`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct SmsMes {
    #[serde(default)]
    pub content: String,
    #[serde(rename = "userId", default)]
    pub user_id: i64,
    #[serde(rename = "userPwd", default)]
    pub user_pwd: String,
    #[serde(rename = "userName", default)]
    pub user_name: String,
    #[serde(rename = "userStatus", default)]
    pub user_status: i64,
    #[serde(default)]
    pub sex: String,
    /// Extension: server time of acceptance, unix milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<u64>,
}

/// A private message: the client sends `toUserId` and `content`; the server adds the
/// sender, the time and whether it comes from the offline store.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct SmsPrivateMes {
    #[serde(rename = "userId", default)]
    pub user_id: i64,
    #[serde(rename = "userName", default)]
    pub user_name: String,
    #[serde(rename = "toUserId")]
    pub to_user_id: i64,
    #[serde(default)]
    pub content: String,
    #[serde(default)]
    pub time: u64,
    #[serde(default)]
    pub offline: bool,
    /// Extension, client to server: the sender's own id for this message (at most
    /// [`MAX_MSG_ID`] bytes). A resend with the same id after an uncertain answer
    /// (504) is stored once, not twice.
    #[serde(rename = "msgId", default, skip_serializing_if = "Option::is_none")]
    pub msg_id: Option<String>,
    /// Extension, server to client, on offline deliveries: the stored message's id,
    /// for `OfflineAckMes`.
    #[serde(rename = "offlineId", default, skip_serializing_if = "Option::is_none")]
    pub offline_id: Option<u64>,
}

/// `OfflineAckMes` (extension, client to server): every offline message up to and
/// including `upto` (an `offlineId`) has reached the client.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct OfflineAckMes {
    pub upto: u64,
}

/// `HistoryMes` (extension, client to server): a page of the group conversation, or
/// with `with`, of the private conversation between the caller and that user.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct HistoryMes {
    /// Only entries with an id below this one; 0: the latest.
    #[serde(default)]
    pub before: u64,
    /// How many entries at most; the server serves at most [`HISTORY_PAGE_MAX`], and
    /// [`HISTORY_PAGE_DEFAULT`] when this is 0 or less. Any JSON number is taken (a
    /// larger ask is served the most there is, never refused).
    #[serde(default, deserialize_with = "any_count")]
    pub limit: i64,
    /// The other user of a private conversation; none: the group conversation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub with: Option<i64>,
    /// Only entries with an id above this one, the oldest of them first (`before` is
    /// then not looked at): how a client fills the gap after a reconnect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<u64>,
}

/// The most history entries served in one `HistoryResMes`.
pub const HISTORY_PAGE_MAX: usize = 100;
/// Entries served when `HistoryMes` names no `limit`.
pub const HISTORY_PAGE_DEFAULT: usize = 50;

/// One entry of a conversation's history, as `HistoryResMes` lists it (and as the
/// stores keep it).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct HistoryEntry {
    /// Increasing and unique within its conversation, from 1; 0 only before the store
    /// numbered it (and then left out of the JSON).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub id: u64,
    /// The server's time of acceptance, unix milliseconds.
    #[serde(default)]
    pub time: u64,
    #[serde(rename = "userId")]
    pub user_id: i64,
    #[serde(rename = "userName", default)]
    pub user_name: String,
    #[serde(default)]
    pub content: String,
    /// The recipient, on private entries only.
    #[serde(rename = "toUserId", default, skip_serializing_if = "Option::is_none")]
    pub to_user_id: Option<i64>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Any JSON number as an `i64`: fractions cut, numbers out of range saturated.
fn any_count<'de, D: serde::Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    let n = serde_json::Number::deserialize(d)?;
    Ok(n.as_i64()
        .or_else(|| n.as_u64().map(|_| i64::MAX))
        .or_else(|| n.as_f64().map(|f| f as i64))
        .unwrap_or(0))
}

/// `HistoryResMes` (extension, server to client): oldest first; `more` says whether
/// older entries exist.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct HistoryResMes {
    pub messages: Vec<HistoryEntry>,
    #[serde(default)]
    pub more: bool,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct OnlineUsersResMes {
    pub users: Vec<UserInfo>,
}

/// An empty object, the body of `OnlineUsersMes`, `LogoutMes`, `PingMes`, `PongMes`.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Empty {}

/// Declares a message enum and its `parse` and `encode` from one table: each variant
/// with its wire kind, and the body it carries (none for the empty messages).
macro_rules! messages {
    (
        $(#[$meta:meta])*
        pub enum $name:ident {
            $( $variant:ident $( ($body:ty) )? = $kind:path, )*
        }
    ) => {
        $(#[$meta])*
        pub enum $name {
            $( $variant $( ($body) )?, )*
        }

        impl $name {
            /// Parses one frame body (without the length prefix).
            pub fn parse(body: &[u8]) -> Result<$name, ParseError> {
                let env = envelope(body)?;
                let d = &*env.data;
                Ok(match &*env.kind {
                    $( $kind => messages!(@parse $name::$variant, $kind, d, [$($body)?]), )*
                    other => return Err(ParseError::UnknownType(truncate(other))),
                })
            }

            /// Encodes this message as one whole frame, prefix included.
            pub fn encode(&self) -> Vec<u8> {
                match self {
                    $(
                        messages!(@pattern $name::$variant, m, [$($body)?])
                            => messages!(@encode $kind, m, [$($body)?]),
                    )*
                }
            }
        }
    };
    (@parse $name:ident::$variant:ident, $kind:path, $d:ident, [$body:ty]) => {
        $name::$variant(data($kind, $d)?)
    };
    (@parse $name:ident::$variant:ident, $kind:path, $d:ident, []) => {
        empty($kind, $d, $name::$variant)?
    };
    (@pattern $name:ident::$variant:ident, $m:ident, [$body:ty]) => {
        $name::$variant($m)
    };
    (@pattern $name:ident::$variant:ident, $m:ident, []) => {
        $name::$variant
    };
    (@encode $kind:path, $m:ident, [$body:ty]) => {
        encode($kind, $m)
    };
    (@encode $kind:path, $m:ident, []) => {
        encode($kind, &Empty {})
    };
}

messages! {
    /// Every message a client may send.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum ClientMessage {
        Login(LoginMes) = kind::LOGIN,
        Register(RegisterMes) = kind::REGISTER,
        Sms(SmsMes) = kind::SMS,
        Private(SmsPrivateMes) = kind::SMS_PRIVATE,
        OnlineUsers = kind::ONLINE_USERS,
        Logout = kind::LOGOUT,
        Ping = kind::PING,
        OfflineAck(OfflineAckMes) = kind::OFFLINE_ACK,
        History(HistoryMes) = kind::HISTORY,
    }
}

messages! {
    /// Every message the server may send.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum ServerMessage {
        LoginRes(LoginResMes) = kind::LOGIN_RES,
        RegisterRes(CodeRes) = kind::REGISTER_RES,
        NotifyUserStatus(NotifyUserStatusMes) = kind::NOTIFY_USER_STATUS,
        Presence(PresenceMes) = kind::PRESENCE,
        Sms(SmsMes) = kind::SMS,
        Private(SmsPrivateMes) = kind::SMS_PRIVATE,
        SmsRes(CodeRes) = kind::SMS_RES,
        OnlineUsersRes(OnlineUsersResMes) = kind::ONLINE_USERS_RES,
        Pong = kind::PONG,
        Error(CodeRes) = kind::ERROR_RES,
        HistoryRes(HistoryResMes) = kind::HISTORY_RES,
    }
}

fn envelope(body: &[u8]) -> Result<Envelope<'_>, ParseError> {
    serde_json::from_slice(body).map_err(|e| ParseError::Envelope(e.to_string()))
}

fn data<'de, T: Deserialize<'de>>(kind: &'static str, data: &'de str) -> Result<T, ParseError> {
    serde_json::from_str(data).map_err(|e| ParseError::Data {
        kind,
        detail: e.to_string(),
    })
}

/// Bodies of the empty messages are ignored beyond being JSON: `{}`, `""` (the Go zero
/// value of a string) or any object are all accepted.
fn empty<T>(kind: &'static str, d: &str, value: T) -> Result<T, ParseError> {
    if d.trim().is_empty() {
        return Ok(value);
    }
    data::<serde::de::IgnoredAny>(kind, d).map(|_| value)
}

fn truncate(s: &str) -> String {
    s.chars().take(64).collect()
}

/// `s` as it reads inside a JSON string, without the quotes: an inner message's JSON
/// as it reads inside the envelope's `data` (for fragments encoded once and reused).
pub(crate) fn json_escaped(s: &str) -> String {
    let quoted = serde_json::to_string(s).expect("a string serialises");
    quoted[1..quoted.len() - 1].to_string()
}

/// Encodes `{"type": kind, "data": json(msg)}` with its length prefix, as one buffer.
pub fn encode<T: Serialize>(kind: &str, msg: &T) -> Vec<u8> {
    // Serialising plain structs of strings and numbers cannot fail.
    let inner = serde_json::to_string(msg).expect("message serialises");
    let mut out = Vec::with_capacity(HEADER_LEN + inner.len() + kind.len() + 32);
    out.extend_from_slice(&[0; HEADER_LEN]);
    serde_json::to_writer(
        &mut out,
        &Envelope {
            kind: kind.into(),
            data: inner.into(),
        },
    )
    .expect("envelope serialises");
    let len = (out.len() - HEADER_LEN) as u32;
    out[..HEADER_LEN].copy_from_slice(&len.to_be_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn body(frame: &[u8]) -> &[u8] {
        &frame[HEADER_LEN..]
    }

    #[test]
    fn seed_login_bytes_parse() {
        let inner = r#"{"userId":100,"userPwd":"123456","userName":""}"#;
        let outer = serde_json::json!({"type": "LoginMes", "data": inner}).to_string();
        let msg = ClientMessage::parse(outer.as_bytes()).unwrap();
        assert_eq!(
            msg,
            ClientMessage::Login(LoginMes {
                user_id: 100,
                user_pwd: "123456".into(),
                user_name: String::new(),
                ..Default::default()
            })
        );
    }

    #[test]
    fn login_res_uses_seed_key_and_order() {
        let frame = ServerMessage::LoginRes(LoginResMes {
            code: 200,
            users_id: vec![200, 100],
            error: String::new(),
            users: vec![],
            ..Default::default()
        })
        .encode();
        let env: serde_json::Value = serde_json::from_slice(body(&frame)).unwrap();
        assert_eq!(env["type"], "LoginResMes");
        assert_eq!(
            env["data"].as_str().unwrap(),
            r#"{"code":200,"UsersId":[200,100],"error":""}"#
        );
        let len = u32::from_be_bytes(frame[..4].try_into().unwrap()) as usize;
        assert_eq!(len, frame.len() - 4);
    }

    #[test]
    fn seed_register_and_sms_shapes() {
        let reg =
            r#"{"user":{"userId":300,"userPwd":"pw","userName":"scott","userStatus":0,"sex":""}}"#;
        let outer = serde_json::json!({"type": "RegisterMes", "data": reg}).to_string();
        match ClientMessage::parse(outer.as_bytes()).unwrap() {
            ClientMessage::Register(r) => {
                assert_eq!(r.user.user_id, 300);
                assert_eq!(r.user.user_name, "scott");
                assert_eq!(r.user.user_pwd, "pw");
            }
            other => panic!("{other:?}"),
        }
        let sms = ServerMessage::Sms(SmsMes {
            content: "hi".into(),
            user_id: 100,
            user_name: "scott".into(),
            time: Some(5),
            ..Default::default()
        })
        .encode();
        let env: serde_json::Value = serde_json::from_slice(body(&sms)).unwrap();
        assert_eq!(
            env["data"].as_str().unwrap(),
            r#"{"content":"hi","userId":100,"userPwd":"","userName":"scott","userStatus":0,"sex":"","time":5}"#
        );
        let notify = ServerMessage::NotifyUserStatus(NotifyUserStatusMes {
            user_id: 200,
            status: 0,
            user_name: String::new(),
        })
        .encode();
        let env: serde_json::Value = serde_json::from_slice(body(&notify)).unwrap();
        assert_eq!(
            env["data"].as_str().unwrap(),
            r#"{"userId":200,"status":0}"#
        );
    }

    #[test]
    fn every_message_round_trips() {
        let client = vec![
            ClientMessage::Login(LoginMes {
                user_id: 1,
                user_pwd: "p".into(),
                user_name: "n".into(),
                ..Default::default()
            }),
            ClientMessage::Register(RegisterMes {
                user: User {
                    user_id: 2,
                    user_pwd: "x".into(),
                    user_name: "y".into(),
                    user_status: 0,
                    sex: "f".into(),
                },
                ..Default::default()
            }),
            ClientMessage::Sms(SmsMes {
                content: "héllo \"quoted\"\n".into(),
                ..Default::default()
            }),
            ClientMessage::Private(SmsPrivateMes {
                to_user_id: 9,
                content: "yo".into(),
                ..Default::default()
            }),
            ClientMessage::OnlineUsers,
            ClientMessage::Logout,
            ClientMessage::Ping,
        ];
        for m in client {
            assert_eq!(ClientMessage::parse(body(&m.encode())).unwrap(), m);
        }
        let server = vec![
            ServerMessage::LoginRes(LoginResMes {
                code: 200,
                users_id: vec![1],
                error: String::new(),
                users: vec![UserInfo {
                    user_id: 1,
                    user_name: "a".into(),
                }],
                ..Default::default()
            }),
            ServerMessage::RegisterRes(CodeRes {
                code: 400,
                error: "taken".into(),
                ..Default::default()
            }),
            ServerMessage::NotifyUserStatus(NotifyUserStatusMes {
                user_id: 3,
                status: 1,
                user_name: "c".into(),
            }),
            ServerMessage::Sms(SmsMes {
                content: "x".into(),
                time: Some(1),
                ..Default::default()
            }),
            ServerMessage::Private(SmsPrivateMes {
                user_id: 1,
                user_name: "a".into(),
                to_user_id: 2,
                content: "c".into(),
                time: 7,
                offline: true,
                ..Default::default()
            }),
            ServerMessage::SmsRes(CodeRes {
                code: 202,
                error: String::new(),
                ..Default::default()
            }),
            ServerMessage::OnlineUsersRes(OnlineUsersResMes { users: vec![] }),
            ServerMessage::Pong,
            ServerMessage::Error(CodeRes {
                code: 401,
                error: "log in first".into(),
                ..Default::default()
            }),
        ];
        for m in server {
            assert_eq!(ServerMessage::parse(body(&m.encode())).unwrap(), m);
        }
    }

    #[test]
    fn malformed_bodies_are_errors_not_panics() {
        let cases: &[&[u8]] = &[
            b"",
            b"not json",
            b"{}",
            b"[]",
            b"{\"type\":1,\"data\":\"{}\"}",
            b"{\"type\":\"LoginMes\"}",
            b"{\"type\":\"LoginMes\",\"data\":{}}",
            b"{\"type\":\"LoginMes\",\"data\":\"not json\"}",
            b"{\"type\":\"LoginMes\",\"data\":\"{\\\"userId\\\":\\\"x\\\"}\"}",
            b"{\"type\":\"LoginMes\",\"data\":\"{\\\"userId\\\":1.5}\"}",
            b"{\"type\":\"Nope\",\"data\":\"{}\"}",
            b"{\"type\":\"PingMes\",\"data\":\"[\"}",
            b"\xff\xfe",
        ];
        for c in cases {
            assert!(
                ClientMessage::parse(c).is_err(),
                "{:?}",
                String::from_utf8_lossy(c)
            );
        }
        assert!(matches!(
            ClientMessage::parse(b"{\"type\":\"Nope\",\"data\":\"{}\"}"),
            Err(ParseError::UnknownType(t)) if t == "Nope"
        ));
    }

    #[test]
    fn unknown_fields_are_ignored_and_empty_bodies_accepted() {
        let outer = serde_json::json!({"type": "PingMes", "data": "", "extra": 1}).to_string();
        assert_eq!(
            ClientMessage::parse(outer.as_bytes()).unwrap(),
            ClientMessage::Ping
        );
        let outer = serde_json::json!({"type": "SmsPrivateMes",
            "data": r#"{"toUserId":5,"content":"a","whatever":[1,2]}"#})
        .to_string();
        assert!(matches!(
            ClientMessage::parse(outer.as_bytes()).unwrap(),
            ClientMessage::Private(SmsPrivateMes { to_user_id: 5, .. })
        ));
    }

    #[test]
    fn check_reports_incomplete_complete_and_too_large() {
        assert_eq!(check(&[], 10), Ok(None));
        assert_eq!(check(&[0, 0, 0], 10), Ok(None));
        assert_eq!(check(&[0, 0, 0, 2, b'a'], 10), Ok(None));
        assert_eq!(check(&[0, 0, 0, 2, b'a', b'b', b'c'], 10), Ok(Some(6)));
        assert_eq!(check(&[0, 0, 0, 0], 10), Ok(Some(4)));
        assert_eq!(
            check(&[0xff, 0xff, 0xff, 0xff], 10),
            Err(FrameError::TooLarge {
                len: u32::MAX as usize,
                max: 10
            })
        );
    }

    #[test]
    fn decoder_assembles_a_frame_split_at_every_byte() {
        let mut stream = ClientMessage::Ping.encode();
        stream.extend(
            ClientMessage::Sms(SmsMes {
                content: "split me".into(),
                ..Default::default()
            })
            .encode(),
        );
        for cut in 0..=stream.len() {
            let mut d = FrameDecoder::new(DEFAULT_MAX_FRAME);
            let mut got = Vec::new();
            for part in [&stream[..cut], &stream[cut..]] {
                d.push(part);
                while let Some(f) = d.next_frame().unwrap() {
                    got.push(ClientMessage::parse(&f).unwrap());
                }
            }
            assert_eq!(got.len(), 2, "cut at {cut}");
            assert_eq!(got[0], ClientMessage::Ping);
            assert_eq!(d.buffered(), 0);
        }
    }

    proptest! {
        #[test]
        fn decoder_never_panics_on_any_bytes(
            bytes in proptest::collection::vec(any::<u8>(), 0..2048),
            cuts in proptest::collection::vec(0usize..2048, 0..8),
        ) {
            let mut d = FrameDecoder::new(512);
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(bytes.len())).collect();
            cuts.sort_unstable();
            let mut prev = 0;
            'outer: for c in cuts.into_iter().chain([bytes.len()]) {
                d.push(&bytes[prev..c]);
                prev = c;
                loop {
                    match d.next_frame() {
                        Ok(Some(f)) => {
                            prop_assert!(f.len() <= 512);
                            let _ = ClientMessage::parse(&f);
                            let _ = ServerMessage::parse(&f);
                        }
                        Ok(None) => break,
                        Err(FrameError::TooLarge { len, max }) => {
                            prop_assert!(len > max);
                            break 'outer;
                        }
                    }
                }
            }
        }

        #[test]
        fn any_split_of_valid_frames_yields_the_same_messages(
            contents in proptest::collection::vec(".{0,40}", 1..6),
            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..6),
        ) {
            let msgs: Vec<ClientMessage> = contents
                .iter()
                .map(|c| ClientMessage::Sms(SmsMes { content: c.clone(), ..Default::default() }))
                .collect();
            let stream: Vec<u8> = msgs.iter().flat_map(|m| m.encode()).collect();
            let mut points: Vec<usize> = cuts.iter().map(|i| i.index(stream.len() + 1)).collect();
            points.sort_unstable();
            let mut d = FrameDecoder::new(DEFAULT_MAX_FRAME);
            let mut got = Vec::new();
            let mut prev = 0;
            for p in points.into_iter().chain([stream.len()]) {
                d.push(&stream[prev..p]);
                prev = p;
                while let Some(f) = d.next_frame().unwrap() {
                    got.push(ClientMessage::parse(&f).unwrap());
                }
            }
            prop_assert_eq!(got, msgs);
        }
    }
}
