#!/usr/bin/env bash
# hide | restore: make the working tree small enough for the `device` tool, and put it back.
#
# That tool sends the checkout's tracked and untracked-not-ignored files, at most 64 MiB with what a run
# carries; the committed assets alone are over 100 MiB. `hide` takes every asset folder that
# tools/device_check.py does not read, and docs/figures, out of git's index (the files stay on disk) and
# ignores them in .git/info/exclude, so they do not travel; `restore` puts index and exclude back as they
# were. Run `restore` right after the device call and commit nothing in between: a commit would delete them.
set -euo pipefail
cd "$(dirname "$0")/.."
KEEP='^(assets/sd3-tiny-shapes|assets/var-tiny-shapes|assets/var-deep-shapes)$'  # what device_check reads
BEGIN='# tools/device_slim.sh hide: begin'
END='# tools/device_slim.sh hide: end'
EXCLUDE=.git/info/exclude
mkdir -p .git/info && touch "$EXCLUDE"
case "${1:-}" in
  hide)
    mapfile -t HIDE < <(git ls-files assets docs/figures | cut -d/ -f1-2 | sort -u | grep -Ev "$KEEP")
    [ ${#HIDE[@]} -gt 0 ] || { echo "device_slim: nothing to hide (already hidden?)"; exit 0; }
    git rm -r -q --cached -- "${HIDE[@]}"
    { echo "$BEGIN"; printf '/%s/\n' "${HIDE[@]}"; echo "$END"; } >> "$EXCLUDE"
    # what travels: tracked files, untracked files that are not ignored, and the carried wheels
    mb=$( { git ls-files -z; git ls-files -z --others --exclude-standard; find .whl -type f -print0 2>/dev/null; } \
          | xargs -0 du -cb 2>/dev/null | awk '$2 == "total" {s += $1} END {printf "%.1f", s / 1048576}')
    echo "device_slim: hid ${HIDE[*]}; the tree that travels (with .whl) is ${mb} MiB (limit 64)"
    ;;
  restore)
    mapfile -t HIDE < <(sed -n "\|^$BEGIN\$|,\|^$END\$|p" "$EXCLUDE" | grep -v '^#' | sed -e 's|^/||' -e 's|/$||')
    [ ${#HIDE[@]} -gt 0 ] || { echo "device_slim: nothing hidden"; exit 0; }
    git reset -q -- "${HIDE[@]}"
    sed "\|^$BEGIN\$|,\|^$END\$|d" "$EXCLUDE" > "$EXCLUDE.tmp"
    mv "$EXCLUDE.tmp" "$EXCLUDE"
    echo "device_slim: restored ${HIDE[*]}"
    ;;
  *) echo "usage: tools/device_slim.sh hide|restore" >&2; exit 2 ;;
esac
