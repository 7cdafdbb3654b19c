//! `gantry report <id> --html` and `gantry ui`: the HTML run report, written
//! to a file or served for every recorded run on 127.0.0.1 (a page whose run
//! is still going reloads itself), and the runs' Prometheus metrics at `/metrics`.

use crate::report::metrics::{exposition, RunFacts};
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
    println!("gantry ui: http://{}/ (runs in {}; metrics at /metrics)", listener.local_addr()?, store.location());
    let read = Read::default();
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => accepted?,
            _ = tokio::signal::ctrl_c() => return Ok(0),
        };
        let (store, read) = (store.clone(), read.clone());
        tokio::spawn(async move {
            if let Err(e) = answer(stream, store, read).await {
                tracing::debug!("ui: {e}");
            }
        });
    }
}

/// What `/metrics` has read of each run: the facts, and the number of events they were read at (a
/// run that recorded more is read again).
type Read = Arc<std::sync::Mutex<std::collections::BTreeMap<String, (usize, RunFacts)>>>;

/// The metrics of every recorded run, reading only the journals that grew since the last scrape.
async fn metrics(store: &dyn RunStore, read: &Read) -> Result<String, crate::run::store::StoreError> {
    let mut all = Vec::new();
    for run in store.list().await? {
        let known = read.lock().unwrap_or_else(|e| e.into_inner()).get(&run.id).filter(|(n, _)| *n == run.events).map(|(_, f)| f.clone());
        let facts = match known {
            Some(facts) => facts,
            None => {
                let facts = RunFacts::of(&store.read(&run.id).await?.records);
                read.lock().unwrap_or_else(|e| e.into_inner()).insert(run.id.clone(), (run.events, facts.clone()));
                facts
            }
        };
        all.push(facts);
    }
    Ok(exposition(&all))
}

async fn answer(stream: tokio::net::TcpStream, store: Arc<dyn RunStore>, read: Read) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).await?;
    // The headers are not needed: read them off so the client sees its request taken.
    let mut header = String::new();
    while reader.read_line(&mut header).await? > 2 {
        header.clear();
    }
    let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
    let html = "text/html; charset=utf-8";
    let (status, kind, body) = match path.as_str() {
        "/" => ("200 OK", html, index(store.as_ref()).await),
        "/metrics" => match metrics(store.as_ref(), &read).await {
            Ok(text) => ("200 OK", "text/plain; version=0.0.4; charset=utf-8", text),
            Err(e) => ("503 Service Unavailable", "text/plain; charset=utf-8", format!("the run store cannot be read: {e}\n")),
        },
        p => match p.strip_prefix("/runs/") {
            Some(id) if id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') => {
                match store.read(id).await {
                    Ok(journal) => ("200 OK", html, html::page(&journal.records, true)),
                    Err(e) => ("404 Not Found", html, format!("<!DOCTYPE html><title>not found</title><p>{e}</p>")),
                }
            }
            _ => ("404 Not Found", html, "<!DOCTYPE html><title>not found</title><p>not found</p>".to_string()),
        },
    };
    let mut stream = reader.into_inner();
    let head = format!(
        "HTTP/1.1 {status}\r\ncontent-type: {kind}\r\ncontent-length: {}\r\ncache-control: no-store\r\nconnection: close\r\n\r\n",
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
