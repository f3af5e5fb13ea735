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
    use std::io::{Read, Write};
    use std::net::TcpStream;

    fn get(addr: SocketAddr, path: &str) -> String {
        let mut s = TcpStream::connect(addr).unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut r = String::new();
        s.read_to_string(&mut r).unwrap();
        r
    }

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
        let ok = get(addr, "/hello");
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "waited {:?} behind idle connections",
            started.elapsed()
        );
        assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
        assert!(ok.contains("Content-Type: text/plain"), "{ok}");
        assert!(ok.ends_with("\r\n\r\nhi\n"), "{ok}");
        let missing = get(addr, "/other");
        assert!(missing.starts_with("HTTP/1.1 404"), "{missing}");
        assert!(missing.ends_with("try GET /hello\n"), "{missing}");
        drop(idle);
        stop.store(true, Ordering::Relaxed);
        thread.join().unwrap();
    }
}
