//! One TCP connection carried through the tunnel: a kernel socket on one
//! side (the application's connection in proxy mode, the service's target
//! at a connector), a smoltcp socket on the other, and the bytes pumped
//! between them.
//!
//! Half-closes travel both ways (EOF on the kernel socket becomes a FIN in
//! the tunnel and the reverse), and resets too: a failed kernel socket
//! aborts the smoltcp socket (RST into the tunnel), and a smoltcp socket
//! that was reset or aborted closes the kernel socket with `SO_LINGER` 0
//! (RST to the application).

use std::io::{self, Read, Write};

use mio::net::TcpStream;
use smoltcp::iface::SocketHandle;
use smoltcp::socket::tcp;

/// A pumped connection.
#[derive(Debug)]
pub struct TcpFlow {
    /// The kernel socket.
    pub stream: TcpStream,
    /// The smoltcp socket.
    pub handle: SocketHandle,
    /// Still connecting (a connector's dial to the target).
    pub connecting: bool,
    /// The kernel socket said EOF.
    stream_eof: bool,
    /// We shut the kernel socket's write side.
    write_shut: bool,
    /// Bytes moved kernel → tunnel.
    pub bytes_in: u64,
    /// Bytes moved tunnel → kernel.
    pub bytes_out: u64,
}

/// What a pump found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlowStatus {
    /// Still carrying bytes.
    Open,
    /// Finished: remove the flow (and its smoltcp socket once closed).
    Done,
}

enum Step {
    Moved(usize),
    Blocked,
    Eof,
    Failed,
}

impl TcpFlow {
    /// A flow over an established (or, with `connecting`, still
    /// connecting) kernel socket.
    pub fn new(stream: TcpStream, handle: SocketHandle, connecting: bool) -> TcpFlow {
        TcpFlow {
            stream,
            handle,
            connecting,
            stream_eof: false,
            write_shut: false,
            bytes_in: 0,
            bytes_out: 0,
        }
    }

    /// Moves what can move without blocking, both ways.
    pub fn pump(&mut self, sock: &mut tcp::Socket<'_>) -> FlowStatus {
        if self.connecting {
            match self.check_connected() {
                Ok(true) => self.connecting = false,
                Ok(false) => {
                    // The tunnel side gave up before the target answered.
                    if !sock.is_open() {
                        return FlowStatus::Done;
                    }
                    return FlowStatus::Open;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "target connection failed");
                    sock.abort();
                    return FlowStatus::Done;
                }
            }
        }
        // Kernel -> tunnel.
        while !self.stream_eof && sock.can_send() {
            let stream = &mut self.stream;
            let step = sock.send(|buf| match stream.read(buf) {
                Ok(0) => (0, Step::Eof),
                Ok(n) => (n, Step::Moved(n)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => (0, Step::Blocked),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => (0, Step::Moved(0)),
                Err(_) => (0, Step::Failed),
            });
            match step {
                Ok(Step::Moved(n)) => self.bytes_in += n as u64,
                Ok(Step::Blocked) => break,
                Ok(Step::Eof) => {
                    self.stream_eof = true;
                    sock.close();
                }
                Ok(Step::Failed) | Err(_) => {
                    sock.abort();
                    return FlowStatus::Done;
                }
            }
        }
        // Tunnel -> kernel.
        while sock.can_recv() {
            let stream = &mut self.stream;
            let step = sock.recv(|buf| match stream.write(buf) {
                Ok(0) => (0, Step::Failed),
                Ok(n) => (n, Step::Moved(n)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => (0, Step::Blocked),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => (0, Step::Moved(0)),
                Err(_) => (0, Step::Failed),
            });
            match step {
                Ok(Step::Moved(n)) => self.bytes_out += n as u64,
                Ok(Step::Blocked) => break,
                Ok(Step::Eof) | Ok(Step::Failed) | Err(_) => {
                    sock.abort();
                    return FlowStatus::Done;
                }
            }
        }
        use tcp::State::*;
        let state = sock.state();
        let peer_finished = matches!(state, CloseWait | LastAck | Closing | TimeWait | Closed);
        if peer_finished && !sock.can_recv() && !self.write_shut {
            if state == Closed && !self.stream_eof && !self.write_shut {
                // Closed without our FIN: reset or abort. Pass the reset on.
                self.reset_stream();
                return FlowStatus::Done;
            }
            let _ = self.stream.shutdown(std::net::Shutdown::Write);
            self.write_shut = true;
        }
        if self.write_shut && self.stream_eof && matches!(state, Closed | TimeWait) {
            return FlowStatus::Done;
        }
        if state == Closed && self.write_shut {
            return FlowStatus::Done;
        }
        FlowStatus::Open
    }

    /// Closes the kernel socket with a reset (the tunnel side is gone).
    pub fn reset_stream(&mut self) {
        let _ = socket2::SockRef::from(&self.stream).set_linger(Some(std::time::Duration::ZERO));
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
        self.write_shut = true;
        self.stream_eof = true;
    }

    fn check_connected(&mut self) -> io::Result<bool> {
        if let Some(e) = self.stream.take_error()? {
            return Err(e);
        }
        match self.stream.peer_addr() {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(false),
            Err(e) => Err(e),
        }
    }
}
