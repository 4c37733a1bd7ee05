//! The agent's HTTP proxy, for the launcher's own traffic (docs/design/proxy.md).
//!
//! Agents behind a proxy reach the Hetzner API, the registry and the runner's SSH only through
//! it. The proxy comes from the flags `--http-proxy`, `--https-proxy`, `--no-proxy` (the
//! settings `http_proxy`, `https_proxy`, `no_proxy` in plugin mode, where the operator policy
//! decides whether a pipeline may choose one: `cli/plugin.rs`), else from the agent's
//! environment read as curl reads it: `http_proxy` (lower case only), `https_proxy` /
//! `HTTPS_PROXY`, `all_proxy` / `ALL_PROXY` for both, `no_proxy` / `NO_PROXY`; the lower-case
//! spelling wins. Every reqwest client is built through [`client`]; SSH goes through the https
//! proxy with an HTTP CONNECT tunnel made by the launcher itself ([`tunnel`], a `ProxyCommand`),
//! unless `no_proxy` names the runner. The build on the runner never sees the proxy: the runner
//! has its own way out, from which the agent's proxy is usually unreachable.
//!
//! A proxy URL is `http://[user:password@]host[:port]` (no scheme means `http://`, the port
//! defaults to 80); other schemes (`https://`, `socks5://`) are refused, since the tunnel is
//! plain HTTP CONNECT. The user info is proxy basic auth: it is never printed (messages show
//! the proxy as `http://host:port`), never put in an argument list, and reaches the tunnel
//! through a 0600 file in the connection's private directory.

pub mod tunnel;

use std::sync::OnceLock;

use zeroize::Zeroizing;

use crate::exit::quote;

/// One proxy: where it is and the basic auth its URL carries.
#[derive(Clone, PartialEq, Eq)]
pub struct ProxyUrl {
    host: String,
    port: u16,
    user: Option<(Zeroizing<String>, Zeroizing<String>)>,
}

impl std::fmt::Debug for ProxyUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the user info.
        f.write_str(&self.display())
    }
}

impl ProxyUrl {
    /// Parse a proxy URL; the error says what is wrong, without the value (the caller names
    /// the setting and quotes the value with [`redacted`]).
    pub fn parse(value: &str) -> Result<ProxyUrl, String> {
        let value = value.trim();
        let with_scheme = if value.contains("://") {
            value.to_owned()
        } else {
            format!("http://{value}")
        };
        let url = url::Url::parse(&with_scheme)
            .map_err(|e| format!("not a proxy URL ({e}); write http://HOST:PORT"))?;
        if url.scheme() != "http" {
            return Err(format!(
                "a {}:// proxy is not supported: the launcher tunnels through an HTTP proxy with CONNECT; write http://HOST:PORT",
                url.scheme()
            ));
        }
        let host = match url.host() {
            Some(url::Host::Domain(d)) if !d.is_empty() => d.to_owned(),
            Some(url::Host::Ipv4(ip)) => ip.to_string(),
            Some(url::Host::Ipv6(ip)) => ip.to_string(),
            _ => return Err("names no proxy host; write http://HOST:PORT".into()),
        };
        if !matches!(url.path(), "" | "/") || url.query().is_some() || url.fragment().is_some() {
            return Err("a proxy URL has no path or query; write http://HOST:PORT".into());
        }
        let port = url.port_or_known_default().unwrap_or(80);
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8()
                .map(|s| Zeroizing::new(s.into_owned()))
                .map_err(|_| "the proxy user or password is not UTF-8 once decoded".to_owned())
        };
        let user = if url.username().is_empty() && url.password().is_none() {
            None
        } else {
            Some((
                decode(url.username())?,
                decode(url.password().unwrap_or(""))?,
            ))
        };
        Ok(ProxyUrl { host, port, user })
    }

    /// `http://host:port`, for messages: never the user info.
    pub fn display(&self) -> String {
        format!("http://{}", self.authority())
    }

    /// `host:port`, an IPv6 address in brackets.
    pub fn authority(&self) -> String {
        authority(&self.host, self.port)
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The `Proxy-Authorization` value the URL's user info stands for.
    pub fn authorization(&self) -> Option<Zeroizing<String>> {
        use base64::Engine;
        self.user.as_ref().map(|(user, password)| {
            let plain = Zeroizing::new(format!("{}:{}", user.as_str(), password.as_str()));
            Zeroizing::new(format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(plain.as_bytes())
            ))
        })
    }

    /// The whole URL, user info included, percent-encoded again (for the tunnel's 0600 file).
    pub fn to_private_url(&self) -> Zeroizing<String> {
        let enc = |s: &str| {
            percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
        };
        Zeroizing::new(match &self.user {
            Some((user, password)) => format!(
                "http://{}:{}@{}",
                enc(user),
                enc(password),
                self.authority()
            ),
            None => self.display(),
        })
    }

    /// The proxy password, for masking.
    pub fn password(&self) -> Option<&str> {
        self.user
            .as_ref()
            .map(|(_, p)| p.as_str())
            .filter(|p| !p.is_empty())
    }
}

/// `host:port`, an IPv6 address in brackets (as CONNECT and URLs write it).
pub fn authority(host: &str, port: u16) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// A proxy value for a message: quoted, control bytes escaped, its user info as `****`.
pub fn redacted(value: &str) -> String {
    let start = value.find("://").map_or(0, |i| i + 3);
    let end = value[start..]
        .find(['/', '?', '#'])
        .map_or(value.len(), |i| start + i);
    match value[start..end].rfind('@') {
        Some(at) => quote(&format!("{}****{}", &value[..start], &value[start + at..])),
        None => quote(value),
    }
}

/// The proxies in force.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Proxies {
    pub http: Option<ProxyUrl>,
    pub https: Option<ProxyUrl>,
    /// curl's `no_proxy` list: host names (and their subdomains), IP addresses, CIDR networks,
    /// `*` for every host.
    pub no_proxy: String,
}

/// What the command line (or the settings) said; `None` leaves the variable to the
/// environment.
#[derive(Clone, Debug, Default)]
pub struct Given {
    pub http: Option<String>,
    pub https: Option<String>,
    pub no_proxy: Option<String>,
}

/// The variables read for each, in curl's order (the lower case wins; `HTTP_PROXY` is not
/// read, as curl does not: a CGI program would take a request's `Proxy:` header for it).
pub const HTTP_VARS: &[&str] = &["http_proxy", "all_proxy", "ALL_PROXY"];
pub const HTTPS_VARS: &[&str] = &["https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"];
pub const NO_PROXY_VARS: &[&str] = &["no_proxy", "NO_PROXY"];

/// The first non-empty variable of `names`, with its name.
pub fn from_env(
    names: &[&'static str],
    env: &dyn Fn(&str) -> Option<String>,
) -> Option<(&'static str, String)> {
    names.iter().find_map(|n| {
        env(n)
            .filter(|v| !v.trim().is_empty())
            .map(|v| (*n, v.trim().to_owned()))
    })
}

/// The proxies from `given` (flags) and the environment. `flag` names a flag in messages
/// (`--http-proxy`, or the setting in plugin mode).
pub fn resolve(
    given: &Given,
    env: &dyn Fn(&str) -> Option<String>,
    flag: &dyn Fn(&str) -> String,
) -> Result<Proxies, String> {
    let one = |given: &Option<String>, flag_name: &str, vars: &[&'static str]| {
        let (name, value) = match given.as_deref().map(str::trim).filter(|v| !v.is_empty()) {
            Some(v) => (flag(flag_name), v.to_owned()),
            None => match from_env(vars, env) {
                Some((n, v)) => (n.to_owned(), v),
                None => return Ok(None),
            },
        };
        ProxyUrl::parse(&value)
            .map(Some)
            .map_err(|e| format!("{name}: {}: {e}", redacted(&value)))
    };
    let (no_name, no_proxy) = match given.no_proxy.as_deref() {
        Some(v) => (flag("--no-proxy"), v.trim().to_owned()),
        None => from_env(NO_PROXY_VARS, env)
            .map(|(n, v)| (n.to_owned(), v))
            .unwrap_or_default(),
    };
    let bad_entry = |e: &&str| {
        e.chars().any(|c| c.is_whitespace() || c.is_control()) || e.contains('/') && !cidr(e)
    };
    if let Some(bad) = no_proxy.split(',').map(str::trim).find(bad_entry) {
        return Err(format!(
            "{no_name}: {}: {}: not a host name, IP address or network (HOST, .DOMAIN, IP, IP/BITS or *, separated by commas)",
            quote(&no_proxy),
            quote(bad)
        ));
    }
    Ok(Proxies {
        http: one(&given.http, "--http-proxy", HTTP_VARS)?,
        https: one(&given.https, "--https-proxy", HTTPS_VARS)?,
        no_proxy,
    })
}

fn cidr(entry: &str) -> bool {
    entry.split_once('/').is_some_and(|(ip, bits)| {
        ip.parse::<std::net::IpAddr>().is_ok() && bits.parse::<u8>().is_ok()
    })
}

static CURRENT: OnceLock<Proxies> = OnceLock::new();

/// Fix the proxies for this process (the command line sets them once, before any client).
pub fn set(proxies: Proxies) {
    let _ = CURRENT.set(proxies);
}

/// The proxies in force: those [`set`], else the environment's (a value that does not parse is
/// left out here; the command line refuses it before anything runs).
pub fn current() -> Proxies {
    if let Some(p) = CURRENT.get() {
        return p.clone();
    }
    let env = |n: &str| crate::environment::var(n);
    let parse =
        |vars: &[&'static str]| from_env(vars, &env).and_then(|(_, v)| ProxyUrl::parse(&v).ok());
    Proxies {
        http: parse(HTTP_VARS),
        https: parse(HTTPS_VARS),
        no_proxy: from_env(NO_PROXY_VARS, &env)
            .map(|(_, v)| v)
            .unwrap_or_default(),
    }
}

/// A reqwest client builder that uses exactly [`current`]'s proxies (never reqwest's own
/// reading of the environment, which differs from curl's).
pub fn client(builder: reqwest::ClientBuilder) -> reqwest::ClientBuilder {
    let proxies = current();
    let mut builder = builder.no_proxy();
    if proxies.bypasses_all() {
        return builder;
    }
    for (proxy, https) in [(&proxies.http, false), (&proxies.https, true)] {
        let Some(proxy) = proxy else { continue };
        let made = if https {
            reqwest::Proxy::https(proxy.display())
        } else {
            reqwest::Proxy::http(proxy.display())
        };
        let Ok(mut p) = made else {
            continue;
        };
        if let Some((user, password)) = &proxy.user {
            p = p.basic_auth(user, password);
        }
        builder = builder.proxy(p.no_proxy(reqwest::NoProxy::from_string(&proxies.no_proxy)));
    }
    builder
}

impl Proxies {
    /// The proxy an SSH connection to `host:port` goes through: the https proxy (SSH is
    /// tunnelled with CONNECT, as HTTPS is), unless `no_proxy` names the host. The same matcher
    /// as reqwest's decides.
    pub fn for_ssh(&self, host: &str, port: u16) -> Option<&ProxyUrl> {
        self.through(
            self.https.as_ref(),
            &format!("https://{}/", authority(host, port)),
        )
    }

    /// The proxy a plain-HTTP request to `authority` (`host[:port]`) goes through: the proxy
    /// reads such a request whole, credentials included.
    pub fn for_plain_http(&self, authority: &str) -> Option<&ProxyUrl> {
        self.through(self.http.as_ref(), &format!("http://{authority}/"))
    }

    fn through<'a>(&self, proxy: Option<&'a ProxyUrl>, url: &str) -> Option<&'a ProxyUrl> {
        let proxy = proxy.filter(|_| !self.bypasses_all())?;
        let uri: http::Uri = url.parse().ok()?;
        let matcher = hyper_util::client::proxy::matcher::Matcher::builder()
            .http(proxy.display())
            .https(proxy.display())
            .no(self.no_proxy.clone())
            .build();
        matcher.intercept(&uri).map(|_| proxy)
    }

    /// `no_proxy` holds `*`: every host, IP addresses included, as curl reads it (reqwest's
    /// matcher lets `*` match names only).
    pub fn bypasses_all(&self) -> bool {
        self.no_proxy.split(',').any(|e| e.trim() == "*")
    }

    /// Every proxy password, for masking.
    pub fn passwords(&self) -> Vec<String> {
        [&self.http, &self.https]
            .into_iter()
            .flatten()
            .filter_map(|p| p.password().map(str::to_owned))
            .collect()
    }
}

#[cfg(test)]
mod tests;
