//! Credentials: one nkey per identity, kept as seed files in a keys folder, and the server's
//! authorization block rendered from them ([`push0_protocol::auth`] says who may do what).

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use push0_protocol::auth::{Identity, User, check_teams, inbox_prefix, render};
use push0_protocol::{Subjects, TeamConfig};

use crate::bus::RuntimeError;

/// What a credentials file holds.
pub enum Creds {
    /// An nkey seed (`SU…`): the server knows its public key from the authorization block.
    Nkey { seed: String, public_key: String },
    /// A NATS user credentials file (a JWT and its seed), for servers under an operator.
    Jwt(PathBuf),
}

impl Creds {
    /// Reads `path`: a user credentials file if it holds a JWT, else an nkey seed file (the
    /// seed on a line of its own; `#` lines are comments).
    pub fn read(path: &Path) -> Result<Self, RuntimeError> {
        let config = |detail: String| {
            RuntimeError::Config(format!("credentials {}: {detail}", path.display()))
        };
        let text = std::fs::read_to_string(path).map_err(|e| config(e.to_string()))?;
        if text.contains("BEGIN NATS USER JWT") {
            return Ok(Creds::Jwt(path.to_path_buf()));
        }
        let seed = text
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty() && !l.starts_with('#'))
            .ok_or_else(|| config("no seed in the file".into()))?;
        let pair = nkeys::KeyPair::from_seed(seed)
            .map_err(|e| config(format!("not an nkey seed: {e}")))?;
        Ok(Creds::Nkey {
            seed: seed.to_string(),
            public_key: pair.public_key(),
        })
    }

    /// Applies these credentials to a connection: the nkey signs the server's nonce, and
    /// replies arrive under the identity's own inbox prefix, the only one it may listen on.
    pub async fn apply(
        self,
        options: async_nats::ConnectOptions,
    ) -> Result<async_nats::ConnectOptions, RuntimeError> {
        match self {
            Creds::Nkey { seed, public_key } => Ok(options
                .nkey(seed)
                .custom_inbox_prefix(inbox_prefix(&public_key))),
            Creds::Jwt(path) => options
                .credentials_file(&path)
                .await
                .map_err(|e| RuntimeError::Config(format!("credentials {}: {e}", path.display()))),
        }
    }
}

/// A folder of nkey seed files, `<identity>.nk`, one per identity, readable by its owner only.
#[derive(Debug, Clone)]
pub struct Keys {
    dir: PathBuf,
}

impl Keys {
    /// The keys in `dir`, created (mode 0700) if absent.
    pub fn open(dir: &Path) -> Result<Self, RuntimeError> {
        let io = |e: std::io::Error| RuntimeError::Config(format!("keys {}: {e}", dir.display()));
        std::fs::create_dir_all(dir).map_err(io)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io)?;
        Ok(Self {
            dir: dir.to_path_buf(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The credentials file of `identity` (it may not exist yet).
    pub fn path(&self, identity: &Identity) -> PathBuf {
        self.file(&identity.name())
    }

    /// The credentials file of the identity called `name`.
    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.nk"))
    }

    /// The public key of `identity`, its seed file written first if there is none.
    pub fn ensure(&self, identity: &Identity) -> Result<String, RuntimeError> {
        let path = self.path(identity);
        if path.exists() {
            return match Creds::read(&path)? {
                Creds::Nkey { public_key, .. } => Ok(public_key),
                Creds::Jwt(_) => Err(RuntimeError::Config(format!(
                    "{} holds a JWT, not an nkey seed",
                    path.display()
                ))),
            };
        }
        let pair = nkeys::KeyPair::new_user();
        let seed = pair
            .seed()
            .map_err(|e| RuntimeError::Config(format!("making a key: {e}")))?;
        let io = |e: std::io::Error| RuntimeError::Config(format!("{}: {e}", path.display()));
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(io)?;
        writeln!(
            file,
            "# push0 credentials of {}: pass with --creds or PUSH0_NATS_CREDS\n{seed}",
            identity.name()
        )
        .map_err(io)?;
        Ok(pair.public_key())
    }

    /// Deletes the seed of `identity`; after the server's next reload it cannot sign in.
    pub fn remove(&self, identity: &Identity) -> Result<(), RuntimeError> {
        match std::fs::remove_file(self.path(identity)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(RuntimeError::Config(
                format!("{}: {e}", self.path(identity).display()),
            )),
            _ => Ok(()),
        }
    }

    /// The authorization block for a cluster of `teams`, keys made for identities that have
    /// none yet.
    pub fn authorization(
        &self,
        subjects: &Subjects,
        teams: &[TeamConfig],
    ) -> Result<String, RuntimeError> {
        check_teams(subjects, teams).map_err(|e| RuntimeError::Config(e.to_string()))?;
        let users = Identity::all(teams)
            .into_iter()
            .map(|identity| {
                let public_key = self.ensure(&identity)?;
                Ok(User {
                    identity,
                    public_key,
                })
            })
            .collect::<Result<Vec<_>, RuntimeError>>()?;
        Ok(render(subjects, &users))
    }

    /// Writes [`Keys::authorization`] to `path` (replaced whole, so a reloading server never
    /// reads half of it).
    pub fn write_authorization(
        &self,
        subjects: &Subjects,
        teams: &[TeamConfig],
        path: &Path,
    ) -> Result<(), RuntimeError> {
        let text = self.authorization(subjects, teams)?;
        let io = |e: std::io::Error| RuntimeError::Config(format!("{}: {e}", path.display()));
        let partial = path.with_extension("partial");
        std::fs::write(&partial, text).map_err(io)?;
        std::fs::rename(&partial, path).map_err(io)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_made_once_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let keys = Keys::open(&dir.path().join("keys")).unwrap();
        let team = Identity::team(&TeamConfig::single("alpha"));
        let public = keys.ensure(&team).unwrap();
        assert!(public.starts_with('U'), "{public}");
        assert_eq!(keys.ensure(&team).unwrap(), public);
        let path = keys.path(&team);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        match Creds::read(&path).unwrap() {
            Creds::Nkey { public_key, .. } => assert_eq!(public_key, public),
            Creds::Jwt(_) => panic!("a seed file read as a JWT"),
        }
        keys.remove(&team).unwrap();
        assert!(!path.exists());
        assert_ne!(keys.ensure(&team).unwrap(), public);
    }

    #[test]
    fn a_file_without_a_seed_is_a_config_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.nk");
        std::fs::write(&path, "# nothing here\nnot-a-seed\n").unwrap();
        let err = Creds::read(&path).err().expect("refused");
        assert!(err.to_string().contains("not an nkey seed"), "{err}");
    }
}
