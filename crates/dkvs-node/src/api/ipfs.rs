//! The IPFS part of the API: add, get, connect, peers, pin, unpin, gc, stat.
//!
//! Files stream both ways: an add reads the request body as it arrives (a few chunks in
//! memory), a get writes the response as blocks arrive. A get answers with an error status
//! when it fails before its first byte (not found, encrypted for another account); a failure
//! after that ends the response early, so a client never takes a cut file for a whole one.

use std::io::Read;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse as _, Response};
use dkvs_ipfs::Cid;
use dkvs_ipfs::Ipfs;
use dkvs_ipfs::files::{self, GetOptions, IpfsError};
use dkvs_net::libp2p::Multiaddr;
use dkvs_net::libp2p::multiaddr::Protocol;
use futures::StreamExt as _;
use serde::Deserialize;
use serde_json::json;
use tokio::io::AsyncReadExt as _;

use super::{ApiError, ApiResult, AppState, json_rejected, rejected};

fn ipfs_error(e: IpfsError) -> ApiError {
    let status = match &e {
        IpfsError::NotFound { .. } => (StatusCode::NOT_FOUND, "not_found"),
        IpfsError::Encrypted { .. } => (StatusCode::FORBIDDEN, "encrypted"),
        IpfsError::Archive { .. } | IpfsError::NotAnArchive(_) => {
            (StatusCode::BAD_REQUEST, "bad_archive")
        }
        IpfsError::TooLargeToList { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "too_large_to_list"),
        IpfsError::Unixfs(_) | IpfsError::Crypt(_) => {
            (StatusCode::UNPROCESSABLE_ENTITY, "not_a_file")
        }
        IpfsError::Block(dkvs_ipfs::BlockError::Full { .. }) | IpfsError::NoRoom { .. } => {
            (StatusCode::INSUFFICIENT_STORAGE, "store_full")
        }
        // A CID of another hash: valid, but no block of it is kept or fetched.
        IpfsError::Block(dkvs_ipfs::BlockError::UnsupportedHash(_)) => {
            (StatusCode::UNPROCESSABLE_ENTITY, "unsupported_hash")
        }
        _ => (StatusCode::INTERNAL_SERVER_ERROR, "ipfs"),
    };
    ApiError::new(status.0, status.1, e.to_string())
}

/// A CID in its text form (after "/ipfs/" or "ipfs://", if it begins so), all of it: the cid
/// crate takes a CID from the front of the bytes the text decodes to and ignores the rest (a
/// CID with characters typed after it named the CID before them), and takes whatever follows
/// "/ipfs/" anywhere in the text.
fn parse_cid(text: &str) -> ApiResult<Cid> {
    use dkvs_ipfs::cid::{Version, multibase};
    let text = text.strip_prefix("/ipfs/").or_else(|| text.strip_prefix("ipfs://")).unwrap_or(text);
    let bad = |why: String| {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_cid", format!("{text:?} is not a CID: {why}"))
    };
    let decoded = if Version::is_v0_str(text) {
        multibase::Base::Base58Btc.decode(text).map_err(|e| bad(e.to_string()))?
    } else {
        multibase::decode(text).map_err(|e| bad(e.to_string()))?.1
    };
    let cid = Cid::try_from(decoded.as_slice()).map_err(|e| bad(e.to_string()))?;
    if cid.encoded_len() != decoded.len() {
        return Err(bad(format!("{} bytes follow the CID", decoded.len() - cid.encoded_len())));
    }
    Ok(cid)
}

/// A request body as a blocking reader, for the add that runs on a blocking thread.
struct BodyReader {
    chunks: tokio::sync::mpsc::Receiver<Result<Bytes, std::io::Error>>,
    current: Bytes,
}

impl Read for BodyReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.current.is_empty() {
            match self.chunks.blocking_recv() {
                Some(chunk) => self.current = chunk?,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}

#[derive(Deserialize)]
pub(super) struct AddQuery {
    account: Option<String>,
    /// Add as public content, not encrypted.
    plain: Option<bool>,
    /// The body is a tar archive of a directory (public content only).
    directory: Option<bool>,
    /// The file's size, when known: an encrypted file larger than the block store is refused
    /// before it is sent.
    size: Option<u64>,
}

/// `POST /v1/ipfs/add`: the body as a file, encrypted with the account's key unless `plain`;
/// with `directory` (and `plain`), the body is a tar archive of a directory, added as one
/// ([`files::add_archive`]).
pub(super) async fn add(
    State(state): State<Arc<AppState>>,
    query: Result<Query<AddQuery>, axum::extract::rejection::QueryRejection>,
    request: Request,
) -> ApiResult<Json<serde_json::Value>> {
    let Query(query) = query.map_err(rejected)?;
    let plain = query.plain.unwrap_or(false);
    let directory = query.directory.unwrap_or(false);
    if directory && !plain {
        // Decided: a directory's names and layout would be readable to anyone with its CID,
        // whatever its files' encryption; one file (a tar of it) keeps them private.
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "directory_not_plain",
            "a directory is added only as public content (its names and layout are readable \
             to anyone with its CID): add it plain (dkvs ipfs add DIR --plain), or pack it into \
             one file (tar) to add it encrypted",
        ));
    }
    // The size the client said (a file's; a pipe's is not known), or the body's length. It
    // is used before the body is read (a client that asked, `Expect: 100-continue`, has sent
    // none of it then), and never to cut the body.
    let length = request.headers().get(axum::http::header::CONTENT_LENGTH);
    let declared = query.size.or_else(|| length.and_then(|v| v.to_str().ok()?.parse().ok()));
    let limit = state.config.ipfs_max_bytes;
    if let Some(len) = declared.filter(|&len| !plain && len > limit) {
        // An encrypted file's blocks hold more bytes than the file, none alike: it never
        // fits. (A plain file's blocks may repeat, so one larger than the store may fit.)
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!(
                "the file is {len} bytes, and the block store holds at most {limit} \
                 (ipfs_max_bytes): raise ipfs_max_bytes to add it"
            ),
        ));
    }
    // After the size: unlocking an account may take a while, and the client waits for the
    // node to take the upload.
    let account = if plain { None } else { Some(state.account(query.account.as_deref()).await?) };
    let (tx, chunks) = tokio::sync::mpsc::channel(4);
    let mut body = request.into_body().into_data_stream();
    tokio::spawn(async move {
        let mut received = 0;
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(std::io::Error::other);
            let Ok(bytes) = &chunk else {
                let _ = tx.send(chunk).await;
                return;
            };
            received += bytes.len() as u64;
            if tx.send(chunk).await.is_err() {
                // The add ended before the body did (it failed: a file that does not fit).
                // A client reads the answer once it has sent the whole file: the rest is
                // read and dropped when it is at most DRAINED bytes, so that the client gets
                // the answer. Otherwise the connection closes at once: the client hears
                // sooner that the node stopped reading than it would send the rest.
                let rest = declared.map(|len| len.saturating_sub(received));
                if rest.is_some_and(|rest| rest > DRAINED) {
                    return;
                }
                let mut drained = 0;
                while let Some(Ok(chunk)) = body.next().await {
                    drained += chunk.len() as u64;
                    if drained > DRAINED {
                        return;
                    }
                }
                return;
            }
        }
    });
    let reader = BodyReader { chunks, current: Bytes::new() };
    // In a task of its own: a client that goes away drops this handler, and an add dropped
    // halfway would leave what it wrote (its clean-up runs when it fails, in the task).
    let node = state.node.clone();
    let span = tracing::info_span!("ipfs_add", directory, plain);
    let added = tokio::spawn(tracing::Instrument::instrument(
        async move {
            if directory {
                let added = files::add_archive(&node, reader, |_| {}).await?;
                return Ok::<_, IpfsError>(json!({
                    "cid": added.cid.to_string(),
                    "read": added.read,
                    "stored": added.stored,
                    "files": added.files,
                    "directories": added.directories,
                    "encrypted": false,
                }));
            }
            let added = files::add(&node, reader, account.as_deref(), |_| {}).await?;
            Ok(json!({
                "cid": added.cid.to_string(),
                "read": added.read,
                "stored": added.stored,
                "encrypted": !plain,
            }))
        },
        span,
    ))
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "ipfs", e.to_string()))?;
    if let Err(e) = &added {
        // Said here too: a client whose upload the node stopped reading hears no answer.
        tracing::info!(error = %e, "an add failed");
    }
    Ok(Json(added.map_err(ipfs_error)?))
}

/// The most bytes of an upload read (and dropped) after its add failed.
const DRAINED: u64 = 16 << 20;

#[derive(Deserialize)]
pub(super) struct GetQuery {
    account: Option<String>,
    /// The bytes as stored, not decrypted.
    raw: Option<bool>,
    /// Seconds to wait for any one block (default 60).
    timeout: Option<u64>,
}

/// `GET /v1/ipfs/get/{cid}`: the file's bytes, decrypted for the account when it is the
/// owner's or shared with it.
pub(super) async fn get(
    State(state): State<Arc<AppState>>,
    path: Result<Path<String>, axum::extract::rejection::PathRejection>,
    query: Result<Query<GetQuery>, axum::extract::rejection::QueryRejection>,
    method: axum::http::Method,
    headers: axum::http::HeaderMap,
) -> ApiResult<Response> {
    let Path(path) = path.map_err(rejected)?;
    let Query(query) = query.map_err(rejected)?;
    // A CID, or a path in a directory under one (`<cid>/site/index.html`), as the gateway.
    let mut segments = path.split('/').filter(|s| !s.is_empty());
    let root = parse_cid(segments.next().unwrap_or_default())?;
    let names: Vec<&str> = segments.collect();
    let raw = query.raw.unwrap_or(false);
    // An encrypted file opens with the named account, or the default one if there is one.
    let account = match (raw, query.account.as_deref()) {
        (true, _) => None,
        (false, Some(name)) => Some(state.account(Some(name)).await?),
        (false, None) => state.account(None).await.ok(),
    };
    let mut options =
        GetOptions { account: account.map(|a| (*a).clone()), raw, ..GetOptions::default() };
    if let Some(secs) = query.timeout {
        options.block_timeout = Duration::from_secs(secs.clamp(1, 3600));
    }
    let cid = files::resolve(&state.node, root, &names, options.block_timeout)
        .await
        .map_err(path_error)?;
    // The file's first blocks first: it opens, or the status says why, and its size goes
    // first (a client shows how far it is, and sees a cut transfer as cut). A HEAD request
    // reads no more.
    let head_only = method == axum::http::Method::HEAD;
    let stat = files::stat(&state.node, cid, &options).await.map_err(ipfs_error)?;
    if stat.directory.is_some() {
        let shown = std::iter::once(root.to_string()).chain(names.iter().map(|n| n.to_string()));
        let shown = shown.collect::<Vec<_>>().join("/");
        // The gateway is where the client reached this API.
        let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("<api>");
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "not_a_file",
            format!(
                "{shown} is a directory, not a file: get a file in it ({shown}/<name>), or \
                 open it in a browser at the gateway, http://{host}/ipfs/{shown}/"
            ),
        ));
    }
    serve_file(state.node.clone(), cid, options, &headers, None, head_only, Some(stat)).await
}

/// What a `Range` header asks of a file of a known size.
#[derive(Debug, PartialEq, Eq)]
enum Asked {
    /// The whole file: no header, or one not read here (another unit, several ranges, a
    /// malformed one), which HTTP says to ignore.
    Whole,
    /// These bytes.
    Part(std::ops::Range<u64>),
    /// A range that starts past the end (416).
    Past,
}

/// Reads a `Range` header's one byte range (`bytes=a-b`, `bytes=a-`, `bytes=-n`, RFC 9110
/// §14.1.2) against a file of `size` bytes.
fn asked(range: &str, size: u64) -> Asked {
    let Some((unit, spec)) = range.split_once('=') else { return Asked::Whole };
    if !unit.trim().eq_ignore_ascii_case("bytes") || spec.contains(',') {
        return Asked::Whole;
    }
    let Some((first, last)) = spec.split_once('-') else { return Asked::Whole };
    let number = |text: &str| {
        let text = text.trim();
        (!text.is_empty() && text.bytes().all(|b| b.is_ascii_digit())).then(|| text.parse().ok())
    };
    match (number(first), number(last)) {
        // The last n bytes.
        (None, Some(Some(n))) if first.trim().is_empty() => match n {
            0 => Asked::Past,
            _ if size == 0 => Asked::Past,
            n => Asked::Part(size.saturating_sub(n)..size),
        },
        (Some(Some(start)), None) if last.trim().is_empty() => {
            if start < size {
                Asked::Part(start..size)
            } else {
                Asked::Past
            }
        }
        (Some(Some(start)), Some(end)) => match end {
            Some(end) if end < start => Asked::Whole,
            _ if start >= size => Asked::Past,
            // An end past the file (or past u64) is the file's end.
            end => Asked::Part(start..end.map_or(size, |end: u64| end.saturating_add(1).min(size))),
        },
        // A start past u64 is past any file; anything else is no range.
        (Some(None), _) => Asked::Past,
        _ => Asked::Whole,
    }
}

/// The type a gateway gives a file: by its name's extension, else by its first bytes (the
/// signatures of images, audio, video, fonts, archives, PDF), else text when they are UTF-8
/// without control characters, else bytes.
fn content_type(name: Option<&str>, head: &[u8]) -> HeaderValue {
    let text = "text/plain; charset=utf-8";
    if let Some(mime) = name.and_then(|name| mime_guess::from_path(name).first()) {
        let value = if mime.type_() == mime_guess::mime::TEXT && mime.get_param("charset").is_none()
        {
            format!("{mime}; charset=utf-8")
        } else {
            mime.to_string()
        };
        if let Ok(value) = HeaderValue::from_str(&value) {
            return value;
        }
    }
    if let Some(kind) = infer::get(head) {
        return HeaderValue::from_static(kind.mime_type());
    }
    // A character cut at the end of the bytes looked at is no sign of anything.
    let utf8 = match std::str::from_utf8(head) {
        Ok(_) => true,
        Err(e) => e.error_len().is_none(),
    };
    let controls = head.iter().any(|&b| (b < 0x20 && !b"\t\n\r\x0c".contains(&b)) || b == 0x7f);
    if !head.is_empty() && utf8 && !controls {
        return HeaderValue::from_static(text);
    }
    HeaderValue::from_static("application/octet-stream")
}

/// What the gateway answers beside a file's bytes, for browsers.
struct ForBrowsers<'a> {
    /// The file's name: its type follows it (and the file's first bytes, [`content_type`]).
    name: Option<&'a str>,
    /// The request showed the token: what it is served may be decrypted, for this client
    /// only (no shared cache keeps it).
    private: bool,
}

/// How long a browser may keep a file of the gateway: the bytes under a CID never change.
const IMMUTABLE: &str = "max-age=29030400, immutable";

/// The first bytes of a file its type is told by (the WHATWG's sniffing reads as many): the
/// same for a whole file and a part of it.
const SNIFFED: usize = 1445;

/// Whether the validator list `list` (of `If-None-Match` or `If-Range`) names `etag`; `weak`
/// allows a weak match (`W/`) and `*`, as `If-None-Match` does and `If-Range` does not.
fn names_etag(list: &HeaderValue, etag: &str, weak: bool) -> bool {
    let Ok(list) = list.to_str() else { return false };
    list.split(',')
        .map(str::trim)
        .any(|tag| tag == etag || (weak && (tag == "*" || tag.strip_prefix("W/") == Some(etag))))
}

/// Answers the file `cid`: whole, or the one byte range a `Range` header asks (206; 416 for
/// one past the end); `head_only` without its bytes (a HEAD request). `stat` is the file's,
/// if it was read already. For the gateway (`browsers`), the answer gives the file's size, a
/// type that follows the file's name and first bytes, and the CID as its validator: an
/// `If-None-Match` that names it is answered 304 (once the file opens: its first blocks
/// read), and an `If-Range` that names it keeps the `Range` (one that does not asks for the
/// whole file). The API's gets are `application/octet-stream`, without a validator (the same
/// CID answers two ways, `raw` or not), and an `If-Range` asks them for the whole file.
async fn serve_file(
    node: dkvs_net::Node,
    cid: Cid,
    mut options: GetOptions,
    headers: &axum::http::HeaderMap,
    browsers: Option<ForBrowsers<'_>>,
    head_only: bool,
    mut stat: Option<files::Stat>,
) -> ApiResult<Response> {
    let etag = format!("\"{cid}\"");
    let cache = browsers.as_ref().map(|b| {
        let cache = format!("{}, {IMMUTABLE}", if b.private { "private" } else { "public" });
        [
            (header::ETAG, HeaderValue::from_str(&etag).expect("a CID is ASCII")),
            (header::CACHE_CONTROL, HeaderValue::from_str(&cache).expect("ASCII")),
        ]
    });
    let range = match (headers.get(header::RANGE), headers.get(header::IF_RANGE)) {
        (Some(range), None) => range.to_str().ok(),
        (Some(range), Some(tag)) if cache.is_some() && names_etag(tag, &etag, false) => {
            range.to_str().ok()
        }
        _ => None,
    };
    // The size (for Content-Length and Content-Range) and the first bytes (for the type), from
    // the file's first blocks; a file that does not open fails here, before any byte.
    if stat.is_none() && (browsers.is_some() || range.is_some()) {
        stat = Some(files::stat(&node, cid, &options).await.map_err(ipfs_error)?);
    }
    // A directory has no bytes to give (the gateway lists it before it comes here).
    if stat.as_ref().is_some_and(|stat| stat.directory.is_some()) {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "not_a_file",
            format!("{cid} is a directory, not a file"),
        ));
    }
    // The browser has the file (it opens here: `*` names no file nobody has).
    if let Some(cache) = &cache
        && headers.get(header::IF_NONE_MATCH).is_some_and(|list| names_etag(list, &etag, true))
    {
        let mut response = Response::new(Body::empty());
        *response.status_mut() = StatusCode::NOT_MODIFIED;
        response.headers_mut().extend(cache.clone());
        return Ok(response);
    }
    // What the stat read, the get takes.
    if let Some(stat) = &stat {
        options.known = stat.known.clone();
    }
    let mut part = None;
    if let (Some(range), Some(stat)) = (range, &stat) {
        match asked(range, stat.size) {
            Asked::Whole => {}
            Asked::Part(bytes) => {
                options.range = Some(bytes.clone());
                part = Some(bytes);
            }
            Asked::Past => {
                let mut response = ApiError::new(
                    StatusCode::RANGE_NOT_SATISFIABLE,
                    "range_not_satisfiable",
                    format!("{range:?} asks past the end of the file ({} bytes)", stat.size),
                )
                .into_response();
                response.headers_mut().insert(
                    header::CONTENT_RANGE,
                    HeaderValue::from_str(&format!("bytes */{}", stat.size)).expect("ASCII"),
                );
                return Ok(response);
            }
        }
    }
    let content_type = match (&browsers, &stat) {
        (Some(browsers), Some(stat)) => {
            content_type(browsers.name, &stat.head[..stat.head.len().min(SNIFFED)])
        }
        _ => HeaderValue::from_static("application/octet-stream"),
    };
    let mut response = if head_only {
        Response::new(Body::empty())
    } else {
        stream_file(node, cid, options).await?
    };
    let served = response.headers_mut();
    served.insert(header::CONTENT_TYPE, content_type);
    served.insert(
        header::HeaderName::from_static("x-ipfs-path"),
        HeaderValue::from_str(&format!("/ipfs/{cid}")).expect("a CID is ASCII"),
    );
    served.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    served.extend(cache.into_iter().flatten());
    let size = stat.map(|stat| stat.size);
    if let (Some(bytes), Some(size)) = (&part, size) {
        *response.status_mut() = StatusCode::PARTIAL_CONTENT;
        let (from, to) = (bytes.start, bytes.end - 1);
        response.headers_mut().insert(
            header::CONTENT_RANGE,
            HeaderValue::from_str(&format!("bytes {from}-{to}/{size}")).expect("ASCII"),
        );
    }
    // A response that ends short of it is cut, and the client knows.
    if let Some(length) = part.map(|bytes| bytes.end - bytes.start).or(size) {
        response.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    }
    Ok(response)
}

/// Runs a get into a pipe and answers with what comes out of it (see the module docs).
/// A task that ends when its handle is dropped: a client that goes away stops its file's
/// fetch (which could otherwise wait a minute for each block nobody has).
struct Aborting<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for Aborting<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn stream_file(node: dkvs_net::Node, cid: Cid, options: GetOptions) -> ApiResult<Response> {
    let (mut writer, mut reader) = tokio::io::duplex(256 << 10);
    let mut task = Aborting(tokio::spawn(async move {
        files::get(&node, cid, &mut writer, &options, |_| {}).await
    }));
    let mut first = vec![0u8; 64 << 10];
    let n = reader
        .read(&mut first)
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "ipfs", e.to_string()))?;
    let task = if n == 0 {
        match (&mut task.0).await {
            Ok(Ok(_)) => None,
            Ok(Err(e)) => return Err(ipfs_error(e)),
            Err(e) => {
                return Err(ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "ipfs",
                    e.to_string(),
                ));
            }
        }
    } else {
        Some(task)
    };
    first.truncate(n);
    let head = futures::stream::once(async move { Ok::<_, std::io::Error>(Bytes::from(first)) });
    let rest = futures::stream::unfold((reader, task), move |(mut reader, task)| async move {
        let mut task = task?;
        let mut buf = vec![0u8; 64 << 10];
        match reader.read(&mut buf).await {
            Ok(0) => {
                // The end: whole only if the get succeeded.
                let outcome = match (&mut task.0).await {
                    Ok(Ok(_)) => return None,
                    Ok(Err(e)) => std::io::Error::other(e.to_string()),
                    Err(e) => std::io::Error::other(e.to_string()),
                };
                // The status is sent: the response ends early, and the node's log says why.
                tracing::warn!(%cid, "a file's response ended early: {outcome}");
                Some((Err(outcome), (reader, None)))
            }
            Ok(k) => {
                buf.truncate(k);
                Some((Ok(Bytes::from(buf)), (reader, Some(task))))
            }
            Err(e) => Some((Err(e), (reader, None))),
        }
    });
    Ok(Response::new(Body::from_stream(head.chain(rest))))
}

#[derive(Deserialize)]
pub(super) struct ConnectBody {
    addr: String,
}

/// `POST /v1/ipfs/connect`: dials an IPFS peer (`/…/p2p/<peer id>`) and waits until connected.
///
/// Decided: the answer is the dial's. A dial that failed is a failure (502) also when the
/// peer is connected already by another address: the client asked for this address, and
/// learns that it does not work (the message says the other connection stays). Kubo's `ipfs
/// swarm connect` answers success for a connected peer without dialing; this one dials, so it
/// says what the dial found, and waits for it: an address that drops packets answers after
/// the dial's setup timeout (10 s), a peer connected or not. (A platform that refuses a
/// second connection from the same local port, or a peer that refuses a second connection,
/// fails the dial too: then it says so, and that the peer stays connected.)
pub(super) async fn connect(
    State(state): State<Arc<AppState>>,
    body: Result<Json<ConnectBody>, axum::extract::rejection::JsonRejection>,
) -> ApiResult<Json<serde_json::Value>> {
    let Json(body) = body.map_err(json_rejected)?;
    let addr: Multiaddr = body
        .addr
        .parse()
        .map_err(|e| ApiError::bad_request(format!("{:?} is not a multiaddr: {e}", body.addr)))?;
    let Some(Protocol::P2p(peer)) = addr.iter().last() else {
        return Err(ApiError::bad_request(format!(
            "{addr} has no peer id; end it with /p2p/<peer id>"
        )));
    };
    let stopped = |e: dkvs_net::NetError| {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "stopped", e.to_string())
    };
    let dial = addr.clone();
    let dial = state
        .node
        .with_extension(move |ipfs: &mut Ipfs, _| ipfs.connect(dial))
        .await
        .map_err(stopped)?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let (speaks, outcome) = state
            .node
            .with_extension(move |ipfs: &mut Ipfs, _| {
                (ipfs.peers().contains(&peer), ipfs.dial_outcome(dial))
            })
            .await
            .map_err(stopped)?;
        let other = if speaks { format!("; {peer} stays connected") } else { String::new() };
        match outcome {
            Some(Err(e)) => {
                return Err(ApiError::new(
                    StatusCode::BAD_GATEWAY,
                    "unreachable",
                    format!("could not connect to {addr}: {e}{other}"),
                ));
            }
            // Connected at this address, and the peer speaks bitswap.
            Some(Ok(())) if speaks => {
                return Ok(Json(json!({ "peer": peer.to_string(), "addr": addr.to_string() })));
            }
            _ => {}
        }
        if tokio::time::Instant::now() > deadline {
            return Err(ApiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                "unreachable",
                format!("could not connect to {addr} within 15 s{other}"),
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `GET /v1/ipfs/peers`: the connected peers that speak bitswap.
pub(super) async fn peers(
    State(state): State<Arc<AppState>>,
) -> ApiResult<Json<serde_json::Value>> {
    let peers =
        state.node.with_extension(|ipfs: &mut Ipfs, _| ipfs.peers()).await.map_err(|e| {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "stopped", e.to_string())
        })?;
    let mut peers: Vec<String> = peers.iter().map(ToString::to_string).collect();
    peers.sort();
    Ok(Json(json!({ "peers": peers })))
}

async fn store(state: &AppState) -> ApiResult<dkvs_ipfs::BlockStore> {
    state
        .node
        .with_extension(|ipfs: &mut Ipfs, _| ipfs.store().clone())
        .await
        .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "stopped", e.to_string()))
}

fn block_error(e: dkvs_ipfs::BlockError) -> ApiError {
    ipfs_error(IpfsError::Block(e))
}

/// `PUT /v1/ipfs/pin/{cid}`: fetches the whole file or directory (what is missing here) and
/// pins it, so that garbage collection keeps it.
pub(super) async fn pin(
    State(state): State<Arc<AppState>>,
    path: Result<Path<String>, axum::extract::rejection::PathRejection>,
) -> ApiResult<Json<serde_json::Value>> {
    let Path(cid) = path.map_err(rejected)?;
    let cid = parse_cid(&cid)?;
    let bytes = files::pin(&state.node, cid, GetOptions::default().block_timeout)
        .await
        .map_err(ipfs_error)?;
    Ok(Json(json!({ "pinned": cid.to_string(), "bytes": bytes })))
}

/// `DELETE /v1/ipfs/pin/{cid}`: unpins; the blocks go at the next garbage collection.
pub(super) async fn unpin(
    State(state): State<Arc<AppState>>,
    path: Result<Path<String>, axum::extract::rejection::PathRejection>,
) -> ApiResult<Json<serde_json::Value>> {
    let Path(cid) = path.map_err(rejected)?;
    let cid = parse_cid(&cid)?;
    let store = store(&state).await?;
    let was = tokio::task::spawn_blocking(move || store.unpin(&cid))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "ipfs", e.to_string()))?
        .map_err(block_error)?;
    if !was {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_pinned",
            format!("{cid} is not pinned on this node"),
        ));
    }
    Ok(Json(json!({ "unpinned": cid.to_string() })))
}

/// `POST /v1/ipfs/gc`: removes every block no pin reaches (only this run's cached blocks
/// while a pinned block is missing).
pub(super) async fn gc(State(state): State<Arc<AppState>>) -> ApiResult<Json<serde_json::Value>> {
    let store = store(&state).await?;
    let report = store.collect(files::links).await.map_err(block_error)?;
    let missing: Vec<String> = report.missing.iter().map(|cid| cid.to_string()).collect();
    Ok(Json(json!({
        "removed": report.removed,
        "freed": report.freed,
        "kept": report.kept,
        "missing": missing,
    })))
}

/// `GET /v1/ipfs/stat`: what the block store holds, and the IPFS peers.
pub(super) async fn stat(State(state): State<Arc<AppState>>) -> ApiResult<Json<serde_json::Value>> {
    let (store, peers, dropped, fetching) = state
        .node
        .with_extension(|ipfs: &mut Ipfs, _| {
            (ipfs.store().clone(), ipfs.peers().len(), ipfs.dropped(), ipfs.fetching())
        })
        .await
        .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "stopped", e.to_string()))?;
    let pins: Vec<String> = store.pins().iter().map(ToString::to_string).collect();
    Ok(Json(json!({
        "blocks": store.len(),
        "bytes": store.bytes(),
        "max_bytes": state.config.ipfs_max_bytes,
        "pins": pins,
        "peers": peers,
        "dropped_messages": dropped,
        "fetching": fetching,
    })))
}

#[derive(Deserialize)]
pub(super) struct ShareQuery {
    account: Option<String>,
}

/// `POST /v1/ipfs/share/{cid}/{account_id}`: seals the key of the account's encrypted file to
/// another account, as a record under the owner's keys that this node keeps alive.
pub(super) async fn share(
    State(state): State<Arc<AppState>>,
    path: Result<Path<(String, String)>, axum::extract::rejection::PathRejection>,
    query: Result<Query<ShareQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<serde_json::Value>> {
    let Path((cid, recipient)) = path.map_err(rejected)?;
    let Query(query) = query.map_err(rejected)?;
    let cid = parse_cid(&cid)?;
    let recipient = super::parse_account_id(&recipient)?;
    let name = query.account.clone().or_else(|| state.default_account()).ok_or_else(|| {
        ApiError::bad_request(
            "no account given and no default account; create one with `dkvs account new`",
        )
    })?;
    let owner = state.account(Some(&name)).await?;
    if owner.account_id() == recipient {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "not_shareable",
            format!("{recipient} is the account that added the file: it opens it already"),
        ));
    }
    let ttl_ms = state.config.max_ttl_secs.saturating_mul(1000);
    let key =
        files::share(&state.node, &owner, cid, &recipient, ttl_ms).await.map_err(|e| match e {
            IpfsError::NotOwner { .. } | IpfsError::NotEncrypted(_) => {
                ApiError::new(StatusCode::CONFLICT, "not_shareable", e.to_string())
            }
            IpfsError::Share(_) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not_stored", e.to_string())
            }
            e => ipfs_error(e),
        })?;
    state
        .keep(&key, &name, owner, ttl_ms)
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "keep", e.to_string()))?;
    Ok(Json(
        json!({ "cid": cid.to_string(), "shared_with": recipient.to_string(), "key": key.to_string() }),
    ))
}

/// Refuses a tokenless gateway request that a browser made for a page of another site (an
/// image, a script, a fetch, a frame): the node would fetch, and ask the IPFS network for,
/// whatever such a page names. A top-level navigation (a link followed, an address typed) is
/// the user's own and passes, as do requests from outside a browser (they send no such
/// headers). A page of another site on this machine (a dapp on localhost:3000) is another site
/// too: it sends the token, or links to the file.
///
/// A page of the gateway's own (one the user opened) loads what it names through the gateway,
/// as on any IPFS gateway: its images and styles, from its root or any other. Those loads, as
/// the page's own, are fetched from the IPFS network when they are not here, and the peers
/// that serve them learn that this node wants them; what a page loads may follow what CSS can
/// test (the screen's size, hovering), as a web page's loads from its server do. No check of
/// the page's root would stop that: a page's own directory can link any file.
fn from_this_site(headers: &axum::http::HeaderMap) -> ApiResult<()> {
    let value = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let site = value("sec-fetch-site");
    // A frame's load is a navigation too, and so is a page's own `location = ...` or a form it
    // submits: only a document the user asked for (a link clicked) counts.
    let navigation = value("sec-fetch-mode") == Some("navigate")
        && value("sec-fetch-dest") == Some("document")
        && value("sec-fetch-user") == Some("?1");
    let foreign_site = matches!(site, Some("cross-site" | "same-site")) && !navigation;
    // Browsers without Sec-Fetch-* still send Origin with a script's request.
    let host = value("host").unwrap_or_default();
    let foreign_origin = value("origin").is_some_and(|origin| {
        let origin = origin.split_once("://").map_or(origin, |(_, rest)| rest);
        !origin.eq_ignore_ascii_case(host)
    });
    if foreign_site || foreign_origin {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "cross_site",
            "the gateway does not serve pages of other sites; open the file's address \
             directly, or send the API's token",
        ));
    }
    Ok(())
}

/// The gateway's query.
#[derive(Deserialize)]
pub(super) struct GatewayQuery {
    /// The file's name: its type follows it, and a browser saves the file by it.
    filename: Option<String>,
    /// Saved rather than shown.
    download: Option<bool>,
}

/// The content security policy of everything the gateway serves: nothing is loaded but from
/// its own address and `data:`/`blob:` URLs.
const POLICY: &str = "default-src 'self' data: blob:; style-src 'self' data: 'unsafe-inline'";

/// [`POLICY`], and no script runs, no form is sent: for every type but
/// [`SELF_CONTAINED_MEDIA`].
const SANDBOXED: &str = "default-src 'self' data: blob:; style-src 'self' data: 'unsafe-inline'; \
                         sandbox allow-same-origin allow-downloads";

/// The types of video and sound a browser's player shows from the one file, with nothing in
/// them that runs or names other files (not a playlist, `audio/x-mpegurl`...): served
/// unsandboxed.
const SELF_CONTAINED_MEDIA: &[&str] = &[
    "audio/aac",
    "audio/flac",
    "audio/m4a",
    "audio/m4b",
    "audio/mp4",
    "audio/mpeg",
    "audio/ogg",
    "audio/opus",
    "audio/wav",
    "audio/wave",
    "audio/webm",
    "audio/x-flac",
    "audio/x-m4a",
    "audio/x-matroska",
    "audio/x-wav",
    "video/mp4",
    "video/mpeg",
    "video/ogg",
    "video/quicktime",
    "video/webm",
    "video/x-m4v",
    "video/x-matroska",
];

/// `Content-Disposition` for a file named `name` (RFC 6266): the name in ASCII for clients
/// that read only `filename` (`curl -J`), other characters as `_`, and in UTF-8 (RFC 8187).
fn disposition(name: Option<&str>, download: bool) -> HeaderValue {
    let mut value = String::from(if download { "attachment" } else { "inline" });
    if let Some(name) = name {
        let ascii: String = name
            .chars()
            .map(|c| {
                let plain = (c.is_ascii_graphic() && c != '"' && c != '\\') || c == ' ';
                if plain { c } else { '_' }
            })
            .collect();
        value.push_str(&format!("; filename=\"{ascii}\"; filename*=UTF-8''"));
        for &b in name.as_bytes() {
            if b.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&b) {
                value.push(char::from(b));
            } else {
                value.push_str(&format!("%{b:02X}"));
            }
        }
    }
    HeaderValue::from_str(&value).expect("ASCII")
}

/// `GET /ipfs/{cid}[/path]`: the read-only path gateway. Plain files for anyone who reaches
/// the API (it listens on loopback); with the API's token, also the default account's own
/// encrypted files and those shared with it. A wrong token is refused, not ignored.
pub(super) async fn gateway(
    State(state): State<Arc<AppState>>,
    path: Result<Path<String>, axum::extract::rejection::PathRejection>,
    query: Result<Query<GatewayQuery>, axum::extract::rejection::QueryRejection>,
    method: axum::http::Method,
    uri: axum::http::Uri,
    headers: axum::http::HeaderMap,
) -> ApiResult<Response> {
    // Beyond loopback (`api` set to another address), the gateway is not open to all.
    let token_ok = super::open_on_loopback(&state, &headers)?;
    let mut tokenless = None;
    if !token_ok {
        from_this_site(&headers)?;
        tokenless = Some(state.tokenless.clone().try_acquire_owned().map_err(|_| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "busy",
                format!(
                    "{} files are being served without a token; try again later, or send the \
                     token",
                    super::TOKENLESS_REQUESTS
                ),
            )
        })?);
    }
    let Path(path) = path.map_err(rejected)?;
    let Query(query) = query.map_err(rejected)?;
    let mut segments = path.split('/').filter(|s| !s.is_empty());
    let root = parse_cid(segments.next().unwrap_or_default())?;
    let names: Vec<&str> = segments.collect();
    let options = GetOptions {
        account: if token_ok { state.account(None).await.ok().map(|a| (*a).clone()) } else { None },
        ..GetOptions::default()
    };
    let cid = files::resolve(&state.node, root, &names, options.block_timeout)
        .await
        .map_err(path_error)?;
    // An empty `filename=` names nothing.
    let filename = query.filename.as_deref().filter(|name| !name.is_empty());
    let mut name = filename.or(names.last().copied());
    let opened = files::stat(&state.node, cid, &options).await.map_err(ipfs_error)?;
    // A directory: its index.html, else a page of its entries, at its address with a slash
    // at the end (where their relative links lead into it). A sharded one's index.html is
    // looked up by its name (once at that address), and only without one are all its nodes
    // read.
    let at_slash = uri.path().ends_with('/');
    let index = match &opened.directory {
        Some(files::Directory::Plain(entries)) => {
            entries.iter().find(|e| e.name.as_deref() == Some(INDEX)).map(|e| e.cid)
        }
        Some(files::Directory::Sharded) if at_slash => {
            match files::resolve(&state.node, cid, &[INDEX], options.block_timeout).await {
                Ok(index) => Some(index),
                Err(IpfsError::NoSuchPath { .. }) => None,
                Err(e) => return Err(path_error(e)),
            }
        }
        _ => None,
    };
    let mut response = match (&opened.directory, index) {
        (Some(_), _) if !at_slash => {
            let query = uri.query().map(|q| format!("?{q}")).unwrap_or_default();
            let to = format!("{}/{query}", uri.path());
            let mut response = Response::new(Body::empty());
            *response.status_mut() = StatusCode::MOVED_PERMANENTLY;
            let to =
                HeaderValue::from_str(&to).map_err(|e| ApiError::bad_request(e.to_string()))?;
            response.headers_mut().insert(header::LOCATION, to);
            response
        }
        (Some(directory), None) => {
            let shown =
                std::iter::once(root.to_string()).chain(names.iter().map(|n| n.to_string()));
            let shown = format!("/ipfs/{}/", shown.collect::<Vec<_>>().join("/"));
            let all;
            let entries = match directory {
                files::Directory::Plain(entries) => entries,
                files::Directory::Sharded => {
                    all = files::list(&state.node, cid, options.block_timeout)
                        .await
                        .map_err(ipfs_error)?;
                    &all
                }
            };
            listing(&shown, !names.is_empty(), entries)
        }
        (_, index) => {
            let (cid, opened) = match index {
                Some(index) => {
                    name = filename.or(Some(INDEX));
                    (index, files::stat(&state.node, index, &options).await.map_err(ipfs_error)?)
                }
                None => (cid, opened),
            };
            let browsers = ForBrowsers { name, private: token_ok };
            let head_only = method == axum::http::Method::HEAD;
            let node = state.node.clone();
            serve_file(node, cid, options, &headers, Some(browsers), head_only, Some(opened))
                .await?
        }
    };
    let served = response.headers_mut();
    let download = query.download.unwrap_or(false);
    if filename.is_some() || download {
        served.insert(header::CONTENT_DISPOSITION, disposition(name, download));
    }
    // What the gateway serves runs nowhere: no script, no form, no frame, no type but the one
    // given (by the file's name or its first bytes), nothing loaded from elsewhere (a page
    // that tells a third party it was opened). An HTML or SVG file would otherwise run at the
    // API's own origin, where its requests count as this site's: every document that could
    // run a script is sandboxed. Its origin stays its own (`allow-same-origin`, harmless
    // without scripts): what a page loads from the gateway (a site's images and styles, the
    // files a playlist names) is asked as this site, where a sandbox without it made every
    // such load another site's, refused. A video or a sound of one file is no such document:
    // the browser's own player shows it, unsandboxed (fullscreen and all).
    let media = served
        .get(header::CONTENT_TYPE)
        .and_then(|t| t.to_str().ok())
        .is_some_and(|t| SELF_CONTAINED_MEDIA.contains(&t.split(';').next().unwrap_or(t).trim()));
    let policy = if media { POLICY } else { SANDBOXED };
    served.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(policy));
    served.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    served.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    if let Some(permit) = tokenless {
        super::close_after(&mut response);
        // Held until the file is sent (or the client goes).
        let body = std::mem::take(response.body_mut()).into_data_stream();
        *response.body_mut() = Body::from_stream(body.map(move |chunk| {
            let _held = &permit;
            chunk
        }));
    }
    Ok(response)
}

/// Why a gateway path does not lead to anything: a name not there (404), a block on the way
/// that is no directory or is malformed (422), or as [`ipfs_error`] says.
fn path_error(e: IpfsError) -> ApiError {
    match e {
        IpfsError::NoSuchPath { .. } => {
            ApiError::new(StatusCode::NOT_FOUND, "no_such_path", e.to_string())
        }
        IpfsError::Unixfs(dkvs_ipfs::unixfs::UnixfsError::UnsupportedCodec(_)) => ipfs_error(e),
        IpfsError::Unixfs(_) => {
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "not_a_directory", e.to_string())
        }
        e => ipfs_error(e),
    }
}

/// The page a directory with an entry of this name is served as.
const INDEX: &str = "index.html";

/// A directory's page: its entries as relative links (the names escaped for HTML and
/// percent-encoded in the links), each with its CID. `shown` is the directory's path, and
/// `below_root` whether it has a directory above (a link leads up). A name a relative link
/// cannot name (empty, `.`, `..`, with a `/`) is shown, not linked: it would lead elsewhere.
fn listing(shown: &str, below_root: bool, entries: &[dkvs_ipfs::unixfs::PbLink]) -> Response {
    // Escaped for HTML; control characters and bidirectional ones (which could make one
    // name pass for another) shown as escapes.
    let escape = |text: &str| {
        text.chars().fold(String::with_capacity(text.len()), |mut out, c| {
            match c {
                '&' => out.push_str("&amp;"),
                '<' => out.push_str("&lt;"),
                '>' => out.push_str("&gt;"),
                '"' => out.push_str("&quot;"),
                '\'' => out.push_str("&#39;"),
                c if c.is_control() || matches!(c, '\u{061c}' | '\u{200b}'..='\u{200f}' | '\u{2028}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{feff}') => {
                    out.extend(c.escape_unicode());
                }
                c => out.push(c),
            }
            out
        })
    };
    let link = |name: &str| {
        name.bytes().fold(String::from("./"), |mut out, b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                out.push(char::from(b));
            } else {
                out.push_str(&format!("%{b:02X}"));
            }
            out
        })
    };
    let shown = escape(shown);
    let mut page = format!(
        "<!DOCTYPE html>\n<meta charset=\"utf-8\">\n<title>{shown}</title>\n<h1>{shown}</h1>\n<ul>\n"
    );
    if below_root {
        page.push_str("<li><a href=\"../\">..</a></li>\n");
    }
    for entry in entries {
        let name = entry.name.as_deref().unwrap_or_default();
        let (cid, text) = (entry.cid, escape(name));
        if matches!(name, "" | "." | "..") || name.contains('/') {
            page.push_str(&format!(
                "<li>{text} <small>{cid} (not linked: a link to this name would lead elsewhere)</small></li>\n"
            ));
        } else {
            page.push_str(&format!(
                "<li><a href=\"{}\">{text}</a> <small>{cid}</small></li>\n",
                link(name)
            ));
        }
    }
    page.push_str("</ul>\n");
    let mut response = Response::new(Body::from(page));
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cid_is_read_whole_or_refused() {
        // A CIDv1 (base32) and a CIDv0 (base58) of the same block.
        let v1 = "bafkreifzjut3te2nhyekklss27nh3k72ysco7y32koao5eei66wof36n5e";
        let v0 = "QmdfTbBqBPQ7VNxZEYEj14VmRuZBkqFbiwReogJgS1zR1n";
        for text in [v1, v0] {
            assert_eq!(parse_cid(text).expect("a CID").to_string(), text);
            for path in [format!("/ipfs/{text}"), format!("ipfs://{text}")] {
                assert_eq!(parse_cid(&path).expect("a CID's path").to_string(), text);
            }
        }
        for text in [
            format!("{v1}aa"),
            format!("{v0}x"),
            format!("junk/ipfs/{v1}"),
            String::new(),
            "b".to_owned(),
        ] {
            let error = parse_cid(&text).expect_err(&text);
            assert_eq!(error.code, "bad_cid", "{text}");
        }
    }

    #[test]
    fn a_range_header_is_read_as_http_says() {
        let part = |r: std::ops::Range<u64>| Asked::Part(r);
        for (header, size, expected) in [
            ("bytes=0-9", 100, part(0..10)),
            ("bytes=90-", 100, part(90..100)),
            ("bytes=90-1000", 100, part(90..100)),
            ("bytes=90-18446744073709551615", 100, part(90..100)),
            ("bytes=90-99999999999999999999999", 100, part(90..100)),
            ("bytes=-10", 100, part(90..100)),
            ("bytes=-1000", 100, part(0..100)),
            ("Bytes = 5 - 6 ", 100, part(5..7)),
            ("bytes=99-99", 100, part(99..100)),
            ("bytes=100-", 100, Asked::Past),
            ("bytes=100-200", 100, Asked::Past),
            ("bytes=99999999999999999999999-", 100, Asked::Past),
            ("bytes=-0", 100, Asked::Past),
            ("bytes=0-", 0, Asked::Past),
            ("bytes=-5", 0, Asked::Past),
            // Not one byte range: the whole file.
            ("bytes=9-0", 100, Asked::Whole),
            ("bytes=0-1,5-6", 100, Asked::Whole),
            ("lines=0-1", 100, Asked::Whole),
            ("bytes=a-b", 100, Asked::Whole),
            ("bytes=+1-2", 100, Asked::Whole),
            ("bytes=-", 100, Asked::Whole),
            ("bytes=5", 100, Asked::Whole),
            ("bytes", 100, Asked::Whole),
        ] {
            assert_eq!(asked(header, size), expected, "{header:?} of {size}");
        }
    }

    #[test]
    fn a_type_follows_the_name_then_the_bytes() {
        let typed = |name: Option<&str>, head: &[u8]| content_type(name, head);
        assert_eq!(typed(Some("a.mp4"), b"text"), "video/mp4");
        assert_eq!(typed(Some("notes.txt"), &[0xff, 0]), "text/plain; charset=utf-8");
        assert_eq!(typed(Some("page.html"), b""), "text/html; charset=utf-8");
        assert_eq!(typed(None, b"%PDF-1.7\n"), "application/pdf");
        assert_eq!(typed(Some("no-extension"), b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR"), "image/png");
        assert_eq!(typed(None, "h\u{e9}llo\n\ttab".as_bytes()), "text/plain; charset=utf-8");
        // A character cut where the bytes looked at end is still text.
        assert_eq!(typed(None, &"caf\u{e9}".as_bytes()[..4]), "text/plain; charset=utf-8");
        for bytes in [&b""[..], b"nul\0", b"\x1b[31mred", &[0xff, 0xfe, b'a'], b"del\x7f"] {
            assert_eq!(typed(None, bytes), "application/octet-stream", "{bytes:?}");
        }
    }

    #[test]
    fn a_file_name_is_given_to_the_browser_percent_encoded() {
        assert_eq!(
            disposition(Some("a b.mp4"), false),
            "inline; filename=\"a b.mp4\"; filename*=UTF-8''a%20b.mp4"
        );
        assert_eq!(
            disposition(Some("\u{e9}t\u{e9}\";\\\r\n.txt"), true),
            "attachment; filename=\"_t__;___.txt\"; filename*=UTF-8''%C3%A9t%C3%A9%22%3B%5C%0D%0A.txt"
        );
        assert_eq!(disposition(None, true), "attachment");
    }
}
