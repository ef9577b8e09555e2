//! The operators' HTTP endpoint: `GET /metrics` (Prometheus text format 0.0.4), `/healthz`
//! (the process answers) and `/readyz` (every readiness check passes; 503 with the failing
//! checks otherwise). GET and HEAD only; one request per connection. Slow or oversized
//! requests cannot hold it: a request must arrive whole within a short deadline, heads are
//! capped, one client address holds at most a few connections, and connections beyond the
//! cap are closed by the accept thread without a word (it never reads or writes).

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Default port of the endpoint (Prometheus' allocation for exporters leaves 9464 free).
pub const DEFAULT_PORT: u16 = 9464;
const MAX_HEAD_BYTES: usize = 8 * 1024;
const MAX_CONNECTIONS: usize = 256;
/// Connections one client address may hold at once: a slow or hostile client cannot take
/// the slots that Prometheus and the kubelet's probes need.
const MAX_CONNECTIONS_PER_ADDRESS: usize = 8;
/// The whole request head must arrive within this (real clients send it in one packet).
const HEAD_DEADLINE: Duration = Duration::from_secs(3);
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// Open connections, in total and per client address.
#[derive(Default)]
struct Slots {
    total: usize,
    by_address: HashMap<IpAddr, usize>,
}

/// A connection's slot, given back when it is dropped (also when the handler panics).
struct Slot {
    slots: Arc<Mutex<Slots>>,
    address: IpAddr,
}

impl Slot {
    fn take(slots: &Arc<Mutex<Slots>>, address: IpAddr) -> Option<Slot> {
        let mut s = slots.lock().unwrap_or_else(|e| e.into_inner());
        let mine = s.by_address.get(&address).copied().unwrap_or(0);
        if s.total >= MAX_CONNECTIONS || mine >= MAX_CONNECTIONS_PER_ADDRESS {
            return None;
        }
        s.total += 1;
        *s.by_address.entry(address).or_default() += 1;
        Some(Slot { slots: slots.clone(), address })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut s = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        s.total -= 1;
        if let Some(n) = s.by_address.get_mut(&self.address) {
            *n -= 1;
            if *n == 0 {
                s.by_address.remove(&self.address);
            }
        }
    }
}

/// Binds `listen` (`host:port`; port 0 picks a free one) and serves on a thread of its own
/// for the life of the process. Returns the bound address.
pub fn serve(listen: &str) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(listen)?;
    let addr = listener.local_addr()?;
    let slots = Arc::new(Mutex::new(Slots::default()));
    std::thread::Builder::new().name("co2cast-metrics".into()).spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else {
                // Out of descriptors, typically: let closing sockets go.
                std::thread::sleep(Duration::from_millis(50));
                continue;
            };
            let Some(slot) = stream.peer_addr().ok().and_then(|peer| Slot::take(&slots, peer.ip())) else {
                // Over the cap: closed at once; the accept thread never waits on a client.
                continue;
            };
            let spawned = std::thread::Builder::new().name("co2cast-metrics-conn".into()).spawn(move || {
                let _slot = slot;
                handle(stream);
            });
            if spawned.is_err() {
                tracing::warn!(message = "Metrics endpoint: cannot start a connection thread.");
            }
        }
    })?;
    Ok(addr)
}

/// Where the request head ends (after CRLF CRLF, or LF LF from lenient clients).
fn head_end(head: &[u8]) -> Option<usize> {
    let crlf = head.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4);
    let lf = head.windows(2).position(|w| w == b"\n\n").map(|i| i + 2);
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// A request line starts with an upper-case method and a space.
fn plausible_start(head: &[u8]) -> bool {
    let method_len = head.iter().take_while(|b| b.is_ascii_uppercase()).count();
    if method_len == head.len() {
        return method_len <= 16;
    }
    (1..=16).contains(&method_len) && head[method_len] == b' '
}

fn handle(mut stream: TcpStream) {
    let _ = stream.set_write_timeout(Some(WRITE_TIMEOUT));
    let deadline = Instant::now() + HEAD_DEADLINE;
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while head_end(&head).is_none() {
        if head.len() > MAX_HEAD_BYTES {
            let _ = respond(&stream, "431 Request Header Fields Too Large", "text/plain; charset=utf-8", b"request head too large\n", false);
            return;
        }
        if !plausible_start(&head) {
            let _ = respond(&stream, "400 Bad Request", "text/plain; charset=utf-8", b"not an HTTP request\n", false);
            return;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            let _ = respond(&stream, "408 Request Timeout", "text/plain; charset=utf-8", b"request head not received in time\n", false);
            return;
        }
        let _ = stream.set_read_timeout(Some(left));
        match stream.read(&mut buf) {
            Ok(0) => return,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => continue,
            Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let line = head.split(|b| *b == b'\r' || *b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split(' ');
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    // An absolute-form target (`http://host/metrics`) names the same resource.
    let target = target.strip_prefix("http://").and_then(|t| t.find('/').map(|i| &t[i..])).unwrap_or(target);
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
    let until = Instant::now() + Duration::from_millis(500);
    while drained < 64 * 1024 && Instant::now() < until {
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
        // A connection closed unanswered reads as an empty answer.
        let _ = s.write_all(request);
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
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
        // Lenient and absolute-form requests are answered; garbage is refused at once.
        assert!(get(addr, b"GET /healthz HTTP/1.1\n\n").contains("\r\n\r\nok\n"));
        assert!(get(addr, b"GET http://x:9464/healthz HTTP/1.1\r\n\r\n").contains("\r\n\r\nok\n"));
        assert!(get(addr, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03").starts_with("HTTP/1.1 400"));
        // A check that panics fails readiness and leaves the endpoint answering.
        crate::health::set_check("test", || panic!("a broken check"));
        for _ in 0..80 {
            assert!(get(addr, b"GET /readyz HTTP/1.1\r\n\r\n").contains("not ready test: the check failed internally"));
        }
        crate::health::remove_check("test");
        assert!(get(addr, b"GET /healthz HTTP/1.1\r\n\r\n").contains("ok"));
    }

    /// Slow clients (slowloris: a byte now and then) hold a connection for the head deadline
    /// at most, and one address cannot take every slot.
    #[test]
    fn slow_clients_cannot_hold_the_endpoint() {
        let addr = serve("127.0.0.1:0").unwrap();
        let started = std::time::Instant::now();
        let slow: Vec<std::thread::JoinHandle<String>> = (0..MAX_CONNECTIONS_PER_ADDRESS)
            .map(|_| {
                std::thread::spawn(move || {
                    let mut s = TcpStream::connect(addr).unwrap();
                    for b in b"GET /healthz HTTP/1.1\r\nX: " {
                        if s.write_all(&[*b]).is_err() {
                            break;
                        }
                        std::thread::sleep(Duration::from_millis(400));
                    }
                    let mut out = String::new();
                    let _ = s.read_to_string(&mut out);
                    out
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(300));
        // This address holds its share: a further connection is closed without an answer.
        assert_eq!(get(addr, b"GET /healthz HTTP/1.1\r\n\r\n"), "");
        for t in slow {
            assert!(t.join().unwrap().starts_with("HTTP/1.1 408"));
        }
        assert!(started.elapsed() < HEAD_DEADLINE + Duration::from_secs(2), "{:?}", started.elapsed());
        // Their slots are back.
        assert!(get(addr, b"GET /healthz HTTP/1.1\r\n\r\n").contains("ok"));
    }
}
