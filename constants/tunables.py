"""Tunables that are not operator settings. Units are in the names."""

#: Websocket frames from a page: at most this many bytes (DESIGN: larger closes with 1009).
CLIENT_FRAME_MAX_BYTES = 4096
#: A page may send at most this many frames per second before it gets ERROR rate_limited.
CLIENT_FRAMES_PER_S = 20
#: Events stream length kept (approximate MAXLEN).
EVENTS_MAXLEN = 10_000
COMMANDS_MAXLEN = 10_000
#: Longest BLOCK of the kiosk relay's read of the events stream: an idle kiosk costs one read
#: per period; a new entry ends the block at once, and a stop never waits for it.
REDIS_BLOCK_MAX_MS = 20_000
#: A worker beats this often, and an idle worker sleeps on Redis this long at most: it wakes
#: at once on an entry, and a SIGTERM interrupts the sleep.
HEARTBEAT_EVERY_S = 20.0
#: Heartbeat TTL of a worker: a worker silent this long is reported dead (`main.py health`).
HEARTBEAT_TTL_S = 60
#: A worker run in a thread (an in-process server) sleeps on Redis at most this long, so that
#: a stop from another thread is seen promptly.
THREAD_BLOCK_MAX_S = 0.2
#: Socket timeout of the client of a process's blocking reads: above its longest BLOCK
#: (shared/TESTING.md).
BLOCKING_SOCKET_TIMEOUT_S = max(HEARTBEAT_EVERY_S, REDIS_BLOCK_MAX_MS / 1000) + 10
#: Socket timeout of the client of a process's commands: a Redis that hangs fails a command
#: (and a kiosk tap gets ERROR unavailable) in this long.
COMMAND_SOCKET_TIMEOUT_S = 6.0
#: Order hashes are kept this long after they close, for late notifications and audits.
ORDER_KEEP_S = 30 * 24 * 3600

#: Payment status checks: fast at first, then backing off to Midtrans's POS guidance (~10 s).
PAYMENT_POLL_SCHEDULE_S = (1.0, 1.0, 2.0, 2.0, 3.0, 5.0)
PAYMENT_POLL_MAX_S = 10.0
#: Closing an order whose cancel the gateway could not confirm: retry this often.
CLOSE_RETRY_S = 2.0
#: The Midtrans charge lives this many minutes beyond the kiosk deadline (its own expiry).
CHARGE_EXPIRY_MARGIN_MIN = 1

#: Midtrans client: timeouts and retry budget.
HTTP_CONNECT_TIMEOUT_S = 3.05
HTTP_READ_TIMEOUT_S = 10.0
HTTP_RETRY_ATTEMPTS = 4
HTTP_RETRY_BUDGET_S = 20.0
HTTP_RETRY_BASE_S = 0.25


#: Notification receiver: largest body accepted.
NOTIFICATION_MAX_BYTES = 64 * 1024
#: Notification receiver: a request must be whole and answered this long after its first byte
#: (a connection, after it opens): a trickling sender is answered 408 then. Midtrans waits 15 s.
NOTIFICATION_REQUEST_DEADLINE_S = 5.0
#: After an answer sent with part of the request unread, the receiver reads and drops what
#: still arrives for at most this long before it closes (closing at once would reset it).
NOTIFICATION_LINGER_S = 2.0
#: Notification receiver: connections the kernel queues before they are accepted.
NOTIFICATION_BACKLOG = 2048
#: An in-process HTTP server (uvicorn in a thread) must accept connections within this long.
SERVER_START_TIMEOUT_S = 10.0
#: A closed order whose charge could not be confirmed cancelled is read again this long after
#: its charge's own expiry, and then every RECHECK_EVERY_S while the gateway cannot answer.
RECHECK_AFTER_EXPIRY_S = 60.0
RECHECK_EVERY_S = 60.0

#: After a failing step, wait this long before the next try (it is logged each time).
ERROR_BACKOFF_S = (0.5, 1.0, 2.0, 5.0)

#: Pauses between refund attempts while the gateway is unreachable (a failed vend and a late
#: payment alike); after the last one the refund is recorded as owed.
REFUND_RETRY_S = (2.0, 2.0, 2.0, 2.0)

#: Pause before restarting a child that died, growing while it keeps dying quickly.
RESTART_BACKOFF_S = (0.2, 0.5, 1.0, 2.0, 5.0)

#: A child that lived this long is considered healthy again.
HEALTHY_AFTER_S = 10.0

#: How often the supervisor looks at its children (process table, not Redis).
WATCH_INTERVAL_S = 0.2

#: The websocket server's relay retries an unreachable events stream with this backoff.
RELAY_RETRY_MIN_S = 0.2
RELAY_RETRY_MAX_S = 5.0

#: A page may send a burst of this many frames at once (then CLIENT_FRAMES_PER_S on average):
#: room for the frames a busy event loop hands over together.
CLIENT_FRAMES_BURST = 20
#: Frames of one page read off its socket and stamped ahead of the handler; beyond this, reading
#: pauses (TCP back-pressure) until the handler catches up.
CLIENT_FRAME_QUEUE_MAX = 32
#: Bytes of frames a page has not taken yet (the server's write buffer, above the kernel's) past
#: which the page is closed: a page that reads nothing must not hold the server's memory.
PAGE_WRITE_LIMIT_BYTES = 64 * 1024
#: A frame sent to one page (its snapshot, an ERROR) that cannot be written within this long
#: closes the page like PAGE_WRITE_LIMIT_BYTES does.
PAGE_SEND_TIMEOUT_S = 5.0
#: A page closed for not reading gets this long to take the close frame before it is dropped.
PAGE_CLOSE_TIMEOUT_S = 2.0
#: Entries the relay reads from the events stream at once.
RELAY_BATCH = 100

#: Alerts (cores/alerts.py): the watcher re-reads the machine this often (and at once after a
#: sale ends); each check is one round trip of seven reads. A stale heartbeat (60 s) is
#: reported within two minutes; an idle machine pays about eight commands a minute for it.
ALERT_CHECK_S = 60.0
#: The gateway is reported unreachable once its calls have failed for longer than this.
GATEWAY_DOWN_ALERT_S = 120.0
#: A process re-writes the gateway's health this often at most while it does not change
#: (so that processes that disagree converge); otherwise only on a change.
GATEWAY_HEALTH_REFRESH_S = 30.0
#: The alert for a redis-server restarted by `up` stays open this long (or until acknowledged).
REDIS_RESTART_ALERT_S = 3600.0
#: Alerts stream length kept (approximate MAXLEN): the webhook's queue is bounded by it.
ALERTS_MAXLEN = 10_000
#: Pauses between attempts to POST an alert to ALERT_WEBHOOK_URL; the last one repeats until
#: the receiver answers (alerts are delivered in order, none is dropped).
ALERT_WEBHOOK_RETRY_S = (1.0, 2.0, 5.0, 10.0, 30.0, 60.0)
#: Connect and read timeout of one webhook POST.
ALERT_WEBHOOK_TIMEOUT_S = 5.0
#: Bucket bounds (s) of the gateway call latency histogram (/metrics).
GATEWAY_LATENCY_BUCKETS_S = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0)
#: Bucket bounds (s) of the payment wait histogram: ORDER_CREATED to paid or failed.
PAYMENT_WAIT_BUCKETS_S = (2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 900.0)

#: Operator catalog limits (shared/DESIGN.md, "Operator console"; issue "Bad input").
#: Dispenser slots are numbered 1..SLOTS_MAX.
SLOTS_MAX = 60
#: A price is a whole number of Rupiah from 1 to this.
PRICE_MAX_IDR = 10_000_000
#: A drink's names: 1 to this many characters, after stripping spaces.
DRINK_NAME_MAX_CHARS = 40
#: A slot holds at most this many units; a drink without its own capacity holds the default.
CAPACITY_MAX_UNITS = 1000
CAPACITY_DEFAULT_UNITS = 10
#: A drink is low on stock at this many units or fewer, unless it sets its own threshold.
LOW_STOCK_DEFAULT_UNITS = 2

# --- Fleet mode (shared/DESIGN.md, "Fleet mode") ----------------------------------------------

#: Work shards: each machine's hints go to one of this many work streams (cores/work.py), each
#: in a Cluster slot of its own; a worker process of a service owns some of them at a time.
WORK_SHARDS = 8
#: A work stream's length kept (approximate MAXLEN); entries are acknowledged as worked.
WORK_MAXLEN = 10_000
#: A shard's owner holds its lease this long and renews it every LEASE_RENEW_S: a killed
#: process's shards are taken over within LEASE_TTL_S + LEASE_RENEW_S.
LEASE_TTL_S = 3.0
LEASE_RENEW_S = 1.0
#: A shard's owner steps every machine of the shard this often (and when it takes the shard),
#: re-deriving any work whose hint was lost (workers stay level-triggered).
SWEEP_EVERY_S = 30.0
#: Agent <-> gateway websocket: ping period and how long a pong may take; a backend silent
#: for both is offline (the page shows it within 5 s).
AGENT_PING_S = 2.0
AGENT_PONG_TIMEOUT_S = 2.0
#: The agent reconnects with exponential backoff between these, with +-20 % jitter.
AGENT_RETRY_MIN_S = 0.5
AGENT_RETRY_MAX_S = 15.0
#: A refused token is retried this often at most (an operator has to act first).
AGENT_REFUSED_RETRY_S = 30.0
#: Agent -> gateway frames: at most this many bytes each, and this many per second on average
#: (burst AGENT_FRAMES_BURST) per machine; beyond it the gateway answers the page rate_limited.
AGENT_FRAME_MAX_BYTES = 16 * 1024
AGENT_FRAMES_PER_S = 50
AGENT_FRAMES_BURST = 100
#: The gateway re-reads each connected machine's events this often even without a hint, so
#: that a hint lost in a crash delays a screen by at most this long.
GATEWAY_RESYNC_S = 15.0
#: Fleet mode: the backend waits this much longer than VEND_TIMEOUT_S for its agent's answer to
#: a vend: the agent's own waits (ACK 1 s, a silent board 2 s, a RESULT asked 2 s) and the link
#: (a reconnect with backoff) come on top of the driver's VEND_TIMEOUT_S, so a vend the agent
#: did conclude (a drop not seen: refunded) is not turned into an unknown outcome.
REMOTE_VEND_MARGIN_S = 15.0
#: Notification receiver: a sender (address) may have this many requests refused a second on
#: average (burst NOTIFICATION_REFUSALS_BURST); beyond it, its requests are answered 429 unread.
#: Midtrans's notifications are signed, so never refused: it is never held back.
NOTIFICATION_REFUSALS_PER_S = 2.0
NOTIFICATION_REFUSALS_BURST = 20
#: Addresses the receiver remembers refusals of (the longest quiet forgotten first).
NOTIFICATION_SENDERS_KEPT = 10_000
#: Fleet mode's alert watcher (services/fleet_alerts.py) checks every machine once per
#: ALERT_CHECK_S, a few at a time: it pauses at least this long between two batches.
FLEET_ALERT_TICK_MIN_S = 0.1
#: Money-moving steps on a Redis with replicas (cores/broker.py, "Durability"): how long a step
#: waits for a replica to acknowledge it (WAIT) before it is "not known to be durable", and
#: how soon the DISPENSE worker asks again after that.
DURABLE_WAIT_MS = 500
DURABLE_RETRY_S = 1.0

# --- Logs --------------------------------------------------------------------------------------

#: A log file under VAR_DIR/logs is rotated past this size (name.log -> name.log.1 ...), keeping
#: LOG_BACKUPS old files: at most (LOG_BACKUPS + 1) x LOG_MAX_BYTES a process.
LOG_MAX_BYTES = 10 * 1024 * 1024
LOG_BACKUPS = 3
