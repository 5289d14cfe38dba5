# Sourced by build-debs.sh and verify-debs.sh: the oldest glibc the
# binaries may need (Raspberry Pi OS bullseye, Ubuntu 20.04), and how a
# binary's need is read.
GLIBC_FLOOR=2.31

# The newest glibc symbol version a binary needs (readelf reads any arch).
glibc_needed() {
  readelf -V -W "$1" | grep -o 'GLIBC_[0-9][0-9.]*' | sed 's/GLIBC_//' | sort -uV | tail -1
}
