#!/usr/bin/env bash
# The test command (README): every unit, integration and end-to-end test of the workspace.
# Tests that need root, namespaces, the Debian mirror or QEMU skip with a message outside CI and
# fail under CI=true when a prerequisite is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo test --workspace --locked -- --test-threads="${IMRS_TEST_THREADS:-2}"
