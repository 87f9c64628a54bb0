use super::*;

fn inputs_for(
    text: &str,
    target: Option<&str>,
    args: &[(&str, &str)],
    platform: Option<&str>,
) -> ContextInputs {
    let build_args: Vec<(String, String)> = args
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    context_inputs(
        text,
        &BuildFacts {
            target,
            build_args: &build_args,
            platform,
        },
    )
}

fn paths(text: &str) -> Vec<String> {
    match inputs_for(text, None, &[], None) {
        ContextInputs::Paths(paths) => paths,
        ContextInputs::WholeContext(reason) => panic!("whole context: {reason}\n{text}"),
    }
}

fn whole_reason(text: &str) -> String {
    match inputs_for(text, None, &[], None) {
        ContextInputs::WholeContext(reason) => reason,
        ContextInputs::Paths(paths) => panic!("narrow {paths:?}\n{text}"),
    }
}

#[test]
fn copy_and_add_sources_in_shell_and_json_form() {
    assert_eq!(
        paths(
            "FROM php:8\nCOPY app/ /var/www/app\nADD [\"composer.json\", \"composer.lock\", \"/app/\"]\n"
        ),
        ["app", "composer.json", "composer.lock"]
    );
    assert_eq!(
        paths("FROM nginx\ncopy --chown=1:1 --chmod=644 --link docker/nginx/ ./public /srv/\n"),
        ["docker/nginx", "public"]
    );
    assert_eq!(
        paths("FROM x\nCOPY --parents --exclude=*.md src/*.js lib/[ab]?.js /out/\n"),
        ["lib/[ab]?.js", "src/*.js"]
    );
    assert_eq!(
        paths(
            "FROM x\nADD https://example.com/a.tgz git@github.com:o/r.git /x/\nADD vendor.tar /v\n"
        ),
        ["vendor.tar"]
    );
}

#[test]
fn only_the_target_and_the_stages_it_needs_count() {
    let text = "FROM base AS deps\nCOPY package.json ./\n\
                FROM deps AS build\nCOPY src ./src\n\
                FROM base AS docs\nCOPY docs ./docs\n\
                FROM scratch AS tools\nCOPY tools /tools\n\
                FROM base AS web\nCOPY --from=build /out /app\nRUN --mount=type=bind,from=tools,target=/t true\n\
                FROM base AS worker\nCOPY --from=0 /x /x\nCOPY worker ./\n";
    let narrow = |target| match inputs_for(text, Some(target), &[], None) {
        ContextInputs::Paths(paths) => paths,
        ContextInputs::WholeContext(reason) => panic!("{reason}"),
    };
    assert_eq!(narrow("web"), ["package.json", "src", "tools"]);
    assert_eq!(narrow("worker"), ["package.json", "worker"]);
    assert_eq!(narrow("docs"), ["docs"]);
    assert_eq!(paths(text), ["package.json", "worker"]);
    assert!(matches!(
        inputs_for(text, Some("nope"), &[], None),
        ContextInputs::WholeContext(_)
    ));
}

#[test]
fn copy_from_an_image_reads_nothing_of_the_context() {
    assert_eq!(
        paths("FROM x\nCOPY --from=nginx:1.27 /etc/nginx /etc/nginx\nCOPY a /a\n"),
        ["a"]
    );
}

#[test]
fn run_mounts_read_their_source_or_need_their_stage() {
    assert_eq!(
        paths(
            "FROM x\nRUN --mount=type=bind,source=go.sum,target=/s --mount=type=cache,target=/c --mount=type=secret,id=k make\n"
        ),
        ["go.sum"]
    );
    assert!(whole_reason("FROM x\nRUN --mount=target=/src make\n").contains("whole context"));
    assert!(
        whole_reason("FROM x\nRUN --mount=type=bind,target=/src,source=. make\n")
            .contains("whole context")
    );
    assert_eq!(
        paths("FROM x AS a\nCOPY a /a\nFROM x\nRUN --mount=type=cache,from=a,target=/c true\n"),
        ["a"]
    );
}

#[test]
fn what_cannot_be_proven_narrow_is_the_whole_context() {
    assert!(whole_reason("FROM x\nCOPY . /app\n").contains("COPY ."));
    assert!(whole_reason("FROM x\nCOPY ./ /app\n").contains("whole context"));
    assert!(whole_reason("FROM x\nCOPY * /app\n").contains("whole context"));
    assert!(whole_reason("FROM x\nCOPY **/*.go /app\n").contains("whole context"));
    assert!(whole_reason("# syntax=docker/dockerfile:1.7\nFROM x\nCOPY a /a\n").contains("syntax"));
    assert!(whole_reason("FROM x\nONBUILD COPY a /a\n").contains("ONBUILD"));
    assert!(whole_reason("FROM node\nCOPY $APP_DIR /app\n").contains("APP_DIR"));
    assert!(whole_reason("FROM x\nARG D=a\nCOPY ${D%/} /app\n").contains("${D%/}"));
    assert!(whole_reason("FROM x\nCOPY \"my dir\" /app\n").contains("quoted"));
    assert!(
        whole_reason("FROM x\nARG TARGETARCH\nCOPY bin/$TARGETARCH /bin\n").contains("TARGETARCH")
    );
    assert!(whole_reason("ARG V\nRUN true\nFROM x\n").contains("before the first FROM"));
}

#[test]
fn args_and_env_expand_in_paths() {
    let text = "ARG APP=web\nFROM x AS one\nARG APP\nENV DIR=services/$APP\nCOPY ${DIR}/src /src\n\
                FROM one\nCOPY ${DIR:-none}/conf /conf\nARG EXTRA\nCOPY lib${EXTRA:+/$EXTRA} /lib\n";
    assert_eq!(
        match inputs_for(text, None, &[], None) {
            ContextInputs::Paths(p) => p,
            ContextInputs::WholeContext(r) => panic!("{r}"),
        },
        ["lib", "services/web/conf", "services/web/src"]
    );
    assert_eq!(
        match inputs_for(text, None, &[("APP", "api"), ("EXTRA", "x")], None) {
            ContextInputs::Paths(p) => p,
            ContextInputs::WholeContext(r) => panic!("{r}"),
        },
        ["lib/x", "services/api/conf", "services/api/src"]
    );
    // A stage's ARG is not its child's; on scratch an undeclared name is empty.
    assert_eq!(
        paths("FROM scratch AS a\nARG X=1\nFROM a\nCOPY d$X /d\n"),
        ["d"]
    );
    assert_eq!(
        match inputs_for(
            "FROM x\nARG TARGETARCH\nCOPY bin/$TARGETARCH /bin\n",
            None,
            &[],
            Some("linux/arm64")
        ) {
            ContextInputs::Paths(p) => p,
            ContextInputs::WholeContext(r) => panic!("{r}"),
        },
        ["bin/arm64"]
    );
    assert_eq!(
        paths("ARG BASE=img\nFROM ${BASE} AS b\nCOPY a /a\nFROM b\nCOPY c /c\n"),
        ["a", "c"]
    );
    // An ENV built from the base image's is unknown, which matters only where a path uses it.
    assert_eq!(
        paths("FROM node\nENV PATH=$PATH:/app/bin\nCOPY app /app\n"),
        ["app"]
    );
    assert!(whole_reason("FROM node\nENV D=$HOME/x\nCOPY $D /app\n").contains("$D"));
}

#[test]
fn continuations_comments_heredocs_and_the_escape_directive() {
    let text = "# check=error=true\nFROM x\n\
                RUN <<EOF\nCOPY . /not-an-instruction\nEOF\n\
                COPY <<-END /etc/conf\n\tCOPY . /neither\n\tEND\n\
                COPY a \\\n  # a comment inside\n\n  b /dst/\n\
                RUN echo hi > /x <<A && cat <<'B'\nCOPY . /no\nA\nCOPY . /no\nB\n";
    assert_eq!(paths(text), ["a", "b"]);
    let backtick = "# escape=`\nFROM x\nCOPY one `\n  two /dst/\n";
    assert_eq!(paths(backtick), ["one", "two"]);
    assert_eq!(
        paths("FROM x\nCOPY <<EOF extra.txt /dst/\nhello\nEOF\n"),
        ["extra.txt"]
    );
    assert!(whole_reason("FROM x\nRUN <<EOF\ntrue\n").contains("no end"));
}

#[test]
fn paths_are_cleaned_relative_to_the_context() {
    assert_eq!(
        paths("FROM x\nCOPY ./app/../app/./src/ /src\nCOPY /etc/conf /c\n"),
        ["app/src", "etc/conf"]
    );
}

#[test]
fn bad_dockerfiles_name_the_line_and_unknown_targets_the_stages() {
    let ok = "ARG V=1\nFROM scratch AS build\nCOPY a /a\nFROM build AS release\n";
    assert_eq!(check(ok, None), Ok(()));
    assert_eq!(check(ok, Some("Release")), Ok(()));
    let err = check(ok, Some("prod")).unwrap_err();
    assert_eq!(
        err.to_string(),
        "there is no stage named `prod`; its stages are: build, release"
    );
    let cases = [
        (
            "FROM scratch\nCOPYY a /a\n",
            "line 2: unknown instruction `COPYY`",
        ),
        (
            "RUN true\nFROM scratch\n",
            "line 1: RUN comes before the first FROM",
        ),
        ("# just a comment\n", "it has no FROM"),
        ("FROM scratch\nFROM\n", "line 2: FROM names no image"),
        (
            "FROM scratch\nRUN <<EOT\nbody\n",
            "line 2: heredoc `EOT` has no end",
        ),
    ];
    for (text, message) in cases {
        assert_eq!(
            check(text, None).unwrap_err().to_string(),
            message,
            "{text}"
        );
    }
    // Heredoc bodies are not instructions, whatever their delimiter; `1<<2` opens none.
    let heredocs = "FROM scratch\nRUN <<EOT-1 sh\nFROM alpine AS other\necho x\nEOT-1\n\
                    RUN echo $((1<<2))\n";
    assert_eq!(
        check(heredocs, Some("other")).unwrap_err().to_string(),
        "there is no stage named `other`; its stages are: none is named"
    );
    // Another frontend has rules of its own.
    assert_eq!(
        check("# syntax=example/frontend\nANYTHING goes\n", None),
        Ok(())
    );
}

#[test]
fn base_images_are_the_froms_and_from_flags_that_name_no_stage() {
    let text = "# syntax=docker/dockerfile:1\nARG BASE=node:20\nARG TAG\n\
                FROM ${BASE} AS deps\nFROM scratch AS empty\nFROM deps AS build\n\
                ARG TOOL=golang:1.22\nCOPY --from=${TOOL} /usr/local/go /go\nCOPY --from=deps /x /x\n\
                RUN --mount=type=bind,from=busybox:${TAG:-1},target=/b true\n\
                FROM 0\nCOPY --from=1 /x /x\n";
    let facts = BuildFacts {
        target: None,
        build_args: &[],
        platform: None,
    };
    assert_eq!(
        base_images(text, &facts).unwrap(),
        ["busybox:1", "docker/dockerfile:1", "golang:1.22", "node:20"]
    );
    let args = [("BASE".to_owned(), "node:22".to_owned())];
    let facts = BuildFacts {
        target: None,
        build_args: &args,
        platform: None,
    };
    assert!(
        base_images(text, &facts)
            .unwrap()
            .contains(&"node:22".to_owned())
    );
    let unknown = "FROM --platform=$BUILDPLATFORM golang AS b\nFROM ${BUILDPLATFORM}\n";
    assert!(base_images(unknown, &facts).is_err());
}

#[test]
fn env_carries_through_every_stage_of_a_chain() {
    assert_eq!(
        paths(
            "FROM scratch AS a\nENV DIR=src\nFROM a AS b\nARG X=1\nRUN true\nFROM b\nCOPY ${DIR} /x\n"
        ),
        ["src"]
    );
    // A chain that starts at an image: the image's ENV may set what a path uses.
    assert!(whole_reason("FROM node AS a\nFROM a\nCOPY $DIR /x\n").contains("$DIR"));
    // An ARG wins over an ENV of the same name in its stage (BuildKit's order), and only the ENV
    // carries to a stage built on it.
    let mut read =
        paths("FROM scratch AS a\nENV D=envdir\nARG D=argdir\nCOPY $D /x\nFROM a\nCOPY $D /y\n");
    read.sort();
    assert_eq!(read, ["argdir", "envdir"]);
}
