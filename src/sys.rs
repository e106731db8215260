//! Every call into the operating system that is not a socket read or write: the
//! descriptor limit, socket options, thread priority, giving memory back. Each one
//! either works or says in the log why not; none is silently ignored.

use std::io;

use crate::priority::WorkerPriority;

/// Mode of the directories the server creates for its data: its user's only.
pub const PRIVATE_DIR: u32 = 0o700;
/// Mode of the files it creates there (the data file, the admin socket, backups).
pub const PRIVATE_FILE: u32 = 0o600;

/// Creates `dir` and any missing parent with mode [`PRIVATE_DIR`] (whatever the
/// umask leaves of it: 0700 under any usual umask); an existing directory is left
/// as it is.
pub fn create_private_dir_all(dir: &std::path::Path) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(PRIVATE_DIR)
        .create(dir)
}

/// Opens `path` for writing with mode [`PRIVATE_FILE`] if it is created; with `new`,
/// fails if it exists.
pub fn open_private_file(path: &std::path::Path, new: bool) -> io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut o = std::fs::OpenOptions::new();
    o.read(true).write(true).mode(PRIVATE_FILE);
    if new {
        o.create_new(true);
    } else {
        o.create(true);
    }
    o.open(path)
}

/// Takes away any access of group and others to `path` (a data file written by an
/// older version, under a loose umask); says in the log what it did. `Ok(false)`: it
/// was private already.
pub fn make_private(path: &std::path::Path) -> io::Result<bool> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path)?.permissions().mode();
    if mode & 0o077 == 0 {
        return Ok(false);
    }
    let private = mode & 0o700;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(private))?;
    log::warn!(
        "{}: was mode {:o}, readable by other users; made {:o}",
        path.display(),
        mode & 0o777,
        private
    );
    Ok(true)
}

/// Descriptors kept free for the data file, the log, worker threads and epoll.
pub const FD_HEADROOM: u64 = 64;

/// Raises the soft descriptor limit to the hard one (at most 2^20) and returns the
/// limit in force: the server holds many connections, and the default soft limit
/// (often 1024) is far below what the kernel allows the process.
pub fn raise_fd_limit() -> u64 {
    match rlimit::increase_nofile_limit(1 << 20) {
        Ok(n) => n,
        Err(e) => {
            log::warn!("cannot raise the descriptor limit: {e}");
            rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(1024, |(soft, _)| soft)
        }
    }
}

/// Connections the server can hold at the current descriptor limit, leaving
/// [`FD_HEADROOM`] for everything else.
pub fn max_conns_for_fd_limit() -> usize {
    let soft = rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(1024, |(soft, _)| soft);
    soft.saturating_sub(FD_HEADROOM).clamp(1, 100_000) as usize
}

/// Listen backlog: a reconnect storm after a restart brings thousands of connections
/// at once; with the standard library's 128 the kernel drops their SYNs and clients
/// stall for a second per retry. (The kernel caps it at somaxconn.)
const BACKLOG: i32 = 4096;

/// A listening socket bound to `addr`, with a wide backlog and `SO_REUSEADDR` (a
/// restarted server can listen again at once while old connections are in TIME_WAIT).
pub fn listen(addr: std::net::SocketAddr) -> io::Result<std::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    sock.set_reuse_address(true)?;
    if addr.is_ipv6() {
        // [::] then serves IPv6 only, as its address says; 0.0.0.0 is another listener.
        sock.set_only_v6(true)?;
    }
    sock.bind(&addr.into())?;
    sock.listen(BACKLOG)?;
    Ok(sock.into())
}

/// Widens the backlog of a listener someone else bound (tests, embedding): calling
/// `listen` again on a listening socket only changes its backlog.
pub fn widen_backlog(listener: &std::net::TcpListener) {
    let sock = socket2::SockRef::from(listener);
    if let Err(e) = sock.listen(BACKLOG) {
        log::warn!("cannot widen the listen backlog: {e}");
    }
}

/// Options for an accepted connection: no Nagle delay (frames are written whole, once
/// per loop turn), and TCP keepalive, so that a peer that vanished (cable pulled, NAT
/// entry dropped) is noticed within minutes even if it never sends a byte again:
/// probes after 60 s idle, every 10 s, 6 unanswered probes.
pub fn tune_connection(sock: &mio::net::TcpStream) -> io::Result<()> {
    use std::time::Duration;
    let s = socket2::SockRef::from(sock);
    s.set_tcp_nodelay(true)?;
    let ka = socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(60))
        .with_interval(Duration::from_secs(10))
        .with_retries(6);
    s.set_tcp_keepalive(&ka)
}

/// Whether an accept failed for lack of descriptors or memory (back off, do not spin).
pub fn is_resource_exhaustion(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// Returns freed heap memory to the operating system. A burst (a storm of logins,
/// each announced to everyone; a crowd leaving at once) grows output queues for a
/// moment; without this, glibc keeps the high-water mark resident for good.
pub fn trim_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks and releases the allocator's own free memory.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Sets the calling thread's scheduling (nice 10 for `Low`, SCHED_IDLE for `Idle`);
/// logs a warning if the system refuses.
pub fn set_thread_priority(p: WorkerPriority) {
    let ok = match p {
        WorkerPriority::Normal => true,
        #[cfg(target_os = "linux")]
        // SAFETY: gettid and setpriority act on the calling thread only.
        WorkerPriority::Low => unsafe {
            let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
            libc::setpriority(libc::PRIO_PROCESS, tid, 10) == 0
        },
        #[cfg(target_os = "linux")]
        // SAFETY: acts on the calling thread (pid 0) with a sched_param we own.
        WorkerPriority::Idle => unsafe {
            let param = libc::sched_param { sched_priority: 0 };
            libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) == 0
        },
        #[cfg(not(target_os = "linux"))]
        _ => false,
    };
    if !ok {
        log::warn!(
            "could not set a worker thread's priority to {p:?}: {}",
            io::Error::last_os_error()
        );
    }
}

/// The uid of the process at the other end of a Unix socket (`SO_PEERCRED`: as it
/// was when it connected).
pub fn peer_uid(sock: &std::os::unix::net::UnixStream) -> io::Result<u32> {
    use std::os::fd::AsRawFd;
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cred`, which we own, on a
    // descriptor that `sock` keeps open.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cred.uid)
}

/// This process's effective uid.
pub fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Whether standard input is a terminal.
pub fn stdin_is_tty() -> bool {
    // SAFETY: isatty only inspects the descriptor.
    unsafe { libc::isatty(0) == 1 }
}

/// Reads one line from the terminal on standard input with echo off, restoring the
/// terminal's settings afterwards (and if reading fails).
pub fn read_line_no_echo() -> io::Result<String> {
    // SAFETY: a zeroed termios is a valid value to be filled by tcgetattr.
    let mut old: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: tcgetattr fills `old`, which we own, for descriptor 0.
    if unsafe { libc::tcgetattr(0, &mut old) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut quiet = old;
    quiet.c_lflag &= !libc::ECHO;
    quiet.c_lflag |= libc::ECHONL;
    // SAFETY: sets descriptor 0's attributes from a termios we own.
    if unsafe { libc::tcsetattr(0, libc::TCSAFLUSH, &quiet) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut line = String::new();
    let read = io::stdin().read_line(&mut line);
    // SAFETY: restores the attributes read above.
    unsafe { libc::tcsetattr(0, libc::TCSAFLUSH, &old) };
    read?;
    Ok(line)
}

/// Reads [`ProcessStats`](crate::metrics::ProcessStats) from `/proc/self`; `None` where there is no procfs.
pub fn process_stats() -> Option<crate::metrics::ProcessStats> {
    use crate::metrics::ProcessStats;
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // After the command name in parentheses (which may hold spaces), fields from the
    // third (state) on.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| -> Option<u64> { f.get(n - 3)?.parse().ok() };
    // SAFETY: sysconf only reads a configuration value.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    // SAFETY: as above.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as u64;
    let boot: f64 = std::fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()?;
    let open_fds = std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as u64);
    let max_fds = rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(0, |(soft, _)| soft);
    Some(ProcessStats {
        resident_bytes: field(24)? * page,
        virtual_bytes: field(23)?,
        cpu_seconds: (field(14)? + field(15)?) as f64 / ticks,
        start_time: boot + field(22)? as f64 / ticks,
        open_fds,
        max_fds,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn private_files_and_directories() {
        let top = tempfile::tempdir().unwrap();
        let dir = top.path().join("a/b");
        create_private_dir_all(&dir).unwrap();
        let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir) & 0o077, 0);
        let f = dir.join("f");
        open_private_file(&f, true).unwrap();
        assert_eq!(mode(&f) & 0o077, 0);
        assert!(
            open_private_file(&f, true).is_err(),
            "never over an existing file"
        );
        assert!(!make_private(&f).unwrap());
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(make_private(&f).unwrap());
        assert_eq!(mode(&f), 0o600);
    }
}
