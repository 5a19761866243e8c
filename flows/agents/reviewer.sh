#!/bin/sh
# Reviewer: reads the developer's handoff and asks for changes until the revision
# reaches the `rounds` parameter. The flow routes on the `verdict` output.
set -eu
rev=$RUNNER_OUTPUT_DEVELOPER_REVISION
echo "reviewer: reviewing revision $rev ($RUNNER_HANDOFF_IN)"

if [ "$rev" -lt "$RUNNER_PARAM_ROUNDS" ]; then
  verdict=changes
  feedback="handle empty reports (round $rev)"
else
  verdict=approved
  feedback="looks good"
fi

{
  echo "verdict=$verdict"
  echo "feedback=$feedback"
} >> "$RUNNER_OUTPUT"
cat > "$RUNNER_HANDOFF" <<MD
# Review of revision $rev: $verdict

$feedback
MD
printf '{"role": "reviewer", "verdict": "%s"}\n' "$verdict" > "$RUNNER_HANDOFF_META"
