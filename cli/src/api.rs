//! Running the HTTP API (and the command side behind it) next to a
//! pipeline, on a tokio runtime of its own.

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;

use tokio::sync::oneshot;

use projector_commands::log::CommandLogConfig;
use projector_commands::service::CommandService;
use projector_core::config::{CommandsConfig, PipelinePlan};
use projector_query_api::auth::Auth;
use projector_query_api::metrics::Metrics;
use projector_query_api::serving::ServingStore;
use projector_query_api::{ApiState, bind, router, serve};

use crate::commands::CommandError;

/// A running API; dropping it without [`ApiServer::stop`] leaves it running
/// until the process ends.
pub struct ApiServer {
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
    /// Where it listens.
    pub address: SocketAddr,
}

impl ApiServer {
    /// Stops serving (requests in progress complete) and waits.
    pub fn stop(mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The command log settings of a `commands` section.
pub fn command_log(commands: &CommandsConfig) -> CommandLogConfig {
    CommandLogConfig {
        brokers: commands.brokers.clone(),
        events_topic: commands.events_topic.clone(),
        inventory_topic: commands.inventory_topic.clone(),
        audit_topic: commands.audit_topic.clone(),
        properties: commands.properties.clone(),
        state_dir: Some(commands.state_dir.clone()),
    }
}

/// Starts the API of `plan`, if it declares one, serving the views of
/// `reads`; returns once it listens (and the command side has rebuilt its
/// state), or with why it cannot.
pub fn start(plan: &PipelinePlan, reads: Option<Arc<ServingStore>>) -> Result<Option<ApiServer>, CommandError> {
    let Some(api) = &plan.config.api else { return Ok(None) };
    let log = plan.config.commands.as_ref().map(command_log);
    let auth = Auth::new(&api.tokens).map_err(CommandError::Io)?;
    start_with(api.listen, log, reads, auth).map(Some)
}

/// Starts an API on `listen` with the command side of `log` (if any), the
/// views of `reads` (if any) and the tokens of `auth` (none: open).
pub fn start_with(
    listen: SocketAddr,
    log: Option<CommandLogConfig>,
    reads: Option<Arc<ServingStore>>,
    auth: Auth,
) -> Result<ApiServer, CommandError> {
    let auth = Arc::new(auth);
    let (ready_send, ready) = std::sync::mpsc::channel::<Result<SocketAddr, String>>();
    let (shutdown_send, shutdown) = oneshot::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("projector-api".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name("projector-api")
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(error) => {
                    let _ = ready_send.send(Err(format!("cannot start the API runtime: {error}")));
                    return;
                }
            };
            runtime.block_on(async move {
                let commands: Option<Arc<CommandService>> = match log {
                    Some(log) => match CommandService::start(log).await {
                        Ok(service) => Some(service),
                        Err(error) => {
                            let _ = ready_send.send(Err(format!("the command side cannot start: {error}")));
                            return;
                        }
                    },
                    None => None,
                };
                let listener = match bind(listen).await {
                    Ok(listener) => listener,
                    Err(error) => {
                        let _ = ready_send.send(Err(format!("cannot listen on {listen}: {error}")));
                        return;
                    }
                };
                let address = listener.local_addr().unwrap_or(listen);
                let _ = ready_send.send(Ok(address));
                // On stop, open change streams end first, so that the
                // graceful shutdown does not wait for them forever.
                let (closing_send, closing) = tokio::sync::watch::channel(false);
                let shutdown = async move {
                    let _ = shutdown.await;
                    let _ = closing_send.send(true);
                };
                let metrics = Arc::new(Metrics::new(reads.clone()));
                let state = ApiState { commands, reads, auth, closing, metrics };
                if let Err(error) = serve(listener, router(state), shutdown).await {
                    tracing::error!(%error, "the HTTP API stopped");
                }
            });
        })
        .map_err(|e| CommandError::Io(format!("cannot start the API thread: {e}")))?;
    match ready.recv() {
        Ok(Ok(address)) => Ok(ApiServer { shutdown: Some(shutdown_send), thread: Some(thread), address }),
        Ok(Err(message)) => {
            let _ = thread.join();
            Err(CommandError::Io(message))
        }
        Err(_) => {
            let _ = thread.join();
            Err(CommandError::Io("the API thread ended before it listened".into()))
        }
    }
}
