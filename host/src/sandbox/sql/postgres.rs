//! A PostgreSQL session over tokio-postgres: one prepared statement per call
//! (the extended protocol takes one statement, never a batch), parameters
//! converted to the types the server inferred, rows streamed against the caps.

use super::{Answer, Budget, SqlError, Value, Want};
use crate::capability::database::TlsMode;
use crate::capability::Database;
use std::net::IpAddr;
use tokio_postgres::types::{IsNull, ToSql, Type};
use tokio_postgres::{CancelToken, Client, NoTls};
use tokio_postgres_rustls::MakeRustlsConnect;

/// An open session and how to cancel its running statement.
pub(super) struct Session {
    client: Client,
    cancel: CancelToken,
    tls: Option<MakeRustlsConnect>,
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

impl Session {
    /// Connects to `ip`, verifying TLS against the grant's host name.
    pub(super) async fn connect(db: &Database, ip: IpAddr) -> Result<Self, SqlError> {
        let g = &db.grant;
        let mut config = tokio_postgres::Config::new();
        config
            .host(&g.location.host)
            .hostaddr(ip)
            .port(g.location.port)
            .dbname(&g.location.database)
            .user(&g.user)
            .password(&db.password)
            .application_name(concat!("gantry/", env!("CARGO_PKG_VERSION")));
        let (client, tls) = match g.tls {
            TlsMode::Disable => {
                config.ssl_mode(tokio_postgres::config::SslMode::Disable);
                let (client, connection) = config.connect(NoTls).await.map_err(server_or_transport)?;
                tokio::spawn(drive(connection));
                (client, None)
            }
            TlsMode::Require => {
                config.ssl_mode(tokio_postgres::config::SslMode::Require);
                let tls = MakeRustlsConnect::new(super::tls_config(g.ca_file.as_deref())?);
                let (client, connection) = config.connect(tls.clone()).await.map_err(server_or_transport)?;
                tokio::spawn(drive(connection));
                (client, Some(tls))
            }
        };
        let cancel = client.cancel_token();
        Ok(Self { client, cancel, tls })
    }

    pub(super) async fn run(
        &mut self,
        statement: &str,
        params: &[Value],
        want: Want,
        budget: &mut Budget,
    ) -> Result<Answer, SqlError> {
        let prepared = self.client.prepare(statement).await.map_err(server_or_transport)?;
        super::arity(prepared.params().len(), params.len())?;
        let typed = params
            .iter()
            .zip(prepared.params())
            .enumerate()
            .map(|(i, (v, ty))| param(v, ty).map_err(|why| SqlError::Invalid(format!("parameter ${}: {why}", i + 1))))
            .collect::<Result<Vec<_>, _>>()?;
        let refs = typed.iter().map(|b| b.as_ref() as &(dyn ToSql + Sync));
        if want == Want::Count && prepared.columns().is_empty() {
            let n = self.client.execute_raw(&prepared, refs).await.map_err(server_or_transport)?;
            return Ok(Answer::Count(n));
        }
        let columns: Vec<super::Column> = prepared
            .columns()
            .iter()
            .map(|c| super::Column { name: c.name().to_string(), type_name: c.type_().name().to_string() })
            .collect();
        let stream = self.client.query_raw(&prepared, refs).await.map_err(server_or_transport)?;
        let mut stream = std::pin::pin!(stream);
        let mut rows = Vec::new();
        while let Some(row) = futures::StreamExt::next(&mut stream).await {
            let row = row.map_err(server_or_transport)?;
            let values = (0..row.len()).map(|i| column(&row, i)).collect::<Result<Vec<_>, _>>()?;
            budget.take(&values)?;
            rows.push(values);
        }
        match want {
            Want::Rows => Ok(Answer::Rows(super::Rows { columns, rows })),
            Want::Count => Ok(Answer::Count(stream.rows_affected().unwrap_or(rows.len() as u64))),
        }
    }

    pub(super) async fn control(&mut self, statement: &str) -> Result<(), SqlError> {
        self.client.batch_execute(statement).await.map_err(server_or_transport)
    }

    pub(super) async fn cancel(&mut self) {
        let sent = match &self.tls {
            Some(tls) => self.cancel.cancel_query(tls.clone()).await,
            None => self.cancel.cancel_query(NoTls).await,
        };
        if let Err(e) = sent {
            tracing::warn!("cannot cancel the statement: {e}");
        }
        // What the cancelled statement left unread is answered by the next one's error, or here.
        let _ = self.client.batch_execute("").await;
    }
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
