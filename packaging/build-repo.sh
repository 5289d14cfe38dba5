#!/usr/bin/env bash
# Builds a signed apt repository from the packages packaging/build-debs.sh
# made, so Pis install and upgrade keyway-agent with apt:
#
#   packaging/build-repo.sh --key OPERATOR_KEY [--debs target/debs] [--out target/apt]
#
# OPERATOR_KEY is an OpenPGP secret key in the operator's keyring
# ($GNUPGHOME): Release is signed with it (InRelease, Release.gpg), and its
# public half is exported beside the repository as keyway-archive-keyring.gpg
# (binary, for signed-by=) and .asc. The layout is Debian's:
#   OUT/pool/main/<package>_<version>_<arch>.deb
#   OUT/dists/stable/main/binary-{amd64,arm64,armhf}/Packages{,.gz}
#   OUT/dists/stable/{Release,InRelease,Release.gpg}
# Packages already in OUT/pool stay (older versions remain installable);
# indexes and signatures are rebuilt every time. Needs apt-utils and gpg
# (installed when missing and run as root).
set -euo pipefail
cd "$(dirname "$0")/.."
DEBS=target/debs
OUT=target/apt
KEY=""
SUITE=stable
ARCHES="amd64 arm64 armhf"
usage() { sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-64}"; }
while [[ $# -gt 0 ]]; do
  case $1 in
    --key) KEY=${2:?--key needs a key id}; shift 2 ;;
    --debs) DEBS=${2:?}; shift 2 ;;
    --out) OUT=${2:?}; shift 2 ;;
    -h|--help) usage 0 ;;
    *) echo "build-repo: unknown argument $1" >&2; usage ;;
  esac
done
[[ -n $KEY ]] || { echo "build-repo: --key is required (the operator's OpenPGP key id)" >&2; usage; }
for tool in apt-ftparchive:apt-utils gpg:gpg; do
  if ! command -v "${tool%%:*}" >/dev/null; then
    [[ $(id -u) == 0 ]] || { echo "build-repo: needs ${tool#*:} (apt-get install ${tool#*:})" >&2; exit 1; }
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${tool#*:}" >/dev/null
  fi
done
gpg --batch --list-secret-keys "$KEY" >/dev/null 2>&1 \
  || { echo "build-repo: no secret key $KEY in the keyring (${GNUPGHOME:-~/.gnupg})" >&2; exit 1; }
shopt -s nullglob
debs=("$DEBS"/*.deb)
[[ ${#debs[@]} -gt 0 ]] || { echo "build-repo: no .deb in $DEBS (run packaging/build-debs.sh)" >&2; exit 1; }

mkdir -p "$OUT/pool/main"
cp -p "${debs[@]}" "$OUT/pool/main/"
cd "$OUT"
rm -rf "dists/$SUITE"
for arch in $ARCHES; do
  dir=dists/$SUITE/main/binary-$arch
  mkdir -p "$dir"
  apt-ftparchive --arch "$arch" packages pool/main > "$dir/Packages"
  gzip -9nk "$dir/Packages"
done
apt-ftparchive \
  -o APT::FTPArchive::Release::Origin=Keyway \
  -o APT::FTPArchive::Release::Label=Keyway \
  -o APT::FTPArchive::Release::Suite="$SUITE" \
  -o APT::FTPArchive::Release::Codename="$SUITE" \
  -o APT::FTPArchive::Release::Architectures="$ARCHES" \
  -o APT::FTPArchive::Release::Components=main \
  -o APT::FTPArchive::Release::Description="Keyway packages" \
  release "dists/$SUITE" > "dists/$SUITE/Release.tmp"
mv "dists/$SUITE/Release.tmp" "dists/$SUITE/Release"
gpg --batch --yes --local-user "$KEY" --digest-algo SHA512 --clearsign \
  -o "dists/$SUITE/InRelease" "dists/$SUITE/Release"
gpg --batch --yes --local-user "$KEY" --digest-algo SHA512 -abs \
  -o "dists/$SUITE/Release.gpg" "dists/$SUITE/Release"
gpg --batch --yes --export "$KEY" > keyway-archive-keyring.gpg
gpg --batch --yes --armor --export "$KEY" > keyway-archive-keyring.asc
echo "build-repo: $(ls pool/main | wc -l) packages in $PWD, $SUITE signed by $KEY" >&2
