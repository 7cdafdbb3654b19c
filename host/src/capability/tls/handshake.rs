//! The `tls` interface: a handshake with a `host:port` the step was granted under `tls:`. The host
//! checks the target against the grant and its addresses as HTTP's, connects (after an SMTP or
//! PostgreSQL STARTTLS exchange when asked), shakes hands with TLS 1.2 or 1.3, verifies the chain
//! against the public roots and the step's granted CA file, and closes the connection without
//! sending any application data. The handshake completes whatever the verdict, so an expired,
//! misnamed or self-signed certificate is reported with its chain instead of a bare error.

use super::bindings::gantry::step::tls as wit;
use super::TlsGrant;
use crate::capability::address::Unreachable;
use crate::capability::probe::{read_ca_file, split_target};
use crate::capability::unit::CallContext;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use sha2::Digest;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

pub use wit::{Handshake, ProbeError, Starttls};

/// What the verifier concluded about the chain it was shown.
#[derive(Debug, Default)]
struct Verdict {
    trusted_by: Option<wit::Trust>,
    failure: Option<(wit::VerifyFailure, String)>,
    ocsp_stapled: bool,
}

/// Verifies the chain against the public roots, then the granted CA, records the verdict, and lets
/// the handshake finish either way: the probe reports a bad certificate, it never trusts one
/// (nothing is sent over the connection, which is closed at once).
#[derive(Debug)]
struct Recording {
    public: Arc<WebPkiServerVerifier>,
    granted: Option<Arc<WebPkiServerVerifier>>,
    provider: Arc<CryptoProvider>,
    verdict: Arc<Mutex<Verdict>>,
}

impl ServerCertVerifier for Recording {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let check = |v: &WebPkiServerVerifier| {
            v.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now).map(|_| ())
        };
        let mut verdict = self.verdict.lock().unwrap_or_else(|e| e.into_inner());
        verdict.ocsp_stapled = !ocsp_response.is_empty();
        match (check(&self.public), self.granted.as_deref().map(check)) {
            (Ok(()), _) => verdict.trusted_by = Some(wit::Trust::PublicRoots),
            (Err(_), Some(Ok(()))) => verdict.trusted_by = Some(wit::Trust::GrantedCa),
            // The granted CA knows the issuer the public roots do not: its complaint is the precise one.
            (Err(public), Some(Err(granted))) if classify(&public).0 == wit::VerifyFailure::UnknownIssuer => {
                verdict.failure = Some(classify(&granted))
            }
            (Err(public), _) => verdict.failure = Some(classify(&public)),
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// A verifier error as the contract's kinds, with rustls's words.
fn classify(error: &rustls::Error) -> (wit::VerifyFailure, String) {
    use wit::VerifyFailure as F;
    let kind = match error {
        rustls::Error::InvalidCertificate(e) => match e {
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => F::Expired,
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => F::NotYetValid,
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => F::NameMismatch,
            CertificateError::UnknownIssuer => F::UnknownIssuer,
            _ => F::Other,
        },
        _ => F::Other,
    };
    (kind, error.to_string())
}

fn verifier(roots: RootCertStore, provider: &Arc<CryptoProvider>) -> Result<Arc<WebPkiServerVerifier>, ProbeError> {
    WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| ProbeError::Invalid(format!("cannot set up verification: {e}")))
}

/// A client that speaks TLS 1.2 and 1.3 and records what it verified in `verdict`.
fn client(ca: Option<&Path>, verdict: Arc<Mutex<Verdict>>) -> Result<rustls::ClientConfig, ProbeError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let public = verifier(RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() }, &provider)?;
    let granted = match ca {
        Some(path) => {
            let mut roots = RootCertStore::empty();
            roots.add_parsable_certificates(read_ca_file(path).map_err(ProbeError::Invalid)?);
            Some(verifier(roots, &provider)?)
        }
        None => None,
    };
    let recording = Recording { public, granted, provider: provider.clone(), verdict };
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ProbeError::Invalid(format!("cannot set up TLS: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(recording))
        .with_no_client_auth())
}

/// Most bytes of clear-text exchange read before a STARTTLS: a greeting and the EHLO answer.
const CLEAR_TEXT_LIMIT: usize = 16 << 10;

/// Speaks `starttls` on a fresh connection until the server expects a TLS ClientHello.
async fn upgrade(stream: TcpStream, starttls: Starttls) -> Result<TcpStream, ProbeError> {
    let broke = |what: &str, e: std::io::Error| ProbeError::Transport(format!("{what}: {e}"));
    match starttls {
        Starttls::None => Ok(stream),
        Starttls::Postgres => {
            let mut stream = stream;
            // SSLRequest: length 8, code 80877103; the server answers `S` (go on) or `N`.
            stream
                .write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f])
                .await
                .map_err(|e| broke("sending SSLRequest", e))?;
            let mut answer = [0u8; 1];
            stream.read_exact(&mut answer).await.map_err(|e| broke("reading the SSLRequest answer", e))?;
            match answer[0] {
                b'S' => Ok(stream),
                b'N' => Err(ProbeError::Handshake("the PostgreSQL server does not offer TLS (it answered N)".into())),
                other => Err(ProbeError::Handshake(format!("not a PostgreSQL server (it answered byte {other:#04x})"))),
            }
        }
        Starttls::Smtp => {
            let mut reader = BufReader::new(stream);
            let mut read = 0;
            smtp_reply(&mut reader, &mut read, "220").await?;
            reader.get_mut().write_all(b"EHLO gantry.invalid\r\n").await.map_err(|e| broke("sending EHLO", e))?;
            let ehlo = smtp_reply(&mut reader, &mut read, "250").await?;
            if !ehlo.iter().any(|l| l.get(4..).is_some_and(|k| k.trim().eq_ignore_ascii_case("STARTTLS"))) {
                return Err(ProbeError::Handshake("the SMTP server does not offer STARTTLS".into()));
            }
            reader.get_mut().write_all(b"STARTTLS\r\n").await.map_err(|e| broke("sending STARTTLS", e))?;
            smtp_reply(&mut reader, &mut read, "220").await?;
            // The server waits for the ClientHello: nothing is left in the buffer.
            Ok(reader.into_inner())
        }
    }
}

/// Reads one SMTP reply (its `NNN-` lines up to the `NNN ` line); errs unless its code is `want`.
async fn smtp_reply(
    reader: &mut BufReader<TcpStream>,
    read: &mut usize,
    want: &str,
) -> Result<Vec<String>, ProbeError> {
    let mut lines = Vec::new();
    loop {
        let mut line = String::new();
        let n = reader
            .read_line(&mut line)
            .await
            .map_err(|e| ProbeError::Transport(format!("reading the SMTP server's reply: {e}")))?;
        *read += n;
        if n == 0 || *read > CLEAR_TEXT_LIMIT {
            return Err(ProbeError::Handshake("the SMTP server closed or talked too long before STARTTLS".into()));
        }
        let line = line.trim_end().to_string();
        let last = line.as_bytes().get(3) != Some(&b'-');
        if !line.starts_with(want) {
            let shown: String = line.chars().take(120).collect();
            return Err(ProbeError::Handshake(format!("the SMTP server answered `{shown}`, expected {want}")));
        }
        lines.push(line);
        if last {
            return Ok(lines);
        }
    }
}

/// One certificate as the contract carries it; an unparsable one keeps its digest only.
fn certificate(der: &CertificateDer<'_>) -> wit::Certificate {
    let sha256 = hex::encode(sha2::Sha256::digest(der.as_ref()));
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der.as_ref()) else {
        return wit::Certificate {
            subject: "(unparsable)".into(),
            issuer: String::new(),
            sans: Vec::new(),
            not_before: 0,
            not_after: 0,
            serial: String::new(),
            sha256,
        };
    };
    let sans = match cert.subject_alternative_name() {
        Ok(Some(ext)) => ext.value.general_names.iter().filter_map(general_name).collect(),
        _ => Vec::new(),
    };
    wit::Certificate {
        subject: cert.subject().to_string(),
        issuer: cert.issuer().to_string(),
        sans,
        not_before: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
        serial: cert.tbs_certificate.serial.to_str_radix(16),
        sha256,
    }
}

fn general_name(name: &x509_parser::extensions::GeneralName<'_>) -> Option<String> {
    use x509_parser::extensions::GeneralName;
    match name {
        GeneralName::DNSName(n) => Some(n.to_string()),
        GeneralName::IPAddress(b) => match b.len() {
            4 => Some(std::net::IpAddr::from(<[u8; 4]>::try_from(*b).ok()?).to_string()),
            16 => Some(std::net::IpAddr::from(<[u8; 16]>::try_from(*b).ok()?).to_string()),
            _ => None,
        },
        _ => None,
    }
}

/// What a failed handshake says: a TLS alert or refusal from the server, or a broken connection.
fn handshake_error(e: std::io::Error) -> ProbeError {
    match e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()) {
        Some(rustls::Error::AlertReceived(alert)) => ProbeError::Handshake(format!(
            "the server refused the handshake ({alert:?}); gantry speaks TLS 1.2 and 1.3, so a server offering only older versions answers this way"
        )),
        Some(tls) => ProbeError::Handshake(format!("the handshake failed: {tls}")),
        None => ProbeError::Transport(format!("the connection broke during the handshake: {e}")),
    }
}

/// Connects to `host:port` at one of `ips`, speaks `starttls`, shakes hands and reads what it showed.
async fn shake(
    host: &str,
    port: u16,
    ips: &[std::net::IpAddr],
    starttls: Starttls,
    ca: Option<&Path>,
) -> Result<Handshake, ProbeError> {
    let verdict = Arc::new(Mutex::new(Verdict::default()));
    let config = client(ca, verdict.clone())?;
    let name = ServerName::try_from(host.to_string())
        .map_err(|_| ProbeError::Invalid(format!("`{host}` is not a host name or address")))?;
    let addrs: Vec<std::net::SocketAddr> = ips.iter().map(|ip| (*ip, port).into()).collect();
    let stream = TcpStream::connect(&addrs[..])
        .await
        .map_err(|e| ProbeError::Transport(format!("cannot connect to {host}:{port}: {e}")))?;
    let stream = upgrade(stream, starttls).await?;
    let tls =
        tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, stream).await.map_err(handshake_error)?;
    let (_, session) = tls.get_ref();
    let protocol = match session.protocol_version() {
        Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3".to_string(),
        Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2".to_string(),
        other => other.map(|v| format!("{v:?}")).unwrap_or_default(),
    };
    let cipher = session.negotiated_cipher_suite().map(|s| format!("{:?}", s.suite())).unwrap_or_default();
    let chain = session.peer_certificates().unwrap_or_default().iter().map(certificate).collect();
    let verdict = std::mem::take(&mut *verdict.lock().unwrap_or_else(|e| e.into_inner()));
    Ok(Handshake {
        protocol,
        cipher,
        chain,
        trusted_by: verdict.trusted_by,
        failure: verdict.failure,
        ocsp_stapled: verdict.ocsp_stapled,
    })
}

/// A probe's result in one line, for the journal.
fn summary(target: &str, result: &Result<Handshake, ProbeError>) -> String {
    match result {
        Ok(h) => {
            let verdict = match (&h.trusted_by, &h.failure) {
                (Some(wit::Trust::PublicRoots), _) => "verified (public roots)".to_string(),
                (Some(wit::Trust::GrantedCa), _) => "verified (granted CA)".to_string(),
                (None, Some((_, why))) => format!("not verified: {why}"),
                (None, None) => "not verified".to_string(),
            };
            format!("tls {target}: {} {}, {verdict}", h.protocol, h.cipher)
        }
        Err(e) => format!("tls {target}: {}", describe(e)),
    }
}

fn describe(e: &ProbeError) -> String {
    match e {
        ProbeError::Denied(m) => format!("refused: {m}"),
        ProbeError::Timeout(m) | ProbeError::Transport(m) | ProbeError::Handshake(m) | ProbeError::Invalid(m) => {
            m.clone()
        }
    }
}

/// The TLS state of one call: the step's grant and the call's context.
pub(super) struct TlsCall {
    pub(super) grant: TlsGrant,
    pub(super) call: CallContext,
}

impl wit::Host for TlsCall {
    async fn probe(&mut self, target: String, starttls: Starttls) -> Result<Handshake, ProbeError> {
        let started = std::time::Instant::now();
        let result = self.probe(&target, starttls).await;
        self.call.line(&summary(&target, &result));
        let (denied, failed) = match &result {
            Ok(_) => (None, None),
            Err(ProbeError::Denied(m)) => (Some(m.as_str()), None),
            Err(e) => (None, Some(describe(e))),
        };
        let failed = failed.as_deref();
        self.call.record_call("HANDSHAKE".into(), format!("tls://{}", target.to_ascii_lowercase()), started, denied, failed);
        result
    }
}

impl TlsCall {
    async fn probe(&mut self, target: &str, starttls: Starttls) -> Result<Handshake, ProbeError> {
        let step = &self.call.step;
        let (host, port) = split_target(target).map_err(ProbeError::Invalid)?;
        if !self.grant.targets.iter().any(|t| t.allows(&host, port)) {
            return Err(ProbeError::Denied(format!(
                "{host}:{port} is not granted to step `{step}`: add it to the step's `tls:`"
            )));
        }
        let ca = self.grant.ca.clone();
        let timeout = self.call.request_budget();
        let resolver = self.call.resolver.clone();
        let probing = async {
            let ips = resolver.connectable(&host).await.map_err(|e| match e {
                Unreachable::Denied(d) => ProbeError::Denied(d.for_request()),
                Unreachable::Lookup(m) => ProbeError::Transport(m),
            })?;
            shake(&host, port, &ips, starttls, ca.as_deref()).await
        };
        tokio::time::timeout(timeout, probing).await.unwrap_or_else(|_| {
            Err(ProbeError::Timeout(format!(
                "the handshake with {host}:{port} took longer than {}",
                humantime::format_duration(Duration::from_millis(timeout.as_millis() as u64))
            )))
        })
    }
}
