//! The real server, run in this process on `127.0.0.1:0` with an embedded store in a
//! temporary directory and cheap password hashing.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use chat::hub::HubConfig;
use chat::job::auth::HashParams;
use chat::reactor::{Running, ServerConfig};
use chat::store::embedded::EmbeddedStore;
use chat::store::{Store, StoreFactory};
use chat::transport::tls::TlsWrapper;

pub struct TestServer {
    /// The plain listener.
    pub addr: SocketAddr,
    /// The TLS listener, if it has one.
    pub tls: Option<SocketAddr>,
    running: Option<Running>,
    _dir: tempfile::TempDir,
}

impl TestServer {
    pub fn start() -> TestServer {
        Self::start_with(HubConfig::default())
    }

    pub fn start_with(hub: HubConfig) -> TestServer {
        Self::spawn(hub, None)
    }

    /// With a TLS listener beside the plain one, its certificate chain and key read
    /// from these files.
    pub fn start_tls(cert: &Path, key: &Path) -> TestServer {
        Self::spawn(HubConfig::default(), Some((cert, key)))
    }

    fn spawn(hub: HubConfig, tls: Option<(&Path, &Path)>) -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        Self::spawn_in(dir, listener, hub, tls)
    }

    /// Stops the server and starts it again on the same address with the same data
    /// (plain listener only), as an operator's restart does.
    pub fn restart(&mut self) {
        self.stop();
        let dir = std::mem::replace(&mut self._dir, tempfile::tempdir().unwrap());
        // The old listener is closed: its port can be bound again.
        let listener = std::net::TcpListener::bind(self.addr).unwrap();
        *self = Self::spawn_in(dir, listener, HubConfig::default(), None);
    }

    fn spawn_in(
        dir: tempfile::TempDir,
        listener: std::net::TcpListener,
        hub: HubConfig,
        tls: Option<(&Path, &Path)>,
    ) -> TestServer {
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let factory: StoreFactory = Arc::new(move || Ok(Box::new(store.clone()) as Box<dyn Store>));
        let cfg = ServerConfig {
            hash: HashParams {
                memory_kib: 64,
                passes: 1,
            },
            hub,
            ..ServerConfig::default()
        };
        let running = match tls {
            None => chat::reactor::spawn(listener, factory, cfg),
            Some((cert, key)) => {
                let tls = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
                let wrapper = TlsWrapper::new(cert, key).unwrap();
                chat::reactor::spawn_with(listener, vec![(tls, Box::new(wrapper))], factory, cfg)
            }
        }
        .unwrap();
        TestServer {
            addr: running.addr,
            tls: running.wrapped.first().copied(),
            running: Some(running),
            _dir: dir,
        }
    }

    /// `localhost:PORT` of the TLS listener (the name the test certificates are for).
    pub fn tls_name(&self) -> String {
        let tls = self.tls.expect("a server started with TLS");
        format!("localhost:{}", tls.port())
    }

    pub fn stop(&mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown().unwrap();
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop();
    }
}
