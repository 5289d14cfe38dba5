# Sourced by verify-repo.sh and verify-debs.sh: the tools a repository
# needs, and a throwaway OpenPGP signing key, as an operator's would be,
# for repositories built in a test.

# repo_tools: gpg and apt-ftparchive, from Debian when missing (as root, as
# CI runs); fails when they are missing and this is not root.
repo_tools() {
  local missing=""
  command -v gpg >/dev/null || missing+=" gpg"
  command -v apt-ftparchive >/dev/null || missing+=" apt-utils"
  [[ -z $missing ]] && return 0
  [[ $(id -u) == 0 ]] || return 1
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
}

# newkey HOME NAME: creates an ed25519 signing key valid for a day in the
# keyring at HOME (created 0700); prints its fingerprint.
newkey() {
  mkdir -p -m 0700 "$1"
  GNUPGHOME=$1 gpg --batch --quiet --passphrase '' --quick-gen-key "$2 <packages@keyway.invalid>" ed25519 sign 1d
  GNUPGHOME=$1 gpg --batch --quiet --with-colons --list-secret-keys 2>/dev/null | awk -F: '/^fpr/ {print $10; exit}'
}
