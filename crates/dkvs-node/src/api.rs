//! The node's local HTTP API: JSON (or raw bytes for values) over HTTP on loopback, every
//! request authorised by the bearer token in the home's `api.json`. `openapi.json` (in this crate)
//! describes it and is served at `/openapi.json`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use base64::Engine as _;
use dkvs_account::Keypair;
use dkvs_account::keystore::{Keystore, KeystoreError};
use dkvs_net::{GetOutcome, Node, PutError, PutReceipt, Refusal};
use dkvs_record::{Draft, Key, MAX_VALUE_LEN, Record};
use futures::StreamExt as _;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::Mutex;
use zeroize::Zeroizing;

use crate::config::NodeConfig;
use crate::metrics::Metrics;

mod ipfs;

/// The OpenAPI description of this API.
pub const OPENAPI: &str = include_str!("../openapi.json");

/// The API's mail: inboxes, and letters handed out, waiting for acknowledgement.
#[derive(Default)]
pub struct MailState {
    inboxes: HashMap<dkvs_account::AccountId, dkvs_mail::Inbox>,
    handed_out: HashMap<String, HandedOut>,
    /// Letters sent through this node, newest last (read from the home at the first use).
    sent: Option<Vec<crate::home::Sent>>,
}

/// How many sent letters the node remembers for `dkvs mail status`.
const MAX_SENT: usize = 4096;

/// Letters handed out to a client, until it acknowledges them (or ten minutes pass: they are
/// then fetched again).
struct HandedOut {
    account: Arc<Keypair>,
    fetched: dkvs_mail::Fetched,
    at: Instant,
}

/// How long handed-out letters wait for their acknowledgement, and how many batches wait.
const HANDED_OUT_FOR: std::time::Duration = std::time::Duration::from_secs(600);
const MAX_HANDED_OUT: usize = 256;

/// The longest `wait` of `POST /v1/inbox`.
const MAX_MAIL_WAIT: std::time::Duration = std::time::Duration::from_secs(3600);

/// The most bytes of letters and delivery receipts (as JSON) one `POST /v1/inbox` answer
/// holds past its first: the others are left on the replicas for the next read (`"more"`
/// says how many). A fetch may bring up to 16 MiB from each of ten replicas, a body is
/// written twice (as text and as base64) and JSON writes a control byte in six: one answer
/// of it all would be hundreds of MiB, past what any client reads (anyone can fill a
/// mailbox so), and the reader would never get to acknowledge it.
const MAX_INBOX_ANSWER: usize = 4 << 20;

/// What the handlers share.
pub struct AppState {
    /// The network node.
    pub node: Node,
    /// The accounts on disk.
    pub keystore: Keystore,
    /// The node's home: its default account is read at every request, so an account made
    /// while the node runs is usable at once.
    pub home: crate::home::Home,
    /// Accounts unlocked so far, by name.
    pub unlocked: Mutex<HashMap<String, Arc<Keypair>>>,
    /// The passphrase that unlocks them.
    pub passphrase: Zeroizing<String>,
    /// The bearer token.
    pub token: String,
    /// The node's configuration.
    pub config: NodeConfig,
    /// Metrics.
    pub metrics: Metrics,
    /// Turns true when the node is stopping; open watch streams end then.
    pub stopping: tokio::sync::watch::Receiver<bool>,
    /// True when the API listens on loopback (the default): a request's `Host` must then name
    /// this machine (`localhost`, 127.0.0.0/8 or `[::1]`, any port: an SSH tunnel or a port
    /// mapping changes the port). A page in a browser that rebinds its own name to 127.0.0.1
    /// sends its own name, and is refused. An API bound elsewhere by the operator's choice is
    /// reached by names this node cannot know, and is guarded by its token alone.
    pub check_host: bool,
    /// The records this node keeps alive (`keep=true`), as remembered in the home.
    pub kept: Mutex<Vec<crate::home::Kept>>,
    /// What each account has read through this node (by account id), so copies that come
    /// back from a replica that missed an acknowledgement are left out; saved in the home.
    /// Letters handed out and waiting for the client's acknowledgement, by token.
    pub mail: Mutex<MailState>,
    /// Gateway requests without a token under way ([`TOKENLESS_REQUESTS`] at most, each
    /// holding its permit until its file is sent).
    pub tokenless: Arc<tokio::sync::Semaphore>,
}

/// Gateway requests without a token that may be under way at once: a quarter of the API's
/// connections (`serve::Limits::NODE`), so that whoever holds the token (the `dkvs` command,
/// an application) finds room however many files are asked for without one; past it, 503
/// `busy`.
pub const TOKENLESS_REQUESTS: usize = 64;

impl AppState {
    /// The home's default account now.
    pub fn default_account(&self) -> Option<String> {
        self.home.default_account().ok().flatten()
    }

    /// Keeps `key` alive for `owner` (the account `account`), and remembers it in the home.
    pub async fn keep(
        &self,
        key: &Key,
        account: &str,
        owner: Arc<Keypair>,
        ttl_ms: u64,
    ) -> anyhow::Result<()> {
        let mut kept = self.kept.lock().await;
        self.node.keep_alive(owner, key, ttl_ms).await;
        kept.retain(|k| k.key != key.as_str());
        kept.push(crate::home::Kept {
            key: key.to_string(),
            account: account.to_owned(),
            ttl_secs: ttl_ms / 1000,
        });
        self.home.write_kept(&kept)
    }

    /// Stops keeping `key` alive; false if it was not kept.
    pub async fn stop_keeping(&self, key: &Key) -> anyhow::Result<bool> {
        let mut kept = self.kept.lock().await;
        self.node.stop_keep_alive(key).await;
        let before = kept.len();
        kept.retain(|k| k.key != key.as_str());
        if kept.len() == before {
            return Ok(false);
        }
        self.home.write_kept(&kept)?;
        Ok(true)
    }
}

/// True when a `Host` header value names this machine: `localhost`, an address in
/// 127.0.0.0/8, or `[::1]`, with any port or none.
pub fn names_this_machine(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or_default(),
        None => host.rsplit_once(':').map_or(host, |(name, port)| {
            if port.bytes().all(|b| b.is_ascii_digit()) { name } else { host }
        }),
    };
    name.eq_ignore_ascii_case("localhost")
        || name.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// An API error: a status and `{ "error": { "code", "message" } }`, plus extra fields.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    extra: Option<(&'static str, serde_json::Value)>,
}

impl ApiError {
    /// The error in words.
    pub(crate) fn message(&self) -> &str {
        &self.message
    }

    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { status, code, message: message.into(), extra: None }
    }
    fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }
}

/// The refusals that end their connection: a client without the token, or from another
/// site, cannot keep one of the API's connections by asking again and again.
const CLOSING: [&str; 4] = ["unauthorized", "wrong_host", "cross_site", "busy"];

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({ "error": { "code": self.code, "message": self.message } });
        if let Some((name, value)) = self.extra {
            body[name] = value;
        }
        let mut response = (self.status, Json(body)).into_response();
        if CLOSING.contains(&self.code) {
            close_after(&mut response);
        }
        response
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// The largest request body: a value of the largest size, base64 in JSON, with room to spare.
const BODY_LIMIT: usize = 2 * MAX_VALUE_LEN + 4096;

/// A body that could not be read: over the limit is the documented JSON 413, like a value
/// over its limit; anything else a 400.
fn body_rejected(e: axum::extract::rejection::BytesRejection) -> ApiError {
    let over = e.status() == StatusCode::PAYLOAD_TOO_LARGE;
    over_limit(over, e, &format!("; a value is at most {MAX_VALUE_LEN}"))
}

/// A JSON body that could not be read: over the limit (axum's length limit error) is the same
/// JSON 413 as [`body_rejected`]'s; anything else (not JSON, not the expected fields, no JSON
/// content type) a 400.
fn json_rejected(e: axum::extract::rejection::JsonRejection) -> ApiError {
    over_limit(e.status() == StatusCode::PAYLOAD_TOO_LARGE, e, "")
}

/// The 413 `too_large` of a body over [`BODY_LIMIT`] (`more` said after it), when `over`;
/// else `e` as a 400.
fn over_limit(over: bool, e: impl std::fmt::Display, more: &str) -> ApiError {
    if !over {
        return rejected(e);
    }
    let message = format!("request body is over {BODY_LIMIT} bytes{more}");
    ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", message)
}

/// The router with every route, behind the token check.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v1/status", get(status))
        .route("/v1/peers", get(peers))
        .route("/v1/connections", get(connections))
        .route("/v1/accounts", get(accounts))
        .route("/v1/kv/{*key}", get(get_key).put(put_key).delete(delete_key))
        .route("/v1/watch/{*key}", get(watch_key))
        .route("/v1/handover/{*key}", axum::routing::post(handover))
        .route("/v1/keep", get(list_kept))
        .route("/v1/keep/{*key}", axum::routing::delete(stop_kept))
        .route(
            "/v1/mail/{recipient}",
            axum::routing::post(send_mail)
                .layer(axum::extract::DefaultBodyLimit::max(dkvs_mail::MAX_BODY + 1)),
        )
        .route("/v1/inbox", axum::routing::post(read_inbox))
        .route("/v1/inbox/ack/{token}", axum::routing::post(ack_inbox))
        .route("/v1/mail/{id}/status", get(mail_status))
        .route(
            "/v1/channels/{name}",
            get(subscribe_channel)
                .post(publish_channel)
                .layer(axum::extract::DefaultBodyLimit::max(dkvs_mail::channel::MAX_POST_BODY + 1)),
        )
        .route("/v1/channels/{name}/members", get(channel_members))
        .route(
            "/v1/ipfs/add",
            axum::routing::post(ipfs::add).layer(axum::extract::DefaultBodyLimit::disable()),
        )
        .route("/v1/ipfs/get/{*path}", get(ipfs::get))
        .route("/v1/ipfs/connect", axum::routing::post(ipfs::connect))
        .route("/v1/ipfs/peers", get(ipfs::peers))
        .route("/v1/ipfs/pin/{cid}", axum::routing::put(ipfs::pin).delete(ipfs::unpin))
        .route("/v1/ipfs/gc", axum::routing::post(ipfs::gc))
        .route("/v1/ipfs/stat", get(ipfs::stat))
        .route("/v1/ipfs/share/{cid}/{account_id}", axum::routing::post(ipfs::share))
        .route("/openapi.json", get(openapi))
        .fallback(no_route)
        .method_not_allowed_fallback(wrong_method)
        .layer(middleware::from_fn_with_state(state.clone(), authorise))
        // On loopback, the read-only gateway (plain files) and the metrics answer without a
        // token (a scraper need not read api.json at every start); they check the host, and
        // a token if one is given, themselves.
        .route("/ipfs/{*path}", get(ipfs::gateway))
        .route("/metrics", get(metrics))
        .method_not_allowed_fallback(wrong_method)
        .layer(axum::extract::DefaultBodyLimit::max(BODY_LIMIT))
        .layer(middleware::from_fn_with_state(state.clone(), trust_the_token))
        .layer(middleware::from_fn_with_state(state.clone(), cross_origin))
        .with_state(state)
}

/// What a page of another origin may send the API beside its simple headers.
const CORS_HEADERS: &str = "authorization, content-type, range, if-range, if-none-match";
/// What such a page may read of an answer beside its simple headers.
const CORS_EXPOSED: &str = "dkvs-source, dkvs-seq, dkvs-start-seq, dkvs-confirmations, content-range, content-length, etag";

/// Pages of other origins (a dapp on `localhost:3000`, or on a site of its own) that hold the
/// token use the API as any client does (CORS): the token, not the origin, is what the API
/// trusts. A preflight is answered for any origin on a host that names this machine (it
/// carries no token, and reads nothing), a private network's included (Chromium asks a
/// public site's page for it). An answer is made readable to the page that asked only when
/// its request showed the right token: a page without it reads nothing of the API's
/// answers, not even a refusal, and the gateway's and the metrics' stay closed to other
/// sites.
async fn cross_origin(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    let Some(origin) = request.headers().get(header::ORIGIN).cloned() else {
        return next.run(request).await;
    };
    let headers = request.headers();
    if request.method() == axum::http::Method::OPTIONS
        && headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
    {
        if let Err(e) = check_host(&state, headers) {
            return e.into_response();
        }
        let private = headers
            .get("access-control-request-private-network")
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"true"));
        let mut response = StatusCode::NO_CONTENT.into_response();
        let answer = response.headers_mut();
        answer.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        answer.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, PUT, POST, DELETE"),
        );
        answer.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, HeaderValue::from_static(CORS_HEADERS));
        answer.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("600"));
        answer.insert(header::VARY, HeaderValue::from_static("origin"));
        if private {
            answer.insert("access-control-allow-private-network", HeaderValue::from_static("true"));
        }
        return response;
    }
    let readable = presented_token(headers).is_some_and(|token| token_matches(&state, token));
    let mut response = next.run(request).await;
    let answer = response.headers_mut();
    answer.append(header::VARY, HeaderValue::from_static("origin"));
    if readable {
        answer.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        answer
            .insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, HeaderValue::from_static(CORS_EXPOSED));
    }
    response
}

/// A duration as people write it: "7 days 12h", not humantime's "7days 12h".
fn in_words(d: std::time::Duration) -> String {
    humantime::format_duration(d)
        .to_string()
        .split(' ')
        .map(|part| match part.find(|c: char| !c.is_ascii_digit()) {
            Some(at) if part.len() - at > 2 => format!("{} {}", &part[..at], &part[at..]),
            _ => part.to_owned(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// A path no route serves (behind the token check, as the routes are): the JSON error every
/// other answer gives, not an empty 404.
async fn no_route(uri: axum::http::Uri) -> ApiError {
    let message = format!("no route serves {}; the routes are in /openapi.json", uri.path());
    ApiError::new(StatusCode::NOT_FOUND, "no_route", message)
}

/// A route asked with a method it does not serve.
async fn wrong_method(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    let message = format!("{} does not serve {method}; see /openapi.json", uri.path());
    ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", message)
}

/// A connection a request with the right token came on is trusted from then on
/// ([`crate::serve::Trust`]): its answers may wait as long as its reader pauses.
async fn trust_the_token(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    if presented_token(request.headers()).is_some_and(|token| token_matches(&state, token))
        && let Some(trust) = request.extensions().get::<crate::serve::Trust>()
    {
        trust.grant();
    }
    next.run(request).await
}

/// Refuses a request whose `Host` does not name this machine (a page elsewhere that makes a
/// browser call this API through a name it controls).
fn check_host(state: &AppState, headers: &HeaderMap) -> ApiResult<()> {
    if !state.check_host {
        return Ok(());
    }
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    if host.is_some_and(names_this_machine) {
        return Ok(());
    }
    let message = format!(
        "Host {} does not name this machine; this API answers requests for localhost, \
         127.0.0.1 or [::1] only",
        host.unwrap_or("(none)")
    );
    Err(ApiError::new(StatusCode::MISDIRECTED_REQUEST, "wrong_host", message))
}

/// For the routes open without a token on loopback (the gateway, the metrics): the host
/// checked, and the token if one is given (beyond loopback, one must be). Whether a right one
/// was given.
fn open_on_loopback(state: &AppState, headers: &HeaderMap) -> ApiResult<bool> {
    check_host(state, headers)?;
    match presented_token(headers) {
        None if !state.check_host => Err(wrong_token()),
        None => Ok(false),
        Some(token) if token_matches(state, token) => Ok(true),
        Some(_) => Err(wrong_token()),
    }
}

fn presented_token(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
}

fn token_matches(state: &AppState, token: &str) -> bool {
    constant_time_eq(token.as_bytes(), state.token.as_bytes())
}

fn wrong_token() -> ApiError {
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "wrong token; the token is in the node's api.json and changes at every start",
    )
}

async fn authorise(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    if let Err(e) = check_host(&state, request.headers()) {
        return e.into_response();
    }
    match presented_token(request.headers()) {
        Some(token) if token_matches(&state, token) => next.run(request).await,
        Some(_) => wrong_token().into_response(),
        None => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "this API needs `Authorization: Bearer <token>`; the token is in the node's api.json",
        )
        .into_response(),
    }
}

/// An account id from a path segment, or a 400 that names it.
fn parse_account_id(text: &str) -> ApiResult<dkvs_account::AccountId> {
    text.parse().map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_account_id",
            format!("{text:?} is not an account id: {e}"),
        )
    })
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Runs `unlock` (an account's unlock) on the node's one unlock thread and waits for it
/// without holding up the runtime: argon2id takes tens of milliseconds of CPU, which on the
/// runtime's workers would stall the node's other work meanwhile, and one at a time keeps
/// its memory (19 MiB each) from adding up. Inline if that thread cannot be started.
async fn on_unlock_thread(
    unlock: impl FnOnce() -> Result<Keypair, KeystoreError> + Send + 'static,
) -> Result<Keypair, KeystoreError> {
    type Job = Box<dyn FnOnce() + Send>;
    static THREAD: std::sync::LazyLock<Option<std::sync::mpsc::Sender<Job>>> =
        std::sync::LazyLock::new(|| {
            let (jobs, next) = std::sync::mpsc::channel::<Job>();
            let thread = std::thread::Builder::new().name("dkvs-unlock".into());
            // A job that panics fails its own request only (its answer is dropped); the
            // thread goes on with the next.
            let run = |job: Job| {
                let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
            };
            match thread.spawn(move || next.into_iter().for_each(run)) {
                Ok(_) => Some(jobs),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot start the unlock thread; unlocking inline");
                    None
                }
            }
        });
    let Some(jobs) = &*THREAD else { return unlock() };
    let (answer, answered) = tokio::sync::oneshot::channel();
    let job: Job = Box::new(move || {
        // A request that went away meanwhile (its client hung up) costs no unlock.
        if !answer.is_closed() {
            let _ = answer.send(unlock());
        }
    });
    let gone = || {
        let e = std::io::Error::other("the account could not be unlocked (the unlock failed)");
        KeystoreError::Io { path: std::path::PathBuf::from("(unlock)"), source: e }
    };
    jobs.send(job).map_err(|_| gone())?;
    answered.await.map_err(|_| gone())?
}

impl AppState {
    /// The unlocked key pair of account `name` (or of the default account).
    pub(crate) async fn account(&self, name: Option<&str>) -> ApiResult<Arc<Keypair>> {
        let default = self.default_account();
        let name = match name.or(default.as_deref()) {
            Some(name) => name.to_owned(),
            None => {
                return Err(ApiError::bad_request(
                    "no account given and no default account; create one with `dkvs account new`",
                ));
            }
        };
        let mut unlocked = self.unlocked.lock().await;
        if let Some(pair) = unlocked.get(&name) {
            return Ok(pair.clone());
        }
        let (keystore, passphrase, named) =
            (self.keystore.clone(), self.passphrase.clone(), name.clone());
        let unlocked_now = on_unlock_thread(move || keystore.load(&named, &passphrase)).await;
        let pair = match unlocked_now {
            Ok(pair) => Arc::new(pair),
            Err(KeystoreError::NotFound(_)) => {
                return Err(ApiError::new(
                    StatusCode::NOT_FOUND,
                    "unknown_account",
                    format!("no account named {name:?} on this node"),
                ));
            }
            Err(e @ KeystoreError::InvalidName(_)) => {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_account",
                    e.to_string(),
                ));
            }
            Err(KeystoreError::WrongPassphrase { .. }) => {
                return Err(ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "locked_account",
                    format!(
                        "account {name:?} does not open with the passphrase the node was started \
                         with; restart the node to unlock it (it asks for the passphrase, or \
                         reads DKVS_PASSPHRASE)"
                    ),
                ));
            }
            Err(e) => {
                return Err(ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "keystore",
                    e.to_string(),
                ));
            }
        };
        unlocked.insert(name, pair.clone());
        Ok(pair)
    }

    /// The record key named by a request path: `/~/...` is the account's own scope.
    async fn key(&self, path: &str, account: Option<&str>) -> ApiResult<Key> {
        let text = format!("/{path}");
        if text == "/~" {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_key",
                "/~ alone names no key: /~/name is a key in the account's own scope",
            ));
        }
        let text = match text.strip_prefix("/~/") {
            Some(rest) => format!("/{}/{rest}", self.account(account).await?.account_id()),
            None => text,
        };
        Key::new(text)
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_key", e.to_string()))
    }
}

#[derive(Deserialize)]
struct KeyQuery {
    account: Option<String>,
    local: Option<bool>,
}

#[derive(Deserialize)]
struct PutQuery {
    account: Option<String>,
    /// Life of the record, e.g. `90s`, `1h`, `7d`.
    ttl: Option<String>,
    /// Compare-and-swap: the sequence expected now; 0 for "no record".
    expect_seq: Option<u64>,
    /// Keep the record alive while the node runs (re-signed before it expires), remembered
    /// across restarts.
    keep: Option<bool>,
    /// Take over a shared name with its holder's consent ([`handover`]'s token).
    handover: Option<String>,
}

#[derive(Deserialize)]
struct HandoverQuery {
    account: Option<String>,
    /// The account the name goes to.
    to: Option<String>,
}

/// The holder's consent to hand a shared name to another account, for the record with
/// sequence `seq`: `<seq>.<holder's account id>.<signature, hex>`. It names neither the key nor
/// the account it goes to (the signature covers both: it is good for that key, that account
/// and that sequence only), so it is short enough to pass on by hand.
struct HandoverToken {
    seq: u64,
    from: dkvs_account::AccountId,
    signature: dkvs_account::Signature,
}

impl HandoverToken {
    fn encode(&self) -> String {
        format!("{}.{}.{}", self.seq, self.from, hex::encode(self.signature.as_bytes()))
    }

    fn decode(text: &str) -> Option<HandoverToken> {
        let mut parts = text.trim().split('.');
        let seq = parts.next()?.parse().ok()?;
        let from = parts.next()?.parse().ok()?;
        let signature = dkvs_account::Signature::from_slice(&hex::decode(parts.next()?).ok()?)?;
        parts.next().is_none().then_some(HandoverToken { seq, from, signature })
    }
}

#[derive(Deserialize)]
struct JsonValue {
    value_base64: String,
}

/// A record as JSON.
#[derive(Serialize)]
struct RecordJson {
    key: String,
    owner: String,
    seq: u64,
    issued_at_ms: u64,
    expires_at_ms: u64,
    tombstone: bool,
    value_len: usize,
    value_base64: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    transferred_from: Option<String>,
}

fn record_json(record: &Record) -> RecordJson {
    RecordJson {
        key: record.key().to_string(),
        owner: record.owner().account_id().to_string(),
        seq: record.seq(),
        issued_at_ms: record.issued_at_ms(),
        expires_at_ms: record.expires_at_ms(),
        tombstone: record.is_tombstone(),
        value_len: record.value().len(),
        value_base64: base64::engine::general_purpose::STANDARD.encode(record.value()),
        transferred_from: record.transfer().map(|t| t.from().account_id().to_string()),
    }
}

fn receipt_json(key: &Key, receipt: &PutReceipt) -> serde_json::Value {
    json!({
        "key": key.as_str(),
        "seq": receipt.seq,
        "replicas": receipt.replicas,
        "quorum": receipt.quorum,
        "stored": receipt.stored.len(),
        "refused": receipt.refused.iter().map(|(peer, why, message)| {
            json!({ "peer": peer.to_string(), "reason": why.to_string(), "message": message })
        }).collect::<Vec<_>>(),
        "unreachable": receipt.unreachable.len(),
        "alone": receipt.alone,
        // Requests this node sent for the put (the read of the replicas' newest included).
        "requests": receipt.requests,
        // This node's own store refused its copy (full, or the owner over quota here); the
        // replicas were asked all the same.
        "local_refusal": receipt.local_refusal.as_ref().map(|(why, message)| {
            json!({ "reason": why.to_string(), "message": message })
        }),
    })
}

/// The node's republish interval, in milliseconds (dkvs-net's default; not configurable here).
fn republish_ms() -> u64 {
    dkvs_net::Config::default().republish_interval.as_millis().try_into().unwrap_or(u64::MAX)
}

/// How many replicas refused a put for want of room (the owner's quota, or a full store),
/// this node among them.
fn room_refusals(receipt: &PutReceipt) -> usize {
    let room = |why: &Refusal| matches!(why, Refusal::OverQuota | Refusal::Full);
    let remote = receipt.refused.iter().filter(|(_, why, _)| room(why)).count();
    remote + usize::from(receipt.local_refusal.as_ref().is_some_and(|(why, _)| room(why)))
}

fn put_error(error: PutError) -> ApiError {
    use dkvs_store::PutError as Local;
    match error {
        PutError::Conflict { current } => ApiError {
            extra: Some((
                "current",
                current.as_ref().map_or(serde_json::Value::Null, |r| json!(record_json(r))),
            )),
            ..ApiError::new(
                StatusCode::CONFLICT,
                "conflict",
                match &current {
                    Some(r) => format!(
                        "the current sequence is {}, not the expected one; read it and retry",
                        r.seq()
                    ),
                    None => "the key is not set, which is not what was expected; read it and \
                             retry"
                        .to_owned(),
                },
            )
        },
        PutError::Stale { current_seq, current } => ApiError {
            extra: Some((
                "current",
                current.map_or(serde_json::Value::Null, |r| json!(record_json(&r))),
            )),
            ..ApiError::new(
                StatusCode::CONFLICT,
                "stale",
                format!("sequence {current_seq} is already held; retry to write after it"),
            )
        },
        PutError::NoQuorum { receipt } => {
            // The name is someone else's when that is why most of the refusing replicas refused.
            let main = receipt.main_refusal();
            let foreign = main == Some(Refusal::ForeignOwner);
            let message = if receipt.replicas == 0 {
                PutError::NoQuorum { receipt: receipt.clone() }.to_string()
            } else {
                let refusals = receipt.refusal_summary();
                format!(
                    "only {} of {} replicas stored it, {} needed{}{}",
                    receipt.stored.len(),
                    receipt.replicas,
                    receipt.quorum,
                    if foreign {
                        "; the name belongs to another account, which can hand it over with \
                         `dkvs handover` (POST /v1/handover/{key})"
                    } else {
                        ""
                    },
                    if refusals.is_empty() {
                        String::new()
                    } else {
                        format!("; refused: {refusals}")
                    }
                )
            };
            let (status, code) = if foreign {
                (StatusCode::FORBIDDEN, "foreign_owner")
            } else if main == Some(Refusal::Stale) {
                (StatusCode::CONFLICT, "stale")
            } else if room_refusals(&receipt) > 0
                && receipt.stored.len() + room_refusals(&receipt) >= receipt.quorum
            {
                // No room decided it, not a network that is away (had the replicas that had
                // no room stored it, it would have its quorum): a retry soon is refused again.
                (StatusCode::INSUFFICIENT_STORAGE, "over_quota")
            } else {
                (StatusCode::SERVICE_UNAVAILABLE, "no_quorum")
            };
            ApiError {
                extra: Some((
                    "receipt",
                    json!({"stored": receipt.stored.len(), "replicas": receipt.replicas}),
                )),
                ..ApiError::new(status, code, message)
            }
        }
        PutError::Local(Local::Invalid(dkvs_record::ValidateError::WrongOwner { key, owner })) => {
            ApiError::new(
                StatusCode::FORBIDDEN,
                "foreign_owner",
                format!(
                    "the key {key} is in another account's scope, and only that account writes \
                     or deletes it (this write is signed as {owner}: write under /~/ for your \
                     own scope, or as its account)"
                ),
            )
        }
        PutError::Local(Local::Invalid(dkvs_record::ValidateError::ValueTooLarge { len })) => {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!("value is {len} bytes, limit is {MAX_VALUE_LEN}"),
            )
        }
        PutError::Local(e @ Local::ForeignOwner { .. }) => ApiError::new(
            StatusCode::FORBIDDEN,
            "foreign_owner",
            format!(
                "{e}; the holder hands it over with `dkvs handover` (POST /v1/handover/{{key}})"
            ),
        ),
        PutError::Local(e @ (Local::OwnerQuota { .. } | Local::Full { .. })) => {
            ApiError::new(StatusCode::INSUFFICIENT_STORAGE, "over_quota", e.to_string())
        }
        PutError::Local(e @ Local::Fork { .. }) => {
            ApiError::new(StatusCode::CONFLICT, "fork", e.to_string())
        }
        PutError::Local(e @ (Local::Io { .. } | Local::NotDurable { .. })) => {
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "storage", e.to_string())
        }
        PutError::Local(e) => {
            ApiError::new(StatusCode::BAD_REQUEST, "invalid_record", e.to_string())
        }
        e @ PutError::NoReadQuorum { .. } => {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "no_quorum", e.to_string())
        }
        e @ PutError::NoNextSequence { .. } => {
            ApiError::new(StatusCode::CONFLICT, "no_next_sequence", e.to_string())
        }
        e @ PutError::NothingToDelete { .. } => {
            ApiError::new(StatusCode::NOT_FOUND, "not_found", e.to_string())
        }
        e => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", e.to_string()),
    }
}

fn error_code(error: &ApiError) -> &'static str {
    error.code
}

/// Query strings and paths that do not parse are JSON errors too, like every other error.
fn rejected(e: impl std::fmt::Display) -> ApiError {
    ApiError::bad_request(e.to_string())
}

async fn put_key(
    State(state): State<Arc<AppState>>,
    path: Result<Path<String>, axum::extract::rejection::PathRejection>,
    query: Result<Query<PutQuery>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> ApiResult<Json<serde_json::Value>> {
    let Path(path) = path.map_err(rejected)?;
    let Query(query) = query.map_err(rejected)?;
    let body = body.map_err(body_rejected)?;
    measured_put(&state, put_inner(&state, &path, query, &headers, body)).await
}

/// Runs a write (put or delete) and counts it in the put metrics: latency and outcome.
async fn measured_put<T>(
    state: &AppState,
    write: impl Future<Output = ApiResult<T>>,
) -> ApiResult<T> {
    let started = Instant::now();
    let result = write.await;
    state.metrics.put_seconds.observe(started.elapsed().as_secs_f64());
    state.metrics.put(result.as_ref().map_or_else(error_code, |_| "ok"));
    result
}

async fn put_inner(
    state: &AppState,
    path: &str,
    query: PutQuery,
    headers: &HeaderMap,
    body: Bytes,
) -> ApiResult<Json<serde_json::Value>> {
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    let value = if is_json {
        let parsed: JsonValue = serde_json::from_slice(&body).map_err(|e| {
            ApiError::bad_request(format!("body is not {{\"value_base64\": ...}}: {e}"))
        })?;
        base64::engine::general_purpose::STANDARD
            .decode(parsed.value_base64)
            .map_err(|e| ApiError::bad_request(format!("value_base64 is not base64: {e}")))?
    } else {
        body.to_vec()
    };
    // The size rule first: nothing else is worth doing for a value that can never be stored.
    if value.len() > MAX_VALUE_LEN {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("value is {} bytes, limit is {MAX_VALUE_LEN}", value.len()),
        ));
    }
    let ttl_ms = match &query.ttl {
        None => state.config.default_ttl_secs.saturating_mul(1000),
        Some(text) => humantime::parse_duration(text)
            .map_err(|e| {
                ApiError::bad_request(format!(
                    "ttl {text:?} is not a duration like 90s, 1h or 7d: {e}"
                ))
            })?
            .as_millis()
            .try_into()
            .unwrap_or(u64::MAX),
    };
    let max_ttl_ms = state.config.max_ttl_secs.saturating_mul(1000);
    if ttl_ms == 0 || ttl_ms > max_ttl_ms {
        let said = |ms: u64| in_words(std::time::Duration::from_millis(ms));
        return Err(ApiError::bad_request(format!(
            "ttl is {}; it must be positive and at most this node's maximum of {} (max_ttl_secs)",
            said(ttl_ms),
            said(max_ttl_ms)
        )));
    }
    // A kept record is re-signed on the node's republish rounds (hourly) when it would expire
    // within two of them: a shorter life would lapse between rounds, or be re-signed at once.
    let min_keep_ms = 3 * republish_ms();
    if query.keep == Some(true) && ttl_ms < min_keep_ms {
        return Err(ApiError::bad_request(format!(
            "keep needs a ttl of at least {}h: the node re-signs kept records on hourly rounds",
            min_keep_ms / 3_600_000
        )));
    }
    let owner = state.account(query.account.as_deref()).await?;
    let key = state.key(path, query.account.as_deref()).await?;
    let receipt = match (query.expect_seq, query.handover.as_deref()) {
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request(
                "expect_seq and handover do not go together: a handover names its sequence",
            ));
        }
        (None, Some(token)) => {
            let token = HandoverToken::decode(token).ok_or_else(|| {
                ApiError::bad_request(
                    "handover is not a handover token (<seq>.<account id>.<hex>, as `dkvs \
                     handover` prints it)",
                )
            })?;
            let from = token.from.public_key().clone();
            let transfer = dkvs_record::Transfer::from_parts(from, token.signature);
            // A retry (a write that missed its quorum keeps its record here, and may still
            // spread): the record kept is sent again. Signed again, it would be another record
            // of the same sequence, which every replica refuses.
            let mine = state.node.get_local(&key).record.filter(|r| {
                r.seq() == token.seq
                    && r.owner() == owner.public()
                    && r.transfer() == Some(&transfer)
            });
            let record = match mine {
                Some(record) if record.expires_at_ms() <= dkvs_record::unix_millis() => {
                    return Err(ApiError::new(
                        StatusCode::CONFLICT,
                        "stale_handover",
                        format!(
                            "an earlier write of yours with this token (sequence {} of {key}) has \
                             expired: ask the holder for a new token",
                            token.seq
                        ),
                    ));
                }
                Some(record)
                    if record.value() == value.as_slice()
                        && record.expires_at_ms().saturating_sub(record.issued_at_ms())
                            == ttl_ms =>
                {
                    record
                }
                Some(_) => {
                    return Err(ApiError::new(
                        StatusCode::CONFLICT,
                        "handover_used",
                        format!(
                            "an earlier write of yours used this token (sequence {} of {key}), \
                             with another value or ttl: to change the value, put without \
                             --handover; if that write missed its quorum, make it again with its \
                             value and ttl",
                            token.seq
                        ),
                    ));
                }
                None => {
                    let mut draft = Draft::new(key.clone(), value, token.seq, ttl_ms);
                    draft.transfer = Some(transfer);
                    draft.sign(&owner).map_err(|e| {
                        ApiError::new(StatusCode::BAD_REQUEST, "invalid_record", e.to_string())
                    })?
                }
            };
            // Checked here, where the reason can be said: a replica refuses it as a record it
            // cannot check.
            record.validate(dkvs_record::unix_millis(), &dkvs_record::Limits::default()).map_err(
                |e| {
                    ApiError::new(
                        StatusCode::FORBIDDEN,
                        "bad_handover",
                        format!(
                            "the handover token does not hand {key} to account {} at sequence \
                             {} ({e}): it was made for another key or account",
                            owner.account_id(),
                            token.seq
                        ),
                    )
                },
            )?;
            // A token whose sequence is taken (used already, or the holder wrote since) says
            // so, rather than as a fork or a stale write.
            match state.node.put(record).await {
                Err(e) if stale_handover(&e) => {
                    return Err(ApiError::new(
                        StatusCode::CONFLICT,
                        "stale_handover",
                        format!(
                            "the handover token is for sequence {} of {key}, which is taken (the \
                             token was used, or the holder wrote since): ask the holder for a new \
                             one",
                            token.seq
                        ),
                    ));
                }
                written => written,
            }
        }
        // Only if not set: nothing, a tombstone (a deleted key reads as not set) or a record
        // that expired; the write follows what the network remembers.
        (Some(0), None) => state.node.put_new(&owner, &key, value, ttl_ms).await,
        (Some(expected), None) => {
            let seq = expected.checked_add(1).ok_or_else(|| {
                ApiError::bad_request(format!("expect_seq {expected} leaves no next sequence"))
            })?;
            let record = Draft::new(key.clone(), value, seq, ttl_ms).sign(&owner).map_err(|e| {
                ApiError::new(StatusCode::BAD_REQUEST, "invalid_record", e.to_string())
            })?;
            state.node.put_cas(record, Some(expected)).await
        }
        // The sequence after the newest the network (or this node) knows, read once and
        // written; read again and retried when another writer got there first.
        (None, None) => state.node.put_next(&owner, &key, value, ttl_ms).await,
    }
    .map_err(put_error)?;
    let mut answer = receipt_json(&key, &receipt);
    if query.keep == Some(true) {
        let account = query.account.clone().or_else(|| state.default_account()).unwrap_or_default();
        state.keep(&key, &account, owner.clone(), ttl_ms).await.map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "keep_failed",
                format!("stored, but the node could not remember to keep it alive: {e:#}"),
            )
        })?;
        answer["kept"] = json!(true);
    }
    Ok(Json(answer))
}

/// Whether a write at a handover's sequence failed because that sequence is taken: here (a
/// different record of it, or a newer one), or at most replicas.
fn stale_handover(error: &PutError) -> bool {
    match error {
        PutError::Stale { .. } | PutError::Local(dkvs_store::PutError::Fork { .. }) => true,
        PutError::NoQuorum { receipt } => {
            matches!(receipt.main_refusal(), Some(Refusal::Fork | Refusal::Stale))
        }
        _ => false,
    }
}

/// `POST /v1/handover/{key}?to=<account id>`: the holder's consent (signed by the node's
/// account, or `account`) to hand the shared name `key` to the account `to`, as a token that
/// account's put takes (`PUT /v1/kv/{key}?handover=<token>`). It is good for the sequence after
/// the newest the network holds: a write of the holder's in between makes it stale.
async fn handover(
    State(state): State<Arc<AppState>>,
    path: Result<Path<String>, axum::extract::rejection::PathRejection>,
    query: Result<Query<HandoverQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<serde_json::Value>> {
    let Path(path) = path.map_err(rejected)?;
    let Query(query) = query.map_err(rejected)?;
    let to = query
        .to
        .as_deref()
        .ok_or_else(|| ApiError::bad_request("to (the account the name goes to) is missing"))?;
    let to = parse_account_id(to)?;
    let holder = state.account(query.account.as_deref()).await?;
    let key = state.key(&path, query.account.as_deref()).await?;
    if key.scope().is_some() {
        return Err(ApiError::bad_request(format!(
            "{key} is in an account's scope, which is that account's for good; only shared names \
             are handed over"
        )));
    }
    if to == holder.account_id() {
        return Err(ApiError::bad_request(format!("{key} is yours already")));
    }
    // Every replica is read, as a write of the next version reads them: a sequence a few
    // replicas remember past the newest record would make the token stale at once.
    let found =
        state.node.get_every(&key).await.map_err(|e| {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "no_quorum", e.to_string())
        })?;
    let highest = found.highest_seq.max(state.node.store().highest_seq(key.as_str()).unwrap_or(0));
    let Some(newest) = found.record else {
        let message = format!("{key} is not set: nobody holds it, and {to} can write it as it is");
        return Err(ApiError::new(StatusCode::NOT_FOUND, "not_found", message));
    };
    if newest.owner() != holder.public() {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "foreign_owner",
            format!(
                "{key} is held by {}, not by {}",
                newest.owner().account_id(),
                holder.account_id()
            ),
        ));
    }
    let seq = newest.seq().max(highest).checked_add(1).ok_or_else(|| {
        ApiError::bad_request(format!("{key} is at the last sequence; it cannot change hands"))
    })?;
    let transfer = dkvs_record::Transfer::sign(&holder, &key, to.public_key(), seq);
    let token = HandoverToken { seq, from: holder.account_id(), signature: *transfer.signature() };
    Ok(Json(json!({
        "key": key.as_str(),
        "to": to.to_string(),
        "seq": seq,
        "handover": token.encode(),
    })))
}

async fn get_key(
    State(state): State<Arc<AppState>>,
    path: Result<Path<String>, axum::extract::rejection::PathRejection>,
    query: Result<Query<KeyQuery>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let Path(path) = path.map_err(rejected)?;
    let Query(query) = query.map_err(rejected)?;
    let started = Instant::now();
    let result = get_inner(&state, &path, query, &headers).await;
    state.metrics.get_seconds.observe(started.elapsed().as_secs_f64());
    state.metrics.get(result.as_ref().map_or_else(error_code, |_| "ok"));
    result
}

async fn get_inner(
    state: &AppState,
    path: &str,
    query: KeyQuery,
    headers: &HeaderMap,
) -> ApiResult<Response> {
    let key = state.key(path, query.account.as_deref()).await?;
    let outcome: GetOutcome = if query.local.unwrap_or(false) {
        state.node.get_local(&key)
    } else {
        state.node.get(&key).await.map_err(|e| {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "no_quorum", e.to_string())
        })?
    };
    let Some(record) = outcome.record.as_ref().filter(|r| !r.is_tombstone()) else {
        let message = match &outcome.record {
            Some(tombstone) => format!("{key} was deleted (sequence {})", tombstone.seq()),
            None => format!("{key} is not set"),
        };
        return Err(ApiError::new(StatusCode::NOT_FOUND, "not_found", message));
    };
    let wants_json = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/json"));
    if wants_json {
        let mut body = json!(record_json(record));
        body["confirmations"] = json!(outcome.confirmations);
        body["answered"] = json!(outcome.answered);
        body["asked"] = json!(outcome.asked);
        body["local"] = json!(outcome.source == dkvs_net::Source::Local);
        body["source"] = json!(outcome.source.to_string());
        body["requests"] = json!(outcome.requests);
        return Ok(Json(body).into_response());
    }
    let mut response = Response::new(Body::from(record.value().to_vec()));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    headers.insert("dkvs-seq", HeaderValue::from(record.seq()));
    headers.insert("dkvs-confirmations", HeaderValue::from(outcome.confirmations as u64));
    headers.insert("dkvs-source", HeaderValue::from_static(source_name(outcome.source)));
    Ok(response)
}

async fn delete_key(
    State(state): State<Arc<AppState>>,
    path: Result<Path<String>, axum::extract::rejection::PathRejection>,
    query: Result<Query<KeyQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<serde_json::Value>> {
    let Path(path) = path.map_err(rejected)?;
    let Query(query) = query.map_err(rejected)?;
    measured_put(&state, delete_inner(&state, &path, query)).await
}

async fn delete_inner(
    state: &AppState,
    path: &str,
    query: KeyQuery,
) -> ApiResult<Json<serde_json::Value>> {
    let owner = state.account(query.account.as_deref()).await?;
    let key = state.key(path, query.account.as_deref()).await?;
    // A tombstone outlives any record it replaces: it lives as long as this node keeps anything.
    let ttl_ms = state.config.max_ttl_secs.saturating_mul(1000);
    let deleted = state.node.delete_next(&owner, &key, ttl_ms).await;
    // A deleted key (now, or already) is not kept alive any more.
    if matches!(deleted, Ok(_) | Err(PutError::NothingToDelete { .. }))
        && let Err(e) = state.stop_keeping(&key).await
    {
        tracing::warn!(%key, error = %e, "could not forget a kept key");
    }
    let receipt = deleted.map_err(put_error)?;
    Ok(Json(receipt_json(&key, &receipt)))
}

#[derive(Deserialize)]
struct MailQuery {
    account: Option<String>,
    /// How long replicas keep the letter, e.g. `1h`, `7d` (default and most: 7 days).
    ttl: Option<String>,
}

/// `POST /v1/mail/{recipient}`: the body, sealed to `recipient`, signed by the account, kept
/// on the replicas of its mailbox. Answers with the custody receipts.
async fn send_mail(
    State(state): State<Arc<AppState>>,
    path: Result<Path<String>, axum::extract::rejection::PathRejection>,
    query: Result<Query<MailQuery>, axum::extract::rejection::QueryRejection>,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> ApiResult<Json<serde_json::Value>> {
    let Path(recipient) = path.map_err(rejected)?;
    let Query(query) = query.map_err(rejected)?;
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("a letter's body is at most {} bytes", dkvs_mail::MAX_BODY),
        )
    };
    let body = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE { too_large() } else { rejected(e) }
    })?;
    let recipient = parse_account_id(&recipient)?;
    let sender = state.account(query.account.as_deref()).await?;
    let mut options = state.mail_options()?;
    if let Some(ttl) = &query.ttl {
        let ttl = humantime::parse_duration(ttl)
            .map_err(|e| ApiError::bad_request(format!("ttl {ttl:?}: {e}")))?;
        let most = std::time::Duration::from_millis(options.ttl_ms);
        if ttl.is_zero() || ttl > most {
            return Err(ApiError::bad_request(format!(
                "ttl: more than 0 and at most {} (mail_ttl_secs)",
                in_words(most)
            )));
        }
        options = options.with_ttl_ms(ttl.as_millis() as u64);
    }
    let receipt = dkvs_mail::send(&state.node, &sender, &recipient, body.to_vec(), &options)
        .await
        .map_err(|e| match e {
            dkvs_mail::SendError::Letter(dkvs_mail::MailError::BodyTooLarge { .. }) => too_large(),
            dkvs_mail::SendError::NotKept(receipt)
                if !receipt.refused.is_empty()
                    && receipt.failed.is_empty()
                    && receipt
                        .refused
                        .iter()
                        .all(|(_, r)| *r == dkvs_mail::Refusal::MailboxFull) =>
            {
                ApiError::new(
                    StatusCode::INSUFFICIENT_STORAGE,
                    "mailbox_full",
                    dkvs_mail::SendError::NotKept(receipt).to_string(),
                )
            }
            e @ dkvs_mail::SendError::NotKept(_) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not_kept", e.to_string())
            }
            e => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "mail", e.to_string()),
        })?;
    let sent = crate::home::Sent {
        id: receipt.id.to_string(),
        from: sender.account_id().to_string(),
        to: recipient.to_string(),
        sent_at_ms: now_ms(),
        kept_by: receipt.custody.iter().map(|c| c.replica.to_string()).collect(),
        read_at_ms: None,
    };
    state
        .update_sent(|list| {
            list.push(sent);
            false
        })
        .await?;
    // Only this node keeps it and no other replica was asked: a network of one, or a node
    // whose dkvs peers (those in its table: not IPFS peers) did not answer the mailbox's
    // lookup (stopped, unreachable).
    let alone = receipt.alone();
    let peers = if alone { state.node.routing_table().await.len() } else { 0 };
    Ok(Json(json!({
        "id": receipt.id.to_string(),
        "alone": alone && peers == 0,
        "unanswered": alone && peers > 0,
        "digest": hex::encode(receipt.digest),
        "kept_by": receipt.custody.len(),
        "custody": receipt.custody.iter().map(|c| json!({
            "replica": c.replica.to_string(),
            "kept_until_ms": c.kept_until_ms,
            "public_key": hex::encode(&c.public_key),
            "signature": hex::encode(&c.signature),
        })).collect::<Vec<_>>(),
        "refused": receipt.refused.iter().map(|(peer, r)| json!({
            "replica": peer.to_string(), "reason": r.to_string(),
        })).collect::<Vec<_>>(),
        "failed": receipt.failed.iter().map(|(peer, e)| json!({
            "replica": peer.to_string(), "reason": e,
        })).collect::<Vec<_>>(),
    })))
}

#[derive(Deserialize)]
struct InboxQuery {
    account: Option<String>,
    /// When there is no new letter, wait this long for one (e.g. `30s`, at most 1h).
    wait: Option<String>,
}

fn letter_json(letter: &dkvs_mail::Letter) -> serde_json::Value {
    json!({
        "id": letter.id.to_string(),
        "sender": letter.sender.to_string(),
        "sent_at_ms": letter.sent_at_ms,
        "expires_at_ms": letter.expires_at_ms,
        "body": std::str::from_utf8(&letter.body).ok(),
        "body_base64": base64::engine::general_purpose::STANDARD.encode(&letter.body),
    })
}

fn delivery_receipt_json(receipt: &dkvs_mail::DeliveryReceipt) -> serde_json::Value {
    json!({
        "reader": receipt.reader.to_string(),
        "ids": receipt.ids.iter().map(|id| id.to_string()).collect::<Vec<_>>(),
        "read_at_ms": receipt.read_at_ms,
    })
}

/// The letters and delivery receipts of `fetched` that one answer holds ([`MAX_INBOX_ANSWER`],
/// letters first, oldest first), as JSON; the others are left for the next read. Returns how
/// many were left too.
fn inbox_answer(
    fetched: &mut dkvs_mail::Fetched,
) -> (Vec<serde_json::Value>, Vec<serde_json::Value>, usize) {
    let mut room = MAX_INBOX_ANSWER;
    let mut fits = |value: &serde_json::Value, first: bool| {
        let size = serde_json::to_vec(value).map_or(usize::MAX, |bytes| bytes.len());
        let fits = first || size <= room;
        room = room.saturating_sub(size);
        fits
    };
    let mut letters = Vec::new();
    for letter in &fetched.letters {
        let value = letter_json(letter);
        if !fits(&value, letters.is_empty()) {
            break;
        }
        letters.push(value);
    }
    let mut receipts = Vec::new();
    if letters.len() == fetched.letters.len() {
        for receipt in &fetched.receipts {
            let value = delivery_receipt_json(receipt);
            if !fits(&value, letters.is_empty() && receipts.is_empty()) {
                break;
            }
            receipts.push(value);
        }
    }
    let left = fetched.leave_for_later(letters.len(), receipts.len());
    (letters, receipts, left)
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl AppState {
    /// How this node sends and reads mail (its configuration).
    fn mail_options(&self) -> ApiResult<dkvs_mail::SendOptions> {
        self.config.mail().map_err(|e| {
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "config", format!("{e:#}"))
        })
    }

    /// Changes the list of sent letters with `f` and saves it (`f` returns whether it changed
    /// nothing, to skip the write).
    async fn update_sent(
        &self,
        f: impl FnOnce(&mut Vec<crate::home::Sent>) -> bool,
    ) -> ApiResult<Vec<crate::home::Sent>> {
        let internal = |e: anyhow::Error| {
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "sent", format!("{e:#}"))
        };
        let mut mail = self.mail.lock().await;
        if mail.sent.is_none() {
            mail.sent = Some(self.home.read_sent().map_err(internal)?);
        }
        let list = mail.sent.as_mut().expect("just read");
        let unchanged = f(list);
        if list.len() > MAX_SENT {
            let extra = list.len() - MAX_SENT;
            list.drain(..extra);
        }
        if !unchanged {
            self.home.write_sent(list).map_err(internal)?;
        }
        Ok(list.clone())
    }

    /// Notes the delivery receipts of a fetch on the letters they name; a receipt counts
    /// only from the letter's recipient.
    async fn note_receipts(&self, receipts: &[dkvs_mail::DeliveryReceipt]) -> ApiResult<()> {
        if receipts.is_empty() {
            return Ok(());
        }
        self.update_sent(|list| {
            // A receipt may list 4,096 ids, and a read bring thousands of receipts: each id
            // is looked up, not compared with every letter sent.
            let mut by_id: HashMap<String, Vec<usize>> = HashMap::new();
            for (i, sent) in list.iter().enumerate() {
                by_id.entry(sent.id.clone()).or_default().push(i);
            }
            let mut unchanged = true;
            for receipt in receipts {
                let reader = receipt.reader.to_string();
                for id in &receipt.ids {
                    for &i in by_id.get(&id.to_string()).into_iter().flatten() {
                        let sent = &mut list[i];
                        if sent.to == reader && sent.read_at_ms.is_none() {
                            sent.read_at_ms = Some(receipt.read_at_ms);
                            unchanged = false;
                        }
                    }
                }
            }
            unchanged
        })
        .await
        .map(|_| ())
    }

    /// The inbox of `account`, read from the home the first time.
    async fn with_inbox<R>(
        &self,
        account: &dkvs_account::AccountId,
        f: impl FnOnce(&mut dkvs_mail::Inbox) -> R,
    ) -> ApiResult<R> {
        let mut mail = self.mail.lock().await;
        if !mail.inboxes.contains_key(account) {
            let inbox = self.home.read_inbox(account).map_err(|e| {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "inbox", format!("{e:#}"))
            })?;
            mail.inboxes.insert(account.clone(), inbox);
        }
        Ok(f(mail.inboxes.get_mut(account).expect("just inserted")))
    }
}

/// `POST /v1/inbox`: the account's new letters, oldest first, and a token to acknowledge them
/// with once they are handled (`POST /v1/inbox/ack/{token}`); until then they come again.
async fn read_inbox(
    State(state): State<Arc<AppState>>,
    query: Result<Query<InboxQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<serde_json::Value>> {
    let Query(query) = query.map_err(rejected)?;
    let wait = match &query.wait {
        None => None,
        Some(text) => {
            let wait = humantime::parse_duration(text)
                .map_err(|e| ApiError::bad_request(format!("wait {text:?}: {e}")))?;
            if wait > MAX_MAIL_WAIT {
                return Err(ApiError::bad_request("wait: at most 1h"));
            }
            Some(wait)
        }
    };
    let account = state.account(query.account.as_deref()).await?;
    let id = account.account_id();
    let inbox = state.with_inbox(&id, |inbox| inbox.clone()).await?;
    let options = state.mail_options()?;
    let unavailable = |e: dkvs_mail::ReadError| {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "no_replica", e.to_string())
    };
    let mut fetched =
        dkvs_mail::fetch(&state.node, &account, &inbox, &options).await.map_err(unavailable)?;
    if fetched.letters.is_empty()
        && let Some(wait) = wait
    {
        let mut watch = dkvs_mail::MailWatch::start(state.node.clone(), account.clone(), options)
            .await
            .map_err(unavailable)?;
        let mut stopping = state.stopping.clone();
        tokio::select! {
            next = tokio::time::timeout(wait, watch.next(&inbox)) => {
                if let Ok(next) = next {
                    fetched = next.map_err(unavailable)?;
                }
            }
            _ = stopping.wait_for(|stop| *stop) => {}
        }
    }
    let (letters, receipts, more) = inbox_answer(&mut fetched);
    state.note_receipts(&fetched.receipts).await?;
    let refused: Vec<serde_json::Value> = fetched
        .refused
        .iter()
        .map(|(peer, e)| json!({"replica": peer.to_string(), "reason": e.to_string()}))
        .collect();
    let replicas = fetched.replicas.len();
    // This node's clock is likely off: say so, and what was left for a later read.
    let clock = fetched.clock_off.map(|refusing| {
        format!(
            "{refusing} of the mailbox's replicas refused this read as asked at a time over \
             {} min from their clocks: this node's clock is likely off; letters it would \
             refuse for their time are left on the replicas until it is set right",
            dkvs_mail::MAX_CLOCK_SKEW_MS / 60_000
        )
    });
    let token = hex::encode(rand::random::<[u8; 16]>());
    {
        let mut mail = state.mail.lock().await;
        mail.handed_out.retain(|_, h| h.at.elapsed() < HANDED_OUT_FOR);
        if mail.handed_out.len() >= MAX_HANDED_OUT {
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_unacknowledged",
                format!(
                    "{MAX_HANDED_OUT} reads wait for their acknowledgement; acknowledge them first"
                ),
            ));
        }
        mail.handed_out.insert(token.clone(), HandedOut { account, fetched, at: Instant::now() });
    }
    Ok(Json(json!({
        "letters": letters,
        "receipts": receipts,
        "refused": refused,
        "replicas": replicas,
        "clock": clock,
        "more": more,
        "ack": token,
    })))
}

/// `POST /v1/inbox/ack/{token}`: the letters of that read are handled: they are marked read
/// (in the home) and deleted from the replicas.
async fn ack_inbox(
    State(state): State<Arc<AppState>>,
    path: Result<Path<String>, axum::extract::rejection::PathRejection>,
) -> ApiResult<Json<serde_json::Value>> {
    let Path(token) = path.map_err(rejected)?;
    let handed_out = state.mail.lock().await.handed_out.remove(&token).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_ack",
            "no read waits for this acknowledgement (acknowledged already, or over ten minutes \
             ago: its letters come again at the next read)",
        )
    })?;
    let HandedOut { account, fetched, .. } = handed_out;
    let id = account.account_id();
    // The inbox is updated and saved before the replicas delete: a letter deleted is never
    // one this node would show again. Kept in memory only once saved: an inbox that cannot
    // be written hides nothing the replicas still keep.
    let home = state.home.clone();
    state
        .with_inbox(&id, |inbox| {
            let mut updated = inbox.clone();
            updated.forget_expired(now_ms());
            fetched.mark_read(&mut updated);
            home.write_inbox(&id, &updated)?;
            *inbox = updated;
            anyhow::Ok(())
        })
        .await?
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "inbox", format!("{e:#}")))?;
    let options = state.mail_options()?;
    let report =
        dkvs_mail::ack(&state.node, &account, &mut dkvs_mail::Inbox::new(), &fetched, &options)
            .await;
    Ok(Json(json!({
        "letters": fetched.letters.len(),
        "deleted": report.deleted,
        "failed": report.failed.iter().map(|(peer, e)| json!({
            "replica": peer.to_string(), "reason": e,
        })).collect::<Vec<_>>(),
        "receipts_sent": report.receipts_sent,
        "receipts_skipped": report.receipts_skipped,
        "receipts_failed": report.receipts_failed.iter().map(|(sender, e)| json!({
            "sender": sender.to_string(), "reason": e,
        })).collect::<Vec<_>>(),
    })))
}

/// `GET /v1/mail/{id}/status`: what became of a letter sent through this node: the
/// replicas that keep it, and whether its recipient read it (the account's mailbox is asked
/// for delivery receipts first; its letters stay for `POST /v1/inbox`).
async fn mail_status(
    State(state): State<Arc<AppState>>,
    path: Result<Path<String>, axum::extract::rejection::PathRejection>,
    query: Result<Query<InboxQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<serde_json::Value>> {
    let Path(id) = path.map_err(rejected)?;
    let Query(query) = query.map_err(rejected)?;
    let id = id.to_ascii_lowercase();
    if id.len() != 32 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_letter_id",
            format!("{id:?} is not a letter id (32 hex digits, as `dkvs mail send` printed it)"),
        ));
    }
    let known = state.update_sent(|_| true).await?;
    let Some(sent) = known.iter().find(|s| s.id == id) else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no letter {id} was sent through this node"),
        ));
    };
    let account = state.account(query.account.as_deref()).await?;
    if account.account_id().to_string() != sent.from {
        return Err(ApiError::bad_request(format!(
            "letter {id} was sent by {}; ask with that account (--as)",
            sent.from
        )));
    }
    if sent.read_at_ms.is_none() {
        let id_of = account.account_id();
        let inbox = state.with_inbox(&id_of, |inbox| inbox.clone()).await?;
        let options = state.mail_options()?;
        // Receipts only: they are noted, then acknowledged; letters wait for their reader.
        if let Ok(fetched) = dkvs_mail::fetch(&state.node, &account, &inbox, &options).await {
            let receipts = fetched.only_receipts();
            state.note_receipts(&receipts.receipts).await?;
            let home = state.home.clone();
            state
                .with_inbox(&id_of, |inbox| {
                    inbox.forget_expired(now_ms());
                    receipts.mark_read(inbox);
                    home.write_inbox(&id_of, inbox)
                })
                .await?
                .map_err(|e| {
                    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "inbox", format!("{e:#}"))
                })?;
            dkvs_mail::ack(
                &state.node,
                &account,
                &mut dkvs_mail::Inbox::new(),
                &receipts,
                &options,
            )
            .await;
        }
    }
    let known = state.update_sent(|_| true).await?;
    let sent = known.iter().find(|s| s.id == id).ok_or_else(|| {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("letter {id} is forgotten"))
    })?;
    Ok(Json(json!({
        "id": sent.id,
        "to": sent.to,
        "sent_at_ms": sent.sent_at_ms,
        "kept_by": sent.kept_by,
        "read": sent.read_at_ms.is_some(),
        "read_at_ms": sent.read_at_ms,
    })))
}

fn channel_error(e: dkvs_mail::ChannelError) -> ApiError {
    use dkvs_mail::ChannelError as E;
    match e {
        E::BadName(_) => ApiError::new(StatusCode::BAD_REQUEST, "bad_name", e.to_string()),
        E::TooLarge(_) => ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", e.to_string()),
        E::Publish { .. } => {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "no_peers", e.to_string())
        }
        e => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "channel", e.to_string()),
    }
}

fn post_json(post: &dkvs_mail::Post) -> serde_json::Value {
    let b64 = base64::engine::general_purpose::STANDARD;
    json!({
        "channel": post.channel,
        "id": post.id.to_string(),
        "author": post.author.to_string(),
        "sent_at_ms": post.sent_at_ms,
        "kind": match post.kind {
            dkvs_mail::PostKind::Message => "message",
            dkvs_mail::PostKind::Presence => "presence",
        },
        "body": std::str::from_utf8(&post.body).ok(),
        "body_base64": b64.encode(&post.body),
    })
}

/// `POST /v1/channels/{name}`: publishes the body on the channel, signed by the account.
async fn publish_channel(
    State(state): State<Arc<AppState>>,
    path: Result<Path<String>, axum::extract::rejection::PathRejection>,
    query: Result<Query<InboxQuery>, axum::extract::rejection::QueryRejection>,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> ApiResult<Json<serde_json::Value>> {
    let Path(name) = path.map_err(rejected)?;
    let Query(query) = query.map_err(rejected)?;
    let body = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            channel_error(dkvs_mail::ChannelError::TooLarge(dkvs_mail::channel::MAX_POST_BODY + 1))
        } else {
            rejected(e)
        }
    })?;
    let author = state.account(query.account.as_deref()).await?;
    let published = dkvs_mail::channel::publish(&state.node, &author, &name, body.to_vec())
        .await
        .map_err(channel_error)?;
    let mut answer = post_json(&published.post);
    answer["peers"] = json!(published.peers);
    Ok(Json(answer))
}

#[derive(Deserialize)]
struct ChannelQuery {
    account: Option<String>,
    /// First the recent posts that peers on the channel kept.
    history: Option<bool>,
    /// Say that the account is in the channel, now and every two minutes while subscribed.
    announce: Option<bool>,
}

/// `GET /v1/channels/{name}`: the channel's posts as they come, one JSON object a line.
async fn subscribe_channel(
    State(state): State<Arc<AppState>>,
    path: Result<Path<String>, axum::extract::rejection::PathRejection>,
    query: Result<Query<ChannelQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Response> {
    let Path(name) = path.map_err(rejected)?;
    let Query(query) = query.map_err(rejected)?;
    let announcer = match query.announce.unwrap_or(false) {
        true => Some(state.account(query.account.as_deref()).await?),
        false => None,
    };
    let subscription =
        dkvs_mail::channel::subscribe(&state.node, &name, query.history.unwrap_or(false))
            .await
            .map_err(channel_error)?;
    let node = state.node.clone();
    let mut stopping = state.stopping.clone();
    let stopped = async move {
        let _ = stopping.wait_for(|stop| *stop).await;
    };
    // Presence is said again before it lapses (it counts five minutes).
    let every = std::time::Duration::from_millis(dkvs_mail::channel::PRESENCE_TTL_MS * 2 / 5);
    let ticks = tokio::time::interval(every);
    let posts = futures::stream::unfold(
        (subscription, ticks, node, announcer, name),
        |(mut sub, mut ticks, node, announcer, name)| async move {
            loop {
                tokio::select! {
                    post = sub.next() => {
                        let mut line = serde_json::to_vec(&post_json(&post?)).unwrap_or_default();
                        line.push(b'\n');
                        return Some((Ok::<_, std::convert::Infallible>(line), (sub, ticks, node, announcer, name)));
                    }
                    _ = ticks.tick(), if announcer.is_some() => {
                        if let Some(author) = &announcer
                            && let Err(e) = dkvs_mail::channel::announce(&node, author, &name).await
                        {
                            tracing::warn!(channel = %name, error = %e, "cannot announce presence");
                        }
                    }
                }
            }
        },
    );
    let mut response = Response::new(Body::from_stream(posts.take_until(stopped)));
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/x-ndjson"));
    Ok(response)
}

/// `GET /v1/channels/{name}/members`: the accounts that said they are in the channel in the
/// last five minutes.
async fn channel_members(
    State(state): State<Arc<AppState>>,
    path: Result<Path<String>, axum::extract::rejection::PathRejection>,
) -> ApiResult<Json<serde_json::Value>> {
    let Path(name) = path.map_err(rejected)?;
    let members = dkvs_mail::channel::members(&state.node, &name).await.map_err(channel_error)?;
    Ok(Json(json!({
        "channel": name,
        "members": members.iter().map(|(account, until)| json!({
            "account": account.to_string(), "until_ms": until,
        })).collect::<Vec<_>>(),
    })))
}

async fn list_kept(State(state): State<Arc<AppState>>) -> Json<serde_json::Value> {
    let mut kept = state.kept.lock().await;
    // Keys the node stopped keeping (deleted, or handed over, as the network said at a round
    // or at a read this list started) are forgotten in the home too.
    let dropped: std::collections::HashSet<String> =
        state.node.kept_dropped().await.iter().map(|key| key.to_string()).collect();
    let before = kept.len();
    kept.retain(|k| !dropped.contains(&k.key));
    if kept.len() != before
        && let Err(e) = state.home.write_kept(&kept)
    {
        tracing::warn!(error = %format!("{e:#}"), "cannot save the keys kept alive");
    }
    Json(json!({ "kept": *kept }))
}

async fn stop_kept(
    State(state): State<Arc<AppState>>,
    path: Result<Path<String>, axum::extract::rejection::PathRejection>,
    query: Result<Query<KeyQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<serde_json::Value>> {
    let Path(path) = path.map_err(rejected)?;
    let Query(query) = query.map_err(rejected)?;
    let key = state.key(&path, query.account.as_deref()).await?;
    let stopped = state.stop_keeping(&key).await.map_err(|e| {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "keep_failed", format!("{e:#}"))
    })?;
    if !stopped {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_kept",
            format!("{key} is not kept alive by this node"),
        ));
    }
    Ok(Json(json!({ "key": key.as_str(), "kept": false })))
}

#[derive(Deserialize)]
struct WatchQuery {
    account: Option<String>,
    /// The first line is the version the watch began at, when there is one.
    current: Option<bool>,
}

async fn watch_key(
    State(state): State<Arc<AppState>>,
    path: Result<Path<String>, axum::extract::rejection::PathRejection>,
    query: Result<Query<WatchQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Response> {
    let Path(path) = path.map_err(rejected)?;
    let Query(query) = query.map_err(rejected)?;
    let key = state.key(&path, query.account.as_deref()).await?;
    // Answers once the watch's first read did (a node stopping meanwhile does not wait for
    // it): the lines are the versions newer than the one it began at (header dkvs-start-seq),
    // after that one itself with `current`.
    let unavailable =
        |why: String| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", why);
    let mut stopping = state.stopping.clone();
    let watch = tokio::select! {
        watch = state.node.watch(&key) => watch.map_err(|e| unavailable(e.to_string()))?,
        _ = stopping.wait_for(|stop| *stop) => {
            return Err(unavailable("the node is stopping".to_owned()));
        }
    };
    let start = watch.start_seq();
    let current = watch.start().filter(|_| query.current == Some(true)).cloned();
    let stopped = async move {
        let _ = stopping.wait_for(|stop| *stop).await;
    };
    let versions = futures::stream::iter(current).chain(watch.take_until(stopped));
    let lines = versions.map(|record| {
        let mut line = serde_json::to_vec(&record_json(&record)).unwrap_or_default();
        line.push(b'\n');
        Ok::<_, std::convert::Infallible>(line)
    });
    let mut response = Response::new(Body::from_stream(lines));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/x-ndjson"));
    headers.insert("dkvs-start-seq", HeaderValue::from(start));
    Ok(response)
}

async fn status(State(state): State<Arc<AppState>>) -> Json<serde_json::Value> {
    let stats = state.node.store().stats();
    let peers = state.node.connected_peers().await;
    let reach = state.node.reachability().await;
    let (nat, public_addr) = match &reach.nat {
        dkvs_net::NatStatus::Unknown => ("unknown", None),
        dkvs_net::NatStatus::Private => ("private", None),
        dkvs_net::NatStatus::Public(addr) => ("public", Some(addr.to_string())),
    };
    let strings = |addrs: &[dkvs_net::libp2p::Multiaddr]| -> Vec<String> {
        addrs.iter().map(|a| a.to_string()).collect()
    };
    Json(json!({
        "reachability": {
            "nat": nat,
            "public_addr": public_addr,
            "kad_mode": if reach.kad_server { "server" } else { "client" },
            "external_addrs": strings(&reach.external_addrs),
            "relay_addrs": strings(&reach.relay_addrs),
        },
        "peer_id": state.node.peer_id().to_string(),
        "listen_addrs": state.node.listen_addrs().await.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
        "peers": peers.len(),
        // Peers disconnected to keep within max_connections since the node started.
        "trimmed_peers": state.node.trimmed().await,
        // Inbound connections refused because their address, or all addresses, had too many
        // handshakes in flight (a flood of unfinished connections).
        "refused_handshakes": state.node.refused_handshakes().await,
        "records": stats.records,
        "remembered_sequences": stats.remembered,
        "memory_bytes": stats.bytes,
        "memory_budget_bytes": state.node.store().config().max_bytes,
        "default_account": state.default_account(),
    }))
}

async fn peers(State(state): State<Arc<AppState>>) -> Json<serde_json::Value> {
    let peers = state.node.connected_peers().await;
    Json(json!(peers.iter().map(|p| p.to_string()).collect::<Vec<_>>()))
}

/// Every open connection: the peer, the remote address, and whether it goes through a relay.
async fn connections(State(state): State<Arc<AppState>>) -> Json<serde_json::Value> {
    let mut list = Vec::new();
    for peer in state.node.connected_peers().await {
        for addr in state.node.connections(peer).await {
            let relayed =
                addr.iter().any(|p| p == dkvs_net::libp2p::multiaddr::Protocol::P2pCircuit);
            list.push(json!({ "peer": peer.to_string(), "address": addr.to_string(), "relayed": relayed }));
        }
    }
    Json(json!(list))
}

async fn accounts(State(state): State<Arc<AppState>>) -> ApiResult<Json<serde_json::Value>> {
    let list = state
        .keystore
        .list()
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "keystore", e.to_string()))?;
    let default = state.default_account();
    Ok(Json(json!(
        list.iter()
            .map(|info| json!({
                "name": info.name,
                "type": info.key_type.name(),
                "account_id": info.account_id.to_string(),
                "default": default.as_deref() == Some(info.name.as_str()),
            }))
            .collect::<Vec<_>>()
    )))
}

async fn metrics(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let token_ok = match open_on_loopback(&state, &headers) {
        Ok(token_ok) => token_ok,
        Err(e) => return e.into_response(),
    };
    let stats = state.node.store().stats();
    state.metrics.records.set(stats.records as i64);
    state.metrics.bytes.set(stats.bytes as i64);
    state.metrics.peers.set(state.node.connected_peers().await.len() as i64);
    let traffic = state.node.traffic();
    let gauge = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
    state.metrics.bytes_received.set(gauge(traffic.bytes_in));
    state.metrics.bytes_sent.set(gauge(traffic.bytes_out));
    state.metrics.timer_wakeups.set(gauge(state.node.wakeups().await));
    let pacing = state.node.pacing().await;
    state.metrics.requests_waited.set(gauge(pacing.waited));
    state.metrics.requests_held_back.set(gauge(pacing.held_back));
    let mut response = (
        [(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
        state.metrics.encode(),
    )
        .into_response();
    if !token_ok {
        close_after(&mut response);
    }
    response
}

/// Ends the connection after this answer: one to a client without the token (the gateway's,
/// the metrics'), which so keeps no connection between its requests
/// ([`crate::serve`]).
pub(crate) fn close_after(response: &mut Response) {
    response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

fn source_name(source: dkvs_net::Source) -> &'static str {
    match source {
        dkvs_net::Source::Alone => "alone",
        dkvs_net::Source::Local => "local",
        _ => "network",
    }
}

#[cfg(test)]
mod tests {
    use super::{in_words, names_this_machine, put_error};
    use axum::http::StatusCode;
    use dkvs_net::{PutError, PutReceipt, Refusal};
    use std::time::Duration;

    #[test]
    fn a_put_the_replicas_refused_for_room_is_over_quota_not_unavailable() {
        let peer = dkvs_net::libp2p::PeerId::random;
        let refused = |why| (peer(), why, String::new());
        let receipt = PutReceipt {
            replicas: 3,
            quorum: 2,
            refused: vec![refused(Refusal::OverQuota), refused(Refusal::Full)],
            ..PutReceipt::default()
        };
        let error = put_error(PutError::NoQuorum { receipt: Box::new(receipt.clone()) });
        assert_eq!((error.status, error.code), (StatusCode::INSUFFICIENT_STORAGE, "over_quota"));
        // Another account's scope: the name is theirs, not a malformed record.
        let wrong =
            dkvs_record::ValidateError::WrongOwner { key: "/ed1x/k".into(), owner: "ed1y".into() };
        let error = put_error(PutError::Local(dkvs_store::PutError::Invalid(wrong)));
        assert_eq!((error.status, error.code), (StatusCode::FORBIDDEN, "foreign_owner"));
        assert!(error.message.contains("another account's scope"), "{}", error.message);
        // Replicas that did not answer: the network may be back soon.
        let away = PutReceipt { refused: Vec::new(), ..receipt.clone() };
        let error = put_error(PutError::NoQuorum { receipt: Box::new(away) });
        assert_eq!((error.status, error.code), (StatusCode::SERVICE_UNAVAILABLE, "no_quorum"));
        // One replica without room, most of them away: the outage decided it, not the room.
        let unreachable = (0..15).map(|_| (peer(), "no answer in time".to_owned())).collect();
        let outage = PutReceipt {
            replicas: 20,
            quorum: 11,
            stored: (0..4).map(|_| peer()).collect(),
            refused: vec![refused(Refusal::OverQuota)],
            unreachable,
            ..receipt
        };
        let error = put_error(PutError::NoQuorum { receipt: Box::new(outage.clone()) });
        assert_eq!((error.status, error.code), (StatusCode::SERVICE_UNAVAILABLE, "no_quorum"));
        // Room refusals of both kinds, and one for load: room decided it (3 + 8 of 11).
        let mixed = [[Refusal::OverQuota; 4], [Refusal::Full; 4]].concat();
        let full = PutReceipt {
            stored: (0..3).map(|_| peer()).collect(),
            refused: mixed.into_iter().chain([Refusal::RateLimited]).map(refused).collect(),
            unreachable: Vec::new(),
            ..outage
        };
        let error = put_error(PutError::NoQuorum { receipt: Box::new(full) });
        assert_eq!((error.status, error.code), (StatusCode::INSUFFICIENT_STORAGE, "over_quota"));
    }

    #[test]
    fn durations_in_words() {
        assert_eq!(in_words(Duration::from_secs(7 * 86_400)), "7 days");
        assert_eq!(in_words(Duration::from_secs(86_400 + 5_400)), "1 day 1h 30m");
        assert_eq!(in_words(Duration::from_millis(1_500)), "1s 500ms");
    }

    #[test]
    fn hosts_that_name_this_machine() {
        for host in [
            "127.0.0.1:4041",
            "127.0.0.1",
            "127.1.2.3:80",
            "localhost:5000",
            "LOCALHOST",
            "[::1]:4041",
            "[::1]",
        ] {
            assert!(names_this_machine(host), "{host}");
        }
        for host in [
            "evil.example",
            "evil.example:4041",
            "localhost.evil.example:1",
            "10.0.0.1:4041",
            "[::2]:1",
            "",
            "127.0.0.1.evil:1",
        ] {
            assert!(!names_this_machine(host), "{host}");
        }
    }
}
