#!/usr/bin/env bash
# Every citation of the math reference, "methods.md §N" (also the older "METHODS.md §N", and
# lists such as "§4, §5.7" or ranges "§4-§5" after it), must name a section heading of
# docs/methods.md. Run from anywhere: scripts/check-methods-citations.sh [source dir]
set -euo pipefail
root="${1:-$(dirname "$0")/..}"
cd "$root"
reference=docs/methods.md
[[ -f $reference ]] || { echo "check-methods-citations: $reference not found in $PWD" >&2; exit 1; }

# Section numbers of the reference: "## 4. Title" and "### 5.6b Title".
mapfile -t sections < <(sed -nE 's/^##+ ([0-9]+(\.[0-9]+[a-z]?)?)\.? .*/\1/p' "$reference")
if ((${#sections[@]} == 0)); then
  echo "check-methods-citations: no numbered sections in $reference" >&2
  exit 1
fi

# Each citation with what follows it on the line, then every section number in that run.
missing=0
paths=(include tests examples docs benchmarks scripts fuzz README.md)
existing=()
for path in "${paths[@]}"; do [[ -e $path ]] && existing+=("$path"); done
while IFS= read -r hit; do
  location="${hit%%:*}"; rest="${hit#*:}"; line="${rest%%:*}"; citation="${rest#*:}"
  while IFS= read -r number; do
    number="${number#§}"; number="${number# }"
    found=0
    for section in "${sections[@]}"; do [[ $section == "$number" ]] && found=1 && break; done
    if ((!found)); then
      echo "$location:$line: cites §$number, which $reference does not have: $citation" >&2
      missing=1
    fi
  done < <(grep -oE '§ ?[0-9]+(\.[0-9]+[a-z]?)?' <<<"$citation")
done < <(grep -rnoE --exclude=check-methods-citations.sh \
           '(METHODS|methods)\.md ?§ ?[0-9]+(\.[0-9]+[a-z]?)?(( ?[-,] ?| and )§ ?[0-9]+(\.[0-9]+[a-z]?)?)*' \
           "${existing[@]}")
if ((missing)); then exit 1; fi
echo "check-methods-citations: every citation names one of the ${#sections[@]} sections of $reference"
