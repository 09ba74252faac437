//! The home directory: keys, node identity, configuration, data, and the running node's API
//! address and token.
//!
//! ```text
//! <home>/keys/<name>.key.json   accounts, encrypted with the passphrase (dkvs-account keystore)
//! <home>/default-account        the name of the default account
//! <home>/node.key               the node's libp2p identity (mode 0600)
//! <home>/config.toml            optional configuration (see `dkvs node --print-config`)
//! <home>/data/                  the record store
//! <home>/data/mail/             mail this node keeps as a replica, one file per envelope
//! <home>/data/inbox/<id>.json   what each account read through this node (sender, id, until)
//! <home>/data/sent.json         letters sent through this node, for `dkvs mail status`
//! <home>/api.json               {"url", "token"} of the node running from this home (mode 0600)
//! <home>/keep.json              records the node keeps alive: [{"key", "account", "ttl_secs"}]
//! <home>/peers.json             peers the node was connected to: ["<multiaddr>/p2p/<id>", ...]
//! ```

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use dkvs_account::keystore::Keystore;
use dkvs_net::libp2p::identity;

/// A dkvs home directory.
#[derive(Clone, Debug)]
pub struct Home {
    root: PathBuf,
}

/// Where a running node's API is, and the token it accepts.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct ApiInfo {
    /// Base URL, e.g. `http://127.0.0.1:4041`.
    pub url: String,
    /// The bearer token.
    pub token: String,
}

/// A record the node keeps alive for its owner (`dkvs put --keep`): re-signed before it
/// expires, for as long as the node runs, across restarts.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Kept {
    /// The record's key.
    pub key: String,
    /// The account that owns it, by name in this home.
    pub account: String,
    /// The life each new version gets, in seconds.
    pub ttl_secs: u64,
}

impl Home {
    /// The home at `root`.
    pub fn new(root: PathBuf) -> Home {
        Home { root }
    }

    /// The default home: `$HOME/.dkvs`.
    pub fn default_root() -> anyhow::Result<PathBuf> {
        let home = std::env::var_os("HOME").context("HOME is not set; pass --home")?;
        Ok(PathBuf::from(home).join(".dkvs"))
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Creates the root (mode 0700) if it is missing.
    pub fn ensure(&self) -> anyhow::Result<()> {
        use std::os::unix::fs::DirBuilderExt as _;
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.root)
            .with_context(|| format!("cannot create {}", self.root.display()))
    }

    /// The accounts.
    pub fn keystore(&self) -> anyhow::Result<Keystore> {
        self.ensure()?;
        Ok(Keystore::open(self.root.join("keys"))?)
    }

    /// The default account's name, if one is set.
    pub fn default_account(&self) -> anyhow::Result<Option<String>> {
        match fs::read_to_string(self.root.join("default-account")) {
            // An empty file names none.
            Ok(name) => Ok(Some(name.trim().to_owned()).filter(|name| !name.is_empty())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).context("cannot read the default account"),
        }
    }

    /// Sets the default account.
    pub fn set_default_account(&self, name: &str) -> anyhow::Result<()> {
        write_private(&self.root.join("default-account"), format!("{name}\n").as_bytes())
    }

    /// The node's libp2p identity, created on first use.
    pub fn node_identity(&self) -> anyhow::Result<identity::Keypair> {
        self.ensure()?;
        Ok(dkvs_net::load_or_create_identity(&self.root.join("node.key"))?)
    }

    /// The store's directory.
    pub fn data_dir(&self) -> PathBuf {
        self.root.join("data")
    }

    /// The configuration file.
    pub fn config_file(&self) -> PathBuf {
        self.root.join("config.toml")
    }

    fn api_file(&self) -> PathBuf {
        self.root.join("api.json")
    }

    /// Records where the running node's API is and its token.
    pub fn write_api(&self, info: &ApiInfo) -> anyhow::Result<()> {
        write_private(&self.api_file(), &serde_json::to_vec_pretty(info)?)
    }

    /// Removes the API record (the node stopped).
    pub fn remove_api(&self) {
        let _ = fs::remove_file(self.api_file());
    }

    fn keep_file(&self) -> PathBuf {
        self.root.join("keep.json")
    }

    /// The records the node keeps alive (none when the file is absent).
    pub fn read_kept(&self) -> anyhow::Result<Vec<Kept>> {
        read_list(&self.keep_file())
    }

    /// Moves a keep list that cannot be read aside (to `keep.json.damaged`); returns where.
    pub fn set_aside_kept(&self) -> PathBuf {
        let aside = self.root.join("keep.json.damaged");
        let _ = fs::rename(self.keep_file(), &aside);
        aside
    }

    /// Records the list of records the node keeps alive.
    pub fn write_kept(&self, kept: &[Kept]) -> anyhow::Result<()> {
        write_private(&self.keep_file(), &serde_json::to_vec_pretty(kept)?)
    }

    fn peers_file(&self) -> PathBuf {
        self.root.join("peers.json")
    }

    /// The peers the node was connected to when it last wrote them (none when the file is
    /// absent); a damaged file is an error that names it.
    pub fn read_peers(&self) -> anyhow::Result<Vec<String>> {
        read_list(&self.peers_file())
    }

    /// Remembers the peers the node is connected to, to join by at its next start.
    pub fn write_peers(&self, peers: &[String]) -> anyhow::Result<()> {
        write_private(&self.peers_file(), &serde_json::to_vec_pretty(peers)?)
    }

    /// The file that remembers which letters `account` has read through this node.
    fn inbox_file(&self, account: &dkvs_account::AccountId) -> PathBuf {
        self.data_dir().join("inbox").join(format!("{account}.json"))
    }

    /// What `account` has read through this node (an empty inbox when nothing is saved; a
    /// damaged file is an error, so it is never silently forgotten).
    pub fn read_inbox(
        &self,
        account: &dkvs_account::AccountId,
    ) -> anyhow::Result<dkvs_mail::Inbox> {
        let path = self.inbox_file(account);
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(dkvs_mail::Inbox::new());
            }
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        let entries: Vec<(String, String, u64)> = serde_json::from_slice(&bytes)
            .with_context(|| format!("{} is damaged", path.display()))?;
        let mut inbox = dkvs_mail::Inbox::new();
        for (sender, id, until) in entries {
            let sender =
                sender.parse().with_context(|| format!("{} is damaged", path.display()))?;
            let id: [u8; 16] = hex::decode(&id)
                .ok()
                .and_then(|id| id.try_into().ok())
                .with_context(|| format!("{} is damaged: id {id:?}", path.display()))?;
            inbox.remember(sender, dkvs_mail::MessageId(id), until);
        }
        Ok(inbox)
    }

    /// Saves what `account` has read through this node.
    pub fn write_inbox(
        &self,
        account: &dkvs_account::AccountId,
        inbox: &dkvs_mail::Inbox,
    ) -> anyhow::Result<()> {
        let path = self.inbox_file(account);
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let entries: Vec<(String, String, u64)> = inbox
            .entries()
            .map(|(sender, id, until)| (sender.to_string(), id.to_string(), until))
            .collect();
        write_private(&path, &serde_json::to_vec(&entries)?)
    }

    fn sent_file(&self) -> PathBuf {
        self.data_dir().join("sent.json")
    }

    /// The letters sent through this node, and what became of them (none when the file is
    /// absent).
    pub fn read_sent(&self) -> anyhow::Result<Vec<Sent>> {
        read_list(&self.sent_file())
    }

    /// Saves the letters sent through this node.
    pub fn write_sent(&self, sent: &[Sent]) -> anyhow::Result<()> {
        fs::create_dir_all(self.data_dir())?;
        write_private(&self.sent_file(), &serde_json::to_vec(sent)?)
    }

    /// Whether a process holds this home's store open: a node, perhaps one still starting.
    /// The shared lock taken to see is held for a moment, which a node starting meanwhile
    /// waits out (`dkvs_store::Store::open`).
    fn store_in_use(&self) -> bool {
        let lock = fs::File::open(self.data_dir().join("LOCK"));
        lock.is_ok_and(|f| matches!(f.try_lock_shared(), Err(fs::TryLockError::WouldBlock)))
    }

    /// Where the node running from this home listens, and its token.
    pub fn read_api(&self) -> anyhow::Result<ApiInfo> {
        let path = self.api_file();
        let bytes = fs::read(&path).with_context(|| {
            if self.store_in_use() {
                format!(
                    "the node of {} is starting (or stopping): its API opens once it has \
                     joined its peers (a few seconds; longer while the peers it rejoins do not \
                     answer)",
                    self.root.display()
                )
            } else {
                format!(
                    "no node is running from {} (start one with `dkvs node`)",
                    self.root.display()
                )
            }
        })?;
        serde_json::from_slice(&bytes).with_context(|| format!("{} is damaged", path.display()))
    }
}

/// A letter sent through this node, for `dkvs mail status`.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Sent {
    /// The letter's id (hex).
    pub id: String,
    /// The sender's account id.
    pub from: String,
    /// The recipient's account id.
    pub to: String,
    /// When it was sent (Unix ms).
    pub sent_at_ms: u64,
    /// The replicas that signed custody receipts.
    pub kept_by: Vec<String>,
    /// When the recipient said it read it (its clock), once its receipt came.
    pub read_at_ms: Option<u64>,
}

/// A JSON list kept in the home: empty when the file is absent; a damaged file is an error
/// that names it (never silently forgotten).
fn read_list<T: serde::de::DeserializeOwned>(path: &Path) -> anyhow::Result<Vec<T>> {
    match fs::read(path) {
        Ok(bytes) => {
            serde_json::from_slice(&bytes).with_context(|| format!("{} is damaged", path.display()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// Writes `bytes` to `path` atomically, readable by the owner only.
///
/// The temporary file is created new (`O_EXCL`), so a link planted in its place is never
/// followed, and the directory is synced after the rename, so the new file survives a crash.
fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    dkvs_account::keystore::write_private(path, bytes)
        .with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn a_link_planted_as_the_temporary_file_is_not_followed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let victim = dir.path().join("victim");
        fs::write(&victim, b"precious").expect("write");
        let path = dir.path().join("api.json");
        std::os::unix::fs::symlink(&victim, path.with_extension("tmp")).expect("symlink");
        write_private(&path, b"{}").expect("written");
        assert_eq!(fs::read(&victim).expect("read"), b"precious");
        assert_eq!(fs::read(&path).expect("read"), b"{}");
        let mode = fs::metadata(&path).expect("metadata").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
}
