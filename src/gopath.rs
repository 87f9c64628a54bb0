//! Paths as Go's `path/filepath` and BuildKit handle them: '/'-separated text, cleaned without
//! asking the disk. A leaf: the context walk, the ignore rules and the Dockerfile analysis share it.

/// Go's `filepath.Clean` on Unix: the shortest equivalent path, "." for nothing.
pub(crate) fn clean(path: &str) -> String {
    let rooted = path.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => match parts.last() {
                Some(&last) if last != ".." => {
                    parts.pop();
                }
                // ".." at the root stays at the root; a relative path keeps its leading "..".
                _ if rooted => {}
                _ => parts.push(".."),
            },
            _ => parts.push(part),
        }
    }
    let joined = parts.join("/");
    if rooted {
        format!("/{joined}")
    } else if joined.is_empty() {
        ".".to_owned()
    } else {
        joined
    }
}

/// The directories above `path` (relative, '/'-separated), nearest first.
pub(crate) fn ancestors(path: &str) -> impl Iterator<Item = &str> {
    fn parent(path: &str) -> Option<&str> {
        path.rfind('/').map(|slash| &path[..slash])
    }
    std::iter::successors(parent(path), |dir| parent(dir))
}

/// A path as BuildKit resolves it against the context: `.` and `..` resolved, never above the
/// root; empty for the root itself.
pub(crate) fn within_context(path: &str) -> String {
    clean(&format!("/{path}"))
        .trim_start_matches('/')
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_clean_resolve_and_climb_as_go_and_buildkit_have_them() {
        for (path, cleaned) in [
            ("a//b/./c/..", "a/b"),
            ("/../x", "/x"),
            ("../../x", "../../x"),
            ("", "."),
            ("/", "/"),
        ] {
            assert_eq!(clean(path), cleaned, "{path}");
        }
        assert_eq!(within_context("../../etc/passwd"), "etc/passwd");
        assert_eq!(within_context("./"), "");
        assert_eq!(ancestors("a/b/c").collect::<Vec<_>>(), ["a/b", "a"]);
        assert_eq!(ancestors("top").count(), 0);
    }
}
