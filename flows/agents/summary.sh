#!/bin/sh
# Summary: runs even when the loop failed (`if = "always()"`), and prints what the
# other agents left behind in their outputs.
set -eu
echo "run $RUNNER_RUN_ID"
echo "story criteria:   ${RUNNER_OUTPUT_PRODUCT_OWNER_CRITERIA:-?}"
echo "developer rounds: ${RUNNER_OUTPUT_DEVELOPER_REVISION:-0}"
echo "last verdict:     ${RUNNER_OUTPUT_REVIEWER_VERDICT:-none}"
echo "published:        ${RUNNER_OUTPUT_PUBLISH_DOCUMENT:-nothing}"
