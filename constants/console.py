"""The operator's console: its Redis keys and tunables. Units are in the names.

The console serves many machines, so its keys are not under one machine's hash tag.
"""

#: hash with TTL: failed log-ins from one client address {failures, last} (unix s). Both
#: share the hash tag `{login}` (`{{login}}` in the template): a log-in WATCHes both and
#: counts a failure on both in one MULTI, which a Redis Cluster allows in one slot only.
LOGIN_FAILS_CLIENT = "console:{{login}}:fails:client:{client}"
#: hash with TTL: failed log-ins for one user name, existing or not {failures, last}.
LOGIN_FAILS_ACCOUNT = "console:{{login}}:fails:account:{account}"

#: After the n-th failed log-in in a row, the next try waits LOGIN_BACKOFF_FIRST_S * 2**(n-1)
#: seconds, at most LOGIN_BACKOFF_MAX_S.
LOGIN_BACKOFF_FIRST_S = 1.0
LOGIN_BACKOFF_MAX_S = 60.0
#: Failed log-ins are forgotten this long after the last one.
LOGIN_FAILS_KEEP_S = 15 * 60

#: The session cookie's name.
SESSION_COOKIE = "console_session"
#: The live overview (Server-Sent Events) blocks on the events stream this long at most, then
#: sends the overview again (heartbeat ages move without events).
LIVE_BLOCK_MS = 3000
#: The gateway's health is probed at most this often, each probe waiting this long at most.
GATEWAY_PROBE_EVERY_S = 30.0
GATEWAY_PROBE_TIMEOUT_S = 2.0
#: A console session signing key is at least this long (CONSOLE_SECRET, VAR_DIR/console_secret).
CONSOLE_SECRET_MIN_CHARS = 32
#: Password checks (argon2id, 64 MiB each) the console runs at once; more log-ins wait.
PASSWORD_CHECKS_AT_ONCE = 2
