//! A small HTTP endpoint for metrics and status pages (the relay's
//! `/metrics`, the agent's `/status` and `/metrics`), on `tiny_http`.
//!
//! `tiny_http` reads each connection's request on a thread of its own, so
//! an idle or slow client cannot hold up a scrape; the one serving thread
//! here only renders pages, from state the program already publishes, so
//! nothing on a packet path waits for it.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

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

/// Serves `GET` requests on `addr` until `stop` is set: `route` maps a
/// path to its page (`None`: 404, with `not_found` as the body). Binds
/// before returning (a taken port is the caller's error) and returns the
/// bound address and the serving thread.
pub fn serve(
    addr: SocketAddr,
    thread_name: &str,
    stop: Arc<AtomicBool>,
    not_found: &'static str,
    route: impl Fn(&str) -> Option<Page> + Send + 'static,
) -> std::io::Result<(SocketAddr, JoinHandle<()>)> {
    let server = tiny_http::Server::http(addr).map_err(std::io::Error::other)?;
    let local = server
        .server_addr()
        .to_ip()
        .ok_or_else(|| std::io::Error::other("the HTTP endpoint is not on an IP address"))?;
    let handle = std::thread::Builder::new()
        .name(thread_name.into())
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match server.recv_timeout(Duration::from_millis(100)) {
                    Ok(Some(request)) => answer(request, not_found, &route),
                    Ok(None) => {}
                    Err(e) => tracing::debug!(error = %e, "HTTP endpoint: bad request"),
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
    use std::io::{Read, Write};
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

fn answer(request: tiny_http::Request, not_found: &str, route: &dyn Fn(&str) -> Option<Page>) {
    let page = (*request.method() == tiny_http::Method::Get)
        .then(|| route(request.url()))
        .flatten();
    let (code, content_type, body) = match page {
        Some(p) => (200, p.content_type, p.body),
        None => (404, "text/plain; charset=utf-8", not_found.to_owned()),
    };
    let mut response = tiny_http::Response::from_string(body).with_status_code(code);
    if let Ok(h) = tiny_http::Header::from_bytes(&b"Content-Type"[..], content_type.as_bytes()) {
        response.add_header(h);
    }
    if let Err(e) = request.respond(response) {
        tracing::debug!(error = %e, "HTTP endpoint: answer not sent");
    }
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
        let idle: Vec<TcpStream> = (0..3).map(|_| TcpStream::connect(addr).unwrap()).collect();
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
        drop(idle);
        stop.store(true, Ordering::Relaxed);
        thread.join().unwrap();
    }
}
