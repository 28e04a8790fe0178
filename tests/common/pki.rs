//! Certificates for tests of TLS to Postgres: a CA, another CA, and a server
//! certificate for `localhost` signed by the first.
use reactor::sandbox::cluster::Options;
use std::path::PathBuf;

/// A CA, and a server certificate for `localhost` only, signed by it.
pub struct Pki {
    dir: tempfile::TempDir,
    server_cert: String,
    server_key: String,
}

impl Pki {
    pub fn new() -> Self {
        use rcgen::{
            BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair,
            KeyUsagePurpose,
        };
        let ca = |name: &str| {
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.distinguished_name.push(DnType::CommonName, name);
            params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
            CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
        };
        let ours = ca("reactor test CA");
        let theirs = ca("someone else's CA");
        let server_key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        let server = params.signed_by(&server_key, &ours).unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.crt"), ours.pem()).unwrap();
        std::fs::write(dir.path().join("other-ca.crt"), theirs.pem()).unwrap();
        Pki {
            dir,
            server_cert: server.pem(),
            server_key: server_key.serialize_pem(),
        }
    }

    /// A server with ssl=on and this server certificate, plus `settings`.
    pub fn server_options(&self, settings: &[(&str, &str)]) -> Options {
        let mut all = vec![
            ("ssl", "on"),
            ("ssl_cert_file", "../server.crt"),
            ("ssl_key_file", "../server.key"),
        ];
        all.extend_from_slice(settings);
        Options {
            settings: all
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            files: vec![
                ("server.crt".into(), self.server_cert.clone().into_bytes()),
                ("server.key".into(), self.server_key.clone().into_bytes()),
            ],
        }
    }

    pub fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.crt")
    }

    pub fn other_ca(&self) -> PathBuf {
        self.dir.path().join("other-ca.crt")
    }
}
