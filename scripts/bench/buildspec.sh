#!/usr/bin/env bash
# The build stage as today's buildspecs write it, for scripts/bench.sh to time against ecr-build.
# The commands are the buildspec's, phase by phase; only the values come from the environment:
#
#   REGISTRY       registry host (the benchmark's local registry standing in for ECR)
#   REPO_PREFIX    repositories are $REPO_PREFIX/<image>
#   IMAGES         space-separated image names; image NAME's context is ./NAME, its Dockerfile
#                  ./NAME/Dockerfile (run from the app's root)
#   LAYOUT         `monorepo`: one context (.) for all, image NAME's Dockerfile is
#                  ./services/NAME/Dockerfile; anything else: a context per image, as above
#   CODEBUILD_RESOLVED_SOURCE_VERSION   the commit, as CodeBuild sets it
#   AWS            the aws CLI to use (the benchmark's pinned awscli v1 from PyPI)
#   DOCKER         the docker CLI to use (Debian's /usr/bin/docker)
#
# DOCKER_BUILDKIT=1 and a throwaway DOCKER_CONFIG come from the caller. CodeBuild runs phase
# commands with `sh -e` semantics: the first failing command fails the build.
set -euo pipefail
: "${REGISTRY:?}" "${REPO_PREFIX:?}" "${IMAGES:?}" "${CODEBUILD_RESOLVED_SOURCE_VERSION:?}" "${AWS:?}" "${DOCKER:?}"
aws() { "$AWS" "$@"; }
docker() { "$DOCKER" "$@"; }

# pre_build
aws ecr get-login-password | docker login --username AWS --password-stdin "$REGISTRY"
IMAGE_TAG=$(echo "$CODEBUILD_RESOLVED_SOURCE_VERSION" | cut -c 1-7)

# build: one image after another
for name in $IMAGES; do
    REPOSITORY_URI=$REGISTRY/$REPO_PREFIX/$name
    if [[ ${LAYOUT:-} == monorepo ]]; then
        docker build --network none -t "$REPOSITORY_URI:$IMAGE_TAG" -f "services/$name/Dockerfile" .
    else
        docker build --network none -t "$REPOSITORY_URI:$IMAGE_TAG" -f "$name/Dockerfile" "$name"
    fi
done

# post_build: push, then hand-print imagedefinitions.json
defs=
for name in $IMAGES; do
    REPOSITORY_URI=$REGISTRY/$REPO_PREFIX/$name
    docker push "$REPOSITORY_URI:$IMAGE_TAG"
    defs+=$(printf '{"name":"%s","imageUri":"%s"},' "$name" "$REPOSITORY_URI:$IMAGE_TAG")
done
printf '[%s]' "${defs%,}" >imagedefinitions.json
