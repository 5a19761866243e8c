#!/bin/sh
# Architect: reads the story (the handoff of the step it needs) and writes a design.
set -eu
echo "architect: reading $RUNNER_HANDOFF_IN"
story_file=$RUNNER_HANDOFF_IN       # one path per need; this step has one
story=$(head -n 1 "$story_file")    # "# Story: ..."

cat > "$RUNNER_HANDOFF" <<MD
# Design

For: ${story#\# }

- Module \`export\` with one function per format.
- A \`--format\` flag on the command line.
MD
echo '{"role": "architect", "modules": ["export"]}' > "$RUNNER_HANDOFF_META"
echo "modules=export" >> "$RUNNER_OUTPUT"
