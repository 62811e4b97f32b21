//! Brokers and stores that are not Rust: RabbitMQ and Redis, each started on ephemeral
//! loopback ports in a temp dir, stopped (and their processes reaped) on drop.
//!
//! Shared by the SDK's test suites (`#[path]`-included), so it uses only std and tempfile.
#![allow(dead_code)]

use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A free loopback port: bound, then released for the child to take.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local addr").port()
}

fn on_path(program: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(program)).find(|candidate| candidate.is_file())
}

fn wait_for_port(port: u16, child: &mut Child, timeout: Duration, what: &str) {
    let deadline = Instant::now() + timeout;
    loop {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{what} exited before listening: {status}");
        }
        assert!(Instant::now() < deadline, "{what} not listening on {port} after {timeout:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn stop(child: &mut Child) {
    // SIGTERM first so that the server shuts down cleanly, SIGKILL if it lingers.
    let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// A `redis-server` of our own.
pub struct RedisServer {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl RedisServer {
    /// Starts `redis-server`, or returns `None` (with a message) when it is not installed.
    /// With `POSTROOM_REQUIRE_REDIS=1` (set by `scripts/test`) a missing server is a failure.
    pub fn start() -> Option<RedisServer> {
        let Some(binary) = on_path("redis-server") else {
            assert!(
                std::env::var("POSTROOM_REQUIRE_REDIS").as_deref() != Ok("1"),
                "redis-server is not on PATH but POSTROOM_REQUIRE_REDIS=1: run scripts/ensure-redis"
            );
            eprintln!("skipping: redis-server is not installed (scripts/ensure-redis installs it)");
            return None;
        };
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let mut child = Command::new(binary)
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--dir"])
            .arg(dir.path())
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn redis-server");
        wait_for_port(port, &mut child, Duration::from_secs(20), "redis-server");
        Some(RedisServer { child, port, _dir: dir })
    }

    /// `redis://127.0.0.1:PORT/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}

/// A RabbitMQ node of our own, when `rabbitmq-server` is installed.
pub struct RabbitBroker {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl RabbitBroker {
    /// Starts a node on ephemeral ports, or returns `None` (with a message) when RabbitMQ is
    /// not installed. Takes a few seconds.
    pub fn start() -> Option<RabbitBroker> {
        // Debian's /usr/sbin wrapper switches to the `rabbitmq` user, which cannot write our
        // temp dir; the real script runs as us.
        let direct = Path::new("/usr/lib/rabbitmq/bin/rabbitmq-server");
        let binary = if direct.is_file() {
            direct.to_path_buf()
        } else if let Some(found) = on_path("rabbitmq-server") {
            found
        } else {
            eprintln!("skipping the RabbitMQ run: rabbitmq-server is not installed");
            return None;
        };
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let dist_port = free_port();
        std::fs::write(dir.path().join("enabled_plugins"), "[].\n").expect("plugins file");
        for sub in ["mnesia", "log"] {
            std::fs::create_dir_all(dir.path().join(sub)).expect("dirs");
        }
        let mut child = Command::new(binary)
            .env("RABBITMQ_NODE_PORT", port.to_string())
            .env("RABBITMQ_DIST_PORT", dist_port.to_string())
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("ERL_EPMD_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_NODENAME", format!("postroom-test-{port}@localhost"))
            .env("RABBITMQ_MNESIA_BASE", dir.path().join("mnesia"))
            .env("RABBITMQ_LOG_BASE", dir.path().join("log"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", dir.path().join("enabled_plugins"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn rabbitmq-server");
        wait_for_port(port, &mut child, Duration::from_secs(90), "rabbitmq-server");
        Some(RabbitBroker { child, port, _dir: dir })
    }

    /// An `amqp://` URL for the default vhost as `guest`.
    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }
}

impl Drop for RabbitBroker {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}
