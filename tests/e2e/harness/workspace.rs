//! A workspace per test: a temporary folder holding a project.

use super::*;

/// A temporary directory holding a copy of a project.
pub struct Workspace {
    pub dir: tempfile::TempDir,
}

impl Workspace {
    pub fn empty() -> Self {
        Self {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    /// A copy of examples/app whose two images push to `PREFIX/web` and `PREFIX/worker`; returns
    /// those repository names too.
    pub fn example_app_in(prefix: &str) -> (Self, String, String) {
        let ws = Self::example_app();
        let web = format!("{prefix}/web");
        let worker = format!("{prefix}/worker");
        let config = ws
            .read("ecr-build.toml")
            .replace("ecr-build-example/web", &web)
            .replace("ecr-build-example/worker", &worker);
        ws.write("ecr-build.toml", &config);
        (ws, web, worker)
    }

    /// A copy of examples/app.
    pub fn example_app() -> Self {
        let ws = Self::empty();
        copy_tree(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/app"),
            ws.path(),
        );
        ws
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn write(&self, relative: &str, contents: &str) -> PathBuf {
        let path = self.path().join(relative);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, contents).unwrap();
        path
    }

    pub fn read(&self, relative: &str) -> String {
        let path = self.path().join(relative);
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    pub fn exists(&self, relative: &str) -> bool {
        self.path().join(relative).exists()
    }

    /// Names of every entry directly in the workspace.
    pub fn entries(&self) -> BTreeSet<String> {
        std::fs::read_dir(self.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect()
    }

    /// The command, run in the workspace with the test services' environment.
    pub fn ecr_build(&self) -> EcrBuild {
        EcrBuild::new(self.path())
    }

    /// `build` of the workspace's one image into `repository` at `registry`, for `commit`, its
    /// RUN steps without a network.
    pub fn build_one(&self, repository: &str, registry: &str, commit: &str) -> EcrBuild {
        let flags = ["build", "--repository", repository, "--registry", registry];
        (self.ecr_build().args(flags))
            .args(["--network", "none"])
            .env("ECR_BUILD_SHA", commit)
    }
}

fn copy_tree(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            std::fs::create_dir_all(&target).unwrap();
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}
