//! GETs of URLs someone else chose (a provider's output images): only to
//! public addresses, unless the operator allowed a host.
//!
//! A malicious or compromised provider could hand out a URL, or redirect to
//! one, that points at loopback, the private network or a cloud metadata
//! endpoint (server-side request forgery). So the address actually connected
//! to is checked, not the name: names are resolved by [`PublicOnly`], which
//! hands reqwest only public addresses (a name that resolves to a public
//! address for a check and to a private one for the connection, DNS
//! rebinding, cannot slip through: the same answer is checked and used), and
//! URLs with an IP address instead of a name are checked before the request.
//! Redirects are followed here, one hop at a time, so every hop is checked.
//!
//! `REACTOR_ALLOW_PRIVATE_DOWNLOADS` lists hosts (`host` or `host:port`) that
//! are fetched without the check: an image server on the private network.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

/// Redirects followed at most per GET.
pub const MAX_REDIRECTS: usize = 5;

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The URL, or a redirect, leads to an address that is not public.
    #[error("refused: {0}")]
    Refused(String),
    #[error("{0}")]
    Request(reqwest::Error),
}

impl FetchError {
    fn from_request(e: reqwest::Error) -> FetchError {
        let mut source = std::error::Error::source(&e);
        while let Some(cause) = source {
            if let Some(private) = cause.downcast_ref::<PrivateName>() {
                return FetchError::Refused(private.to_string());
            }
            source = cause.source();
        }
        FetchError::Request(e)
    }
}

/// Whether connecting to `ip` reaches the public internet: not loopback,
/// private, link-local (cloud metadata at 169.254.169.254), unique-local,
/// shared (100.64.0.0/10, also a metadata range), unspecified, broadcast,
/// multicast or reserved; IPv4 inside IPv6 is judged as IPv4.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => match embedded_v4(v6) {
            Some(v4) => is_public_v4(v4),
            None => is_public_v6(v6),
        },
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || a == 0
        || (a == 100 && (64..128).contains(&b))
        || (a == 192 && b == 0 && c == 0)
        || (a == 198 && (b == 18 || b == 19))
        || a >= 240)
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let first = ip.segments()[0];
    !(ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        || (first & 0xfe00) == 0xfc00 // unique local fc00::/7
        || (first & 0xffc0) == 0xfe80 // link local fe80::/10
        || (first & 0xffc0) == 0xfec0 // site local fec0::/10
        || (first == 0x2001 && ip.segments()[1] == 0x0db8)) // documentation
}

/// The IPv4 address inside an IPv4-mapped (::ffff:a.b.c.d), IPv4-compatible
/// (::a.b.c.d) or NAT64 (64:ff9b::a.b.c.d) address.
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    if let Some(v4) = ip.to_ipv4() {
        // ::1 and :: are IPv6's own loopback and unspecified addresses.
        return (!ip.is_loopback() && !ip.is_unspecified()).then_some(v4);
    }
    let s = ip.segments();
    (s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0, 0, 0, 0]).then(|| {
        let [_, _, _, _, _, _, hi, lo] = s;
        Ipv4Addr::new((hi >> 8) as u8, hi as u8, (lo >> 8) as u8, lo as u8)
    })
}

/// A name that resolves to no public address.
#[derive(Debug, thiserror::Error)]
#[error("{0} resolves to no public address")]
struct PrivateName(String);

/// Resolves names to their public addresses only.
struct PublicOnly;

impl reqwest::dns::Resolve for PublicOnly {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_string();
        Box::pin(async move {
            let all = tokio::net::lookup_host((host.as_str(), 0)).await?;
            let public: Vec<SocketAddr> = all.filter(|a| is_public(a.ip())).collect();
            if public.is_empty() {
                return Err(Box::new(PrivateName(host)) as Box<_>);
            }
            Ok(Box::new(public.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// Hosts fetched without the address check (`host` or `host:port`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AllowedHosts(Vec<(String, Option<u16>)>);

impl AllowedHosts {
    /// Parses a comma-separated list of `host` or `host:port`
    /// (IPv6 in brackets: `[::1]:8080`).
    pub fn parse(list: &str) -> Result<AllowedHosts, String> {
        let mut hosts = Vec::new();
        for entry in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let url = url::Url::parse(&format!("http://{entry}/"))
                .map_err(|e| format!("{entry:?} is not a host or host:port ({e})"))?;
            let host = url
                .host_str()
                .filter(|_| url.username().is_empty() && url.path() == "/")
                .ok_or_else(|| format!("{entry:?} is not a host or host:port"))?;
            hosts.push((host.to_ascii_lowercase(), url.port()));
        }
        Ok(AllowedHosts(hosts))
    }

    /// Adds the host and port of `url` (a provider's own output server).
    pub fn with_origin_of(mut self, url: &url::Url) -> AllowedHosts {
        if let Some(host) = url.host_str() {
            self.0
                .push((host.to_ascii_lowercase(), url.port_or_known_default()));
        }
        self
    }

    fn allows(&self, url: &url::Url) -> bool {
        let (Some(host), port) = (url.host_str(), url.port_or_known_default()) else {
            return false;
        };
        self.0
            .iter()
            .any(|(h, p)| h.eq_ignore_ascii_case(host) && p.is_none_or(|p| Some(p) == port))
    }
}

/// GETs to public addresses (and to [`AllowedHosts`]), redirects checked hop by hop.
pub struct PublicFetch {
    /// Resolves through [`PublicOnly`].
    public: reqwest::Client,
    /// For allowed hosts only.
    allowed_client: reqwest::Client,
    allowed: AllowedHosts,
}

impl PublicFetch {
    pub fn new(timeout: Duration, allowed: AllowedHosts) -> Result<PublicFetch, reqwest::Error> {
        let builder = || {
            reqwest::Client::builder()
                .timeout(timeout)
                .connect_timeout(timeout.min(Duration::from_secs(10)))
                .redirect(reqwest::redirect::Policy::none())
        };
        Ok(PublicFetch {
            public: builder().dns_resolver(Arc::new(PublicOnly)).build()?,
            allowed_client: builder().build()?,
            allowed,
        })
    }

    /// GET `url`, following up to [`MAX_REDIRECTS`] redirects; the answer
    /// that is not a redirect.
    pub async fn get(&self, url: &str) -> Result<reqwest::Response, FetchError> {
        let mut url = url::Url::parse(url).map_err(|e| FetchError::Refused(e.to_string()))?;
        for _ in 0..=MAX_REDIRECTS {
            let client = self.client_for(&url)?;
            let response = client
                .get(url.clone())
                .send()
                .await
                .map_err(FetchError::from_request)?;
            if !response.status().is_redirection() {
                return Ok(response);
            }
            let Some(location) = response
                .headers()
                .get(reqwest::header::LOCATION)
                .and_then(|l| l.to_str().ok())
            else {
                return Ok(response);
            };
            url = url
                .join(location)
                .map_err(|e| FetchError::Refused(format!("a redirect to an invalid URL ({e})")))?;
        }
        Err(FetchError::Refused(format!(
            "more than {MAX_REDIRECTS} redirects"
        )))
    }

    /// The client that may fetch `url`, or why none may.
    fn client_for(&self, url: &url::Url) -> Result<&reqwest::Client, FetchError> {
        let shown = crate::http::client::display_url(url.as_str());
        if url.scheme() != "http" && url.scheme() != "https" {
            return Err(FetchError::Refused(format!("{shown} is not http(s)")));
        }
        if self.allowed.allows(url) {
            return Ok(&self.allowed_client);
        }
        let literal = match url.host() {
            Some(url::Host::Ipv4(ip)) => Some(IpAddr::V4(ip)),
            Some(url::Host::Ipv6(ip)) => Some(IpAddr::V6(ip)),
            Some(url::Host::Domain(_)) => None,
            None => return Err(FetchError::Refused(format!("{shown} has no host"))),
        };
        match literal {
            Some(ip) if !is_public(ip) => Err(FetchError::Refused(format!(
                "{shown} is not a public address"
            ))),
            _ => Ok(&self.public),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_loopback_link_local_and_metadata_addresses_are_not_public() {
        for ip in [
            "127.0.0.1",
            "127.1.2.3",
            "10.0.0.1",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.100.100.200",
            "0.0.0.0",
            "0.1.2.3",
            "255.255.255.255",
            "224.0.0.1",
            "::1",
            "::",
            "fd00:ec2::254",
            "fc00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::127.0.0.1",
            "64:ff9b::a9fe:a9fe",
        ] {
            assert!(!is_public(ip.parse().unwrap()), "{ip}");
        }
        for ip in [
            "93.184.216.34",
            "8.8.8.8",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
        ] {
            assert!(is_public(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn allowed_hosts_match_host_and_port_when_given() {
        let allowed = AllowedHosts::parse("127.0.0.1:9000, images.internal ,[::1]:80").unwrap();
        let url = |u: &str| url::Url::parse(u).unwrap();
        assert!(allowed.allows(&url("http://127.0.0.1:9000/a.jpg")));
        assert!(!allowed.allows(&url("http://127.0.0.1:9001/a.jpg")));
        assert!(allowed.allows(&url("https://IMAGES.internal/a.jpg")));
        assert!(allowed.allows(&url("http://images.internal:81/a.jpg")));
        assert!(allowed.allows(&url("http://[::1]/a.jpg")));
        assert!(!allowed.allows(&url("http://localhost:9000/a.jpg")));
        assert_eq!(AllowedHosts::parse("").unwrap(), AllowedHosts::default());
        assert!(AllowedHosts::parse("http://x/").is_err());
        assert!(AllowedHosts::parse("x/path").is_err());
    }
}
