//! The operators' HTTP endpoint: `GET /metrics` (Prometheus text format 0.0.4), `/healthz`
//! (the process answers) and `/readyz` (every readiness check passes; 503 with the failing
//! checks otherwise). GET and HEAD only; one request per connection. Slow or oversized
//! requests cannot hold it: reads time out, heads are capped, and connections beyond a small
//! number are answered 503 at once.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// Default port of the endpoint (Prometheus' allocation for exporters leaves 9464 free).
pub const DEFAULT_PORT: u16 = 9464;
const MAX_HEAD_BYTES: usize = 8 * 1024;
const MAX_CONNECTIONS: usize = 64;
const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// Binds `listen` (`host:port`; port 0 picks a free one) and serves on a thread of its own
/// for the life of the process. Returns the bound address.
pub fn serve(listen: &str) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(listen)?;
    let addr = listener.local_addr()?;
    let active = Arc::new(AtomicUsize::new(0));
    std::thread::Builder::new().name("co2cast-metrics".into()).spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else {
                // Out of descriptors, typically: let closing sockets go.
                std::thread::sleep(Duration::from_millis(50));
                continue;
            };
            if active.fetch_add(1, Ordering::AcqRel) >= MAX_CONNECTIONS {
                active.fetch_sub(1, Ordering::AcqRel);
                let _ = stream.set_write_timeout(Some(Duration::from_millis(200)));
                let _ = respond(&stream, "503 Service Unavailable", "text/plain; charset=utf-8", b"busy\n", false);
                continue;
            }
            let active = active.clone();
            let spawned = std::thread::Builder::new().name("co2cast-metrics-conn".into()).spawn(move || {
                handle(stream);
                active.fetch_sub(1, Ordering::AcqRel);
            });
            if spawned.is_err() {
                tracing::warn!(message = "Metrics endpoint: cannot start a connection thread.");
            }
        }
    })?;
    Ok(addr)
}

fn handle(mut stream: TcpStream) {
    let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
    let _ = stream.set_write_timeout(Some(IO_TIMEOUT));
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        if head.len() > MAX_HEAD_BYTES {
            let _ = respond(&stream, "431 Request Header Fields Too Large", "text/plain; charset=utf-8", b"request head too large\n", false);
            return;
        }
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let line = head.split(|b| *b == b'\r').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split(' ');
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let head_only = method == "HEAD";
    if method != "GET" && !head_only {
        let _ = respond(&stream, "405 Method Not Allowed", "text/plain; charset=utf-8", b"GET or HEAD only\n", false);
        return;
    }
    let (status, ctype, body) = answer(path);
    let _ = respond(&stream, status, ctype, body.as_bytes(), head_only);
}

/// Status, content type and body for a path.
pub fn answer(path: &str) -> (&'static str, &'static str, String) {
    const TEXT: &str = "text/plain; charset=utf-8";
    match path {
        "/metrics" => ("200 OK", "text/plain; version=0.0.4; charset=utf-8", crate::render()),
        "/healthz" => ("200 OK", TEXT, "ok\n".into()),
        "/readyz" => {
            let checks = crate::health::readiness();
            let mut body = String::new();
            let mut ready = true;
            for (name, verdict) in &checks {
                match verdict {
                    Ok(()) => body.push_str(&format!("ok {name}\n")),
                    Err(why) => {
                        ready = false;
                        body.push_str(&format!("not ready {name}: {why}\n"));
                    }
                }
            }
            if ready {
                ("200 OK", TEXT, format!("ready\n{body}"))
            } else {
                ("503 Service Unavailable", TEXT, body)
            }
        }
        _ => ("404 Not Found", TEXT, "not found: try /metrics, /healthz or /readyz\n".into()),
    }
}

fn respond(mut stream: &TcpStream, status: &str, ctype: &str, body: &[u8], head_only: bool) -> std::io::Result<()> {
    let header = format!("HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
    stream.write_all(header.as_bytes())?;
    if !head_only {
        stream.write_all(body)?;
    }
    stream.flush()?;
    // Closing with unread request bytes would reset the connection and could destroy the
    // answer before the client reads it: end our side, then drain a little.
    stream.shutdown(std::net::Shutdown::Write)?;
    let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
    let mut sink = [0u8; 4096];
    let mut drained = 0;
    while drained < 64 * 1024 {
        match stream.read(&mut sink) {
            Ok(0) | Err(_) => break,
            Ok(n) => drained += n,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(addr: SocketAddr, request: &[u8]) -> String {
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(request).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    }

    #[test]
    fn serves_metrics_health_and_readiness_and_refuses_the_rest() {
        crate::enable(crate::Role::Sql, "0.0.0-test", "model-test");
        let addr = serve("127.0.0.1:0").unwrap();
        let m = get(addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(m.starts_with("HTTP/1.1 200 OK"), "{m}");
        assert!(m.contains("co2cast_build_info{"), "{m}");
        assert!(get(addr, b"GET /healthz HTTP/1.0\r\n\r\n").contains("\r\n\r\nok\n"));
        crate::health::set_check("test", || Err("still warming up".into()));
        let r = get(addr, b"GET /readyz HTTP/1.1\r\n\r\n");
        assert!(r.starts_with("HTTP/1.1 503") && r.contains("not ready test: still warming up"), "{r}");
        crate::health::set_check("test", || Ok(()));
        assert!(get(addr, b"GET /readyz?verbose HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 200"));
        crate::health::remove_check("test");
        let head = get(addr, b"HEAD /metrics HTTP/1.1\r\n\r\n");
        assert!(head.ends_with("\r\n\r\n"), "HEAD has no body: {head}");
        assert!(get(addr, b"POST /metrics HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 405"));
        assert!(get(addr, b"GET /../etc/passwd HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 404"));
        let huge = format!("GET /metrics HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(20_000));
        assert!(get(addr, huge.as_bytes()).starts_with("HTTP/1.1 431"));
        // A client that never finishes its request holds a connection only until the read
        // timeout, and never blocks others.
        let idle: Vec<TcpStream> = (0..4).map(|_| TcpStream::connect(addr).unwrap()).collect();
        assert!(get(addr, b"GET /healthz HTTP/1.1\r\n\r\n").contains("ok"));
        drop(idle);
    }
}
