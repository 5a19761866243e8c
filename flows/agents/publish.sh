#!/bin/sh
# Publish: joins the handoffs of all four agents (one path per line in
# $RUNNER_HANDOFF_IN, in `needs` order) into one document.
set -eu
doc="out/agent-pipeline/$RUNNER_RUN_ID/published.md"

echo "$RUNNER_HANDOFF_IN" | while read -r handoff; do
  cat "$handoff"
  echo
done > "$doc"

echo "document=$doc" >> "$RUNNER_OUTPUT"
echo "published $doc"
