//! TLS for every database connection, with libpq's `sslmode` and
//! `sslrootcert` (read from DATABASE_URL, else PGSSLMODE / PGSSLROOTCERT).
//!
//! What each mode does, as libpq does it:
//! - `disable`: plaintext.
//! - `prefer` (default): TLS when the server offers it, unverified; plaintext
//!   only when the server answers that it has no TLS.
//! - `require`: TLS or nothing, unverified; with an `sslrootcert` it checks the
//!   chain like `verify-ca`.
//! - `verify-ca`: TLS, the chain must lead to `sslrootcert`; any host name.
//! - `verify-full`: `verify-ca`, and the certificate must name the host.
//!
//! `sslrootcert=system` means the operating system's roots and, as in libpq,
//! implies `verify-full` (a weaker mode with it is an error).
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect};

use crate::store::require_auth::{RequireAuth, Watch};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    fn parse(s: &str) -> Result<Self, TlsError> {
        match s {
            "disable" => Ok(Self::Disable),
            "prefer" => Ok(Self::Prefer),
            "require" => Ok(Self::Require),
            "verify-ca" => Ok(Self::VerifyCa),
            "verify-full" => Ok(Self::VerifyFull),
            other => Err(TlsError::BadMode(other.to_string())),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Disable => "disable",
            Self::Prefer => "prefer",
            Self::Require => "require",
            Self::VerifyCa => "verify-ca",
            Self::VerifyFull => "verify-full",
        }
    }

    /// Whether the connection may end up without TLS.
    pub fn may_be_plaintext(self) -> bool {
        matches!(self, Self::Disable | Self::Prefer)
    }

    /// What tokio-postgres must do before the startup message.
    pub fn negotiation(self) -> tokio_postgres::config::SslMode {
        use tokio_postgres::config::SslMode as Pg;
        match self {
            Self::Disable => Pg::Disable,
            Self::Prefer => Pg::Prefer,
            Self::Require | Self::VerifyCa | Self::VerifyFull => Pg::Require,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootCert {
    File(PathBuf),
    System,
}

impl RootCert {
    fn parse(s: &str) -> Self {
        if s == "system" {
            Self::System
        } else {
            Self::File(PathBuf::from(s))
        }
    }

    /// How errors name it, e.g. `sslrootcert=/etc/reactor/prod-ca.crt`.
    fn label(&self) -> String {
        match self {
            Self::File(path) => format!("sslrootcert={}", path.display()),
            Self::System => "sslrootcert=system (the operating system's roots)".to_string(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("unknown sslmode {0:?} (expected disable, prefer, require, verify-ca or verify-full)")]
    BadMode(String),
    #[error(
        "sslmode={0} verifies the server's certificate and needs sslrootcert: a PEM file with the CA \
         (for Supabase, the certificate from the dashboard's Database settings), or sslrootcert=system \
         for the operating system's roots"
    )]
    NoRootCert(&'static str),
    #[error(
        "weak sslmode={0} may not be used with sslrootcert=system (use verify-full, as libpq)"
    )]
    WeakWithSystem(&'static str),
    #[error("{label}: {reason}")]
    RootCert { label: String, reason: String },
    #[error("certificate not signed by the CA in {0}")]
    UnknownCa(String),
    #[error("server certificate is for {presented}, not {expected}")]
    WrongHost { presented: String, expected: String },
    #[error("{0:?} is not a valid host name for TLS")]
    BadHost(String),
    #[error("{0}")]
    Handshake(String),
}

/// `sslmode` and `sslrootcert` after the URL and the environment were read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub mode: SslMode,
    pub root_cert: Option<RootCert>,
}

impl Settings {
    /// Each setting from the URL if it has it, else from the environment
    /// variable libpq reads (the URL wins, as in libpq).
    pub fn resolve(
        url_mode: Option<&str>,
        url_root: Option<&str>,
        env_mode: Option<&str>,
        env_root: Option<&str>,
    ) -> Result<Self, TlsError> {
        let root_cert = url_root
            .or(env_root)
            .filter(|s| !s.is_empty())
            .map(RootCert::parse);
        let explicit_mode = url_mode.or(env_mode).filter(|s| !s.is_empty());
        let mode = match (explicit_mode, &root_cert) {
            (Some(m), _) => SslMode::parse(m)?,
            (None, Some(RootCert::System)) => SslMode::VerifyFull,
            (None, _) => SslMode::Prefer,
        };
        if root_cert == Some(RootCert::System) && mode != SslMode::VerifyFull {
            return Err(TlsError::WeakWithSystem(mode.name()));
        }
        if matches!(mode, SslMode::VerifyCa | SslMode::VerifyFull) && root_cert.is_none() {
            return Err(TlsError::NoRootCert(mode.name()));
        }
        Ok(Settings { mode, root_cert })
    }

    pub fn from_url_and_env(
        url_mode: Option<&str>,
        url_root: Option<&str>,
    ) -> Result<Self, TlsError> {
        let env = |name| std::env::var(name).ok();
        Self::resolve(
            url_mode,
            url_root,
            env("PGSSLMODE").as_deref(),
            env("PGSSLROOTCERT").as_deref(),
        )
    }

    /// Whether the server's certificate is checked against a root
    /// certificate (verify-ca, verify-full, or require with sslrootcert).
    pub fn verifies(&self) -> bool {
        self.check() != Check::Nothing
    }

    /// libpq's name of the mode, e.g. `verify-full`.
    pub fn mode_name(&self) -> &'static str {
        self.mode.name()
    }

    /// How the certificate is checked. libpq: `require` with a root
    /// certificate checks the chain as `verify-ca` does.
    fn check(&self) -> Check {
        match (self.mode, &self.root_cert) {
            (SslMode::VerifyFull, _) => Check::ChainAndName,
            (SslMode::VerifyCa, _) | (SslMode::Require, Some(_)) => Check::Chain,
            _ => Check::Nothing,
        }
    }

    /// The connector for tokio-postgres (roots are read here, so a missing
    /// or unreadable `sslrootcert` fails before any connection is tried).
    pub fn connector(&self) -> Result<MakeTls, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let check = self.check();
        let (webpki, label) = match (&self.root_cert, check) {
            (Some(root), Check::Chain | Check::ChainAndName) => {
                let roots = load_roots(root)?;
                let webpki =
                    WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                        .build()
                        .map_err(|e| TlsError::RootCert {
                            label: root.label(),
                            reason: e.to_string(),
                        })?;
                (Some(webpki), root.label())
            }
            _ => (None, String::new()),
        };
        let verifier = Verifier {
            check,
            webpki,
            provider: provider.clone(),
        };
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Handshake(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_no_client_auth();
        Ok(MakeTls {
            config: Arc::new(config),
            root_label: Arc::from(label),
            require_auth: RequireAuth::default(),
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Check {
    Nothing,
    Chain,
    ChainAndName,
}

fn load_roots(root: &RootCert) -> Result<RootCertStore, TlsError> {
    let fail = |reason: String| TlsError::RootCert {
        label: root.label(),
        reason,
    };
    let certs: Vec<CertificateDer<'static>> = match root {
        RootCert::File(path) => CertificateDer::pem_file_iter(path)
            .map_err(|e| fail(e.to_string()))?
            .collect::<Result<_, _>>()
            .map_err(|e| fail(format!("not a PEM certificate file: {e}")))?,
        RootCert::System => {
            let found = rustls_native_certs::load_native_certs();
            if found.certs.is_empty() {
                let errors: Vec<String> = found.errors.iter().map(|e| e.to_string()).collect();
                return Err(fail(format!("no roots found ({})", errors.join("; "))));
            }
            found.certs
        }
    };
    let mut roots = RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(fail("holds no usable CA certificate".to_string()));
    }
    Ok(roots)
}

/// Checks what the mode asks for: nothing, the chain, or chain and name. The
/// handshake's signatures are always checked (the server must own the key).
#[derive(Debug)]
struct Verifier {
    check: Check,
    webpki: Option<Arc<WebPkiServerVerifier>>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(webpki) = &self.webpki else {
            return Ok(ServerCertVerified::assertion());
        };
        // webpki checks the chain first and the name last, so a name error
        // means the chain was good: enough for verify-ca.
        match webpki.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) if self.check == Check::Chain => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// tokio-postgres' `MakeTlsConnect` on rustls.
#[derive(Clone)]
pub struct MakeTls {
    config: Arc<rustls::ClientConfig>,
    root_label: Arc<str>,
    require_auth: RequireAuth,
}

impl MakeTls {
    /// Connections that refuse, inside TLS, an authentication request
    /// `require_auth` does not allow (for tokio-postgres, which has no
    /// `require_auth` of its own).
    pub fn with_require_auth(mut self, require_auth: RequireAuth) -> Self {
        self.require_auth = require_auth;
        self
    }
}

pub struct Connect {
    config: Arc<rustls::ClientConfig>,
    root_label: Arc<str>,
    host: String,
    require_auth: RequireAuth,
}

impl<S> MakeTlsConnect<S> for MakeTls
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = TlsStream<S>;
    type TlsConnect = Connect;
    type Error = TlsError;

    fn make_tls_connect(&mut self, host: &str) -> Result<Connect, TlsError> {
        Ok(Connect {
            config: self.config.clone(),
            root_label: self.root_label.clone(),
            host: host.to_string(),
            require_auth: self.require_auth.clone(),
        })
    }
}

impl<S> TlsConnect<S> for Connect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = TlsStream<S>;
    type Error = TlsError;
    type Future = Pin<Box<dyn Future<Output = Result<TlsStream<S>, TlsError>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            let name = ServerName::try_from(self.host.clone())
                .map_err(|_| TlsError::BadHost(self.host.clone()))?;
            let stream = tokio_rustls::TlsConnector::from(self.config)
                .connect(name, stream)
                .await
                .map_err(|e| explain(&e, &self.host, &self.root_label))?;
            let end_point = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|chain| chain.first())
                .and_then(|cert| server_end_point(cert));
            let watch = self
                .require_auth
                .is_set()
                .then(|| Watch::new(self.require_auth.clone()));
            Ok(TlsStream {
                stream,
                end_point,
                watch,
            })
        })
    }
}

/// The handshake error in words that say what to fix.
fn explain(e: &io::Error, host: &str, root_label: &str) -> TlsError {
    let rustls_error = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    match rustls_error {
        Some(rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)) => {
            TlsError::UnknownCa(root_label.to_string())
        }
        Some(rustls::Error::InvalidCertificate(CertificateError::NotValidForNameContext {
            presented,
            ..
        })) => TlsError::WrongHost {
            presented: presented
                .iter()
                .map(|n| bare_name(n))
                .collect::<Vec<_>>()
                .join(", "),
            expected: host.to_string(),
        },
        Some(rustls::Error::InvalidCertificate(CertificateError::NotValidForName)) => {
            TlsError::WrongHost {
                presented: "other names".to_string(),
                expected: host.to_string(),
            }
        }
        Some(other) => TlsError::Handshake(other.to_string()),
        None => TlsError::Handshake(e.to_string()),
    }
}

/// `localhost` from rustls' `DnsName("localhost")` (or the text as it is).
fn bare_name(presented: &str) -> &str {
    presented
        .split_once("(\"")
        .and_then(|(_, rest)| rest.strip_suffix("\")"))
        .unwrap_or(presented)
}

/// The `tls-server-end-point` channel binding of RFC 5929: a hash of the
/// server's certificate, with the hash function of the certificate's
/// signature (SHA-256 when that is MD5 or SHA-1). None for a signature
/// without one hash function (Ed25519, RSA-PSS): SCRAM then runs without
/// channel binding, as with libpq.
pub fn server_end_point(cert: &[u8]) -> Option<Vec<u8>> {
    use sha2::Digest;
    // Certificate ::= SEQUENCE { tbsCertificate, signatureAlgorithm, signature }
    let (certificate, _) = der_element(cert, 0x30)?;
    let tbs = der_next(certificate)?;
    let (algorithm, _) = der_element(tbs.rest, 0x30)?;
    let (oid, _) = der_element(algorithm, 0x06)?;
    const RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01];
    const ECDSA_SHA2: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03];
    const ECDSA_SHA1: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x01];
    let (last, head) = oid.split_last()?;
    let bits = match (head, *last) {
        (RSA, 4 | 5 | 11) => 256, // MD5, SHA-1 and SHA-256 with RSA
        (RSA, 12) | (ECDSA_SHA2, 3) => 384,
        (RSA, 13) | (ECDSA_SHA2, 4) => 512,
        (RSA, 14) | (ECDSA_SHA2, 1) => 224,
        (ECDSA_SHA2, 2) => 256,
        _ if oid == ECDSA_SHA1 => 256,
        _ => return None,
    };
    Some(match bits {
        224 => sha2::Sha224::digest(cert).to_vec(),
        384 => sha2::Sha384::digest(cert).to_vec(),
        512 => sha2::Sha512::digest(cert).to_vec(),
        _ => sha2::Sha256::digest(cert).to_vec(),
    })
}

/// One DER element at the start of some input.
struct Der<'a> {
    tag: u8,
    contents: &'a [u8],
    /// What follows the element.
    rest: &'a [u8],
}

fn der_next(input: &[u8]) -> Option<Der<'_>> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |len, b| (len << 8) | usize::from(*b));
        (len, &rest[n..])
    };
    (rest.len() >= len).then(|| Der {
        tag,
        contents: &rest[..len],
        rest: &rest[len..],
    })
}

/// The contents of the element at the start of `input` if it has `tag`, and what follows it.
fn der_element(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let der = der_next(input)?;
    (der.tag == tag).then_some((der.contents, der.rest))
}

/// A TLS connection to the server.
pub struct TlsStream<S> {
    stream: tokio_rustls::client::TlsStream<S>,
    /// See [`server_end_point`].
    end_point: Option<Vec<u8>>,
    /// Checks the log-in's authentication requests, when `require_auth` is set.
    watch: Option<Watch>,
}

impl<S> TlsStream<S> {
    /// The `tls-server-end-point` channel binding data, if the certificate allows one.
    pub fn server_end_point(&self) -> Option<&[u8]> {
        self.end_point.as_deref()
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for TlsStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let read = Pin::new(&mut this.stream).poll_read(cx, buf);
        if let (Poll::Ready(Ok(())), Some(watch)) = (&read, &mut this.watch) {
            watch
                .feed(&buf.filled()[before..])
                .map_err(|e| io::Error::new(io::ErrorKind::PermissionDenied, e))?;
        }
        read
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for TlsStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> tokio_postgres::tls::TlsStream for TlsStream<S> {
    /// `tls-server-end-point`, so SCRAM runs as SCRAM-SHA-256-PLUS when the
    /// server offers it (the connection's `channel_binding` decides).
    fn channel_binding(&self) -> ChannelBinding {
        match &self.end_point {
            Some(hash) => ChannelBinding::tls_server_end_point(hash.clone()),
            None => ChannelBinding::none(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(
        url: (Option<&str>, Option<&str>),
        env: (Option<&str>, Option<&str>),
    ) -> Result<Settings, TlsError> {
        Settings::resolve(url.0, url.1, env.0, env.1)
    }

    #[test]
    fn prefer_is_the_default_and_the_url_wins_over_the_environment() {
        let s = resolve((None, None), (None, None)).unwrap();
        assert_eq!(s.mode, SslMode::Prefer);
        let s = resolve((Some("disable"), None), (Some("require"), None)).unwrap();
        assert_eq!(s.mode, SslMode::Disable);
        let s = resolve(
            (None, Some("/url.pem")),
            (Some("verify-ca"), Some("/env.pem")),
        )
        .unwrap();
        assert_eq!(s.mode, SslMode::VerifyCa);
        assert_eq!(s.root_cert, Some(RootCert::File("/url.pem".into())));
    }

    #[test]
    fn verifying_modes_need_a_root_certificate() {
        let err = resolve((Some("verify-full"), None), (None, None)).unwrap_err();
        assert!(err.to_string().contains("needs sslrootcert"), "{err}");
        let err = resolve((Some("verify-ca"), None), (None, None)).unwrap_err();
        assert!(err.to_string().contains("sslmode=verify-ca"), "{err}");
    }

    #[test]
    fn system_roots_mean_verify_full_and_refuse_weaker_modes() {
        let s = resolve((None, Some("system")), (None, None)).unwrap();
        assert_eq!(s.mode, SslMode::VerifyFull);
        let err = resolve((Some("require"), Some("system")), (None, None)).unwrap_err();
        assert!(err.to_string().contains("weak sslmode=require"), "{err}");
    }

    #[test]
    fn require_with_a_root_certificate_checks_the_chain_like_verify_ca() {
        let s = resolve((Some("require"), Some("/ca.pem")), (None, None)).unwrap();
        assert_eq!(s.check(), Check::Chain);
        let s = resolve((Some("require"), None), (None, None)).unwrap();
        assert_eq!(s.check(), Check::Nothing);
        let s = resolve((Some("verify-full"), Some("/ca.pem")), (None, None)).unwrap();
        assert_eq!(s.check(), Check::ChainAndName);
    }

    #[test]
    fn the_end_point_hash_follows_the_certificate_signature() {
        use sha2::Digest;
        let key = rcgen::KeyPair::generate().unwrap(); // ECDSA P-256 with SHA-256
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let der = cert.der().to_vec();
        assert_eq!(
            server_end_point(&der),
            Some(sha2::Sha256::digest(&der).to_vec())
        );
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let der = cert.der().to_vec();
        assert_eq!(
            server_end_point(&der),
            Some(sha2::Sha384::digest(&der).to_vec())
        );
        // Ed25519 has no hash of its own: no channel binding, as in libpq.
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        assert_eq!(server_end_point(cert.der()), None);
        assert_eq!(server_end_point(b"\x30\x82"), None);
    }

    #[test]
    fn presented_names_are_shown_bare() {
        assert_eq!(bare_name("DnsName(\"localhost\")"), "localhost");
        assert_eq!(bare_name("10.0.0.1"), "10.0.0.1");
    }

    #[test]
    fn unknown_modes_are_refused_by_name() {
        let err = resolve((Some("allow"), None), (None, None)).unwrap_err();
        assert!(err.to_string().contains("\"allow\""), "{err}");
    }

    #[test]
    fn an_unreadable_root_certificate_is_an_error_before_connecting() {
        let s = resolve(
            (Some("verify-full"), Some("/nonexistent/ca.pem")),
            (None, None),
        )
        .unwrap();
        let err = s.connector().err().expect("missing file refused");
        assert!(
            err.to_string().contains("sslrootcert=/nonexistent/ca.pem"),
            "{err}"
        );
    }
}
