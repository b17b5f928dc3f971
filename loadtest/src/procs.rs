//! Child processes of the harness (the service binaries) and what `/proc` says about them:
//! CPU time (utime + stime) and resident memory (VmRSS), sampled in the background.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};

/// A service binary built beside this one (`cargo build --release --workspace --bins`).
pub fn binary(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe().context("own executable path")?;
    let path = exe.parent().context("executable folder")?.join(name);
    anyhow::ensure!(
        path.exists(),
        "{} is missing: build the service binaries first (cargo build --release --workspace --bins)",
        path.display()
    );
    Ok(path)
}

/// utime + stime of `pid`, in clock ticks.
pub fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = procfs::process::Process::new(pid as i32)
        .ok()?
        .stat()
        .ok()?;
    Some(stat.utime + stat.stime)
}

/// Resident set size of `pid`, in KiB.
pub fn rss_kb(pid: u32) -> Option<u64> {
    procfs::process::Process::new(pid as i32)
        .ok()?
        .status()
        .ok()?
        .vmrss
}

/// One service process; SIGKILLed on drop (the harness never needs a graceful stop).
pub struct Proc {
    /// ingest, scheduler, gateway, aggregator or nats
    pub role: String,
    pub name: String,
    child: Child,
}

impl Proc {
    pub fn spawn(
        role: &str,
        name: &str,
        binary: &Path,
        args: &[String],
        log: &Path,
    ) -> Result<Self> {
        let log = std::fs::File::create(log).with_context(|| format!("log {}", log.display()))?;
        let child = Command::new(binary)
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        Ok(Self {
            role: role.to_string(),
            name: name.to_string(),
            child,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fails if the process has already exited (a bad flag, a lost connection).
    pub fn check_running(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            anyhow::bail!("{} exited early with {status}", self.name);
        }
        Ok(())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Peak RSS per role, sampled every 100 ms from every registered process since the last
/// `take_phase`.
#[derive(Clone, Default, Debug)]
pub struct Sampler {
    inner: Arc<Mutex<SamplerState>>,
}

#[derive(Default, Debug)]
struct SamplerState {
    pids: Vec<(String, u32)>,
    phase_peak_kb: BTreeMap<String, u64>,
}

impl Sampler {
    pub fn start() -> Self {
        let sampler = Self::default();
        let inner = sampler.inner.clone();
        std::thread::spawn(move || {
            loop {
                std::thread::sleep(Duration::from_millis(100));
                let pids = inner.lock().expect("sampler lock").pids.clone();
                let readings: Vec<(String, u64)> = pids
                    .iter()
                    .filter_map(|(role, pid)| Some((role.clone(), rss_kb(*pid)?)))
                    .collect();
                let mut state = inner.lock().expect("sampler lock");
                for (role, kb) in readings {
                    let peak = state.phase_peak_kb.entry(role).or_default();
                    *peak = (*peak).max(kb);
                }
            }
        });
        sampler
    }

    pub fn watch(&self, role: &str, pid: u32) {
        self.inner
            .lock()
            .expect("sampler lock")
            .pids
            .push((role.to_string(), pid));
    }

    pub fn unwatch(&self, pid: u32) {
        self.inner
            .lock()
            .expect("sampler lock")
            .pids
            .retain(|(_, p)| *p != pid);
    }

    /// Peak RSS per role (MiB) since the last call.
    pub fn take_phase(&self) -> BTreeMap<String, f64> {
        let mut state = self.inner.lock().expect("sampler lock");
        std::mem::take(&mut state.phase_peak_kb)
            .into_iter()
            .map(|(r, kb)| (r, kb as f64 / 1024.0))
            .collect()
    }
}

/// CPU ticks per role, summed over its processes, at one moment.
pub fn cpu_by_role<'a>(procs: impl Iterator<Item = (&'a str, u32)>) -> BTreeMap<String, u64> {
    let mut out: BTreeMap<String, u64> = BTreeMap::new();
    for (role, pid) in procs {
        *out.entry(role.to_string()).or_default() += cpu_ticks(pid).unwrap_or(0);
    }
    out
}

/// Core-seconds per role spent between two `cpu_by_role` readings.
pub fn cpu_seconds(
    before: &BTreeMap<String, u64>,
    after: &BTreeMap<String, u64>,
) -> BTreeMap<String, f64> {
    let tck = procfs::ticks_per_second() as f64;
    after
        .iter()
        .map(|(role, t)| {
            let spent = t.saturating_sub(before.get(role).copied().unwrap_or(0));
            (role.clone(), spent as f64 / tck)
        })
        .collect()
}
