//! `chat`: the plain terminal client.
//!
//! The seed's menus, by number: `1` log in, `2` register, `3` exit; once logged in,
//! `1` online users, `2` group message, `3` private message, `4` log out, and `5`
//! earlier group messages. At login it shows the last group messages (history), and
//! before a private message the last lines with that person. Everything the server
//! pushes (messages, people coming and going, errors) is printed the moment it
//! arrives, whatever prompt is showing.
//!
//! On a terminal, input goes through a line editor (rustyline): a message that
//! arrives is printed above the line being typed, which stays as it was; the usual
//! editing keys work, and up and down go through what was typed before. Through a
//! pipe, input is read line by line as it comes, so a script can drive the client;
//! end of input logs out and exits with status 0.
//!
//! With `--tls` (or `--tls-ca PEM`) it connects over TLS and verifies the server's
//! certificate for the host it was given; one that does not verify is refused.
//!
//! Exit status: 0 after `3` or end of input; 1 if the last attempt to reach the server
//! failed, or its certificate was refused (so a script can tell that the server was
//! down).
//!
//! It logs in `compact`: who is online comes as `names` in the login reply and
//! `PresenceMes` batches (the seed's server ignores the flag).
//!
//! Against the seed's own Go server (its login reply names nobody) the
//! online list is the login reply's ids kept current by the status notices, and private
//! messages are refused at once: that server would not answer them.
//!
//! It never sends a frame longer than the server takes (see `link::SEND_LIMIT`): a
//! longer message is refused here, with a sentence, and the session goes on. If the
//! connection is lost while the logged-in menu waits, the line typed next is the main
//! menu's.

mod link;
mod show;
mod tls;

use std::io::{self, BufRead};
use std::process::ExitCode;

use clap::Parser;

use chat::proto::{
    ClientMessage, HistoryMes, LoginMes, RegisterMes, ServerMessage, SmsMes, SmsPrivateMes, User,
    code,
};

use link::{Link, MAX_FRAME, SendError, WaitError};

/// The seed's register code for a storage error (its 505 means "user exists").
const SEED_REGISTER_FAILED: u16 = 506;

/// Whether a register refusal's text is the seed's "user exists" ("用户已经存在...",
/// sent with code 505), or an English equivalent.
fn says_user_exists(error: &str) -> bool {
    error.contains("已经存在") || error.to_ascii_lowercase().contains("exist")
}

/// Whether a 505 is a busy refusal: it carries `retryAfter`, or (older servers) says so.
fn is_busy(error: &str, retry_after: Option<u64>) -> bool {
    retry_after.is_some() || error.starts_with("server busy")
}

/// Terminal client for the chat server.
#[derive(Parser, Debug)]
#[command(name = "chat", version)]
struct Args {
    /// The server's address, HOST:PORT.
    #[arg(long, default_value = "127.0.0.1:8889", value_name = "ADDR")]
    server: String,

    /// Connect with TLS (the server's --tls-listen port), verifying the server's
    /// certificate for HOST against the system's trusted roots.
    #[arg(long)]
    tls: bool,

    /// With TLS, trust this CA certificate (PEM) instead of the system's roots: for
    /// a server with a private or self-signed certificate. Implies --tls.
    #[arg(long, value_name = "PEM")]
    tls_ca: Option<std::path::PathBuf>,
}

/// Group messages shown at login, and per page of earlier ones.
const EARLIER_PAGE: i64 = 20;
/// Lines of a private conversation shown before writing in it.
const PRIVATE_LINES: i64 = 5;

/// Lines from stdin; `None` at end of input.
struct Input {
    lines: io::Lines<io::StdinLock<'static>>,
    /// On a terminal: the line editor.
    editor: Option<rustyline::DefaultEditor>,
}

impl Input {
    /// The line editor if stdin and stdout are both a terminal, plain lines otherwise.
    fn new() -> Input {
        // SAFETY: isatty only looks at the descriptors.
        let tty = unsafe { libc::isatty(0) == 1 && libc::isatty(1) == 1 };
        let editor = tty.then(editor).flatten();
        Input {
            lines: io::stdin().lock().lines(),
            editor,
        }
    }

    fn ask(&mut self, prompt: &str) -> Option<String> {
        if let Some(rl) = self.editor.as_mut() {
            return match rl.readline(prompt) {
                Ok(line) => {
                    if !line.trim().is_empty() {
                        let _ = rl.add_history_entry(line.as_str());
                    }
                    Some(line)
                }
                // Ctrl-C: this answer is dropped, as an empty line would be.
                Err(rustyline::error::ReadlineError::Interrupted) => Some(String::new()),
                // Ctrl-D, or the terminal gone: end of input.
                Err(_) => None,
            };
        }
        self.ask_plain(prompt)
    }

    /// A plain line from stdin, never through the line editor (which would show it
    /// and keep it in its history).
    fn ask_plain(&mut self, prompt: &str) -> Option<String> {
        show::prompt(prompt);
        let line = self.lines.next();
        show::answered();
        match line {
            Some(Ok(l)) => Some(l.trim_end_matches(['\r', '\n']).to_string()),
            _ => {
                show::line("");
                None
            }
        }
    }

    /// Like `ask`, with echo turned off when stdin is a terminal.
    fn ask_secret(&mut self, prompt: &str) -> Option<String> {
        let _guard = EchoOff::new();
        let answer = self.ask_plain(prompt);
        if _guard.active() {
            show::line("");
        }
        answer
    }

    fn ask_id(&mut self, prompt: &str) -> Option<Option<i64>> {
        let l = self.ask(prompt)?;
        match l.trim().parse::<i64>() {
            Ok(id) if id > 0 => Some(Some(id)),
            _ => {
                show::line("A user id is a positive whole number.");
                Some(None)
            }
        }
    }
}

/// A line editor whose printer carries the server's pushes, or `None` if the terminal
/// cannot have one (the client then reads plain lines).
fn editor() -> Option<rustyline::DefaultEditor> {
    use rustyline::ExternalPrinter as _;
    let mut rl = rustyline::DefaultEditor::new().ok()?;
    let mut printer = rl.create_external_printer().ok()?;
    show::set_printer(Box::new(move |s| {
        let _ = printer.print(s);
    }));
    Some(rl)
}

/// Turns terminal echo off while alive (only when stdin is a terminal), so that a
/// password typed at a prompt is not shown.
struct EchoOff {
    saved: Option<libc::termios>,
}

impl EchoOff {
    fn new() -> EchoOff {
        // SAFETY: isatty/tcgetattr/tcsetattr only read and write the termios struct
        // we own; fd 0 is stdin for the life of the process.
        unsafe {
            if libc::isatty(0) != 1 {
                return EchoOff { saved: None };
            }
            let mut t: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(0, &mut t) != 0 {
                return EchoOff { saved: None };
            }
            let saved = t;
            t.c_lflag &= !libc::ECHO;
            if libc::tcsetattr(0, libc::TCSANOW, &t) != 0 {
                return EchoOff { saved: None };
            }
            EchoOff { saved: Some(saved) }
        }
    }

    fn active(&self) -> bool {
        self.saved.is_some()
    }
}

impl Drop for EchoOff {
    fn drop(&mut self) {
        if let Some(t) = &self.saved {
            // SAFETY: restores the settings read in `new`.
            unsafe { libc::tcsetattr(0, libc::TCSANOW, t) };
        }
    }
}

/// Whether the program goes on or ends.
enum Flow {
    Continue,
    Quit,
}

struct App {
    server: String,
    /// TLS settings, if the connection uses TLS.
    tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    input: Input,
    /// The last attempt to reach the server failed.
    unreachable: bool,
    /// A line typed at the logged-in menu after the connection was lost: the main
    /// menu's choice, not dropped.
    carried: Option<String>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let tls = if args.tls || args.tls_ca.is_some() {
        match tls::config(args.tls_ca.as_deref()) {
            Ok(c) => Some(c),
            Err(e) => {
                eprintln!("chat: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        None
    };
    let mut app = App {
        server: args.server,
        tls,
        input: Input::new(),
        unreachable: false,
        carried: None,
    };
    app.main_menu();
    if app.unreachable {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

impl App {
    fn main_menu(&mut self) {
        loop {
            show::line("");
            show::line("---------- Chat: welcome ----------");
            show::line("  1  Log in");
            show::line("  2  Register");
            show::line("  3  Exit");
            let choice = match self.carried.take() {
                Some(c) => {
                    show::line(&format!("Choose (1-3): {c}"));
                    c
                }
                None => match self.input.ask("Choose (1-3): ") {
                    Some(c) => c,
                    None => return,
                },
            };
            let flow = match choice.trim() {
                "1" => self.login(),
                "2" => self.register(),
                "3" => {
                    show::line("Goodbye.");
                    return;
                }
                "" => Flow::Continue,
                _ => {
                    show::line("Please enter 1, 2 or 3.");
                    Flow::Continue
                }
            };
            if let Flow::Quit = flow {
                return;
            }
        }
    }

    fn connect(&mut self) -> Option<Link> {
        match Link::connect(&self.server, self.tls.as_ref()) {
            Ok(l) => {
                self.unreachable = false;
                Some(l)
            }
            Err(e) if e.kind() == io::ErrorKind::InvalidData && self.tls.is_some() => {
                self.unreachable = true;
                show::line(&format!("TLS with {} refused: {e}.", self.server));
                None
            }
            Err(e) => {
                self.unreachable = true;
                let why = match e.kind() {
                    io::ErrorKind::ConnectionRefused => "nothing is listening there".to_string(),
                    io::ErrorKind::TimedOut => "it did not answer".to_string(),
                    _ => e.to_string(),
                };
                show::line(&format!(
                    "Cannot reach the server at {}: {why}.",
                    self.server
                ));
                None
            }
        }
    }

    fn register(&mut self) -> Flow {
        let Some(id) = self.input.ask_id("User id: ") else {
            return Flow::Quit;
        };
        let Some(pwd) = self.input.ask_secret("Password: ") else {
            return Flow::Quit;
        };
        let Some(name) = self.input.ask("User name: ") else {
            return Flow::Quit;
        };
        let Some(id) = id else {
            return Flow::Continue;
        };
        let Some(mut link) = self.connect() else {
            return Flow::Continue;
        };
        let msg = ClientMessage::Register(RegisterMes {
            user: User {
                user_id: id,
                user_pwd: pwd,
                user_name: name.trim().to_string(),
                ..User::default()
            },
            max_frame: Some(MAX_FRAME as u32),
        });
        match link.request(&msg) {
            Ok(ServerMessage::RegisterRes(r)) => show::line(&match r.code {
                code::OK => format!("Registered as user {id}. You can log in now."),
                code::BAD_REQUEST if r.error.contains("taken") => {
                    format!("User id {id} is already taken.")
                }
                code::BAD_REQUEST => format!("Not registered: {}.", r.error),
                code::SERVER_ERROR if is_busy(&r.error, r.retry_after) => {
                    format!("Not registered: {}.", show::busy(&r.error, r.retry_after))
                }
                // The seed's server answers a taken id with 505 "用户已经存在...".
                code::SERVER_ERROR if says_user_exists(&r.error) => {
                    format!("User id {id} is already taken.")
                }
                code::SERVER_ERROR | SEED_REGISTER_FAILED => {
                    format!(
                        "Not registered: the server had a problem ({}). Try again later.",
                        r.error
                    )
                }
                _ => format!("Not registered: {} (code {}).", r.error, r.code),
            }),
            Ok(ServerMessage::Error(_)) => {} // already printed
            Ok(other) => show::line(&format!("Unexpected answer from the server: {other:?}")),
            Err(e) => wait_failed("Not registered", e),
        }
        link.close(false);
        Flow::Continue
    }

    fn login(&mut self) -> Flow {
        let Some(id) = self.input.ask_id("User id: ") else {
            return Flow::Quit;
        };
        let Some(pwd) = self.input.ask_secret("Password: ") else {
            return Flow::Quit;
        };
        let Some(id) = id else {
            return Flow::Continue;
        };
        let Some(mut link) = self.connect() else {
            return Flow::Continue;
        };
        let msg = ClientMessage::Login(LoginMes {
            user_id: id,
            user_pwd: pwd,
            user_name: String::new(),
            max_frame: Some(MAX_FRAME as u32),
            compact: true,
            ..LoginMes::default()
        });
        let (name, seed) = match link.request(&msg) {
            Ok(ServerMessage::LoginRes(r)) if r.code == code::OK => {
                // This project's server always names the users it lists (the caller
                // at least); a reply without names comes from the seed's server.
                let named = r.named();
                let seed = named.is_empty();
                let name = named
                    .iter()
                    .find(|u| u.user_id == id)
                    .map(|u| u.user_name.clone())
                    .unwrap_or_default();
                show::line(&format!("Logged in as {}.", show::who(id, &name)));
                if seed {
                    show::line(
                        "This server is the tutorial's original: group messages only, \
                         and it does not say when people leave.",
                    );
                }
                print_roster(&link, seed);
                link.login_shown();
                (name, seed)
            }
            Ok(ServerMessage::LoginRes(r)) => {
                show::line(&match r.code {
                    code::NO_SUCH_USER => format!("Login failed: there is no user {id}."),
                    code::WRONG_PASSWORD => "Login failed: wrong password.".to_string(),
                    code::SERVER_ERROR if is_busy(&r.error, r.retry_after) => {
                        format!("Login failed: {}.", show::busy(&r.error, r.retry_after))
                    }
                    code::SERVER_ERROR => {
                        "Login failed: the server had a problem. Try again later.".to_string()
                    }
                    _ => format!("Login failed: {} (code {}).", r.error, r.code),
                });
                link.close(false);
                return Flow::Continue;
            }
            Ok(ServerMessage::Error(_)) => {
                link.close(false);
                return Flow::Continue;
            }
            Ok(other) => {
                show::line(&format!("Unexpected answer from the server: {other:?}"));
                link.close(false);
                return Flow::Continue;
            }
            Err(e) => {
                wait_failed("Login failed", e);
                link.close(false);
                return Flow::Continue;
            }
        };
        self.session(link, id, &name, seed)
    }

    /// The logged-in menu. `seed`: the server is the seed's, which answers only login,
    /// register and group messages (anything else gets no answer at all).
    fn session(&mut self, mut link: Link, id: i64, name: &str, seed: bool) -> Flow {
        // The seed's server does not know `LogoutMes`: just close.
        let logout = !seed;
        // Where the next page of earlier group messages starts: `Some(0)` the latest,
        // `None` nothing older.
        let mut older = Some(0);
        if !seed {
            show_earlier(&mut link, id, &mut older, true);
        }
        loop {
            if !link.is_alive() {
                link.close(false);
                return Flow::Continue;
            }
            show::line("");
            show::line(&format!(
                "---------- Logged in as {} ----------",
                show::who(id, name)
            ));
            show::line("  1  Show online users");
            show::line("  2  Send a group message");
            show::line("  3  Send a private message");
            show::line("  4  Log out");
            if !seed {
                show::line("  5  Earlier group messages");
            }
            let Some(choice) = self.input.ask(if seed {
                "Choose (1-4): "
            } else {
                "Choose (1-5): "
            }) else {
                link.close(logout);
                return Flow::Quit;
            };
            if !link.is_alive() {
                // The line came after the connection was lost (which the reader has
                // printed): it is the main menu's, so that a `1` typed to log in again
                // once the server is back is not dropped.
                link.close(false);
                if !choice.trim().is_empty() {
                    show::line("You are logged out: the connection to the server was lost.");
                    self.carried = Some(choice);
                }
                return Flow::Continue;
            }
            match choice.trim() {
                // The seed's server would not answer: the list kept from the login
                // reply and the notices is all there is.
                "1" if seed => print_roster(&link, seed),
                "1" => match link.request(&ClientMessage::OnlineUsers) {
                    Ok(ServerMessage::OnlineUsersRes(_)) => print_roster(&link, seed),
                    Ok(_) => {}
                    Err(e) => wait_failed("No list", e),
                },
                "2" => {
                    let Some(text) = self.input.ask("Message to everyone: ") else {
                        link.close(logout);
                        return Flow::Quit;
                    };
                    if text.trim().is_empty() {
                        show::line("Nothing sent: the message is empty.");
                        continue;
                    }
                    let msg = ClientMessage::Sms(SmsMes {
                        content: text,
                        user_id: id,
                        user_name: name.to_string(),
                        ..SmsMes::default()
                    });
                    match link.send(&msg) {
                        Ok(()) => show::line("Sent to everyone online."),
                        Err(SendError::TooLarge(t)) => show::line(&format!(
                            "Not sent: {}. Nothing went out; you are still logged in.",
                            show::too_large(t.len, t.max)
                        )),
                        Err(SendError::Closed) => {
                            show::line("Not sent: the connection to the server is gone.")
                        }
                    }
                }
                "3" if seed => show::line(
                    "Private messages are not supported by this server (the tutorial's \
                     original): use a group message.",
                ),
                "3" => {
                    let Some(to) = self.input.ask_id("Recipient's user id: ") else {
                        link.close(logout);
                        return Flow::Quit;
                    };
                    if let Some(to) = to {
                        show_conversation(&mut link, id, to);
                    }
                    let Some(text) = self.input.ask("Message: ") else {
                        link.close(logout);
                        return Flow::Quit;
                    };
                    let Some(to) = to else { continue };
                    if text.trim().is_empty() {
                        show::line("Nothing sent: the message is empty.");
                        continue;
                    }
                    let msg = ClientMessage::Private(SmsPrivateMes {
                        to_user_id: to,
                        content: text,
                        ..SmsPrivateMes::default()
                    });
                    match link.request(&msg) {
                        Ok(ServerMessage::SmsRes(r)) => show::line(&match r.code {
                            code::OK => format!("Delivered to user {to}."),
                            code::PARTIAL => format!(
                                "Delivered to user {to}, cut short: their client cannot take it whole."
                            ),
                            code::STORED => format!(
                                "User {to} is offline; the message will be delivered when they log in."
                            ),
                            code::NOT_FOUND => format!("Not sent: there is no user {to}."),
                            code::UNAVAILABLE => {
                                "Not sent: the server cannot store messages right now.".to_string()
                            }
                            _ => format!("Not sent: {} (code {}).", r.error, r.code),
                        }),
                        Ok(_) => {}
                        Err(e) => wait_failed("Not sent", e),
                    }
                }
                "4" => {
                    link.close(logout);
                    show::line("Logged out.");
                    return Flow::Continue;
                }
                "5" if !seed => show_earlier(&mut link, id, &mut older, false),
                "" => {}
                _ if seed => show::line("Please enter a number from 1 to 4."),
                _ => show::line("Please enter a number from 1 to 5."),
            }
        }
    }
}

/// Asks for a page of history; `None` if there is no answer to show (an error frame
/// is printed as it comes).
fn history(link: &mut Link, req: HistoryMes) -> Option<(Vec<chat::proto::HistoryEntry>, bool)> {
    match link.request(&ClientMessage::History(req)) {
        Ok(ServerMessage::HistoryRes(r)) => Some((r.messages, r.more)),
        Ok(_) => None,
        Err(e) => {
            wait_failed("No earlier messages", e);
            None
        }
    }
}

/// The next page of earlier group messages, under a line that says what they are.
/// `older` is where the page starts, and is moved on past it. At login (`first`) an
/// empty history prints nothing.
fn show_earlier(link: &mut Link, me: i64, older: &mut Option<u64>, first: bool) {
    let Some(before) = *older else {
        show::line("No earlier group messages.");
        return;
    };
    let req = HistoryMes {
        before,
        limit: EARLIER_PAGE,
        with: None,
        after: None,
    };
    let Some((msgs, more)) = history(link, req) else {
        return;
    };
    *older = msgs.first().filter(|_| more).map(|e| e.id);
    if msgs.is_empty() {
        if !first {
            show::line("No earlier group messages.");
        }
        return;
    }
    let what = if first {
        format!("Earlier messages in the group (the last {})", msgs.len())
    } else {
        format!("Earlier messages in the group ({} more)", msgs.len())
    };
    show::line(&format!("---------- {what} ----------"));
    for e in &msgs {
        show::line(&show::earlier(e, me));
    }
    show::line(&if more {
        "---------- (5 in the menu shows earlier ones) ----------".to_string()
    } else {
        "---------- (that is the beginning) ----------".to_string()
    });
}

/// The last lines of the private conversation with `with`, if there are any.
fn show_conversation(link: &mut Link, me: i64, with: i64) {
    let req = HistoryMes {
        before: 0,
        limit: PRIVATE_LINES,
        with: Some(with),
        after: None,
    };
    let Some((msgs, _)) = history(link, req) else {
        return;
    };
    if msgs.is_empty() {
        return;
    }
    let name = msgs
        .iter()
        .find(|e| e.user_id == with)
        .map_or("", |e| e.user_name.as_str());
    show::line(&format!(
        "---------- Your last messages with {} ----------",
        show::who(with, name)
    ));
    for e in &msgs {
        show::line(&show::earlier(e, me));
    }
    show::line("----------");
}

/// The online list. From the seed's server it is only as good as its notices: it never
/// says when someone leaves.
fn print_roster(link: &Link, seed: bool) {
    let roster = link.roster.lock().unwrap_or_else(|p| p.into_inner());
    let list: Vec<String> = roster.iter().map(|(id, n)| show::who(*id, n)).collect();
    let note = if seed {
        " (this server does not report people leaving)"
    } else {
        ""
    };
    show::line(&format!(
        "Online now ({}): {}{note}",
        list.len(),
        list.join(", ")
    ));
}

/// A request that got no usable answer; `failed` says what did not happen ("Login
/// failed").
fn wait_failed(failed: &str, e: WaitError) {
    show::line(&match e {
        WaitError::Closed => format!("{failed}: the connection to the server is gone."),
        WaitError::TimedOut => format!("{failed}: no answer from the server in time."),
        WaitError::Unreadable(what) => {
            format!("{failed}: the server's answer could not be read ({what}).")
        }
        WaitError::TooLarge(t) => format!(
            "{failed}: {}. Nothing went out.",
            show::too_large(t.len, t.max)
        ),
        WaitError::Tls => format!(
            "{failed}: the server speaks TLS on that port. Start the client with --tls \
             (or --tls-ca PEM for a private certificate)."
        ),
    });
}
