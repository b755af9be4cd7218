//! Certificates made in the test (rcgen): a CA, a server certificate for `localhost` and 127.0.0.1, client
//! certificates signed by the CA (valid or expired) or by a CA the gateway does not know. PEM files in a scratch
//! directory.

use std::path::PathBuf;

use anyhow::Result;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType, IsCa, KeyPair, date_time_ymd,
};

/// A CA and the files a test points meshgate and its clients at.
pub struct Pki {
    dir: tempfile::TempDir,
    ca: CertifiedIssuer<'static, KeyPair>,
    /// The CA certificate (what clients trust, and what `client_ca_file` names).
    pub ca_file: PathBuf,
    /// The server certificate.
    pub server_cert: PathBuf,
    /// The server key.
    pub server_key: PathBuf,
}

fn ca(name: &str) -> Result<CertifiedIssuer<'static, KeyPair>> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    params.distinguished_name = dn;
    Ok(CertifiedIssuer::self_signed(params, KeyPair::generate()?)?)
}

impl Pki {
    /// A fresh CA and server certificate.
    pub fn new() -> Result<Pki> {
        let dir = tempfile::tempdir()?;
        let ca = ca("meshgate test CA")?;
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, ca.pem())?;
        let params = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])?;
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &ca)?;
        let (server_cert, server_key) = (dir.path().join("server.pem"), dir.path().join("server.key"));
        std::fs::write(&server_cert, cert.pem())?;
        std::fs::write(&server_key, key.serialize_pem())?;
        Ok(Pki { dir, ca, ca_file, server_cert, server_key })
    }

    /// The `[tls]` table for these files; with `mtls`, client certificates are required and verified.
    pub fn tls_table(&self, mtls: bool) -> String {
        let client = if mtls { format!("client_ca_file = \"{}\"\n", self.ca_file.display()) } else { String::new() };
        format!(
            "\n[tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n{client}",
            self.server_cert.display(),
            self.server_key.display()
        )
    }

    /// A client certificate with common name `cn`, signed by this CA (`expired`: valid in 2020 only) or, with
    /// `foreign`, by a CA meshgate does not know. Returns the certificate and key files.
    pub fn client(&self, cn: &str, expired: bool, foreign: bool) -> Result<(PathBuf, PathBuf)> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, cn);
        params.distinguished_name = dn;
        if expired {
            params.not_before = date_time_ymd(2020, 1, 1);
            params.not_after = date_time_ymd(2020, 12, 31);
        }
        let key = KeyPair::generate()?;
        let other;
        let issuer = if foreign {
            other = ca("some other CA")?;
            &other
        } else {
            &self.ca
        };
        let cert = params.signed_by(&key, issuer)?;
        let tag = format!("{cn}-{}-{}", u8::from(expired), u8::from(foreign));
        let (cert_file, key_file) =
            (self.dir.path().join(format!("{tag}.pem")), self.dir.path().join(format!("{tag}.key")));
        std::fs::write(&cert_file, cert.pem())?;
        std::fs::write(&key_file, key.serialize_pem())?;
        Ok((cert_file, key_file))
    }
}
