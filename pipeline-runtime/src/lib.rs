//! The library Kiln pipeline programs link.
//!
//! A pipeline describes its work as a [`Job`]: read this host's share of the input
//! and emit `(key, value)` records ([`Job::map`]), and say how two values of one key
//! combine ([`Job::combine`]). [`run`] does the rest, in either of two ways:
//!
//! - **alone** (`PIPELINE --config-file F`): the process reads the whole input and
//!   prints every key with its value, one `key value` line each, sorted by key;
//! - **as one host of H** (`--initial coordination --host-id N --bind-address A
//!   --default-port P --deployment-id D --config-file F`, as `kiln launch` starts it):
//!   it serves its HTTP endpoint on `A:P` (see [`host`]), waits for the
//!   coordinator's start with the peer list, works on share N of H, exchanges
//!   records with its peers over the exchange port so that each key ends on exactly
//!   one host ([`exchange`]), and serves its part of the result. The coordinator
//!   merges the parts into exactly what the pipeline prints alone.
//!
//! The config file is JSON. The job reads its own keys; the runtime reads the
//! optional `"kiln"` object: `storage_dir` (this host's own directory),
//! `base_dir` (what relative paths in the config are relative to; by default the
//! config file's directory) and `pace_ms` (a pause after every 1000 records, to
//! watch or interrupt a run in a demo or a test).

pub mod contract;
pub mod exchange;
pub mod host;
pub mod progress;
pub mod share;

use std::collections::BTreeMap;
use std::fmt::Display;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde::Serialize;

pub use contract::RESTART_EXIT_CODE;
pub use progress::Progress;
pub use share::Share;

/// What a pipeline's job may fail with.
pub type Error = Box<dyn std::error::Error + Send + Sync>;

/// A pipeline's work, in two steps the runtime can spread over hosts.
pub trait Job: Send + Sync {
    /// The job's part of the config file.
    type Config: DeserializeOwned;
    /// The value of a key; shown with `Display` in the output.
    type Value: Serialize + DeserializeOwned + Display + Send + Sync;

    /// Reads this host's share of the input ([`Context::share`]) and emits records.
    fn map(&self, context: &Context<Self::Config>, emit: &mut dyn FnMut(String, Self::Value)) -> Result<(), Error>;

    /// Folds `other` into `into`: two values of one key, from one host or two.
    fn combine(&self, into: &mut Self::Value, other: Self::Value);
}

#[derive(Debug, Default, Deserialize)]
struct RuntimeSettings {
    storage_dir: Option<PathBuf>,
    base_dir: Option<PathBuf>,
    #[serde(default)]
    pace_ms: u64,
}

/// What a job sees while it works.
#[derive(Debug)]
pub struct Context<C> {
    config: C,
    share: Share,
    base_dir: PathBuf,
    storage_dir: Option<PathBuf>,
    pace: Duration,
    progress: Arc<Progress>,
}

impl<C> Context<C> {
    pub fn config(&self) -> &C {
        &self.config
    }

    /// The part of the input this process works on; [`Share::WHOLE`] alone.
    pub fn share(&self) -> Share {
        self.share
    }

    /// A path from the config, resolved against the config's base directory.
    pub fn path(&self, path: impl AsRef<Path>) -> PathBuf {
        self.base_dir.join(path)
    }

    /// This host's own storage directory, when the launcher gave it one.
    pub fn storage_dir(&self) -> Option<&Path> {
        self.storage_dir.as_deref()
    }

    /// Calls `f` with every line of this share of the file at `path` (resolved with
    /// [`Context::path`]), counting them as progress.
    pub fn for_each_line(&self, path: impl AsRef<Path>, mut f: impl FnMut(&str)) -> Result<(), Error> {
        let path = self.path(path);
        self.share
            .for_each_line(&path, |line| {
                f(line);
                let read = self.progress.records_read.fetch_add(1, Ordering::Relaxed) + 1;
                if !self.pace.is_zero() && read.is_multiple_of(1000) {
                    std::thread::sleep(self.pace);
                }
            })
            .map_err(|e| format!("reading {}: {e}", path.display()).into())
    }
}

fn load_config<C: DeserializeOwned>(path: &Path) -> Result<(C, RuntimeSettings, PathBuf), String> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("cannot read the config file {}: {e}", path.display()))?;
    let value: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| format!("the config file {} is not valid JSON: {e}", path.display()))?;
    let settings: RuntimeSettings = match value.get("kiln") {
        Some(kiln) => serde_json::from_value(kiln.clone())
            .map_err(|e| format!("the \"kiln\" object of {} is wrong: {e}", path.display()))?,
        None => RuntimeSettings::default(),
    };
    let config: C = serde_json::from_value(value)
        .map_err(|e| format!("the config file {} does not fit this pipeline: {e}", path.display()))?;
    let config_dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let base_dir = settings.base_dir.clone().unwrap_or_else(|| config_dir.to_path_buf());
    Ok((config, settings, base_dir))
}

/// Runs `job` as the command line says (see the crate's documentation) and returns
/// the process's exit code. A pipeline's `main` is `kiln_pipeline_runtime::run(MyJob)`.
pub fn run<J: Job>(job: J) -> ExitCode {
    let args = match contract::Args::parse(std::env::args().skip(1)) {
        Ok(args) => args,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(2);
        }
    };
    let outcome = match &args.host {
        None => run_alone(&job, &args.config_file),
        Some(host) => run_host(&job, &args.config_file, host),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

fn context<J: Job>(config_file: &Path, share: Share, progress: Arc<Progress>) -> Result<Context<J::Config>, Error> {
    let (config, settings, base_dir) = load_config::<J::Config>(config_file)?;
    Ok(Context {
        config,
        share,
        base_dir,
        storage_dir: settings.storage_dir,
        pace: Duration::from_millis(settings.pace_ms),
        progress,
    })
}

/// Adds one record to `table`, combining it with the key's value if there is one.
fn fold_into<J: Job>(job: &J, table: &mut BTreeMap<String, J::Value>, key: String, value: J::Value) {
    match table.get_mut(&key) {
        Some(existing) => job.combine(existing, value),
        None => {
            table.insert(key, value);
        }
    }
}

/// Runs the job over the context's share, combining records of one key as they come.
fn map_share<J: Job>(job: &J, context: &Context<J::Config>) -> Result<BTreeMap<String, J::Value>, Error> {
    let mut table: BTreeMap<String, J::Value> = BTreeMap::new();
    job.map(context, &mut |key, value| fold_into(job, &mut table, key, value))?;
    Ok(table)
}

/// The records as the pipeline's output shows them.
fn render<V: Display>(table: BTreeMap<String, V>) -> Vec<(String, String)> {
    table.into_iter().map(|(key, value)| (key, value.to_string())).collect()
}

fn run_alone<J: Job>(job: &J, config_file: &Path) -> Result<(), Error> {
    let context = context::<J>(config_file, Share::WHOLE, Arc::default())?;
    let table = map_share(job, &context)?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for (key, value) in render(table) {
        std::io::Write::write_all(&mut out, format!("{key} {value}\n").as_bytes())?;
    }
    std::io::Write::flush(&mut out)?;
    Ok(())
}

fn run_host<J: Job>(job: &J, config_file: &Path, host: &contract::HostArgs) -> Result<(), Error> {
    let exchange_address = SocketAddr::new(host.bind_address, host.exchange_port);
    let http_address = SocketAddr::new(host.bind_address, host.http_port);
    // Read the config before listening, so a bad one fails the host at once; the
    // share is known once the coordinator starts this host.
    let progress = Arc::new(Progress::default());
    let mut context = context::<J>(config_file, Share::WHOLE, progress.clone())?;
    let listener = TcpListener::bind(exchange_address)
        .map_err(|e| format!("cannot listen for the exchange on {exchange_address}: {e}"))?;
    let server =
        tiny_http::Server::http(http_address).map_err(|e| format!("cannot serve HTTP on {http_address}: {e}"))?;
    let (start, started) = mpsc::channel();
    let state = Arc::new(host::HostState {
        host_id: host.host_id,
        deployment_id: host.deployment_id.clone(),
        instance: format!(
            "{}-{}",
            std::process::id(),
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos()
        ),
        exchange_address,
        storage_dir: context.storage_dir.clone(),
        memory_limit_bytes: std::env::var("KILN_MEMORY_LIMIT_BYTES").ok().and_then(|v| v.parse().ok()),
        progress: progress.clone(),
        phase: Mutex::new((contract::Phase::Ready, None)),
        epoch: Mutex::new(None),
        result: Mutex::new(None),
        start: Mutex::new(Some(start)),
    });
    {
        let state = state.clone();
        std::thread::spawn(move || host::serve(server, state));
    }
    eprintln!(
        "host {} of deployment {}: ready (HTTP on {http_address}, exchange on {exchange_address})",
        host.host_id, host.deployment_id
    );

    let order: contract::StartOrder = started.recv().map_err(|_| "the HTTP endpoint stopped before a start")?;
    let outcome = work(job, &mut context, host, &order, &state, &listener);
    match outcome {
        Ok(records) => {
            eprintln!(
                "host {}: done: read {} records of its share; {records} keys in its part of the result",
                host.host_id,
                state.progress.records_read.load(Ordering::Relaxed)
            );
            // A batch host keeps serving its result until the launcher stops it.
            loop {
                std::thread::park();
            }
        }
        Err(error) => {
            state.set_phase(contract::Phase::Failed, Some(error.to_string()));
            Err(error)
        }
    }
}

fn work<J: Job>(
    job: &J,
    context: &mut Context<J::Config>,
    host: &contract::HostArgs,
    order: &contract::StartOrder,
    state: &host::HostState,
    listener: &TcpListener,
) -> Result<usize, Error> {
    let hosts = order.peers.len() as u32;
    let share = Share { index: host.host_id, count: hosts };
    eprintln!("host {}: started (epoch {}), working on share {} of {hosts}", host.host_id, order.epoch, share.index);
    state.set_phase(contract::Phase::Running, None);
    context.share = share;
    let table = map_share(job, context)?;

    state.set_phase(contract::Phase::Exchanging, None);
    let mut partitions: Vec<BTreeMap<String, J::Value>> = (0..hosts).map(|_| BTreeMap::new()).collect();
    for (key, value) in table {
        partitions[share::owner(&key, hosts) as usize].insert(key, value);
    }
    let exchange = exchange::Exchange {
        deployment_id: &host.deployment_id,
        epoch: order.epoch,
        me: host.host_id,
        peers: &order.peers,
    };
    let received = exchange::run(&exchange, listener, &partitions, &context.progress)?;
    let mut mine = std::mem::take(&mut partitions[host.host_id as usize]);
    for (_, records) in received {
        for (key, value) in records {
            fold_into(job, &mut mine, key, value);
        }
    }
    let records = render(mine);
    let count = records.len();
    *state.result.lock().unwrap_or_else(|p| p.into_inner()) = Some(records);
    state.set_phase(contract::Phase::Done, None);
    Ok(count)
}
