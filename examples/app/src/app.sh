#!/bin/sh
# Prints what the image was built with, so a run shows that build args and .dockerignore held.
echo "$1: $(cat /app/greeting) ($(cat /app/app_env))"
