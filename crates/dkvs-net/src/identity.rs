//! The node's libp2p identity on disk.

use std::path::{Path, PathBuf};

use libp2p::identity;

/// Why [`load_or_create_identity`] failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// The file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The IO error.
        source: std::io::Error,
    },
    /// The file is not a libp2p key pair (libp2p's protobuf encoding).
    #[error("{path} is not a node key: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// The node identity kept in `path`: read if the file exists, otherwise a new Ed25519 key
/// pair, written there first (libp2p's protobuf encoding, readable by this user only, whole or
/// absent). The peer id stays the same across restarts, so peers and routing tables keep
/// knowing the node. Two processes starting on a fresh directory at once end up with the
/// same key: the second finds the first's file and reads it.
pub fn load_or_create_identity(path: &Path) -> Result<identity::Keypair, IdentityError> {
    let io = |source| IdentityError::Io { path: path.to_owned(), source };
    let read = || -> Result<Option<identity::Keypair>, IdentityError> {
        match std::fs::read(path) {
            Ok(bytes) => identity::Keypair::from_protobuf_encoding(&bytes).map(Some).map_err(|e| {
                IdentityError::Invalid { path: path.to_owned(), reason: e.to_string() }
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io(e)),
        }
    };
    if let Some(key) = read()? {
        return Ok(key);
    }
    let key = identity::Keypair::generate_ed25519();
    let bytes = key
        .to_protobuf_encoding()
        .map_err(|e| IdentityError::Invalid { path: path.to_owned(), reason: e.to_string() })?;
    match dkvs_account::keystore::create_private(path, &bytes) {
        Ok(()) => Ok(key),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            read()?.ok_or_else(|| io(std::io::Error::other("the key file vanished")))
        }
        Err(e) => Err(io(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_identity_is_made_once_kept_private_and_a_bad_file_is_named() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("node.key");
        let made = load_or_create_identity(&path).expect("created");
        let again = load_or_create_identity(&path).expect("read back");
        assert_eq!(made.public().to_peer_id(), again.public().to_peer_id());
        let mode = std::fs::metadata(&path).expect("metadata").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // Two starts on a fresh directory at once get one key.
        let fresh = dir.path().join("fresh.key");
        let racers: Vec<_> = (0..4)
            .map(|_| {
                let fresh = fresh.clone();
                std::thread::spawn(move || load_or_create_identity(&fresh).expect("identity"))
            })
            .collect();
        let ids: std::collections::HashSet<_> =
            racers.into_iter().map(|r| r.join().expect("racer").public().to_peer_id()).collect();
        assert_eq!(ids.len(), 1, "one identity: {ids:?}");
        let leftovers = std::fs::read_dir(dir.path()).expect("dir").count();
        assert_eq!(leftovers, 2, "node.key and fresh.key, no temporary files");
        std::fs::write(&path, b"not a key").expect("write");
        let bad = load_or_create_identity(&path).expect_err("garbage is not a key");
        assert!(matches!(&bad, IdentityError::Invalid { .. }), "{bad}");
        assert!(bad.to_string().contains("node.key"), "{bad}");
    }
}
