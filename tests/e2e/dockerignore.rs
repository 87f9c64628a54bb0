//! Differential test of the build context: for one generated tree and several .dockerignore
//! pattern sets, what `COPY . /ctx` puts into an image built by ecr-build equals what it puts into
//! one built by the docker CLI from the same tree, against the same engine.
//!
//! The images are read through `docker save`: the last layer is exactly what the COPY wrote (path,
//! type, mode, symlink target, content hash), and one save of every image is much faster than
//! running a container per image.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Read;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::harness::*;

/// One .dockerignore to compare under.
struct Case {
    name: &'static str,
    dockerignore: &'static str,
    /// Differences the test expects, and checks are still there.
    known: &'static [Known],
}

/// A known difference between ecr-build's image and the docker CLI's, at a path below /ctx.
enum Known {
    /// The path, and everything below it, that docker CLI 20.10 (Debian 12's) filters differently:
    /// ecr-build follows the current CLI (moby/patternmatcher, Docker 23 and later), which escapes
    /// `+`, `(` and `)`, compares `**suffix` as plain text, and lets a file inherit each pattern's
    /// match from its directory rather than re-matching every pattern against its parents.
    Cli2010(&'static str),
    /// An excluded directory that holds a re-included file: a build session (the CLI's and
    /// ecr-build's) sends the directory with its own mode; the legacy builder's tar walk leaves
    /// the directory entry out, so the daemon creates it with mode 755.
    LegacyDirMode(&'static str),
    /// The path, and everything below it, that a current docker CLI's BuildKit session (buildx
    /// with fsutil's walk, Docker 23 and later) sends differently from the tar walk that ecr-build
    /// and the legacy builder follow: fsutil walks into every excluded directory once any exception
    /// pattern exists, so `!**/*.md` re-includes Markdown files below excluded directories; and it
    /// sends a file re-included below a re-excluded directory (`a`, `!a/b`, `a`) empty.
    Buildx(&'static str),
}

const CASES: &[Case] = &[
    Case {
        name: "globs",
        dockerignore: "*.log\nsrc/*.tmp\n?.txt\n[a-c]*.md\n*/*.bak\n[^a-m]*.js\n",
        known: &[],
    },
    Case {
        name: "double-star",
        dockerignore: "**/*.tmp\n**/node_modules\ndocs/**\nsrc/**/gen\n**/gen/**\nlib/**/*.md\n",
        known: &[],
    },
    Case {
        name: "directories",
        dockerignore: "build/\n/vendor\n./out\nsrc/deep/er\n.git\nsrc/*/\n",
        known: &[],
    },
    Case {
        name: "exceptions",
        dockerignore: "*.md\n!README.md\n!CHANGES.md\nCHANGES.md\ndocs\n!docs/keep.md\nbuild/*\n!build/keep\n",
        known: &[],
    },
    Case {
        name: "reinclude-inside-excluded",
        dockerignore: "src\n!src/deep\nsrc/deep/gen\nvendor\n!vendor/lib/*.js\nvendor/lib/drop.js\n",
        known: &[],
    },
    Case {
        name: "comments-and-cleaning",
        dockerignore: "\u{feff}# a comment\n\n   \n #not-a-comment\n  .env  \r\nsrc/../x.log\n./vendor/./lib/\n!  /vendor/lib/keep.js\n../docs\nsp ace.txt\nünï*\n\\-dash\n",
        known: &[],
    },
    Case {
        name: "symlinks-and-short-names",
        dockerignore: "link-to-dir/keep.md\nlink-to-file\n?\n??\n",
        known: &[],
    },
    Case {
        name: "everything-but",
        dockerignore: "*\n!src\nsrc/deep\n!src/deep/er/keep.txt\n!**/*.md\n",
        known: &[
            Known::LegacyDirMode("src/deep"),
            Known::Buildx("-x"),
            Known::Buildx("a.b"),
            Known::Buildx("docs"),
            Known::Buildx("lib"),
            Known::Buildx("v1.2"),
            Known::Buildx("vendor"),
        ],
    },
    Case {
        name: "build-files",
        dockerignore: "Docker*\n.*\n!.hidden\n",
        known: &[],
    },
    Case {
        // The quirks src/context.rs reproduces.
        name: "docker-quirks",
        dockerignore: "docs\n!**/keep.md\nfoo**\n**foo\na\n!a/b\na\n^v1*\n[*]\nx|*.md\n*.{js,ts}\n",
        known: &[
            Known::Cli2010("a"),
            Known::Cli2010("barfoo"),
            Known::Cli2010("src/barfoo"),
            Known::Buildx("a/b/c.txt"),
        ],
    },
    Case {
        name: "regexp-characters",
        dockerignore: "a+b.txt\n(p).txt\n\\#not-a-comment\n",
        known: &[
            Known::Cli2010("a+b.txt"),
            Known::Cli2010("aab.txt"),
            Known::Cli2010("ab.txt"),
            Known::Cli2010("(p).txt"),
            Known::Cli2010("p.txt"),
        ],
    },
    Case {
        name: "exception-of-the-parent",
        dockerignore: "docs/*\n!docs\n",
        known: &[Known::Cli2010("docs")],
    },
];

/// Files every tree has: what the cases' patterns are about.
const FIXED_FILES: &[&str] = &[
    "README.md",
    "CHANGES.md",
    "app.log",
    "x.log",
    "a.txt",
    "ab.txt",
    "aab.txt",
    "a+b.txt",
    "p.txt",
    "(p).txt",
    "b.md",
    "x.md",
    "x.js",
    "x.{js,ts}",
    "*",
    "^/]",
    "docs/keep.md",
    "docs/other.md",
    "docs/sub/keep.md",
    "docs/sub/x.md",
    "src/main.rs",
    "src/x.tmp",
    "src/a.bak",
    "src/sub/b.bak",
    "src/gen/out.rs",
    "src/barfoo",
    "src/deep/gen/out.rs",
    "src/deep/er/keep.txt",
    "src/deep/er/drop.txt",
    "src/node_modules/m/index.js",
    "node_modules/m/index.js",
    "build/keep",
    "build/out.o",
    "vendor/lib/keep.js",
    "vendor/lib/drop.js",
    "vendor/lib/README.md",
    "out/result",
    "foobar",
    "barfoo",
    "foo",
    "a/b/c.txt",
    "a/d.txt",
    "v1.2-rc/notes",
    ".env",
    ".hidden/h",
    ".git/HEAD",
    "#not-a-comment",
    "-dash",
    "dots..in.name",
    "sp ace.txt",
    "ünï.txt",
];

const DIRS: &[&str] = &[
    "src",
    "docs",
    "lib",
    "a.b",
    "-x",
    ".cache",
    "node_modules",
    "gen",
    "deep",
    "v1.2",
];
const NAMES: &[&str] = &[
    "a", "b.txt", "c.md", "keep.md", "y.log", "y.tmp", "z.bak", "-dash", "v1.2-rc", ".dot", "foo",
    "index.js", "Makefile",
];

/// A deterministic tree in `dir`: the fixed files, a few dozen seeded random ones, an empty
/// directory, an executable, a private directory, symlinks to a file and to a directory, a
/// Dockerfile that copies everything to /ctx, and the .dockerignore.
fn write_tree(dir: &Path, dockerignore: &str) {
    use std::os::unix::fs::PermissionsExt;
    let write = |relative: &str| {
        let path = dir.join(relative);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        // Each file's content is its own path, so a content hash shows which file went where.
        std::fs::write(&path, format!("{relative}\n")).unwrap();
    };
    FIXED_FILES.iter().for_each(|file| write(file));
    let mut rng = Rng(0x5eed_0fd1_ff00);
    for _ in 0..40 {
        let depth = rng.below(4);
        let mut parts: Vec<&str> = (0..depth).map(|_| rng.pick(DIRS)).collect();
        parts.push(rng.pick(NAMES));
        // Skip a name drawn for a file where a directory is, or the reverse.
        let blocked = (1..=parts.len()).any(|end| {
            let prefix = dir.join(parts[..end].join("/"));
            if end < parts.len() {
                prefix.is_file()
            } else {
                prefix.is_dir()
            }
        });
        if !blocked {
            write(&parts.join("/"));
        }
    }
    std::fs::create_dir_all(dir.join("empty/dir")).unwrap();
    let set_mode = |relative: &str, mode: u32| {
        std::fs::set_permissions(dir.join(relative), std::fs::Permissions::from_mode(mode))
            .unwrap();
    };
    write("bin/run.sh");
    set_mode("bin/run.sh", 0o755);
    set_mode("src/deep", 0o700);
    symlink("src/main.rs", dir.join("link-to-file")).unwrap();
    symlink("docs", dir.join("link-to-dir")).unwrap();
    std::fs::write(
        dir.join("Dockerfile"),
        format!("FROM {}\nCOPY . /ctx\n", services().base_image),
    )
    .unwrap();
    std::fs::write(dir.join(".dockerignore"), dockerignore).unwrap();
}

/// The docker client of the engine's own version, as the harness provides it (Debian's 20.10 for
/// engine 20.10; Docker 28's own client, with buildx, for engine 28): an older client sends what a
/// newer engine's BuildKit would leave out.
fn docker_cli() -> PathBuf {
    PathBuf::from(required("ECR_BUILD_TEST_DOCKER_CLI"))
}

/// The docker CLI with the test engine and a config directory of its own: the harness's
/// DOCKER_CONFIG must stay empty, and the CLI writes into its config directory when it builds.
fn cli_command(config: &Path) -> Command {
    let mut command = Command::new(docker_cli());
    command
        .env("DOCKER_HOST", &services().docker_host)
        .env("DOCKER_CONFIG", config);
    for name in [
        "DOCKER_CONTEXT",
        "DOCKER_TLS_VERIFY",
        "DOCKER_CERT_PATH",
        "DOCKER_API_VERSION",
    ] {
        command.env_remove(name);
    }
    command
}

fn cli_version(config: &Path) -> String {
    let output = cli_command(config)
        .args(["version", "--format", "{{.Client.Version}}"])
        .output()
        .expect("docker client runs");
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// How one builder fared: the image it built, or why it failed.
type Built = Result<String, String>;

fn build_with_ecr_build(tree: &Workspace, output_dir: &Path, tag: &str) -> Built {
    let run = tree
        .ecr_build()
        .args([
            "build",
            "--dry-run",
            "--repository",
            "diff/a",
            "--network",
            "none",
            "--tag",
            tag,
            "--output-dir",
        ])
        .args([output_dir])
        .env("GIT_CEILING_DIRECTORIES", tree.path().parent().unwrap())
        .run();
    if run.code == 0 {
        Ok(format!("dry-run.invalid/diff/a:{tag}"))
    } else {
        Err(format!(
            "ecr-build exit {}: {}",
            run.code,
            run.stderr.trim()
        ))
    }
}

fn build_with_cli(tree: &Path, config: &Path, image: &str, buildkit: bool) -> Built {
    let output = cli_command(config)
        .args(["build", "--quiet", "--network", "none", "-t", image, "."])
        .current_dir(tree)
        .env("DOCKER_BUILDKIT", if buildkit { "1" } else { "0" })
        .output()
        .expect("docker client runs");
    if output.status.success() {
        Ok(image.to_owned())
    } else {
        Err(format!(
            "docker build exit {:?}: {}",
            output.status.code(),
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

/// Path below /ctx → `d MODE`, `f MODE SHA256-PREFIX` or `l -> TARGET`.
type Listing = BTreeMap<String, String>;

/// What the last layer of each image (the COPY) holds under /ctx, from one `docker save`.
fn ctx_listings(config: &Path, images: &[&str]) -> HashMap<String, Listing> {
    if images.is_empty() {
        return HashMap::new();
    }
    let output = cli_command(config)
        .arg("save")
        .args(images)
        .output()
        .expect("docker client runs");
    assert!(
        output.status.success(),
        "docker save: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let mut files = HashMap::new();
    // Images that share a layer (BuildKit's cache gives the same COPY the same layer) get it once;
    // the others link to it (`layer.tar -> ../ID/layer.tar`).
    let mut links = HashMap::new();
    let mut archive = tar::Archive::new(output.stdout.as_slice());
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let name = entry.path().unwrap().to_string_lossy().into_owned();
        if entry.header().entry_type() == tar::EntryType::Symlink {
            let target = entry
                .link_name()
                .unwrap()
                .unwrap()
                .to_string_lossy()
                .into_owned();
            let base = Path::new(&name)
                .parent()
                .unwrap()
                .to_string_lossy()
                .into_owned();
            let joined = format!("{base}/{target}");
            let resolved: Vec<&str> = joined.split('/').fold(Vec::new(), |mut parts, part| {
                match part {
                    ".." => {
                        parts.pop();
                    }
                    "" | "." => {}
                    _ => parts.push(part),
                }
                parts
            });
            links.insert(name, resolved.join("/"));
            continue;
        }
        let mut bytes = Vec::new();
        entry.read_to_end(&mut bytes).unwrap();
        files.insert(name, bytes);
    }
    for (name, target) in links {
        let bytes = files[&target].clone();
        files.insert(name, bytes);
    }
    let manifest: serde_json::Value = serde_json::from_slice(&files["manifest.json"]).unwrap();
    let mut listings = HashMap::new();
    for image in images {
        let entry = manifest
            .as_array()
            .unwrap()
            .iter()
            .find(|entry| {
                entry["RepoTags"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|tag| tag == image)
            })
            .unwrap_or_else(|| panic!("{image} not in the manifest of docker save"));
        let layer = entry["Layers"].as_array().unwrap().last().unwrap();
        listings.insert(
            (*image).to_owned(),
            layer_listing(&uncompressed(files[layer.as_str().unwrap()].clone())),
        );
    }
    listings
}

fn layer_listing(layer: &[u8]) -> Listing {
    let mut listing = Listing::new();
    let mut archive = tar::Archive::new(layer);
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let path = entry.path().unwrap().to_string_lossy().into_owned();
        let Some(relative) = path.trim_end_matches('/').strip_prefix("ctx/") else {
            continue;
        };
        let relative = relative.to_owned();
        let header = entry.header().clone();
        let mode = header.mode().unwrap() & 0o7777;
        let description = match header.entry_type() {
            tar::EntryType::Directory => format!("d {mode:o}"),
            tar::EntryType::Symlink => format!(
                "l -> {}",
                entry.link_name().unwrap().unwrap().to_string_lossy()
            ),
            tar::EntryType::Regular => {
                let mut content = Vec::new();
                entry.read_to_end(&mut content).unwrap();
                format!("f {mode:o} {}", &sha256_hex(&content)[..12])
            }
            other => format!("{other:?}"),
        };
        listing.insert(relative, description);
    }
    listing
}

/// Whether `path` is `root` or below it.
fn under(path: &str, root: &str) -> bool {
    path.strip_prefix(root)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// Takes `root` and everything below it out of `listing`.
fn subtree(listing: &mut Listing, root: &str) -> Listing {
    let inside: Vec<String> = listing
        .keys()
        .filter(|path| under(path, root))
        .cloned()
        .collect();
    inside
        .into_iter()
        .map(|path| {
            let what = listing.remove(&path).unwrap();
            (path, what)
        })
        .collect()
}

/// Compares what ecr-build's image holds with what one of the CLI's holds, leaving out the case's
/// known differences after checking each is still there. Returns one line per problem.
fn compare(
    case: &Case,
    ours: &Listing,
    theirs: &Listing,
    buildkit: bool,
    cli_20_10: bool,
) -> Vec<String> {
    let mut problems = Vec::new();
    let mut ours = ours.clone();
    let mut theirs = theirs.clone();
    for known in case.known {
        let (path, still_there) = match *known {
            Known::Cli2010(root) if cli_20_10 => {
                (root, subtree(&mut ours, root) != subtree(&mut theirs, root))
            }
            Known::Buildx(root) if buildkit && !cli_20_10 => {
                (root, subtree(&mut ours, root) != subtree(&mut theirs, root))
            }
            Known::LegacyDirMode(dir) if !buildkit => {
                let (a, b) = (ours.remove(dir), theirs.remove(dir));
                let is_dir = |what: &Option<String>| {
                    what.as_ref().is_some_and(|what| what.starts_with("d "))
                };
                let still_there = is_dir(&a) && is_dir(&b) && a != b;
                (dir, still_there)
            }
            Known::Cli2010(_) | Known::LegacyDirMode(_) | Known::Buildx(_) => continue,
        };
        if !still_there {
            problems.push(format!(
                "{path:?}: the known difference is gone; update the case's `known` list"
            ));
        }
    }
    let paths: BTreeSet<&String> = ours.keys().chain(theirs.keys()).collect();
    for path in paths {
        let (a, b) = (ours.get(path), theirs.get(path));
        if a != b {
            let show = |what: Option<&String>| what.map_or("absent", String::as_str).to_owned();
            problems.push(format!(
                "{path:?}: ecr-build {}, docker CLI {}",
                show(a),
                show(b)
            ));
        }
    }
    problems
}

#[test]
fn build_context_equals_the_docker_clis() {
    let scratch = tempfile::tempdir().unwrap();
    let config = scratch.path().join("docker-config");
    std::fs::create_dir_all(config.join("cli-plugins")).unwrap();
    // A current docker client builds with BuildKit only through the buildx plugin.
    let buildx = required("ECR_BUILD_TEST_BUILDX");
    if !buildx.is_empty() {
        symlink(&buildx, config.join("cli-plugins/docker-buildx")).unwrap();
    }
    let version = cli_version(&config);
    let cli_20_10 = version.starts_with("20.10.");
    let run_id = &new_sha()[..8];

    // Every case builds three images in parallel with the others: ecr-build's and the docker
    // CLI's with BuildKit and with the legacy builder.
    const BUILDERS: [&str; 3] = [
        "ecr-build",
        "docker CLI with BuildKit",
        "docker CLI, legacy builder",
    ];
    let built: Vec<[Built; 3]> = std::thread::scope(|scope| {
        let handles: Vec<_> = CASES
            .iter()
            .map(|case| {
                let config = &config;
                let output_dir = scratch.path().join(case.name);
                scope.spawn(move || {
                    let tree = Workspace::empty();
                    write_tree(tree.path(), case.dockerignore);
                    let tag = format!("{}-{run_id}", case.name);
                    [
                        build_with_ecr_build(&tree, &output_dir, &tag),
                        build_with_cli(tree.path(), config, &format!("diff/cli:{tag}-bk"), true),
                        build_with_cli(
                            tree.path(),
                            config,
                            &format!("diff/cli:{tag}-legacy"),
                            false,
                        ),
                    ]
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|handle| handle.join().unwrap())
            .collect()
    });

    let images: Vec<&str> = built
        .iter()
        .flatten()
        .filter_map(|image| image.as_deref().ok())
        .collect();
    let listings = ctx_listings(&config, &images);
    let mut failures = Vec::new();
    for (case, [ours, with_buildkit, legacy]) in CASES.iter().zip(&built) {
        let mut report = String::new();
        for ((builder, theirs), buildkit) in BUILDERS[1..]
            .iter()
            .zip([with_buildkit, legacy])
            .zip([true, false])
        {
            let problems = match (ours, theirs) {
                (Ok(ours), Ok(theirs)) => compare(
                    case,
                    &listings[ours],
                    &listings[theirs],
                    buildkit,
                    cli_20_10,
                ),
                // Both refusing the patterns is agreement.
                (Err(_), Err(_)) => Vec::new(),
                (Err(err), Ok(_)) | (Ok(_), Err(err)) => vec![format!("only one failed: {err}")],
            };
            for problem in problems {
                report.push_str(&format!("\n    {builder}: {problem}"));
            }
        }
        if !report.is_empty() {
            failures.push(format!(
                "  case {} with .dockerignore {:?}:{report}",
                case.name, case.dockerignore
            ));
        }
    }
    if failures.is_empty() {
        let _ = cli_command(&config).arg("rmi").args(&images).output();
    }
    assert!(
        failures.is_empty(),
        "ecr-build and {} {version} put different files into /ctx:\n{}",
        docker_cli().display(),
        failures.join("\n")
    );
}
