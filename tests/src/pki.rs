//! Throwaway certificates for one test control plane: a CA, the API server's serving certificate,
//! an administrator client certificate (group `system:masters`) and the service-account signing key.

use std::path::Path;

use anyhow::{Context, Result};
use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// PEM documents, written to the control plane's directory by [`Pki::write`].
pub(crate) struct Pki {
    pub ca_cert: String,
    pub server_cert: String,
    pub server_key: String,
    pub admin_cert: String,
    pub admin_key: String,
    pub service_account_key: String,
    pub service_account_public_key: String,
}

/// File names inside the control plane's directory.
pub(crate) const CA_CERT: &str = "ca.crt";
pub(crate) const SERVER_CERT: &str = "apiserver.crt";
pub(crate) const SERVER_KEY: &str = "apiserver.key";
pub(crate) const SA_KEY: &str = "service-account.key";
pub(crate) const SA_PUBLIC_KEY: &str = "service-account.pub";
/// The administrator's credentials, as files for a real node's API server-to-kubelet calls.
pub(crate) const ADMIN_CERT: &str = "admin.crt";
pub(crate) const ADMIN_KEY: &str = "admin.key";

/// A self-signed CA named `common_name`: its certificate and the issuer that signs with it.
fn certificate_authority(common_name: &str) -> Result<(Certificate, Issuer<'static, KeyPair>)> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, common_name);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let cert = params.self_signed(&key)?;
    Ok((cert, Issuer::new(params, key)))
}

impl Pki {
    pub(crate) fn generate() -> Result<Self> {
        let (ca_cert, issuer) = certificate_authority("edge-autotuner test CA")?;

        let server_key = KeyPair::generate()?;
        let mut server_params = CertificateParams::new(vec![
            "localhost".to_string(),
            "127.0.0.1".to_string(),
            "kubernetes".to_string(),
            "kubernetes.default.svc".to_string(),
            // Where pods reach it with a real node: the `kubernetes` Service's ClusterIP, and
            // the node's bridge address it listens on.
            "10.96.0.1".to_string(),
            crate::node::NODE_IP.to_string(),
        ])?;
        server_params
            .distinguished_name
            .push(DnType::CommonName, "kube-apiserver");
        server_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let server_cert = server_params.signed_by(&server_key, &issuer)?;

        // The API server maps the certificate's organisations to groups: system:masters is the
        // superuser group that RBAC always allows, as the tests and the controllers need.
        let admin_key = KeyPair::generate()?;
        let mut admin_params = CertificateParams::new(Vec::<String>::new())?;
        admin_params
            .distinguished_name
            .push(DnType::CommonName, "edge-autotuner-test-admin");
        admin_params
            .distinguished_name
            .push(DnType::OrganizationName, "system:masters");
        admin_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let admin_cert = admin_params.signed_by(&admin_key, &issuer)?;

        let service_account_key = KeyPair::generate()?;

        Ok(Self {
            ca_cert: ca_cert.pem(),
            server_cert: server_cert.pem(),
            server_key: server_key.serialize_pem(),
            admin_cert: admin_cert.pem(),
            admin_key: admin_key.serialize_pem(),
            service_account_public_key: service_account_key.public_key_pem(),
            service_account_key: service_account_key.serialize_pem(),
        })
    }

    /// Writes the files the control-plane binaries read (the admin credentials go into the
    /// kubeconfig instead).
    pub(crate) fn write(&self, dir: &Path) -> Result<()> {
        for (name, pem) in [
            (CA_CERT, &self.ca_cert),
            (SERVER_CERT, &self.server_cert),
            (SERVER_KEY, &self.server_key),
            (SA_KEY, &self.service_account_key),
            (SA_PUBLIC_KEY, &self.service_account_public_key),
            (ADMIN_CERT, &self.admin_cert),
            (ADMIN_KEY, &self.admin_key),
        ] {
            std::fs::write(dir.join(name), pem).with_context(|| format!("writing {name}"))?;
        }
        Ok(())
    }
}

/// A throwaway issuer and a serving certificate it signed: what a `kubernetes.io/tls` Secret
/// holds (`tls.crt`, `tls.key`, `ca.crt`), as PEM.
#[derive(Debug)]
pub struct ServingCertificate {
    pub ca_cert: String,
    pub cert: String,
    pub key: String,
}

impl ServingCertificate {
    /// A certificate for `names` (DNS names or IP addresses), signed by a CA of its own.
    pub fn generate(names: &[String]) -> Result<Self> {
        let (ca_cert, issuer) = certificate_authority("edge-autotuner test serving CA")?;
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(names.to_vec())?;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let cert = params.signed_by(&key, &issuer)?;
        Ok(Self {
            ca_cert: ca_cert.pem(),
            cert: cert.pem(),
            key: key.serialize_pem(),
        })
    }
}
