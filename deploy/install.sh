#!/usr/bin/env bash
# Install Drink Machine on a Debian or Raspberry Pi OS box, as root, in one step. Idempotent:
# run it again to update the code or the units; an existing .env is kept.
#
#   sudo deploy/install.sh                                   # a whole machine (`main.py up`)
#   sudo deploy/install.sh --mode machine --machine-id vm-7 \
#        --backend-url wss://backend.example.com/agent --token -  # fleet mode's agent; the
#                                                  # token on stdin (`-`) stays out of `ps`
#   sudo deploy/install.sh --dispenser serial --port /dev/ttyUSB0       # a real vending board
#   sudo deploy/install.sh --dispenser gpio --relay-pins 1:17,2:27       # relays on the header
#   deploy/install.sh --dry-run ...                          # print every action, change nothing
#   deploy/install.sh --root /tmp/image ...                  # files only, under a staging root
#
# What it does: installs the packages (Python venv, Redis when the mode needs it, Chromium and a
# bare X for the touchscreen); creates the service user (in `dialout` for a serial board, `gpio`
# for GPIO, `video`/`input`/`tty` for the screen); copies the code to PREFIX and builds its venv;
# writes PREFIX/.env (mode 600) unless one exists; installs and enables the systemd units of the
# mode with the user and PREFIX filled in: drink-machine (up) or drink-machine-agent (machine),
# and kiosk-browser (Chromium in kiosk mode on boot: no blanking, no cursor, no pinch zoom, no
# translate bar, no crash bubble). deploy/uninstall.sh reverses it.
set -euo pipefail

MODE=up
PREFIX=/opt/drink-machine
SERVICE_USER=vending
MACHINE_ID=vm-1
BACKEND_URL=""
TOKEN=""
DISPENSER=simulated
PORT=""
RELAY_PINS=""
KIOSK=1
DRY_RUN=0
ROOT=""
SRC="$(cd "$(dirname "$0")/.." && pwd)"

usage() { sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }
die() { echo "install.sh: $*" >&2; exit 2; }

while [ $# -gt 0 ]; do
  case "$1" in
    --mode) MODE="$2"; shift 2 ;;
    --prefix) PREFIX="$2"; shift 2 ;;
    --user) SERVICE_USER="$2"; shift 2 ;;
    --machine-id) MACHINE_ID="$2"; shift 2 ;;
    --backend-url) BACKEND_URL="$2"; shift 2 ;;
    --token) TOKEN="$2"; shift 2 ;;
    --dispenser) DISPENSER="$2"; shift 2 ;;
    --port) PORT="$2"; shift 2 ;;
    --relay-pins) RELAY_PINS="$2"; shift 2 ;;
    --no-kiosk) KIOSK=0; shift ;;
    --dry-run) DRY_RUN=1; shift ;;
    --root) ROOT="$2"; shift 2 ;;
    -h|--help) usage 0 ;;
    *) echo "install.sh: unknown option $1" >&2; usage 2 ;;
  esac
done

case "$MODE" in up|machine) ;; *) die "--mode is up or machine" ;; esac
if [ "$TOKEN" = - ]; then
  IFS= read -r TOKEN || true
fi
case "$DISPENSER" in simulated|serial|gpio) ;; *) die "--dispenser is simulated, serial or gpio" ;; esac
[[ "$MACHINE_ID" =~ ^[A-Za-z0-9_.-]{1,20}$ ]] || die "--machine-id: 1 to 20 letters, digits, - _ ."
if [ "$MODE" = machine ]; then
  [[ "$BACKEND_URL" =~ ^wss?://[^[:space:]]+$ ]] || die "--mode machine needs --backend-url ws(s)://..."
  [[ "$TOKEN" =~ ^[^[:space:]]+$ ]] || die "--mode machine needs --token (main.py fleet add ID prints it)"
fi
[ "$DISPENSER" != serial ] || [ -n "$PORT" ] || die "--dispenser serial needs --port /dev/tty..."
[ "$DISPENSER" != gpio ] || [[ "$RELAY_PINS" =~ ^[0-9]+:[0-9]+(,[0-9]+:[0-9]+)*$ ]] ||
  die "--dispenser gpio needs --relay-pins SLOT:BCM,... (e.g. 1:17,2:27)"
case "$PREFIX" in /?*) ;; *) die "--prefix must be an absolute folder" ;; esac
# A staging root installs files only: no packages, users or services on this system.
SYSTEM=1
[ -z "$ROOT" ] || SYSTEM=0
[ "$DRY_RUN" = 1 ] || [ "$SYSTEM" = 0 ] || [ "$(id -u)" = 0 ] || die "run it as root (or --dry-run)"

DEST="$ROOT$PREFIX"
UNITS="$ROOT/etc/systemd/system"
# The code is replaced on every run: never in the source's own folder, and never in a folder
# this script did not make (a marker says so), such as /opt itself.
MARKER=.drink-machine-install
if [ -e "$DEST" ] && [ "$SRC" -ef "$DEST" ]; then
  die "the source is $DEST itself: run the script of a fresh clone, not of the installed copy"
fi
if [ -d "$DEST" ] && [ -n "$(ls -A "$DEST")" ] && [ ! -e "$DEST/$MARKER" ]; then
  die "$DEST holds files this script did not install: choose another --prefix"
fi

# Every action goes through `act`: printed with --dry-run, done otherwise.
act() {
  if [ "$DRY_RUN" = 1 ]; then
    printf 'would:'; printf ' %q' "$@"; printf '\n'
  else
    "$@"
  fi
}
say() { echo "install.sh: $*"; }

packages() {
  local list=(python3 python3-venv python3-pip)
  [ "$MODE" = up ] && list+=(redis-server redis-tools)
  [ "$KIOSK" = 1 ] && list+=(chromium xserver-xorg xinit x11-xserver-utils)
  act apt-get update -qq
  act env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${list[@]}"
}

service_user() {
  if id -u "$SERVICE_USER" >/dev/null 2>&1; then
    say "user $SERVICE_USER exists"
  else
    act useradd --system --create-home --shell /usr/sbin/nologin "$SERVICE_USER"
  fi
  local groups=()
  [ "$DISPENSER" = serial ] && groups+=(dialout)
  [ "$DISPENSER" = gpio ] && groups+=(gpio)
  [ "$KIOSK" = 1 ] && groups+=(video input tty)
  for group in "${groups[@]}"; do
    if getent group "$group" >/dev/null; then
      act usermod -a -G "$group" "$SERVICE_USER"
    else
      say "no group $group here: skipped"
    fi
  done
}

kiosk_x() {  # let the service user start X on the console (kiosk-browser.service)
  write "$ROOT/etc/X11/Xwrapper.config" 644 "allowed_users=anybody
needs_root_rights=yes"
}

code() {
  act install -d "$DEST"
  # The code anew (a file removed upstream leaves), keeping the venv, the data and .env.
  act find "$DEST" -mindepth 1 -maxdepth 1 ! -name .venv ! -name var ! -name .env \
    -exec rm -rf {} +
  if [ "$DRY_RUN" = 1 ]; then
    echo "would: copy $SRC to $DEST (without .git, .venv, var, .env, caches)"
  else
    tar -C "$SRC" --exclude=./.git --exclude=./.venv --exclude=./var --exclude=./.env \
      --exclude=__pycache__ --exclude=.pytest_cache --exclude=.mypy_cache \
      --exclude=.ruff_cache -cf - . | tar -C "$DEST" -xf -
  fi
  write "$DEST/$MARKER" 644 "installed by deploy/install.sh"
  act python3 -m venv "$DEST/.venv"
  if [ "$SYSTEM" = 1 ]; then
    act "$DEST/.venv/bin/pip" install -q --upgrade pip
    act "$DEST/.venv/bin/pip" install -q -r "$DEST/requirements.txt"
  fi
}

# write FILE MODE TEXT: the file with that content and mode (printed with --dry-run).
write() {
  if [ "$DRY_RUN" = 1 ]; then
    echo "would: write $1 (mode $2)"
  else
    install -d "$(dirname "$1")"
    (umask 077 && printf '%s\n' "$3" > "$1.tmp")  # never readable by others, even briefly
    chmod "$2" "$1.tmp"
    mv "$1.tmp" "$1"
  fi
}

settings() {
  if [ -e "$DEST/.env" ]; then
    say "$DEST/.env exists: kept (edit it by hand; the token is there in fleet mode)"
    return
  fi
  local text="# Written by deploy/install.sh; every variable is in .env.example.
VENDING_MACHINE_ID=$MACHINE_ID
VAR_DIR=$PREFIX/var
DISPENSER=$DISPENSER"
  [ -n "$PORT" ] && text+="
DISPENSER_PORT=$PORT"
  [ -n "$RELAY_PINS" ] && text+="
GPIO_RELAY_PINS=$RELAY_PINS"
  if [ "$MODE" = machine ]; then
    text+="
BACKEND_URL=$BACKEND_URL
MACHINE_TOKEN=$TOKEN"
  else
    text+="
# MIDTRANS_SERVER_KEY=   (unset: the local sandbox, no real payments)
# MIDTRANS_IS_PRODUCTION=true"
  fi
  write "$DEST/.env" 600 "$text"
}

# unit NAME: deploy/NAME.service with the user and PREFIX filled in.
unit() {
  local text
  text="$(sed -e "s|^User=.*|User=$SERVICE_USER|" -e "s|/opt/drink-machine|$PREFIX|g" \
    "$SRC/deploy/$1.service")"
  write "$UNITS/$1.service" 644 "$text"
}

units() {
  local main=drink-machine
  [ "$MODE" = machine ] && main=drink-machine-agent
  unit "$main"
  local enable=("$main")
  if [ "$KIOSK" = 1 ]; then
    unit kiosk-browser
    enable+=(kiosk-browser)
  fi
  if [ "$SYSTEM" = 1 ]; then
    act systemctl daemon-reload
    act systemctl enable "${enable[@]}"
    # A running unit takes the new code, units and groups now, not at the next boot.
    act systemctl restart "${enable[@]}"
    # The console's getty would fight X for tty1.
    if [ "$KIOSK" = 1 ]; then
      act systemctl disable --now getty@tty1.service
    fi
  else
    say "staging root: enable ${enable[*]} on the target"
  fi
}

owner() {
  if [ "$SYSTEM" = 1 ]; then
    act chown -R "$SERVICE_USER:" "$DEST"
  fi
}

if [ "$DRY_RUN" = 1 ]; then say "dry run: nothing is changed"; fi
say "mode $MODE, user $SERVICE_USER, folder $DEST, dispenser $DISPENSER"
if [ "$SYSTEM" = 1 ]; then
  packages
  service_user
fi
if [ "$KIOSK" = 1 ]; then kiosk_x; fi
code
settings
owner
units
say "done. Check it with: sudo -u $SERVICE_USER $PREFIX/.venv/bin/python $PREFIX/main.py doctor"
