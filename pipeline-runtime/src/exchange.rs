//! The data exchange between hosts: after working on its share, each host sends
//! every other host the records that host owns, over one TCP connection per pair,
//! and receives its own from each of them.
//!
//! The wire format is newline-delimited JSON: a header line
//! `{"deployment_id":..,"epoch":..,"from":..,"records":n}` and then `n` lines of
//! `[key, value]`. A connection from another deployment or epoch is refused, so a
//! straggler from before a restart cannot mix into the result.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::progress::Progress;

/// How long a host keeps trying to reach a peer, and waits for a peer's records.
const PEER_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Serialize, Deserialize)]
struct Header {
    deployment_id: String,
    epoch: u64,
    from: u32,
    records: u64,
}

/// Who this host is in the exchange.
#[derive(Debug, Clone)]
pub struct Exchange<'a> {
    pub deployment_id: &'a str,
    pub epoch: u64,
    pub me: u32,
    /// Every host's exchange address, by host id.
    pub peers: &'a [SocketAddr],
}

fn connect(peer: SocketAddr) -> std::io::Result<TcpStream> {
    let deadline = Instant::now() + PEER_TIMEOUT;
    loop {
        match TcpStream::connect_timeout(&peer, Duration::from_secs(2)) {
            Ok(stream) => return Ok(stream),
            Err(e) if Instant::now() >= deadline => {
                return Err(std::io::Error::new(e.kind(), format!("cannot reach peer {peer}: {e}")));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

fn send<V: Serialize>(
    exchange: &Exchange<'_>,
    peer: SocketAddr,
    records: &BTreeMap<String, V>,
    progress: &Progress,
) -> std::io::Result<()> {
    let mut out = BufWriter::new(connect(peer)?);
    let header = Header {
        deployment_id: exchange.deployment_id.to_owned(),
        epoch: exchange.epoch,
        from: exchange.me,
        records: records.len() as u64,
    };
    serde_json::to_writer(&mut out, &header)?;
    out.write_all(b"\n")?;
    for record in records {
        serde_json::to_writer(&mut out, &record)?;
        out.write_all(b"\n")?;
        progress.records_sent.fetch_add(1, Ordering::Relaxed);
    }
    out.flush()
}

fn receive_one<V: DeserializeOwned>(
    exchange: &Exchange<'_>,
    stream: TcpStream,
) -> std::io::Result<Option<(u32, BTreeMap<String, V>)>> {
    stream.set_read_timeout(Some(PEER_TIMEOUT))?;
    let from_address = stream.peer_addr()?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let header: Header = serde_json::from_str(&line)?;
    if header.deployment_id != exchange.deployment_id || header.epoch != exchange.epoch {
        eprintln!(
            "exchange: refused records from {from_address} for deployment {} epoch {} (this is {} epoch {})",
            header.deployment_id, header.epoch, exchange.deployment_id, exchange.epoch
        );
        return Ok(None);
    }
    let mut records = BTreeMap::new();
    for _ in 0..header.records {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("host {} stopped sending after {} of {} records", header.from, records.len(), header.records),
            ));
        }
        let (key, value): (String, V) = serde_json::from_str(&line)?;
        records.insert(key, value);
    }
    Ok(Some((header.from, records)))
}

/// Sends `outgoing[p]` to every peer `p` other than this host, and returns what each
/// other peer sent here, by host id.
pub fn run<V: Serialize + DeserializeOwned + Send + Sync>(
    exchange: &Exchange<'_>,
    listener: &TcpListener,
    outgoing: &[BTreeMap<String, V>],
    progress: &Progress,
) -> std::io::Result<Vec<(u32, BTreeMap<String, V>)>> {
    let hosts = exchange.peers.len() as u32;
    std::thread::scope(|scope| {
        let senders: Vec<_> = (0..hosts)
            .filter(|&p| p != exchange.me)
            .map(|p| {
                let peer = exchange.peers[p as usize];
                let records = &outgoing[p as usize];
                scope.spawn(move || send(exchange, peer, records, progress))
            })
            .collect();
        let mut received: Vec<(u32, BTreeMap<String, V>)> = Vec::new();
        while received.len() + 1 < hosts as usize {
            let (stream, _) = listener.accept()?;
            let Some((from, records)) = receive_one(exchange, stream)? else { continue };
            if from >= hosts || from == exchange.me || received.iter().any(|(f, _)| *f == from) {
                return Err(std::io::Error::other(format!("unexpected records from host {from}")));
            }
            progress.records_received.fetch_add(records.len() as u64, Ordering::Relaxed);
            received.push((from, records));
        }
        for sender in senders {
            sender.join().map_err(|_| std::io::Error::other("a sender thread panicked"))??;
        }
        Ok(received)
    })
}
