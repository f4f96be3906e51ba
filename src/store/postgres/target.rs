//! `[store] url` (SPEC §9): which PostgreSQL, which schema, which password and
//! how TLS is checked. Read once at configuration time (exit 2 on a problem);
//! the password is never shown (`Debug` and [`Target::display`] leave it out).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio_postgres::config::SslMode;

/// The longest a statement waits for a lock, unless the URL's `options` say.
pub const LOCK_TIMEOUT: &str = "-c lock_timeout=60s";

/// A connection's driver half, over TLS or not.
pub type Connection = tokio_postgres::Connection<
    tokio_postgres::Socket,
    <tokio_postgres_rustls::MakeRustlsConnect as tokio_postgres::tls::MakeTlsConnect<
        tokio_postgres::Socket,
    >>::Stream,
>;

/// Where the PostgreSQL mirror lives.
#[derive(Clone)]
pub struct Target {
    pub config: tokio_postgres::Config,
    pub schema: String,
    pub tls: Tls,
    /// The URL as configured, without its password.
    shown: String,
}

/// How the server's certificate is checked (libpq's `sslmode`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tls {
    /// `disable`: plain text.
    Off,
    /// `prefer` (libpq's default) and `require`: encrypted when the server can
    /// (`require`: or not at all); the certificate is not checked, as in libpq.
    Unverified,
    /// `verify-ca` / `verify-full`: the system's roots, or `sslrootcert`'s.
    Verified { root: Option<PathBuf> },
}

/// Two targets are the same mirror with the same credentials (a reload that
/// changes neither keeps the store open).
impl PartialEq for Target {
    fn eq(&self, other: &Target) -> bool {
        self.shown == other.shown
            && self.schema == other.schema
            && self.tls == other.tls
            && self.config.get_password() == other.config.get_password()
    }
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (schema {})", self.shown, self.schema)
    }
}

/// Where the password may come from, besides the URL itself.
pub struct Password<'a> {
    /// `store.password_file`.
    pub file: Option<&'a Path>,
    /// The environment: `PGPASSWORD`, `CREDENTIALS_DIRECTORY`.
    pub env: &'a std::collections::HashMap<String, String>,
}

impl Target {
    /// Parses `url` (a libpq URL or `key=value` string). Errors name the key
    /// and never quote a password.
    pub fn parse(url: &str, schema: &str, password: Password) -> Result<Target, String> {
        if !valid_identifier(schema) {
            return Err(format!(
                "store.schema {schema:?}: a schema name is lower-case letters, digits and _, \
                 not starting with a digit, at most 63 characters"
            ));
        }
        let (rest, sslmode, root) = take_tls_options(url)?;
        let mut config: tokio_postgres::Config = rest.parse().map_err(|e| {
            format!("store.url: not a PostgreSQL connection string ({e}); expected postgresql://user@host/db or host=… dbname=…")
        })?;
        if config.get_hosts().is_empty() {
            return Err("store.url: names no host (host=… or postgresql://host/…)".into());
        }
        if config.get_user().is_none() {
            let user = password.env.get("USER").cloned().unwrap_or_default();
            if user.is_empty() {
                return Err("store.url: names no user (user=… or postgresql://user@host/…)".into());
            }
            config.user(&user);
        }
        if config.get_password().is_none()
            && let Some(p) = password_from(&password)?
        {
            config.password(p);
        }
        let tls = match sslmode.as_deref() {
            None | Some("prefer") => {
                config.ssl_mode(SslMode::Prefer);
                Tls::Unverified
            }
            Some("disable") => {
                config.ssl_mode(SslMode::Disable);
                Tls::Off
            }
            Some("require") => {
                config.ssl_mode(SslMode::Require);
                match root {
                    // libpq: with a root certificate, require checks it as verify-ca
                    Some(r) => Tls::Verified { root: Some(r) },
                    None => Tls::Unverified,
                }
            }
            Some("verify-ca" | "verify-full") => {
                config.ssl_mode(SslMode::Require);
                Tls::Verified { root }
            }
            Some(other) => {
                return Err(format!(
                    "store.url: sslmode={other} is not one of disable, prefer, require, verify-ca, verify-full"
                ));
            }
        };
        if let Tls::Verified { root: Some(r) } = &tls {
            load_roots(r)?;
        }
        config.application_name("avala-mirror");
        // a lock someone holds (an operator's open transaction) is waited out
        // for a minute at most: the batch then fails and is tried again at the
        // next cycle, never hangs (options= in the URL sets your own)
        if config.get_options().is_none() {
            config.options(LOCK_TIMEOUT);
        }
        config.connect_timeout(std::time::Duration::from_secs(10));
        Ok(Target {
            shown: without_password(url),
            config,
            schema: schema.to_string(),
            tls,
        })
    }

    /// Where the mirror is, for messages and `status`: the URL without its
    /// password, and the schema.
    pub fn display(&self) -> String {
        format!("{} (schema {})", self.shown, self.schema)
    }

    /// Connects, with TLS as configured.
    pub async fn connect(
        &self,
        config: &tokio_postgres::Config,
    ) -> Result<(tokio_postgres::Client, Connection), tokio_postgres::Error> {
        let tls = tokio_postgres_rustls::MakeRustlsConnect::new(self.client_config());
        config.connect(tls).await
    }

    fn client_config(&self) -> rustls::ClientConfig {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("the provider's default protocol versions");
        match &self.tls {
            Tls::Verified { root } => {
                let roots = match root {
                    Some(r) => load_roots(r).expect("checked when the configuration was read"),
                    None => system_roots(),
                };
                builder.with_root_certificates(roots).with_no_client_auth()
            }
            Tls::Off | Tls::Unverified => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(Unverified(provider)))
                .with_no_client_auth(),
        }
    }
}

fn valid_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    s.len() <= 63
        && chars
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// `PGPASSWORD`, else `store.password_file`, else systemd's credential
/// `pg_password` (`LoadCredential=pg_password:…`).
fn password_from(p: &Password) -> Result<Option<String>, String> {
    if let Some(pw) = p.env.get("PGPASSWORD").filter(|v| !v.is_empty()) {
        return Ok(Some(pw.clone()));
    }
    let credential = p
        .env
        .get("CREDENTIALS_DIRECTORY")
        .map(|d| Path::new(d).join("pg_password"))
        .filter(|f| f.exists());
    let (file, key) = match (p.file, credential) {
        (Some(f), _) => (f.to_path_buf(), "store.password_file"),
        (None, Some(c)) => (c, "the systemd credential pg_password"),
        (None, None) => return Ok(None),
    };
    let text = std::fs::read_to_string(&file)
        .map_err(|e| format!("{key}: cannot read {}: {e}", file.display()))?;
    let pw = text.trim_end_matches(['\n', '\r']);
    if pw.is_empty() {
        return Err(format!("{key}: {} is empty", file.display()));
    }
    Ok(Some(pw.to_string()))
}

/// Takes `sslmode` and `sslrootcert` out of the connection string (the
/// driver knows three modes and no root file): (the rest, sslmode, sslrootcert).
fn take_tls_options(url: &str) -> Result<(String, Option<String>, Option<PathBuf>), String> {
    let (mut mode, mut root) = (None, None);
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let mut parsed = url::Url::parse(url).map_err(|e| format!("store.url: {e}"))?;
        // the other parameters stay as written (re-encoding would turn a
        // space into `+`, which libpq's URLs do not read as one)
        let mut kept = Vec::new();
        for pair in parsed.query().unwrap_or_default().split('&') {
            let k = pair.split_once('=').map_or(pair, |(k, _)| k);
            let value = || url::form_urlencoded::parse(pair.as_bytes()).next();
            match k {
                "sslmode" => mode = value().map(|(_, v)| v.into_owned()),
                "sslrootcert" => root = value().map(|(_, v)| PathBuf::from(&*v)),
                "" => {}
                _ => kept.push(pair.to_string()),
            }
        }
        let query = kept.join("&");
        parsed.set_query((!query.is_empty()).then_some(query.as_str()));
        return Ok((parsed.to_string(), mode, root));
    }
    let mut kept = Vec::new();
    for part in url.split_whitespace() {
        match part.split_once('=') {
            Some(("sslmode", v)) => mode = Some(v.trim_matches('\'').to_string()),
            Some(("sslrootcert", v)) => root = Some(PathBuf::from(v.trim_matches('\''))),
            _ => kept.push(part),
        }
    }
    Ok((kept.join(" "), mode, root))
}

/// The URL with its password (user info or `password=`) replaced by `***`.
fn without_password(url: &str) -> String {
    if let Ok(mut u) = url::Url::parse(url)
        && u.password().is_some()
    {
        let _ = u.set_password(Some("***"));
        return u.to_string();
    }
    url.split_whitespace()
        .map(|p| match p.split_once('=') {
            Some(("password", _)) => "password=***",
            _ => p,
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn load_roots(file: &Path) -> Result<rustls::RootCertStore, String> {
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    let certs: Vec<CertificateDer> = CertificateDer::pem_file_iter(file)
        .and_then(|i| i.collect())
        .map_err(|e| format!("store.url: sslrootcert {}: {e}", file.display()))?;
    let mut roots = rustls::RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(format!(
            "store.url: sslrootcert {} holds no certificate",
            file.display()
        ));
    }
    Ok(roots)
}

fn system_roots() -> rustls::RootCertStore {
    let found = rustls_native_certs::load_native_certs();
    for e in &found.errors {
        tracing::warn!("reading the system's root certificates: {e}");
    }
    let mut roots = rustls::RootCertStore::empty();
    roots.add_parsable_certificates(found.certs);
    roots
}

/// libpq's `require`: the connection is encrypted, the certificate not checked
/// (its signatures over the handshake still are).
#[derive(Debug)]
struct Unverified(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn parse(url: &str, env: &[(&str, &str)]) -> Result<Target, String> {
        let env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Target::parse(
            url,
            "avala_mirror",
            Password {
                file: None,
                env: &env,
            },
        )
    }

    #[test]
    fn both_forms_parse_and_the_password_is_never_shown() {
        let t = parse(
            "postgresql://avala:s3cret@db.example:5433/mirror?sslmode=verify-full",
            &[],
        )
        .unwrap();
        assert_eq!(t.config.get_password(), Some(&b"s3cret"[..]));
        assert_eq!(t.tls, Tls::Verified { root: None });
        assert!(!t.display().contains("s3cret"), "{}", t.display());
        assert!(!format!("{t:?}").contains("s3cret"));
        let t = parse(
            "host=/run/postgresql user=avala dbname=m password=s3cret sslmode=disable",
            &[],
        )
        .unwrap();
        assert_eq!(t.tls, Tls::Off);
        assert!(!t.display().contains("s3cret"), "{}", t.display());
        let t = parse("postgresql://avala@db/m", &[("PGPASSWORD", "fromenv")]).unwrap();
        assert_eq!(t.config.get_password(), Some(&b"fromenv"[..]));
        assert_eq!(t.tls, Tls::Unverified);
    }

    #[test]
    fn a_lock_is_waited_for_a_minute_at_most_unless_the_url_says() {
        let t = parse("host=db user=a", &[]).unwrap();
        assert_eq!(t.config.get_options(), Some(LOCK_TIMEOUT));
        let t = parse("postgresql://a@db/m?options=-c%20lock_timeout%3D5s", &[]).unwrap();
        assert_eq!(t.config.get_options(), Some("-c lock_timeout=5s"));
    }

    #[test]
    fn bad_urls_name_the_key() {
        for (url, says) in [
            ("mysql://x", "store.url"),
            (
                "postgresql://avala@db/m?sslmode=sometimes",
                "sslmode=sometimes",
            ),
            (
                "postgresql://avala@db/m?sslmode=verify-ca&sslrootcert=/nonexistent",
                "sslrootcert",
            ),
        ] {
            let e = parse(url, &[]).unwrap_err();
            assert!(e.contains(says), "{url}: {e}");
        }
        let env = HashMap::new();
        let e = Target::parse(
            "host=db user=a",
            "Bad-Name",
            Password {
                file: None,
                env: &env,
            },
        )
        .unwrap_err();
        assert!(e.contains("store.schema"), "{e}");
        let file = Path::new("/nonexistent/pw");
        let e = Target::parse(
            "host=db user=a",
            "m",
            Password {
                file: Some(file),
                env: &env,
            },
        )
        .unwrap_err();
        assert!(e.contains("store.password_file"), "{e}");
    }
}
