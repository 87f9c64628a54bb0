#!/usr/bin/env bash
# The build stage written with `docker buildx bake`, for scripts/bench.sh to time against ecr-build:
# the fastest thing a user would pick instead (all images in parallel, BuildKit's own file sync).
# Same environment as scripts/bench/buildspec.sh (REGISTRY, REPO_PREFIX, IMAGES, LAYOUT,
# CODEBUILD_RESOLVED_SOURCE_VERSION, AWS, DOCKER; REGISTRY_CACHE=1 adds a registry cache per image
# as `buildcache`); DOCKER_CONFIG (from the caller) holds the
# docker-buildx plugin, and buildx's default builder is the engine's own (the docker driver).
set -euo pipefail
: "${REGISTRY:?}" "${REPO_PREFIX:?}" "${IMAGES:?}" "${CODEBUILD_RESOLVED_SOURCE_VERSION:?}" "${AWS:?}" "${DOCKER:?}"
aws() { "$AWS" "$@"; }
docker() { "$DOCKER" "$@"; }

# pre_build
aws ecr get-login-password | docker login --username AWS --password-stdin "$REGISTRY"
IMAGE_TAG=$(echo "$CODEBUILD_RESOLVED_SOURCE_VERSION" | cut -c 1-7)

# The bake file a repository would hold, with the tag passed in as a variable.
bake_file=$(mktemp --suffix .hcl)
trap 'rm -f "$bake_file"' EXIT
{
    printf 'variable "TAG" {}\n'
    # shellcheck disable=SC2086 # IMAGES is a list of words
    printf 'group "default" {\n  targets = [%s]\n}\n' "$(printf '"%s",' $IMAGES | sed 's/,$//')"
    for name in $IMAGES; do
        if [[ ${LAYOUT:-} == monorepo ]]; then
            context=. dockerfile=services/$name/Dockerfile
        else
            context=$name dockerfile=Dockerfile
        fi
        printf 'target "%s" {\n  context = "%s"\n  dockerfile = "%s"\n  network = "none"\n' "$name" "$context" "$dockerfile"
        if [[ ${REGISTRY_CACHE:-} == 1 ]]; then
            # As AWS documents BuildKit's cache in ECR: mode=max, the OCI image-manifest form.
            ref=$REGISTRY/$REPO_PREFIX/$name:buildcache
            printf '  cache-from = ["type=registry,ref=%s"]\n' "$ref"
            printf '  cache-to = ["type=registry,ref=%s,mode=max,image-manifest=true,oci-mediatypes=true"]\n' "$ref"
        fi
        printf '  tags = ["%s/%s/%s:${TAG}"]\n}\n' "$REGISTRY" "$REPO_PREFIX" "$name"
    done
} >"$bake_file"

# build and push: every image at once
TAG=$IMAGE_TAG docker buildx bake --progress plain --push -f "$bake_file"

# post_build: hand-print imagedefinitions.json
defs=
for name in $IMAGES; do
    defs+=$(printf '{"name":"%s","imageUri":"%s"},' "$name" "$REGISTRY/$REPO_PREFIX/$name:$IMAGE_TAG")
done
printf '[%s]' "${defs%,}" >imagedefinitions.json
