#!/usr/bin/env bash
# Checks packaging/build-repo.sh against the packages in target/debs/,
# with apt itself and nothing installed on this machine: a throwaway
# operator key signs the repository; apt-get update (its own state and
# source list, under a temporary folder) must accept it with signed-by=
# the exported keyring and offer keyway-agent for each architecture, and
# apt-get download must fetch the very .deb that went in. Then, as an
# attacker with a copy of the repository: a changed Packages file, a
# Release signed by another key, and a repository with no signature are
# each refused by apt-get update.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
DEBS=$ROOT/target/debs
VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)-1
WORK=$(mktemp -d)
trap '[[ -n ${KEEP:-} ]] || rm -rf "$WORK"' EXIT
fail() { echo "verify-repo: FAIL $*" >&2; exit 1; }
ok() { echo "verify-repo: ok   $*"; }

source packaging/testkey.sh
repo_tools || fail "needs gpg and apt-utils (sudo apt-get install gpg apt-utils)"
OPERATOR=$(newkey "$WORK/gnupg" "Keyway test operator")
GNUPGHOME=$WORK/gnupg packaging/build-repo.sh --key "$OPERATOR" --debs "$DEBS" --out "$WORK/repo"
for f in dists/stable/InRelease dists/stable/Release.gpg dists/stable/main/binary-armhf/Packages.gz \
    keyway-archive-keyring.gpg "pool/main/keyway-agent_${VERSION}_arm64.deb"; do
  [[ -s $WORK/repo/$f ]] || fail "the repository lacks $f"
done
ok "repository built and signed ($(ls "$WORK/repo/pool/main" | wc -l) packages)"

# apt with its own state: nothing on this machine is read or changed.
apt_in() { # repo, arch, apt-get or apt-cache, args…
  local repo=$1 arch=$2 tool=$3; shift 3
  local state=$WORK/apt-$arch
  mkdir -p "$state/lists/partial" "$state/cache/archives/partial" "$state/etc/preferences.d"
  echo "deb [arch=$arch signed-by=$WORK/repo/keyway-archive-keyring.gpg] file:$repo stable main" > "$state/sources.list"
  "$tool" -q -o Dir::Etc::SourceList="$state/sources.list" -o Dir::Etc::SourceParts=/dev/null \
    -o Dir::Etc::PreferencesParts="$state/etc/preferences.d" \
    -o Dir::State::Lists="$state/lists" -o Dir::State::Status=/dev/null -o Dir::Cache="$state/cache" \
    -o APT::Architecture="$arch" -o APT::Architectures="$arch" -o Debug::NoLocking=1 \
    -o APT::Sandbox::User=root "$@"
}
for arch in amd64 arm64 armhf; do
  apt_in "$WORK/repo" "$arch" apt-get update >"$WORK/update-$arch.log" 2>&1 \
    || { cat "$WORK/update-$arch.log" >&2; fail "apt-get update ($arch) refused the repository"; }
  grep -qi "warn\|W:" "$WORK/update-$arch.log" && { cat "$WORK/update-$arch.log" >&2; fail "apt-get update ($arch) warned"; }
  candidate=$(apt_in "$WORK/repo" "$arch" apt-cache -qq policy keyway-agent 2>/dev/null | awk '/Candidate:/ {print $2}')
  [[ $candidate == "$VERSION" ]] || fail "apt offers keyway-agent $candidate for $arch, not $VERSION"
  (cd "$WORK" && apt_in "$WORK/repo" "$arch" apt-get -qq download "keyway-agent:$arch" >/dev/null 2>&1) \
    || fail "apt-get download keyway-agent:$arch"
  cmp -s "$WORK/keyway-agent_${VERSION}_$arch.deb" "$DEBS/keyway-agent_${VERSION}_$arch.deb" \
    || fail "the downloaded $arch package is not the one that went in"
done
ok "apt-get update accepts the signed repository; keyway-agent $VERSION downloads intact for amd64, arm64, armhf"

# Tampered copies, each refused.
refused() { # label, repo
  rm -rf "$WORK/apt-amd64"
  if apt_in "$2" amd64 apt-get update >"$WORK/tamper.log" 2>&1 && ! grep -q "^[WE]:" "$WORK/tamper.log"; then
    cat "$WORK/tamper.log" >&2; fail "apt-get update accepted $1"
  fi
  ok "apt refuses $1: $(grep -m1 '^[WE]:' "$WORK/tamper.log" | cut -c1-110)"
}
cp -a "$WORK/repo" "$WORK/changed"
echo "Description-tampered: yes" >> "$WORK/changed/dists/stable/main/binary-amd64/Packages"
rm "$WORK/changed/dists/stable/main/binary-amd64/Packages.gz"
refused "a changed Packages file" "$WORK/changed"
cp -a "$WORK/repo" "$WORK/forged"
MALLORY=$(newkey "$WORK/mallory" "Mallory")
GNUPGHOME=$WORK/mallory gpg --batch --yes --local-user "$MALLORY" --clearsign \
  -o "$WORK/forged/dists/stable/InRelease" "$WORK/forged/dists/stable/Release"
rm "$WORK/forged/dists/stable/Release.gpg"
refused "a Release signed by another key" "$WORK/forged"
cp -a "$WORK/repo" "$WORK/unsigned"
rm "$WORK/unsigned/dists/stable/InRelease" "$WORK/unsigned/dists/stable/Release.gpg"
refused "an unsigned repository" "$WORK/unsigned"
