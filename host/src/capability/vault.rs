//! HashiCorp Vault as a secret store: KV v2 reads (`vault:MOUNT/data/PATH[#KEY]`), signed in with
//! a token or an AppRole whose ids come from other sources, in a namespace, over TLS with the
//! system roots or a granted CA bundle. The token never leaves the host and is never logged.

use super::source::{send, store_said, Patience, SecretSource, SourceError};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Where Vault is and how the host signs in to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VaultStore {
    /// Its origin, e.g. `https://vault.internal:8200`.
    pub address: String,
    /// An Enterprise namespace (`X-Vault-Namespace`), e.g. `team-a`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// How the host signs in.
    pub auth: VaultAuth,
    /// PEM certificates to trust besides the system roots, for a Vault behind a private CA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// How long it is waited for, and how often asked.
    #[serde(default)]
    pub patience: Patience,
}

/// How the host signs in to Vault; the credentials themselves come from other sources.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "method", rename_all = "kebab-case")]
pub enum VaultAuth {
    /// A token (`X-Vault-Token`).
    Token {
        /// The token's source.
        token: SecretSource,
    },
    /// AppRole: `POST /v1/auth/<mount>/login` with a role id and a secret id, for a token.
    AppRole {
        /// Where the AppRole method is mounted (`approle` by default).
        mount: String,
        /// The role id's source.
        role_id: SecretSource,
        /// The secret id's source.
        secret_id: SecretSource,
    },
}

impl VaultAuth {
    /// AppRole's usual mount.
    pub const APPROLE_MOUNT: &'static str = "approle";
}

/// Checks a KV v2 API path: `MOUNT/data/PATH`, as `vault kv get -mount=MOUNT PATH` reads it.
pub fn check_path(path: &str) -> Result<(), String> {
    let valid = !path.starts_with('/')
        && !path.ends_with('/')
        && path.split_once("/data/").is_some_and(|(mount, rest)| !mount.is_empty() && !rest.is_empty())
        && !path.split('/').any(|part| part.is_empty() || part == "." || part == "..");
    match valid {
        true => Ok(()),
        false => {
            let hint = match path.split_once('/') {
                Some((mount, rest)) if !path.contains("/data/") && !rest.is_empty() => {
                    format!(": did you mean `vault:{mount}/data/{rest}`?")
                }
                _ => ", e.g. `secret/data/app`".to_string(),
            };
            Err(format!("`vault:{path}` must name a KV v2 path `MOUNT/data/PATH`{hint}"))
        }
    }
}

/// One run's sign-in to Vault: the client and the token are made once, on the first read.
#[derive(Default)]
pub struct Session {
    signed_in: tokio::sync::OnceCell<(reqwest::Client, String)>,
}

impl Session {
    /// The secret at `path` (its whole data as JSON, or the value of `key`).
    pub async fn read(&self, store: &VaultStore, path: &str, key: Option<&str>) -> Result<String, SourceError> {
        let (http, token) = self.signed_in.get_or_try_init(|| sign_in(store)).await?;
        let url = format!("{}/v1/{path}", store.address);
        let (status, text) =
            send("Vault", store.patience, || with_namespace(store, http.get(&url)).header("x-vault-token", token))
                .await?;
        let answer: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        let version = answer.pointer("/data/metadata/version").and_then(|v| v.as_u64()).unwrap_or_default();
        let deleted = match answer.pointer("/data/metadata/deletion_time") {
            Some(serde_json::Value::String(t)) if !t.is_empty() => {
                Some(format!("its version {version} was deleted at {t}"))
            }
            _ => None,
        };
        match status.as_u16() {
            200 => {}
            404 => {
                return Err(SourceError::refused(deleted.unwrap_or_else(|| "Vault has no secret there".to_string())))
            }
            403 => {
                return Err(SourceError::refused(format!(
                    "Vault refused the read (403{}): the token's policy must allow `read` on this path",
                    store_said(&text)
                )))
            }
            _ => return Err(SourceError::refused(format!("Vault answered {status}{}", store_said(&text)))),
        }
        let Some(data) = answer.pointer("/data/data").and_then(|d| d.as_object()) else {
            return Err(SourceError::refused(
                deleted.unwrap_or_else(|| "not a KV v2 secret (no data.data in the answer)".to_string()),
            ));
        };
        match key {
            None => Ok(serde_json::Value::Object(data.clone()).to_string()),
            Some(key) => match data.get(key) {
                Some(serde_json::Value::String(s)) => Ok(s.clone()),
                Some(serde_json::Value::Null) | None => {
                    let keys: Vec<&str> = data.keys().map(String::as_str).collect();
                    Err(SourceError::refused(format!("the secret has no key `{key}` (it has: {})", keys.join(", "))))
                }
                Some(other) => Ok(other.to_string()),
            },
        }
    }
}

fn with_namespace(store: &VaultStore, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
    match &store.namespace {
        Some(ns) => request.header("x-vault-namespace", ns),
        None => request,
    }
}

/// The store's client (its CA bundle added) and a token: the configured one, or AppRole's.
async fn sign_in(store: &VaultStore) -> Result<(reqwest::Client, String), SourceError> {
    let mut builder = reqwest::Client::builder();
    if let Some(file) = &store.ca_file {
        let pem =
            std::fs::read(file).map_err(|e| SourceError::refused(format!("the CA bundle {}: {e}", file.display())))?;
        let certificates = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| SourceError::refused(format!("the CA bundle {}: {e}", file.display())))?;
        for certificate in certificates {
            builder = builder.add_root_certificate(certificate);
        }
    }
    let http = builder.build().map_err(|e| SourceError::refused(format!("no HTTP client for Vault: {e}")))?;
    let credential = |source: &SecretSource, what: &str| {
        source.read().map_err(|e| SourceError::refused(format!("the {what} for Vault ({source}): {e}")))
    };
    let token = match &store.auth {
        VaultAuth::Token { token } => credential(token, "token")?,
        VaultAuth::AppRole { mount, role_id, secret_id } => {
            let body = serde_json::json!({
                "role_id": credential(role_id, "AppRole role id")?,
                "secret_id": credential(secret_id, "AppRole secret id")?,
            });
            let url = format!("{}/v1/auth/{mount}/login", store.address);
            let what = format!("the AppRole login at auth/{mount}");
            let (status, text) = send(&what, store.patience, || {
                with_namespace(store, http.post(&url)).header("content-type", "application/json").body(body.to_string())
            })
            .await?;
            if !status.is_success() {
                return Err(SourceError::refused(format!("{what} answered {status}{}", store_said(&text))));
            }
            let answer: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
            match answer.pointer("/auth/client_token").and_then(|t| t.as_str()) {
                Some(token) if !token.is_empty() => token.to_string(),
                _ => return Err(SourceError::refused(format!("{what} answered no auth.client_token"))),
            }
        }
    };
    Ok((http, token))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kv2_paths_name_a_mount_and_a_secret() {
        for good in ["secret/data/app", "kv/data/prod/db", "team/kv/data/x"] {
            assert!(check_path(good).is_ok(), "{good}");
        }
        let hinted = check_path("secret/app").unwrap_err();
        assert!(hinted.ends_with("did you mean `vault:secret/data/app`?"), "{hinted}");
        for bad in ["/secret/data/app", "secret/data/", "data/app", "secret/data/../sys/x", "secret//data/app"] {
            assert!(check_path(bad).is_err(), "{bad}");
        }
    }
}
