//! Certificates a test makes with `openssl`: a private CA and leaf certificates it signs, for
//! TLS servers on 127.0.0.1 that the host must verify against a granted CA bundle.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A CA made for one test: `ca.pem` (for a client to trust) and its key in `dir`.
pub struct Ca {
    dir: PathBuf,
}

/// A leaf certificate and its key, as PEM files.
pub struct Leaf {
    /// The certificate.
    pub cert: PathBuf,
    /// Its private key.
    pub key: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl").current_dir(dir).args(args).output().expect("openssl runs");
    assert!(out.status.success(), "openssl {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
}

impl Ca {
    /// A new CA in `dir`.
    pub fn new(dir: &Path) -> Self {
        let ca = ["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "2"];
        openssl(dir, &[&ca[..], &["-keyout", "ca.key", "-out", "ca.pem", "-subj", "/CN=gantry test CA"]].concat());
        Self { dir: dir.to_path_buf() }
    }

    /// A certificate for `name` (DNS names and IP addresses as subjectAltName) valid `days` from now.
    pub fn issue(&self, name: &str, sans: &[&str], days: i32) -> Leaf {
        let key = self.dir.join(format!("{name}.key"));
        let cert = self.dir.join(format!("{name}.pem"));
        let csr = format!("{name}.csr");
        let ext = format!("{name}.ext");
        let san: Vec<String> = sans
            .iter()
            .map(|s| if s.parse::<std::net::IpAddr>().is_ok() { format!("IP:{s}") } else { format!("DNS:{s}") })
            .collect();
        std::fs::write(
            self.dir.join(&ext),
            format!("basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\nsubjectAltName={}\n", san.join(",")),
        )
        .unwrap();
        let key_text = key.display().to_string();
        openssl(
            &self.dir,
            &[
                "req",
                "-new",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                &key_text,
                "-out",
                &csr,
                "-subj",
                &format!("/CN={name}"),
            ],
        );
        openssl(
            &self.dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                &days.to_string(),
                "-extfile",
                &ext,
                "-out",
                &cert.display().to_string(),
            ],
        );
        Leaf { cert, key }
    }
}
