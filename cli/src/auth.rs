//! `push0 auth`: the nkeys of a cluster's identities and the nats-server authorization block
//! that admits them, each confined to the subjects its work needs.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use push0_protocol::{Subjects, TeamConfig};
use push0_runtime::auth::Keys;

use crate::Connection;

#[derive(clap::Args, Debug)]
pub struct AuthArgs {
    /// Folder of the identities' nkey seeds, `<identity>.nk` (made when missing, readable by
    /// their owner only): admin, ingest, scheduler, aggregator, reporter, source, reader and
    /// team-<name> for each team
    #[arg(long, env = "PUSH0_KEYS")]
    keys: PathBuf,
    /// Teams file whose teams get identities; default: the teams registered on the bus
    #[arg(long)]
    teams: Option<PathBuf>,
    /// Write the authorization block to this file (for nats-server's `include`) instead of
    /// printing it
    #[arg(long)]
    out: Option<PathBuf>,
    /// Also write a values file for the Helm chart: its bundled NATS includes the
    /// authorization block, and every pod signs in with its own key from `--helm-secret`
    #[arg(long)]
    helm_values: Option<PathBuf>,
    /// The Secret made from the keys folder, for `--helm-values`
    #[arg(long, default_value = "push0-creds")]
    helm_secret: String,
    #[command(flatten)]
    conn: Connection,
}

pub async fn auth(args: AuthArgs) -> Result<()> {
    let teams = match &args.teams {
        Some(path) => crate::teams::read_teams_file(path)?,
        None => crate::teams::registered(&args.conn.bus("push0-cli").await?).await?,
    };
    let keys = Keys::open(&args.keys)?;
    let subjects = Subjects::new(&args.conn.prefix)?;
    match &args.out {
        Some(out) => {
            write(&keys, &subjects, &teams, out)?;
            eprintln!(
                "{} teams; reload nats-server to apply it: nats-server --signal reload",
                teams.len()
            );
        }
        None if args.helm_values.is_none() => {
            print!("{}", keys.authorization(&subjects, &teams)?)
        }
        None => {}
    }
    if let Some(path) = &args.helm_values {
        let name_ok =
            |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.';
        anyhow::ensure!(
            !args.helm_secret.is_empty() && args.helm_secret.chars().all(name_ok),
            "--helm-secret {:?} is not a Kubernetes object name (lowercase letters, digits, '-', '.')",
            args.helm_secret
        );
        let block = keys.authorization(&subjects, &teams)?;
        std::fs::write(path, helm_values(&block, &args.helm_secret))
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!(
            "Helm values written to {}: kubectl create secret generic {} --from-file={}; \
             helm upgrade --install ... -f {}",
            path.display(),
            args.helm_secret,
            keys.dir().display(),
            path.display()
        );
    }
    Ok(())
}

/// The file the bundled NATS includes, in its configuration folder.
const HELM_AUTHORIZATION_FILE: &str = "push0-authorization.conf";

/// Values for the Helm chart: the nats chart holds `block` in its ConfigMap and includes it
/// (its keys ending in `$include` become include directives), and push0's pods mount their own
/// keys from `secret`. The block holds public keys only, so a ConfigMap may carry it.
fn helm_values(block: &str, secret: &str) -> String {
    let file = HELM_AUTHORIZATION_FILE;
    let head = [
        "# Written by `push0 auth --helm-values`: the bundled NATS admits each push0 identity"
            .to_string(),
        format!(
            "# with the rights it needs; each pod signs in with its own key from Secret {secret}."
        ),
        "auth:".into(),
        "  enabled: true".into(),
        format!("  secretName: {secret}"),
        "nats:".into(),
        "  config:".into(),
        "    merge:".into(),
        format!("      \"00$include\": {file}"),
        "  configMap:".into(),
        "    merge:".into(),
        "      data:".into(),
        format!("        {file}: |"),
    ];
    let mut out = head.join("\n");
    out.push('\n');
    for line in block.lines() {
        if !line.is_empty() {
            out.push_str("          ");
            out.push_str(line);
        }
        out.push('\n');
    }
    out
}

/// Writes the authorization block of `teams` to `out` and says where the keys are.
pub fn write(keys: &Keys, subjects: &Subjects, teams: &[TeamConfig], out: &Path) -> Result<()> {
    keys.write_authorization(subjects, teams, out)?;
    eprintln!(
        "authorization written to {}; credentials in {}",
        out.display(),
        keys.dir().display()
    );
    Ok(())
}
