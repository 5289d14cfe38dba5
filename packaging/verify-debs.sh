#!/usr/bin/env bash
# Checks the packages in target/debs/ (from packaging/build-debs.sh):
#  1. metadata and file list of each .deb, the ELF machine of each binary,
#     the newest glibc symbol it needs (at most 2.31) and its Depends;
#  2. lintian: no errors (the warnings we keep are listed in the README);
#  3. the arm64 and armhf agents under qemu-user in a Debian bullseye
#     (glibc 2.31) and a trixie (2.41) userland, each fetched with
#     `debootstrap --foreign` (unpacked, nothing run): --version, then a
#     real pair + serve against the amd64 relay and the simulated console
#     on loopback, answered through the relay. Where a suite cannot be
#     fetched the check says so and falls back to the host's cross libc
#     (the symbol check of step 1 still holds);
#  4. the unit files pass `systemd-analyze verify`;
#  5. as root: the amd64 packages install (user, unit, directories, sysctl
#     drop-in), `remove` keeps config and identity, `purge` deletes them;
#  6. as root: apt-get installs the agent from the relay's repository over
#     HTTPS, and apt-get upgrade over a paired, running agent keeps everything;
#  7. packaging/verify-repo.sh: the signed apt repository, as apt sees it.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
DEBS=$ROOT/target/debs
VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)-1
source packaging/glibc.sh
# Old and new userlands the Pi agents run in (step 3).
SUITES=${KEYWAY_VERIFY_SUITES:-"bullseye trixie"}
MIRROR=${KEYWAY_DEBIAN_MIRROR:-http://deb.debian.org/debian}
WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT
fail() { echo "verify-debs: FAIL $*" >&2; exit 1; }
ok() { echo "verify-debs: ok   $*"; }

deb() { echo "$DEBS/${1}_${VERSION}_$2.deb"; }

# 1. Metadata, file lists, binaries.
machine() { case $1 in amd64) echo "X86-64" ;; arm64) echo "AArch64" ;; armhf) echo "ARM" ;; esac; }
for spec in keyway-agent:amd64 keyway-agent:arm64 keyway-agent:armhf keyway-relay:amd64 keyway-relay:arm64; do
  name=${spec%:*} arch=${spec#*:} f=$(deb "${spec%:*}" "${spec#*:}")
  [[ -f $f ]] || fail "$f is missing"
  [[ $(dpkg-deb -f "$f" Package) == "$name" ]] || fail "$f: Package"
  [[ $(dpkg-deb -f "$f" Architecture) == "$arch" ]] || fail "$f: Architecture is $(dpkg-deb -f "$f" Architecture)"
  [[ $(dpkg-deb -f "$f" Version) == "$VERSION" ]] || fail "$f: Version"
  files=$(dpkg-deb -c "$f" | awk '{print $6}')
  for want in ./usr/bin/$name ./lib/systemd/system/$name.service ./usr/lib/sysctl.d/60-keyway-quic.conf \
      ./usr/share/doc/$name/copyright ./usr/share/doc/$name/changelog.Debian.gz ./usr/share/man/man1/$name.1.gz \
      ./usr/share/bash-completion/completions/$name ./usr/share/doc/$name/examples/; do
    grep -qx -- "$want" <<<"$files" || fail "$f lacks $want"
  done
  dpkg-deb -x "$f" "$WORK/$name-$arch"
  bin=$WORK/$name-$arch/usr/bin/$name
  readelf -h "$bin" | grep -q "Machine:.*$(machine "$arch")" || fail "$f: binary is not $(machine "$arch")"
  glibc=$(glibc_needed "$bin")
  dpkg --compare-versions "$glibc" le "$GLIBC_FLOOR" || fail "$f: the binary needs glibc $glibc (over $GLIBC_FLOOR)"
  [[ $(dpkg-deb -f "$f" Depends) == "libc6 (>= $glibc)"* ]] || fail "$f: Depends $(dpkg-deb -f "$f" Depends) is not the binary's glibc $glibc"
  ok "$(basename "$f"): $arch, $(du -h "$f" | cut -f1), files and binary as expected, needs glibc $glibc"
done

# 2. lintian.
for f in "$DEBS"/*.deb; do
  out=$(lintian --fail-on error --suppress-tags-from-file packaging/lintian-kept "$f" 2>&1) \
    || { echo "$out"; fail "lintian errors in $(basename "$f")"; }
  [[ -n $out ]] && echo "$out"
done
ok "lintian: no errors"

# 3. The Pi agents under qemu-user, in old and new Debian userlands.
ROOTFS=""  # the userland run_qemu uses; empty: the host's cross libc
qemu_argv() { # arch → QEMU, the command line that runs that agent
  case $1 in
    arm64) QEMU=(qemu-aarch64 ${ROOTFS:+-L "$ROOTFS"} "$WORK/keyway-agent-arm64/usr/bin/keyway-agent") ;;
    armhf) QEMU=(qemu-arm -L "${ROOTFS:-/usr/arm-linux-gnueabihf}" "$WORK/keyway-agent-armhf/usr/bin/keyway-agent") ;;
  esac
}
run_qemu() { # arch, args…
  qemu_argv "$1"; shift
  "${QEMU[@]}" "$@"
}
# Unpacks suite/arch's minimal userland (downloaded and unpacked only, so
# no binfmt is needed); its glibc is what the agent then runs on.
userland() { # suite, arch → sets ROOTFS, or returns 1
  local dir=$WORK/rootfs-$1-$2
  command -v debootstrap >/dev/null || {
    [[ $(id -u) == 0 ]] && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
  } || return 1
  PATH=$PATH:/usr/sbin debootstrap --foreign --variant=minbase --arch="$2" "$1" "$dir" "$MIRROR" \
    >"$WORK/debootstrap-$1-$2.log" 2>&1 || return 1
  ROOTFS=$dir
}
# The glibc release of the current userland, as its libc.so.6 says.
userland_glibc() { # arch
  local libc
  libc=$(ls "$ROOTFS"/lib/*-linux-gnu*/libc.so.6 2>/dev/null | head -1 || true)
  [[ -n $libc ]] || return 0
  local banner
  case $1 in
    arm64) banner=$(qemu-aarch64 -L "$ROOTFS" "$libc") ;;
    armhf) banner=$(qemu-arm -L "$ROOTFS" "$libc") ;;
  esac
  sed -n 's/.*release version \([0-9.]*[0-9]\).*/\1/p' <<<"$banner" | sed -n 1p
}
for arch in arm64 armhf; do
  v=$(run_qemu "$arch" --version)
  [[ $v == "keyway-agent ${VERSION%-1}" ]] || fail "$arch --version said: $v"
done
ok "arm64 and armhf agents run under qemu-user (host cross libc)"

free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
wait_for() { # file, text
  for _ in $(seq 1 300); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.1; done
  cat "$1" >&2; fail "no '$2' in $1"
}
SIM=${KEYWAY_CONSOLE_SIM:-}
if [[ -z $SIM ]]; then
  cargo build --locked -q -p keyway-tests --bin console-sim
  SIM=$ROOT/target/debug/console-sim
fi
TOKEN=pkg-$(od -An -N6 -tx1 /dev/urandom | tr -d ' \n')
PC=$(free_port); PK=$(free_port)
"$SIM" --listen "127.0.0.1:$PC" --token "$TOKEN" --ready-file "$WORK/console.json" \
  >"$WORK/console.log" 2>&1 & PIDS+=($!)
wait_for "$WORK/console.json" fingerprint
FP=$(python3 -c "import json;print(json.load(open('$WORK/console.json'))['fingerprint'])")
RELAY=$WORK/keyway-relay-amd64/usr/bin/keyway-relay
DOMAIN=relay.pkg.test
"$RELAY" init --dir "$WORK/relay" --domain "$DOMAIN" --listen "127.0.0.1:$PK" --self-signed >/dev/null
# The relay serves the apt repository step 6 builds (empty until then).
echo "apt_repository = \"$WORK/apt\"" >> "$WORK/relay/relay.toml"
KEYWAY_LOG=info "$RELAY" serve --config "$WORK/relay/relay.toml" >"$WORK/relay.log" 2>&1 & PIDS+=($!)
wait_for "$WORK/relay.log" "relay serving"
# GET doors through the relay; prints the HTTP status, the body to $3.
doors_via() { # site, token[, body file]
  curl -s -o "${3:-/dev/null}" -w '%{http_code}' --max-time 5 --cacert "$WORK/relay/https-ca.pem" \
    --resolve "$1.$DOMAIN:$PK:127.0.0.1" -H "Authorization: Bearer $2" \
    "https://$1.$DOMAIN:$PK/api/v1/developer/doors"
}
# Pairs and runs the agent in the current userland; a request through the
# relay must come back from the console.
serve_through() { # arch, label
  local arch=$1 label=$2 site code dir status pid
  site=pi-$arch-$label
  code=$("$RELAY" site add "$site" --config "$WORK/relay/relay.toml" --json \
    | python3 -c "import json,sys;print(json.load(sys.stdin)['code'])")
  dir=$WORK/agent-$arch-$label
  run_qemu "$arch" pair "$code" --relay "127.0.0.1:$PK" --relay-ca "$WORK/relay/https-ca.pem" \
    --console "https://127.0.0.1:$PC" --console-fingerprint "$FP" --config "$dir/agent.toml" --state-dir "$dir" >/dev/null
  # A simple command in the background, so $! is qemu itself (a function
  # would run in a subshell, and killing that would orphan the agent).
  qemu_argv "$arch"
  KEYWAY_LOG=info "${QEMU[@]}" run --config "$dir/agent.toml" >"$dir.log" 2>&1 & pid=$!
  PIDS+=($pid)
  wait_for "$dir.log" "tunnel up"
  status=$(doors_via "$site" "$TOKEN" "$dir.doors.json")
  [[ $status == 200 ]] && grep -q '"code":"SUCCESS"' "$dir.doors.json" \
    || { cat "$dir.log" >&2; fail "$arch agent ($label): GET doors through the relay answered $status"; }
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}
for suite in $SUITES; do
  for arch in arm64 armhf; do
    if userland "$suite" "$arch"; then
      glibc=$(userland_glibc "$arch")
      [[ -n $glibc ]] || fail "the $suite $arch userland has no glibc qemu can run"
      serve_through "$arch" "$suite"
      ok "$arch agent in a Debian $suite userland (glibc $glibc, qemu-user) paired with the amd64 relay and served the console's doors"
      rm -rf "$ROOTFS"
      ROOTFS=""
    else
      echo "verify-debs: NOTE could not fetch Debian $suite $arch from $MIRROR (see below); checked the glibc symbols only (step 1) and the host's cross libc:" >&2
      tail -3 "$WORK/debootstrap-$suite-$arch.log" >&2 2>/dev/null || true
      ROOTFS=""
      serve_through "$arch" "host-$suite"
      ok "$arch agent with the host's cross libc served the console's doors (no $suite userland)"
    fi
  done
done

# 4. The units.
for name in keyway-agent keyway-relay; do
  unit=$WORK/$name-amd64/lib/systemd/system/$name.service
  # verify wants the ExecStart binary on this host: check a copy pointing at the unpacked one.
  sed "s#/usr/bin/$name#$WORK/$name-amd64/usr/bin/$name#" "$unit" > "$WORK/$name.service"
  systemd-analyze verify --man=no "$WORK/$name.service" || fail "systemd-analyze verify $name.service"
done
ok "systemd-analyze verify: both units"

# 5. Install, remove, purge (root only: dpkg on this machine).
if [[ $(id -u) != 0 ]]; then
  echo "verify-debs: skipped the dpkg install test (not root)"
  exit 0
fi
for name in keyway-agent keyway-relay; do
  case $name in
    keyway-agent) user=keyway state=/var/lib/keyway conf=/etc/keyway ;;
    keyway-relay) user=keyway-relay state=/var/lib/keyway-relay conf=/var/lib/keyway-relay ;;
  esac
  dpkg -i "$(deb "$name" amd64)" >/dev/null
  getent passwd "$user" >/dev/null || fail "$name: no user $user"
  [[ -f /lib/systemd/system/$name.service && -f /usr/lib/sysctl.d/60-keyway-quic.conf ]] || fail "$name: unit or sysctl drop-in missing"
  [[ $(stat -c %U "$state") == "$user" ]] || fail "$name: $state not owned by $user"
  [[ -d $conf ]] || fail "$name: no $conf"
  systemd-analyze verify --man=no "/lib/systemd/system/$name.service" || fail "installed $name.service"
  "$name" --version >/dev/null
  echo 'kept = true' > "$conf/keep-test"
  dpkg -r "$name" >/dev/null
  [[ -f $conf/keep-test ]] || fail "$name: remove deleted the config"
  [[ ! -e /usr/bin/$name ]] || fail "$name: remove left the binary"
  dpkg -P "$name" >/dev/null
  [[ ! -e $conf && ! -e $state ]] || fail "$name: purge left $conf or $state"
  ! getent passwd "$user" >/dev/null || fail "$name: purge left the user"
  ok "$name amd64: installs (user, unit, directories, sysctl), remove keeps config, purge deletes it"
done

# 6. Install and upgrade with apt from the relay (root only): the amd64
#    relay serves a signed repository at https://localhost:PORT/apt/ and
#    apt-get, trusting the relay's CA and the repository's key, installs
#    keyway-agent from it. The agent is paired and run as the unit would;
#    then a newer build (this package repacked as the next Debian
#    revision, so dpkg runs the real upgrade path: prerm upgrade, unpack
#    over the running binary, postinst configure OLD) is published and
#    `apt-get upgrade` takes it. Everything must be kept: identity,
#    pairing, console pin, console token, integration tokens, event
#    buffer, audit log. Without systemd here, the unit's try-restart is
#    done by hand, and the first request after it must come back within
#    2 s. apt uses its own source list, lists and cache under $WORK; the
#    packages it installs are this machine's, as dpkg -i's were.
source packaging/testkey.sh
repo_tools || fail "needs gpg and apt-utils"
OPERATOR=$(newkey "$WORK/gnupg" "Keyway test operator")
publish() { # folder of .debs → into the relay's repository, re-signed
  GNUPGHOME=$WORK/gnupg packaging/build-repo.sh --key "$OPERATOR" --debs "$1" --out "$WORK/apt" 2>/dev/null
}
APT=$WORK/apt-state
mkdir -p "$APT/lists/partial" "$APT/cache/archives/partial" "$APT/preferences.d"
echo "deb [signed-by=$WORK/apt/keyway-archive-keyring.gpg] https://localhost:$PK/apt stable main" >"$APT/sources.list"
apt_relay() { # apt-get with only the relay's repository
  DEBIAN_FRONTEND=noninteractive apt-get -q -o Dir::Etc::SourceList="$APT/sources.list" \
    -o Dir::Etc::SourceParts=/dev/null -o Dir::Etc::PreferencesParts="$APT/preferences.d" \
    -o Dir::State::Lists="$APT/lists" -o Dir::State::extended_states="$APT/extended_states" \
    -o Dir::Cache="$APT/cache" \
    -o Acquire::https::CaInfo="$WORK/relay/https-ca.pem" -o APT::Sandbox::User=root "$@" >>"$WORK/apt.log" 2>&1 \
    || { cat "$WORK/apt.log" >&2; fail "apt-get $*"; }
}
start_agent() { # as the unit does: the keyway user, the packaged config
  runuser -u keyway -- env KEYWAY_LOG=info /usr/bin/keyway-agent run --config /etc/keyway/agent.toml \
    >>"$WORK/upgrade-agent.log" 2>&1 & AGENT_PID=$!
  PIDS+=($AGENT_PID)
}
kept_files() { # checksums of what an upgrade must not touch
  (cd / && find etc/keyway var/lib/keyway -type f ! -name 'status*' ! -name 'audit.log*' \
     ! -path '*/events/seg-*' -print0 | sort -z | xargs -0 sha256sum)
  stat -c '%n %U %a' /etc/keyway /var/lib/keyway /var/lib/keyway/*
}
mkdir -p "$WORK/debs-first" "$WORK/debs-next"
cp "$(deb keyway-agent amd64)" "$WORK/debs-first/"
publish "$WORK/debs-first"
apt_relay update
apt_relay install -y keyway-agent
[[ $(dpkg-query -W -f '${Version}' keyway-agent) == "$VERSION" ]] || fail "apt installed $(dpkg-query -W -f '${Version}' keyway-agent), not $VERSION"
grep -q "https://localhost:$PK/apt stable/main amd64 keyway-agent" "$WORK/apt.log" \
  || { cat "$WORK/apt.log" >&2; fail "apt did not fetch keyway-agent from the relay"; }
ok "apt-get install keyway-agent from the relay's repository over HTTPS ($VERSION)"
code=$("$RELAY" site add pi-upgrade --config "$WORK/relay/relay.toml" --json \
  | python3 -c "import json,sys;print(json.load(sys.stdin)['code'])")
keyway-agent pair "$code" --relay "127.0.0.1:$PK" --relay-ca "$WORK/relay/https-ca.pem" \
  --console "https://127.0.0.1:$PC" --console-fingerprint "$FP" >/dev/null
echo "$TOKEN" | keyway-agent console-token set >/dev/null
KW=$(keyway-agent token add crm --preset read-only | grep -o 'kw_[A-Za-z0-9_-]*' | head -1)
[[ -n $KW ]] || fail "token add printed no token"
start_agent
wait_for "$WORK/upgrade-agent.log" "tunnel up"
[[ $(doors_via pi-upgrade "$KW") == 200 ]] || fail "paired agent: GET doors with the integration token"
for _ in $(seq 1 100); do [[ -s /var/lib/keyway/audit.log ]] && break; sleep 0.05; done
before=$(kept_files)
cp /var/lib/keyway/audit.log "$WORK/audit.before"
[[ -s $WORK/audit.before ]] || fail "no audit record before the upgrade"

NEWVER="${VERSION%-*}-2"
dpkg-deb -R "$(deb keyway-agent amd64)" "$WORK/upgrade-stage"
sed -i "s/^Version: .*/Version: $NEWVER/" "$WORK/upgrade-stage/DEBIAN/control"
dpkg-deb --root-owner-group -Zxz --build "$WORK/upgrade-stage" "$WORK/debs-next/keyway-agent_${NEWVER}_amd64.deb" >/dev/null
publish "$WORK/debs-next"
apt_relay update
apt_relay upgrade -y
[[ $(dpkg-query -W -f '${Version}' keyway-agent) == "$NEWVER" ]] || fail "upgrade: version is not $NEWVER"
# The unit's try-restart: stop (SIGTERM), start the new binary.
kill -TERM "$AGENT_PID"; wait "$AGENT_PID" 2>/dev/null || true
start_agent
t0=$(date +%s%N)
healed=""
for _ in $(seq 1 100); do
  if [[ $(doors_via pi-upgrade "$KW") == 200 ]]; then healed=$(( ($(date +%s%N) - t0) / 1000000 )); break; fi
  sleep 0.02
done
[[ -n $healed ]] || { cat "$WORK/upgrade-agent.log" >&2; fail "after the upgrade: no 200 with the integration token"; }
(( healed < 2000 )) || fail "after the upgrade: first 200 took $healed ms"
[[ $(kept_files) == "$before" ]] || { diff <(echo "$before") <(kept_files) >&2; fail "the upgrade changed kept files"; }
cmp -s -n "$(stat -c %s "$WORK/audit.before")" "$WORK/audit.before" /var/lib/keyway/audit.log \
  || fail "the audit log lost records"
[[ -f /var/lib/keyway/events/epoch ]] || fail "event buffer's epoch gone"
kill -TERM "$AGENT_PID"; wait "$AGENT_PID" 2>/dev/null || true
dpkg -P keyway-agent >/dev/null
ok "keyway-agent amd64: apt-get upgrade to $NEWVER from the relay over a paired, running agent kept identity, pin, tokens, events and audit; first 200 ${healed} ms after the restart"

# 7. The apt repository built from these packages.
packaging/verify-repo.sh
