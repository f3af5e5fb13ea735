//! A small HTTP endpoint for metrics and status pages (the relay's
//! `/metrics`, the agent's `/status` and `/metrics`): `GET` only, one
//! request per connection, answered with `Connection: close`.
//!
//! Each accepted connection is read on a thread of its own, with a deadline
//! ([`REQUEST_DEADLINE`]) for the whole request and a size cap
//! ([`MAX_REQUEST`]), so idle or slow clients cannot hold up a scrape; at
//! most [`MAX_CONNECTIONS`] are read at once, and a connection beyond that
//! is closed at once. Pages are rendered from state the program already
//! publishes, so nothing on a packet path waits for this endpoint.
//! (`tiny_http`, used before, hands connections to a thread pool that can
//! queue a scrape behind idle connections: a scrape waited for good behind
//! a dozen of them.)

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// One page: its content type and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    /// The `Content-Type` header.
    pub content_type: &'static str,
    /// The body.
    pub body: String,
}

/// The content type of OpenMetrics text (what `prometheus-client` writes).
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// How long a client has to send its whole request head, from accept.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(2);
/// The largest request head read; a longer one is refused.
pub const MAX_REQUEST: usize = 4096;
/// Connections read at once; beyond that, new ones are closed unanswered.
pub const MAX_CONNECTIONS: usize = 64;
/// How long writing an answer may block on a client that does not read.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the accept loop looks at the stop flag when idle.
const STOP_POLL: Duration = Duration::from_millis(50);

type Route = dyn Fn(&str) -> Option<Page> + Send + Sync;

/// Serves `GET` requests on `addr` until `stop` is set: `route` maps a
/// path to its page (`None`: 404, with `not_found` as the body). Binds
/// before returning (a taken port is the caller's error) and returns the
/// bound address and the accepting thread.
pub fn serve(
    addr: SocketAddr,
    thread_name: &str,
    stop: Arc<AtomicBool>,
    not_found: &'static str,
    route: impl Fn(&str) -> Option<Page> + Send + Sync + 'static,
) -> std::io::Result<(SocketAddr, JoinHandle<()>)> {
    let listener = TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    let local = listener.local_addr()?;
    let route: Arc<Route> = Arc::new(route);
    let live = Arc::new(AtomicUsize::new(0));
    let name = thread_name.to_owned();
    let handle = std::thread::Builder::new()
        .name(name.clone())
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let stream = match listener.accept() {
                    Ok((stream, _)) => stream,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(STOP_POLL);
                        continue;
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "HTTP endpoint: accept failed");
                        std::thread::sleep(STOP_POLL);
                        continue;
                    }
                };
                if live.fetch_add(1, Ordering::Relaxed) >= MAX_CONNECTIONS {
                    live.fetch_sub(1, Ordering::Relaxed);
                    tracing::debug!("HTTP endpoint: too many connections; one closed");
                    continue;
                }
                let (route, live_here) = (Arc::clone(&route), Arc::clone(&live));
                let spawned = std::thread::Builder::new()
                    .name(format!("{name}-conn"))
                    .spawn(move || {
                        if let Err(e) = answer(stream, not_found, &*route) {
                            tracing::debug!(error = %e, "HTTP endpoint: request not answered");
                        }
                        live_here.fetch_sub(1, Ordering::Relaxed);
                    });
                if let Err(e) = spawned {
                    live.fetch_sub(1, Ordering::Relaxed);
                    tracing::debug!(error = %e, "HTTP endpoint: cannot spawn a connection thread");
                }
            }
        })?;
    Ok((local, handle))
}

/// An answer to [`get`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The status code.
    pub code: u16,
    /// The status line and headers.
    pub head: String,
    /// The body.
    pub body: String,
}

/// A `GET` of `path` from `addr`: the client side of these pages (`agent
/// status`, tests). Bounded: 2 s to connect, 5 s to read.
pub fn get(addr: SocketAddr, path: &str) -> std::io::Result<Response> {
    let mut stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let malformed =
        || std::io::Error::new(std::io::ErrorKind::InvalidData, "malformed HTTP answer");
    let (head, body) = response.split_once("\r\n\r\n").ok_or_else(malformed)?;
    let code = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(malformed)?;
    Ok(Response {
        code,
        head: head.to_owned(),
        body: body.to_owned(),
    })
}

/// Reads one request head from `stream` (within [`REQUEST_DEADLINE`], at
/// most [`MAX_REQUEST`] bytes) and answers it.
fn answer(mut stream: TcpStream, not_found: &str, route: &Route) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_write_timeout(Some(WRITE_TIMEOUT))?;
    let deadline = Instant::now() + REQUEST_DEADLINE;
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let left = deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::TimedOut, "request too slow"))?;
        stream.set_read_timeout(Some(left))?;
        let n = stream.read(&mut buf)?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "connection closed mid-request",
            ));
        }
        head.extend_from_slice(&buf[..n]);
        if head.len() > MAX_REQUEST {
            return respond(
                &mut stream,
                431,
                "text/plain; charset=utf-8",
                "request too large\n",
            );
        }
    }
    let line = head.split(|b| *b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.trim_end().split(' ');
    let (method, path) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
    );
    // The page for the path without its query string.
    let path = path.split('?').next().unwrap_or_default();
    match (method == "GET").then(|| route(path)).flatten() {
        Some(p) => respond(&mut stream, 200, p.content_type, &p.body),
        None => respond(&mut stream, 404, "text/plain; charset=utf-8", not_found),
    }
}

/// Writes a whole answer and closes the connection.
fn respond(
    stream: &mut TcpStream,
    code: u16,
    content_type: &str,
    body: &str,
) -> std::io::Result<()> {
    let reason = match code {
        200 => "OK",
        404 => "Not Found",
        _ => "Request Header Fields Too Large",
    };
    let head = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body.as_bytes())?;
    stream.flush()?;
    let _ = stream.shutdown(std::net::Shutdown::Write);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpStream;

    #[test]
    fn routes_pages_and_answers_404_otherwise_despite_idle_clients() {
        let stop = Arc::new(AtomicBool::new(false));
        let (addr, thread) = serve(
            "127.0.0.1:0".parse().unwrap(),
            "http-test",
            stop.clone(),
            "try GET /hello\n",
            |path| {
                (path == "/hello").then(|| Page {
                    content_type: "text/plain",
                    body: "hi\n".into(),
                })
            },
        )
        .unwrap();
        // Idle connections first: they must not hold up the others.
        let idle: Vec<TcpStream> = (0..12).map(|_| TcpStream::connect(addr).unwrap()).collect();
        let started = std::time::Instant::now();
        let ok = get(addr, "/hello").unwrap();
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "waited {:?} behind idle connections",
            started.elapsed()
        );
        assert_eq!((ok.code, ok.body.as_str()), (200, "hi\n"), "{ok:?}");
        assert!(ok.head.contains("Content-Type: text/plain"), "{ok:?}");
        let missing = get(addr, "/other").unwrap();
        assert_eq!(
            (missing.code, missing.body.as_str()),
            (404, "try GET /hello\n")
        );
        // An idle client is cut off after the request deadline.
        let mut first = idle.into_iter().next().unwrap();
        first
            .set_read_timeout(Some(REQUEST_DEADLINE + Duration::from_secs(2)))
            .unwrap();
        let mut rest = Vec::new();
        assert_eq!(first.read_to_end(&mut rest).unwrap(), 0, "{rest:?}");
        // A request head beyond the cap is refused.
        let mut big = TcpStream::connect(addr).unwrap();
        big.write_all(format!("GET /{} HTTP/1.1\r\n", "a".repeat(MAX_REQUEST)).as_bytes())
            .unwrap();
        let mut answer = String::new();
        big.read_to_string(&mut answer).unwrap();
        assert!(answer.starts_with("HTTP/1.1 431 "), "{answer}");
        stop.store(true, Ordering::Relaxed);
        thread.join().unwrap();
    }
}
