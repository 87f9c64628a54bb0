//! The parts of an image reference, each checked in one place: registry hosts, repository names,
//! tags and digests. The config, the tag templates and the registry client all use these.

use std::net::{IpAddr, Ipv6Addr};
use std::sync::LazyLock;

use regex::Regex;

/// ECR's repository name rule (CreateRepository's `repositoryName` pattern), 2 to 256 characters.
static REPOSITORY: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^(?:[a-z0-9]+(?:[._-][a-z0-9]+)*/)*[a-z0-9]+(?:[._-][a-z0-9]+)*$")
        .expect("valid pattern")
});

/// Docker's tag rule.
static TAG: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$").expect("valid pattern"));

/// `sha256:` + 64 lowercase or uppercase hex digits, or `sha512:` + 128.
static DIGEST: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^(?:sha256:[0-9a-fA-F]{64}|sha512:[0-9a-fA-F]{128})$").expect("valid pattern")
});

/// An image's repository in its registry, `registry/repository`: the one place its references
/// (`uri:tag`, `uri@digest`) are written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RepositoryUri(String);

impl RepositoryUri {
    pub(crate) fn new(registry: &str, repository: &str) -> Self {
        Self(format!("{registry}/{repository}"))
    }

    pub(crate) fn tagged(&self, tag: &str) -> String {
        format!("{}:{tag}", self.0)
    }

    pub(crate) fn at(&self, digest: &str) -> String {
        format!("{}@{digest}", self.0)
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for RepositoryUri {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

pub(crate) fn is_valid_tag(tag: &str) -> bool {
    TAG.is_match(tag)
}

pub(crate) fn is_digest(text: &str) -> bool {
    DIGEST.is_match(text)
}

/// ECR's rule: lowercase components separated by `/`, each `[a-z0-9]+([._-][a-z0-9]+)*`.
pub(crate) fn check_repository(repository: &str) -> Result<(), String> {
    if (2..=256).contains(&repository.len()) && REPOSITORY.is_match(repository) {
        Ok(())
    } else {
        Err(format!(
            "repository `{repository}` is not a valid ECR repository name \
             (2-256 characters; lowercase letters, digits and . _ - between them, components separated by /)"
        ))
    }
}

/// A tag as a registry takes it, or a digest.
pub(crate) fn check_reference(reference: &str) -> Result<(), String> {
    if reference.contains(':') {
        return if is_digest(reference) {
            Ok(())
        } else {
            Err(format!("invalid digest {reference:?}"))
        };
    }
    if is_valid_tag(reference) {
        Ok(())
    } else {
        Err(format!(
            "invalid tag {reference:?}: 1 to 128 of [A-Za-z0-9_.-], not starting with '.' or '-'"
        ))
    }
}

/// `host[:port]`, tolerating a scheme and a trailing slash as ECR's proxyEndpoint has them.
pub(crate) fn normalize_registry(registry: &str) -> Result<String, String> {
    let host = registry
        .trim()
        .trim_start_matches("https://")
        .trim_start_matches("http://")
        .trim_end_matches('/');
    match host_name(host) {
        Ok(_) => Ok(host.to_owned()),
        Err(reason) => Err(format!(
            "registry `{registry}` is not a host[:port] ({reason})"
        )),
    }
}

/// A base image mirror as `host[:port][/path]` (an ECR pull-through cache rule's prefix, or
/// `public.ecr.aws/docker`), tolerating a scheme and a trailing slash.
pub(crate) fn check_mirror(mirror: &str) -> Result<String, String> {
    let trimmed = (mirror.trim())
        .trim_start_matches("https://")
        .trim_end_matches('/');
    let (host, path) = match trimmed.split_once('/') {
        Some((host, path)) => (host, Some(path)),
        None => (trimmed, None),
    };
    let problem = if !(host.contains('.') || host.contains(':') || host == "localhost") {
        Some("it names no registry host first (one with a `.` or a `:`)".to_owned())
    } else if let Err(reason) = host_name(host) {
        Some(reason.to_owned())
    } else {
        path.filter(|path| !REPOSITORY.is_match(path)).map(|path| {
            format!(
                "`{path}` is not a repository path (lowercase letters, digits and . _ - between \
                 them, components separated by /)"
            )
        })
    };
    match problem {
        None => Ok(trimmed.to_owned()),
        Some(reason) => Err(format!(
            "base_image_mirror `{mirror}` is not host[/path], e.g. 123456789012.dkr.ecr.eu-west-1.amazonaws.com/docker-hub: {reason}"
        )),
    }
}

/// `host[:port]` → the host name or address (IPv6 without brackets).
pub(crate) fn host_name(host: &str) -> Result<&str, &'static str> {
    if host.contains("://") {
        return Err("expected host[:port] without a scheme");
    }
    let (name, port) = if let Some(rest) = host.strip_prefix('[') {
        let (addr, after) = rest.split_once(']').ok_or("missing ']'")?;
        addr.parse::<Ipv6Addr>()
            .map_err(|_| "invalid IPv6 address")?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':').ok_or("unexpected text after ']'")?),
        };
        (addr, port)
    } else {
        match host.split_once(':') {
            Some((name, port)) => (name, Some(port)),
            None => (host, None),
        }
    };
    if let Some(port) = port {
        if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
            return Err("the port must be a number");
        }
        port.parse::<u16>()
            .map_err(|_| "the port is out of range")?;
    }
    if name.is_empty() {
        return Err("empty host name");
    }
    if !host.starts_with('[')
        && !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
    {
        return Err("the host name may only contain letters, digits, '.' and '-'");
    }
    Ok(name)
}

/// The registry host a reference names, and the rest: the first component is a host when it has
/// a `.` or a `:` in it, or is `localhost`, as Docker reads references.
pub(crate) fn split_registry(reference: &str) -> (Option<&str>, &str) {
    match reference.split_once('/') {
        Some((first, rest))
            if first.contains('.') || first.contains(':') || first == "localhost" =>
        {
            (Some(first), rest)
        }
        _ => (None, reference),
    }
}

/// `myapp/web:latest` is in the run's registry; `host.example:5000/x:y` or `localhost/x` names its own.
pub(crate) fn qualify_reference(registry: &str, reference: &str) -> String {
    match split_registry(reference) {
        (Some(_), _) => reference.to_owned(),
        (None, _) => format!("{registry}/{reference}"),
    }
}

/// The platforms ecr-build builds for, as Docker writes them.
pub(crate) const PLATFORMS: [&str; 8] = [
    "linux/amd64",
    "linux/arm64",
    "linux/arm64/v8",
    "linux/arm/v7",
    "linux/arm/v6",
    "linux/386",
    "linux/ppc64le",
    "linux/s390x",
];

pub(crate) fn check_platform(platform: &str) -> Result<(), String> {
    if PLATFORMS.contains(&platform) {
        Ok(())
    } else {
        Err(format!(
            "platform `{platform}` is not one of {}",
            PLATFORMS.join(", ")
        ))
    }
}

/// `linux/arm64/v8` → `("linux", "arm64", Some("v8"))`.
pub(crate) fn platform_parts(platform: &str) -> (&str, &str, Option<&str>) {
    let mut parts = platform.splitn(3, '/');
    let os = parts.next().unwrap_or_default();
    let architecture = parts.next().unwrap_or_default();
    (os, architecture, parts.next())
}

/// 127.0.0.0/8, `localhost` and `::1` (the IPv6 address without brackets).
pub(crate) fn is_loopback(name: &str) -> bool {
    name.eq_ignore_ascii_case("localhost")
        || name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::check_mirror;

    #[test]
    fn a_mirror_is_a_host_and_an_optional_repository_path() {
        let good = [
            (
                "123456789012.dkr.ecr.eu-west-1.amazonaws.com/docker-hub",
                None,
            ),
            ("public.ecr.aws/docker", None),
            (
                "https://public.ecr.aws/docker/",
                Some("public.ecr.aws/docker"),
            ),
            ("127.0.0.1:5000", None),
            ("localhost/a/b", None),
        ];
        for (mirror, expected) in good {
            assert_eq!(
                check_mirror(mirror).as_deref(),
                Ok(expected.unwrap_or(mirror))
            );
        }
        for bad in [
            "docker-hub",
            "docker-hub/library",
            "host.example/Docker",
            "host.example//x",
            "http://h.example:x/a",
        ] {
            let err = check_mirror(bad).unwrap_err();
            assert!(err.contains(bad) && err.contains("docker-hub"), "{err}");
        }
    }

    use super::*;

    #[test]
    fn repositories_follow_ecr_rules() {
        for repo in ["app", "team/app", "a.b_c-d/f0", "123456789012/x", "ab"] {
            assert_eq!(check_repository(repo), Ok(()), "{repo}");
        }
        let long = "a".repeat(257);
        for repo in [
            "", "a", "App", "/a", "a/", "a//b", "a..b", "a__b", "-a", "a b", "a?b", "a#b", "../x",
            "a/%2e", &long,
        ] {
            assert!(check_repository(repo).is_err(), "{repo:?}");
        }
    }

    #[test]
    fn tags_and_digests() {
        let digest = format!("sha256:{}", "0".repeat(64));
        for reference in ["latest", "ctx-0123abcd", "_x", "V1.2-rc_3", digest.as_str()] {
            assert_eq!(check_reference(reference), Ok(()), "{reference}");
        }
        for reference in [
            "",
            ".x",
            "-x",
            "a/b",
            "a?b",
            "a b",
            "sha256:",
            ":abc",
            "sha256:ab",
            &"x".repeat(129),
        ] {
            assert!(check_reference(reference).is_err(), "{reference:?}");
        }
        for ok in ["a", "_x", "1.2.3", "A-b_c.d", &"x".repeat(128)] {
            assert!(is_valid_tag(ok), "{ok}");
        }
        for bad in ["", ".a", "-a", "a/b", "a b", "ä", &"x".repeat(129)] {
            assert!(!is_valid_tag(bad), "{bad}");
        }
        assert!(!is_digest(&format!("sha384:{}", "0".repeat(96))));
        assert!(is_digest(&format!("sha512:{}", "A".repeat(128))));
    }

    #[test]
    fn platforms() {
        assert!(check_platform("linux/arm64").is_ok());
        assert!(
            check_platform("linux/arm65")
                .unwrap_err()
                .contains("linux/arm65")
        );
        assert_eq!(platform_parts("linux/arm/v7"), ("linux", "arm", Some("v7")));
        assert_eq!(platform_parts("linux/amd64"), ("linux", "amd64", None));
    }

    #[test]
    fn registry_hosts() {
        assert_eq!(
            normalize_registry("https://123456789012.dkr.ecr.eu-west-1.amazonaws.com/").as_deref(),
            Ok("123456789012.dkr.ecr.eu-west-1.amazonaws.com")
        );
        assert_eq!(
            normalize_registry("127.0.0.1:5000").as_deref(),
            Ok("127.0.0.1:5000")
        );
        for bad in ["", "a b", "h:x", "u@h", "host/path"] {
            assert!(normalize_registry(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn loopback_detection() {
        for host in [
            "127.0.0.1:5000",
            "127.1.2.3",
            "localhost",
            "LOCALHOST:80",
            "[::1]:5000",
            "[::1]",
        ] {
            assert!(is_loopback(host_name(host).unwrap()), "{host}");
        }
        for host in [
            "123456789012.dkr.ecr.eu-west-1.amazonaws.com",
            "10.0.0.1:5000",
            "[fe80::1]:443",
            "localhost.example.com",
            "128.0.0.1",
        ] {
            assert!(!is_loopback(host_name(host).unwrap()), "{host}");
        }
        for host in [
            "",
            "https://h",
            "h:",
            "h:x",
            "h:70000",
            "[::1",
            "[zz]:1",
            "a/b",
            "::1",
            "u@h",
        ] {
            assert!(host_name(host).is_err(), "{host:?}");
        }
    }

    #[test]
    fn cache_references_default_to_the_run_registry() {
        let registry = "1.dkr.ecr.eu-west-1.amazonaws.com";
        assert_eq!(
            qualify_reference(registry, "app/web:latest"),
            format!("{registry}/app/web:latest")
        );
        assert_eq!(
            qualify_reference(registry, "web:latest"),
            format!("{registry}/web:latest")
        );
        assert_eq!(
            qualify_reference(registry, "127.0.0.1:5000/app/web:latest"),
            "127.0.0.1:5000/app/web:latest"
        );
        assert_eq!(
            qualify_reference(registry, "localhost/web:1"),
            "localhost/web:1"
        );
        assert_eq!(
            qualify_reference(registry, "2.dkr.ecr.us-east-1.amazonaws.com/x:y"),
            "2.dkr.ecr.us-east-1.amazonaws.com/x:y"
        );
    }
}
