//! A host's HTTP endpoint, which the coordinator drives:
//!
//! - `GET /status`: who this host is, its phase and its progress counts;
//! - `POST /start` with `{"deployment_id", "epoch", "peers": [exchange addresses]}`:
//!   begin work on this host's share;
//! - `GET /result`: this host's records once it is done, as `{"records": [[key, value]]}`
//!   with values rendered as text;
//! - `POST /restart`: a coordinated restart; the host answers, then exits with
//!   [`RESTART_EXIT_CODE`](crate::contract::RESTART_EXIT_CODE) so that its supervisor starts it again.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use serde_json::json;

use crate::contract::{HostStatus, Phase, StartOrder, RESTART_EXIT_CODE};
use crate::progress::Progress;

/// What the HTTP thread and the worker thread share.
#[derive(Debug)]
pub struct HostState {
    pub host_id: u32,
    pub deployment_id: String,
    /// Differs for every process, so the coordinator can tell a restarted host apart.
    pub instance: String,
    pub exchange_address: SocketAddr,
    pub storage_dir: Option<PathBuf>,
    pub memory_limit_bytes: Option<u64>,
    pub progress: Arc<Progress>,
    pub phase: Mutex<(Phase, Option<String>)>,
    pub epoch: Mutex<Option<u64>>,
    pub result: Mutex<Option<Vec<(String, String)>>>,
    pub start: Mutex<Option<mpsc::Sender<StartOrder>>>,
}

impl HostState {
    pub fn set_phase(&self, phase: Phase, error: Option<String>) {
        *self.phase.lock().unwrap_or_else(|p| p.into_inner()) = (phase, error);
    }

    fn status(&self) -> HostStatus {
        let (phase, error) = self.phase.lock().unwrap_or_else(|p| p.into_inner()).clone();
        HostStatus {
            host_id: self.host_id,
            deployment_id: self.deployment_id.clone(),
            instance: self.instance.clone(),
            phase,
            error,
            epoch: *self.epoch.lock().unwrap_or_else(|p| p.into_inner()),
            exchange_address: self.exchange_address,
            storage_dir: self.storage_dir.clone(),
            memory_limit_bytes: self.memory_limit_bytes,
            records_read: self.progress.records_read.load(Ordering::Relaxed),
            records_sent: self.progress.records_sent.load(Ordering::Relaxed),
            records_received: self.progress.records_received.load(Ordering::Relaxed),
        }
    }

    fn start(&self, body: &str) -> (u16, serde_json::Value) {
        let order: StartOrder = match serde_json::from_str(body) {
            Ok(order) => order,
            Err(e) => return (400, json!({"error": format!("a start order is {{deployment_id, epoch, peers}}: {e}")})),
        };
        if order.deployment_id != self.deployment_id {
            let error = format!("this host belongs to deployment {}, not {}", self.deployment_id, order.deployment_id);
            return (409, json!({ "error": error }));
        }
        if order.peers.get(self.host_id as usize) != Some(&self.exchange_address) {
            let error = format!(
                "the peer list must name this host's exchange address {} at position {}",
                self.exchange_address, self.host_id
            );
            return (400, json!({ "error": error }));
        }
        let Some(sender) = self.start.lock().unwrap_or_else(|p| p.into_inner()).take() else {
            return (409, json!({"error": "this host has already started; order a restart to run again"}));
        };
        *self.epoch.lock().unwrap_or_else(|p| p.into_inner()) = Some(order.epoch);
        let _ = sender.send(order);
        (200, json!({"started": true}))
    }

    fn result(&self) -> (u16, serde_json::Value) {
        match &*self.result.lock().unwrap_or_else(|p| p.into_inner()) {
            Some(records) => (200, json!({ "records": records })),
            None => {
                let (phase, _) = self.phase.lock().unwrap_or_else(|p| p.into_inner()).clone();
                (409, json!({"error": format!("no result yet: the host is {phase:?}")}))
            }
        }
    }
}

fn respond(request: tiny_http::Request, status: u16, body: &serde_json::Value) {
    let header = tiny_http::Header::from_bytes("Content-Type", "application/json").expect("a valid header");
    let response = tiny_http::Response::from_string(body.to_string()).with_status_code(status).with_header(header);
    let _ = request.respond(response);
}

/// Serves the host's endpoint until the process exits.
pub fn serve(server: tiny_http::Server, state: Arc<HostState>) {
    for mut request in server.incoming_requests() {
        let method = request.method().clone();
        let path = request.url().split('?').next().unwrap_or("").to_owned();
        let (status, body) = match (method, path.as_str()) {
            (tiny_http::Method::Get, "/status") => (200, json!(state.status())),
            (tiny_http::Method::Post, "/start") => {
                let mut body = String::new();
                match std::io::Read::read_to_string(request.as_reader(), &mut body) {
                    Ok(_) => state.start(&body),
                    Err(e) => (400, json!({"error": format!("reading the start order: {e}")})),
                }
            }
            (tiny_http::Method::Get, "/result") => state.result(),
            (tiny_http::Method::Post, "/restart") => {
                respond(request, 202, &json!({"restarting": true, "exit_code": RESTART_EXIT_CODE}));
                eprintln!("host {}: coordinated restart ordered; exiting with {RESTART_EXIT_CODE}", state.host_id);
                // Let the answer leave before the process does.
                std::thread::sleep(Duration::from_millis(50));
                std::process::exit(RESTART_EXIT_CODE);
            }
            (_, path) => (404, json!({"error": format!("no endpoint {path}: try /status, /start, /result, /restart")})),
        };
        respond(request, status, &body);
    }
}
