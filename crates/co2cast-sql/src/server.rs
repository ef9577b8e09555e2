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
use datafusion_postgres::QueryHook;
use datafusion_postgres::pgwire;
use futures::Sink;
use pgwire::api::auth::noop::NoopStartupHandler;
use pgwire::api::auth::sasl::SASLAuthStartupHandler;
use pgwire::api::auth::sasl::scram::{ScramAuth, gen_salted_password, random_nonce};
use pgwire::api::auth::{AuthSource, DefaultServerParameterProvider, LoginInfo, Password, StartupHandler};
use pgwire::api::cancel::DefaultCancelHandler;
use pgwire::api::portal::{Format, Portal};
use pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use pgwire::api::results::{FieldInfo, Response};
use pgwire::api::stmt::QueryParser;
use pgwire::api::store::PortalStore;
use pgwire::api::{ClientInfo, ClientPortalStore, ConnectionManager, PgWireServerHandlers, Type};
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
    /// A connection must log in within this time, or it is closed.
    pub login_timeout_ms: u64,
    /// Connections not logged in yet, at most (further ones are closed at once).
    pub max_pending_logins: usize,
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
            login_timeout_ms: 10_000,
            max_pending_logins: 256,
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
    /// The session every connection starts from: its tables (a shared catalog), functions
    /// and limits. Each connection gets its own copy, so a `SET` stays in its session.
    template: datafusion::execution::session_state::SessionState,
    hooks: Vec<Arc<dyn QueryHook>>,
    connections: Arc<ConnectionManager>,
    cancel: Arc<DefaultCancelHandler>,
    scram: Option<Arc<ScramSecrets>>,
    /// PEM of the server certificate when TLS is on (for SCRAM channel binding).
    tls_cert_pem: Option<Vec<u8>>,
    /// Logged-in connections at most ([`SqlServerConfig::max_connections`]).
    logins: Arc<Semaphore>,
}

/// One connection's login: the slot it holds once authenticated.
#[derive(Default)]
struct Login {
    /// The slot, counted in `co2cast_sql_active_connections` while held.
    permit: std::sync::Mutex<Option<(tokio::sync::OwnedSemaphorePermit, co2cast_metrics::state::ActiveSqlConnection)>>,
    peer: Option<std::net::SocketAddr>,
    /// Password messages seen (SCRAM sends two; the second completes the login).
    password_messages: std::sync::atomic::AtomicU32,
    /// Woken when a slot is taken.
    taken: tokio::sync::Notify,
}

impl Login {
    fn logged_in(&self) -> bool {
        self.permit.lock().map(|p| p.is_some()).unwrap_or(false)
    }
}

/// Handlers of one connection: its own session, and its login.
struct Connection {
    shared: Arc<Shared>,
    session: Arc<GuardedSession>,
    login: Arc<Login>,
}

impl PgWireServerHandlers for Connection {
    fn simple_query_handler(&self) -> Arc<impl SimpleQueryHandler> {
        self.session.clone()
    }

    fn extended_query_handler(&self) -> Arc<impl ExtendedQueryHandler> {
        self.session.clone()
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
        Arc::new(Startup { gate, tls_required: self.shared.tls_cert_pem.is_some(), logins: self.shared.logins.clone(), login: self.login.clone() })
    }

    fn cancel_handler(&self) -> Arc<impl pgwire::api::cancel::CancelHandler> {
        self.shared.cancel.clone()
    }
}

/// The datafusion-postgres session of one connection, behind the text limits: nothing is
/// parsed before [`crate::text_limits::check`] accepts it.
struct GuardedSession {
    inner: Arc<DfSessionService>,
    parser: Arc<GuardedParser>,
}

impl GuardedSession {
    fn new(inner: DfSessionService) -> GuardedSession {
        let parser = Arc::new(GuardedParser(inner.query_parser()));
        GuardedSession { inner: Arc::new(inner), parser }
    }
}

/// The `class` label of a failed statement, from its SQLSTATE.
pub fn error_class(e: &PgWireError) -> (&'static str, String) {
    match e {
        PgWireError::UserError(info) => {
            let code = info.code.as_str();
            let class = match code {
                "25006" | "42501" => "refused",
                "57014" => "timeout",
                c if c.starts_with("42") || c.starts_with("22") => "invalid_query",
                c if c.starts_with("54") => "too_complex",
                c if c.starts_with("53") => "resources",
                _ => "internal",
            };
            (class, code.to_string())
        }
        // datafusion-postgres reports SQL it cannot parse this way.
        PgWireError::ApiError(inner) if inner.to_string().contains("sql parser error") => ("invalid_query", "42601".into()),
        _ => ("internal", "XX000".into()),
    }
}

/// Errors the engine reports as internal (XX000) although they are the query's: a division
/// by zero, a value that does not cast, memory exhausted. Clients and the error metric get the
/// SQLSTATE of what happened.
fn with_sqlstate(e: PgWireError) -> PgWireError {
    let text = match &e {
        PgWireError::UserError(info) if info.code == "XX000" => info.message.clone(),
        PgWireError::ApiError(inner) => inner.to_string(),
        _ => return e,
    };
    let code = if text.contains("Divide by zero") || text.contains("division by zero") {
        "22012"
    } else if text.contains("Cast error") || text.contains("Cannot cast") || text.contains("Parser error") || text.contains("Unsupported CAST") {
        "22P02"
    } else if text.contains("Resources exhausted") {
        "53200"
    } else if text.contains("sql parser error") {
        "42601"
    } else {
        return e;
    };
    PgWireError::UserError(Box::new(ErrorInfo::new("ERROR".into(), code.into(), text)))
}

/// Times a statement and counts its failure by class.
fn observe<T>(protocol: &str, started: std::time::Instant, result: &PgWireResult<T>) {
    let failed = result.as_ref().err().map(error_class);
    co2cast_metrics::events::SqlQueryAnswered {
        protocol,
        duration: started.elapsed(),
        error_class: failed.as_ref().map(|f| f.0),
        sqlstate: failed.as_ref().map(|f| f.1.as_str()),
    }
    .emit();
}

/// A text refused before parsing: too long or too deep (54001), or not SQL at all (42601, as
/// the parser would say).
fn text_error(msg: String) -> PgWireError {
    let code = if msg.starts_with(crate::text_limits::SYNTAX_PREFIX) { "42601" } else { "54001" };
    PgWireError::UserError(Box::new(ErrorInfo::new("ERROR".into(), code.into(), msg)))
}

#[async_trait]
impl SimpleQueryHandler for GuardedSession {
    async fn do_query<C>(&self, client: &mut C, query: &str) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: fmt::Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let started = std::time::Instant::now();
        let result = match crate::text_limits::check(query).map_err(text_error) {
            Ok(()) => SimpleQueryHandler::do_query(&*self.inner, client, query).await,
            Err(e) => Err(e),
        };
        let result = result.map_err(with_sqlstate);
        observe("simple", started, &result);
        result
    }
}

struct GuardedParser(Arc<datafusion_postgres::Parser>);

#[async_trait]
impl QueryParser for GuardedParser {
    type Statement = <datafusion_postgres::Parser as QueryParser>::Statement;

    async fn parse_sql<C>(&self, client: &C, sql: &str, types: &[Option<Type>]) -> PgWireResult<Option<Self::Statement>>
    where
        C: ClientInfo + Unpin + Send + Sync,
    {
        let started = std::time::Instant::now();
        let result = match crate::text_limits::check(sql).map_err(text_error) {
            Ok(()) => self.0.parse_sql(client, sql, types).await,
            Err(e) => Err(e),
        };
        let result = result.map_err(with_sqlstate);
        // A statement that does not parse is answered here; one that does, at execution.
        if result.is_err() {
            observe("extended", started, &result);
        }
        result
    }

    fn get_parameter_types(&self, stmt: &Self::Statement) -> PgWireResult<Vec<Type>> {
        self.0.get_parameter_types(stmt)
    }

    fn get_result_schema(&self, stmt: &Self::Statement, column_format: Option<&Format>) -> PgWireResult<Vec<FieldInfo>> {
        self.0.get_result_schema(stmt, column_format)
    }
}

#[async_trait]
impl ExtendedQueryHandler for GuardedSession {
    type Statement = <DfSessionService as ExtendedQueryHandler>::Statement;
    type QueryParser = GuardedParser;

    fn query_parser(&self) -> Arc<Self::QueryParser> {
        self.parser.clone()
    }

    async fn do_query<C>(&self, client: &mut C, portal: &Portal<Self::Statement>, max_rows: usize) -> PgWireResult<Response>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: fmt::Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let started = std::time::Instant::now();
        let result = ExtendedQueryHandler::do_query(&*self.inner, client, portal, max_rows).await;
        let result = result.map_err(with_sqlstate);
        observe("extended", started, &result);
        result
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

/// Plaintext under TLS is refused first; a connection takes one of the `max_connections`
/// slots only with the message that completes its login (the startup message without a
/// password, the second SCRAM message with one), so sockets that never log in hold none.
struct Startup {
    gate: Gate,
    tls_required: bool,
    logins: Arc<Semaphore>,
    login: Arc<Login>,
}

fn fatal(code: &str, msg: &str) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new("FATAL".into(), code.into(), msg.into())))
}

impl Startup {
    /// Takes a login slot before the message that would complete the login is answered.
    fn take_slot(&self) -> PgWireResult<()> {
        let permit = self.logins.clone().try_acquire_owned().map_err(|_| {
            self.refused("connection_limit");
            fatal("53300", "too many connections to the co2cast SQL endpoint")
        })?;
        *self.login.permit.lock().map_err(|_| fatal("XX000", "login state poisoned"))? = Some((permit, co2cast_metrics::state::ActiveSqlConnection::open()));
        self.login.taken.notify_one();
        Ok(())
    }

    fn refused(&self, reason: &str) {
        let peer = self.login.peer.map_or_else(|| "unknown".to_string(), |p| p.to_string());
        co2cast_metrics::events::SqlConnectionRefused { reason, peer: &peer }.emit();
    }

    fn release_slot(&self) {
        if let Ok(mut p) = self.login.permit.lock() {
            *p = None;
        }
    }
}

#[async_trait]
impl StartupHandler for Startup {
    async fn on_startup<C>(&self, client: &mut C, message: PgWireFrontendMessage) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: fmt::Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        use std::sync::atomic::Ordering;
        if let PgWireFrontendMessage::Startup(_) = &message
            && self.tls_required
            && !client.is_secure()
        {
            self.refused("tls_required");
            return Err(fatal("28000", "this co2cast endpoint accepts TLS connections only (use sslmode=require)"));
        }
        let completes_login = match (&self.gate, &message) {
            (Gate::Open(_), PgWireFrontendMessage::Startup(_)) => true,
            (Gate::Scram(_), PgWireFrontendMessage::PasswordMessageFamily(_)) => self.login.password_messages.fetch_add(1, Ordering::Relaxed) + 1 == 2,
            _ => false,
        };
        if completes_login && !self.login.logged_in() {
            self.take_slot()?;
        }
        let result = match &self.gate {
            Gate::Open(h) => h.on_startup(client, message).await,
            Gate::Scram(h) => h.on_startup(client, message).await,
        };
        if result.is_err() {
            // A failed login gives its slot back at once.
            self.release_slot();
            self.refused("login_failed");
        }
        result
    }
}

/// The `class` values of failed statements and the `reason` values of refused connections.
pub const SQL_ERROR_CLASSES: [&str; 6] = ["refused", "invalid_query", "too_complex", "timeout", "resources", "internal"];
pub const SQL_REFUSAL_REASONS: [&str; 5] = ["connection_limit", "pending_limit", "login_timeout", "tls_required", "login_failed"];

fn initialise_metrics() {
    let m = co2cast_metrics::metrics();
    co2cast_metrics::events::initialise(&m.sql_query_errors, SQL_ERROR_CLASSES.map(|c| vec![c]));
    co2cast_metrics::events::initialise(&m.sql_refused_connections, SQL_REFUSAL_REASONS.map(|r| vec![r]));
    for protocol in ["simple", "extended"] {
        let _ = m.sql_query_duration.with_label_values(&[protocol]);
    }
}

/// Serves `ctx` until the task is dropped. Fails at once, before listening, if the port
/// cannot be bound or TLS is configured and cannot be set up.
pub async fn serve(ctx: SessionContext, cfg: &SqlServerConfig) -> std::io::Result<()> {
    let tls = cfg.tls_setup().map_err(std::io::Error::other)?;
    co2cast_metrics::enable(co2cast_metrics::Role::Sql, env!("CARGO_PKG_VERSION"), co2cast_model::estimate::MODEL_VERSION);
    initialise_metrics();
    let listener = tokio::net::TcpListener::bind((cfg.host.as_str(), cfg.port)).await?;
    setup_pg_catalog(&ctx, "datafusion", EmptyContextProvider).map_err(|e| std::io::Error::other(format!("pg_catalog: {e}")))?;
    // One hook answers every statement (see `readonly`); the stock hooks run inside it.
    let hooks: Vec<Arc<dyn QueryHook>> = vec![Arc::new(ReadOnlyHook { query_timeout: Duration::from_millis(cfg.query_timeout_ms) })];
    let connections = Arc::new(ConnectionManager::new());
    let (acceptor, tls_cert_pem) = match tls {
        Some((a, pem)) => (Some(a), Some(pem)),
        None => (None, None),
    };
    let shared = Arc::new(Shared {
        template: ctx.state(),
        hooks,
        cancel: Arc::new(DefaultCancelHandler::new(connections.clone())),
        connections,
        scram: cfg.auth.as_ref().map(|a| Arc::new(ScramSecrets::new(a))),
        tls_cert_pem,
        logins: Arc::new(Semaphore::new(cfg.max_connections)),
    });
    // Sockets not logged in yet: bounded too, so that idle sockets cannot exhaust descriptors.
    let pending = Arc::new(Semaphore::new(cfg.max_pending_logins.max(1)));
    let login_timeout = Duration::from_millis(cfg.login_timeout_ms.max(1));
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
                // Out of descriptors, typically: give the sockets being closed a moment.
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(pending_slot) = pending.clone().try_acquire_owned() else {
            co2cast_metrics::events::SqlConnectionRefused { reason: "pending_limit", peer: &addr }.emit();
            drop(socket);
            continue;
        };
        let session = DfSessionService::new_with_hooks(Arc::new(SessionContext::new_with_state(shared.template.clone())), shared.hooks.clone());
        let login = Arc::new(Login { peer: Some(addr), ..Login::default() });
        let handlers = Connection { shared: shared.clone(), session: Arc::new(GuardedSession::new(session)), login: login.clone() };
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let work = process_socket(socket, acceptor, handlers);
            tokio::pin!(work);
            // The login must complete within `login_timeout`; then the socket stops counting
            // as pending and may stay as long as the client likes.
            let deadline = tokio::time::sleep(login_timeout);
            tokio::pin!(deadline);
            let mut pending_slot = Some(pending_slot);
            let result = loop {
                tokio::select! {
                    r = &mut work => break Some(r),
                    () = login.taken.notified(), if pending_slot.is_some() => pending_slot = None,
                    () = &mut deadline, if pending_slot.is_some() => {
                        if !login.logged_in() {
                            break None;
                        }
                        pending_slot = None;
                    }
                }
            };
            match result {
                None => co2cast_metrics::events::SqlConnectionRefused { reason: "login_timeout", peer: &addr }.emit(),
                Some(Err(e)) => tracing::debug!("SQL connection from {addr}: {e}"),
                Some(Ok(())) => {}
            }
        });
    }
}
