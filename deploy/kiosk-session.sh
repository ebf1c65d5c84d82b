#!/bin/sh
# The touchscreen's X session: no screen blanking, no power saving, then Chromium in kiosk mode
# on the kiosk page (KIOSK_URL, default http://127.0.0.1:3333/). Started by xinit from
# kiosk-browser.service; X itself runs with -nocursor (no pointer on a touchscreen).
set -eu
xset s off
xset s noblank
xset -dpms
url="${KIOSK_URL:-http://127.0.0.1:3333/}"
browser="$(command -v chromium || command -v chromium-browser)"
# --incognito: no profile to restore, so no "restore pages?" bubble after a power cut.
exec "$browser" --kiosk --incognito --noerrdialogs --disable-infobars \
    --disable-session-crashed-bubble --disable-translate \
    --disable-features=Translate,TranslateUI --disable-pinch \
    --overscroll-history-navigation=0 --no-first-run --check-for-update-interval=31536000 \
    --autoplay-policy=no-user-gesture-required "$url"
