# Sourced by scripts/setup.d/*.sh: the one way setup installs Debian packages.
# apt_install "WHY" PKG...: apt-get update, then install PKG... quietly, without
# recommended packages, with sudo unless already root.
apt_install() {
  local why=$1; shift
  echo "setup: installing Debian packages: $* ($why)"
  local sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}
