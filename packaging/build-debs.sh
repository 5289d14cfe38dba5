#!/usr/bin/env bash
# Builds the five Debian packages from this x86_64 machine:
#   keyway-agent_<v>_{amd64,arm64,armhf}.deb  keyway-relay_<v>_{amd64,arm64}.deb
# into target/debs/. Installs the cross toolchains it needs itself (Debian's
# Rust with the arm64 std, cross gcc, qemu-user; see ../shared/CROSS.md):
# run as root, or with them already installed.
#
# Every binary is linked by cargo-zigbuild against glibc $GLIBC_FLOOR's
# symbols (zig ships the stubs), so one package runs on Raspberry Pi OS
# bullseye (glibc 2.31) through trixie, Ubuntu 20.04 and later: glibc keeps
# old symbol versions forever, but a binary linked on bookworm asks for
# 2.34. Static musl would need a musl std that neither rustup (here) nor
# Debian provides. zig and cargo-zigbuild come from PyPI into a venv under
# target/. Each .deb's Depends is read off its binary, not assumed.
#
#   packaging/build-debs.sh            # all five
#   KEYWAY_DEB_ARCHES="amd64" packaging/build-debs.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=$ROOT/target/debs
ARCHES=${KEYWAY_DEB_ARCHES:-"amd64 arm64 armhf"}
VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
DEBVER="$VERSION-1"
source packaging/glibc.sh
ZIG_VENV=$ROOT/target/zig-venv

need() { command -v "$1" >/dev/null 2>&1; }

setup() {
  local pkgs="lintian help2man dpkg-dev"
  if [[ " $ARCHES " == *" arm64 "* || " $ARCHES " == *" armhf "* ]]; then
    pkgs+=" rustc-web cargo-web rust-web-src gcc-aarch64-linux-gnu libc6-dev-arm64-cross"
    pkgs+=" gcc-arm-linux-gnueabihf libc6-dev-armhf-cross qemu-user"
  fi
  local missing=""
  for p in $pkgs; do dpkg -s "$p" >/dev/null 2>&1 || missing+=" $p"; done
  if [[ " $ARCHES " == *" arm64 "* ]] && ! dpkg -s libstd-rust-web-dev:arm64 >/dev/null 2>&1; then
    missing+=" libstd-rust-web-dev:arm64"
  fi
  if [[ -n "$missing" ]]; then
    echo "build-debs: installing$missing" >&2
    if [[ " $missing " == *":arm64"* ]]; then dpkg --add-architecture arm64; fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
  fi
  if [[ " $ARCHES " != " amd64 " ]] && ! rustup toolchain list | grep -q '^debian'; then
    rustup toolchain link debian /usr
  fi
  if [[ ! -x $ZIG_VENV/bin/cargo-zigbuild ]]; then
    echo "build-debs: installing zig and cargo-zigbuild (PyPI) into $ZIG_VENV" >&2
    python3 -m venv "$ZIG_VENV" 2>/dev/null || {
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
      python3 -m venv "$ZIG_VENV"
    }
    "$ZIG_VENV/bin/pip" install -q --disable-pip-version-check ziglang==0.15.2 cargo-zigbuild==0.24.1
  fi
  # cargo-zigbuild finds zig as `python3 -m ziglang`: the venv's python.
  export PATH=$ZIG_VENV/bin:$PATH
}

triple() {
  case "$1" in
    amd64) echo x86_64-unknown-linux-gnu ;;
    arm64) echo aarch64-unknown-linux-gnu ;;
    armhf) echo armv7-unknown-linux-gnueabihf ;;
  esac
}

# Release binaries (LTO, stripped: the release profile) for one architecture,
# linked against glibc $GLIBC_FLOOR's symbols.
build() {
  local arch=$1 pkgs=(-p keyway-agent)
  [[ $arch != armhf ]] && pkgs+=(-p keyway-relay)
  local t0=$SECONDS target
  target="$(triple "$arch").$GLIBC_FLOOR"
  case $arch in
    amd64) cargo zigbuild --release --locked --target "$target" "${pkgs[@]}" ;;
    arm64) cargo +debian zigbuild --release --locked --target "$target" "${pkgs[@]}" ;;
    # No usable prebuilt std for armhf: build it from rust-web-src.
    armhf) RUSTC_BOOTSTRAP=1 cargo +debian zigbuild -Zbuild-std --release --locked \
             --target "$target" "${pkgs[@]}" ;;
  esac
  echo "build-debs: $arch binaries in $((SECONDS - t0)) s" >&2
}

bin_dir() {
  echo "$ROOT/target/$(triple "$1")/release"
}

# The Depends line a binary really has: its shared libraries, mapped to
# the packages that ship them on Debian and Raspberry Pi OS.
depends_of() {
  local bin=$1 glibc libs lib deps
  glibc=$(glibc_needed "$bin")
  if ! dpkg --compare-versions "$glibc" le "$GLIBC_FLOOR"; then
    echo "build-debs: $bin needs glibc $glibc, over the $GLIBC_FLOOR floor" >&2
    exit 1
  fi
  deps="libc6 (>= $glibc)"
  libs=$(readelf -d "$bin" | sed -n 's/.*Shared library: \[\(.*\)\]/\1/p')
  for lib in $libs; do
    case $lib in
      libc.so.*|libm.so.*|libpthread.so.*|libdl.so.*|librt.so.*|ld-linux*) ;;
      libgcc_s.so.*) deps+=", libgcc-s1" ;;
      *) echo "build-debs: $bin links $lib: name its package in depends_of" >&2; exit 1 ;;
    esac
  done
  echo "$deps"
}

# The man page and completions come from the amd64 build (same CLI text).
docs() {
  local name=$1 stage=$2 host_bin
  host_bin=$(bin_dir amd64)/$1
  mkdir -p "$stage/usr/share/man/man1" "$stage/usr/share/bash-completion/completions" \
    "$stage/usr/share/zsh/vendor-completions" "$stage/usr/share/fish/vendor_completions.d"
  help2man --no-info --version-string="$VERSION" --name "$(desc_short "$name")" "$host_bin" \
    | gzip -9n > "$stage/usr/share/man/man1/$name.1.gz"
  "$host_bin" completions bash > "$stage/usr/share/bash-completion/completions/$name"
  "$host_bin" completions zsh > "$stage/usr/share/zsh/vendor-completions/_$name"
  "$host_bin" completions fish > "$stage/usr/share/fish/vendor_completions.d/$name.fish"
}

desc_short() {
  case $1 in
    keyway-agent) echo "UniFi Access console tunnel to a Keyway relay (agent)" ;;
    keyway-relay) echo "public relay for Keyway tunnels to UniFi Access consoles" ;;
  esac
}

package() {
  local name=$1 arch=$2
  local stage=$OUT/stage/${name}_$arch
  rm -rf "$stage"
  mkdir -p "$stage/DEBIAN" "$stage/usr/bin" "$stage/lib/systemd/system" "$stage/usr/lib/sysctl.d" \
    "$stage/usr/share/doc/$name/examples"
  install -m 0755 "$(bin_dir "$arch")/$name" "$stage/usr/bin/$name"
  install -m 0644 "packaging/systemd/$name.service" "$stage/lib/systemd/system/"
  install -m 0644 packaging/systemd/60-keyway-quic.conf "$stage/usr/lib/sysctl.d/"
  install -m 0644 packaging/debian/copyright "$stage/usr/share/doc/$name/copyright"
  local example=agent.toml
  [[ $name == keyway-relay ]] && example=relay.toml
  install -m 0644 "packaging/examples/$example" "$stage/usr/share/doc/$name/examples/"
  printf '%s (%s) stable; urgency=medium\n\n  * Release %s.\n\n -- Keyway <packages@keyway.invalid>  %s\n' \
    "$name" "$DEBVER" "$VERSION" "$(date -R -d @"${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct)}")" \
    | gzip -9n > "$stage/usr/share/doc/$name/changelog.Debian.gz"
  docs "$name" "$stage"
  for s in postinst prerm postrm; do install -m 0755 "packaging/debian/$s" "$stage/DEBIAN/$s"; done
  local size deps
  size=$(du -sk --exclude=DEBIAN "$stage" | cut -f1)
  deps=$(depends_of "$(bin_dir "$arch")/$name")
  cat > "$stage/DEBIAN/control" <<CONTROL
Package: $name
Version: $DEBVER
Architecture: $arch
Maintainer: Keyway <packages@keyway.invalid>
Installed-Size: $size
Depends: $deps, adduser, init-system-helpers (>= 1.54)
Section: net
Priority: optional
Homepage: https://example.invalid/keyway
Description: $(desc_short "$name")
$(desc_long "$name")
CONTROL
  mkdir -p "$OUT"
  dpkg-deb --root-owner-group -Zxz --build "$stage" "$OUT/${name}_${DEBVER}_$arch.deb" >/dev/null
  echo "build-debs: $(basename "$OUT/${name}_${DEBVER}_$arch.deb") $(du -h "$OUT/${name}_${DEBVER}_$arch.deb" | cut -f1)" \
    "(binary $(du -h "$(bin_dir "$arch")/$name" | cut -f1))" >&2
}

desc_long() {
  case $1 in
    keyway-agent) cat <<'TXT'
 Keyway gives a UniFi Access console on a private LAN a public HTTPS
 address without port forwarding. This agent runs next to the console,
 dials out to a Keyway relay over QUIC (or TLS over TCP where UDP is
 blocked) and forwards API calls and door events to the console, whose
 certificate it pins. Pair it with `keyway-agent pair CODE`.
TXT
    ;;
    keyway-relay) cat <<'TXT'
 Keyway gives UniFi Access consoles on private LANs a public HTTPS address
 without port forwarding. The relay serves integrations over HTTPS and
 takes the agents' QUIC (or TLS/TCP) connections, with edge limits and a
 site registry. Initialise it with `keyway-relay init`.
TXT
    ;;
  esac
}

setup
rm -rf "$OUT"
build amd64 # man pages and completions come from it
for arch in $ARCHES; do
  [[ $arch != amd64 ]] && build "$arch"
  package keyway-agent "$arch"
  [[ $arch != armhf ]] && package keyway-relay "$arch"
done
rm -rf "$OUT/stage"
ls -1 "$OUT"
