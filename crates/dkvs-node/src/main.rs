//! `dkvs`: run a node, and use the network from the shell.

use std::io::{Read as _, Write as _};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::builder::NonEmptyStringValueParser as NonEmpty;
use clap::{Parser, Subcommand};
use dkvs_account::KeyType;
use dkvs_account::keystore::KeystoreError;
use dkvs_node::client::{Client, ClientError, encode_key, encode_segment};
use dkvs_node::config::NodeConfig;
use dkvs_node::home::Home;
use zeroize::Zeroizing;

/// dkvs: a signed key-value memory on a peer-to-peer network.
#[derive(Parser)]
#[command(name = "dkvs", version, about)]
struct Cli {
    /// Home directory: keys, configuration, data, and the running node's API address.
    #[arg(long, global = true, env = "DKVS_HOME")]
    home: Option<PathBuf>,
    /// API of the node to talk to (default: the one running from the home). Another node's
    /// API needs that node's token in DKVS_TOKEN (from its api.json): this home's token is
    /// sent only to this home's node. With `dkvs node`: the address to serve the API on, e.g.
    /// 127.0.0.1:4041.
    #[arg(long = "api", global = true, value_name = "URL")]
    api_url: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Manage accounts.
    #[command(subcommand)]
    Account(AccountCommand),
    /// Run a node in the foreground.
    Node(NodeArgs),
    /// Write a value: from the argument, from --file, or from standard input.
    Put {
        /// The key; `/~/...` is the signing account's own scope.
        key: String,
        /// The value (`-`, or none: standard input, as `ipfs add -`).
        value: Option<String>,
        /// Read the value from this file.
        #[arg(long, conflicts_with = "value")]
        file: Option<PathBuf>,
        /// Life of the record, e.g. 90s, 1h, 7d (default: the node's).
        #[arg(long)]
        ttl: Option<String>,
        /// Only if the current sequence is N (0: only if the key is not set, or deleted).
        #[arg(long = "expect-seq", value_name = "N")]
        expect_seq: Option<u64>,
        /// Sign with this account instead of the default one.
        #[arg(long = "as", value_name = "NAME")]
        account: Option<String>,
        /// Keep the record alive while the node runs: re-signed before it expires, also after
        /// a restart (see `dkvs keep`).
        #[arg(long)]
        keep: bool,
        /// Take over a shared name with its holder's consent: the token `dkvs handover`
        /// printed for this key and account.
        #[arg(long, value_name = "TOKEN", conflicts_with = "expect_seq")]
        handover: Option<String>,
    },
    /// Records the node keeps alive (`dkvs put --keep`).
    #[command(subcommand)]
    Keep(KeepCommand),
    /// Read a value: its raw bytes to standard output. Exit code 1 if the key is not set.
    Get {
        /// The key.
        key: String,
        /// Read this node's copy only, without asking the network.
        #[arg(long)]
        local: bool,
        /// Print the whole record as JSON.
        #[arg(long)]
        json: bool,
        /// The account whose `/~/` scope is meant.
        #[arg(long = "as", value_name = "NAME")]
        account: Option<String>,
    },
    /// Delete a key (a signed tombstone).
    Delete {
        /// The key.
        key: String,
        /// Sign with this account.
        #[arg(long = "as", value_name = "NAME")]
        account: Option<String>,
    },
    /// Hand a shared name you hold (`/name`) to another account: prints a token that account
    /// gives to `dkvs put NAME VALUE --handover TOKEN` to take it over. It is good for that
    /// name, that account and the next version only (a put of yours first makes it stale).
    Handover {
        /// The name.
        key: String,
        /// The account id it goes to.
        to: String,
        /// The account that holds it (default: the default account).
        #[arg(long = "as", value_name = "NAME")]
        account: Option<String>,
    },
    /// Print each newer version of a key as a JSON line, until interrupted. Once the node's
    /// first read of the key answered (within 10 s), a note on stderr says which version the
    /// watch began after (with --current, from, and that version is the first line).
    Watch {
        /// The key.
        key: String,
        /// Print the version the watch began at first, as a line like the others: the key's
        /// value now, with no version missed between it and the next (a `get` before the
        /// watch could miss one), when there is one.
        #[arg(long)]
        current: bool,
        /// The account whose `/~/` scope is meant.
        #[arg(long = "as", value_name = "NAME")]
        account: Option<String>,
    },
    /// Send and read letters (signed, sealed to the recipient, kept for it while offline).
    #[command(subcommand)]
    Mail(MailCommand),
    /// Publish to and follow named public channels.
    #[command(subcommand)]
    Channel(ChannelCommand),
    /// Files on IPFS: encrypted with the account's key unless added --plain.
    #[command(subcommand)]
    Ipfs(IpfsCommand),
    /// List connected peers.
    Peers {
        /// One line per connection: the peer, its address, and "direct" or "relayed".
        #[arg(long)]
        addresses: bool,
    },
    /// Show the node's peer id, addresses, reachability, peers, records and memory.
    Status,
}

#[derive(Subcommand)]
enum KeepCommand {
    /// List the records the node keeps alive.
    List,
    /// Stop keeping a record alive (it lapses at its expiry).
    Stop {
        /// The key.
        key: String,
        /// The account whose `/~/` scope is meant.
        #[arg(long = "as", value_name = "NAME")]
        account: Option<String>,
    },
}

#[derive(Subcommand)]
enum MailCommand {
    /// Send a letter: from the argument, from --file, or from standard input. Prints which
    /// replicas keep it (each signed a custody receipt).
    Send {
        /// The recipient's account id.
        #[arg(value_parser = NonEmpty::new())]
        account_id: String,
        /// The message (`-`, or none: standard input).
        message: Option<String>,
        /// Read the message from this file.
        #[arg(long, conflicts_with = "message")]
        file: Option<PathBuf>,
        /// How long replicas keep it if unread, e.g. 1h, 2d (default and most: the node's
        /// mail_ttl_secs, 7 days unless configured). Its end is rounded up to the minute, so
        /// that a letter does not show its sender's clock to the second.
        #[arg(long)]
        ttl: Option<String>,
        /// Sign with this account instead of the default one.
        #[arg(long = "as", value_name = "NAME")]
        account: Option<String>,
    },
    /// Print the new letters, oldest first, with sender and time; once printed they are
    /// marked read and the replicas delete them. The node answers at most 4 MiB at a time;
    /// this reads up to 16 answers.
    Read {
        /// When there is no new letter, wait this long for one (e.g. 30s, 10m; at most 1h;
        /// `--wait` alone: 1h).
        #[arg(long, value_name = "DURATION", num_args = 0..=1, default_missing_value = "1h")]
        wait: Option<String>,
        /// Print JSON (the API's answer: one, of at most 4 MiB; its "more" says how many
        /// letters wait for the next read) instead.
        #[arg(long)]
        json: bool,
        /// Read this account's mailbox instead of the default one's.
        #[arg(long = "as", value_name = "NAME")]
        account: Option<String>,
    },
    /// What became of a letter sent through this node: the replicas that keep it, and whether
    /// its recipient read it.
    Status {
        /// The letter's id (as `dkvs mail send` printed it).
        #[arg(value_parser = NonEmpty::new())]
        message_id: String,
        /// The account that sent it, if not the default one.
        #[arg(long = "as", value_name = "NAME")]
        account: Option<String>,
    },
    /// Print each new letter as a JSON line as it comes, until interrupted (each is marked
    /// read once printed).
    Watch {
        /// Watch this account's mailbox instead of the default one's.
        #[arg(long = "as", value_name = "NAME")]
        account: Option<String>,
    },
}

#[derive(Subcommand)]
enum ChannelCommand {
    /// Publish a post, signed by the account: from the argument, from --file, or from
    /// standard input (at most 8 KiB).
    Publish {
        /// The channel's name.
        #[arg(value_parser = NonEmpty::new())]
        name: String,
        /// The post (`-`, or none: standard input).
        message: Option<String>,
        /// Read the post from this file.
        #[arg(long, conflicts_with = "message")]
        file: Option<PathBuf>,
        /// Sign with this account instead of the default one.
        #[arg(long = "as", value_name = "NAME")]
        account: Option<String>,
    },
    /// Print the channel's posts as JSON lines as they come, until interrupted.
    Subscribe {
        /// The channel's name.
        #[arg(value_parser = NonEmpty::new())]
        name: String,
        /// First print the recent posts that peers on the channel kept (up to an hour).
        #[arg(long)]
        history: bool,
        /// Say that the account is in the channel while subscribed (see `members`).
        #[arg(long)]
        announce: bool,
        /// The account to announce.
        #[arg(long = "as", value_name = "NAME")]
        account: Option<String>,
    },
    /// List the accounts that said they are in the channel in the last five minutes.
    Members {
        /// The channel's name.
        #[arg(value_parser = NonEmpty::new())]
        name: String,
    },
}

#[derive(Subcommand)]
enum IpfsCommand {
    /// Add a file (standard input when FILE is `-`) and print its CID. It is encrypted with
    /// the account's key before its blocks are made, unless --plain. A directory is added
    /// with --plain only, as one UnixFS directory (the CID Helia gives it).
    Add {
        /// The file, or the directory; a pipe or a terminal (`/dev/stdin`, `<(command)`) is
        /// read until it ends, as `-` is.
        file: PathBuf,
        /// Add it as public content, not encrypted (anyone with the CID reads it; no account
        /// is used).
        #[arg(long, conflicts_with = "account")]
        plain: bool,
        /// With a directory: add the names that start with `.` too (left out otherwise, as
        /// Kubo and Helia leave them out).
        #[arg(long)]
        hidden: bool,
        /// Accepted for those used to `ipfs add -r`: a directory is always added whole.
        #[arg(short = 'r', long = "recursive", hide = true)]
        _recursive: bool,
        /// Encrypt with this account's key instead of the default account's.
        #[arg(long = "as", value_name = "NAME")]
        account: Option<String>,
    },
    /// Fetch a file from this node or any IPFS peer, checked block by block, decrypted when
    /// it is the account's own; to standard output unless -o.
    Get {
        /// The file's CID, or a path in a directory under one: `<cid>/<path>` (also written
        /// `/ipfs/<cid>/<path>` or `ipfs://<cid>/<path>`).
        #[arg(value_parser = NonEmpty::new())]
        cid: String,
        /// Write to this file (made, or replaced, when the whole file has arrived; a pipe or a
        /// device is written into as the bytes come; `-` is standard output).
        #[arg(short, long, value_name = "FILE")]
        output: Option<PathBuf>,
        /// Write the bytes as stored, without decrypting.
        #[arg(long)]
        raw: bool,
        /// Open it with this account instead of the default account.
        #[arg(long = "as", value_name = "NAME")]
        account: Option<String>,
        /// Seconds to wait for any one block.
        #[arg(long, value_name = "SECONDS")]
        timeout: Option<u64>,
    },
    /// Share an encrypted file of the account's with another account: its key, sealed to
    /// that account, is kept as a record under the owner's keys (kept alive by this node).
    Share {
        /// The file's CID.
        #[arg(value_parser = NonEmpty::new())]
        cid: String,
        /// The account to share it with.
        #[arg(value_parser = NonEmpty::new())]
        account_id: String,
        /// The owner, if not the default account.
        #[arg(long = "as", value_name = "NAME")]
        account: Option<String>,
    },
    /// Connect to an IPFS peer (as `ipfs swarm connect`): `/ip4/.../tcp/.../p2p/<peer id>`.
    Connect {
        /// The peer's address.
        multiaddr: String,
    },
    /// List the connected peers that exchange blocks.
    Peers,
    /// Fetch a whole file and pin it, so that garbage collection keeps it.
    Pin {
        /// The file's CID.
        #[arg(value_parser = NonEmpty::new())]
        cid: String,
    },
    /// Unpin a file; its blocks go at the next garbage collection.
    Unpin {
        /// The file's CID.
        #[arg(value_parser = NonEmpty::new())]
        cid: String,
    },
    /// Remove every block that no pin reaches.
    Gc,
    /// Show what the block store holds.
    Stat,
}

#[derive(Subcommand)]
enum AccountCommand {
    /// Create an account and print its id. An account made while there is no default (the
    /// first one) becomes the default. Its passphrase must open the node's other accounts.
    New {
        /// A name for it (default: "default", or "accountN").
        name: Option<String>,
        /// Key type.
        #[arg(long = "type", default_value = "ed25519")]
        key_type: KeyType,
    },
    /// List the accounts.
    List,
    /// Show one account.
    Show {
        /// Its name.
        #[arg(value_parser = NonEmpty::new())]
        name: String,
    },
}

#[derive(clap::Args)]
struct NodeArgs {
    /// Listen on this multiaddr (repeatable; replaces the configured ones).
    #[arg(long, value_name = "MULTIADDR")]
    listen: Vec<String>,
    /// Join the network through this peer, `/ip4/.../tcp/.../p2p/<peer id>` (repeatable).
    #[arg(long, value_name = "MULTIADDR")]
    bootstrap: Vec<String>,
    /// Read the configuration from this TOML file (default: <home>/config.toml if present).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Start from this profile's defaults: default, phone (less memory, fewer connections)
    /// or light (a client that keeps nothing for others). Overrides the file's `profile`.
    #[arg(long, value_name = "NAME")]
    profile: Option<String>,
    /// Print the effective configuration and exit.
    #[arg(long)]
    print_config: bool,
}

/// Prints a line to standard output. Where `println!` panics when the reader has gone
/// (`dkvs ipfs stat | head -1`), this returns [`StdoutClosed`], which ends the command quietly;
/// any other write error is returned as it is.
macro_rules! outln {
    ($($arg:tt)*) => {
        writeln!(std::io::stdout(), $($arg)*).map_err(stdout_error)?
    };
}

/// Standard output's reader went away: the command has nobody left to answer.
#[derive(Debug, thiserror::Error)]
#[error("standard output was closed")]
struct StdoutClosed;

fn stdout_error(e: std::io::Error) -> anyhow::Error {
    if e.kind() == std::io::ErrorKind::BrokenPipe { StdoutClosed.into() } else { e.into() }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        // The reader of the command's answer went away (`dkvs ... | head`): nothing is left
        // to say. Only the command's own output counts here: `dkvs node`, whose log lines go
        // through other writers, still fails loudly when they break.
        Err(e) if e.downcast_ref::<StdoutClosed>().is_some() => ExitCode::SUCCESS,
        Err(e) => {
            // stderr may be a closed pipe too: then there is nobody to tell.
            // What an error quotes (a file's name, a node's answer) may hold what a terminal
            // obeys: shown escaped.
            if let Some(ClientError::NotFound(message)) = e.downcast_ref::<ClientError>() {
                let _ = writeln!(std::io::stderr(), "dkvs: {}", terminal_text(message));
                return ExitCode::from(1);
            }
            let _ = writeln!(std::io::stderr(), "dkvs: {}", terminal_text(&causes(&e)));
            ExitCode::from(2)
        }
    }
}

/// A letter's text as `mail read` prints it: each line indented under its "from ... at ...:"
/// line, so that no line of a body passes for a header of another letter, and control
/// characters (a terminal's escape sequences, carriage returns) shown escaped, not obeyed.
fn letter_text(body: &str) -> String {
    let lines: Vec<String> =
        body.split('\n').map(|line| format!("  {}", terminal_text(line))).collect();
    lines.join("\n")
}

/// `text` with the characters a terminal obeys (but line ends and tabs) and those that
/// reorder a line shown escaped.
fn terminal_text(text: &str) -> String {
    let mut shown = String::with_capacity(text.len());
    for c in text.chars() {
        if escaped(c) {
            shown.extend(c.escape_default());
        } else {
            shown.push(c);
        }
    }
    shown
}

/// Whether `c` is shown escaped on a terminal: a character it obeys (but line ends and tabs),
/// one that reorders a line, or one that hides or splits what a line shows.
fn escaped(c: char) -> bool {
    (c.is_control() && !matches!(c, '\n' | '\t')) || reorders(c) || invisible(c)
}

/// Zero-width spaces and their kin, line and paragraph separators, the byte-order mark: they
/// hide or split what a line shows (ZWJ and ZWNJ are not among them: scripts and emoji use
/// them).
fn invisible(c: char) -> bool {
    matches!(c, '\u{200b}' | '\u{2028}' | '\u{2029}' | '\u{2060}'..='\u{2064}' | '\u{feff}')
}

/// Bidirectional marks, overrides and isolates: they reorder what a line shows.
fn reorders(c: char) -> bool {
    matches!(
        c,
        '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'
    )
}

/// JSON text as `dkvs` prints it: the same JSON, with the characters a terminal obeys or that
/// reorder a line, which serde_json writes as they are (DEL, the C1 controls, bidirectional
/// marks, overrides and isolates), written as `\uXXXX` escapes. Such characters occur only
/// inside strings, so a parser reads the same value.
fn terminal_json(json: &str) -> String {
    let mut shown = String::with_capacity(json.len());
    for c in json.chars() {
        if escaped(c) {
            shown.push_str(&format!("\\u{:04x}", u32::from(c)));
        } else {
            shown.push(c);
        }
    }
    shown
}

/// An error and its causes, each said once: errors that name their cause in their own
/// message (most of the crates' do) are not followed by it again.
fn causes(e: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in e.chain().map(ToString::to_string) {
        // A cause its error named: mostly at the end of the error's words, or within them
        // (a short cause, such as "timed out", is said again unless it ends them).
        if text.ends_with(&cause) || (cause.len() >= 20 && text.contains(&cause)) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&cause);
    }
    text
}

fn passphrase(confirm: bool) -> anyhow::Result<Zeroizing<String>> {
    let passphrase = match std::env::var("DKVS_PASSPHRASE") {
        Ok(p) => Zeroizing::new(p),
        Err(_) => {
            let first = Zeroizing::new(rpassword::prompt_password("passphrase: ").context(
                "cannot read a passphrase; set DKVS_PASSPHRASE when there is no terminal",
            )?);
            if confirm {
                let again = Zeroizing::new(rpassword::prompt_password("again: ")?);
                anyhow::ensure!(*first == *again, "the passphrases differ");
            }
            first
        }
    };
    if passphrase.is_empty() && confirm {
        eprintln!(
            "dkvs: warning: an empty passphrase leaves the key readable by anyone with the file"
        );
    }
    Ok(passphrase)
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let home = Home::new(match cli.home {
        Some(home) => home,
        None => Home::default_root()?,
    });
    match cli.command {
        Command::Account(command) => account(&home, command),
        Command::Node(args) => node(home, args, cli.api_url),
        command => {
            let client = client(&home, cli.api_url.as_deref(), &command)?;
            client_command(&client, command)
        }
    }
}

fn account(home: &Home, command: AccountCommand) -> anyhow::Result<()> {
    let keystore = home.keystore()?;
    match command {
        AccountCommand::New { name, key_type } => {
            let existing = keystore.list()?;
            let name = name.unwrap_or_else(|| {
                if existing.is_empty() {
                    "default".into()
                } else {
                    format!("account{}", existing.len() + 1)
                }
            });
            let passphrase = passphrase(true)?;
            // The node opens its accounts with one passphrase: an account made with another
            // would stay locked beside the default one.
            let mut default = home.default_account()?;
            if default.as_ref().is_some_and(|named| !existing.iter().any(|a| a.name == *named)) {
                // A default that names no account any more: this one takes its place.
                default = None;
            }
            // The default account, else any other.
            let other = default.clone().or_else(|| existing.first().map(|a| a.name.clone()));
            if let Some(other) = other
                && let Err(KeystoreError::WrongPassphrase { .. }) =
                    keystore.load(&other, &passphrase)
            {
                // (A damaged account is the node's start to say.)
                anyhow::bail!(
                    "the passphrase does not open the account {other:?}: the node opens its \
                     accounts with one passphrase, so give this account the others'"
                );
            }
            let pair = keystore.create(&name, key_type, &passphrase)?;
            if default.is_none() {
                home.set_default_account(&name)?;
            }
            outln!("{}", pair.account_id());
        }
        AccountCommand::List => {
            let default = home.default_account()?;
            let accounts = keystore.list()?;
            if accounts.is_empty() {
                eprintln!("dkvs: no account yet; make one with `dkvs account new <name>`");
            }
            for info in accounts {
                let mark =
                    if default.as_deref() == Some(info.name.as_str()) { " (default)" } else { "" };
                outln!("{}\t{}\t{}{mark}", info.name, info.key_type, info.account_id);
            }
        }
        AccountCommand::Show { name } => {
            let info =
                keystore.list()?.into_iter().find(|info| info.name == name).ok_or_else(|| {
                    ClientError::NotFound(KeystoreError::NotFound(name).to_string())
                })?;
            outln!("name: {}", info.name);
            outln!("type: {}", info.key_type);
            outln!("account id: {}", info.account_id);
            if let Some(address) = info.account_id.eth_address() {
                outln!("ethereum address: {address}");
            }
        }
    }
    Ok(())
}

fn node(home: Home, args: NodeArgs, api: Option<String>) -> anyhow::Result<()> {
    let file = match &args.config {
        Some(path) => Some(path.clone()),
        None => Some(home.config_file()).filter(|f| f.exists()),
    };
    let mut config = NodeConfig::load_with(file.as_deref(), args.profile.as_deref())?;
    if !args.listen.is_empty() {
        config.listen = args.listen;
    }
    config.bootstrap.extend(args.bootstrap);
    if let Some(api) = api {
        config.api = api.trim_start_matches("http://").trim_end_matches('/').to_owned();
    }
    if args.print_config {
        // A setting the node would refuse is said, as the node would say it.
        config.check()?;
        write!(std::io::stdout(), "{}", config.to_toml()?).map_err(stdout_error)?;
        return Ok(());
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                // libp2p-kad's behaviour warns only that its periodic walk found no peer (a
                // node alone, as the first command of the README runs it, twice at each
                // start) and of its own record replication, which dkvs does not use.
                .unwrap_or_else(|_| {
                    tracing_subscriber::EnvFilter::new("info,libp2p_kad::behaviour=error")
                }),
        )
        .with_writer(std::io::stderr)
        // Colour only for a person at a terminal: a log file or pipe gets plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let has_accounts = !home.keystore()?.list()?.is_empty();
    // With no account yet, the node asks for nothing; it takes DKVS_PASSPHRASE if set, so
    // that accounts made later with it unlock without a restart.
    let passphrase = if has_accounts {
        passphrase(false)?
    } else {
        Zeroizing::new(std::env::var("DKVS_PASSPHRASE").unwrap_or_default())
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(dkvs_node::run::run(home, config, passphrase))
}

/// The API to talk to and the token to send it. The home's token goes only to the home's node:
/// with `--api` naming another node, the token must come from `DKVS_TOKEN`, so that a mistyped
/// or planted URL never receives the token of the node running from this home.
fn credentials(
    api: Option<&str>,
    home_api: anyhow::Result<(String, String)>,
    env_token: Option<String>,
) -> anyhow::Result<(String, String)> {
    // `--api 127.0.0.1:4041` (as `dkvs node --api` takes it) names the same node as
    // `http://127.0.0.1:4041/`; any other difference (a name, a port, a path) is another node.
    let norm = |url: &str| {
        let url = url.trim_end_matches('/').to_ascii_lowercase();
        if url.contains("://") { url } else { format!("http://{url}") }
    };
    let same = |a: &str, b: &str| norm(a) == norm(b);
    // An address as a node prints its API: http, a host and a port (no user, no path).
    if let Some(url) = api {
        let parsed = norm(url).parse::<axum::http::Uri>();
        let usable = parsed.as_ref().is_ok_and(|uri| {
            uri.scheme_str() == Some("http")
                && uri.port().is_some()
                && uri.authority().is_some_and(|a| !a.as_str().contains('@'))
                && uri.path().trim_matches('/').is_empty()
                && uri.query().is_none()
        });
        if !usable {
            anyhow::bail!(
                "--api {url:?} is not an API address: give it as `dkvs node` printed it, \
                 e.g. http://127.0.0.1:4041"
            );
        }
    }
    match (api, home_api) {
        (Some(url), Ok((home_url, token))) if same(url, &home_url) => Ok((home_url, token)),
        (Some(url), _) => {
            let token = env_token.context(
                "with --api naming a node other than this home's, set DKVS_TOKEN to that node's \
                 token (this home's token is sent only to this home's node)",
            )?;
            let url = url.trim_end_matches('/');
            let url = if url.contains("://") { url.to_owned() } else { format!("http://{url}") };
            Ok((url, token))
        }
        (None, home_api) => home_api,
    }
}

fn client(home: &Home, api: Option<&str>, command: &Command) -> anyhow::Result<Client> {
    let home_api = home.read_api().map(|info| (info.url, info.token));
    let (url, token) = credentials(api, home_api, std::env::var("DKVS_TOKEN").ok())?;
    // A watch waits as long as it is told to; everything else gets an answer within a minute.
    let timeout = match command {
        Command::Watch { .. } | Command::Mail(MailCommand::Watch { .. }) => None,
        Command::Channel(ChannelCommand::Subscribe { .. }) => None,
        Command::Mail(MailCommand::Read { wait: Some(_), .. }) => None,
        // A file takes as long as it takes; a get gives up on a block by itself.
        Command::Ipfs(
            IpfsCommand::Add { .. } | IpfsCommand::Get { .. } | IpfsCommand::Pin { .. },
        ) => None,
        _ => Some(Duration::from_secs(60)),
    };
    Ok(Client::new(&url, &token, timeout))
}

/// The API path of `key` under `route`. A key with no name (`/`) is refused here, as no route
/// serves it.
fn key_path(route: &str, key: &str) -> anyhow::Result<String> {
    if key.trim_start_matches('/').is_empty() {
        anyhow::bail!(
            "the key {key:?} has no name: a key is /name, or /~/name in your account's scope"
        );
    }
    Ok(format!("{route}/{}", encode_key(key)))
}

fn with_account(path: String, account: &Option<String>, extra: &[(&str, String)]) -> String {
    let mut params: Vec<String> =
        extra.iter().map(|(k, v)| format!("{k}={}", encode_key(v))).collect();
    if let Some(account) = account {
        params.push(format!("account={}", encode_key(account)));
    }
    if params.is_empty() { path } else { format!("{path}?{}", params.join("&")) }
}

fn client_command(client: &Client, command: Command) -> anyhow::Result<()> {
    match command {
        Command::Put { key, value, file, ttl, expect_seq, account, keep, handover } => {
            let bytes = input(value, file)?;
            // Said here: a body far over the limit is cut off by the node's API, which a
            // client sees as a connection reset, not as the reason.
            if bytes.len() > dkvs_record::MAX_VALUE_LEN {
                return Err(dkvs_record::ValidateError::ValueTooLarge { len: bytes.len() }.into());
            }
            let mut extra = Vec::new();
            if let Some(ttl) = ttl {
                extra.push(("ttl", ttl));
            }
            if let Some(n) = expect_seq {
                extra.push(("expect_seq", n.to_string()));
            }
            if keep {
                extra.push(("keep", "true".to_owned()));
            }
            if let Some(token) = handover {
                extra.push(("handover", token));
            }
            let path = with_account(key_path("/v1/kv", &key)?, &account, &extra);
            let receipt = client.put_bytes(&path, &bytes)?;
            outln!(
                "{} seq {} {}",
                receipt["key"].as_str().unwrap_or(&key),
                receipt["seq"],
                stored_by(&receipt)
            );
            if let Some(refusal) = receipt["local_refusal"].as_object() {
                eprintln!(
                    "note: this node did not keep a copy ({}); the replicas hold it",
                    refusal.get("message").and_then(|m| m.as_str()).unwrap_or("refused")
                );
            }
            if receipt["kept"] == true {
                let as_account = account.as_ref().map(|a| format!(" --as {a}")).unwrap_or_default();
                outln!("kept alive by this node (`dkvs keep stop {key}{as_account}` to stop)");
            }
        }
        Command::Keep(KeepCommand::List) => {
            let list = client.get_json("/v1/keep")?;
            let kept = list["kept"].as_array().cloned().unwrap_or_default();
            if kept.is_empty() {
                outln!("this node keeps no record alive");
            }
            for k in kept {
                outln!(
                    "{}  as {}  ttl {}s",
                    k["key"].as_str().unwrap_or("?"),
                    k["account"].as_str().unwrap_or("?"),
                    k["ttl_secs"]
                );
            }
        }
        Command::Keep(KeepCommand::Stop { key, account }) => {
            let path = with_account(key_path("/v1/keep", &key)?, &account, &[]);
            let answer = client.delete(&path)?;
            outln!("{}: no longer kept alive", answer["key"].as_str().unwrap_or(&key));
        }
        Command::Get { key, local, json, account } => {
            let extra = if local { vec![("local", "true".to_owned())] } else { vec![] };
            let path = with_account(key_path("/v1/kv", &key)?, &account, &extra);
            let mut out = std::io::stdout().lock();
            if json {
                let record = client.get_json(&path)?;
                writeln!(out, "{}", terminal_json(&serde_json::to_string_pretty(&record)?))
                    .map_err(stdout_error)?;
            } else {
                let (bytes, source) = client.get_bytes(&path)?;
                if source == "alone" {
                    eprintln!("{ALONE}: this value is its own copy");
                }
                out.write_all(&bytes).map_err(stdout_error)?;
            }
            out.flush().map_err(stdout_error)?;
        }
        Command::Delete { key, account } => {
            let path = with_account(key_path("/v1/kv", &key)?, &account, &[]);
            let receipt = client.delete(&path)?;
            outln!(
                "deleted {} at seq {}, {}",
                receipt["key"].as_str().unwrap_or(&key),
                receipt["seq"],
                stored_by(&receipt)
            );
        }
        Command::Handover { key, to, account } => {
            let extra = [("to", to.clone())];
            let path = with_account(key_path("/v1/handover", &key)?, &account, &extra);
            let answer = client.post_bytes(&path, &[])?;
            let token = answer["handover"].as_str().unwrap_or_default();
            outln!("{token}");
            eprintln!(
                "note: give this to {to}; it takes {} over with `dkvs put {} VALUE --handover \
                 {token}` (good for sequence {} only)",
                answer["key"].as_str().unwrap_or(&key),
                answer["key"].as_str().unwrap_or(&key),
                answer["seq"]
            );
        }
        Command::Watch { key, current, account } => {
            let extra = if current { vec![("current", "true".to_owned())] } else { Vec::new() };
            let path = with_account(key_path("/v1/watch", &key)?, &account, &extra);
            // The stream opens once the watch's first read answered, and this note says so:
            // a version written after it is printed (the newest of a quick burst at least).
            let opened = |headers: &ureq::http::HeaderMap| {
                if let Some(start) = headers.get("dkvs-start-seq").and_then(|v| v.to_str().ok()) {
                    let note = if current && start != "0" {
                        format!("note: watching from version {start}")
                    } else {
                        format!("note: watching for versions after {start}")
                    };
                    let _ = writeln!(std::io::stderr(), "{note}");
                }
            };
            client.stream_lines(&path, opened, |line| {
                let mut out = std::io::stdout().lock();
                writeln!(out, "{}", terminal_json(line)).map_err(stdout_error)?;
                out.flush().map_err(stdout_error)?;
                Ok(())
            })?;
        }
        Command::Mail(MailCommand::Send { account_id, message, file, ttl, account }) => {
            let bytes = input(message, file)?;
            // Said here, as for a put: the node cuts a body far over the limit off unread.
            if bytes.len() > dkvs_mail::MAX_BODY {
                anyhow::bail!(
                    "the letter's body is {} bytes; a letter's body is at most {} bytes",
                    bytes.len(),
                    dkvs_mail::MAX_BODY
                );
            }
            let extra: Vec<(&str, String)> = ttl.into_iter().map(|t| ("ttl", t)).collect();
            let path =
                with_account(format!("/v1/mail/{}", encode_segment(&account_id)), &account, &extra);
            let receipt = client.post_bytes(&path, &bytes)?;
            let kept_by = receipt["kept_by"].as_u64().unwrap_or(0);
            outln!(
                "sent {}: kept by {kept_by} replica{}",
                receipt["id"].as_str().unwrap_or("?"),
                if kept_by == 1 { "" } else { "s" }
            );
            if receipt["alone"] == true {
                eprintln!("note: {ALONE}: only this node keeps the letter");
            }
            if receipt["unanswered"] == true {
                eprintln!(
                    "note: no other replica answered (this node's peers did not: stopped, or \
                     unreachable); only this node keeps the letter, and hands it to the \
                     mailbox's replicas once they answer (it tries every 10 minutes)"
                );
            }
            for c in receipt["custody"].as_array().into_iter().flatten() {
                outln!(
                    "  kept by {} until {}",
                    c["replica"].as_str().unwrap_or("?"),
                    time_of(&c["kept_until_ms"])
                );
            }
            for r in ["refused", "failed"]
                .iter()
                .flat_map(|k| receipt[*k].as_array().into_iter().flatten())
            {
                outln!(
                    "  not by {}: {}",
                    r["replica"].as_str().unwrap_or("?"),
                    r["reason"].as_str().unwrap_or("?")
                );
            }
        }
        Command::Mail(MailCommand::Read { wait, json, account }) => {
            let mut extra: Vec<(&str, String)> = wait.into_iter().map(|w| ("wait", w)).collect();
            // Answer after answer while the node says more letters wait (it bounds each
            // answer); one answer with --json, whose "more" says so. Bounded too: a mailbox
            // that strangers keep filling does not keep the command reading.
            for round in 1.. {
                let path = with_account("/v1/inbox".to_owned(), &account, &extra);
                let answer = client.post_bytes(&path, &[])?;
                extra.clear();
                print_letters(&answer, json, round == 1)?;
                report_refused(&answer);
                // Printed: now they are read.
                acknowledge(client, &answer)?;
                let more = answer["more"].as_u64().unwrap_or(0);
                if json || more == 0 {
                    break;
                }
                if round == MAIL_READ_ROUNDS {
                    eprintln!("dkvs: {more} more letters wait; run `dkvs mail read` again");
                    break;
                }
            }
        }
        Command::Mail(MailCommand::Status { message_id, account }) => {
            let path = with_account(
                format!("/v1/mail/{}/status", encode_segment(&message_id)),
                &account,
                &[],
            );
            let status = client.get_json(&path)?;
            let kept_by = status["kept_by"].as_array().map_or(0, Vec::len);
            outln!("{} to {}", message_id, status["to"].as_str().unwrap_or("?"));
            outln!("sent at {}, kept by {kept_by} replicas", time_of(&status["sent_at_ms"]));
            if status["read"] == true {
                outln!("read at {}", time_of(&status["read_at_ms"]));
            } else {
                outln!("not read yet");
            }
        }
        Command::Mail(MailCommand::Watch { account }) => loop {
            let extra = [("wait", "1h".to_owned())];
            let path = with_account("/v1/inbox".to_owned(), &account, &extra);
            let answer = match client.post_bytes(&path, &[]) {
                Ok(answer) => answer,
                // No replica answered for now (a network coming up, a node restarting):
                // said, and tried again.
                Err(ClientError::Api { status: 429 | 503, message, .. }) => {
                    eprintln!("dkvs: {message}; trying again in 10 s");
                    std::thread::sleep(Duration::from_secs(10));
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            let mut out = std::io::stdout().lock();
            for letter in answer["letters"].as_array().into_iter().flatten() {
                writeln!(out, "{}", terminal_json(&letter.to_string())).map_err(stdout_error)?;
            }
            out.flush().map_err(stdout_error)?;
            drop(out);
            report_refused(&answer);
            acknowledge(client, &answer)?;
        },
        Command::Channel(ChannelCommand::Publish { name, message, file, account }) => {
            let bytes = input(message, file)?;
            if bytes.len() > dkvs_mail::channel::MAX_POST_BODY {
                return Err(dkvs_mail::ChannelError::TooLarge(bytes.len()).into());
            }
            let path =
                with_account(format!("/v1/channels/{}", encode_segment(&name)), &account, &[]);
            let post = client.post_bytes(&path, &bytes)?;
            outln!(
                "published {} on {name} to {} peers",
                post["id"].as_str().unwrap_or("?"),
                post["peers"]
            );
            if post["peers"] == 0 {
                eprintln!(
                    "note: nobody else is on {name} yet; the post is kept here for those who join"
                );
            }
        }
        Command::Channel(ChannelCommand::Subscribe { name, history, announce, account }) => {
            let mut extra = Vec::new();
            if history {
                extra.push(("history", "true".to_owned()));
            }
            if announce {
                extra.push(("announce", "true".to_owned()));
            }
            let path =
                with_account(format!("/v1/channels/{}", encode_segment(&name)), &account, &extra);
            client.stream_lines(
                &path,
                |_| {},
                |line| {
                    let mut out = std::io::stdout().lock();
                    writeln!(out, "{}", terminal_json(line)).map_err(stdout_error)?;
                    out.flush().map_err(stdout_error)?;
                    Ok(())
                },
            )?;
        }
        Command::Channel(ChannelCommand::Members { name }) => {
            let answer =
                client.get_json(&format!("/v1/channels/{}/members", encode_segment(&name)))?;
            let members = answer["members"].as_array().cloned().unwrap_or_default();
            if members.is_empty() {
                eprintln!("dkvs: nobody announced themselves in {name} in the last five minutes");
            }
            for m in members {
                outln!("{}", m["account"].as_str().unwrap_or("?"));
            }
        }
        Command::Ipfs(command) => ipfs_command(client, command)?,
        Command::Peers { addresses: false } => {
            for peer in client.get_json("/v1/peers")?.as_array().into_iter().flatten() {
                outln!("{}", peer.as_str().unwrap_or_default());
            }
        }
        Command::Peers { addresses: true } => {
            for c in client.get_json("/v1/connections")?.as_array().into_iter().flatten() {
                let how = if c["relayed"].as_bool() == Some(true) { "relayed" } else { "direct" };
                let (peer, addr) = (c["peer"].as_str(), c["address"].as_str());
                outln!("{} {} {how}", peer.unwrap_or("?"), addr.unwrap_or("?"));
            }
        }
        Command::Status => {
            outln!(
                "{}",
                terminal_json(&serde_json::to_string_pretty(&client.get_json("/v1/status")?)?)
            );
        }
        Command::Account(_) | Command::Node(_) => unreachable!("handled before a client is made"),
    }
    Ok(())
}

/// A progress bar on standard error when it is a terminal (hidden otherwise).
fn progress(len: Option<u64>) -> indicatif::ProgressBar {
    if !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        return indicatif::ProgressBar::hidden();
    }
    match len {
        Some(len) => indicatif::ProgressBar::new(len).with_style(bar_style()),
        None => indicatif::ProgressBar::new_spinner().with_style(
            indicatif::ProgressStyle::with_template("{spinner} {bytes} {bytes_per_sec}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
        ),
    }
}

/// The style of a progress bar whose end is known.
fn bar_style() -> indicatif::ProgressStyle {
    indicatif::ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {bytes_per_sec} {eta}")
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
}

/// Where `ipfs get -o` writes.
enum Output {
    /// A regular file, new or not (a link to one: the file it names): made whole under a
    /// temporary name beside it, then renamed over it; an existing file's permissions are
    /// kept, a new one's follow the umask.
    File { path: std::path::PathBuf, mode: Option<std::fs::Permissions> },
    /// Anything else that exists (a pipe, a terminal, `/dev/null`), and an open file named
    /// by its descriptor (`/dev/fd/3`, `/proc/<pid>/fd/3`): written into as it comes
    /// (appended to), never replaced.
    Special(std::path::PathBuf),
    /// This process's standard output (`-`, `/dev/stdout`, any name of what it is open on):
    /// written into as it is open (a file it was redirected to, `>> log`, is appended to, not
    /// replaced nor reopened).
    Stdout,
}

impl Output {
    /// Where `-o file` writes.
    fn of(file: &std::path::Path) -> anyhow::Result<Output> {
        let named = || format!("cannot write {}", file.display());
        if file == std::path::Path::new("-") {
            return Ok(Output::Stdout);
        }
        let parts: Vec<&str> =
            file.components().map(|c| c.as_os_str().to_str().unwrap_or("\u{0}")).collect();
        let by_descriptor = matches!(parts[..], ["/", "dev", "fd", _] | ["/", "proc", _, "fd", _]);
        match std::fs::metadata(file) {
            // `/dev/stdout`, `/dev/fd/1`, a link to the file it was redirected to.
            Ok(meta) if is_stdout(&meta) => Ok(Output::Stdout),
            Ok(_) if by_descriptor => Ok(Output::Special(file.to_owned())),
            Ok(meta) if meta.is_dir() => anyhow::bail!("{} is a directory", file.display()),
            Ok(meta) if meta.is_file() => Ok(Output::File {
                path: std::fs::canonicalize(file).with_context(named)?,
                mode: Some(meta.permissions()),
            }),
            Ok(_) => Ok(Output::Special(file.to_owned())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if file.symlink_metadata().is_ok() {
                    anyhow::bail!("{} is a link to a path that does not exist", file.display());
                }
                Ok(Output::File { path: file.to_owned(), mode: None })
            }
            Err(e) => Err(e).with_context(named),
        }
    }

    /// Writes what `fill` writes.
    fn write(
        self,
        fill: impl FnOnce(&mut dyn std::io::Write) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        use std::io::Write as _;
        use std::os::unix::fs::PermissionsExt as _;
        match self {
            // A reader that went away ends the command quietly (`| head`); a pipe's that is
            // named (`-o fifo`) is an output cut short.
            Output::Stdout => {
                let mut out = std::io::stdout().lock();
                fill(&mut out).map_err(|e| match e.downcast::<std::io::Error>() {
                    Ok(e) => stdout_error(e),
                    Err(e) => e,
                })?;
                out.flush().map_err(stdout_error)
            }
            Output::Special(path) => {
                let file = std::fs::OpenOptions::new()
                    .append(true)
                    .open(&path)
                    .with_context(|| format!("cannot write {}", path.display()))?;
                let mut out = std::io::BufWriter::new(file);
                fill(&mut out)?;
                out.flush().with_context(|| format!("cannot write {}", path.display()))
            }
            Output::File { path, mode } => {
                let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
                // Written readable by its owner only (a decrypted file is private while it
                // arrives); then given the permissions of the file it replaces, or of any new
                // file (0666 less the umask).
                let mut tmp = tempfile::Builder::new()
                    .permissions(std::fs::Permissions::from_mode(0o600))
                    .tempfile_in(dir.unwrap_or(std::path::Path::new(".")))
                    .with_context(|| format!("cannot write beside {}", path.display()))?;
                {
                    let mut out = std::io::BufWriter::new(tmp.as_file_mut());
                    fill(&mut out)?;
                    out.flush()?;
                }
                let mode =
                    mode.unwrap_or_else(|| std::fs::Permissions::from_mode(0o666 & !umask()));
                tmp.as_file().set_permissions(mode)?;
                tmp.persist(&path).with_context(|| format!("cannot write {}", path.display()))?;
                Ok(())
            }
        }
    }
}

/// Whether `meta` is of what this process's standard output is open on.
fn is_stdout(meta: &std::fs::Metadata) -> bool {
    use std::os::fd::AsFd as _;
    use std::os::unix::fs::MetadataExt as _;
    let stdout = std::io::stdout().as_fd().try_clone_to_owned().map(std::fs::File::from);
    stdout
        .and_then(|out| out.metadata())
        .is_ok_and(|out| out.dev() == meta.dev() && out.ino() == meta.ino())
}

/// This process's umask (`/proc/self/status`; 077, the most private, where it cannot be
/// read).
fn umask() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let line = status.lines().find_map(|l| l.strip_prefix("Umask:"))?;
            u32::from_str_radix(line.trim(), 8).ok()
        })
        .unwrap_or(0o077)
}

/// One entry of a directory being added: its path under the directory (`/` between names),
/// and for a file, its size and which file it was (device and inode: one put in its place
/// since is another).
struct Entry {
    path: String,
    file: Option<Listed>,
}

/// A file as it was listed ([`Entry`]).
struct Listed {
    len: u64,
    id: (u64, u64),
}

/// What a directory being added holds so far: its entries, and how many files and
/// directories (below it) they are.
#[derive(Default)]
struct Tree {
    entries: Vec<Entry>,
    files: u64,
    dirs: usize,
}

/// Why a node would refuse the entry `name` at `under` in a directory holding `tree` already
/// (the limits of `dkvs_ipfs::files`), if it would: said before anything is sent.
fn refusal(tree: &Tree, name: &str, under: &str, is_dir: bool) -> Option<String> {
    use dkvs_ipfs::files::{
        MAX_ARCHIVE_DIRECTORIES, MAX_ARCHIVE_ENTRIES, MAX_ARCHIVE_NAME, MAX_ARCHIVE_PATH,
    };
    if name.len() > MAX_ARCHIVE_NAME {
        return Some(format!("a name over {MAX_ARCHIVE_NAME} bytes"));
    }
    if under.len() > MAX_ARCHIVE_PATH {
        return Some(format!("a path in the directory over {MAX_ARCHIVE_PATH} bytes"));
    }
    // The node counts the root among the directories.
    if is_dir && tree.dirs + 1 >= MAX_ARCHIVE_DIRECTORIES {
        return Some(format!(
            "over {MAX_ARCHIVE_DIRECTORIES} directories, more than a node adds at once"
        ));
    }
    if !is_dir && tree.files >= MAX_ARCHIVE_ENTRIES {
        return Some(format!("over {MAX_ARCHIVE_ENTRIES} files, more than a node adds at once"));
    }
    None
}

/// The entries under `dir`, directories before what they hold, names in order; names that
/// start with `.` only if `hidden`. A link, a device or a name that is not UTF-8 is refused
/// by its path: what is added is what the directory holds, or nothing.
fn entries_of(
    dir: &std::path::Path,
    prefix: &str,
    hidden: bool,
    out: &mut Tree,
) -> anyhow::Result<()> {
    use std::os::unix::fs::MetadataExt as _;
    let cannot = || format!("cannot read {}", dir.display());
    let before = std::fs::symlink_metadata(dir).with_context(cannot)?;
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(cannot)? {
        names.push(entry.with_context(cannot)?.path());
    }
    // The directory listed is the one looked at (not one swapped for a link meanwhile).
    let after = std::fs::symlink_metadata(dir).with_context(cannot)?;
    if !after.is_dir() || (before.dev(), before.ino()) != (after.dev(), after.ino()) {
        anyhow::bail!("{} changed while it was listed", dir.display());
    }
    names.sort();
    for path in names {
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            anyhow::bail!("{}: the name is not UTF-8, which IPFS names are", path.display());
        };
        if name.starts_with('.') && !hidden {
            continue;
        }
        let meta = std::fs::symlink_metadata(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let under = if prefix.is_empty() { name.to_owned() } else { format!("{prefix}/{name}") };
        if let Some(why) = refusal(out, name, &under, meta.is_dir()) {
            anyhow::bail!("{}: {why}", path.display());
        }
        if meta.is_dir() {
            out.entries.push(Entry { path: under.clone(), file: None });
            out.dirs += 1;
            entries_of(&path, &under, hidden, out)?;
        } else if meta.is_file() {
            let id = (meta.dev(), meta.ino());
            out.entries.push(Entry { path: under, file: Some(Listed { len: meta.len(), id }) });
            out.files += 1;
        } else if meta.file_type().is_symlink() {
            anyhow::bail!(
                "{} is a symbolic link: links are not added (add what it names, or move the link \
                 out of the directory)",
                path.display()
            );
        } else {
            anyhow::bail!("{} is not a regular file nor a directory", path.display());
        }
    }
    Ok(())
}

/// Adds the directory `dir` through `path` (`/v1/ipfs/add?plain=true&directory=true`): its
/// entries as one tar stream, written as the node reads it. A file that cannot be read, or
/// that changed size meanwhile, cuts the stream, and the node keeps nothing of it.
fn add_directory(
    client: &Client,
    path: &str,
    dir: &std::path::Path,
    hidden: bool,
) -> anyhow::Result<serde_json::Value> {
    // The directory named, through a link if it is one; links below it are refused.
    let dir = dir.canonicalize().with_context(|| format!("cannot read {}", dir.display()))?;
    let mut tree = Tree::default();
    entries_of(&dir, "", hidden, &mut tree)?;
    let entries = tree.entries;
    let total = entries.iter().filter_map(|e| e.file.as_ref().map(|f| f.len)).sum();
    let bar = progress(Some(total));
    let (reader, writer) = std::io::pipe().context("a pipe to the node")?;
    let writing = {
        let (bar, dir) = (bar.clone(), dir.clone());
        std::thread::spawn(move || write_archive(writer, &dir, entries, &bar))
    };
    let answer = client.post_reader(path, reader);
    bar.finish_and_clear();
    // What failed here says more than the node's "cut short"; a pipe the node stopped
    // reading says less than the node's answer.
    match writing.join() {
        Ok(Err(e)) if !e.chain().any(is_broken_pipe) => return Err(e),
        Ok(_) => {}
        Err(_) => anyhow::bail!("the archive's writer panicked"),
    }
    let what = Upload { name: dir.display().to_string(), noun: "the directory" };
    answer.map_err(|e| upload_failed(client, e, &what, None))
}

/// Writes `entries` as a tar archive into `out`. When anything fails (a file that cannot be
/// read or that changed, a panic), `out` is dropped before tar's builder is, which would end
/// the archive: the node sees it cut short, and keeps nothing of it.
fn write_archive<W: std::io::Write>(
    out: W,
    root: &std::path::Path,
    entries: Vec<Entry>,
    bar: &indicatif::ProgressBar,
) -> anyhow::Result<()> {
    let mut archive = tar::Builder::new(Cut(Some(out)));
    let written = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        write_entries(&mut archive, root, entries, bar)
    }));
    match written {
        Ok(Ok(())) => {
            archive.into_inner()?;
            Ok(())
        }
        Ok(Err(e)) => {
            archive.get_mut().0 = None;
            Err(e)
        }
        Err(_) => {
            archive.get_mut().0 = None;
            anyhow::bail!("writing the archive failed (a panic)")
        }
    }
}

/// A writer that can be closed under tar's builder.
struct Cut<W>(Option<W>);

impl<W: std::io::Write> std::io::Write for Cut<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match &mut self.0 {
            Some(out) => out.write(buf),
            None => Err(std::io::ErrorKind::BrokenPipe.into()),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.as_mut().map_or(Ok(()), std::io::Write::flush)
    }
}

/// Writes `entries` into `archive`, each file's bytes counted on `bar`. A file is opened
/// below `root` through no link at all (one put in its place, or a directory on its way
/// swapped for one, since it was listed is refused; a kernel older than openat2, 5.6, only
/// refuses a link in its own place), without waiting on a FIFO, and must still be the file
/// listed: a regular file of the same device, inode and size, to its end.
fn write_entries<W: std::io::Write>(
    archive: &mut tar::Builder<Cut<W>>,
    root: &std::path::Path,
    entries: Vec<Entry>,
    bar: &indicatif::ProgressBar,
) -> anyhow::Result<()> {
    use rustix::fs::{Mode, OFlags, ResolveFlags};
    use std::os::unix::fs::MetadataExt as _;
    let below =
        rustix::fs::open(root, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
            .map_err(std::io::Error::from)
            .with_context(|| format!("cannot read {}", root.display()))?;
    for entry in entries {
        let mut header = tar::Header::new_gnu();
        let Some(Listed { len, id }) = entry.file else {
            header.set_entry_type(tar::EntryType::Directory);
            header.set_mode(0o755);
            header.set_size(0);
            archive.append_data(&mut header, &entry.path, std::io::empty())?;
            continue;
        };
        let file = root.join(&entry.path);
        let cannot = || format!("cannot read {}", file.display());
        let flags =
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC;
        let resolve = ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS;
        let opened = match rustix::fs::openat2(&below, &entry.path, flags, Mode::empty(), resolve) {
            Err(rustix::io::Errno::NOSYS) => {
                rustix::fs::openat(&below, &entry.path, flags, Mode::empty())
            }
            opened => opened,
        };
        let mut source =
            opened.map(std::fs::File::from).map_err(std::io::Error::from).with_context(cannot)?;
        let meta = source.metadata().with_context(cannot)?;
        if !meta.is_file() || meta.len() != len || (meta.dev(), meta.ino()) != id {
            anyhow::bail!("{} changed while it was added", file.display());
        }
        // A regular file: read as files are (O_NONBLOCK was for a FIFO in its place).
        rustix::fs::fcntl_setfl(&source, OFlags::empty())
            .map_err(std::io::Error::from)
            .with_context(cannot)?;
        header.set_entry_type(tar::EntryType::Regular);
        header.set_mode(0o644);
        header.set_size(len);
        let mut counted = CountedRead { inner: bar.wrap_read(&mut source).take(len), read: 0 };
        archive.append_data(&mut header, &entry.path, &mut counted).with_context(cannot)?;
        let mut more = [0u8; 1];
        if counted.read != len || source.read(&mut more).with_context(cannot)? != 0 {
            anyhow::bail!("{} changed size while it was added", file.display());
        }
    }
    Ok(())
}

/// Whether `e` is a write to a pipe whose reader left (the node answered before the end).
fn is_broken_pipe(e: &(dyn std::error::Error + 'static)) -> bool {
    e.downcast_ref::<std::io::Error>().is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
}

/// What `dkvs ipfs add` says when its upload of `what` (`len` bytes, when known) failed: a
/// source that could not be read is named. A broken connection is a node that stopped reading
/// (it closes the connection rather than read the rest of an upload it refused, and kept
/// nothing of it) when the node still answers: it is asked how full its block store is, the
/// likely reason. Otherwise the node went away.
fn upload_failed(
    client: &Client,
    e: ClientError,
    what: &Upload,
    len: Option<u64>,
) -> anyhow::Error {
    let ClientError::StoppedReading { url, sent } = e else {
        return match e {
            ClientError::Source(e) => anyhow::anyhow!("cannot read {}: {e}", what.name),
            e => e.into(),
        };
    };
    let stat = client.with_timeout(Some(Duration::from_secs(10))).get_json("/v1/ipfs/stat");
    let stat = match stat {
        Ok(stat) => stat,
        Err(gone) => {
            return anyhow::anyhow!(
                "the connection to the node at {url} broke during the upload (the command had \
                 read {sent} bytes), and then: {gone}; if the node went away, blocks it kept \
                 of {} are pinned by nothing, and `dkvs ipfs gc` removes them",
                what.noun
            );
        }
    };
    let (held, most) = (stat["bytes"].as_u64().unwrap_or(0), stat["max_bytes"].as_u64());
    let advice = match (len, most) {
        (Some(len), Some(most)) if len > most => format!(
            "{} is {len} bytes, more than the store holds: raise ipfs_max_bytes to add it",
            what.noun
        ),
        _ => format!(
            "if {} does not fit, unpin files and collect garbage (dkvs ipfs unpin, dkvs ipfs \
             gc), or raise ipfs_max_bytes",
            what.noun
        ),
    };
    anyhow::anyhow!(
        "the node at {url} stopped reading the upload (the command had read {sent} bytes of it): \
         an add that fails keeps nothing, and the node's log says why. Its block store holds \
         {held} of at most {} bytes (ipfs_max_bytes): {advice}",
        stat["max_bytes"]
    )
}

/// What an upload is, for [`upload_failed`]'s words.
struct Upload {
    /// Its name, for a read error ("standard input", a path).
    name: String,
    /// What it is, in a sentence ("the file", "the directory").
    noun: &'static str,
}

impl Upload {
    fn file(name: impl std::fmt::Display) -> Upload {
        Upload { name: name.to_string(), noun: "the file" }
    }
}

/// A reader that counts what it gave.
struct CountedRead<R> {
    inner: R,
    read: u64,
}

impl<R: std::io::Read> std::io::Read for CountedRead<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        Ok(n)
    }
}

fn ipfs_command(client: &Client, command: IpfsCommand) -> anyhow::Result<()> {
    match command {
        IpfsCommand::Add { file, plain, hidden, account, .. } => {
            let mut extra = if plain { vec![("plain", "true".to_owned())] } else { Vec::new() };
            let is_dir =
                file.as_os_str() != "-" && std::fs::metadata(&file).is_ok_and(|m| m.is_dir());
            if is_dir {
                if !plain {
                    anyhow::bail!(
                        "{} is a directory: a directory is added only as public content (its \
                         names and layout are readable to anyone with its CID): add it with \
                         --plain, or pack it into one file (tar) to add it encrypted",
                        file.display()
                    );
                }
                extra.push(("directory", "true".to_owned()));
                let path = with_account("/v1/ipfs/add".to_owned(), &account, &extra);
                let answer = add_directory(client, &path, &file, hidden)?;
                eprintln!(
                    "added {} files in {} directories",
                    answer["files"], answer["directories"]
                );
                outln!("{}", answer["cid"].as_str().unwrap_or("?"));
                return Ok(());
            }
            let path = with_account("/v1/ipfs/add".to_owned(), &account, &extra);
            let answer = if file.as_os_str() == "-" {
                client
                    .post_reader(&path, std::io::stdin())
                    .map_err(|e| upload_failed(client, e, &Upload::file("standard input"), None))?
            } else {
                use std::os::unix::fs::FileTypeExt as _;
                let cannot = || format!("cannot read {}", file.display());
                let source = std::fs::File::open(&file).with_context(cannot)?;
                let kind = source.metadata().with_context(cannot)?.file_type();
                // A pipe (`/dev/stdin` on a pipeline, `<(command)`) or a terminal is read until
                // it ends, as standard input is. Other devices are no file to add: a disk, or
                // /dev/zero and /dev/urandom, which never end (zeros make one block over and
                // over, which no store limit stops).
                let terminal = std::io::IsTerminal::is_terminal(&source);
                if kind.is_char_device() && !terminal || kind.is_block_device() {
                    anyhow::bail!(
                        "{} is a device, not a file: add what it gives through a pipe (`head \
                         -c 1M {} | dkvs ipfs add -`)",
                        file.display(),
                        file.display()
                    );
                }
                if !kind.is_file() && !kind.is_fifo() && !terminal {
                    anyhow::bail!("{} is not a file, a pipe nor a directory", file.display());
                }
                if terminal {
                    eprintln!("reading from the terminal; end with Ctrl-D");
                }
                // A file's size is said (`size`): the node refuses at once one it can never
                // keep. The file is still read to its end, whatever its size then (a file
                // of /proc says 0).
                let len = kind.is_file().then(|| source.metadata().map(|m| m.len()));
                let len = len.transpose().with_context(cannot)?;
                if let Some(len) = len {
                    extra.push(("size", len.to_string()));
                }
                let path = with_account("/v1/ipfs/add".to_owned(), &account, &extra);
                let bar = progress(len);
                let answer = client.post_reader(&path, bar.wrap_read(source));
                bar.finish_and_clear();
                answer.map_err(|e| upload_failed(client, e, &Upload::file(file.display()), len))?
            };
            outln!("{}", answer["cid"].as_str().unwrap_or("?"));
        }
        IpfsCommand::Get { cid, output, raw, account, timeout } => {
            let mut extra = if raw { vec![("raw", "true".to_owned())] } else { Vec::new() };
            if let Some(secs) = timeout {
                extra.push(("timeout", secs.to_string()));
            }
            // A CID, or a path in a directory (`<cid>/site/index.html`; `/ipfs/<cid>/...` and
            // `ipfs://<cid>/...` as others write it).
            let target = cid.trim_start_matches("ipfs://").trim_start_matches("/ipfs/");
            let path =
                with_account(format!("/v1/ipfs/get/{}", encode_key(target)), &account, &extra);
            let bar = progress(None);
            let output = output.map(|file| Output::of(&file)).transpose()?;
            output.unwrap_or(Output::Stdout).write(|out| {
                // The node says the file's size first: the bar shows how far it is.
                let sized = |len| {
                    if !bar.is_hidden() {
                        bar.set_length(len);
                        bar.set_style(bar_style());
                    }
                };
                client.get_into(&path, &mut bar.wrap_write(out), &sized, anyhow::Error::from)?;
                Ok(())
            })?;
            bar.finish_and_clear();
        }
        IpfsCommand::Share { cid, account_id, account } => {
            let path = with_account(
                format!("/v1/ipfs/share/{}/{}", encode_segment(&cid), encode_segment(&account_id)),
                &account,
                &[],
            );
            let answer = client.post_bytes(&path, &[])?;
            outln!(
                "shared {cid} with {account_id} (record {})",
                answer["key"].as_str().unwrap_or("?")
            );
        }
        IpfsCommand::Connect { multiaddr } => {
            let body = serde_json::to_vec(&serde_json::json!({ "addr": multiaddr }))?;
            let answer = client.post_json("/v1/ipfs/connect", &body)?;
            outln!("connected to {}", answer["peer"].as_str().unwrap_or("?"));
        }
        IpfsCommand::Peers => {
            let answer = client.get_json("/v1/ipfs/peers")?;
            for peer in answer["peers"].as_array().into_iter().flatten() {
                outln!("{}", peer.as_str().unwrap_or_default());
            }
        }
        IpfsCommand::Pin { cid } => {
            let answer =
                client.put_bytes(&format!("/v1/ipfs/pin/{}", encode_segment(&cid)), &[])?;
            outln!(
                "pinned {} ({} bytes)",
                answer["pinned"].as_str().unwrap_or("?"),
                answer["bytes"]
            );
        }
        IpfsCommand::Unpin { cid } => {
            let answer = client.delete(&format!("/v1/ipfs/pin/{}", encode_segment(&cid)))?;
            outln!("unpinned {}", answer["unpinned"].as_str().unwrap_or("?"));
        }
        IpfsCommand::Gc => {
            let answer = client.post_bytes("/v1/ipfs/gc", &[])?;
            outln!(
                "removed {} blocks ({} bytes); kept {}",
                answer["removed"],
                answer["freed"],
                answer["kept"]
            );
            let missing = answer["missing"].as_array().map_or(&[][..], |m| m.as_slice());
            if let Some(first) = missing.first() {
                eprintln!(
                    "dkvs: {} pinned files have blocks missing or damaged (first: {}): only \
                     blocks cached for reads were removed; pin such a file again to fetch what \
                     is missing (dkvs ipfs pin CID), or unpin it",
                    missing.len(),
                    first.as_str().unwrap_or("?")
                );
            }
        }
        IpfsCommand::Stat => {
            outln!(
                "{}",
                terminal_json(&serde_json::to_string_pretty(&client.get_json("/v1/ipfs/stat")?)?)
            );
        }
    }
    Ok(())
}

/// The most answers one `dkvs mail read` reads (each at most 4 MiB past its first letter).
const MAIL_READ_ROUNDS: usize = 16;

/// Prints the letters of an answer of `POST /v1/inbox`: as JSON, or each under "from <account>
/// at <time>:"; "no new letters" when the `first` answer has none.
fn print_letters(answer: &serde_json::Value, json: bool, first: bool) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{}", terminal_json(&serde_json::to_string_pretty(answer)?))
            .map_err(stdout_error)?;
    } else {
        for letter in answer["letters"].as_array().into_iter().flatten() {
            let body = match letter["body"].as_str() {
                Some(text) => letter_text(text),
                None => format!(
                    "  (not text; base64:) {}",
                    letter["body_base64"].as_str().unwrap_or_default()
                ),
            };
            writeln!(
                out,
                "from {} at {}:\n{body}\n",
                letter["sender"].as_str().unwrap_or("?"),
                time_of(&letter["sent_at_ms"])
            )
            .map_err(stdout_error)?;
        }
    }
    out.flush().map_err(stdout_error)?;
    if !json && first && answer["letters"].as_array().is_none_or(Vec::is_empty) {
        eprintln!("dkvs: no new letters");
    }
    Ok(())
}

/// Acknowledges the letters of a read (`POST /v1/inbox`), once they are printed.
fn acknowledge(client: &Client, answer: &serde_json::Value) -> anyhow::Result<()> {
    if let Some(token) = answer["ack"].as_str() {
        let acked = client.post_bytes(&format!("/v1/inbox/ack/{}", encode_segment(token)), &[])?;
        for r in acked["failed"].as_array().into_iter().flatten() {
            eprintln!(
                "dkvs: replica {} keeps its copies for now ({}); they are not shown again",
                r["replica"].as_str().unwrap_or("?"),
                r["reason"].as_str().unwrap_or("?")
            );
        }
    }
    Ok(())
}

/// Tells of letters that did not open, and of a clock the replicas said is off.
fn report_refused(answer: &serde_json::Value) {
    if let Some(clock) = answer["clock"].as_str() {
        eprintln!("dkvs: {clock}");
    }
    for r in answer["refused"].as_array().into_iter().flatten() {
        eprintln!(
            "dkvs: refused a letter from replica {}: {}",
            r["replica"].as_str().unwrap_or("?"),
            r["reason"].as_str().unwrap_or("?")
        );
    }
}

/// The bytes a command sends: its argument, the file named, or standard input (no argument,
/// or `-` for either, as for `ipfs add -`: a value of the one byte `-` comes from a file or
/// standard input).
fn input(argument: Option<String>, file: Option<PathBuf>) -> anyhow::Result<Vec<u8>> {
    let stdin =
        argument.as_deref() == Some("-") || file.as_ref().is_some_and(|f| f.as_os_str() == "-");
    match (argument, file) {
        (Some(text), _) if !stdin => Ok(text.into_bytes()),
        (None, Some(file)) if !stdin => {
            std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))
        }
        _ => {
            let mut bytes = Vec::new();
            std::io::stdin().read_to_end(&mut bytes).context("cannot read standard input")?;
            Ok(bytes)
        }
    }
}

/// A time in Unix milliseconds, as RFC 3339 (UTC, to the second).
fn time_of(ms: &serde_json::Value) -> String {
    let ms = ms.as_u64().unwrap_or(0);
    let time = std::time::UNIX_EPOCH + Duration::from_millis(ms);
    humantime::format_rfc3339_seconds(time).to_string()
}

/// What a node with no peers says about a write or a read.
const ALONE: &str = "the node has no peers, so it is a network of one \
                     (start it with --bootstrap <multiaddr> to join a network)";

/// "stored by 3 of 5 replicas", or, on a node with no peers, that only it holds the record.
fn stored_by(receipt: &serde_json::Value) -> String {
    if receipt["alone"].as_bool() == Some(true) {
        format!("stored on this node only: {ALONE}")
    } else {
        format!("stored by {} of {} replicas", receipt["stored"], receipt["replicas"])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_letter_cannot_pass_for_another_nor_drive_the_terminal() {
        let forged = "hi\n\nfrom ed1bank at 2026-12-04 10:00:00 UTC:\npay\u{1b}[2J\r\u{9b}x\ttab";
        assert_eq!(
            letter_text(forged),
            "  hi\n  \n  from ed1bank at 2026-12-04 10:00:00 UTC:\n  pay\\u{1b}[2J\\r\\u{9b}x\ttab"
        );
        assert_eq!(letter_text("plain"), "  plain");
        assert_eq!(letter_text("abc\u{202e}fed"), "  abc\\u{202e}fed");
        assert_eq!(letter_text("\u{61c}1\u{2067}2"), "  \\u{61c}1\\u{2067}2");
    }

    /// A writer whose bytes the test reads after it is dropped.
    #[derive(Clone, Default)]
    struct Shared(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Shared {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("not poisoned").extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn an_archive_whose_writing_fails_is_cut_short_not_ended() {
        use std::os::unix::fs::MetadataExt as _;
        let dir = tempfile::tempdir().expect("tempdir");
        let (root, outside) = (dir.path().join("root"), dir.path().join("outside"));
        std::fs::create_dir_all(root.join("sub")).expect("root");
        std::fs::create_dir_all(&outside).expect("outside");
        std::fs::write(root.join("a"), b"abc").expect("a");
        std::fs::write(root.join("b"), b"grown").expect("b");
        std::fs::write(outside.join("secret"), b"key").expect("secret");
        std::os::unix::fs::symlink(root.join("a"), root.join("l")).expect("a link");
        let made = std::process::Command::new("mkfifo").arg(root.join("fifo")).status();
        assert!(made.expect("mkfifo").success());
        // As listed: `len` bytes, and the file at `listed` (under the root, or elsewhere).
        let file = |path: &str, len, listed: &std::path::Path| {
            let id = std::fs::symlink_metadata(listed).map_or((0, 0), |m| (m.dev(), m.ino()));
            Entry { path: path.to_owned(), file: Some(Listed { len, id }) }
        };
        let a = || file("a", 3, &root.join("a"));
        // `sub` swapped for a link to a directory holding a file of the name listed (its
        // identity listed too: the listing went through the link).
        std::fs::remove_dir(root.join("sub")).expect("sub");
        std::os::unix::fs::symlink(&outside, root.join("sub")).expect("swapped");
        let bar = indicatif::ProgressBar::hidden();
        for (second, why) in [
            (file("gone", 1, &root.join("gone")), "cannot read"),
            (file("b", 3, &root.join("b")), "changed"),
            (file("l", 3, &root.join("a")), "cannot read"),
            (file("sub/secret", 3, &outside.join("secret")), "cannot read"),
            // Not waited on for a writer.
            (file("fifo", 0, &root.join("fifo")), "changed"),
        ] {
            let out = Shared::default();
            let failed = write_archive(out.clone(), &root, vec![a(), second], &bar);
            let said = format!("{:#}", failed.expect_err("refused"));
            assert!(said.contains(why), "{said}");
            // What was written, and no end marker after it.
            let bytes = out.0.lock().expect("not poisoned").clone();
            assert!(bytes.len() >= 1024 && !bytes.ends_with(&[0; 1024]), "{why}: ended");
        }
        let out = Shared::default();
        let whole = vec![a(), file("b", 5, &root.join("b"))];
        write_archive(out.clone(), &root, whole, &bar).expect("written");
        let bytes = out.0.lock().expect("not poisoned").clone();
        assert!(bytes.ends_with(&[0; 1024]), "the end marker");
    }

    #[test]
    fn what_a_node_would_refuse_is_refused_before_sending() {
        use dkvs_ipfs::files::{MAX_ARCHIVE_DIRECTORIES, MAX_ARCHIVE_ENTRIES};
        let tree = |files, dirs| Tree { entries: Vec::new(), files, dirs };
        let empty = tree(0, 0);
        assert_eq!(refusal(&empty, &"n".repeat(255), "x", false), None);
        assert!(refusal(&empty, &"n".repeat(256), "x", false).is_some_and(|w| w.contains("255")));
        let deep = "d/".repeat(2049);
        assert_eq!(refusal(&empty, "d", &deep[..4096], true), None);
        assert!(refusal(&empty, "d", &deep[..4097], true).is_some_and(|w| w.contains("4096")));
        // The root is among a node's directories: one fewer below it.
        let dirs = MAX_ARCHIVE_DIRECTORIES - 2;
        assert_eq!(refusal(&tree(0, dirs), "d", "d", true), None);
        assert!(
            refusal(&tree(0, dirs + 1), "d", "d", true).is_some_and(|w| w.contains("directories"))
        );
        assert_eq!(refusal(&tree(0, dirs + 1), "f", "f", false), None, "a file is no directory");
        let files = MAX_ARCHIVE_ENTRIES - 1;
        assert_eq!(refusal(&tree(files, 0), "f", "f", false), None);
        assert!(refusal(&tree(files + 1, 0), "f", "f", false).is_some_and(|w| w.contains("files")));
    }

    #[test]
    fn an_error_shows_what_a_terminal_would_obey_escaped() {
        let said = terminal_text("cannot read /tmp/\u{1b}[2Jx\u{202e}: gone\nnext\tline");
        assert_eq!(said, "cannot read /tmp/\\u{1b}[2Jx\\u{202e}: gone\nnext\tline");
    }

    #[test]
    fn json_printed_drives_no_terminal_and_reads_the_same() {
        let value = serde_json::json!({
            "body": "pay\u{1b}[2J\u{7f}\u{9b}x\u{202e}fed\u{2066}\u{61c}\ttab\nline é",
            "author": "ed1\u{200f}\u{2028}\u{feff}\u{200d}",
        });
        for json in [value.to_string(), serde_json::to_string_pretty(&value).expect("json")] {
            let shown = terminal_json(&json);
            assert!(!shown.chars().any(|c| c != '\n' && escaped(c)), "{shown}");
            // A zero-width joiner stays: scripts and emoji use it.
            assert!(shown.contains("ed1\\u200f\\u2028\\ufeff\u{200d}"), "{shown}");
            assert!(
                shown.contains(r"\u007f\u009bx\u202efed\u2066\u061c\ttab") && shown.contains('é')
            );
            let read: serde_json::Value = serde_json::from_str(&shown).expect("still JSON");
            assert_eq!(read, value);
        }
    }

    #[test]
    fn an_error_says_each_cause_once() {
        let io = std::io::Error::new(std::io::ErrorKind::AddrInUse, "in use");
        // A cause its error names already, and one it does not.
        let named = anyhow::Error::new(dkvs_net::ListenError::Io {
            addr: "/ip4/127.0.0.1/tcp/1".parse().expect("addr"),
            source: io,
        });
        assert_eq!(causes(&named), "could not listen on /ip4/127.0.0.1/tcp/1: in use");
        let other = anyhow::Error::new(std::io::Error::other("denied")).context("cannot open x");
        assert_eq!(causes(&other), "cannot open x: denied");
        // Named within its error's words; and a short one said again though it appears.
        let within = anyhow::Error::new(dkvs_store::PutError::NotDurable {
            path: "/data/log".into(),
            source: std::io::Error::other("no space left on the device"),
        });
        assert_eq!(
            causes(&within),
            "could not flush the log /data/log: no space left on the device; the store refuses writes"
        );
        let short = anyhow::Error::new(std::io::Error::other("timed out"))
            .context("the walk timed out twice, then the read");
        assert_eq!(causes(&short), "the walk timed out twice, then the read: timed out");
    }

    #[test]
    fn the_homes_token_goes_only_to_the_homes_node() {
        let home = || Ok(("http://127.0.0.1:4041".to_owned(), "secret".to_owned()));
        let pick = |api, env: Option<&str>| credentials(api, home(), env.map(str::to_owned));
        assert_eq!(pick(None, None).expect("home").1, "secret");
        assert_eq!(pick(Some("http://127.0.0.1:4041/"), None).expect("same node").1, "secret");
        assert_eq!(pick(Some("127.0.0.1:4041"), None).expect("same node").1, "secret");
        for other in ["[::1]:4041", "localhost:4041", "http://[::1]:4041/"] {
            assert!(pick(Some(other), Some("theirs")).is_ok(), "{other}");
        }
        assert!(pick(Some("http://127.0.0.1:4041@attacker.example"), None).is_err());
        for typo in [
            "notaurl",
            "https://127.0.0.1:4041",
            "127.0.0.1",
            "http://127.0.0.1:4041/x",
            "http://127.0.0.1:4041?x",
        ] {
            let err = pick(Some(typo), Some("theirs")).expect_err(typo);
            assert!(err.to_string().contains("is not an API address"), "{typo}: {err}");
        }
        // Another URL never gets the home's token: DKVS_TOKEN or an error that says so.
        let err = pick(Some("http://attacker.example:4041"), None).expect_err("no token");
        assert!(err.to_string().contains("DKVS_TOKEN"), "{err}");
        let other = pick(Some("http://127.0.0.1:5051"), Some("theirs")).expect("env token");
        assert_eq!(other, ("http://127.0.0.1:5051".to_owned(), "theirs".to_owned()));
        // As `dkvs node --api` takes it, without a scheme: the same URL.
        let bare = pick(Some("127.0.0.1:5051/"), Some("theirs")).expect("env token");
        assert_eq!(bare, other);
        // No running node in the home and no --api: the home's error.
        let none = credentials(None, Err(anyhow::anyhow!("no node runs")), None);
        assert!(none.is_err());
    }
}
