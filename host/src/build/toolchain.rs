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

/// Debian packages missing for the build-std route, looking under `root` and in `path`.
fn missing_debian_packages(root: &Path, path: Option<std::ffi::OsString>) -> Vec<&'static str> {
    let under_root = |p: &str| root.join(p.trim_start_matches('/'));
    let has_wasm_ld = path.is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join("wasm-ld").is_file()));
    [
        (DEBIAN_RUSTC, "rustc-web"),
        (DEBIAN_CARGO, "cargo-web"),
        (DEBIAN_STD_SRC, "rust-web-src"),
        (WASI_LIBC, "wasi-libc"),
    ]
    .iter()
    .filter(|(p, _)| !under_root(p).exists())
    .map(|(_, pkg)| *pkg)
    .chain((!has_wasm_ld).then_some("lld"))
    .collect()
}

fn no_toolchain(missing: &[&str]) -> BuildError {
    BuildError::NoToolchain {
        remedy: format!(
            "run `rustup target add {TARGET}`, or where rustup cannot download it, \
             `apt-get install rustc-web cargo-web rust-web-src lld wasi-libc` (missing here: {}); \
             scripts/setup does this",
            missing.join(" ")
        ),
    }
}

impl Toolchain {
    /// Picks rustup's target when installed, else Debian's toolchain, else says what to install.
    pub fn detect() -> Result<Self, BuildError> {
        if rustup_has_target() {
            return Ok(Toolchain::Rustup);
        }
        let missing = missing_debian_packages(Path::new("/"), std::env::var_os("PATH"));
        if missing.is_empty() {
            Ok(Toolchain::Debian)
        } else {
            Err(no_toolchain(&missing))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bare_machine_is_told_exactly_what_to_install() {
        let empty = tempfile::tempdir().unwrap();
        let missing = missing_debian_packages(empty.path(), None);
        assert_eq!(missing, ["rustc-web", "cargo-web", "rust-web-src", "wasi-libc", "lld"]);
        let message = no_toolchain(&missing).to_string();
        assert!(
            message.starts_with("no Rust toolchain for wasm32-wasip1 found: run `rustup target add wasm32-wasip1`"),
            "{message}"
        );
        assert!(message.contains("apt-get install rustc-web cargo-web rust-web-src lld wasi-libc"), "{message}");
        assert!(message.contains("missing here: rustc-web cargo-web rust-web-src wasi-libc lld"), "{message}");
    }

    #[test]
    fn a_complete_debian_layout_is_found() {
        let root = tempfile::tempdir().unwrap();
        for p in [DEBIAN_RUSTC, DEBIAN_CARGO] {
            let f = root.path().join(p.trim_start_matches('/'));
            std::fs::create_dir_all(f.parent().unwrap()).unwrap();
            std::fs::write(f, "").unwrap();
        }
        for d in [DEBIAN_STD_SRC, WASI_LIBC] {
            std::fs::create_dir_all(root.path().join(d.trim_start_matches('/'))).unwrap();
        }
        let bin = root.path().join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::write(bin.join("wasm-ld"), "").unwrap();
        assert!(missing_debian_packages(root.path(), Some(bin.into_os_string())).is_empty());
    }
}
