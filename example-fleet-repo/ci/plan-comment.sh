#!/usr/bin/env bash
# What every CI example runs: compute the plan of the pull request's head and post it.
#   bash ci/plan-comment.sh github|gitea|gitlab
# Needs HEAD_SHA (the PR head), BASE_REF (the protected branch) and the forge's settings
# (see post_plan_comment.py); FLEETKEEPER_SERVER (+ FLEETKEEPER_TOKEN) adds the diff
# against what runs now. Exits 1 after posting when the head fails validation.
set -uo pipefail
forge=$1
head=${HEAD_SHA:-$(git rev-parse HEAD)}
# CI checks out the PR head detached: give the protected branch a local name to judge.
git fetch -q origin "+refs/heads/${BASE_REF}:refs/heads/${BASE_REF}" 2>/dev/null \
  || git branch -f "${BASE_REF}" "origin/${BASE_REF}" 2>/dev/null || true
server=()
if [ -n "${FLEETKEEPER_SERVER:-}" ]; then server=(--server "$FLEETKEEPER_SERVER"); fi
fleetkeeper plan --repo . --branch "$BASE_REF" --preview "$head" --format markdown \
  "${server[@]}" > plan.md
planned=$?
if [ ! -s plan.md ]; then
  echo "plan-comment: fleetkeeper plan printed nothing (exit $planned)" >&2
  exit 1
fi
cat plan.md
python3 "$(dirname "$0")/post_plan_comment.py" "$forge" plan.md || exit 1
exit "$planned"
