//! `gantry report <id> --html` and `gantry ui`: the HTML run report, written
//! to a file or served for every recorded run on 127.0.0.1 (a page whose run
//! is still going reloads itself).

use crate::report::{escape, html};
use crate::run::store::RunStore;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// Writes the report of run `id` to `path`.
pub(crate) async fn report(id: String, path: PathBuf, state: Option<&str>) -> anyhow::Result<u8> {
    let store = super::pipeline::store(state).await?;
    let journal = store.read(&id).await?;
    let page = html::page(&journal.records, false);
    // Written whole, then renamed: a reader never sees half a report.
    let partial = path.with_extension("html.partial");
    std::fs::write(&partial, page).map_err(|e| anyhow::anyhow!("{}: {e}", partial.display()))?;
    std::fs::rename(&partial, &path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    println!("{}: report of run {id}", path.display());
    Ok(0)
}

/// Serves the index of runs and each run's report on 127.0.0.1:`port` until interrupted.
pub(crate) async fn serve(port: u16, state: Option<&str>) -> anyhow::Result<u8> {
    let store = super::pipeline::store(state).await?;
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    println!("gantry ui: http://{}/ (runs in {})", listener.local_addr()?, store.location());
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => accepted?,
            _ = tokio::signal::ctrl_c() => return Ok(0),
        };
        let store = store.clone();
        tokio::spawn(async move {
            if let Err(e) = answer(stream, store).await {
                tracing::debug!("ui: {e}");
            }
        });
    }
}

async fn answer(stream: tokio::net::TcpStream, store: Arc<dyn RunStore>) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).await?;
    // The headers are not needed: read them off so the client sees its request taken.
    let mut header = String::new();
    while reader.read_line(&mut header).await? > 2 {
        header.clear();
    }
    let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
    let (status, body) = match path.as_str() {
        "/" => ("200 OK", index(store.as_ref()).await),
        p => match p.strip_prefix("/runs/") {
            Some(id) if id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') => {
                match store.read(id).await {
                    Ok(journal) => ("200 OK", html::page(&journal.records, true)),
                    Err(e) => ("404 Not Found", format!("<!DOCTYPE html><title>not found</title><p>{e}</p>")),
                }
            }
            _ => ("404 Not Found", "<!DOCTYPE html><title>not found</title><p>not found</p>".to_string()),
        },
    };
    let mut stream = reader.into_inner();
    let head = format!(
        "HTTP/1.1 {status}\r\ncontent-type: text/html; charset=utf-8\r\ncontent-length: {}\r\ncache-control: no-store\r\nconnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}

/// Every recorded run, newest first, linking to its report.
async fn index(store: &dyn RunStore) -> String {
    let mut page = String::from(
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>gantry runs</title>\
         <style>body{font:14px system-ui,sans-serif;margin:24px}td{padding:2px 10px}</style></head><body><h1>Runs</h1><table>",
    );
    match store.list().await {
        Ok(runs) => {
            for run in runs.iter().rev() {
                page += &format!(
                    "<tr><td><a href=\"/runs/{id}\">{id}</a></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                    escape(&run.status),
                    escape(&run.pipeline),
                    escape(&run.environment),
                    escape(&run.entity),
                    escape(run.rollout.as_deref().unwrap_or("")),
                    id = escape(&run.id)
                );
            }
        }
        Err(e) => page += &format!("<tr><td>{}</td></tr>", escape(&e.to_string())),
    }
    page + "</table></body></html>"
}
