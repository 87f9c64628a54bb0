//! A build's progress: the engine's stream (legacy lines, or BuildKit's status) as log lines with
//! the image's name; the step that failed and its last lines; the images BuildKit loaded.

use std::collections::{HashMap, VecDeque};

use bollard::moby::buildkit::v1::StatusResponse;
use bollard::models::{BuildInfo, BuildInfoAux};

use super::DockerError;

/// How many output lines of a failed step are repeated with the error.
const FAILED_STEP_TAIL: usize = 15;

/// Turns the engine's build stream (legacy lines or BuildKit status) into log lines, and remembers the
/// current step and its last lines so a failure can name them.
pub(super) struct BuildProgress<'a> {
    image: &'a str,
    /// Legacy: the "Step N/M : …" line; BuildKit: the vertex that failed or last logged.
    step: Option<String>,
    tail: VecDeque<String>,
    vertex_names: HashMap<String, String>,
    announced: std::collections::HashSet<String>,
    partial_lines: HashMap<String, String>,
    failed_step: Option<String>,
    pub(super) loaded_images: std::collections::BTreeSet<String>,
}

/// The image a BuildKit step loads the metadata of: `[internal] load metadata for
/// docker.io/library/node:20` (with a platform: `[linux/arm64 internal] …`).
fn loaded_image(step: &str) -> Option<&str> {
    let (prefix, image) = step.split_once("] load metadata for ")?;
    (prefix.starts_with('[') && prefix.ends_with("internal")).then(|| image.trim())
}

impl<'a> BuildProgress<'a> {
    pub(super) fn new(image: &'a str) -> Self {
        Self {
            image,
            step: None,
            tail: VecDeque::with_capacity(FAILED_STEP_TAIL),
            vertex_names: HashMap::new(),
            announced: std::collections::HashSet::new(),
            partial_lines: HashMap::new(),
            failed_step: None,
            loaded_images: std::collections::BTreeSet::new(),
        }
    }

    /// Returns the image ID when the stream announces it.
    pub(super) fn handle(&mut self, info: BuildInfo) -> Option<String> {
        if let Some(text) = info.stream {
            for line in text.lines().filter(|l| !l.trim().is_empty()) {
                if line.starts_with("Step ") {
                    self.step = line.split_once(" : ").map(|(_, s)| s.to_owned());
                    self.tail.clear();
                } else {
                    self.remember(line);
                }
                tracing::info!(image = self.image, "{line}");
            }
        }
        match info.aux {
            Some(BuildInfoAux::BuildKit(status)) => {
                self.status(status);
                None
            }
            Some(BuildInfoAux::Default(image)) => image.id,
            None => None,
        }
    }

    /// BuildKit's status, from `/build`'s stream or from the control API.
    pub(super) fn status(&mut self, status: StatusResponse) {
        for vertex in status.vertexes {
            if let Some(image) = loaded_image(&vertex.name) {
                self.loaded_images.insert(image.to_owned());
            }
            self.vertex_names
                .insert(vertex.digest.clone(), vertex.name.clone());
            if !vertex.error.is_empty() && self.failed_step.is_none() {
                self.failed_step = Some(vertex.name.clone());
            }
            let started = vertex.started.is_some() || vertex.cached;
            if started && self.announced.insert(vertex.digest.clone()) {
                let cached = if vertex.cached { "CACHED " } else { "" };
                tracing::info!(image = self.image, "=> {cached}{}", vertex.name);
            }
        }
        for log in status.logs {
            let text = String::from_utf8_lossy(&log.msg);
            let buffered = self.partial_lines.entry(log.vertex.clone()).or_default();
            buffered.push_str(&text);
            let Some(end) = buffered.rfind('\n') else {
                continue;
            };
            let complete: String = buffered.drain(..=end).collect();
            if let Some(name) = self.vertex_names.get(&log.vertex)
                && self.step.as_ref() != Some(name)
            {
                self.step = Some(name.clone());
                self.tail.clear();
            }
            for line in complete.lines().filter(|l| !l.trim().is_empty()) {
                self.remember(line);
                tracing::info!(image = self.image, "   {line}");
            }
        }
    }

    fn remember(&mut self, line: &str) {
        if self.tail.len() == FAILED_STEP_TAIL {
            self.tail.pop_front();
        }
        self.tail.push_back(line.to_owned());
    }

    /// Output still waiting for a newline when the stream ended.
    pub(super) fn flush(&mut self) {
        for (_, rest) in self.partial_lines.drain() {
            if !rest.trim().is_empty() {
                tracing::info!(image = self.image, "   {}", rest.trim_end());
            }
        }
    }

    pub(super) fn failure(mut self, message: String) -> DockerError {
        self.flush();
        let step = self.failed_step.take().or(self.step.take());
        if !self.tail.is_empty() {
            tracing::error!(
                image = self.image,
                "step `{}` failed; its last output lines:",
                step.as_deref().unwrap_or("?")
            );
            for line in &self.tail {
                tracing::error!(image = self.image, "   {line}");
            }
        }
        DockerError::BuildFailed { step, message }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_images_buildkit_loads_are_read_from_its_steps() {
        assert_eq!(
            loaded_image("[internal] load metadata for docker.io/library/node:20"),
            Some("docker.io/library/node:20")
        );
        assert_eq!(
            loaded_image("[linux/arm64 internal] load metadata for 127.0.0.1:5000/base:1"),
            Some("127.0.0.1:5000/base:1")
        );
        assert_eq!(loaded_image("[internal] load build context"), None);
        assert_eq!(loaded_image("[2/3] RUN echo load metadata for x"), None);
    }

    #[test]
    fn legacy_failure_names_the_step_and_keeps_its_output() {
        let mut progress = BuildProgress::new("web");
        for text in [
            "Step 1/2 : FROM base\n",
            "Step 2/2 : RUN make\n",
            " ---> Running in 1\n",
            "boom\n",
        ] {
            progress.handle(BuildInfo {
                stream: Some(text.into()),
                ..BuildInfo::default()
            });
        }
        match progress.failure("The command '/bin/sh -c make' returned a non-zero code: 2".into()) {
            DockerError::BuildFailed { step, message } => {
                assert_eq!(step.as_deref(), Some("RUN make"));
                assert!(message.contains("non-zero code: 2"));
            }
            other => panic!("{other}"),
        }
    }
}
