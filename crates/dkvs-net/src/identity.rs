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
/// knowing the node.
pub fn load_or_create_identity(path: &Path) -> Result<identity::Keypair, IdentityError> {
    let io = |source| IdentityError::Io { path: path.to_owned(), source };
    match std::fs::read(path) {
        Ok(bytes) => identity::Keypair::from_protobuf_encoding(&bytes)
            .map_err(|e| IdentityError::Invalid { path: path.to_owned(), reason: e.to_string() }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = identity::Keypair::generate_ed25519();
            let bytes = key.to_protobuf_encoding().map_err(|e| IdentityError::Invalid {
                path: path.to_owned(),
                reason: e.to_string(),
            })?;
            dkvs_account::keystore::write_private(path, &bytes).map_err(io)?;
            Ok(key)
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
        std::fs::write(&path, b"not a key").expect("write");
        let bad = load_or_create_identity(&path).expect_err("garbage is not a key");
        assert!(matches!(&bad, IdentityError::Invalid { .. }), "{bad}");
        assert!(bad.to_string().contains("node.key"), "{bad}");
    }
}
