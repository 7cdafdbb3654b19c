//! A PostgreSQL session over tokio-postgres: one prepared statement per call
//! (the extended protocol takes one statement, never a batch), parameters
//! converted to the types the server inferred, rows streamed against the caps,
//! and every message over the cap refused by the stream below the driver.

use super::capped::{Capped, Refused};
use super::{Answer, Budget, Opening, SqlError, Value, Want};
use crate::capability::database::TlsMode;
use crate::capability::Database;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_postgres::types::{IsNull, ToSql, Type};
use tokio_postgres::{CancelToken, Client, NoTls};

/// A connection stream: TCP, or TLS over it.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// An open session and how to cancel its running statement.
pub(super) struct Session {
    client: Client,
    cancel: CancelToken,
    /// Where cancel requests go: the address the session was opened to.
    addr: SocketAddr,
    /// The size of a message the stream refused, if one was.
    refused: Refused,
}

fn server_or_transport(e: tokio_postgres::Error) -> SqlError {
    match e.as_db_error() {
        Some(db) => SqlError::Server(super::wit::ServerError {
            code: db.code().code().to_string(),
            message: db.message().to_string(),
        }),
        None => SqlError::Transport(e.to_string()),
    }
}

/// `SSLRequest`: the 8 bytes a client sends to ask for TLS before its startup message.
const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];

/// Roles a read-only grant refuses: each reaches past what a read-only transaction confines.
const UNCONFINABLE: &[&str] =
    &["pg_write_server_files", "pg_execute_server_program", "pg_read_server_files", "pg_signal_backend"];

impl Session {
    /// Connects to `ip`, verifying TLS against the grant's host name. The host does TLS itself so
    /// that the capped stream sits between TLS and the driver; the session starts read-only for a
    /// read-only grant, with the server's own statement limit set, so a statement whose client was
    /// killed still ends.
    pub(super) async fn connect(db: &Database, ip: IpAddr, opening: &Opening) -> Result<Self, SqlError> {
        let g = &db.grant;
        let addr = SocketAddr::new(ip, g.location.port);
        let tcp = TcpStream::connect(addr).await.map_err(|e| SqlError::Transport(format!("cannot connect: {e}")))?;
        let _ = tcp.set_nodelay(true);
        let stream: Box<dyn Io> = match g.tls {
            TlsMode::Disable => Box::new(tcp),
            TlsMode::Require => Box::new(start_tls(tcp, &g.location.host, g.ca_file.as_deref()).await?),
        };
        let refused = Refused::default();
        let capped = Capped::new(stream, opening.message_cap(), refused.clone());
        // Strings as the host's parser reads them (the server's default, pinned: a server set to
        // `standard_conforming_strings=off` reads backslashes in a string the parser does not).
        let mut options = format!(
            "-c statement_timeout={} -c standard_conforming_strings=on",
            opening.server_timeout.as_millis().max(1)
        );
        if g.readonly {
            options.push_str(" -c default_transaction_read_only=on");
        }
        let mut config = tokio_postgres::Config::new();
        config
            .dbname(&g.location.database)
            .user(&g.user)
            .password(&db.password)
            .options(options)
            .ssl_mode(tokio_postgres::config::SslMode::Disable)
            .application_name(concat!("gantry/", env!("CARGO_PKG_VERSION")));
        let (client, connection) = config.connect_raw(capped, NoTls).await.map_err(server_or_transport)?;
        tokio::spawn(drive(connection));
        let cancel = client.cancel_token();
        let session = Self { client, cancel, addr, refused };
        if g.readonly && !db.preflight_of_writable {
            session.confinable(&g.user, &g.name).await?;
        }
        Ok(session)
    }

    /// Refuses a role that no transaction mode confines: a superuser, a replication role, or a
    /// member of a role that reaches the server's files, programs or other sessions.
    async fn confinable(&self, user: &str, grant: &str) -> Result<(), SqlError> {
        let row = self
            .client
            .query_one(
                "SELECT rolsuper, rolreplication, ARRAY(SELECT b.rolname::text FROM pg_roles b \
                 WHERE b.rolname = ANY($1) AND pg_has_role(current_user, b.oid, 'MEMBER') ORDER BY 1) \
                 FROM pg_roles WHERE rolname = current_user",
                &[&UNCONFINABLE],
            )
            .await
            .map_err(server_or_transport)?;
        let (superuser, replication, members): (bool, bool, Vec<String>) = (row.get(0), row.get(1), row.get(2));
        let mut why: Vec<String> = Vec::new();
        if superuser {
            why.push("a superuser".into());
        }
        if replication {
            why.push("a replication role".into());
        }
        if !members.is_empty() {
            why.push(format!("a member of {}", members.join(", ")));
        }
        if why.is_empty() {
            return Ok(());
        }
        Err(SqlError::Denied(format!(
            "database `{grant}` is granted read-only, but `{user}` is {}: no read-only transaction confines such a role \
             (COPY … TO PROGRAM, server files, replication, signals to other sessions). Sign in as a role without \
             SUPERUSER and REPLICATION and outside {}, given only what it reads (e.g. GRANT pg_read_all_data)",
            why.join(" and "),
            UNCONFINABLE.join(", ")
        )))
    }

    /// How to cancel this session's running statement from elsewhere.
    pub(super) fn canceller(&self) -> super::Canceller {
        let (token, addr) = (self.cancel.clone(), self.addr);
        super::Canceller::new(async move {
            let stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
            token.cancel_query_raw(stream, NoTls).await.map_err(|e| e.to_string())
        })
    }

    /// The error a broken stream means: over the cap, or the transport's own.
    fn failed(&self, e: tokio_postgres::Error, cap: u64) -> SqlError {
        match self.refused.load(Ordering::SeqCst) {
            0 => server_or_transport(e),
            size => SqlError::Limit(format!(
                "the server sent a message of {size} bytes, over the {cap} bytes the step's `limits.response_size` allows; the connection is closed"
            )),
        }
    }

    pub(super) async fn run(
        &mut self,
        statement: &str,
        params: &[Value],
        want: Want,
        budget: &mut Budget,
    ) -> Result<Answer, SqlError> {
        let cap = budget.message_cap();
        let prepared = self.client.prepare(statement).await.map_err(|e| self.failed(e, cap))?;
        super::arity(prepared.params().len(), params.len())?;
        let typed = params
            .iter()
            .zip(prepared.params())
            .enumerate()
            .map(|(i, (v, ty))| param(v, ty).map_err(|why| SqlError::Invalid(format!("parameter ${}: {why}", i + 1))))
            .collect::<Result<Vec<_>, _>>()?;
        let refs = typed.iter().map(|b| b.as_ref() as &(dyn ToSql + Sync));
        let cap = budget.message_cap();
        // execute() returns the count and decodes nothing: a void or record result is no error.
        if want == Want::Count {
            let n = self.client.execute_raw(&prepared, refs).await.map_err(|e| self.failed(e, cap))?;
            return Ok(Answer::Count(n));
        }
        let columns: Vec<super::Column> = prepared
            .columns()
            .iter()
            .map(|c| super::Column { name: c.name().to_string(), type_name: c.type_().name().to_string() })
            .collect();
        let stream = self.client.query_raw(&prepared, refs).await.map_err(|e| self.failed(e, cap))?;
        let mut stream = std::pin::pin!(stream);
        let mut rows = Vec::new();
        while let Some(row) = futures::StreamExt::next(&mut stream).await {
            let row = row.map_err(|e| self.failed(e, cap))?;
            let values = (0..row.len()).map(|i| column(&row, i)).collect::<Result<Vec<_>, _>>()?;
            budget.take(&values)?;
            rows.push(values);
        }
        Ok(Answer::Rows(super::Rows { columns, rows }))
    }

    pub(super) async fn control(&mut self, statement: &str) -> Result<(), SqlError> {
        self.client.batch_execute(statement).await.map_err(server_or_transport)
    }

    pub(super) async fn cancel(&mut self) {
        if let Err(e) = self.canceller().run().await {
            tracing::warn!("cannot cancel the statement: {e}");
        }
        // What the cancelled statement left unread is answered by the next one's error, or here.
        let _ = self.client.batch_execute("").await;
    }

    /// Ends a read-only grant's transaction: rolled back, whatever the plugin asked, and any
    /// session-level advisory lock a function took released, since those outlive a rollback.
    pub(super) async fn end_readonly(&mut self) -> Result<(), SqlError> {
        self.client.batch_execute("ROLLBACK; SELECT pg_advisory_unlock_all()").await.map_err(server_or_transport)
    }
}

/// Asks the server at the other end of `tcp` for TLS and shakes hands, verifying `host`.
async fn start_tls(
    mut tcp: TcpStream,
    host: &str,
    ca_file: Option<&std::path::Path>,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, SqlError> {
    let transport = |e: std::io::Error| SqlError::Transport(format!("cannot start TLS: {e}"));
    tcp.write_all(&SSL_REQUEST).await.map_err(transport)?;
    let mut answer = [0u8; 1];
    tcp.read_exact(&mut answer).await.map_err(transport)?;
    if answer[0] != b'S' {
        return Err(SqlError::Transport(
            "the server does not offer TLS: set `tls: disable` for a database on this machine, or turn on its ssl"
                .into(),
        ));
    }
    let config = std::sync::Arc::new(super::tls_config(ca_file)?);
    let name = rustls::pki_types::ServerName::try_from(host.to_string())
        .map_err(|e| SqlError::Invalid(format!("`{host}` is not a name TLS can verify: {e}")))?;
    tokio_rustls::TlsConnector::from(config).connect(name, tcp).await.map_err(transport)
}

/// NULL of whatever type the server expects.
#[derive(Debug)]
struct Null;

impl ToSql for Null {
    fn to_sql(&self, _: &Type, _: &mut bytes::BytesMut) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        Ok(IsNull::Yes)
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    tokio_postgres::types::to_sql_checked!();
}

type Param = Box<dyn ToSql + Sync + Send>;

/// A value as the parameter type the server inferred, or why it cannot be one.
fn param(v: &Value, ty: &Type) -> Result<Param, String> {
    let out_of_range = || format!("{v:?} does not fit in {}", ty.name());
    Ok(match (v, ty) {
        (Value::Null, _) => Box::new(Null),
        (Value::Boolean(b), &Type::BOOL) => Box::new(*b),
        (Value::Integer(n), &Type::INT2) => Box::new(i16::try_from(*n).map_err(|_| out_of_range())?),
        (Value::Integer(n), &Type::INT4) => Box::new(i32::try_from(*n).map_err(|_| out_of_range())?),
        (Value::Integer(n), &Type::INT8) => Box::new(*n),
        (Value::Integer(n), &Type::OID) => Box::new(u32::try_from(*n).map_err(|_| out_of_range())?),
        (Value::Integer(n), &Type::FLOAT8) => Box::new(*n as f64),
        (Value::Float(f), &Type::FLOAT8) => Box::new(*f),
        (Value::Float(f), &Type::FLOAT4) => Box::new(*f as f32),
        (Value::Text(t), ty) if <String as ToSql>::accepts(ty) => Box::new(t.clone()),
        (Value::Bytes(b), &Type::BYTEA) => Box::new(b.clone()),
        (v, ty) => {
            return Err(format!(
                "the server expects {}, which a {} cannot be: pass text and cast it in SQL (`$n::text::{}`)",
                ty.name(),
                kind(v),
                ty.name()
            ))
        }
    })
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Boolean(_) => "boolean",
        Value::Integer(_) => "integer",
        Value::Float(_) => "float",
        Value::Text(_) => "text",
        Value::Bytes(_) => "bytes",
    }
}

/// Column `i` of a row as a value, or why its type is not decoded.
fn column(row: &tokio_postgres::Row, i: usize) -> Result<Value, SqlError> {
    let ty = row.columns()[i].type_().clone();
    let bad = |e: tokio_postgres::Error| SqlError::Invalid(format!("column `{}`: {e}", row.columns()[i].name()));
    let v = match ty {
        Type::BOOL => row.try_get::<_, Option<bool>>(i).map_err(bad)?.map(Value::Boolean),
        Type::INT2 => row.try_get::<_, Option<i16>>(i).map_err(bad)?.map(|n| Value::Integer(n.into())),
        Type::INT4 => row.try_get::<_, Option<i32>>(i).map_err(bad)?.map(|n| Value::Integer(n.into())),
        Type::INT8 => row.try_get::<_, Option<i64>>(i).map_err(bad)?.map(Value::Integer),
        Type::OID => row.try_get::<_, Option<u32>>(i).map_err(bad)?.map(|n| Value::Integer(n.into())),
        Type::FLOAT4 => row.try_get::<_, Option<f32>>(i).map_err(bad)?.map(|f| Value::Float(f.into())),
        Type::FLOAT8 => row.try_get::<_, Option<f64>>(i).map_err(bad)?.map(Value::Float),
        Type::BYTEA => row.try_get::<_, Option<Vec<u8>>>(i).map_err(bad)?.map(Value::Bytes),
        // A function that returns nothing (`pg_sleep`, `pg_notify`) returns a value of nothing.
        Type::VOID => None,
        ref t if <String as tokio_postgres::types::FromSql>::accepts(t) => {
            row.try_get::<_, Option<String>>(i).map_err(bad)?.map(Value::Text)
        }
        other => {
            let name = row.columns()[i].name();
            return Err(SqlError::Invalid(format!(
                "column `{name}` is {}, which the host does not decode: select it as text (`{name}::text`)",
                other.name()
            )));
        }
    };
    Ok(v.unwrap_or(Value::Null))
}

/// Drives a connection's socket until the client is dropped or the server goes away.
async fn drive<S, T>(connection: tokio_postgres::Connection<S, T>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    if let Err(e) = connection.await {
        tracing::debug!("database connection ended: {e}");
    }
}
