//! Key pairs saved on disk, encrypted with a passphrase.
//!
//! A [`Keystore`] is a directory (mode 0700) with one file per named account,
//! `<dir>/<name>.key.json` (mode 0600). A name is 1 to 64 characters of `A-Z a-z 0-9 _ -`.
//! The file is JSON:
//!
//! ```json
//! {
//!   "version": 1,
//!   "name": "alice",
//!   "key_type": "ed25519",
//!   "account_id": "ed1...",
//!   "kdf": {
//!     "algorithm": "argon2id",
//!     "m_cost_kib": 19456,
//!     "t_cost": 2,
//!     "p_cost": 1,
//!     "salt": "<16 bytes, hex>"
//!   },
//!   "cipher": "xchacha20poly1305",
//!   "nonce": "<24 bytes, hex>",
//!   "ciphertext": "<32 secret bytes and 16-byte tag, hex>"
//! }
//! ```
//!
//! The encryption key is Argon2id (version 0x13) of the passphrase with the file's salt and
//! parameters; the associated data is the `account_id` text, so that the id shown without a
//! passphrase is the one the secret belongs to. After decrypting, the derived public key is
//! compared with `account_id` once more.
//!
//! Files are written atomically: a temporary file in the same directory, fsynced, renamed into
//! place, then the directory fsynced. A crash leaves either no file or a whole one.
//!
//! ```
//! use dkvs_account::KeyType;
//! use dkvs_account::keystore::{KdfParams, Keystore};
//!
//! # let dir = std::env::temp_dir().join(format!("dkvs-keystore-doc-{}", std::process::id()));
//! // Small Argon2 parameters keep this example fast; real keystores keep the defaults.
//! let store = Keystore::open(&dir)?
//!     .with_kdf_params(KdfParams { m_cost_kib: 256, t_cost: 1, p_cost: 1 });
//! let alice = store.create("alice", KeyType::Ed25519, "correct horse")?;
//! assert_eq!(store.list()?[0].account_id, alice.account_id());
//! assert_eq!(store.load("alice", "correct horse")?.account_id(), alice.account_id());
//! assert!(store.load("alice", "wrong").is_err());
//! # std::fs::remove_dir_all(&dir).ok();
//! # Ok::<(), dkvs_account::keystore::KeystoreError>(())
//! ```

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read as _, Write as _};
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use rand::Rng as _;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::seal::SymmetricKey;
use crate::{AccountId, KeyType, Keypair};

/// The file format version this code writes and reads.
const FORMAT_VERSION: u32 = 1;
/// Suffix of key files.
const SUFFIX: &str = ".key.json";
const KDF_NAME: &str = "argon2id";
const CIPHER_NAME: &str = "xchacha20poly1305";
const SALT_LEN: usize = 16;
const NONCE_LEN: usize = 24;
/// 32 secret bytes and a 16-byte tag.
const CIPHERTEXT_LEN: usize = 32 + 16;
/// Key files are a few hundred bytes; anything much larger is not one.
const MAX_FILE_LEN: u64 = 64 * 1024;
/// The longest account name.
const MAX_NAME_LEN: usize = 64;

/// Argon2id cost parameters for new key files. Loading always uses the parameters stored in
/// the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KdfParams {
    /// Memory in KiB; at least 8 × `p_cost`, at most [`KdfParams::MAX_M_COST_KIB`].
    pub m_cost_kib: u32,
    /// Number of passes; 1 to [`KdfParams::MAX_T_COST`].
    pub t_cost: u32,
    /// Degree of parallelism (lanes); 1 to [`KdfParams::MAX_P_COST`].
    pub p_cost: u32,
}

impl KdfParams {
    /// The most memory a key file may ask for: 1 GiB, so that a hostile file cannot exhaust
    /// the memory of the device that loads it.
    pub const MAX_M_COST_KIB: u32 = 1024 * 1024;
    /// The most passes a key file may ask for.
    pub const MAX_T_COST: u32 = 64;
    /// The most lanes a key file may ask for.
    pub const MAX_P_COST: u32 = 16;
    /// The most work an unlock (or a new key file) may ask for, memory times passes: 4 GiB
    /// (1 GiB and 4 passes, 64 MiB and 64), so that a hostile file cannot hold an unlock for
    /// many minutes (1 GiB and 64 passes would). The default asks for 38 MiB. A file over it
    /// is still listed; unlocking it is refused before any work.
    pub const MAX_WORK_KIB: u64 = 4 * 1024 * 1024;

    /// Whether one of the parameters is over its limit.
    fn over_limits(self) -> bool {
        self.m_cost_kib > Self::MAX_M_COST_KIB
            || self.t_cost > Self::MAX_T_COST
            || self.p_cost > Self::MAX_P_COST
    }

    /// The argon2 parameters, or why these are refused.
    fn to_argon2(self) -> Result<argon2::Params, String> {
        if self.over_limits() {
            return Err(format!(
                "argon2id m_cost={} KiB, t_cost={}, p_cost={} exceed the limits {} KiB, {}, {}",
                self.m_cost_kib,
                self.t_cost,
                self.p_cost,
                Self::MAX_M_COST_KIB,
                Self::MAX_T_COST,
                Self::MAX_P_COST
            ));
        }
        argon2::Params::new(self.m_cost_kib, self.t_cost, self.p_cost, Some(32)).map_err(|e| {
            format!(
                "argon2id m_cost={} KiB, t_cost={}, p_cost={}: {e}",
                self.m_cost_kib, self.t_cost, self.p_cost
            )
        })
    }
}

impl Default for KdfParams {
    /// The OWASP recommendation for Argon2id: 19456 KiB (19 MiB), 2 passes, 1 lane.
    fn default() -> KdfParams {
        KdfParams { m_cost_kib: 19 * 1024, t_cost: 2, p_cost: 1 }
    }
}

/// What the keystore knows about an account without its passphrase.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct KeyInfo {
    /// The account's name in this keystore.
    pub name: String,
    /// The key type.
    pub key_type: KeyType,
    /// The account id.
    pub account_id: AccountId,
}

/// Errors of keystore operations.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeystoreError {
    /// The passphrase does not decrypt the key file (or the file's account id was altered).
    #[error("wrong passphrase for account {name:?} (or {path} was altered)")]
    WrongPassphrase {
        /// The account's name.
        name: String,
        /// The key file.
        path: PathBuf,
    },
    /// The key file asks for key derivation this keystore will not run (a file made by another
    /// tool, or altered): more work than [`KdfParams::MAX_WORK_KIB`], one parameter over its
    /// own limit (memory, passes or lanes), or more memory than the machine can give.
    #[error("key file {path} asks for key derivation that is refused: {reason}")]
    KdfRefused {
        /// The key file.
        path: PathBuf,
        /// What it asks for, and the limit.
        reason: String,
    },
    /// The key file is not a valid key file.
    #[error("key file {path} is corrupt: {reason}")]
    Corrupt {
        /// The key file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// No account has this name.
    #[error("no account named {0:?} in the keystore")]
    NotFound(String),
    /// An account already has this name.
    #[error("an account named {0:?} already exists in the keystore")]
    AlreadyExists(String),
    /// The name breaks the naming rule.
    #[error("invalid account name {0:?}: a name is 1 to 64 characters of A-Z, a-z, 0-9, _ and -")]
    InvalidName(String),
    /// The Argon2id parameters given to [`Keystore::with_kdf_params`] are refused.
    #[error("invalid key derivation parameters: {0}")]
    InvalidKdfParams(String),
    /// Reading or writing a file failed.
    #[error("cannot access {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The error from the operating system.
        source: io::Error,
    },
}

/// A directory of passphrase-encrypted key files; see the [module docs](self).
#[derive(Clone, Debug)]
pub struct Keystore {
    dir: PathBuf,
    kdf: KdfParams,
}

impl Keystore {
    /// Opens the keystore in `dir`, creating the directory (mode 0700) if it is missing.
    /// New key files use [`KdfParams::default`].
    pub fn open(dir: impl Into<PathBuf>) -> Result<Keystore, KeystoreError> {
        let dir = dir.into();
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|source| KeystoreError::Io { path: dir.clone(), source })?;
        Ok(Keystore { dir, kdf: KdfParams::default() })
    }

    /// Uses `params` for the key files this keystore writes from now on.
    pub fn with_kdf_params(mut self, params: KdfParams) -> Keystore {
        self.kdf = params;
        self
    }

    /// The keystore's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The path of the key file of the account `name` (which need not exist).
    pub fn path(&self, name: &str) -> Result<PathBuf, KeystoreError> {
        check_name(name)?;
        Ok(self.dir.join(format!("{name}{SUFFIX}")))
    }

    /// Generates a key pair of `key_type`, saves it as `name` and returns it.
    pub fn create(
        &self,
        name: &str,
        key_type: KeyType,
        passphrase: &str,
    ) -> Result<Keypair, KeystoreError> {
        let keypair = Keypair::generate(key_type);
        self.import(name, &keypair, passphrase)?;
        Ok(keypair)
    }

    /// Saves an existing key pair as `name`. An empty passphrase is accepted (the key is then
    /// only obscured); warning about it is the caller's job.
    pub fn import(
        &self,
        name: &str,
        keypair: &Keypair,
        passphrase: &str,
    ) -> Result<(), KeystoreError> {
        let path = self.path(name)?;
        let params = self.kdf.to_argon2().map_err(KeystoreError::InvalidKdfParams)?;
        if path.try_exists().map_err(|source| KeystoreError::Io { path: path.clone(), source })? {
            return Err(KeystoreError::AlreadyExists(name.to_owned()));
        }

        let mut salt = [0u8; SALT_LEN];
        rand::rng().fill_bytes(&mut salt);
        let key =
            passphrase_key(params, passphrase, &salt).map_err(KeystoreError::InvalidKdfParams)?;
        let account_id = keypair.account_id().to_string();
        let sealed = key.encrypt(keypair.secret_bytes().as_ref(), account_id.as_bytes());
        let (nonce, ciphertext) = sealed.split_at(NONCE_LEN);

        let file = KeyFile {
            version: FORMAT_VERSION,
            name: name.to_owned(),
            key_type: keypair.key_type().name().to_owned(),
            account_id,
            kdf: KdfFile {
                algorithm: KDF_NAME.to_owned(),
                m_cost_kib: self.kdf.m_cost_kib,
                t_cost: self.kdf.t_cost,
                p_cost: self.kdf.p_cost,
                salt: hex::encode(salt),
            },
            cipher: CIPHER_NAME.to_owned(),
            nonce: hex::encode(nonce),
            ciphertext: hex::encode(ciphertext),
        };
        let mut json = serde_json::to_vec_pretty(&file).map_err(|e| KeystoreError::Corrupt {
            path: path.clone(),
            reason: format!("cannot encode key file: {e}"),
        })?;
        json.push(b'\n');
        // Never over a file that is there: another process may have saved the same name since
        // the check above (two commands at once), and its key would be lost.
        create_private(&path, &json).map_err(|source| match source.kind() {
            io::ErrorKind::AlreadyExists => KeystoreError::AlreadyExists(name.to_owned()),
            _ => KeystoreError::Io { path: path.clone(), source },
        })
    }

    /// Loads and decrypts the key pair saved as `name`.
    pub fn load(&self, name: &str, passphrase: &str) -> Result<Keypair, KeystoreError> {
        let path = self.path(name)?;
        let file = read_key_file(&path, name)?;
        let corrupt = |reason: String| KeystoreError::Corrupt { path: path.clone(), reason };
        let refused = |reason: String| KeystoreError::KdfRefused { path: path.clone(), reason };
        let params = file.params.to_argon2().map_err(refused)?;
        let key = passphrase_key(params, passphrase, &file.salt).map_err(refused)?;
        let secret = key
            .decrypt(&file.sealed, file.info.account_id.to_string().as_bytes())
            .map(Zeroizing::new)
            .map_err(|_| KeystoreError::WrongPassphrase {
                name: name.to_owned(),
                path: path.clone(),
            })?;
        let keypair = Keypair::from_secret_bytes(file.info.key_type, &secret)
            .map_err(|e| corrupt(format!("decrypted secret: {e}")))?;
        if keypair.account_id() != file.info.account_id {
            return Err(corrupt(format!(
                "the secret key belongs to {}, not to the stored account id {}",
                keypair.account_id(),
                file.info.account_id
            )));
        }
        Ok(keypair)
    }

    /// Lists the accounts in the keystore, sorted by name, without decrypting them. Files that
    /// are not named `<name>.key.json` are ignored; a key file that is corrupt is an error.
    pub fn list(&self) -> Result<Vec<KeyInfo>, KeystoreError> {
        let io_err = |source| KeystoreError::Io { path: self.dir.clone(), source };
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(io_err)? {
            let entry = entry.map_err(io_err)?;
            let file_name = entry.file_name();
            let Some(name) = file_name.to_str().and_then(|n| n.strip_suffix(SUFFIX)) else {
                continue;
            };
            if check_name(name).is_err() {
                continue;
            }
            out.push(read_key_file(&entry.path(), name)?.info);
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Deletes the key file of `name`. The key pair is gone for good unless it is saved
    /// elsewhere.
    pub fn remove(&self, name: &str) -> Result<(), KeystoreError> {
        let path = self.path(name)?;
        fs::remove_file(&path).map_err(|source| match source.kind() {
            io::ErrorKind::NotFound => KeystoreError::NotFound(name.to_owned()),
            _ => KeystoreError::Io { path: path.clone(), source },
        })?;
        sync_dir(&self.dir)
    }
}

/// Writes `contents` to `path` so that the file is whole or absent, and readable by this user
/// only: a temporary file beside it with a fresh random name (created exclusively, so a link
/// planted there is not followed; its leading dot keeps it out of listings), mode 0600 whatever
/// the umask, fsync, rename over `path`, and a fsync of the directory. For key files, tokens,
/// and anything else a user's other processes must not read.
pub fn write_private(path: &Path, contents: &[u8]) -> io::Result<()> {
    place_private(path, contents, |tmp, path| fs::rename(tmp, path))
}

/// Like [`write_private`], but only if `path` does not exist yet: when another writer got
/// there first (two processes creating the same key), this fails with
/// [`io::ErrorKind::AlreadyExists`] and the file that is there stays. (Where the file system
/// allows no hard links, the FAT of a memory card, some FUSE mounts, an Android app's policy:
/// a rename that replaces nothing, `renameat2` with `RENAME_NOREPLACE` on Linux and Android.
/// Where that is refused too, a check that nothing is there, then the rename: two writers at
/// the same moment could both pass the check there, and the second's file would replace the
/// first's.)
pub fn create_private(path: &Path, contents: &[u8]) -> io::Result<()> {
    create_private_linking(path, contents, |tmp, path| fs::hard_link(tmp, path))
}

/// [`create_private`] with `link` for the hard link (a test's stands for a file system that
/// has none).
fn create_private_linking(
    path: &Path,
    contents: &[u8],
    link: impl FnOnce(&Path, &Path) -> io::Result<()>,
) -> io::Result<()> {
    place_private(path, contents, |tmp, path| {
        // A link never replaces an existing file; the temporary name then goes.
        match link(tmp, path) {
            Ok(()) => fs::remove_file(tmp),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::PermissionDenied | io::ErrorKind::Unsupported
                ) =>
            {
                rename_no_replace(tmp, path)
            }
            Err(e) => Err(e),
        }
    })
}

/// Renames `tmp` to `path` unless something is there (a link too, dangling or not).
fn rename_no_replace(tmp: &Path, path: &Path) -> io::Result<()> {
    let exists = || io::Error::new(io::ErrorKind::AlreadyExists, "the file exists");
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        use rustix::fs::{CWD, RenameFlags, renameat_with};
        use rustix::io::Errno;
        match renameat_with(CWD, tmp, CWD, path, RenameFlags::NOREPLACE) {
            Ok(()) => return Ok(()),
            Err(Errno::EXIST) => return Err(exists()),
            // A file system or kernel without the flag (or a sandbox that refuses the call):
            // the check below.
            Err(Errno::INVAL | Errno::NOSYS | Errno::NOTSUP | Errno::PERM) => {}
            Err(e) => return Err(e.into()),
        }
    }
    // Not followed: a link there (dangling too) is something there.
    match fs::symlink_metadata(path) {
        Ok(_) => Err(exists()),
        Err(absent) if absent.kind() == io::ErrorKind::NotFound => fs::rename(tmp, path),
        Err(other) => Err(other),
    }
}

/// Writes `contents` to a fresh private temporary file beside `path`, then `place`s it.
fn place_private(
    path: &Path,
    contents: &[u8],
    place: impl FnOnce(&Path, &Path) -> io::Result<()>,
) -> io::Result<()> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let prefix = format!(".{name}.");
    // Temporary files a crash left behind hold secrets too: they go now (those over an hour
    // old; a younger one may be another writer's, at work).
    let old = |entry: &fs::DirEntry| {
        entry
            .metadata()
            .and_then(|m| m.modified())
            .is_ok_and(|t| t.elapsed().is_ok_and(|age| age.as_secs() > 3600))
    };
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            let ours = entry.file_name().to_str().is_some_and(|n| {
                n.starts_with(&prefix) && n.ends_with(".tmp") && n.len() == prefix.len() + 20
            });
            if ours && old(&entry) {
                let _ = fs::remove_file(entry.path());
            }
        }
    }
    let tmp = dir.join(format!("{prefix}{:016x}.tmp", rand::rng().next_u64()));
    let write = || -> io::Result<()> {
        let mut file = OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
        // The umask may have taken bits away; the mode is exactly 0600 either way.
        file.set_permissions(fs::Permissions::from_mode(0o600))?;
        file.write_all(contents)?;
        file.sync_all()
    };
    if let Err(e) = write().and_then(|()| place(&tmp, path)) {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    File::open(dir)?.sync_all()
}

/// Refuses names outside `[A-Za-z0-9_-]{1,64}`.
fn check_name(name: &str) -> Result<(), KeystoreError> {
    let valid = (1..=MAX_NAME_LEN).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if valid { Ok(()) } else { Err(KeystoreError::InvalidName(name.to_owned())) }
}

fn sync_dir(dir: &Path) -> Result<(), KeystoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| KeystoreError::Io { path: dir.to_owned(), source })
}

/// The Argon2id key of `passphrase`.
/// Bytes allocated for argon2id's memory at least (see [`passphrase_key`]).
const KDF_ALLOCATION: usize = 33 << 20;

fn passphrase_key(
    params: argon2::Params,
    passphrase: &str,
    salt: &[u8],
) -> Result<SymmetricKey, String> {
    let work = u64::from(params.m_cost()) * u64::from(params.t_cost());
    if work > KdfParams::MAX_WORK_KIB {
        return Err(format!(
            "argon2id m_cost={} KiB times t_cost={} is over the limit of {} KiB of work",
            params.m_cost(),
            params.t_cost(),
            KdfParams::MAX_WORK_KIB
        ));
    }
    let mut key = Zeroizing::new([0u8; 32]);
    // argon2id's memory (19 MiB by default), allocated here rather than by the crate: in an
    // allocation above glibc's largest dynamic mmap threshold (32 MiB on 64-bit), which is
    // always a mapping of its own, given back to the system when freed; only the blocks
    // argon2id uses are ever written, so the rest costs no memory. Allocated at its own
    // size, the first unlock's block would be a mapping, and freeing it would raise the
    // threshold past the next one's: every later unlock would then come from a heap that
    // keeps freed memory resident (a node that unlocked eight accounts kept about 98 MiB).
    let blocks = params.block_count();
    let mut memory: Vec<argon2::Block> = Vec::new();
    // A key file may ask for up to 1 GiB: too much is an error, not an abort.
    memory
        .try_reserve_exact(blocks.max(KDF_ALLOCATION / argon2::Block::SIZE))
        .map_err(|e| format!("argon2id needs {} KiB: {e}", blocks))?;
    memory.resize(blocks, argon2::Block::default());
    let hashed = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
        .hash_password_into_with_memory(passphrase.as_bytes(), salt, key.as_mut(), &mut memory);
    // The blocks hold what the key was made from (each lane's last block leads to it).
    memory.iter_mut().for_each(zeroize::Zeroize::zeroize);
    hashed.map_err(|e| format!("argon2id: {e}"))?;
    Ok(SymmetricKey::from_bytes(key))
}

/// A key file as stored.
#[derive(Serialize, Deserialize)]
struct KeyFile {
    version: u32,
    name: String,
    key_type: String,
    account_id: String,
    kdf: KdfFile,
    cipher: String,
    nonce: String,
    ciphertext: String,
}

#[derive(Serialize, Deserialize)]
struct KdfFile {
    algorithm: String,
    m_cost_kib: u32,
    t_cost: u32,
    p_cost: u32,
    salt: String,
}

/// A key file, read and checked in everything but the passphrase.
struct CheckedKeyFile {
    info: KeyInfo,
    /// Valid argon2 parameters, possibly over this keystore's limits (refused at unlock).
    params: KdfParams,
    salt: Vec<u8>,
    /// `nonce || ciphertext`, as [`SymmetricKey::decrypt`] takes it.
    sealed: Vec<u8>,
}

/// Reads the key file at `path`, which should hold the account `name`.
fn read_key_file(path: &Path, name: &str) -> Result<CheckedKeyFile, KeystoreError> {
    let io_err = |source: io::Error| match source.kind() {
        io::ErrorKind::NotFound => KeystoreError::NotFound(name.to_owned()),
        _ => KeystoreError::Io { path: path.to_owned(), source },
    };
    let mut bytes = Vec::new();
    File::open(path)
        .and_then(|f| f.take(MAX_FILE_LEN + 1).read_to_end(&mut bytes))
        .map_err(io_err)?;
    check_key_file(&bytes, name)
        .map_err(|reason| KeystoreError::Corrupt { path: path.to_owned(), reason })
}

/// Parses and checks a key file's bytes; the error is the reason it is corrupt.
fn check_key_file(bytes: &[u8], name: &str) -> Result<CheckedKeyFile, String> {
    if bytes.len() as u64 > MAX_FILE_LEN {
        return Err(format!("larger than {MAX_FILE_LEN} bytes"));
    }
    let file: KeyFile =
        serde_json::from_slice(bytes).map_err(|e| format!("not valid JSON: {e}"))?;
    if file.version != FORMAT_VERSION {
        return Err(format!("format version {} (supported: {FORMAT_VERSION})", file.version));
    }
    if file.name != name {
        return Err(format!("the file holds the account named {:?}, not {name:?}", file.name));
    }
    let key_type: KeyType = file.key_type.parse().map_err(|e| format!("key_type: {e}"))?;
    let account_id: AccountId = file.account_id.parse().map_err(|e| format!("account_id: {e}"))?;
    if account_id.key_type() != key_type {
        return Err(format!(
            "key_type is {key_type} but account_id is a {} id",
            account_id.key_type()
        ));
    }
    if file.kdf.algorithm != KDF_NAME {
        return Err(format!("kdf {:?} (supported: {KDF_NAME:?})", file.kdf.algorithm));
    }
    let params = KdfParams {
        m_cost_kib: file.kdf.m_cost_kib,
        t_cost: file.kdf.t_cost,
        p_cost: file.kdf.p_cost,
    };
    // Parameters over this keystore's limits (a file made by another tool) are refused at
    // unlock, `KdfRefused`, and the file is still listed; parameters argon2 itself refuses
    // make no valid key file.
    if !params.over_limits() {
        params.to_argon2()?;
    }
    if file.cipher != CIPHER_NAME {
        return Err(format!("cipher {:?} (supported: {CIPHER_NAME:?})", file.cipher));
    }
    let salt = decode_hex("kdf.salt", &file.kdf.salt, SALT_LEN)?;
    let mut sealed = decode_hex("nonce", &file.nonce, NONCE_LEN)?;
    sealed.extend(decode_hex("ciphertext", &file.ciphertext, CIPHERTEXT_LEN)?);
    Ok(CheckedKeyFile {
        info: KeyInfo { name: file.name, key_type, account_id },
        params,
        salt,
        sealed,
    })
}

fn decode_hex(field: &str, text: &str, len: usize) -> Result<Vec<u8>, String> {
    let bytes = hex::decode(text).map_err(|e| format!("{field} is not hex: {e}"))?;
    if bytes.len() != len {
        return Err(format!("{field} is {} bytes, expected {len}", bytes.len()));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_rule() {
        for ok in ["a", "alice", "A-b_9", &"x".repeat(64)] {
            assert!(check_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", &"x".repeat(65), "a b", "a/b", "..", ".hidden", "é", "a.key"] {
            assert!(matches!(check_name(bad), Err(KeystoreError::InvalidName(n)) if n == bad));
        }
    }

    #[test]
    fn kdf_params_are_bounded() {
        assert!(KdfParams::default().to_argon2().is_ok());
        let p = KdfParams::default();
        assert_eq!((p.m_cost_kib, p.t_cost, p.p_cost), (19456, 2, 1));
        assert!(KdfParams { m_cost_kib: 1, ..p }.to_argon2().is_err());
        assert!(KdfParams { t_cost: 0, ..p }.to_argon2().is_err());
        assert!(KdfParams { m_cost_kib: KdfParams::MAX_M_COST_KIB + 1, ..p }.to_argon2().is_err());
        assert!(KdfParams { t_cost: KdfParams::MAX_T_COST + 1, ..p }.to_argon2().is_err());
    }

    #[test]
    fn error_messages_name_the_value() {
        let e = KeystoreError::InvalidName("a b".into());
        assert_eq!(
            e.to_string(),
            "invalid account name \"a b\": a name is 1 to 64 characters of A-Z, a-z, 0-9, _ and -"
        );
        assert_eq!(
            KeystoreError::NotFound("bob".into()).to_string(),
            "no account named \"bob\" in the keystore"
        );
    }

    #[test]
    fn private_files_are_whole_and_a_crashs_old_temporary_files_go() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("node.key");
        // A temporary file a crash left two hours ago, and one another writer is using now.
        let old = dir.path().join(".node.key.00000000000000aa.tmp");
        let young = dir.path().join(".node.key.00000000000000bb.tmp");
        for file in [&old, &young] {
            fs::write(file, b"secret").expect("write");
        }
        let two_hours_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(7200);
        File::options()
            .write(true)
            .open(&old)
            .and_then(|f| f.set_modified(two_hours_ago))
            .expect("set mtime");
        write_private(&path, b"key").expect("written");
        assert_eq!(fs::read(&path).expect("read"), b"key");
        assert_eq!(fs::metadata(&path).expect("meta").permissions().mode() & 0o777, 0o600);
        assert!(!old.exists(), "the crash's leftover is gone");
        assert!(young.exists(), "another writer's file is left alone");
        // Creating only: the file that is there stays.
        let again = create_private(&path, b"other").expect_err("exists");
        assert_eq!(again.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(fs::read(&path).expect("read"), b"key");
    }

    #[test]
    fn where_no_hard_link_is_allowed_a_new_private_file_still_never_replaces_one() {
        let refused = |_: &Path, _: &Path| -> io::Result<()> {
            Err(io::Error::from(io::ErrorKind::PermissionDenied))
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("key");
        create_private_linking(&path, b"first", refused).expect("made by a rename");
        assert_eq!(fs::read(&path).expect("read"), b"first");
        let again = create_private_linking(&path, b"second", refused).expect_err("exists");
        assert_eq!(again.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(fs::read(&path).expect("read"), b"first", "the first stays");
        // Writers at the same moment: one wins, and its file is the one that stays.
        for round in 0..100 {
            let path = dir.path().join(format!("race{round}"));
            let barrier = std::sync::Barrier::new(4);
            let won: Vec<u8> = std::thread::scope(|s| {
                let writers: Vec<_> = (0..4u8)
                    .map(|i| {
                        let (path, barrier) = (&path, &barrier);
                        s.spawn(move || {
                            barrier.wait();
                            create_private_linking(path, &[i], refused).map(|()| i)
                        })
                    })
                    .collect();
                writers.into_iter().filter_map(|w| w.join().expect("writer").ok()).collect()
            });
            assert_eq!(won.len(), 1, "round {round}: {won:?} all said they created it");
            assert_eq!(fs::read(&path).expect("read"), won, "round {round}: the winner's stays");
        }
        // A dangling link there is something there, not followed to nothing.
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(dir.path().join("nowhere"), &link).expect("symlink");
        let onto = create_private_linking(&link, b"third", refused).expect_err("a link");
        assert_eq!(onto.kind(), io::ErrorKind::AlreadyExists);
        assert!(fs::symlink_metadata(&link).expect("still there").file_type().is_symlink());
        // Other failures of the link are failures.
        let full = |_: &Path, _: &Path| -> io::Result<()> {
            Err(io::Error::from(io::ErrorKind::StorageFull))
        };
        let other = dir.path().join("other");
        let error = create_private_linking(&other, b"x", full).expect_err("no space");
        assert_eq!(error.kind(), io::ErrorKind::StorageFull);
        assert!(!other.exists());
        // No temporary file is left behind by any of them.
        let left: Vec<_> = fs::read_dir(dir.path())
            .expect("dir")
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }
}
