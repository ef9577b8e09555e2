//! `co2cast broker`: a development broker for multi-process runs on one machine. It hosts
//! librdkafka's mock cluster (real Kafka protocol, a bounded log per partition) with co2cast's
//! topics, and accepts clients on a fixed address. Clients bootstrap there and then talk to
//! the cluster's own loopback port, which the metadata names: one machine only.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

#[derive(clap::Args)]
pub struct Args {
    /// Address clients bootstrap from (`--brokers` of `run` and `replay`).
    #[arg(long, default_value = "127.0.0.1:9092")]
    listen: String,
}

pub fn run(a: Args) -> Result<(), Box<dyn std::error::Error>> {
    let listener = TcpListener::bind(&a.listen).map_err(|e| format!("--listen {}: {e}", a.listen))?;
    let cluster = co2cast_pipeline::embedded::start_cluster().map_err(|e| format!("starting the mock cluster: {e}"))?;
    let upstream = cluster.bootstrap_servers();
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        ctrlc::set_handler(move || stop.store(true, Ordering::Relaxed)).map_err(|e| format!("cannot install the SIGINT/SIGTERM handler: {e}"))?;
    }
    listener.set_nonblocking(true)?;
    let mut last_warning: Option<std::time::Instant> = None;
    println!(
        "broker listening on {} (librdkafka mock cluster at {upstream}; a development broker: each partition keeps a bounded log of a few MB and nothing survives a restart; co2cast's topics created); stop with Ctrl-C",
        listener.local_addr()?
    );
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((client, _)) => {
                let upstream = upstream.split(',').next().unwrap_or_default().to_string();
                std::thread::spawn(move || {
                    if let Err(e) = forward(client, &upstream) {
                        tracing::debug!(message = "Broker connection ended.", error = %e);
                    }
                });
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => {
                // Out of file descriptors, say: wait, and say so at most once a second.
                if last_warning.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                    tracing::warn!(message = "Accepting a broker connection failed.", error = %e);
                    last_warning = Some(std::time::Instant::now());
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
    drop(cluster);
    Ok(())
}

/// Copies bytes both ways between a client and the cluster until either side closes or
/// fails; then both connections are closed, which ends the other direction's copy too (a
/// Kafka connection is request-response: half of one is of no use).
fn forward(client: TcpStream, upstream: &str) -> std::io::Result<()> {
    client.set_nonblocking(false)?;
    let server = TcpStream::connect_timeout(&upstream.parse().map_err(std::io::Error::other)?, Duration::from_secs(5))?;
    let (mut c_read, mut s_write) = (client.try_clone()?, server.try_clone()?);
    let (mut s_read, mut c_write) = (server, client);
    let (c_close, s_close) = (c_write.try_clone()?, s_read.try_clone()?);
    let up = std::thread::spawn(move || {
        let _ = copy(&mut c_read, &mut s_write);
        let _ = s_write.shutdown(Shutdown::Both);
        let _ = c_read.shutdown(Shutdown::Both);
    });
    let _ = copy(&mut s_read, &mut c_write);
    let _ = c_close.shutdown(Shutdown::Both);
    let _ = s_close.shutdown(Shutdown::Both);
    let _ = up.join();
    Ok(())
}

fn copy(from: &mut TcpStream, to: &mut TcpStream) -> std::io::Result<()> {
    let mut buf = [0u8; 64 * 1024];
    loop {
        let n = from.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        to.write_all(&buf[..n])?;
    }
}
