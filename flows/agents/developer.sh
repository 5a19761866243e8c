#!/bin/sh
# Developer: implements the design; on a later visit, addresses the reviewer's feedback.
# $RUNNER_VISIT is 1 on the first pass, 2 after the first "changes" verdict, ...
set -eu
out="out/agent-pipeline/$RUNNER_RUN_ID"
rev=$RUNNER_VISIT
mkdir -p "$out"
echo "developer: revision $rev, design from $RUNNER_HANDOFF_IN"

# The reviewer's outputs from its previous visit, when there was one.
feedback=${RUNNER_OUTPUT_REVIEWER_FEEDBACK:-none yet}
echo "revision $rev of the export module (feedback addressed: $feedback)" > "$out/code-r$rev.txt"

cat > "$RUNNER_HANDOFF" <<MD
# Implementation, revision $rev

- Wrote \`$out/code-r$rev.txt\`.
- Feedback addressed: $feedback
MD
printf '{"role": "developer", "revision": %s}\n' "$rev" > "$RUNNER_HANDOFF_META"
{
  echo "revision=$rev"
  echo "artifact=$out/code-r$rev.txt"
} >> "$RUNNER_OUTPUT"
