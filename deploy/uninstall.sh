#!/usr/bin/env bash
# Reverse deploy/install.sh, as root: stop and remove the units, the code and its venv, the X
# wrapper setting; with --purge also the data (VAR_DIR: Redis, the vend journal, logs) and
# .env, and the service user. Without --purge they stay, for a reinstall.
#
#   sudo deploy/uninstall.sh [--purge] [--prefix /opt/drink-machine] [--user vending]
#   deploy/uninstall.sh --dry-run | --root DIR     # as install.sh
set -euo pipefail

PREFIX=/opt/drink-machine
SERVICE_USER=vending
PURGE=0
DRY_RUN=0
ROOT=""
while [ $# -gt 0 ]; do
  case "$1" in
    --prefix) PREFIX="$2"; shift 2 ;;
    --user) SERVICE_USER="$2"; shift 2 ;;
    --purge) PURGE=1; shift ;;
    --dry-run) DRY_RUN=1; shift ;;
    --root) ROOT="$2"; shift 2 ;;
    -h|--help) sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "uninstall.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
SYSTEM=1
[ -z "$ROOT" ] || SYSTEM=0
[ "$DRY_RUN" = 1 ] || [ "$SYSTEM" = 0 ] || [ "$(id -u)" = 0 ] || {
  echo "uninstall.sh: run it as root (or --dry-run)" >&2; exit 2; }
DEST="$ROOT$PREFIX"
UNITS=(drink-machine drink-machine-agent drink-machine-backend kiosk-browser)

act() {
  if [ "$DRY_RUN" = 1 ]; then
    printf 'would:'; printf ' %q' "$@"; printf '\n'
  else
    "$@"
  fi
}

for unit in "${UNITS[@]}"; do
  file="$ROOT/etc/systemd/system/$unit.service"
  [ -e "$file" ] || continue
  [ "$SYSTEM" = 1 ] && act systemctl disable --now "$unit"
  act rm -f "$file"
done
if [ "$SYSTEM" = 1 ]; then
  act systemctl daemon-reload
  act systemctl enable getty@tty1.service
fi
act rm -f "$ROOT/etc/X11/Xwrapper.config"
if [ -d "$DEST" ]; then
  if [ "$PURGE" = 1 ]; then
    act rm -rf "$DEST"
  else  # the code and venv go; the data and the settings stay
    act find "$DEST" -mindepth 1 -maxdepth 1 ! -name var ! -name .env \
      ! -name .drink-machine-install -exec rm -rf {} +
    echo "uninstall.sh: kept $DEST/var and $DEST/.env (--purge removes them)"
  fi
fi
if [ "$PURGE" = 1 ] && [ "$SYSTEM" = 1 ] && id -u "$SERVICE_USER" >/dev/null 2>&1; then
  act userdel "$SERVICE_USER"
fi
echo "uninstall.sh: done"
