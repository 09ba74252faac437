//! The client side of the HTTP API, for the command line.

use std::io::Read as _;
use std::time::Duration;

use anyhow::Context as _;

/// A failed request, classified for the command line's exit codes.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// What was asked about is not there: the node answered 404 (`not_found`, `not_kept`,
    /// `not_pinned`, `no_such_path`), or the home has no such account.
    #[error("{0}")]
    NotFound(String),
    /// The node answered with another error.
    #[error("{message} ({code}, HTTP {status})")]
    Api {
        /// HTTP status.
        status: u16,
        /// The error code.
        code: String,
        /// What the node said.
        message: String,
        /// The whole error body.
        body: serde_json::Value,
    },
    /// The node took longer to answer than the client waits.
    #[error("the node at {url} did not answer in time: {reason} (it may be busy; its log says)")]
    TimedOut {
        /// The node asked.
        url: String,
        /// What timed out.
        reason: String,
    },
    /// The node answered, but not with what this client reads (cut short, too large, not
    /// JSON).
    #[error("the node at {url} sent an answer this command cannot read: {reason}")]
    BadAnswer {
        /// The node asked.
        url: String,
        /// What was wrong with it.
        reason: String,
    },
    /// The connection broke during an upload: the node stopped reading it (it refused the
    /// rest: a file that filled its store), or it went away.
    #[error(
        "the connection to the node at {url} broke during the upload, after the command had \
         read {sent} bytes of it"
    )]
    StoppedReading {
        /// The node.
        url: String,
        /// Bytes read from the source by then (some of them may not have reached the node).
        sent: u64,
    },
    /// Reading what was being uploaded failed; the node keeps nothing of a cut upload.
    #[error("{0}")]
    Source(std::io::Error),
    /// The node could not be reached.
    #[error("cannot reach the node at {url}: {reason} (is `dkvs node` running from this home?)")]
    Unreachable {
        /// Where it was looked for.
        url: String,
        /// Why not.
        reason: String,
    },
}

/// What an upload ([`Client::post_reader`]) read from its source: the bytes, and the error
/// that ended it, if one did.
#[derive(Default)]
struct Sent {
    bytes: u64,
    failed: Option<std::io::Error>,
}

/// A source that counts into [`Sent`] what it gives.
struct Counted<R> {
    inner: R,
    sent: std::sync::Arc<std::sync::Mutex<Sent>>,
}

impl<R: std::io::Read> std::io::Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let read = self.inner.read(buf);
        let mut sent = self.sent.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match read {
            Ok(n) => {
                sent.bytes += n as u64;
                Ok(n)
            }
            Err(e) => {
                let said = std::io::Error::new(e.kind(), e.to_string());
                sent.failed = Some(e);
                Err(said)
            }
        }
    }
}

/// The largest JSON answer the command line reads: the node bounds its long answers (an
/// inbox's to 4 MiB past its first letter), lists of a few hundred thousand entries fit.
const MAX_JSON_ANSWER: u64 = 64 << 20;

/// A client of one node's API.
pub struct Client {
    agent: ureq::Agent,
    base: String,
    token: String,
}

/// Percent-encodes a record key for a URL path, keeping its `/` separators. One leading `/`
/// is left out (the route's own): a key typed `//name` stays a key with an empty segment,
/// which the node refuses, not `/name`, another key.
pub fn encode_key(key: &str) -> String {
    encode(key.strip_prefix('/').unwrap_or(key), true)
}

/// Percent-encodes one URL path segment (a channel name, an account id): a `/` in it is
/// encoded too.
pub fn encode_segment(segment: &str) -> String {
    encode(segment, false)
}

fn encode(text: &str, keep_slashes: bool) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(byte as char)
            }
            b'/' if keep_slashes => out.push('/'),
            other => out.push_str(&format!("%{other:02X}")),
        }
    }
    out
}

impl Client {
    /// A client of the API at `base` (e.g. `http://127.0.0.1:4041`) with `token`.
    pub fn new(base: &str, token: &str, timeout: Option<Duration>) -> Client {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(timeout)
            // An upload waits for the node to take it ([`Client::post_reader`]): its checks
            // may unlock an account first.
            .timeout_await_100(Some(Duration::from_secs(30)))
            .build()
            .into();
        Client { agent, base: base.trim_end_matches('/').to_owned(), token: token.to_owned() }
    }

    /// This client with another timeout.
    pub fn with_timeout(&self, timeout: Option<Duration>) -> Client {
        Client::new(&self.base, &self.token, timeout)
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn check(
        &self,
        mut response: ureq::http::Response<ureq::Body>,
    ) -> Result<ureq::http::Response<ureq::Body>, ClientError> {
        let status = response.status().as_u16();
        if status < 400 {
            return Ok(response);
        }
        let bytes =
            response.body_mut().with_config().limit(1 << 20).read_to_vec().unwrap_or_default();
        let body: serde_json::Value =
            serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
        let code = body["error"]["code"].as_str().unwrap_or("error").to_owned();
        let message = body["error"]["message"]
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned());
        // What was asked about is not there (exit code 1); a route, an account named to act as,
        // are failures of the command (2).
        if status == 404
            && matches!(code.as_str(), "not_found" | "not_kept" | "not_pinned" | "no_such_path")
        {
            return Err(ClientError::NotFound(message));
        }
        Err(ClientError::Api { status, code, message, body })
    }

    fn unreachable(&self, e: ureq::Error) -> ClientError {
        let (url, reason) = (self.base.clone(), e.to_string());
        match e {
            ureq::Error::Timeout(_) => ClientError::TimedOut { url, reason },
            _ => ClientError::Unreachable { url, reason },
        }
    }

    /// A request to `path`, with the token, the type it accepts and the type it sends.
    fn request(
        &self,
        method: &str,
        path: &str,
        accept: &str,
        content_type: &str,
    ) -> ureq::http::request::Builder {
        ureq::http::Request::builder()
            .method(method)
            .uri(self.url(path))
            .header("Authorization", format!("Bearer {}", self.token))
            .header("Accept", accept)
            .header("Content-Type", content_type)
    }

    /// A request that could not be made (a path that is no URI).
    fn unbuilt(&self, e: ureq::http::Error) -> ClientError {
        ClientError::Unreachable { url: self.base.clone(), reason: e.to_string() }
    }

    /// Sends one request; the answer if it is a success, the node's error otherwise.
    fn send(
        &self,
        method: &str,
        path: &str,
        accept: &str,
        body: impl ureq::AsSendBody,
    ) -> Result<ureq::http::Response<ureq::Body>, ClientError> {
        let request = self
            .request(method, path, accept, "application/octet-stream")
            .body(body)
            .map_err(|e| self.unbuilt(e))?;
        let response = self.agent.run(request).map_err(|e| self.unreachable(e))?;
        self.check(response)
    }

    fn json(
        &self,
        method: &str,
        path: &str,
        body: &[u8],
    ) -> Result<serde_json::Value, ClientError> {
        let response = self.send(method, path, "application/json", body)?;
        self.read_json(response)
    }

    /// Reads a JSON answer of at most [`MAX_JSON_ANSWER`] bytes.
    fn read_json(
        &self,
        mut response: ureq::http::Response<ureq::Body>,
    ) -> Result<serde_json::Value, ClientError> {
        let bytes = response.body_mut().with_config().limit(MAX_JSON_ANSWER).read_to_vec();
        let bytes = bytes.map_err(|e| match e {
            ureq::Error::Timeout(_) | ureq::Error::Io(_) => self.unreachable(e),
            e => ClientError::BadAnswer { url: self.base.clone(), reason: e.to_string() },
        })?;
        serde_json::from_slice(&bytes).map_err(|e| ClientError::BadAnswer {
            url: self.base.clone(),
            reason: format!("not JSON: {e}"),
        })
    }

    /// GET `path`, JSON answer.
    pub fn get_json(&self, path: &str) -> Result<serde_json::Value, ClientError> {
        self.json("GET", path, &[])
    }

    /// GET `path`, raw bytes answer.
    /// The second value is the `dkvs-source` header: where the answer came from.
    pub fn get_bytes(&self, path: &str) -> Result<(Vec<u8>, String), ClientError> {
        let mut response = self.send("GET", path, "application/octet-stream", &[][..])?;
        let source = response
            .headers()
            .get("dkvs-source")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("network")
            .to_owned();
        let bytes = response
            .body_mut()
            .with_config()
            .limit(1 << 20)
            .read_to_vec()
            .map_err(|e| self.unreachable(e))?;
        Ok((bytes, source))
    }

    /// PUT raw bytes to `path`, JSON answer.
    pub fn put_bytes(&self, path: &str, bytes: &[u8]) -> Result<serde_json::Value, ClientError> {
        self.json("PUT", path, bytes)
    }

    /// POST raw bytes to `path`, JSON answer.
    pub fn post_bytes(&self, path: &str, bytes: &[u8]) -> Result<serde_json::Value, ClientError> {
        self.json("POST", path, bytes)
    }

    /// POST what `reader` gives to `path` as it reads it, to its end (a file of any size),
    /// JSON answer. The node is asked to say first whether it takes the upload at all
    /// (`Expect: 100-continue`): a refusal comes before any byte is sent. A connection that
    /// broke partway (a node that stopped reading a file that filled its store, or one that
    /// went away) is [`ClientError::StoppedReading`]; an error reading `reader` is
    /// [`ClientError::Source`].
    pub fn post_reader(
        &self,
        path: &str,
        reader: impl std::io::Read + Send + 'static,
    ) -> Result<serde_json::Value, ClientError> {
        let sent = std::sync::Arc::new(std::sync::Mutex::new(Sent::default()));
        let counted = Counted { inner: reader, sent: sent.clone() };
        let request = self
            .request("POST", path, "application/json", "application/octet-stream")
            .header("Expect", "100-continue")
            .body(ureq::SendBody::from_owned_reader(counted))
            .map_err(|e| self.unbuilt(e))?;
        let response = self.agent.run(request).map_err(|e| {
            let mut sent = sent.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some(source) = sent.failed.take() {
                return ClientError::Source(source);
            }
            // A node that went away after the whole upload, before its answer, is an end of
            // the connection ureq tells apart.
            let stopped = matches!(&e, ureq::Error::Io(io) if matches!(io.kind(),
                std::io::ErrorKind::BrokenPipe
                    | std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::ConnectionAborted
                    | std::io::ErrorKind::UnexpectedEof));
            if stopped && sent.bytes > 0 {
                return ClientError::StoppedReading { url: self.base.clone(), sent: sent.bytes };
            }
            self.unreachable(e)
        })?;
        self.read_json(self.check(response)?)
    }

    /// GET `path` and write the answer's bytes to `out` as they come; the bytes written.
    /// `sized` hears the answer's length first, when it says one. A response cut short is an
    /// error that blames the node; an error writing to `out` is `write_error`'s (standard
    /// output's reader gone, a full disk).
    pub fn get_into(
        &self,
        path: &str,
        out: &mut dyn std::io::Write,
        sized: &dyn Fn(u64),
        write_error: fn(std::io::Error) -> anyhow::Error,
    ) -> anyhow::Result<u64> {
        let response = self.send("GET", path, "application/octet-stream", &[][..])?;
        let length = response.headers().get("content-length").and_then(|v| v.to_str().ok());
        if let Some(length) = length.and_then(|v| v.parse().ok()) {
            sized(length);
        }
        let mut reader = response.into_body().into_reader();
        let mut buf = vec![0; 64 << 10];
        let mut written = 0;
        loop {
            let n = reader.read(&mut buf).context(
                "the node ended the file early (the node's log says why); nothing was kept",
            )?;
            if n == 0 {
                return Ok(written);
            }
            out.write_all(&buf[..n]).map_err(write_error)?;
            written += n as u64;
        }
    }

    /// POST a JSON body to `path`, JSON answer.
    pub fn post_json(&self, path: &str, json: &[u8]) -> Result<serde_json::Value, ClientError> {
        let request = self
            .request("POST", path, "application/json", "application/json")
            .body(json)
            .map_err(|e| self.unbuilt(e))?;
        let response = self.agent.run(request).map_err(|e| self.unreachable(e))?;
        let mut response = self.check(response)?;
        response.body_mut().read_json().map_err(|e| self.unreachable(e))
    }

    /// DELETE `path`, JSON answer.
    pub fn delete(&self, path: &str) -> Result<serde_json::Value, ClientError> {
        self.json("DELETE", path, &[])
    }

    /// GET `path` as a stream of lines: `opened` with the answer's headers once the node
    /// answered, then `each` per line until the stream ends.
    pub fn stream_lines(
        &self,
        path: &str,
        opened: impl FnOnce(&ureq::http::HeaderMap),
        mut each: impl FnMut(&str) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        let response = self.send("GET", path, "application/x-ndjson", &[][..])?;
        opened(response.headers());
        let mut reader = response.into_body().into_reader();
        let mut pending = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            // A read that fails is a connection cut without the stream's end: the node was
            // killed, or the machine's network between went away (the transport's words,
            // "Peer disconnected", say no more).
            let n = reader.read(&mut buf).map_err(|e| {
                anyhow::anyhow!(
                    "the stream was cut off: the node went away without ending it (killed?) ({e})"
                )
            })?;
            if n == 0 {
                // The node's streams (a watch, a channel) end only when it stops.
                anyhow::bail!("the node ended the stream: it stopped");
            }
            pending.extend_from_slice(&buf[..n]);
            while let Some(end) = pending.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = pending.drain(..=end).collect();
                each(String::from_utf8_lossy(&line).trim_end())?;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_too_slow_to_answer_is_not_called_unreachable() {
        let client = Client::new("http://127.0.0.1:4041/", "token", Some(Duration::from_secs(60)));
        let slow = client.unreachable(ureq::Error::Timeout(ureq::Timeout::Global));
        assert!(
            matches!(&slow, ClientError::TimedOut { url, .. } if url == "http://127.0.0.1:4041")
        );
        assert!(slow.to_string().contains("did not answer in time"), "{slow}");
        let gone = client.unreachable(ureq::Error::ConnectionFailed);
        assert!(matches!(gone, ClientError::Unreachable { .. }), "{gone}");
    }
}
