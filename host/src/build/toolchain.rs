//! Which Rust toolchain builds wasm32-wasip1 here: rustup's target when it is
//! installed, otherwise Debian's `rustc-web` building std from source.

use super::BuildError;
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Command;

const TARGET: &str = "wasm32-wasip1";
const DEBIAN_RUSTC: &str = "/usr/bin/rustc";
const DEBIAN_CARGO: &str = "/usr/bin/cargo";
const DEBIAN_STD_SRC: &str = "/usr/lib/rustlib/src/rust/library";
const WASI_LIBC: &str = "/usr/lib/wasm32-wasi";

/// A toolchain able to build plugins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Toolchain {
    /// `cargo` with rustup's installed `wasm32-wasip1` target.
    Rustup,
    /// Debian's `rustc-web`, building std with `-Zbuild-std`.
    Debian,
}

impl fmt::Display for Toolchain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Toolchain::Rustup => write!(f, "cargo (rustup target {TARGET})"),
            Toolchain::Debian => write!(f, "{DEBIAN_CARGO} (Debian rustc-web, build-std)"),
        }
    }
}

fn rustup_has_target() -> bool {
    let Ok(out) = Command::new("rustc").args(["--print", "sysroot"]).output() else {
        return false;
    };
    let sysroot = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    out.status.success() && sysroot.join("lib/rustlib").join(TARGET).is_dir()
}

fn debian_complete() -> Result<(), String> {
    let missing: Vec<&str> = [
        (DEBIAN_RUSTC, "rustc-web"),
        (DEBIAN_CARGO, "cargo-web"),
        (DEBIAN_STD_SRC, "rust-web-src"),
        (WASI_LIBC, "wasi-libc"),
    ]
    .iter()
    .filter(|(path, _)| !Path::new(path).exists())
    .map(|(_, pkg)| *pkg)
    .chain(which("wasm-ld").is_none().then_some("lld"))
    .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(missing.join(" "))
    }
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .and_then(|paths| std::env::split_paths(&paths).map(|p| p.join(program)).find(|p| p.is_file()))
}

impl Toolchain {
    /// Picks rustup's target when installed, else Debian's toolchain, else says what to install.
    pub fn detect() -> Result<Self, BuildError> {
        if rustup_has_target() {
            return Ok(Toolchain::Rustup);
        }
        match debian_complete() {
            Ok(()) => Ok(Toolchain::Debian),
            Err(missing) => Err(BuildError::NoToolchain {
                remedy: format!(
                    "run `rustup target add {TARGET}`, or where rustup cannot download it, \
                     `apt-get install rustc-web cargo-web rust-web-src lld wasi-libc` (missing here: {missing}); \
                     scripts/setup does this"
                ),
            }),
        }
    }

    /// A `cargo build --release --target wasm32-wasip1` command for this toolchain.
    pub fn cargo_build(&self) -> Command {
        let mut cmd = match self {
            Toolchain::Rustup => Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into())),
            Toolchain::Debian => {
                let mut cmd = Command::new(DEBIAN_CARGO);
                // build-std needs nightly features; Debian's stable rustc allows
                // them under RUSTC_BOOTSTRAP. A cdylib needs no crt object, and
                // wasi-libc comes from Debian's package, not a bundled sysroot.
                cmd.env("RUSTC", DEBIAN_RUSTC)
                    .env("RUSTC_BOOTSTRAP", "1")
                    .env("RUSTFLAGS", format!("-C linker=wasm-ld -C link-self-contained=no -L {WASI_LIBC}"))
                    .env_remove("CARGO_ENCODED_RUSTFLAGS")
                    .env_remove("RUSTUP_TOOLCHAIN");
                cmd
            }
        };
        cmd.args(["build", "--release", "--target", TARGET]);
        if *self == Toolchain::Debian {
            cmd.arg("-Zbuild-std=std,panic_abort");
        }
        // Variables cargo sets for the process running us would point the
        // inner build at the outer one's crate and toolchain.
        for var in [
            "CARGO_MANIFEST_DIR",
            "CARGO_PKG_NAME",
            "CARGO_PRIMARY_PACKAGE",
            "RUSTC_WRAPPER",
            "RUSTC_WORKSPACE_WRAPPER",
        ] {
            cmd.env_remove(var);
        }
        cmd
    }
}
