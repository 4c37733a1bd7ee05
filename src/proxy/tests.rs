use super::*;

fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let pairs: Vec<(String, String)> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |name: &str| {
        pairs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    }
}

fn flag(f: &str) -> String {
    f.to_owned()
}

#[test]
fn proxy_urls_as_curl_writes_them() {
    let p = ProxyUrl::parse("http://proxy.corp:3128").unwrap();
    assert_eq!((p.host(), p.port()), ("proxy.corp", 3128));
    assert!(p.authorization().is_none());
    let p = ProxyUrl::parse("proxy.corp:8080").unwrap();
    assert_eq!(p.display(), "http://proxy.corp:8080");
    let p = ProxyUrl::parse("http://proxy.corp/").unwrap();
    assert_eq!(p.port(), 80);
    let p = ProxyUrl::parse("http://[::1]:3128").unwrap();
    assert_eq!(p.authority(), "[::1]:3128");
    let p = ProxyUrl::parse("http://al%40ice:pa%3Ass@10.0.0.1:3128").unwrap();
    // base64("al@ice:pa:ss")
    assert_eq!(
        p.authorization().unwrap().as_str(),
        "Basic YWxAaWNlOnBhOnNz"
    );
    assert_eq!(p.display(), "http://10.0.0.1:3128");
    assert!(!format!("{p:?}").contains("pa"), "{p:?}");
    assert_eq!(ProxyUrl::parse(&p.to_private_url()).unwrap(), p);
    for (bad, says) in [
        ("socks5://p:1080", "socks5:// proxy is not supported"),
        ("https://p:443", "https:// proxy is not supported"),
        ("http://", "not a proxy URL"),
        ("http://p:3128/path", "no path"),
        ("http://p:99999", "not a proxy URL"),
    ] {
        let err = ProxyUrl::parse(bad).unwrap_err();
        assert!(err.contains(says), "{bad}: {err}");
    }
}

#[test]
fn user_info_is_never_shown() {
    assert_eq!(
        redacted("http://bob:s3cret@proxy:3128"),
        "\"http://****@proxy:3128\""
    );
    assert_eq!(redacted("bob:s3cret@proxy:1/x@y"), "\"****@proxy:1/x@y\"");
    assert_eq!(redacted("http://proxy:3128"), "\"http://proxy:3128\"");
    let err = resolve(
        &Given::default(),
        &env_of(&[("https_proxy", "socks5://bob:s3cret@proxy:1080")]),
        &flag,
    )
    .unwrap_err();
    assert!(
        err.starts_with("https_proxy: \"socks5://****@proxy:1080\": "),
        "{err}"
    );
    assert!(!err.contains("s3cret"), "{err}");
}

#[test]
fn the_environment_as_curl_reads_it() {
    let r = |pairs: &[(&str, &str)]| resolve(&Given::default(), &env_of(pairs), &flag).unwrap();
    // HTTP_PROXY (upper case) is not read, as curl does not.
    let p = r(&[("HTTP_PROXY", "http://upper:1")]);
    assert_eq!(p.http, None);
    // The lower case wins; all_proxy fills in for both.
    let p = r(&[
        ("HTTPS_PROXY", "http://upper:1"),
        ("https_proxy", "http://lower:2"),
        ("ALL_PROXY", "http://all:3"),
        ("NO_PROXY", "a.example"),
        ("no_proxy", "b.example"),
    ]);
    assert_eq!(p.https.unwrap().display(), "http://lower:2");
    assert_eq!(p.http.unwrap().display(), "http://all:3");
    assert_eq!(p.no_proxy, "b.example");
    // A flag wins over the environment; an empty one leaves it to the environment.
    let p = resolve(
        &Given {
            https: Some("http://flag:4".into()),
            http: Some(String::new()),
            no_proxy: Some(String::new()),
        },
        &env_of(&[
            ("https_proxy", "http://env:5"),
            ("http_proxy", "http://env:6"),
            ("no_proxy", "x"),
        ]),
        &flag,
    )
    .unwrap();
    assert_eq!(p.https.unwrap().display(), "http://flag:4");
    assert_eq!(p.http.unwrap().display(), "http://env:6");
    assert_eq!(p.no_proxy, "", "an empty --no-proxy means no exceptions");
    let err = resolve(
        &Given {
            no_proxy: Some("a.example, 10.0.0.0/8, bad/path".into()),
            ..Given::default()
        },
        &env_of(&[]),
        &flag,
    )
    .unwrap_err();
    assert!(err.starts_with("--no-proxy: "), "{err}");
    assert!(err.contains("\"bad/path\": not a host name"), "{err}");
}

#[test]
fn ssh_goes_through_the_https_proxy_unless_no_proxy_names_the_runner() {
    let proxies = |no: &str| Proxies {
        http: Some(ProxyUrl::parse("http://plain:1").unwrap()),
        https: Some(ProxyUrl::parse("http://tunnel:2").unwrap()),
        no_proxy: no.into(),
    };
    let p = proxies("");
    assert_eq!(
        p.for_ssh("203.0.113.7", 22).unwrap().display(),
        "http://tunnel:2"
    );
    assert!(
        proxies("203.0.113.0/24")
            .for_ssh("203.0.113.7", 22)
            .is_none()
    );
    assert!(proxies("203.0.113.7").for_ssh("203.0.113.7", 22).is_none());
    assert!(proxies("*").for_ssh("203.0.113.7", 22).is_none());
    assert!(
        proxies(".example.com")
            .for_ssh("r1.example.com", 22)
            .is_none()
    );
    assert!(proxies("example.com").for_ssh("203.0.113.7", 22).is_some());
    assert!(
        proxies("2001:db8::/32")
            .for_ssh("2001:db8::5", 22)
            .is_none()
    );
    let none = Proxies {
        https: None,
        ..proxies("")
    };
    assert_eq!(
        p.for_plain_http("10.1.2.3:5000").unwrap().display(),
        "http://plain:1"
    );
    assert!(
        proxies("10.0.0.0/8")
            .for_plain_http("10.1.2.3:5000")
            .is_none()
    );
    assert!(
        none.for_ssh("203.0.113.7", 22).is_none(),
        "only the https proxy tunnels"
    );
}
