#!/bin/sh
# Product owner: turns the requested feature into a story with acceptance criteria.
set -eu
out="out/agent-pipeline/$RUNNER_RUN_ID"
mkdir -p "$out"

cat > "$RUNNER_HANDOFF" <<MD
# Story: $RUNNER_PARAM_FEATURE

As a user I want to $RUNNER_PARAM_FEATURE.

## Acceptance criteria
1. It works from the command line.
2. It is covered by tests.
3. It is documented.
MD
echo '{"role": "product-owner", "criteria": 3}' > "$RUNNER_HANDOFF_META"
echo "criteria=3" >> "$RUNNER_OUTPUT"
echo "product owner: story written"
