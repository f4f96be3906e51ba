//! Where storage links may lead (SPEC §6 `downloads.allow_private`): never to
//! link-local or cloud-metadata addresses, and to loopback or private ones only
//! when allowed. Checked for every address a name resolves to (a resolver of the
//! storage client's own) and for every redirect hop, so neither a link nor a
//! redirect can make the mirror fetch from the host's metadata service.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use reqwest::Url;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// Redirect hops a storage download follows at most.
const MAX_REDIRECTS: usize = 5;

/// Why `ip` may not be fetched from, if it may not.
pub fn refused(ip: IpAddr, allow_private: bool) -> Option<&'static str> {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    };
    const METADATA_V4: Ipv4Addr = Ipv4Addr::new(100, 100, 100, 200);
    const METADATA_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254);
    let (always, private) = match ip {
        IpAddr::V4(v4) => (
            v4.is_link_local() || v4 == METADATA_V4 || v4.is_unspecified() || v4.is_broadcast(),
            v4.is_loopback()
                || v4.is_private()
                || (v4.octets()[0] == 100 && v4.octets()[1] & 0xc0 == 64),
        ),
        IpAddr::V6(v6) => (
            (v6.segments()[0] & 0xffc0) == 0xfe80 || v6 == METADATA_V6 || v6.is_unspecified(),
            v6.is_loopback() || (v6.segments()[0] & 0xfe00) == 0xfc00,
        ),
    };
    if always {
        Some("a link-local or cloud-metadata address")
    } else if private && !allow_private {
        Some("a loopback or private address (downloads.allow_private is false)")
    } else {
        None
    }
}

/// A storage link the mirror may not fetch from.
#[derive(Debug, thiserror::Error)]
#[error("refusing the storage link to {host}: {ip} is {why}")]
pub struct Refused {
    pub host: String,
    pub ip: IpAddr,
    pub why: &'static str,
}

/// The link's own host, when it is an address (no name to resolve).
pub fn check_url(url: &Url, allow_private: bool) -> Result<(), Refused> {
    let ip = match url.host() {
        Some(url::Host::Ipv4(v4)) => IpAddr::V4(v4),
        Some(url::Host::Ipv6(v6)) => IpAddr::V6(v6),
        _ => return Ok(()),
    };
    match refused(ip, allow_private) {
        Some(why) => Err(Refused {
            host: url.host_str().unwrap_or("?").to_string(),
            ip,
            why,
        }),
        None => Ok(()),
    }
}

/// Resolves names for the storage client, keeping only addresses it may use.
pub struct GuardedResolver {
    pub allow_private: bool,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let allow_private = self.allow_private;
        Box::pin(async move {
            let host = name.as_str().to_string();
            let all: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let (ok, bad): (Vec<SocketAddr>, Vec<SocketAddr>) = all
                .into_iter()
                .partition(|a| refused(a.ip(), allow_private).is_none());
            match (ok.is_empty(), bad.first()) {
                (true, Some(a)) => Err(format!(
                    "refusing the storage host {host}: it resolves to {}, {}",
                    a.ip(),
                    refused(a.ip(), allow_private).unwrap_or("refused")
                )
                .into()),
                _ => Ok(Box::new(ok.into_iter()) as Addrs),
            }
        })
    }
}

/// Follows up to [`MAX_REDIRECTS`] hops, each checked like the link itself.
pub fn redirect_policy(allow_private: bool) -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(move |attempt| {
        if attempt.previous().len() > MAX_REDIRECTS {
            return attempt.error(format!("more than {MAX_REDIRECTS} redirects"));
        }
        match check_url(attempt.url(), allow_private) {
            Ok(()) => attempt.follow(),
            Err(why) => attempt.error(why),
        }
    })
}

/// The resolver as the client builder takes it.
pub fn resolver(allow_private: bool) -> Arc<GuardedResolver> {
    Arc::new(GuardedResolver { allow_private })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_and_link_local_always_private_only_when_allowed() {
        for ip in [
            "169.254.169.254",
            "100.100.100.200",
            "fd00:ec2::254",
            "fe80::1",
            "0.0.0.0",
            "::ffff:169.254.169.254",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert!(refused(ip, true).is_some(), "{ip}");
        }
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "::1",
            "fd12::1",
            "100.64.0.1",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert!(refused(ip, true).is_none(), "{ip}");
            assert!(refused(ip, false).is_some(), "{ip}");
        }
        for ip in ["52.216.1.1", "2600:1f18::1"] {
            assert!(refused(ip.parse().unwrap(), false).is_none(), "{ip}");
        }
    }
}
