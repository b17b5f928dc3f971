//! `push0 auth`: the nkeys of a cluster's identities and the nats-server authorization block
//! that admits them, each confined to the subjects its work needs.

use std::path::{Path, PathBuf};

use anyhow::Result;
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
        None => print!("{}", keys.authorization(&subjects, &teams)?),
    }
    Ok(())
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
