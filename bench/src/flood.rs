//! `flood`: N logged-in connections send group messages as fast as their sockets take
//! them, while one quiet user listens. Reports the server's CPU time while it runs
//! (from `/proc/PID/stat`), what the flooders managed to write, what reached the
//! listener, and how many flooders the server closed. Plain blocking sockets, a thread
//! or two per connection: the load is the point, not the bench's efficiency.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use crate::wire::{self, ChatKind};
use crate::{Res, proc_cpu};

#[derive(clap::Args, Clone)]
pub(crate) struct FloodArgs {
    /// Server address (plain TCP).
    #[arg(long, default_value = "127.0.0.1:8889")]
    addr: SocketAddr,
    /// Flooding connections.
    #[arg(long, short = 'n', default_value_t = 10)]
    conns: usize,
    /// Seconds of flooding.
    #[arg(long, short = 'd', default_value_t = 15.0)]
    duration: f64,
    /// Payload (message content) size in bytes.
    #[arg(long, short = 's', default_value_t = 64)]
    size: usize,
    /// First user id the bench registers and logs in.
    #[arg(long, default_value_t = 2_000_000)]
    base_id: i64,
    /// The server's process id, to read its CPU time.
    #[arg(long)]
    pub(crate) server_pid: u32,
}

/// Registers (ignored if taken) and logs `id` in on a new connection.
fn online(addr: SocketAddr, id: i64) -> Res<TcpStream> {
    let mut s = TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_nodelay(true).ok();
    s.set_read_timeout(Some(Duration::from_secs(30))).ok();
    s.write_all(&wire::chat_login(id, &format!("pw{id}"), true, true))
        .map_err(|e| format!("log in {id}: {e}"))?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        while let Some((total, body)) = wire::chat_frame(&buf) {
            let b = &buf[body];
            if wire::chat_kind(b) == ChatKind::LoginRes {
                return match wire::chat_code(b) {
                    Some(200) => Ok(s),
                    code => Err(format!("login of {id} refused: {code:?}")),
                };
            }
            buf.drain(..total);
        }
        let n = s
            .read(&mut chunk)
            .map_err(|e| format!("log in {id}: {e}"))?;
        if n == 0 {
            return Err(format!("log in {id}: closed"));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Reads and drops everything until the peer closes (or `stop`); counts the group
/// messages when `count` is given. Returns whether the server closed first (not the
/// bench's own shutdown at the end).
fn drain(mut s: TcpStream, stop: Arc<AtomicBool>, count: Option<Arc<AtomicU64>>) -> bool {
    s.set_read_timeout(Some(Duration::from_millis(200))).ok();
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    while !stop.load(Ordering::Relaxed) {
        match s.read(&mut chunk) {
            Ok(0) => return !stop.load(Ordering::Relaxed),
            Ok(n) => {
                if let Some(c) = &count {
                    buf.extend_from_slice(&chunk[..n]);
                    let mut used = 0;
                    while let Some((total, body)) = wire::chat_frame(&buf[used..]) {
                        let b = &buf[used + body.start..used + body.end];
                        if wire::chat_kind(b) == ChatKind::Sms {
                            c.fetch_add(1, Ordering::Relaxed);
                        }
                        used += total;
                    }
                    buf.drain(..used);
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return !stop.load(Ordering::Relaxed),
        }
    }
    false
}

pub(crate) fn run(a: &FloodArgs) -> Res<()> {
    let stop = Arc::new(AtomicBool::new(false));
    let heard = Arc::new(AtomicU64::new(0));
    let listener = online(a.addr, a.base_id)?;
    let mut flooders = Vec::new();
    for i in 0..a.conns {
        flooders.push(online(a.addr, a.base_id + 1 + i as i64)?);
    }
    // Let the login notices settle before measuring.
    thread::sleep(Duration::from_millis(500));
    let l = {
        let (stop, heard) = (stop.clone(), heard.clone());
        thread::spawn(move || drain(listener, stop, Some(heard)))
    };
    let content = "x".repeat(a.size);
    let batch: Vec<u8> = (0..64).flat_map(|_| wire::chat_sms(&content)).collect();
    let frame_len = (batch.len() / 64) as u64;
    let written = Arc::new(AtomicU64::new(0));
    let mut threads = Vec::new();
    let started = Instant::now();
    let cpu0 = proc_cpu(a.server_pid)?;
    for s in flooders {
        let reader = s.try_clone().map_err(|e| e.to_string())?;
        let r = {
            let stop = stop.clone();
            thread::spawn(move || drain(reader, stop, None))
        };
        let (stop, written, batch) = (stop.clone(), written.clone(), batch.clone());
        let w = thread::spawn(move || {
            let mut s = s;
            s.set_write_timeout(Some(Duration::from_millis(200))).ok();
            let mut at = 0;
            while !stop.load(Ordering::Relaxed) {
                match s.write(&batch[at..]) {
                    Ok(n) => {
                        written.fetch_add(n as u64, Ordering::Relaxed);
                        at = (at + n) % batch.len();
                    }
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) => {}
                    Err(_) => break,
                }
            }
            let _ = s.shutdown(Shutdown::Both);
        });
        threads.push((r, w));
    }
    let wall = Duration::from_secs_f64(a.duration);
    thread::sleep(wall);
    let cpu = proc_cpu(a.server_pid)?.saturating_sub(cpu0);
    let took = started.elapsed();
    let heard_n = heard.load(Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    let mut closed = 0;
    for (r, w) in threads {
        if r.join().unwrap_or(false) {
            closed += 1;
        }
        let _ = w.join();
    }
    let _ = l.join();
    let sent = written.load(Ordering::Relaxed) / frame_len.max(1);
    let secs = took.as_secs_f64();
    println!(
        "flood N={} D={:.0}s S={} (group messages, as fast as the sockets take them)",
        a.conns, secs, a.size
    );
    println!(
        "  server CPU      {:.2} s in {secs:.1} s: {:.1}% of one core",
        cpu.as_secs_f64(),
        100.0 * cpu.as_secs_f64() / secs
    );
    println!(
        "  flooders wrote  {sent} messages ({:.0}/s each; the rest waits in their sockets)",
        sent as f64 / secs / a.conns.max(1) as f64
    );
    println!(
        "  listener heard  {heard_n} ({:.1}/s per flooder)",
        heard_n as f64 / secs / a.conns.max(1) as f64
    );
    println!("  closed by the server  {closed} of {}", a.conns);
    Ok(())
}
