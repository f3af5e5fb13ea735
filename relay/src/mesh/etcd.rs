//! A small synchronous client for etcd v3's JSON gateway (HTTP/1.1 on the
//! client URL, keys and values base64, 64-bit integers as JSON strings).
//!
//! Only what the mesh needs: lease grant / keep-alive / revoke, put,
//! delete, prefix range and prefix watch. One TCP connection per call
//! (`Connection: close`): calls are rare (a keep-alive every TTL/3, a put
//! when a connector comes or goes), so pooling would buy nothing. Every
//! call is bounded by the client's timeout; a watch is a long-lived
//! response whose reads are bounded too (see [`Watch::next`]).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde_json::{json, Value};

/// Why an etcd call failed. Each message says what to check.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EtcdError {
    /// The endpoint is not of the form `http://host:port`.
    #[error("etcd endpoint {0:?} is not http://host:port (TLS is not supported by the gateway client; put a local proxy in front)")]
    Endpoint(String),
    /// etcd could not be reached or the connection broke.
    #[error("etcd at {endpoint} is unreachable ({source}); is it running and listening on that client URL?")]
    Unreachable {
        /// The endpoint.
        endpoint: String,
        /// The socket error.
        source: std::io::Error,
    },
    /// etcd answered with an error.
    #[error("etcd at {endpoint} refused {path}: HTTP {status}: {message}")]
    Refused {
        /// The endpoint.
        endpoint: String,
        /// The gateway path called.
        path: &'static str,
        /// The HTTP status.
        status: u16,
        /// etcd's error message.
        message: String,
    },
    /// The answer was not what the etcd v3 JSON gateway sends.
    #[error("etcd at {endpoint} sent a malformed answer to {path}: {detail} (is this etcd >= 3.4 with the gRPC gateway enabled?)")]
    Malformed {
        /// The endpoint.
        endpoint: String,
        /// The gateway path called.
        path: &'static str,
        /// What was wrong.
        detail: String,
    },
    /// The lease no longer exists (expired or revoked).
    #[error("etcd lease {0:x} expired or was revoked; grant a new one")]
    LeaseGone(i64),
    /// The watch's start revision was compacted away.
    #[error("etcd compacted revisions up to {0}; the watcher must read the prefix again")]
    Compacted(i64),
    /// The caller asked to stop while waiting.
    #[error("stopped while waiting on etcd")]
    Stopped,
}

/// An etcd lease id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LeaseId(pub i64);

/// One key-value pair as read from etcd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    /// The key.
    pub key: Vec<u8>,
    /// The value (empty for a delete event).
    pub value: Vec<u8>,
    /// The revision that last changed it.
    pub mod_revision: i64,
    /// The lease it is attached to (`None`: none).
    pub lease: Option<LeaseId>,
}

/// One change seen by a watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The key was created or changed.
    Put(KeyValue),
    /// The key was deleted (explicitly or by its lease expiring).
    Delete(KeyValue),
}

/// A client for one etcd endpoint. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Etcd {
    endpoint: String,
    host: String,
    port: u16,
    timeout: Duration,
}

/// How long one unary call may take, connect to last byte.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);

impl Etcd {
    /// A client for `endpoint` (`http://host:port`, as etcd's
    /// `--advertise-client-urls`). Nothing is connected yet.
    pub fn new(endpoint: &str) -> Result<Etcd, EtcdError> {
        let bad = || EtcdError::Endpoint(endpoint.to_string());
        let rest = endpoint.strip_prefix("http://").ok_or_else(bad)?;
        let rest = rest.trim_end_matches('/');
        let (host, port) = rest.rsplit_once(':').ok_or_else(bad)?;
        let port: u16 = port.parse().map_err(|_| bad())?;
        if host.is_empty() || rest.contains('/') {
            return Err(bad());
        }
        Ok(Etcd {
            endpoint: endpoint.trim_end_matches('/').to_string(),
            host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string(),
            port,
            timeout: DEFAULT_TIMEOUT,
        })
    }

    /// The same client with another per-call timeout.
    pub fn with_timeout(mut self, timeout: Duration) -> Etcd {
        self.timeout = timeout;
        self
    }

    /// The endpoint this client talks to.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Grants a lease of `ttl` (whole seconds, at least 1).
    pub fn grant(&self, ttl: Duration) -> Result<LeaseId, EtcdError> {
        const PATH: &str = "/v3/lease/grant";
        let secs = ttl.as_secs().max(1);
        let v = self.call(PATH, &json!({ "TTL": secs.to_string() }))?;
        let id = int(&v["ID"]).ok_or_else(|| self.malformed(PATH, "no lease ID"))?;
        Ok(LeaseId(id))
    }

    /// Renews `lease` once; returns the TTL etcd granted.
    pub fn keep_alive(&self, lease: LeaseId) -> Result<Duration, EtcdError> {
        const PATH: &str = "/v3/lease/keepalive";
        let v = self.call(PATH, &json!({ "ID": lease.0.to_string() }))?;
        match int(&v["result"]["TTL"]) {
            Some(ttl) if ttl > 0 => Ok(Duration::from_secs(ttl as u64)),
            _ => Err(EtcdError::LeaseGone(lease.0)),
        }
    }

    /// Revokes `lease`, deleting every key attached to it.
    pub fn revoke(&self, lease: LeaseId) -> Result<(), EtcdError> {
        match self.call("/v3/lease/revoke", &json!({ "ID": lease.0.to_string() })) {
            Ok(_) => Ok(()),
            // Already gone: the goal is reached.
            Err(EtcdError::Refused { message, .. }) if message.contains("not found") => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Puts `key` = `value`, attached to `lease` if given. Returns the
    /// revision of the write.
    pub fn put(&self, key: &str, value: &[u8], lease: Option<LeaseId>) -> Result<i64, EtcdError> {
        const PATH: &str = "/v3/kv/put";
        let mut body = json!({ "key": B64.encode(key), "value": B64.encode(value) });
        if let Some(l) = lease {
            body["lease"] = Value::String(l.0.to_string());
        }
        let v = self.call(PATH, &body).map_err(|e| match e {
            EtcdError::Refused { ref message, .. } if message.contains("lease not found") => {
                EtcdError::LeaseGone(lease.map_or(0, |l| l.0))
            }
            e => e,
        })?;
        Ok(int(&v["header"]["revision"]).unwrap_or(0))
    }

    /// Deletes `key`.
    pub fn delete(&self, key: &str) -> Result<(), EtcdError> {
        self.call("/v3/kv/deleterange", &json!({ "key": B64.encode(key) }))
            .map(drop)
    }

    /// Every key under `prefix`, and the store's revision at that read.
    pub fn range_prefix(&self, prefix: &str) -> Result<(i64, Vec<KeyValue>), EtcdError> {
        const PATH: &str = "/v3/kv/range";
        let body =
            json!({ "key": B64.encode(prefix), "range_end": B64.encode(prefix_end(prefix)) });
        let v = self.call(PATH, &body)?;
        let revision =
            int(&v["header"]["revision"]).ok_or_else(|| self.malformed(PATH, "no revision"))?;
        let kvs = match v.get("kvs") {
            None => Vec::new(),
            Some(Value::Array(a)) => a
                .iter()
                .map(|kv| self.key_value(PATH, kv))
                .collect::<Result<_, _>>()?,
            Some(_) => return Err(self.malformed(PATH, "kvs is not a list")),
        };
        Ok((revision, kvs))
    }

    /// Watches every key under `prefix` from `start_revision` on. Blocks
    /// until etcd confirms the watch.
    pub fn watch(&self, prefix: &str, start_revision: i64) -> Result<Watch, EtcdError> {
        const PATH: &str = "/v3/watch";
        let body = json!({ "create_request": {
            "key": B64.encode(prefix),
            "range_end": B64.encode(prefix_end(prefix)),
            "start_revision": start_revision.to_string(),
        }});
        let (stream, reader) = self.send(PATH, &body)?;
        let mut watch = Watch {
            client: self.clone(),
            stream,
            lines: reader,
        };
        let first = watch.message()?;
        if first["result"]["created"] != Value::Bool(true) {
            return Err(self.malformed(PATH, "the watch was not created"));
        }
        // A compacted start revision is reported right after creation.
        if let Some(rev) = int(&first["result"]["compact_revision"]).filter(|r| *r > 0) {
            return Err(EtcdError::Compacted(rev));
        }
        Ok(watch)
    }

    fn key_value(&self, path: &'static str, kv: &Value) -> Result<KeyValue, EtcdError> {
        let decode = |field: &str| -> Result<Vec<u8>, EtcdError> {
            match kv.get(field) {
                None => Ok(Vec::new()),
                Some(Value::String(s)) => B64
                    .decode(s)
                    .map_err(|_| self.malformed(path, "key or value is not base64")),
                Some(_) => Err(self.malformed(path, "key or value is not a string")),
            }
        };
        Ok(KeyValue {
            key: decode("key")?,
            value: decode("value")?,
            mod_revision: int(&kv["mod_revision"]).unwrap_or(0),
            lease: int(&kv["lease"]).filter(|l| *l != 0).map(LeaseId),
        })
    }

    fn malformed(&self, path: &'static str, detail: &str) -> EtcdError {
        EtcdError::Malformed {
            endpoint: self.endpoint.clone(),
            path,
            detail: detail.to_string(),
        }
    }

    fn unreachable(&self, source: std::io::Error) -> EtcdError {
        EtcdError::Unreachable {
            endpoint: self.endpoint.clone(),
            source,
        }
    }

    /// One unary call: POST the body, read the whole JSON answer.
    fn call(&self, path: &'static str, body: &Value) -> Result<Value, EtcdError> {
        let (_stream, mut reader) = self.send(path, body)?;
        let mut text = Vec::new();
        reader
            .read_to_end(&mut text)
            .map_err(|e| self.unreachable(e))?;
        serde_json::from_slice(&text).map_err(|e| self.malformed(path, &e.to_string()))
    }

    /// Connects, sends the request, reads the status line and headers;
    /// returns a reader over the (de-chunked) body. A non-2xx status is
    /// turned into [`EtcdError::Refused`] here.
    fn send(
        &self,
        path: &'static str,
        body: &Value,
    ) -> Result<(TcpStream, Box<dyn Read + Send>), EtcdError> {
        let addr: SocketAddr = (self.host.as_str(), self.port)
            .to_socket_addrs()
            .map_err(|e| self.unreachable(e))?
            .next()
            .ok_or_else(|| {
                self.unreachable(std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "host name has no address",
                ))
            })?;
        let stream =
            TcpStream::connect_timeout(&addr, self.timeout).map_err(|e| self.unreachable(e))?;
        stream
            .set_read_timeout(Some(self.timeout))
            .and_then(|()| stream.set_write_timeout(Some(self.timeout)))
            .and_then(|()| stream.set_nodelay(true))
            .map_err(|e| self.unreachable(e))?;
        let body = body.to_string();
        let request = format!(
            "POST {path} HTTP/1.1\r\nHost: {}:{}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.host,
            self.port,
            body.len()
        );
        (&stream)
            .write_all(request.as_bytes())
            .map_err(|e| self.unreachable(e))?;
        let read_half = stream.try_clone().map_err(|e| self.unreachable(e))?;
        let mut reader = BufReader::new(read_half);
        let mut line = String::new();
        reader
            .read_line(&mut line)
            .map_err(|e| self.unreachable(e))?;
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| self.malformed(path, "no HTTP status line"))?;
        let mut chunked = false;
        let mut length = None;
        loop {
            line.clear();
            let n = reader
                .read_line(&mut line)
                .map_err(|e| self.unreachable(e))?;
            if n == 0 {
                return Err(self.malformed(path, "headers cut short"));
            }
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                let (name, value) = (name.trim().to_ascii_lowercase(), value.trim());
                if name == "transfer-encoding" && value.eq_ignore_ascii_case("chunked") {
                    chunked = true;
                } else if name == "content-length" {
                    length = value.parse::<u64>().ok();
                }
            }
        }
        let body: Box<dyn Read + Send> = if chunked {
            Box::new(Chunked::new(reader))
        } else if let Some(n) = length {
            Box::new(reader.take(n))
        } else {
            Box::new(reader)
        };
        if !(200..300).contains(&status) {
            let mut text = Vec::new();
            let _ = body.take(64 * 1024).read_to_end(&mut text);
            let message = serde_json::from_slice::<Value>(&text)
                .ok()
                .and_then(|v| v["message"].as_str().map(str::to_string))
                .unwrap_or_else(|| String::from_utf8_lossy(&text).into_owned());
            return Err(EtcdError::Refused {
                endpoint: self.endpoint.clone(),
                path,
                status,
                message,
            });
        }
        Ok((stream, body))
    }
}

/// A prefix watch: a long-lived chunked response, one JSON message per
/// line.
pub struct Watch {
    client: Etcd,
    stream: TcpStream,
    lines: Box<dyn Read + Send>,
}

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watch")
            .field("endpoint", &self.client.endpoint)
            .finish_non_exhaustive()
    }
}

impl Watch {
    /// Waits for the next batch of events, and the revision they bring the
    /// watcher to. Each read waits at most `poll`; between reads `keep_on`
    /// is asked whether to go on (false: [`EtcdError::Stopped`]). While
    /// the watch is silent for `probe_after`, etcd is probed with a cheap
    /// read: a dead or partitioned etcd does not always close the socket.
    pub fn next(
        &mut self,
        poll: Duration,
        probe_after: Duration,
        keep_on: &dyn Fn() -> bool,
    ) -> Result<(i64, Vec<Event>), EtcdError> {
        const PATH: &str = "/v3/watch";
        self.stream
            .set_read_timeout(Some(poll))
            .map_err(|e| self.client.unreachable(e))?;
        let mut quiet_since = Instant::now();
        loop {
            match self.message() {
                Ok(v) => {
                    let result = &v["result"];
                    if let Some(rev) = int(&result["compact_revision"]).filter(|r| *r > 0) {
                        return Err(EtcdError::Compacted(rev));
                    }
                    if result["canceled"] == Value::Bool(true) {
                        return Err(self.client.malformed(PATH, "etcd canceled the watch"));
                    }
                    let revision = int(&result["header"]["revision"])
                        .ok_or_else(|| self.client.malformed(PATH, "no revision"))?;
                    let mut events = Vec::new();
                    if let Some(Value::Array(list)) = result.get("events") {
                        for e in list {
                            let kv = self.client.key_value(PATH, &e["kv"])?;
                            events.push(match &e["type"] {
                                Value::String(t) if t == "DELETE" => Event::Delete(kv),
                                Value::Number(n) if n.as_u64() == Some(1) => Event::Delete(kv),
                                _ => Event::Put(kv),
                            });
                        }
                    }
                    return Ok((revision, events));
                }
                Err(EtcdError::Unreachable { source, .. })
                    if matches!(
                        source.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    if !keep_on() {
                        return Err(EtcdError::Stopped);
                    }
                    if quiet_since.elapsed() >= probe_after {
                        // Throws Unreachable if etcd is gone.
                        self.client.call("/v3/maintenance/status", &json!({}))?;
                        quiet_since = Instant::now();
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Reads one newline-terminated JSON message. Messages are read a byte
    /// at a time from a buffered reader, so a timeout before the first
    /// byte loses nothing; one in the middle of a message breaks the watch
    /// (the caller reconnects from its last revision).
    fn message(&mut self) -> Result<Value, EtcdError> {
        const PATH: &str = "/v3/watch";
        // Reads that time out in the middle of a message before the watch
        // is declared broken.
        const PATIENCE: u32 = 20;
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        let mut waited = 0;
        loop {
            match self.lines.read(&mut byte) {
                Ok(0) => {
                    return Err(self.client.unreachable(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "watch stream closed",
                    )))
                }
                Ok(_) if byte[0] == b'\n' => {
                    if line.iter().all(u8::is_ascii_whitespace) {
                        line.clear();
                        continue;
                    }
                    break;
                }
                Ok(_) => {
                    line.push(byte[0]);
                    if line.len() > 64 << 20 {
                        return Err(self.client.malformed(PATH, "a watch message over 64 MiB"));
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e)
                    if line.is_empty()
                        || waited >= PATIENCE
                        || !matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) =>
                {
                    return Err(self.client.unreachable(e))
                }
                // A timeout mid-message: wait a while for the rest.
                Err(_) => waited += 1,
            }
        }
        let v: Value = serde_json::from_slice(&line)
            .map_err(|e| self.client.malformed(PATH, &e.to_string()))?;
        if let Some(err) = v.get("error") {
            let message = err["message"]
                .as_str()
                .or(err.as_str())
                .unwrap_or("unknown error")
                .to_string();
            return Err(EtcdError::Refused {
                endpoint: self.client.endpoint.clone(),
                path: PATH,
                status: 200,
                message,
            });
        }
        Ok(v)
    }
}

/// The end of the range holding every key that starts with `prefix`
/// (etcd's `range_end`: the prefix with its last byte incremented).
fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // All 0xff (or empty): every key.
    vec![0]
}

/// A 64-bit integer as the gateway writes it (a string) or as a number.
fn int(v: &Value) -> Option<i64> {
    match v {
        Value::String(s) => s.parse().ok(),
        Value::Number(n) => n.as_i64(),
        _ => None,
    }
}

/// An HTTP/1.1 chunked body, de-chunked.
struct Chunked<R> {
    inner: R,
    left: u64,
    done: bool,
}

impl<R: BufRead> Chunked<R> {
    fn new(inner: R) -> Chunked<R> {
        Chunked {
            inner,
            left: 0,
            done: false,
        }
    }
}

impl<R: BufRead> Read for Chunked<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.done || buf.is_empty() {
            return Ok(0);
        }
        if self.left == 0 {
            // A timeout while reading a size line would lose a partial
            // line; sizes come in the same segment as their data, so this
            // read returns it whole or times out before its first byte.
            let mut line = String::new();
            if self.inner.read_line(&mut line)? == 0 {
                return Ok(0);
            }
            if line.trim().is_empty() {
                // The CRLF after the previous chunk's data.
                line.clear();
                if self.inner.read_line(&mut line)? == 0 {
                    return Ok(0);
                }
            }
            let size = line.trim().split(';').next().unwrap_or("");
            let size = u64::from_str_radix(size, 16).map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::InvalidData, "bad chunk size")
            })?;
            if size == 0 {
                self.done = true;
                return Ok(0);
            }
            self.left = size;
        }
        let want = buf.len().min(self.left as usize);
        let n = self.inner.read(&mut buf[..want])?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        self.left -= n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_increments_the_last_byte() {
        assert_eq!(prefix_end("/ztna/v1/"), b"/ztna/v10".to_vec());
        assert_eq!(prefix_end(""), vec![0]);
    }

    #[test]
    fn endpoints_must_be_plain_http() {
        assert!(Etcd::new("http://127.0.0.1:2379").is_ok());
        assert!(Etcd::new("http://127.0.0.1:2379/").is_ok());
        assert!(Etcd::new("https://127.0.0.1:2379").is_err());
        assert!(Etcd::new("127.0.0.1:2379").is_err());
        assert!(Etcd::new("http://127.0.0.1").is_err());
    }

    #[test]
    fn chunked_bodies_are_joined() {
        let raw = b"5\r\nhello\r\n7\r\n, world\r\n0\r\n\r\n";
        let mut out = String::new();
        Chunked::new(&raw[..]).read_to_string(&mut out).unwrap();
        assert_eq!(out, "hello, world");
    }
}
