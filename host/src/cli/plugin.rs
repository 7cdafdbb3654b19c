//! `gantry plugin build|inspect`.

use crate::build::{build_crate, BuildOptions};
use crate::sandbox::{Runtime, CONTRACT_VERSION};
use anyhow::Context as _;
use clap::Subcommand;
use std::path::PathBuf;

#[derive(Debug, Subcommand)]
pub(crate) enum PluginCommand {
    /// Build a plugin crate into a component; prints its path and sha256.
    Build {
        /// Directory of the plugin crate.
        crate_dir: PathBuf,
        /// Cargo target directory (default: the crate workspace's).
        #[arg(long)]
        target_dir: Option<PathBuf>,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print what a plugin says about itself, its contract version and sha256.
    Inspect {
        /// The component file.
        file: PathBuf,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
}

impl PluginCommand {
    pub(crate) async fn execute(self) -> anyhow::Result<u8> {
        match self {
            PluginCommand::Build { crate_dir, target_dir, json } => {
                let options = BuildOptions { target_dir, toolchain: None };
                let built = tokio::task::spawn_blocking(move || build_crate(&crate_dir, &options)).await??;
                if json {
                    let value = serde_json::json!({"path": built.path, "sha256": built.sha256, "size": built.size});
                    println!("{value}");
                } else {
                    println!("{}", built.path.display());
                    println!("sha256:{}", built.sha256);
                }
                Ok(0)
            }
            PluginCommand::Inspect { file, json } => {
                let runtime = Runtime::builder().build().map_err(|e| anyhow::anyhow!("{e:#}"))?;
                let plugin = runtime.load(&file)?;
                let info = plugin.describe().await.with_context(|| format!("describing {}", file.display()))?;
                if json {
                    let value = serde_json::json!({
                        "plugin": info,
                        "contract": format!("gantry:step@{CONTRACT_VERSION}"),
                        "sha256": plugin.sha256(),
                        "cache": plugin.cache_status(),
                    });
                    println!("{value}");
                } else {
                    println!("name:         {}", info.name);
                    println!("version:      {}", info.version);
                    println!("description:  {}", info.description);
                    println!("contract:     gantry:step@{CONTRACT_VERSION}");
                    println!("sha256:       {}", plugin.sha256());
                    println!("capabilities: {}", info.capabilities.join(", "));
                    println!("input schema:\n{}", serde_json::to_string_pretty(&info.input_schema)?);
                }
                Ok(0)
            }
        }
    }
}
