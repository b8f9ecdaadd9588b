//! An in-process fault-injecting upstream, in addition to (never instead of) the real registry:
//! canned statuses, a server that never answers, and a throttling relay to a real registry.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

/// What the fault server does with each connection.
#[derive(Debug, Clone)]
pub enum Fault {
    /// Answer every request with this status and an OCI error body.
    Status(u16),
    /// Accept, read the request, never answer.
    Stall,
    /// Relay to a real server, sending its answers back at this many bytes per second.
    Throttle {
        to: SocketAddr,
        bytes_per_sec: usize,
    },
}

/// A running fault server. Stops accepting on drop.
pub struct FaultServer {
    pub addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl FaultServer {
    pub fn start(fault: Fault) -> FaultServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind fault server");
        let addr = listener.local_addr().expect("fault server addr");
        let connections = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (conns, stopped) = (Arc::clone(&connections), Arc::clone(&stop));
        thread::spawn(move || {
            for stream in listener.incoming() {
                if stopped.load(Ordering::Relaxed) {
                    return;
                }
                let Ok(stream) = stream else { continue };
                conns.fetch_add(1, Ordering::Relaxed);
                let fault = fault.clone();
                let stopped = Arc::clone(&stopped);
                thread::spawn(move || serve(stream, fault, stopped));
            }
        });
        FaultServer {
            addr,
            connections,
            stop,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }
}

impl Drop for FaultServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(self.addr); // wake the accept loop
    }
}

fn serve(mut stream: TcpStream, fault: Fault, stop: Arc<AtomicBool>) {
    match fault {
        Fault::Status(code) => {
            while read_head(&mut stream).is_some() {
                let body =
                    format!(r#"{{"errors":[{{"code":"UNKNOWN","message":"injected {code}"}}]}}"#);
                let resp = format!(
                    "HTTP/1.1 {code} Injected\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
                if stream.write_all(resp.as_bytes()).is_err() {
                    return;
                }
            }
        }
        Fault::Stall => {
            let _ = read_head(&mut stream);
            while !stop.load(Ordering::Relaxed) {
                thread::sleep(Duration::from_millis(100));
            }
        }
        Fault::Throttle { to, bytes_per_sec } => {
            let Ok(upstream) = TcpStream::connect(to) else {
                return;
            };
            let (mut up_read, mut client_write) = (
                upstream.try_clone().expect("clone"),
                stream.try_clone().expect("clone"),
            );
            let (mut client_read, mut up_write) = (stream, upstream);
            thread::spawn(move || {
                let _ = std::io::copy(&mut client_read, &mut up_write);
                let _ = up_write.shutdown(Shutdown::Write);
            });
            let chunk = (bytes_per_sec / 20).max(1);
            let mut buf = vec![0u8; chunk];
            loop {
                match up_read.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if client_write.write_all(&buf[..n]).is_err() {
                            break;
                        }
                        thread::sleep(Duration::from_millis(50));
                    }
                }
            }
            let _ = client_write.shutdown(Shutdown::Write);
        }
    }
}

/// Reads one request head (requests from the proxy have no body). `None` at EOF.
fn read_head(stream: &mut TcpStream) -> Option<()> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => return None,
        }
    }
    Some(())
}
