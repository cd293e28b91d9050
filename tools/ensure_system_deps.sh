#!/usr/bin/env bash
# Make sure the system libraries that Qt/napari need headless are present (Debian/Ubuntu).
# Quick when everything is there; installs with apt when run as root; otherwise says what to install.
set -euo pipefail

APT_PACKAGES=(
  xvfb xauth libgl1 libegl1 libgl1-mesa-dri libglx-mesa0 libxkbcommon-x11-0 libxcb-cursor0
  libxcb-icccm4 libxcb-keysyms1 libxcb-image0 libxcb-randr0 libxcb-render-util0 libxcb-shape0
  libxcb-xfixes0 libxcb-xinerama0 libdbus-1-3 libfontconfig1 fonts-dejavu-core
  time  # /usr/bin/time -v: benchmarks/memory.py reads each run's peak memory from it
)
# Shared libraries whose absence makes Qt abort ("could not load the Qt platform plugin xcb").
LIBS=(libxcb-icccm.so.4 libxcb-keysyms.so.1 libxcb-xinerama.so.0 libxkbcommon-x11.so.0 libxcb-cursor.so.0
  libEGL.so.1 libGL.so.1 libfontconfig.so.1 libdbus-1.so.3)

missing=()
command -v Xvfb >/dev/null 2>&1 || missing+=("Xvfb")
[ -x /usr/bin/time ] || missing+=("/usr/bin/time")
if command -v ldconfig >/dev/null 2>&1; then
  cache=$(ldconfig -p 2>/dev/null || true)
  for lib in "${LIBS[@]}"; do
    grep -q "$lib" <<<"$cache" || missing+=("$lib")
  done
fi
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing system packages for headless Qt/OpenGL (missing: ${missing[*]})"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${APT_PACKAGES[@]}" >/dev/null
  exit 0
fi

cat >&2 <<MSG
napari needs system libraries that are missing here: ${missing[*]}
On Debian/Ubuntu install them as root:
  apt-get install -y --no-install-recommends ${APT_PACKAGES[*]}
On other systems install the equivalents (Xvfb, Mesa OpenGL, the xcb and xkbcommon-x11 libraries),
or set SKIP_SYSTEM_DEPS=1 if you know your machine can open napari windows.
MSG
exit 1
