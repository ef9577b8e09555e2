//! The PostgreSQL wire endpoint (datafusion-postgres and pgwire): read-only, with a query
//! timeout, the session's memory limit and a connection limit.
//!
//! Authentication is off by default (any user and database name are accepted). With a
//! password configured, clients authenticate with SCRAM-SHA-256 (channel binding offered
//! under TLS). TLS fails closed: a certificate or key that cannot be loaded stops the server
//! before it listens, and once TLS is on, unencrypted connections are refused.

use crate::readonly::ReadOnlyHook;
use async_trait::async_trait;
use datafusion::prelude::SessionContext;
use datafusion_postgres::DfSessionService;
use datafusion_postgres::datafusion_pg_catalog::pg_catalog::context::EmptyContextProvider;
use datafusion_postgres::datafusion_pg_catalog::setup_pg_catalog;
use datafusion_postgres::hooks::cursor::CursorStatementHook;
use datafusion_postgres::hooks::set_show::SetShowHook;
use datafusion_postgres::hooks::transactions::TransactionStatementHook;
use datafusion_postgres::QueryHook;
use datafusion_postgres::pgwire;
use futures::Sink;
use pgwire::api::auth::noop::NoopStartupHandler;
use pgwire::api::auth::sasl::SASLAuthStartupHandler;
use pgwire::api::auth::sasl::scram::{ScramAuth, gen_salted_password, random_nonce};
use pgwire::api::auth::{AuthSource, DefaultServerParameterProvider, LoginInfo, Password, StartupHandler};
use pgwire::api::cancel::DefaultCancelHandler;
use pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use pgwire::api::{ClientInfo, ConnectionManager, PgWireServerHandlers};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};
use pgwire::tokio::tokio_rustls::rustls;
use pgwire::tokio::{TlsAcceptor, process_socket};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;

/// SCRAM iteration count (RFC 7677's minimum, PostgreSQL's default).
const SCRAM_ITERATIONS: usize = 4096;

/// Settings of the SQL endpoint; units in the names.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SqlServerConfig {
    pub host: String,
    pub port: u16,
    pub max_connections: usize,
    pub query_timeout_ms: u64,
    pub memory_limit_mb: usize,
    /// `None`: no authentication.
    pub auth: Option<SqlAuth>,
    /// `None`: unencrypted.
    pub tls: Option<SqlTls>,
}

impl Default for SqlServerConfig {
    fn default() -> Self {
        SqlServerConfig {
            host: "127.0.0.1".into(),
            port: 5433,
            max_connections: 32,
            query_timeout_ms: 30_000,
            memory_limit_mb: 2048,
            auth: None,
            tls: None,
        }
    }
}

/// One login: a user name and its password.
#[derive(Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SqlAuth {
    pub user: String,
    #[serde(skip_serializing)]
    pub password: String,
}

impl fmt::Debug for SqlAuth {
    // Keeps the password out of logs and error messages.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqlAuth").field("user", &self.user).field("password", &"<redacted>").finish()
    }
}

/// PEM files of the server certificate chain and its private key (PKCS#8, PKCS#1 or SEC1).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SqlTls {
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
}

impl SqlServerConfig {
    pub fn limits(&self) -> crate::SqlLimits {
        crate::SqlLimits { memory_limit_bytes: self.memory_limit_mb << 20, ..crate::SqlLimits::default() }
    }

    /// Checks what `serve` would refuse to start with (limits, login, TLS files), so that a
    /// caller can fail before doing other work.
    pub fn validate(&self) -> Result<(), String> {
        self.tls_setup().map(|_| ())
    }

    fn tls_setup(&self) -> Result<Option<(TlsAcceptor, Vec<u8>)>, String> {
        if self.max_connections == 0 {
            return Err("max_connections must be at least 1".into());
        }
        if let Some(a) = &self.auth
            && (a.user.is_empty() || a.password.is_empty())
        {
            return Err("SQL authentication needs a non-empty user and password".into());
        }
        self.tls.as_ref().map(tls_acceptor).transpose()
    }
}

/// Loads the certificate and key into a TLS acceptor; any problem is an error (never a
/// silent fallback to plaintext).
fn tls_acceptor(tls: &SqlTls) -> Result<(TlsAcceptor, Vec<u8>), String> {
    let read = |p: &PathBuf, what: &str| std::fs::read(p).map_err(|e| format!("TLS {what} {}: {e}", p.display()));
    let cert_pem = read(&tls.cert_path, "certificate")?;
    let key_pem = read(&tls.key_path, "key")?;
    let certs = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("TLS certificate {}: {e}", tls.cert_path.display()))?;
    if certs.is_empty() {
        return Err(format!("TLS certificate {}: no PEM certificate found", tls.cert_path.display()));
    }
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| format!("TLS key {}: {e}", tls.key_path.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("TLS certificate {} and key {} do not make a usable pair: {e}", tls.cert_path.display(), tls.key_path.display()))?;
    Ok((TlsAcceptor::from(Arc::new(config)), cert_pem))
}

/// The configured login, stored salted as PostgreSQL stores SCRAM secrets.
#[derive(Debug)]
struct ScramSecrets {
    user: String,
    salt: Vec<u8>,
    salted_password: Vec<u8>,
    /// Answer for unknown users, so that a wrong user name fails like a wrong password.
    decoy: Vec<u8>,
}

impl ScramSecrets {
    fn new(auth: &SqlAuth) -> ScramSecrets {
        let salt = random_nonce().into_bytes();
        ScramSecrets {
            user: auth.user.clone(),
            salted_password: gen_salted_password(&auth.password, &salt, SCRAM_ITERATIONS),
            decoy: gen_salted_password(&random_nonce(), &salt, SCRAM_ITERATIONS),
            salt,
        }
    }
}

#[async_trait]
impl AuthSource for ScramSecrets {
    async fn get_password(&self, login: &LoginInfo) -> PgWireResult<Password> {
        let secret = if login.user() == Some(self.user.as_str()) { &self.salted_password } else { &self.decoy };
        Ok(Password::new(Some(self.salt.clone()), secret.clone()))
    }
}

/// State shared by all connections.
struct Shared {
    session: Arc<DfSessionService>,
    connections: Arc<ConnectionManager>,
    cancel: Arc<DefaultCancelHandler>,
    scram: Option<Arc<ScramSecrets>>,
    /// PEM of the server certificate when TLS is on (for SCRAM channel binding).
    tls_cert_pem: Option<Vec<u8>>,
}

/// Handlers of one connection: the shared ones plus why it is refused, if it is.
struct Connection {
    shared: Arc<Shared>,
    refuse: Option<(&'static str, &'static str)>,
}

impl PgWireServerHandlers for Connection {
    fn simple_query_handler(&self) -> Arc<impl SimpleQueryHandler> {
        self.shared.session.clone()
    }

    fn extended_query_handler(&self) -> Arc<impl ExtendedQueryHandler> {
        self.shared.session.clone()
    }

    fn startup_handler(&self) -> Arc<impl StartupHandler> {
        let gate = match &self.shared.scram {
            None => Gate::Open(OpenStartup(self.shared.connections.clone())),
            Some(secrets) => {
                let mut scram = ScramAuth::new(secrets.clone());
                scram.set_iterations(SCRAM_ITERATIONS);
                if let Some(pem) = &self.shared.tls_cert_pem {
                    // Channel binding is an extra; without it SCRAM-SHA-256 still works.
                    if let Err(e) = scram.configure_certificate(pem) {
                        tracing::debug!("SCRAM channel binding unavailable: {e}");
                    }
                }
                Gate::Scram(Box::new(
                    SASLAuthStartupHandler::new(Arc::new(DefaultServerParameterProvider::default()))
                        .with_scram(scram)
                        .with_connection_manager(self.shared.connections.clone()),
                ))
            }
        };
        Arc::new(Startup { gate, refuse: self.refuse, tls_required: self.shared.tls_cert_pem.is_some() })
    }

    fn cancel_handler(&self) -> Arc<impl pgwire::api::cancel::CancelHandler> {
        self.shared.cancel.clone()
    }
}

struct OpenStartup(Arc<ConnectionManager>);

impl NoopStartupHandler for OpenStartup {
    fn connection_manager(&self) -> Option<Arc<ConnectionManager>> {
        Some(self.0.clone())
    }
}

enum Gate {
    Open(OpenStartup),
    Scram(Box<SASLAuthStartupHandler<DefaultServerParameterProvider>>),
}

/// Refusals (connection limit, plaintext under TLS) come before authentication.
struct Startup {
    gate: Gate,
    refuse: Option<(&'static str, &'static str)>,
    tls_required: bool,
}

fn fatal(code: &str, msg: &str) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new("FATAL".into(), code.into(), msg.into())))
}

#[async_trait]
impl StartupHandler for Startup {
    async fn on_startup<C>(&self, client: &mut C, message: PgWireFrontendMessage) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: fmt::Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        if let PgWireFrontendMessage::Startup(_) = &message {
            if let Some((code, msg)) = self.refuse {
                return Err(fatal(code, msg));
            }
            if self.tls_required && !client.is_secure() {
                return Err(fatal("28000", "this co2cast endpoint accepts TLS connections only (use sslmode=require)"));
            }
        }
        match &self.gate {
            Gate::Open(h) => h.on_startup(client, message).await,
            Gate::Scram(h) => h.on_startup(client, message).await,
        }
    }
}

/// Serves `ctx` until the task is dropped. Fails at once, before listening, if the port
/// cannot be bound or TLS is configured and cannot be set up.
pub async fn serve(ctx: SessionContext, cfg: &SqlServerConfig) -> std::io::Result<()> {
    let tls = cfg.tls_setup().map_err(std::io::Error::other)?;
    let listener = tokio::net::TcpListener::bind((cfg.host.as_str(), cfg.port)).await?;
    setup_pg_catalog(&ctx, "datafusion", EmptyContextProvider).map_err(|e| std::io::Error::other(format!("pg_catalog: {e}")))?;
    let hooks: Vec<Arc<dyn QueryHook>> = vec![
        Arc::new(ReadOnlyHook { query_timeout: Duration::from_millis(cfg.query_timeout_ms) }),
        Arc::new(CursorStatementHook),
        Arc::new(SetShowHook),
        Arc::new(TransactionStatementHook),
    ];
    let connections = Arc::new(ConnectionManager::new());
    let (acceptor, tls_cert_pem) = match tls {
        Some((a, pem)) => (Some(a), Some(pem)),
        None => (None, None),
    };
    let shared = Arc::new(Shared {
        session: Arc::new(DfSessionService::new_with_hooks(Arc::new(ctx), hooks)),
        cancel: Arc::new(DefaultCancelHandler::new(connections.clone())),
        connections,
        scram: cfg.auth.as_ref().map(|a| Arc::new(ScramSecrets::new(a))),
        tls_cert_pem,
    });
    let limit = Arc::new(Semaphore::new(cfg.max_connections));
    tracing::info!(
        "SQL endpoint on {}:{} ({}, {})",
        cfg.host,
        cfg.port,
        if acceptor.is_some() { "TLS only" } else { "unencrypted" },
        if shared.scram.is_some() { "SCRAM-SHA-256 password" } else { "no authentication" }
    );
    loop {
        let (socket, addr) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("SQL endpoint accept: {e}");
                continue;
            }
        };
        let permit = limit.clone().try_acquire_owned().ok();
        let refuse = permit.is_none().then_some(("53300", "too many connections to the co2cast SQL endpoint"));
        let handlers = Connection { shared: shared.clone(), refuse };
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(e) = process_socket(socket, acceptor, handlers).await {
                tracing::debug!("SQL connection from {addr}: {e}");
            }
        });
    }
}
