#!/usr/bin/env bash
# README.md is assembled from the per-part sections in docs/readme/ (in file-name order).
cd "$(dirname "$0")/../.." && cat docs/readme/[0-9]*.md > README.md
